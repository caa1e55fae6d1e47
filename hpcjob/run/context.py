"""One invocation: settings, profile, clock, and — opened lazily — the ledger and the scheduler;
plus what depends on the profile alone: where run directories live and the cluster's partitions
(one sinfo, cached a few minutes per profile); and a dry run that goes on without its login node
(`connect_or_offline`), saying what it could not check."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from hpcjob.clock import SYSTEM_CLOCK, Clock
from hpcjob.config import Profile, Settings, load_settings, resolve_profile
from hpcjob.errors import HpcjobError
from hpcjob.ledger.records import new_run_id
from hpcjob.ledger.store import Ledger

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from hpcjob.scheduler.base import Scheduler
    from hpcjob.slurm import AccountAccess, Partition


@dataclass
class Context:
    """One invocation: where hpcjob keeps its files, the profile, the ledger and the scheduler."""

    settings: Settings
    profile: Profile
    clock: Clock = SYSTEM_CLOCK
    notes: list[str] = field(default_factory=list)  # said once on stderr at the end
    # Why the profile's login node could not be reached, when a dry run goes on without it:
    # partitions then come from the cache (however old) or are not checked, `~` stays as it is.
    offline: str | None = None
    _ledger: Ledger | None = field(default=None, repr=False)
    _scheduler: Scheduler | None = field(default=None, repr=False)
    _cluster_key: str | None = field(default=None, repr=False)  # see cluster_key()

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.settings.ledger_path)
        return self._ledger

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            # Loaded on first use: a command that only reads the ledger never needs it.
            from hpcjob.scheduler.factory import scheduler_for

            self._scheduler = scheduler_for(self.profile, self.settings)
        return self._scheduler

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        if self._scheduler is not None:
            self._scheduler.close()


def cluster_key(ctx: Context) -> str:
    """The key the ledger files the scheduler's runs under: `slurm:<ClusterName>`, the same from
    every login node of a cluster (`local:<hostname>` for the embedded scheduler). The name is
    asked once per address and kept in the ledger, so it costs a command only the first time;
    call this only where a run needs the key. When Slurm cannot say, the address stands in (a
    note says so) and its runs move to the name once it is learned."""
    if ctx._cluster_key is None:
        ctx._cluster_key = _learn_cluster_key(ctx)
    return ctx._cluster_key


def cluster_key_resolved(ctx: Context) -> bool:
    """Whether this invocation has its cluster key already: resolving it may move runs recorded
    under the address to the cluster's name, so runs read before then are read again."""
    return ctx._cluster_key is not None


def _learn_cluster_key(ctx: Context) -> str:
    scheduler = ctx.scheduler
    address = scheduler.address
    known = ctx.ledger.known_cluster(address)
    if known is not None:
        return known
    try:
        name = scheduler.cluster_name()
    except HpcjobError as exc:
        ctx.notes.append(
            f"Could not learn the cluster's name from Slurm ({exc.message.splitlines()[0]}); "
            f"runs are keyed by the address {address} for now (runs submitted from other login "
            "nodes are not polled until it is learned)."
        )
        return address
    if name is None:
        return address
    key = f"{scheduler.name}:{name}"
    hostless = None if ctx.profile.get("host") else ctx.profile.name
    ctx.ledger.learn_cluster(address, key, hostless)
    return key


def open_context(profile_flag: str | None = None, flags: dict[str, Any] | None = None) -> Context:
    settings = load_settings()
    return Context(settings, resolve_profile(settings, profile_flag=profile_flag, flags=flags))


def profile_error(ctx: Context, exc: HpcjobError) -> HpcjobError:
    """An error about what the profile's cluster has or says, said of that profile (`Profile
    lab: the cluster has no partition …`): the same request may suit another profile."""
    name, message, hint = ctx.profile.name, exc.message, exc.hint
    # The SSH connection's errors name the profile already.
    named = re.search(rf"\bprofile {re.escape(name)}\b", message, re.IGNORECASE) is not None
    if not named and message.startswith("The "):
        message = "t" + message[1:]  # "Profile lab: the cluster has …"
    if hint is not None:
        hint = hint.replace("`hpcjob partitions`", f"`hpcjob partitions --profile {name}`")
    cached_at = _cached_at(ctx) if ctx.offline is not None else None
    if cached_at is not None:  # a partition may have come since: say what was checked
        message += (
            f"\n(Checked against the partitions cached at {cached_at}: there is no connection "
            f"to {ctx.profile.get('host')}.)"
        )
    prefix = "" if named else f"Profile {name}: "
    return HpcjobError(prefix + message, hint=hint, exit_code=exc.exit_code)


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


def fresh_run_id(ctx: Context) -> str:
    """An id for a new run that no run of the ledger has; before there is a ledger, any."""
    if not ctx.settings.ledger_path.exists():
        return new_run_id()
    return ctx.ledger.fresh_run_id()


def run_root(ctx: Context, connect: bool = True) -> str:
    """Where the profile's run directories live, as an absolute path on the scheduler's machine:
    Slurm reads `#SBATCH --output` without a shell. A remote home is only known by connecting."""
    root = str(ctx.profile.get("remote_root") or ctx.settings.runs_dir)
    if not ctx.profile.get("host"):
        return os.path.abspath(os.path.expanduser(root))
    return ctx.scheduler.shell.expand_home(root) if connect and ctx.offline is None else root


