"""The scheduler a profile names: the embedded one, Slurm on this machine, or Slurm on a login
node over SSH. The one place that reads the profile's `scheduler` word."""

from __future__ import annotations

import socket

from hpcjob.config import Profile, Settings
from hpcjob.scheduler.base import Scheduler


def scheduler_for(profile: Profile, settings: Settings) -> Scheduler:
    """The scheduler a profile names (nothing connects until it is first used)."""
    if profile.scheduler == "local":
        from hpcjob.scheduler.local import LocalScheduler

        return LocalScheduler(settings.local_dir, max_jobs=int(profile.get("max_local_jobs") or 2))
    from hpcjob.scheduler.slurm import SlurmScheduler

    host = profile.get("host")
    if host:
        # paramiko is imported only for a profile with a host.
        from hpcjob.ssh.connect import ConnectOptions, ssh_shell_for

        options = ConnectOptions(sources=profile.sources, profile_name=profile.name)
        return SlurmScheduler(ssh_shell_for(profile.values, options), address=f"slurm:{host}")
    from hpcjob.shell import LocalShell

    return SlurmScheduler(LocalShell(), address=f"slurm:{socket.gethostname()}")
