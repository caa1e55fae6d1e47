"""The project file: `hpcjob.toml` at the project's root (or `[tool.hpcjob]` in pyproject.toml).

```toml
[project]                       # all optional
name = "my-course-repo"         # default: the folder's name
requirements = ["pyyaml"]       # installed by setup-env besides requirements.txt / pyproject's
exclude = ["data/", "*.ckpt"]   # left out of the code snapshot (gitignore-like globs)
max_snapshot_mb = 50

[workloads.train]
command = ["python", "experiments/train.py", "--config", "{config}"]
config = "experiments/configs/train_config.yaml"
partition = "gpu_a100"          # default resources: partition, time, gpus, cpus, mem
metrics = ["experiments/results/*/metrics.csv"]
artifacts = ["experiments/results/*/*.pt"]
launcher = "torchrun"           # its ranks' launcher with --nodes/--procs-per-node/GPUs (LAUNCHERS)

[workloads.train.options]       # CLI option → config key: `--epochs 3` sets training.epochs
epochs = "training.epochs"
```

Parsing is pure (text in, `Project` out); every problem is reported at once with its line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.project.snapshot import check_patterns, glob_regex
from hpcjob.spec import LAUNCHERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROJECT_FILE = "hpcjob.toml"
PYPROJECT = "pyproject.toml"
PLACEHOLDERS = ("config", "data_dir", "run_dir")
DEFAULT_MAX_SNAPSHOT_MB = 50
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# Keys of a workload table, with their types; `options` is a table of strings.
_WORKLOAD_KEYS: dict[str, type | tuple[type, ...]] = {
    "command": list,
    "config": str,
    "options": dict,
    "partition": str,
    "time": (str, int),
    "gpus": int,
    "cpus": int,
    "mem": str,
    "metrics": list,
    "artifacts": list,
    "description": str,
    "launcher": str,
}
_PROJECT_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "requirements": list,
    "exclude": list,
    "max_snapshot_mb": (int, float),
}


@dataclass(frozen=True)
class ProjectWorkload:
    """One named workload of the project: the command it runs and how options reach its config."""

    name: str
    command: tuple[str, ...]
    config: str | None = None
    # CLI option name (underscored, as `--batch-size` → `batch_size`) → dotted config key.
    options: Mapping[str, str] = field(default_factory=dict)
    partition: str | None = None
    time: str | None = None
    gpus: int | None = None
    cpus: int | None = None
    mem: str | None = None
    metrics: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    description: str = ""
    launcher: str | None = None  # declared: torchrun, srun or none; None: not declared

    @property
    def placeholders(self) -> set[str]:
        return {name for word in self.command for name in _PLACEHOLDER_RE.findall(word)}


@dataclass(frozen=True)
class Project:
    """A project: its root folder, the file it was read from and its workloads."""

    root: Path
    name: str
    source: Path  # hpcjob.toml, or pyproject.toml
    workloads: Mapping[str, ProjectWorkload] = field(default_factory=dict)
    requirements: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_snapshot_mb: float = DEFAULT_MAX_SNAPSHOT_MB

    @property
    def source_label(self) -> str:
        return PROJECT_FILE if self.source.name == PROJECT_FILE else f"{PYPROJECT} [tool.hpcjob]"


def find_project_file(start: Path) -> Path | None:
    """The nearest hpcjob.toml, or pyproject.toml with a [tool.hpcjob] table, from `start` up."""
    folder = start.resolve()
    for candidate in (folder, *folder.parents):
        own = candidate / PROJECT_FILE
        if own.is_file():
            return own
        pyproject = candidate / PYPROJECT
        if pyproject.is_file() and _has_tool_table(pyproject):
            return pyproject
    return None


def _has_tool_table(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return re.search(r"^\s*\[\s*tool\.hpcjob\b", text, re.MULTILINE) is not None


def load_project(path: Path) -> Project:
    """Read and validate a project file (hpcjob.toml or pyproject.toml)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HpcjobError(f"Cannot read {path}: {exc}.", exit_code=EXIT_USAGE) from exc
    return parse_project(text, path)


