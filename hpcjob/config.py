"""Profiles: which cluster, how to reach it, modules, venv, paths — and where each value came from.

Precedence, highest first: a command-line flag, an environment variable (`HPCJOB_<KEY>`), the
profile in `$HPCJOB_HOME/config.toml`, the built-in profile of the same name.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcjob.cost import SNELLIUS_SBU_RATES, Rate, parse_rates
from hpcjob.errors import EXIT_USAGE, HpcjobError

SCHEDULERS = ("local", "slurm")
# Profile names end up in file names (the partition cache): no path separators, no spaces.
_PROFILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Every key a profile may set, with its type. Other issues rely on these names.
KEY_TYPES: dict[str, type] = {
    "scheduler": str,
    "host": str,
    "user": str,
    "port": int,
    "identity_file": str,
    "known_hosts": str,
    "remote_root": str,
    "modules": list,
    "venv": str,
    "account": str,
    "data_dir": str,
    "partitions": dict,
    "python": str,
    "template_dir": str,
    "max_local_jobs": int,
    "sbu_rates": dict,  # partition = SBU per hour, or a rate table (hpcjob/cost.py)
    # The node feature --stage-data asks for, where $TMPDIR is a node-local disk only on some
    # nodes (Snellius: scratch-node); added to the job's own --constraint with `&`.
    "stage_constraint": str,
    "purged": dict,  # path prefix = days after which the cluster purges files there
}
_LIST_KEYS = {"modules"}
_FILE_ONLY = {"partitions", "sbu_rates", "purged"}  # tables: no environment variable

BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    "local": {
        "scheduler": "local",
        "max_local_jobs": 2,
        "partitions": {},
    },
    "slurm": {
        # The Slurm of the machine hpcjob runs on (a login node): the default where sbatch exists.
        "scheduler": "slurm",
        "remote_root": "~/hpcjob/runs",
        "python": "python3",
        "partitions": {},
    },
    "snellius": {
        "scheduler": "slurm",
        "host": "snellius.surf.nl",
        "port": 22,
        "remote_root": "~/hpcjob/runs",
        "modules": ["2025", "Python/3.13.1-GCCcore-14.2.0"],
        "venv": "~/hpcjob/venv",
        "python": "python3",
        "partitions": {
            "setup-env": "rome",
            "gpu-check": "gpu_a100",
            "eda": "rome",
            "train": "gpu_a100",
        },
        "sbu_rates": SNELLIUS_SBU_RATES,
        # $TMPDIR is the node-local NVMe only on nodes with this feature.
        "stage_constraint": "scratch-node",
        # Files untouched this many days are deleted (SURF's Snellius filesystem policy).
        "purged": {"/scratch-shared/": 14, "/scratch-local/": 6},
    },
}


@dataclass(frozen=True)
class Settings:
    """Where hpcjob keeps its own files on this machine."""

    home: Path

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"

    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.db"

    @property
    def local_dir(self) -> Path:
        """The embedded scheduler's state (job records, id counter)."""
        return self.home / "local"

    @property
    def runs_dir(self) -> Path:
        """Run directories of the embedded scheduler."""
        return self.home / "runs"

    @property
    def user_template_dir(self) -> Path:
        return self.home / "templates"


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = env.get("HPCJOB_HOME")
    if home:
        return Settings(Path(home).expanduser().absolute())
    from platformdirs import user_data_dir

    return Settings(Path(user_data_dir("hpcjob", appauthor=False)))


@dataclass(frozen=True)
class Profile:
    """The effective settings of one profile, each with the source it came from."""

    name: str
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.values.get(key)

    @property
    def scheduler(self) -> str:
        return str(self.values.get("scheduler", "local"))

    @property
    def modules(self) -> list[str]:
        return list(self.values.get("modules") or [])

    @property
    def partitions(self) -> dict[str, str]:
        return dict(self.values.get("partitions") or {})


