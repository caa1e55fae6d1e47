"""What the setup-env script's output says, all pure: its step lines as progress ("installing
torch (3/7)") and the diagnosis of a failure (the requirement that would not install, a full
disk or quota, a module that does not exist). The script itself is hpcjob/envscript.py."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcjob.envscript import RESULT_PREFIX, STEP_PREFIX, EnvResult, canonical_name, tail

# -- progress: what the script is doing now -------------------------------------------------------

_STEP_WORDS = {
    "modules": "loading modules",
    "python": "checking python",
    "venv create": "creating venv",
    "venv update": "updating venv",
    "venv repair": "repairing venv",
    "venv rebuild": "rebuilding venv",
    "venv verify": "venv up to date",
    "verify": "verifying",
}
_COLLECTING = re.compile(
    r"^(?:Collecting|Requirement already satisfied:|Processing) ([^\s;<>=!~\[(]+)"
)
_INSTALLING = re.compile(r"^Installing collected packages: (.*)")
_UV_STEP = re.compile(r"^(Resolved|Prepared|Installed|Uninstalled|Audited) (\d+) packages?")


@dataclass
class SetupProgress:
    """Follows the script's output and says what it is doing: "installing torch (3/7)".

    Fed raw chunks (lines may be split across them); `feed` says whether the label changed.
    """

    requirements: tuple[str, ...] = ()
    step: str = "starting"
    detail: str = ""
    recent: list[str] = field(default_factory=list)  # the last lines of tool output
    keep: int = 4
    _partial: str = ""

    def feed(self, text: str) -> bool:
        before = self.label
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.rstrip("\r"))
        return self.label != before

    def _line(self, line: str) -> None:
        if line.startswith(STEP_PREFIX):
            self._step(line[len(STEP_PREFIX) :].split())
            return
        if line.startswith(RESULT_PREFIX) or not line.strip():
            return
        self.recent = [*self.recent, line][-self.keep :]
        if self.step == "installing":
            self._install_line(line.strip())

    def _step(self, words: list[str]) -> None:
        if words and words[0] == "install":
            self.step = "installing"
            installer = words[1] if len(words) > 1 else "pip"
            self.detail = f"with {installer}"
            return
        key = " ".join(words[:2])
        self.step = _STEP_WORDS.get(key, _STEP_WORDS.get(words[0] if words else "", key))
        self.detail = ""

    def _install_line(self, line: str) -> None:
        wanted = [canonical_name(n) for n in self.requirements]
        match = _COLLECTING.match(line)
        if match:
            raw = match.group(1).rstrip(",")
            name = canonical_name(_dist_of(raw))
            if name in wanted:
                self.detail = f"{name} ({wanted.index(name) + 1}/{len(wanted)})"
            else:
                self.detail = f"{name} (a dependency)"
            return
        match = _INSTALLING.match(line)
        if match:
            count = len([p for p in match.group(1).split(",") if p.strip()])
            self.detail = f"unpacking {count} package{'s' if count != 1 else ''}"
            return
        match = _UV_STEP.match(line)
        if match:
            self.detail = f"{match.group(1).lower()} {match.group(2)} packages"

    @property
    def label(self) -> str:
        if self.step == "installing" and self.detail and "(" in self.detail:
            return f"installing {self.detail}"
        return f"{self.step}: {self.detail}" if self.detail else self.step


def _dist_of(word: str) -> str:
    """`torch==2.1`, `/opt/wheels/torch-2.13.0+cpu-cp311-….whl` or `six` → the name."""
    base = word.rsplit("/", 1)[-1]
    if base.endswith((".whl", ".tar.gz", ".zip")):
        return base.split("-", 1)[0]
    return re.split(r"[<>=!~;\[ (]", base, maxsplit=1)[0]


# -- diagnosis -------------------------------------------------------------------------------------

_PIP_FAILURES = (
    re.compile(r"No matching distribution found for (\S+)"),
    re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
    re.compile(r"Failed building wheel for (\S+)"),
    re.compile(r"Failed to build (\S+)"),
    re.compile(r"Because (\S+) was not found in the package registry"),
    re.compile(r"No solution found when resolving dependencies:\s*\n\s*╰─▶ Because (\S+)"),
)


def failing_requirement(log: str) -> str | None:
    """The requirement pip (or uv) names as the one it could not install."""
    for pattern in _PIP_FAILURES:
        match = pattern.search(log)
        if match:
            return match.group(1).rstrip(".,:")
    return None


_NO_SPACE = re.compile(r"No space left on device|\[Errno 28\]|ENOSPC")
_QUOTA = re.compile(r"Disk quota exceeded|\[Errno 122\]|EDQUOT")
_FULL_PATH = re.compile(r"(?:No space left on device|Disk quota exceeded)\)?:? '([^']+)'")


@dataclass(frozen=True)
class DiskFull:
    """A write that failed for lack of space or quota, and the filesystem most likely full."""

    quota: bool  # Disk quota exceeded (the user's limit) rather than No space left on device
    path: str | None  # the file named in the error, when the tool named one
    mount: str | None
    free_bytes: int | None
    size_bytes: int | None
    free_files: int | None
    what: str | None  # venv, tmp or cache: which of the script's places sits on it


def disk_full(output: str, disk: Sequence[dict[str, Any]] = ()) -> DiskFull | None:
    """Whether the output shows a full disk or an exceeded quota, and which filesystem: the one
    holding the file the error names, else the one with the least room of those the script
    measured (the venv's, $TMPDIR's, the installer's cache's)."""
    quota = bool(_QUOTA.search(output))
    if not quota and not _NO_SPACE.search(output):
        return None
    named = _FULL_PATH.search(output)
    path = named.group(1) if named else None
    entry: dict[str, Any] | None = None
    if path:
        holding = [d for d in disk if path.startswith(str(d.get("mount", "/")).rstrip("/") + "/")]
        entry = max(holding, key=lambda d: len(str(d.get("mount"))), default=None)
    if entry is None and disk:
        entry = min(disk, key=_room)
    entry = entry or {}
    return DiskFull(
        quota=quota,
        path=path,
        mount=entry.get("mount"),
        free_bytes=entry.get("free_bytes"),
        size_bytes=entry.get("size_bytes"),
        free_files=entry.get("free_files"),
        what=entry.get("what"),
    )


def _room(entry: dict[str, Any]) -> float:
    """The smaller of the free fractions of space and of files (inodes)."""
    fractions = [1.0]
    if entry.get("size_bytes"):
        fractions.append((entry.get("free_bytes") or 0) / entry["size_bytes"])
    if entry.get("files"):
        fractions.append((entry.get("free_files") or 0) / entry["files"])
    return min(fractions)


_LMOD_UNKNOWN = re.compile(r"The following module\(s\) are unknown:\s*((?:\"[^\"]+\"\s*)+)")
_MODULES_UNKNOWN = re.compile(r"Unable to locate a modulefile for '([^']+)'")


@dataclass(frozen=True)
class ModuleProblem:
    """A `module load` that failed: which module, which module tool, and what it said."""

    module: str | None  # None: the cluster has no `module` command at all
    tool: str  # lmod, environment-modules, none, unknown
    said: str  # the tool's own words (trimmed)


def module_problem(result: EnvResult, output: str, modules: Sequence[str]) -> ModuleProblem | None:
    """What went wrong loading modules, from the result line and the tools' messages."""
    if result.stage != "modules":
        return None
    if result.error == "no_module_command":
        return ModuleProblem(None, "none", "")
    index = result.extra.get("module_index")
    module = modules[index] if isinstance(index, int) and 0 <= index < len(modules) else None
    lmod = _LMOD_UNKNOWN.search(output)
    if lmod:
        names = re.findall(r"\"([^\"]+)\"", lmod.group(1))
        said = "The following module(s) are unknown: " + " ".join(f'"{n}"' for n in names)
        return ModuleProblem(module or names[0], "lmod", said)
    found = _MODULES_UNKNOWN.search(output)
    if found:
        return ModuleProblem(module or found.group(1), "environment-modules", found.group(0))
    said = tail(output, 3)
    return ModuleProblem(module, "lmod" if "Lmod" in output else "unknown", said)
