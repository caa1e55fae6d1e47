"""What `hpcjob init` finds in a project folder: the training script and how it takes its config,
the config's keys that hpcjob's options set, where the requirements are, a src/ layout, the
metrics files the code writes and the artifacts worth keeping. It reads files and writes nothing;
what it finds becomes a commented hpcjob.toml (hpcjob/project/starter.py).

Everything here is a guess a person checks: each finding says how it was found, and a search that
would take long (a folder of a million images) is bounded.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcjob.errors import HpcjobError
from hpcjob.project.projectfile import PROJECT_FILE, PYPROJECT
from hpcjob.project.requirements import project_requirements

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TRAINERS = ("experiments/train.py", "train.py", "scripts/train.py")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".toml")
CONFIG_FOLDERS = ("configs", "config", "conf")
# hpcjob's options (those of the built-in train) → the last part of a config key they set, and
# the top-level sections preferred when several keys match (`training.epochs` over `eval.epochs`).
_TRAINING = ("training", "train", "trainer")
OPTION_KEYS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("epochs", ("epochs", "num_epochs", "n_epochs", "max_epochs"), _TRAINING),
    ("lr", ("learning_rate", "lr"), (*_TRAINING, "optimizer", "optim")),
    ("batch-size", ("batch_size",), ()),
    ("seed", ("seed", "random_seed"), ()),
    ("dropout", ("dropout", "dropout_rate"), ()),
    ("num-workers", ("num_workers",), ()),
)
DATA_KEYS = ("data_path", "data_dir", "data_root")
RESULTS_KEYS = ("save_dir", "results_dir", "output_dir", "out_dir", "log_dir")
RESULTS_FOLDERS = ("experiments/results", "results", "outputs")

_SKIP_DIRS = {
    "__pycache__", "node_modules", "venv", "env", "site-packages", "build", "dist", "tests",
    "test", "wandb", "mlruns", "lightning_logs", "htmlcov",
}  # fmt: skip
_SKIP_TOP = {"data", "datasets"}  # at the top only: src/ml_core/data is code
_MAX_DEPTH = 6
_MAX_ENTRIES = 20_000  # files and folders looked at, all together
_MAX_SOURCES = 500  # .py files read
_MAX_READ = 256 * 1024
_CONFIG_FLAG = re.compile(r"""["'](--(?:config|cfg|config[-_]file|config[-_]path))["']""")
_CONFIG_POSITIONAL = re.compile(r"""add_argument\(\s*["'](?:config|config_path|cfg)["']""")
_NEXT_CALL = re.compile(r"add_argument\(|@click\.option\(|typer\.Option\(")
_DEFAULT = re.compile(r"""default\s*=\s*(?:Path\(\s*)?(["'])(?P<path>[^"'\n]+)\1""")
_MAIN = re.compile(r"""^if\s+__name__\s*==\s*["']__main__["']\s*:""", re.MULTILINE)
_WRITTEN = re.compile(r"""(["'])(?P<name>[^"'\n]{1,200}?\.(?:csv|jsonl))\1""")
_READS = re.compile(r"read_|loadtxt|genfromtxt|load_dataset")
_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_WORKLOAD_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Detected:
    """What `detect` found; paths are relative to `root`, with forward slashes."""

    root: Path
    name: str
    trainer: str | None = None
    # How the trainer takes its config: a flag ("--config"), "" (the first positional argument),
    # or None (it takes none on its command line).
    config_flag: str | None = None
    config: str | None = None
    config_found: str = ""  # how, in words
    options: Mapping[str, str] = field(default_factory=dict)  # option (as typed) → config key
    data_key: str | None = None  # the config key that holds the data's path, if any
    results_dir: str | None = None
    requirements: str | None = None  # where they come from, in words
    src_packages: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    scripts: tuple[str, ...] = ()  # other programs with a __main__ block: more workloads
    notes: tuple[str, ...] = ()

    @property
    def src_layout(self) -> bool:
        return bool(self.src_packages)


def detect(root: Path) -> Detected:
    """Look through the project at `root` (bounded, read-only)."""
    root = root.resolve()
    notes: list[str] = []
    files = _Files.walk(root, notes)
    trainer = _trainer(root, files)
    source = _read(root / trainer) if trainer else ""
    flag, default = _config_argument(source)
    config, how = _config(root, trainer, default, files, notes)
    if trainer and config and flag is None:
        notes.append(
            f"{trainer} takes no --config option, so hpcjob cannot hand it a copy of {config} "
            "per run: the options are left out."
        )
    keys = _config_keys(root / config, notes) if config else {}
    usable = flag is not None and bool(config)
    results = _results_dir(root, keys)
    try:
        requirements = project_requirements(root, None)
    except HpcjobError as exc:  # a broken -r line: setup-env will say so again
        requirements = None
        notes.append(exc.message)
    return Detected(
        root=root,
        name=_name(root),
        trainer=trainer,
        config_flag=flag if usable else None,
        config=config if usable else None,
        config_found=how if usable else "",
        options=_options(keys) if usable else {},
        data_key=_first_key(keys, DATA_KEYS, ()) if usable else None,
        results_dir=results,
        requirements=requirements[1] if requirements else None,
        src_packages=_src_packages(root),
        metrics=_metrics(root, files, results) if trainer else (),
        artifacts=_artifacts(results) if trainer else (),
        scripts=tuple(p for p in files.mains(root) if p != trainer),
        notes=tuple(notes),
    )


# -- the walk -------------------------------------------------------------------------------------


@dataclass
class _Files:
    """The project's .py and config files (relative posix paths), found by one bounded walk."""

    sources: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)

    @classmethod
    def walk(cls, root: Path, notes: list[str]) -> _Files:
        found = cls()
        seen = 0
        for folder, dirs, names in os.walk(root):
            here = Path(folder)
            depth = len(here.relative_to(root).parts)
            dirs[:] = sorted(d for d in dirs if depth < _MAX_DEPTH and _keep(here / d, depth))
            for name in sorted(names):
                relative = (here / name).relative_to(root).as_posix()
                if name.endswith(".py"):
                    found.sources.append(relative)
                elif name.endswith(CONFIG_SUFFIXES) and name not in (PROJECT_FILE, PYPROJECT):
                    found.configs.append(relative)
            seen += len(dirs) + len(names)
            if seen > _MAX_ENTRIES:
                notes.append(f"The folder holds more than {_MAX_ENTRIES} files; looked at some.")
                break
        return found

    def mains(self, root: Path) -> list[str]:
        """Programs under experiments/ or scripts/ with an `if __name__ == "__main__":` block."""
        return [
            path
            for path in self.sources[:_MAX_SOURCES]
            if path.split("/")[0] in ("experiments", "scripts") and _MAIN.search(_read(root / path))
        ]