def read_config_file(path: Path) -> dict[str, Any]:
    """The parsed config file, or {} when there is none; a broken file is an error."""
    if not path.exists():
        return {}
    # The TOML parser loads only where there is a file to parse (~2 ms of every start).
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HpcjobError(
            f"The config file {path} is not valid TOML: {exc}",
            hint="Fix the line named above, or move the file away and run `hpcjob config init`.",
        ) from exc
    except OSError as exc:
        raise HpcjobError(f"Cannot read the config file {path}: {exc.strerror}.") from exc
    _check_file_structure(data, path)
    return data


def _check_file_structure(data: dict[str, Any], path: Path) -> None:
    unknown = set(data) - {"default_profile", "profiles"}
    if unknown:
        raise HpcjobError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}.",
            hint='The file holds `default_profile = "name"` and [profiles.NAME] tables.',
        )
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise HpcjobError(f"{path}: `profiles` must be tables like [profiles.snellius].")
    for name, table in profiles.items():
        if not _PROFILE_NAME_RE.fullmatch(name):
            raise HpcjobError(
                f"{path}: the profile name {name!r} is not valid.",
                hint="Profile names are 1-64 letters, digits, '.', '_' or '-' (they name files "
                "hpcjob keeps per profile).",
            )
        for key, value in table.items():
            _check_value(key, value, f"{path} [profiles.{name}]")


def _check_value(key: str, value: Any, where: str) -> None:
    expected = KEY_TYPES.get(key)
    if expected is None:
        close = difflib.get_close_matches(key, KEY_TYPES, n=1)
        raise HpcjobError(
            f"{where}: unknown key {key!r}.",
            hint=(f"Did you mean {close[0]!r}? " if close else "")
            + f"Known keys: {', '.join(KEY_TYPES)}.",
        )
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise HpcjobError(f"{where}: {key} must be a whole number, got {value!r}.")
    if expected is str and not isinstance(value, str):
        raise HpcjobError(f"{where}: {key} must be a string, got {value!r}.")
    if expected is list and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        raise HpcjobError(f"{where}: {key} must be a list of strings, got {value!r}.")
    if key == "sbu_rates":
        parse_rates(value, f"{where} sbu_rates")  # raises, naming the wrong entry
    elif key == "purged":
        if not isinstance(value, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value.values()
        ):
            raise HpcjobError(
                f'{where}: purged must be a table of "/path/prefix/" = days, got {value!r}.'
            )
    elif expected is dict and not (
        isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    ):
        raise HpcjobError(
            f'{where}: {key} must be a table of workload = "partition", got {value!r}.'
        )
    if key == "scheduler" and value not in SCHEDULERS:
        raise HpcjobError(
            f"{where}: scheduler must be one of {', '.join(SCHEDULERS)}, got {value!r}."
        )
    if "\n" in str(value):
        raise HpcjobError(f"{where}: {key} must not contain a newline.")


def select_profile_name(
    flag: str | None, environ: dict[str, str], file_data: dict[str, Any]
) -> tuple[str, str]:
    """The profile to use and why: flag > HPCJOB_PROFILE > default_profile > built-in default."""
    if flag:
        return flag, "flag --profile"
    if environ.get("HPCJOB_PROFILE"):
        return environ["HPCJOB_PROFILE"], "env HPCJOB_PROFILE"
    if file_data.get("default_profile"):
        return str(file_data["default_profile"]), "config default_profile"
    if shutil.which("sbatch", path=environ.get("PATH")):
        return "slurm", "built-in default (sbatch is on PATH)"
    return "local", "built-in default (no sbatch on PATH)"


