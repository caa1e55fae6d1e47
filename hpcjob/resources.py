"""Where the built-in templates and workload programs live: in a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

from hpcjob.errors import HpcjobError

_PACKAGE = Path(__file__).resolve().parent


def builtin_dir(name: str) -> Path:
    """The built-in `templates` or `workloads` folder.

    A wheel carries them inside the package as `_templates`/`_workloads` (see pyproject.toml);
    a checkout or editable install has them at the top of the repository.
    """
    for candidate in (_PACKAGE / f"_{name}", _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise HpcjobError(
        f"hpcjob's built-in {name} folder is missing from the installation ({_PACKAGE}).",
        hint="Reinstall hpcjob: pip install --force-reinstall hpcjob",
    )


def workload_files() -> dict[str, bytes]:
    """The workload programs to snapshot into a run directory, by file name."""
    folder = builtin_dir("workloads")
    files = sorted(folder.glob("*.py")) + sorted(folder.glob("*.txt"))
    return {path.name: path.read_bytes() for path in files}