def parse_project(text: str, path: Path) -> Project:
    """A project from the text of its file; every problem at once, each with its line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HpcjobError(
            f"{path} is not valid TOML: {exc}.",
            hint="Fix the line named above; `hpcjob init` writes a commented example.",
            exit_code=EXIT_USAGE,
        ) from exc
    prefix = ""
    if path.name == PYPROJECT:
        data = (data.get("tool") or {}).get("hpcjob") or {}
        prefix = "tool.hpcjob."
    problems: list[str] = []
    lines = _Lines(text, prefix)
    for key in data:
        if key not in ("project", "workloads"):
            problems.append(
                f"line {lines.of('', key)}: unknown table or key {prefix}{key!r} "
                "(a project file has [project] and [workloads.NAME])"
            )
    meta = _table(data.get("project", {}), "project", _PROJECT_KEYS, lines, problems)
    workloads = {}
    raw_workloads = data.get("workloads", {})
    if not isinstance(raw_workloads, dict):
        problems.append(f"line {lines.of('', 'workloads')}: workloads must be a table")
        raw_workloads = {}
    for name, raw in raw_workloads.items():
        workload = _workload(name, raw, lines, problems)
        if workload is not None:
            workloads[name] = workload
    max_mb = meta.get("max_snapshot_mb", DEFAULT_MAX_SNAPSHOT_MB)
    if not isinstance(max_mb, bool) and isinstance(max_mb, (int, float)) and max_mb <= 0:
        problems.append(f"line {lines.of('project', 'max_snapshot_mb')}: must be above 0")
    for key in ("requirements", "exclude"):
        if not all(isinstance(item, str) and item.strip() for item in meta.get(key, [])):
            problems.append(f"line {lines.of('project', key)}: {key} must be a list of strings")
            meta.pop(key, None)
    try:
        check_patterns(meta.get("exclude", ()))
    except HpcjobError as exc:
        problems.append(f"line {lines.of('project', 'exclude')}: {exc.message}")
    if problems:
        raise HpcjobError(
            f"{path} has problems:\n" + "\n".join(f"  - {p}" for p in problems),
            hint="See docs/project.md for the file format; `hpcjob init` writes an example.",
            exit_code=EXIT_USAGE,
        )
    return Project(
        root=path.parent.resolve(),
        name=str(meta.get("name") or path.parent.resolve().name),
        source=path,
        workloads=workloads,
        requirements=tuple(meta.get("requirements", ())),
        exclude=tuple(meta.get("exclude", ())),
        max_snapshot_mb=float(max_mb),
    )


def _table(
    raw: Any,
    table: str,
    types: Mapping[str, type | tuple[type, ...]],
    lines: _Lines,
    problems: list[str],
) -> dict[str, Any]:
    """A table's known keys of the right type; the others reported."""
    if not isinstance(raw, dict):
        problems.append(f"line {lines.of('', table)}: [{table}] must be a table")
        return {}
    good: dict[str, Any] = {}
    for key, value in raw.items():
        expected = types.get(key)
        where = f"line {lines.of(table, key)}"
        if expected is None:
            problems.append(
                f"{where}: unknown key {key!r} in [{lines.prefix}{table}] ({_known(types)})"
            )
        elif isinstance(value, bool) or not isinstance(value, expected):
            problems.append(f"{where}: {key} must be {_type_name(expected)}, not {value!r}")
        else:
            good[key] = value
    return good