def connect_or_offline(ctx: Context) -> None:
    """For a dry run: reach the profile's login node, or — when that fails — note why in
    `ctx.offline` and go on without it (`offline_notes` says what was then not checked). A
    profile without a host has nothing to connect to."""
    if not ctx.profile.get("host"):
        return
    shell = ctx.scheduler.shell  # a profile that names no usable host is an error, not offline
    try:
        shell.expand_home("~")  # connects; remembers the home for run_root
    except HpcjobError as exc:
        ctx.offline = exc.message.splitlines()[0].rstrip(".")


def offline_notes(ctx: Context) -> list[str]:
    """What a dry run without its login node could not check, in words; [] when connected."""
    if ctx.offline is None:
        return []
    host = ctx.profile.get("host")
    why = f"the live partitions (no connection to {host}): {ctx.offline}"
    cached_at = _cached_at(ctx)
    if cached_at is None:
        partitions = (
            f"{why}; no partitions cached for profile {ctx.profile.name}, so the partition, "
            "time limit, GPUs and CPUs of the request were not checked"
        )
    else:
        partitions = f"{why}; checked against the partitions cached at {cached_at} instead"
    files = f"the data folder and the venv's python on {host} (looked for there before a submit)"
    home = f"the remote home: `~` in the run directory and the script stands for it on {host}"
    notes = [partitions, files]
    return [*notes, home] if "~" in run_root(ctx, connect=False) else notes


def _cached_at(ctx: Context) -> str | None:
    """When the profile's partitions were cached (ISO-8601 UTC), if a readable cache is there."""
    cache = _partitions_cache(ctx)
    if _read_cache(cache) is None:
        return None
    cached = datetime.fromtimestamp(cache.stat().st_mtime, timezone.utc)
    return cached.strftime("%Y-%m-%dT%H:%M:%SZ")


_PARTITIONS_TTL_S = 300


def _partitions_cache(ctx: Context) -> Path:
    return ctx.settings.home / "cache" / f"partitions-{ctx.profile.name}.json"


def cached_partitions(ctx: Context, refresh: bool = False) -> list[Partition] | None:
    """The scheduler's partitions from one sinfo, kept for a few minutes per profile; None where
    any partition name runs (the embedded scheduler), or offline with nothing cached."""
    cache = _partitions_cache(ctx)
    if ctx.offline is not None:
        return _read_cache(cache)  # however old: better than nothing (`offline_notes` says so)
    if not refresh and cache.exists() and time.time() - cache.stat().st_mtime < _PARTITIONS_TTL_S:
        found = _read_cache(cache)
        if found is not None:
            return found  # a damaged cache is just asked for again
    partitions = ctx.scheduler.partitions()
    if partitions is None:
        return None
    write_cache(cache, [dataclasses.asdict(p) for p in partitions])
    return partitions


def write_cache(path: Path, data: Any) -> None:
    """Write a cache file of HPCJOB_HOME atomically (readers see the old answer or the new one,
    never half); a full or read-only HPCJOB_HOME only loses the saving."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _read_cache(cache: Path) -> list[Partition] | None:
    from hpcjob.slurm import Partition  # the parsers load only where partitions are asked for

    try:
        return [Partition(**item) for item in json.loads(cache.read_text())]
    except (OSError, ValueError, TypeError):
        return None


def default_partition(ctx: Context) -> str | None:
    """The cluster's default partition from the sinfo cache that `prepare` just filled; never a
    scheduler call of its own (a submission must not cost an extra sinfo)."""
    try:
        items = json.loads(_partitions_cache(ctx).read_text())
    except (OSError, ValueError):
        return None
    defaults = [p.get("name") for p in items if isinstance(p, dict) and p.get("is_default")]
    return str(defaults[0]) if defaults else None


# Associations change rarely (a course account is added once a term): an hour. An answer that
# says they are unknown (accounting off or down) is asked again after a few minutes.
_ACCESS_TTL_S = 3600


def _access_cache(ctx: Context) -> Path:
    return ctx.settings.home / "cache" / f"accounts-{ctx.profile.name}.json"


def cached_access(ctx: Context, refresh: bool = False) -> AccountAccess | None:
    """Which partitions each of the user's accounts may use (one remote command), kept an hour
    per profile; None where there are no accounts (the embedded scheduler) or offline with
    nothing cached. Offline, a cache of any age is used."""
    cache = _access_cache(ctx)
    if ctx.offline is not None:
        return _read_access(cache)
    found = None if refresh else _read_access(cache)
    if found is not None:
        age = time.time() - cache.stat().st_mtime
        if age < (_PARTITIONS_TTL_S if found.unknown else _ACCESS_TTL_S):
            return found
    access = ctx.scheduler.account_access()
    if access is None:
        return None
    write_cache(cache, access.to_dict())
    return access


def _read_access(cache: Path) -> AccountAccess | None:
    from hpcjob.slurm import AccountAccess

    try:
        return AccountAccess.from_dict(json.loads(cache.read_text()))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