def resolve_profile(
    settings: Settings,
    *,
    profile_flag: str | None = None,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Profile:
    """The effective profile: built-in, then config file, then environment, then flags."""
    env = dict(os.environ if environ is None else environ)
    file_data = read_config_file(settings.config_path)
    name, _why = select_profile_name(profile_flag, env, file_data)
    if not _PROFILE_NAME_RE.fullmatch(name):
        raise HpcjobError(
            f"{name!r} is not a valid profile name.",
            hint="Profile names are 1-64 letters, digits, '.', '_' or '-'.",
            exit_code=EXIT_USAGE,
        )
    file_profiles: dict[str, Any] = file_data.get("profiles", {})
    if name not in BUILTIN_PROFILES and name not in file_profiles:
        known = sorted(set(BUILTIN_PROFILES) | set(file_profiles))
        close = difflib.get_close_matches(name, known, n=1)
        raise HpcjobError(
            f"There is no profile named {name!r}.",
            hint=(f"Did you mean {close[0]!r}? " if close else "")
            + f"Known profiles: {', '.join(known)}. Add one under [profiles.{name}] in "
            f"{settings.config_path} (`hpcjob config init` writes a starter file).",
            exit_code=EXIT_USAGE,
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in BUILTIN_PROFILES.get(name, {}).items():
        values[key], sources[key] = value, f"built-in profile {name}"
    for key, value in file_profiles.get(name, {}).items():
        values[key], sources[key] = value, f"{settings.config_path} [profiles.{name}]"
    for key in KEY_TYPES:
        env_name = "HPCJOB_" + key.upper()
        if key not in _FILE_ONLY and env.get(env_name) is not None:
            values[key], sources[key] = _from_env(key, env[env_name]), f"env {env_name}"
    for key, value in (flags or {}).items():
        if value is not None:
            values[key], sources[key] = value, f"flag --{key.replace('_', '-')}"
    _scheduler_of_host(name, values, sources)
    values.setdefault("scheduler", "local")
    sources.setdefault("scheduler", "built-in default")
    if values["scheduler"] == "local":
        values.setdefault("python", sys.executable)
        sources.setdefault("python", "the Python running hpcjob")
        values.setdefault("remote_root", str(settings.runs_dir))
        sources.setdefault("remote_root", "built-in default ($HPCJOB_HOME/runs)")
    else:
        values.setdefault("remote_root", "~/hpcjob/runs")
        sources.setdefault("remote_root", "built-in default")
        values.setdefault("python", "python3")
        sources.setdefault("python", "built-in default")
    for key, value in values.items():
        _check_value(key, value, sources[key])
    return Profile(name=name, values=values, sources=sources)


def _scheduler_of_host(name: str, values: dict[str, Any], sources: dict[str, str]) -> None:
    """A `host` means Slurm on that login node over SSH: it implies `scheduler = "slurm"`, and
    a profile that also says `local` contradicts itself (its jobs would quietly run here)."""
    if not values.get("host"):
        return
    if "scheduler" not in values:
        values["scheduler"], sources["scheduler"] = "slurm", f"implied by host ({sources['host']})"
        return
    if values["scheduler"] == "local":
        raise HpcjobError(
            f"Profile {name} contradicts itself: host = {values['host']!r} (from "
            f"{sources['host']}) runs Slurm on that login node over SSH, but scheduler = "
            f'"local" (from {sources["scheduler"]}) runs jobs on this machine.',
            hint=_contradiction_hint(name, sources),
            exit_code=EXIT_USAGE,
        )


def _contradiction_hint(name: str, sources: dict[str, str]) -> str:
    keep_here = f"remove `host` from {sources['host']} to run jobs on this machine"
    if sources["scheduler"].startswith("built-in"):
        return (
            f"The built-in profile {name} runs jobs on this machine: {keep_here}, or give the "
            'login node a profile of its own ([profiles.NAME] with host = "…"; a host implies '
            'scheduler = "slurm").'
        )
    return (
        f"Remove `scheduler` from {sources['scheduler']} to run jobs on the login node (a host "
        f'implies scheduler = "slurm"), or {keep_here}.'
    )


def profile_rates(settings: Settings, current: Profile, name: str) -> dict[str, Rate]:
    """A profile's SBU rates: its `sbu_rates` over the built-in profile's of the same name.
    `current` is the invocation's profile (resolved already); another is resolved here."""
    if name == current.name:
        table = current.get("sbu_rates")
    else:
        try:
            table = resolve_profile(settings, profile_flag=name).get("sbu_rates")
        except HpcjobError:  # a profile since removed: its built-in rates, if any
            table = None
    builtin = BUILTIN_PROFILES.get(name, {}).get("sbu_rates") or {}
    return parse_rates({**builtin, **(table or {})})


def _from_env(key: str, text: str) -> Any:
    if key in _LIST_KEYS:
        return [part.strip() for part in text.split(",") if part.strip()]
    if KEY_TYPES[key] is int:
        try:
            return int(text)
        except ValueError as exc:
            raise HpcjobError(
                f"HPCJOB_{key.upper()}={text!r} is not a whole number.", exit_code=EXIT_USAGE
            ) from exc
    return text


STARTER_CONFIG = """\
# hpcjob configuration. Precedence: command-line flag > environment (HPCJOB_<KEY>) > this file
# > the built-in profile of the same name. `hpcjob config show` prints each value and its source.

# The profile used when neither --profile nor HPCJOB_PROFILE is given; `hpcjob config init` wrote
# the one chosen when it ran ("slurm" where sbatch is on PATH, else "local").
# Built-in: "local" (the embedded scheduler on this machine), "slurm" (the Slurm on this machine),
# "snellius" (SURF's Snellius over SSH).
default_profile = "{default_profile}"

[profiles.local]
scheduler = "local"        # run jobs on this machine with hpcjob's embedded scheduler
max_local_jobs = 2         # jobs running at once; the rest wait PENDING
# data_dir = "data/pcam-synth"

# On a cluster's login node (here Snellius's): the built-in "slurm" profile drives its Slurm.
# Its system python3 is too old (3.9): setup-env builds the venv from the module's Python and
# every job loads the same modules. `hpcjob doctor --profile slurm` checks it all.
# [profiles.slurm]
# modules = ["2025", "Python/3.13.1-GCCcore-14.2.0"]
# venv = "~/hpcjob/venv"                   # made by `hpcjob setup-env`
# data_dir = "/projects/0/your_project/pcam"

# Fill in your login and uncomment to work on Snellius from this machine.
# [profiles.snellius]
# user = "scur1234"                        # your Snellius login
# identity_file = "~/.ssh/id_ed25519"      # or leave out to use ssh-agent / ~/.ssh/config
# account = ""                             # your budget account, if you have several
# data_dir = "/projects/0/your_project/pcam"
# venv = "~/hpcjob/venv"                   # made by `hpcjob setup-env`
# modules = ["2025", "Python/3.13.1-GCCcore-14.2.0"]
# remote_root = "~/hpcjob/runs"            # run directories on the cluster
#
# [profiles.snellius.partitions]           # default partition per workload
# gpu-check = "gpu_a100"
# train = "gpu_a100"
# eda = "rome"
#
# [profiles.snellius.sbu_rates]            # SBU per hour; Snellius's are built in, add others
# my_partition = { sbu_per_hour = 64, per = "gpu", cores_per_gpu = 9 }
#
# [profiles.snellius.purged]               # days until files there are purged; Snellius's built in
# "/scratch-shared/" = 14                  # submit warns when data_dir is under one of these
"""


def starter_profile(
    settings: Settings, flag: str | None, environ: dict[str, str]
) -> tuple[str, str]:
    """The `default_profile` a starter config names, and why: the profile chosen now (flag >
    HPCJOB_PROFILE > the file it replaces > sbatch on PATH), so that writing it changes nothing.
    A profile the starter file does not define gives way to the built-in default."""
    try:
        current = read_config_file(settings.config_path)
    except HpcjobError:
        current = {}  # a broken file, about to be replaced
    name, why = select_profile_name(flag, environ, current)
    if name not in BUILTIN_PROFILES:
        without = {key: value for key, value in environ.items() if key != "HPCJOB_PROFILE"}
        name, why = select_profile_name(None, without, {})
    return name, why


def write_starter_config(
    settings: Settings, force: bool = False, default_profile: str = "local"
) -> Path:
    """Write the commented starter config (private to the user); never overwrite silently."""
    path = settings.config_path
    if path.exists() and not force:
        raise HpcjobError(
            f"{path} already exists; not overwriting it.",
            hint="Edit it, or pass --force to replace it with the starter file.",
        )
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".toml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(STARTER_CONFIG.replace("{default_profile}", default_profile))
    os.replace(tmp, path)
    return path
