"""What `hpcjob doctor` finds, as values and pure judgements: a `Finding` (check, status, what
was found, the fix) and what the probe's lines (hpcjob/probe.py) mean — this hpcjob's Python,
the data files, how full a filesystem may be, a path the cluster purges."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hpcjob.probe import (
    PART_LIMIT_S,
    DiskUse,
    ProbeOutput,
    parse_df,
    python_too_old,
    version_text,
)

Status = Literal["ok", "warn", "fail", "skip"]
# Below this much free space, or this share of the filesystem, quota headroom is a warning.
LOW_FREE_BYTES = 5 * 1024**3
LOW_FREE_SHARE = 0.10
HIGH_INODE_SHARE = 0.90
LOGIN_NODE_PYTHON = (
    "run hpcjob from a module's Python (`module load 2025 Python/3.13.1-GCCcore-14.2.0`, then "
    "`python -m venv ~/hpcjob-cli && ~/hpcjob-cli/bin/pip install hpcjob`) or `uv tool install "
    "hpcjob` (uv brings its own Python); never the system python3"
)


@dataclass(frozen=True)
class Finding:
    """One thing `hpcjob doctor` found: the check, ok/warn/fail/skip, what it found (one line)
    and the fix (a command to run, or what to change; None when there is nothing to do)."""

    check: str
    status: Status
    found: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "found": self.found, "fix": self.fix}


def hpcjob_python_finding(version: Sequence[int], executable: str, on_login_node: bool) -> Finding:
    """This hpcjob's own Python: >= 3.10, and on a login node the supported ways to get one."""
    said = f"hpcjob runs on Python {version_text(version[:3])} ({executable})"
    if python_too_old(version):
        return Finding("python", "fail", f"{said}; hpcjob needs 3.10 or newer", LOGIN_NODE_PYTHON)
    if on_login_node:
        said += "; on a login node keep it on a module's Python or `uv tool install hpcjob`"
    return Finding("python", "ok", said)


def data_finding(
    probe: ProbeOutput, data_dir: str, where: str, setup_env: str, expected: Sequence[str]
) -> Finding:
    """The PCAM files (`expected`) in the data folder, as the probe read them with h5py."""
    fix = f"Point data_dir (or --data-dir) at the folder with the PCAM HDF5 files {where}"
    lines = probe.get("data")
    head = lines[0] if lines else ("none",)
    if head[0] == "missing_dir":
        return Finding("data", "fail", f"the data folder {data_dir} does not exist {where}", fix)
    if head[0] == "unreadable_dir":
        return Finding(
            "data",
            "fail",
            f"the data folder {data_dir} cannot be read {where}",
            f"`chmod u+rx {data_dir}`, or {fix[0].lower()}{fix[1:]}",
        )
    reader = next((line[1] for line in lines if line[0] == "reader"), "python")
    if any(line[0] == "no_h5py" for line in lines):
        said = next(line[1] for line in lines if line[0] == "no_h5py")
        return Finding(
            "data",
            "warn",
            f"{reader} cannot import h5py ({said}): the files in {data_dir} were not opened",
            setup_env,
        )
    files = {line[1]: line[2:] for line in lines if line[0] == "file"}
    bad = [f"{name} {' '.join(v)}" for name, v in files.items() if not v or v[0] != "ok"]
    if any(line[0] == "timeout" for line in lines):
        bad.append(f"reading stopped after {PART_LIMIT_S} s")
    bad += _row_mismatches(files)
    if bad or len(files) < len(expected):
        missing = [name for name in expected if name not in files]
        bad += [f"{name} not looked at" for name in missing]
        return Finding("data", "fail", f"{data_dir} {where}: {'; '.join(bad)}", f"{fix}.")
    shapes = ", ".join(f"{n.split('split_')[-1][:-3]} {v[1]} {v[2]}" for n, v in files.items())
    return Finding("data", "ok", f"{data_dir}: the PCAM files read with h5py by {reader}: {shapes}")


def _row_mismatches(files: dict[str, tuple[str, ...]]) -> list[str]:
    """Each split's x and y must hold as many rows."""
    said = []
    for name, x in files.items():
        if not name.endswith("_x.h5"):
            continue
        split = name[: -len("_x.h5")].rsplit("_", 1)[-1]
        y = files.get(name[: -len("_x.h5")] + "_y.h5", ())
        if len(x) > 1 and len(y) > 1 and x[0] == y[0] == "ok":
            rows_x, rows_y = x[1].split("x")[0], y[1].split("x")[0]
            if rows_x != rows_y:
                said.append(f"{split}: x has {rows_x} rows, y {rows_y}")
    return said


def gib(kib: int) -> str:
    return f"{kib / 1024**2:.1f} GiB"


def disk_status(space: DiskUse | None, inodes: DiskUse | None) -> tuple[Status, str]:
    """How full a filesystem is, from its `df -P` and `df -Pi` rows: a warning below 5 GiB or
    10 % free, or above 90 % of its inodes used."""
    if space is None:
        return "skip", "df printed nothing for it"
    status: Status = "ok"
    free_bytes = space.free * 1024
    share = space.free / space.total if space.total else 1.0
    said = f"{gib(space.free)} free of {gib(space.total)} ({share:.0%}) on {space.mount}"
    if free_bytes < LOW_FREE_BYTES or share < LOW_FREE_SHARE:
        status = "warn"
    if inodes is not None and inodes.total:
        used = inodes.used / inodes.total
        said += f", {used:.0%} of {inodes.total} inodes used"
        if used > HIGH_INODE_SHARE:
            status = "warn"
    return status, said


def quota_findings(probe: ProbeOutput, where: str) -> list[Finding]:
    """Free space and inodes where the runs and the venv live (one finding per filesystem),
    and `myquota`'s own lines where the cluster has it."""
    paths = {line[1]: line[2] for line in probe.get("quota") if line[0] == "path"}
    by_mount: dict[str, tuple[list[str], DiskUse | None, DiskUse | None]] = {}
    for label, path in paths.items():
        space = _row(probe, "df", label)
        inodes = _row(probe, "dfi", label)
        key = space.mount if space is not None else path
        labels, _, _ = by_mount.setdefault(key, ([], space, inodes))
        labels.append(f"{label} {path}")
    found = []
    for labels, space, inodes in by_mount.values():
        status, said = disk_status(space, inodes)
        fix = (
            None
            if status == "ok"
            else (
                "Free space there (old run directories: `hpcjob runs`, then remove them), or "
                "move remote_root/venv to a filesystem with room (Snellius: `myquota` shows "
                "your quotas)."
            )
        )
        found.append(Finding("quota", status, f"{' and '.join(labels)}: {said}", fix))
    quota = [line[0] for line in probe.get("myquota") if line and line[0].strip()]
    if quota:
        found.append(Finding("quota", "ok", "myquota: " + " | ".join(q.strip() for q in quota)))
    if not found:
        found.append(Finding("quota", "skip", f"nothing to measure {where}"))
    return found


def _row(probe: ProbeOutput, section: str, label: str) -> DiskUse | None:
    rows = parse_df("\n".join(line[1] for line in probe.get(section) if line[0] == label))
    return rows[0] if rows else None


def purged_prefix(path: str, purged: dict[str, int]) -> str | None:
    """The `purged` prefix that `path` lies under, if any."""
    if not path.startswith("/"):
        return None  # `~/…`: the home, which no cluster purges
    normal = posixpath.normpath(path) + "/"
    return next((p for p in purged if normal.startswith(p.rstrip("/") + "/")), None)