def _keep(path: Path, depth: int) -> bool:
    name = path.name
    if name.startswith(".") or name in _SKIP_DIRS or (depth == 0 and name in _SKIP_TOP):
        return False
    return not (path / "pyvenv.cfg").exists()  # a venv under any name


def _read(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            return handle.read(_MAX_READ).decode("utf-8", errors="replace")
    except OSError:
        return ""


# -- the trainer and its config -----------------------------------------------------------------


def _trainer(root: Path, files: _Files) -> str | None:
    for candidate in TRAINERS:
        if (root / candidate).is_file():
            return candidate
    under_src = [p for p in files.sources if p.startswith("src/") and p.endswith("/train.py")]
    return under_src[0] if under_src else None


def _config_argument(source: str) -> tuple[str | None, str | None]:
    """The trainer's config flag (or "" for a positional one) and its default, from its text."""
    match = _CONFIG_FLAG.search(source)
    if match is None:
        return ("", None) if _CONFIG_POSITIONAL.search(source) else (None, None)
    rest = source[match.end() : match.end() + 1000]
    after = _NEXT_CALL.search(rest)
    default = _DEFAULT.search(rest[: after.start()] if after else rest)
    return match.group(1), default.group("path") if default else None


def _config(
    root: Path, trainer: str | None, default: str | None, files: _Files, notes: list[str]
) -> tuple[str | None, str]:
    """The config file (relative path) and how it was found."""
    if trainer is None:
        return None, ""
    here = (root / trainer).parent
    if default:
        for base in (root, here):
            candidate = (base / default).resolve()
            if candidate.is_file() and candidate.is_relative_to(root):
                return candidate.relative_to(root).as_posix(), f"the --config default in {trainer}"
        notes.append(f"The --config default {default!r} in {trainer} is not a file here.")
    folder = here.relative_to(root).as_posix()

    def closeness(path: str) -> tuple[bool, int, str]:
        near = folder == "." or path.startswith(folder + "/")
        return (not near, path.count("/"), path)

    named = sorted((p for p in files.configs if "train" in p.rsplit("/", 1)[-1]), key=closeness)
    if named:
        return named[0], f"a config named like training beside {trainer}"
    in_folders = [p for p in files.configs if _parent_name(p) in CONFIG_FOLDERS]
    if len(in_folders) == 1:
        return in_folders[0], "the only config in a configs folder"
    return None, ""


def _parent_name(path: str) -> str:
    parts = path.split("/")
    return parts[-2] if len(parts) > 1 else ""


def _config_keys(path: Path, notes: list[str]) -> dict[str, Any]:
    """The config's leaves by dotted key, in the file's order; {} when it cannot be read."""
    text = _read(path)
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (yaml.YAMLError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError too
        notes.append(f"Could not read {path.name} ({type(exc).__name__}): no options mapped.")
        return {}
    if not isinstance(data, dict):
        notes.append(f"{path.name} is not a table of keys: no options mapped.")
        return {}
    return dict(_leaves(data, ""))


def _leaves(data: Mapping[Any, Any], prefix: str) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for key, value in data.items():
        if not isinstance(key, str) or not _KEY_PART.match(key):
            continue  # a key that a dotted path cannot name
        if isinstance(value, dict):
            found.extend(_leaves(value, f"{prefix}{key}."))
        else:
            found.append((f"{prefix}{key}", value))
    return found


def _options(keys: Mapping[str, Any]) -> dict[str, str]:
    options = {}
    for option, names, preferred in OPTION_KEYS:
        key = _first_key(keys, names, preferred)
        if key is not None:
            options[option] = key
    return options


def _first_key(
    keys: Mapping[str, Any], names: tuple[str, ...], preferred: tuple[str, ...]
) -> str | None:
    """The key whose last part is one of `names` and whose value is a single value: under a
    preferred section first, then the shallowest, then the first in the file."""
    ranked = []
    for order, (key, value) in enumerate(keys.items()):
        parts = key.split(".")
        if parts[-1] in names and not isinstance(value, (list, dict)):
            section = parts[0] in preferred and len(parts) > 1
            ranked.append((not section, len(parts), order, key))
    return min(ranked)[3] if ranked else None


# -- results, metrics, artifacts, the rest -------------------------------------------------------


def _results_dir(root: Path, keys: Mapping[str, Any]) -> str | None:
    """Where the program writes its results: a save_dir-like key of the config, else a results
    folder that is there."""
    key = _first_key(keys, RESULTS_KEYS, (*_TRAINING, "output", "logging"))
    value = keys.get(key) if key else None
    path = value.strip().removeprefix("./").rstrip("/") if isinstance(value, str) else ""
    outside = path.startswith(("/", "~", "$")) or ".." in path.split("/")
    if path and not outside and not any(c in path for c in "{}*$"):
        return path
    return next((f for f in RESULTS_FOLDERS if (root / f).is_dir()), None)


def _metrics(root: Path, files: _Files, results: str | None) -> tuple[str, ...]:
    """Globs for the .csv/.jsonl files the code writes (string literals in its .py files)."""
    names: list[str] = []
    for path in files.sources[:_MAX_SOURCES]:
        for line in _read(root / path).splitlines():
            if _READS.search(line):
                continue  # a file the code reads, such as its data
            for match in _WRITTEN.finditer(line):
                base = re.sub(r"\{[^{}]*\}", "*", match.group("name").rsplit("/", 1)[-1])
                if base.lstrip("*").startswith(".") or base in names:
                    continue  # `f"{name}.csv"` alone would match every CSV
                names.append(base)
    names.sort(key=lambda n: "metric" not in n.lower())  # stable: the code's order otherwise
    return tuple(f"{results}/*/{n}" if results else f"**/{n}" for n in names[:3])


def _artifacts(results: str | None) -> tuple[str, ...]:
    if results is None:
        return ("**/*.pt", "**/*.pth")  # plots anywhere would sweep in the docs' images
    return tuple(f"{results}/**/*.{ext}" for ext in ("pt", "pth", "png"))


def _src_packages(root: Path) -> tuple[str, ...]:
    src = root / "src"
    if not src.is_dir():
        return ()
    return tuple(sorted(p.parent.name for p in src.glob("*/__init__.py")))


def _name(root: Path) -> str:
    path = root / PYPROJECT
    if path.is_file():
        try:
            name = tomllib.loads(_read(path)).get("project", {}).get("name")
        except (tomllib.TOMLDecodeError, AttributeError):
            name = None
        if isinstance(name, str) and name.strip():
            return name.strip()
    return root.name


def workload_name(path: str) -> str:
    """A workload name for a program's path: its file name without .py, in allowed characters."""
    stem = path.rsplit("/", 1)[-1].removesuffix(".py")
    return _WORKLOAD_NAME.sub("-", stem).strip("-._") or "program"
