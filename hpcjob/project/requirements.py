"""Which requirements a project's venv holds: its requirements.txt (with `-r` files inlined), else
pyproject.toml's `[project.dependencies]`, plus the project file's `[project] requirements`.

The text goes to the cluster alone, as one requirements.txt beside the setup script, so nothing in
it may point at a file on this machine: `-r` files are inlined, and local paths (`-e .`, `./lib`,
`--find-links ./wheels`, `-c constraints.txt`) are left out with a comment that says why — the
code travels with each run as a snapshot and `src/` is put on PYTHONPATH. `-e .` (the project
itself) brings pyproject.toml's dependencies instead, which is what installing it would have done.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.project.projectfile import PYPROJECT, Project

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REQUIREMENTS_TXT = "requirements.txt"
NOTE_PREFIX = "# hpcjob: "  # the comment lines this module adds; `notes()` reads them back
_MAX_DEPTH = 10  # -r files that include each other that deep are a loop
_INCLUDE = re.compile(r"^(?:-r|--requirement)(?:\s*=\s*|\s+|(?=\S))(?P<path>\S+)$")
_CONSTRAINT = re.compile(r"^(?:-c|--constraint)(?:\s*=\s*|\s+|(?=\S))(?P<path>\S+)$")
_EDITABLE = re.compile(r"^(?:-e|--editable)(?:\s*=\s*|\s+)(?P<target>.+)$")
_FIND_LINKS = re.compile(r"^(?:-f|--find-links)(?:\s*=\s*|\s+)(?P<target>\S+)$")
_SELF = re.compile(r"^\.(?:/)?(?:\[(?P<extras>[^\]]*)\])?$")  # `.`, `./`, `.[dev]`
_VCS = ("git+", "hg+", "svn+", "bzr+")


def project_requirements(root: Path, project: Project | None) -> tuple[str, str] | None:
    """The requirements text to install for the project at `root`, and where it came from in
    words; None when the project names none anywhere."""
    parts: list[str] = []
    sources: list[str] = []
    txt = root / REQUIREMENTS_TXT
    if txt.is_file():
        reader = _Reader(root)
        parts.append(reader.read(txt, depth=0))
        included = [p for p in reader.included if p != REQUIREMENTS_TXT]
        sources.append(
            REQUIREMENTS_TXT + (f" (with {', '.join(included)} inlined)" if included else "")
        )
    else:
        deps = pyproject_dependencies(root)
        if deps:
            parts.append("\n".join(deps) + "\n")
            sources.append(f"{PYPROJECT} [project.dependencies]")
    if project is not None and project.requirements:
        label = "hpcjob.toml [project] requirements"
        if project.source.name == PYPROJECT:
            label = f"{PYPROJECT} [tool.hpcjob.project] requirements"
        parts.append(f"# from {label}\n" + "\n".join(project.requirements) + "\n")
        sources.append(label)
    if not sources:
        return None
    return "".join(parts), " + ".join(sources)


def notes(text: str) -> list[str]:
    """What `project_requirements` left out of a text, in words (its own comment lines)."""
    return [ln[len(NOTE_PREFIX) :] for ln in text.splitlines() if ln.startswith(NOTE_PREFIX)]


def pyproject_dependencies(root: Path, extras: tuple[str, ...] = ()) -> list[str]:
    """`[project.dependencies]` of root's pyproject.toml and the named optional extras."""
    data = _pyproject(root)
    table = data.get("project")
    if not isinstance(table, dict):
        return []
    found = [d for d in table.get("dependencies") or [] if isinstance(d, str) and d.strip()]
    optional = table.get("optional-dependencies")
    for extra in extras:
        group = optional.get(extra) if isinstance(optional, dict) else None
        found += [d for d in group or [] if isinstance(d, str) and d.strip()]
    return found


def _pyproject(root: Path) -> dict[str, Any]:
    path = root / PYPROJECT
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HpcjobError(
            f"Cannot read {path}: {exc}.",
            hint="Fix pyproject.toml, or list the requirements in requirements.txt.",
            exit_code=EXIT_USAGE,
        ) from exc


class _Reader:
    """Reads a requirements file, inlining `-r` files and leaving out what points at this
    machine; remembers which files it read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.included: list[str] = []
        self._self_added = False

    def read(self, path: Path, depth: int) -> str:
        name = self._name(path)
        if depth > _MAX_DEPTH:
            raise HpcjobError(
                f"{name} is included by -r more than {_MAX_DEPTH} files deep (a loop?).",
                exit_code=EXIT_USAGE,
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HpcjobError(f"Cannot read {name}: {exc}.", exit_code=EXIT_USAGE) from exc
        self.included.append(name)
        out: list[str] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            out.extend(self._line(raw, path, f"{name} line {number}", depth))
        return "".join(f"{line}\n" for line in out)

    def _line(self, raw: str, path: Path, where: str, depth: int) -> list[str]:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            return [raw.rstrip()]
        include = _INCLUDE.match(line)
        if include and "://" not in include.group("path"):  # pip reads a URL itself
            target = (path.parent / include.group("path")).resolve()
            if not target.is_file():
                raise HpcjobError(
                    f"{where}: `{line}` names {target}, which does not exist.",
                    hint="Fix the -r line (its path is relative to the file that holds it).",
                    exit_code=EXIT_USAGE,
                )
            inlined = self.read(target, depth + 1).splitlines()
            return [f"# inlined from {self._name(target)} ({where}: {line})", *inlined]
        local = self._local(line)
        if local is None:
            return [raw.rstrip()]
        return self._left_out(line, where, local)

    def _local(self, line: str) -> str | None:
        """Why `line` cannot be installed on the cluster, or None when it can."""
        if _CONSTRAINT.match(line):
            return "a constraints file on this machine"
        links = _FIND_LINKS.match(line)
        if links:
            return None if "://" in links.group("target") else "a folder on this machine"
        editable = _EDITABLE.match(line)
        target = editable.group("target").strip() if editable else line
        if target.startswith(_VCS) or (editable is None and line.startswith("-")):
            return None  # a VCS URL, or an option such as --index-url
        if "://" in target and "file://" not in target:
            return None  # `pkg @ https://…`, a wheel's URL
        if (
            editable is not None
            or target.startswith((".", "/", "~"))
            or "file:" in target
            or ("/" in target and "@" not in target)
        ):
            return "a path on this machine"
        return None

    def _left_out(self, line: str, where: str, why: str) -> list[str]:
        target = _EDITABLE.match(line)
        path = target.group("target").strip() if target else line
        own = _SELF.match(path)
        out = [
            f'{NOTE_PREFIX}left out "{line}" ({where}): {why}; the code travels with each run '
            "as a snapshot and src/ is on PYTHONPATH"
        ]
        if own is not None and not self._self_added:
            extras = tuple(e.strip() for e in (own.group("extras") or "").split(",") if e.strip())
            deps = pyproject_dependencies(self.root, extras)
            if deps:
                self._self_added = True
                out.append(f"{NOTE_PREFIX}installed {PYPROJECT}'s dependencies in its place")
                out.extend(deps)
        return out

    def _name(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)
