"""The doctor's probe: one bash script that looks at the profile's login node in a single round
trip (modules, the Python they give, the venv, the data files read with h5py, df), and the parsers
of what it prints (its lines, `df -P`/`df -Pi` output, Python versions). What they mean is
hpcjob/checkup.py; `hpcjob doctor` itself is hpcjob/insight/doctor.py.

The script takes every value as an argument, never as text pasted into it, and prints one line
per fact: `@doctor<TAB>section<TAB>field…`; whatever else the login files print is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

TAG = "@doctor"
MIN_PYTHON = (3, 10)
# Each part of the probe (a python, an h5 read, a df) is stopped after this many seconds.
PART_LIMIT_S = 30


# ------------------------------------------------------------------------------ the script

_IMPORTS = """\
import importlib, sys
for name in ("torch", "h5py"):
    try:
        module = importlib.import_module(name)
        version = getattr(module, "__version__", "?")
        print("@doctor\\tvenv\\timport\\t%s\\tok\\t%s" % (name, version))
    except Exception as exc:
        text = ("%s: %s" % (type(exc).__name__, exc)).replace("\\t", " ").replace("\\n", " ")
        print("@doctor\\tvenv\\timport\\t%s\\tfailed\\t%s" % (name, text[:300]))
"""

# Reads each file's dataset `x` or `y` (or its only dataset, as workloads/pcam.py does): the
# shape and dtype come from the file's metadata, and one row is read to prove the data is there.
_H5_READ = """\
import os, sys
def say(*fields):
    print("\\t".join(["@doctor", "data"] + [str(f).replace("\\t", " ").replace("\\n", " ")[:300]
                                           for f in fields]))
try:
    import h5py
except Exception as exc:
    say("no_h5py", "%s: %s" % (type(exc).__name__, exc))
    sys.exit(0)
folder = sys.argv[1]
for name in sys.argv[2:]:
    path = os.path.join(folder, name)
    key = "y" if name.endswith("_y.h5") else "x"
    if not os.path.exists(path):
        say("file", name, "missing")
        continue
    try:
        with h5py.File(path, "r") as handle:
            sets = [k for k in handle if isinstance(handle[k], h5py.Dataset)]
            if key not in handle and len(sets) != 1:
                raise ValueError("no dataset %r (found %s)" % (key, sets))
            data = handle[key] if key in handle else handle[sets[0]]
            if len(data.shape) and data.shape[0]:
                data[0]
            say("file", name, "ok", "x".join(str(n) for n in data.shape), data.dtype)
    except Exception as exc:
        say("file", name, "error", "%s: %s" % (type(exc).__name__, exc))
"""

PROBE_SCRIPT = r"""
set -u
python_cmd=$1 venv=$2 data=$3 root=$4 limit=$5
IFS=, read -r -a data_files <<<"$6"
shift 6
say() { local IFS=$'\t'; printf '%s\t%s\n' @doctor "$*"; }
one_line() { tr '\t\r\n' '   ' | cut -c1-300; }
expand() { case $1 in "~") echo "$HOME" ;; "~/"*) echo "$HOME/${1#\~/}" ;; *) echo "$1" ;; esac; }
limited() { timeout -k 5 "$limit" "$@"; }
nearest() {  # the path itself, or the nearest folder above it that exists
    local p=$1
    while [ ! -e "$p" ] && [ "$p" != / ] && [ -n "$p" ]; do p=$(dirname -- "$p"); done
    echo "${p:-/}"
}

modules_part() {
    [ "$#" -gt 0 ] || { say modules none; return; }
    if ! type module >/dev/null 2>&1; then
        for init in "${MODULESHOME:-/nonexistent}/init/bash" /etc/profile.d/lmod.sh \
            /etc/profile.d/modules.sh; do
            if [ -f "$init" ]; then set +u; . "$init" >/dev/null 2>&1; set -u; break; fi
        done
    fi
    type module >/dev/null 2>&1 || { say modules no_module_command; return; }
    said=$(mktemp) || { say modules failed "$1" "mktemp failed"; return; }
    set +u
    for name in "$@"; do
        module load "$name" >"$said" 2>&1
        rc=$?
        if [ "$rc" -ne 0 ] || grep -q -e 'module(s) are unknown' \
            -e 'Unable to locate a modulefile' "$said"; then
            set -u
            say modules failed "$name" "$(one_line <"$said")"
            rm -f -- "$said"
            return
        fi
        say modules loaded "$name"
    done
    set -u
    rm -f -- "$said"
}

python_part() {
    out=$(limited "$python_cmd" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>&1)
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then say python timeout "$python_cmd"
    elif [ "$rc" -ne 0 ]; then say python missing "$python_cmd" "$(printf %s "$out" | one_line)"
    else say python version "$out" "$(command -v -- "$python_cmd" || echo "$python_cmd")"
    fi
}

reader=$python_cmd
venv_part() {
    [ -n "$venv" ] || { say venv none; return; }
    local dir vpy
    dir=$(expand "$venv")
    vpy="$dir/bin/python"
    if [ ! -e "$vpy" ]; then say venv missing "$dir"; return; fi
    out=$(limited "$vpy" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>&1)
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then say venv timeout "$vpy"; return; fi
    if [ "$rc" -ne 0 ]; then say venv broken "$vpy" "$(printf %s "$out" | one_line)"; return; fi
    say venv python "$out" "$vpy"
    reader=$vpy
    limited "$vpy" -c "$IMPORTS" 2>/dev/null
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then say venv timeout_imports "$vpy"; fi
}