def _workload(name: str, raw: Any, lines: _Lines, problems: list[str]) -> ProjectWorkload | None:
    table = f"workloads.{name}"
    before = len(problems)
    if not _NAME_RE.fullmatch(name):
        problems.append(
            f"line {lines.of('workloads', name)}: workload name {name!r} must be letters, "
            "digits, '.', '_' or '-'"
        )
    values = _table(raw, table, _WORKLOAD_KEYS, lines, problems)
    command = values.get("command")
    if command is None:
        problems.append(
            f"line {lines.of(table, '')}: [{lines.prefix}{table}] needs a command, e.g. "
            'command = ["python", "train.py", "--config", "{config}"]'
        )
        command = []
    elif not command or not all(isinstance(w, str) and w for w in command):
        problems.append(f"line {lines.of(table, 'command')}: command must be a list of words")
        command = []
    for word in command:
        for found in _PLACEHOLDER_RE.findall(word):
            if found not in PLACEHOLDERS:
                problems.append(
                    f"line {lines.of(table, 'command')}: the placeholder {{{found}}} does not "
                    f"exist (there are: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
                )
            elif found == "config" and not values.get("config"):
                problems.append(
                    f"line {lines.of(table, 'command')}: {{config}} is used but [{table}] names "
                    'no config file (config = "configs/train.yaml")'
                )
    config = values.get("config")
    if config is not None and (config.startswith("/") or ".." in Path(config).parts):
        problems.append(
            f"line {lines.of(table, 'config')}: config must be a path inside the project, "
            f"not {config!r}"
        )
    options = _options(values.get("options", {}), f"{table}.options", lines, problems)
    if options and not config:
        problems.append(
            f"line {lines.of(table, 'options')}: options map to config keys, but [{table}] "
            "names no config file"
        )
    for key in ("metrics", "artifacts"):
        if not all(isinstance(g, str) and g for g in values.get(key, [])):
            problems.append(f"line {lines.of(table, key)}: {key} must be a list of globs")
    for key in ("gpus", "cpus"):
        if key in values and values[key] < (0 if key == "gpus" else 1):
            problems.append(f"line {lines.of(table, key)}: {key} must not be {values[key]}")
    launcher = values.get("launcher")
    if launcher is not None and launcher not in LAUNCHERS:
        problems.append(
            f"line {lines.of(table, 'launcher')}: launcher must be one of "
            f"{', '.join(LAUNCHERS)}, not {launcher!r}"
        )
    if len(problems) > before:
        return None
    time = values.get("time")
    return ProjectWorkload(
        name=name,
        command=tuple(command),
        config=config,
        options=options,
        partition=values.get("partition"),
        time=str(time) if time is not None else None,
        gpus=values.get("gpus"),
        cpus=values.get("cpus"),
        mem=values.get("mem"),
        metrics=tuple(values.get("metrics", ())),
        artifacts=tuple(values.get("artifacts", ())),
        description=values.get("description", ""),
        launcher=launcher,
    )


def _options(raw: Any, table: str, lines: _Lines, problems: list[str]) -> dict[str, str]:
    """`epochs = "training.epochs"`, `batch-size = "data.batch_size"` → by underscored name."""
    if not isinstance(raw, dict):
        problems.append(f"line {lines.of(table, '')}: options must be a table")
        return {}
    options: dict[str, str] = {}
    for option, key in raw.items():
        where = f"line {lines.of(table, option)}"
        if not _OPTION_RE.fullmatch(option):
            problems.append(f"{where}: option name {option!r} must be lower-case words")
        elif not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            problems.append(f'{where}: {option} must name a config key, e.g. "training.epochs"')
        else:
            options[option.replace("-", "_")] = key
    return options


def _known(types: Mapping[str, object]) -> str:
    return "known: " + ", ".join(types)


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "a whole number", float: "a number", list: "a list"}
    names |= {dict: "a table"}
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


class _Lines:
    """Where a key is in the file's text, for error messages (tomllib keeps no positions)."""

    _HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
    _ASSIGN = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""")

    def __init__(self, text: str, prefix: str) -> None:
        self.prefix = prefix
        self._entries: list[tuple[int, str, str]] = []  # (line number, table, key)
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                table = _unquote_dotted(header.group(1))
                self._entries.append((number, table, ""))
                continue
            assign = self._ASSIGN.match(line)
            if assign:
                self._entries.append((number, table, _unquote_dotted(assign.group(1))))

    def of(self, table: str, key: str) -> int | str:
        """The line of `key` in `table` (relative to the prefix); `?` when it cannot be told."""
        full_table = (self.prefix + table).rstrip(".") if table else self.prefix.rstrip(".")
        for number, found_table, found_key in self._entries:
            whole = f"{found_table}.{found_key}".strip(".")
            if found_table == full_table and found_key == key:
                return number
            if key and whole == f"{full_table}.{key}".strip("."):
                return number
        return "?"


def _unquote_dotted(text: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in text.split("."))


def glob_match(path: str, pattern: str) -> bool:
    """Whether a relative path matches one of the file's globs: `*` and `?` within a folder,
    `**` any number of folders; a pattern without `/` matches the file name at any depth."""
    if "/" not in pattern:
        pattern = "**/" + pattern
    return re.fullmatch(glob_regex(pattern), path) is not None


def glob_base(pattern: str) -> tuple[str, int]:
    """The folder a glob starts in and how many folders down it can reach (64: any depth), so
    only that part of a run's working copy is listed."""
    if "/" not in pattern:
        return "", 64
    parts = pattern.split("/")
    fixed: list[str] = []
    for part in parts[:-1]:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    rest = parts[len(fixed) :]
    depth = 64 if "**" in rest else len(rest)
    return "/".join(fixed), depth
