"""One invocation: settings, profile, clock, and — opened lazily — the ledger and the scheduler;
plus what depends on the profile alone: where run directories live and the cluster's partitions
(one sinfo, cached a few minutes per profile)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpcjob.clock import SYSTEM_CLOCK, Clock
from hpcjob.config import Profile, Settings, load_settings, resolve_profile
from hpcjob.errors import HpcjobError
from hpcjob.ledger.store import Ledger
from hpcjob.scheduler.base import Scheduler
from hpcjob.scheduler.factory import scheduler_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from hpcjob.slurm import Partition


@dataclass
class Context:
    """One invocation: where hpcjob keeps its files, the profile, the ledger and the scheduler."""

    settings: Settings
    profile: Profile
    clock: Clock = SYSTEM_CLOCK
    notes: list[str] = field(default_factory=list)  # said once on stderr at the end
    _ledger: Ledger | None = field(default=None, repr=False)
    _scheduler: Scheduler | None = field(default=None, repr=False)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.settings.ledger_path)
        return self._ledger

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            self._scheduler = scheduler_for(self.profile, self.settings)
        return self._scheduler

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        if self._scheduler is not None:
            self._scheduler.close()


def open_context(profile_flag: str | None = None, flags: dict[str, Any] | None = None) -> Context:
    settings = load_settings()
    return Context(settings, resolve_profile(settings, profile_flag=profile_flag, flags=flags))


def profile_error(ctx: Context, exc: HpcjobError) -> HpcjobError:
    """An error about what the profile's cluster has or says, said of that profile (`Profile
    lab: the cluster has no partition …`): the same request may suit another profile."""
    name, message, hint = ctx.profile.name, exc.message, exc.hint
    if message.startswith("The "):
        message = "t" + message[1:]  # "Profile lab: the cluster has …"
    if hint is not None:
        hint = hint.replace("`hpcjob partitions`", f"`hpcjob partitions --profile {name}`")
    return HpcjobError(f"Profile {name}: {message}", hint=hint, exit_code=exc.exit_code)


@contextlib.contextmanager
def of_profile(ctx: Context) -> Iterator[None]:
    """`profile_error` for the errors raised inside."""
    try:
        yield
    except HpcjobError as exc:
        raise profile_error(ctx, exc) from exc


def profile_of(ref: str) -> str:
    """The profile a run was submitted with (its cluster is where its files are)."""
    ledger = Ledger(load_settings().ledger_path)
    try:
        return ledger.resolve(ref).profile
    finally:
        ledger.close()


def run_root(ctx: Context, connect: bool = True) -> str:
    """Where the profile's run directories live, as an absolute path on the scheduler's machine:
    Slurm reads `#SBATCH --output` without a shell. A remote home is only known by connecting."""
    root = str(ctx.profile.get("remote_root") or ctx.settings.runs_dir)
    if not ctx.profile.get("host"):
        return os.path.abspath(os.path.expanduser(root))
    return ctx.scheduler.shell.expand_home(root) if connect else root


_PARTITIONS_TTL_S = 300


def _partitions_cache(ctx: Context) -> Path:
    return ctx.settings.home / "cache" / f"partitions-{ctx.profile.name}.json"


def cached_partitions(ctx: Context, refresh: bool = False) -> list[Partition] | None:
    """The scheduler's partitions from one sinfo, kept for a few minutes per profile; None where
    any partition name runs (the embedded scheduler)."""
    from hpcjob.slurm import Partition  # the parsers load only where partitions are asked for

    cache = _partitions_cache(ctx)
    if not refresh and cache.exists() and time.time() - cache.stat().st_mtime < _PARTITIONS_TTL_S:
        try:
            return [Partition(**item) for item in json.loads(cache.read_text())]
        except (ValueError, TypeError):
            pass  # a damaged cache is just asked for again
    partitions = ctx.scheduler.partitions()
    if partitions is None:
        return None
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp.write_text(json.dumps([dataclasses.asdict(p) for p in partitions]))
        os.replace(tmp, cache)
    except OSError:  # a full or read-only HPCJOB_HOME: the cache is only a saving
        tmp.unlink(missing_ok=True)
    return partitions


def default_partition(ctx: Context) -> str | None:
    """The cluster's default partition from the sinfo cache that `prepare` just filled; never a
    scheduler call of its own (a submission must not cost an extra sinfo)."""
    try:
        items = json.loads(_partitions_cache(ctx).read_text())
    except (OSError, ValueError):
        return None
    defaults = [p.get("name") for p in items if isinstance(p, dict) and p.get("is_default")]
    return str(defaults[0]) if defaults else None