data_part() {
    [ -n "$data" ] || { say data none; return; }
    local dir
    dir=$(expand "$data")
    if [ ! -d "$dir" ]; then say data missing_dir "$dir"; return; fi
    if [ ! -r "$dir" ] || [ ! -x "$dir" ]; then say data unreadable_dir "$dir"; return; fi
    say data reader "$reader"
    limited "$reader" -c "$H5_READ" "$dir" "$@" 2>/dev/null
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then say data timeout "$dir"; fi
}

disk_part() {  # label path
    [ -n "$2" ] || return 0
    local full at line
    full=$(expand "$2")
    at=$(nearest "$full")
    say quota path "$1" "$full" "$at"
    limited df -P -- "$at" 2>&1 | while IFS= read -r line; do say df "$1" "$line"; done
    limited df -Pi -- "$at" 2>&1 | while IFS= read -r line; do say dfi "$1" "$line"; done
}

modules_part "$@"
python_part
venv_part
data_part "${data_files[@]}"
disk_part runs "$root"
disk_part venv "$venv"
if command -v myquota >/dev/null 2>&1; then
    limited myquota 2>&1 | head -n 40 | while IFS= read -r line; do say myquota "$line"; done
fi
say end
"""


def probe_argv(
    python: str,
    venv: str | None,
    data_dir: str | None,
    remote_root: str,
    *,
    data_files: Sequence[str] = (),
    modules: Sequence[str] = (),
    limit_s: int = PART_LIMIT_S,
) -> list[str]:
    """The probe as one argv: `bash -c SCRIPT` with every value an argument of its own (the
    data files' names, which hold no comma, as one)."""
    script = f"IMPORTS={_quoted(_IMPORTS)}\nH5_READ={_quoted(_H5_READ)}\n{PROBE_SCRIPT}"
    return [
        "bash",
        "-c",
        script,
        "hpcjob-doctor",
        python,
        venv or "",
        data_dir or "",
        remote_root,
        str(limit_s),
        ",".join(data_files),
        *modules,
    ]


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# ------------------------------------------------------------------------------ its output


@dataclass(frozen=True)
class ProbeOutput:
    """The probe's lines by section (`modules`, `python`, `venv`, `data`, `quota`, `df`, `dfi`,
    `myquota`), each line its fields after the section; `complete` when the script reached its
    end."""

    sections: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    complete: bool = False

    def get(self, section: str) -> list[tuple[str, ...]]:
        return self.sections.get(section, [])

    def first(self, section: str) -> tuple[str, ...] | None:
        lines = self.get(section)
        return lines[0] if lines else None


def parse_probe(text: str) -> ProbeOutput:
    """The probe's `@doctor` lines; anything else (login banners, module chatter) is ignored."""
    sections: dict[str, list[tuple[str, ...]]] = {}
    complete = False
    for line in text.splitlines():
        fields = line.rstrip("\r").split("\t")
        if len(fields) < 2 or fields[0] != TAG:
            continue
        if fields[1] == "end":
            complete = True
            continue
        sections.setdefault(fields[1], []).append(tuple(fields[2:]))
    return ProbeOutput(sections, complete)


# ------------------------------------------------------------------------------ df


@dataclass(frozen=True)
class DiskUse:
    """One row of `df -P` (1024-byte blocks) or `df -Pi` (inodes): total, used, free."""

    filesystem: str
    total: int
    used: int
    free: int
    mount: str


_DF_ROW = re.compile(r"^(?P<fs>.+?)\s+(?P<total>\d+|-)\s+(?P<used>\d+|-)\s+(?P<free>\d+|-)\s+"
                     r"(?P<pct>\d+%|-)\s+(?P<mount>/.*)$")  # fmt: skip


def parse_df(text: str) -> list[DiskUse]:
    """The rows of `df -P` or `df -Pi` output (the header and any error line skipped). A
    filesystem that does not count inodes shows `-`: 0 there."""
    rows = []
    for line in text.splitlines():
        match = _DF_ROW.match(line.strip())
        if match is None or match["total"] == "Inodes":
            continue
        numbers = [int(v) if v != "-" else 0 for v in match.group("total", "used", "free")]
        rows.append(DiskUse(match["fs"], numbers[0], numbers[1], numbers[2], match["mount"]))
    return rows


# ------------------------------------------------------------------------------ Python


_VERSION = re.compile(r"^(?:Python\s+)?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_python_version(text: str) -> tuple[int, int, int] | None:
    """`3.9.18` or `Python 3.13.1` (what `python --version` prints) → (3, 9, 18); None else."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    major, minor, micro = match.groups()
    return int(major), int(minor), int(micro or 0)


def version_text(version: Sequence[int]) -> str:
    return ".".join(str(n) for n in version)


def python_too_old(version: Sequence[int]) -> bool:
    return tuple(version[:2]) < MIN_PYTHON
