"""The setup-env script and what it prints, all pure: the request and its fingerprint, the bash
script rendered from it, its result line, its step lines (the progress display), and the
diagnosis of a failure from its output (an unknown module, a full disk, the failing requirement).

The script prints three kinds of lines besides the tools' own output: `HPCJOB-SETUP-ENV-STEP …`
when it starts a step, `HPCJOB-SETUP-ENV-RESULT {json}` once at the end (also after a failure),
and nothing else of its own that a parser needs. It appends everything it prints to
`setup-env.log` beside itself as it goes, so a killed run keeps its log, and writes its process id
to `setup-env.pid` so that an interrupted login-node run can be stopped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcjob import __version__
from hpcjob.errors import HpcjobError
from hpcjob.render import shell_path, shell_quote

RESULT_PREFIX = "HPCJOB-SETUP-ENV-RESULT "
STEP_PREFIX = "HPCJOB-SETUP-ENV-STEP "
MARKER_NAME = ".hpcjob-env.json"
INSTALLERS = ("pip", "uv")
SCRIPT_NAME = "setup-env.sh"
REQUIREMENTS_NAME = "requirements.txt"
LOG_NAME = "setup-env.log"
PID_NAME = "setup-env.pid"

# Distributions whose import name is not the name with - turned into _.
_IMPORT_NAMES = {
    "pyyaml": "yaml",
    "scikit-learn": "sklearn",
    "scikit-image": "skimage",
    "pillow": "PIL",
    "opencv-python": "cv2",
    "opencv-python-headless": "cv2",
    "beautifulsoup4": "bs4",
    "python-dateutil": "dateutil",
    "protobuf": "google.protobuf",
    "tomli-w": "tomli_w",
    "pytorch-lightning": "pytorch_lightning",
    "attrs": "attr",
    "msgpack-python": "msgpack",
    "pyzmq": "zmq",
    "typing-extensions": "typing_extensions",
}
_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class EnvRequest:
    """What one setup-env asks for, from the profile and the command line."""

    venv: str
    python: str = "python3"
    modules: tuple[str, ...] = ()
    requirements: str = ""
    installer: str = "pip"
    editable: str | None = None
    system_site_packages: bool = False
    force: bool = False


@dataclass(frozen=True)
class EnvResult:
    """What the script's result line says."""

    ok: bool
    action: str | None = None  # create, update, rebuild, repair, verify
    stage: str | None = None  # where it failed: modules, python, venv, install, verify, script
    error: str | None = None
    python_version: str | None = None
    venv_python: str | None = None
    installer: str | None = None
    packages: tuple[dict[str, Any], ...] = ()
    torch: dict[str, Any] | None = None
    venv_bytes: int | None = None
    venv_files: int | None = None
    install_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def up_to_date(self) -> bool:
        return self.action == "verify"


# -- names and fingerprints ----------------------------------------------------------------------


def requirement_names(text: str) -> list[str]:
    """Distribution names in a requirements file (options, URLs and comments left out)."""
    names = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")) or "://" in line:
            continue
        match = _NAME_RE.match(line)
        if match:
            names.append(match.group(1))
    return names


def canonical_name(distribution: str) -> str:
    """PEP 503's normalised form: `Typing_Extensions` and `typing-extensions` are one name."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def import_name(distribution: str) -> str:
    """The module a distribution is imported as (the common exceptions, else - → _)."""
    return _IMPORT_NAMES.get(
        canonical_name(distribution), distribution.replace("-", "_").replace(".", "_")
    )


def fingerprint(request: EnvRequest) -> str:
    """sha256 of everything that decides the venv's content."""
    data = {
        "modules": list(request.modules),
        "python": request.python,
        "requirements": request.requirements,
        "installer": request.installer,
        "editable": request.editable,
        "system_site_packages": request.system_site_packages,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def environment_key(modules: Sequence[str], python: str) -> str:
    """What ties a venv to a profile: its modules and Python. Stored in the marker so `submit`
    can tell when the profile has moved on from the venv."""
    data = {"modules": list(modules), "python": python}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# -- the script -----------------------------------------------------------------------------------


def render_setup_script(request: EnvRequest) -> str:
    """The bash script that creates, updates or repairs the venv and verifies it.

    It reads `requirements.txt` beside itself, prints step lines behind STEP_PREFIX and one
    result line behind RESULT_PREFIX, and appends all its output to `setup-env.log` beside itself.
    """
    if request.installer not in INSTALLERS:
        raise HpcjobError(f"Unknown installer {request.installer!r}; use pip or uv.", exit_code=2)
    names = requirement_names(request.requirements)
    pairs = [f"{name}={import_name(name)}" for name in names]
    modules = " ".join(shell_quote(m) for m in request.modules)
    editable = f" -e {shell_path(request.editable)}" if request.editable else ""
    site = " --system-site-packages" if request.system_site_packages else ""
    checks = " ".join(shell_quote(p) for p in pairs)
    return _SCRIPT.format(
        version=__version__,
        prefix=shell_quote(RESULT_PREFIX),
        step_prefix=shell_quote(STEP_PREFIX),
        venv=shell_path(request.venv),
        python=shell_quote(request.python),
        fingerprint=shell_quote(fingerprint(request)),
        environment=shell_quote(environment_key(request.modules, request.python)),
        installer=shell_quote(request.installer),
        force="1" if request.force else "0",
        modules=modules,
        requirements_count=len(names) + (1 if request.editable else 0),
        site=site,
        editable=editable,
        checks=checks,
        marker=shell_quote(MARKER_NAME),
        log=shell_quote(LOG_NAME),
        pid=shell_quote(PID_NAME),
        verify=_VERIFY,
        disk=_DISK,
    )


def parse_result(output: str) -> EnvResult:
    """The last result line of the script's output."""
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                data = json.loads(line[len(RESULT_PREFIX) :])
            except ValueError as exc:
                raise HpcjobError(f"setup-env printed a broken result line: {line!r}") from exc
            known = {k: data.pop(k) for k in list(data) if k in _RESULT_KEYS}
            packages = tuple(known.pop("packages", None) or ())
            return EnvResult(packages=packages, extra=data, **known)
    raise HpcjobError(
        "setup-env ended without a result line.",
        hint="The output's tail follows; the script was killed or could not start.",
    )


_RESULT_KEYS = {f for f in EnvResult.__dataclass_fields__ if f != "extra"}


def tail(text: str, lines: int = 15) -> str:
    """The last lines of an output, without the script's own step and result lines."""
    own = (STEP_PREFIX, RESULT_PREFIX)
    kept = [ln for ln in text.rstrip().splitlines() if not ln.startswith(own)]
    return "\n".join(kept[-lines:])


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


# -- the script text ---------------------------------------------------------------------------

# The venv's size and file count, for the result line: defines venv_size(path) in the two
# embedded scripts below (after their `import os`).
_VENV_SIZE = r"""
def venv_size(path):
    size = files = 0
    for root, dirs, names in os.walk(path):
        for name in names:
            files += 1
            try:
                size += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return size, files
"""

# Runs inside the venv's python: import every requirement, torch's facts, the venv's size; the
# marker is written only when everything imported.
_VERIFY = (
    r"""
import importlib, importlib.metadata, json, os, sys, time
"""
    + _VENV_SIZE
    + r"""
prefix, marker, fingerprint, action, install_s, installer, venv, environment = sys.argv[1:9]
result = {"ok": True, "action": action, "installer": installer, "install_s": float(install_s),
          "python_version": "%d.%d.%d" % sys.version_info[:3], "packages": []}
for pair in sys.argv[9:]:
    dist, _, module = pair.partition("=")
    entry = {"name": dist, "module": module, "ok": True}
    try:
        loaded = importlib.import_module(module)
        try:
            entry["version"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            entry["version"] = getattr(loaded, "__version__", None)
    except BaseException as exc:
        entry.update(ok=False, error="%s: %s" % (type(exc).__name__, exc))
        result["ok"] = False
        result["stage"] = "verify"
        result["error"] = "import failed"
    result["packages"].append(entry)
torch = sys.modules.get("torch")
if torch is not None:
    result["torch"] = {"version": torch.__version__, "cuda_build": torch.version.cuda,
                       "cuda_available": bool(torch.cuda.is_available())}
result["venv_bytes"], result["venv_files"] = venv_size(venv)
if result["ok"] and action != "verify":
    tmp = marker + ".tmp"
    with open(tmp, "w") as handle:
        json.dump({"fingerprint": fingerprint, "environment": environment,
                   "python_version": result["python_version"],
                   "installer": installer, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                   time.gmtime())}, handle)
    os.replace(tmp, marker)
print(prefix + json.dumps(result), flush=True)
sys.exit(0 if result["ok"] else 7)
"""
)

# Runs in the profile's python after a failed write: how full each place the install writes to
# is (the venv, $TMPDIR, the installer's cache), and how big the venv got. Prints a JSON fragment
# that continues the result line.
_DISK = (
    r"""
import json, os, sys
"""
    + _VENV_SIZE
    + r"""
places = []
for what, path in zip(("venv", "tmp", "cache"), sys.argv[2:]):
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and probe != "/":
        probe = os.path.dirname(probe)
    try:
        st = os.statvfs(probe)
    except OSError:
        continue
    mount = os.path.realpath(probe)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    places.append({"what": what, "path": path, "mount": mount,
                   "free_bytes": st.f_bavail * st.f_frsize, "size_bytes": st.f_blocks * st.f_frsize,
                   "free_files": st.f_favail, "files": st.f_files})
size, files = venv_size(sys.argv[1])
print(', "disk": %s, "venv_bytes": %d, "venv_files": %d' % (json.dumps(places), size, files))
"""
)

_SCRIPT = """#!/bin/bash
# Rendered by hpcjob {version}: create, update or repair a venv, then verify it.
set -uo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
prefix={prefix}
step_prefix={step_prefix}
venv_dir={venv}
python_cmd={python}
fingerprint={fingerprint}
installer={installer}
force={force}
modules=({modules})
marker="$venv_dir"/{marker}
# Tools print as they go instead of in blocks at the end (the output streams to hpcjob).
export PYTHONUNBUFFERED=1 PIP_PROGRESS_BAR=off
echo "$$" > "$here"/{pid}

fail() {{  # stage, error, exit status, more JSON fields; the values are fixed words and numbers
    printf '%s{{"ok": false, "stage": "%s", "error": "%s"%s}}\\n' "$prefix" "$1" "$2" "${{4:-}}"
    exit "$3"
}}
step() {{
    printf '%s%s\\n' "$step_prefix" "$*"
}}
version_of() {{
    "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null
}}
disk_facts() {{  # how full the places an install writes to are (see hpcjob/envscript.py)
    "$python_cmd" - "$venv_dir" "$venv_dir" "${{TMPDIR:-/tmp}}" "$cache_dir" 2>/dev/null \\
        <<'HPCJOB_DISK' || true
{disk}HPCJOB_DISK
}}

load_modules() {{
    [ "${{#modules[@]}}" -gt 0 ] || return 0
    step modules
    if ! type module >/dev/null 2>&1; then
        # A script does not read the login files that define `module`: the tools' own init.
        for init in "${{MODULESHOME:-/nonexistent}}/init/bash" /etc/profile.d/lmod.sh \\
            /etc/profile.d/modules.sh; do
            if [ -f "$init" ]; then
                set +u
                # shellcheck disable=SC1090
                . "$init" >/dev/null 2>&1
                set -u
                break
            fi
        done
    fi
    type module >/dev/null 2>&1 || fail modules no_module_command 10
    said="$here/.module-output"
    set +u  # module scripts reference unset variables
    module purge >/dev/null 2>&1
    index=0
    for name in "${{modules[@]}}"; do
        echo "module load $name"
        module load "$name" >"$said" 2>&1
        rc=$?
        cat "$said"
        if [ "$rc" -ne 0 ] || grep -q -e 'module(s) are unknown' \\
            -e 'Unable to locate a modulefile' "$said"; then
            rm -f -- "$said"
            fail modules module_not_found 10 ", \\"module_index\\": $index"
        fi
        index=$((index + 1))
    done
    set -u
    rm -f -- "$said"
}}

main() {{
load_modules
step python
want=$(version_of "$python_cmd") || fail python python_not_found 5
echo "python:     $python_cmd is Python $want"

action=create
if [ -e "$venv_dir" ]; then
    have=""
    if [ -x "$venv_dir/bin/python" ]; then
        have=$(version_of "$venv_dir/bin/python") || have=""
    fi
    stored=""
    if [ -n "$have" ] && [ -f "$marker" ]; then
        stored=$("$venv_dir/bin/python" -c \\
            'import json, sys; print(json.load(open(sys.argv[1]))["fingerprint"])' \\
            "$marker" 2>/dev/null) || stored=""
    fi
    if [ -z "$have" ]; then
        action=repair
    elif [ "$force" = 1 ]; then
        action=rebuild
    elif [ "$have" != "$want" ]; then
        versions="\\"venv_python\\": \\"$have\\", \\"python_version\\": \\"$want\\""
        fail python python_mismatch 6 ", $versions"
    elif [ "$stored" = "$fingerprint" ]; then
        action=verify
    elif [ -n "$stored" ]; then
        action=update
    else
        action=repair  # no valid marker: an install that never finished
    fi
fi
step venv "$action"
echo "venv:       $venv_dir ($action)"

start=$SECONDS
used=$installer
cache_dir="${{PIP_CACHE_DIR:-${{XDG_CACHE_HOME:-$HOME/.cache}}/pip}}"
if [ "$action" != verify ]; then
    # Removed before anything changes: a half-finished install must never look healthy.
    rm -f -- "$marker"
    if [ "$action" = repair ] || [ "$action" = rebuild ]; then
        if [ -n "$(ls -A -- "$venv_dir" 2>/dev/null)" ] && [ ! -f "$venv_dir/pyvenv.cfg" ]; then
            fail venv not_a_venv_refusing_to_delete 8
        fi
        rm -rf -- "$venv_dir"
    fi
    if [ ! -x "$venv_dir/bin/python" ]; then
        mkdir -p -- "$(dirname -- "$venv_dir")"
        "$python_cmd" -m venv{site} -- "$venv_dir" || fail venv venv_failed 9 "$(disk_facts)"
    fi
    if [ "$installer" = uv ] && ! command -v uv >/dev/null 2>&1; then
        echo "uv is not on PATH here; installing with pip"
        used=pip
    fi
    step install "$used" {requirements_count}
    rc=0
    if [ "$used" = uv ]; then
        cache_dir="${{UV_CACHE_DIR:-${{XDG_CACHE_HOME:-$HOME/.cache}}/uv}}"
        uv pip install --python "$venv_dir/bin/python" -r "$here/requirements.txt"{editable} \\
            || rc=$?
    else
        "$venv_dir/bin/python" -m pip install --disable-pip-version-check \\
            -r "$here/requirements.txt"{editable} || rc=$?
    fi
    [ "$rc" -eq 0 ] || fail install install_failed 4 "$(disk_facts)"
fi

step verify
"$venv_dir/bin/python" - "$prefix" "$marker" "$fingerprint" "$action" \\
    "$((SECONDS - start))" "$used" "$venv_dir" {environment} {checks} <<'HPCJOB_VERIFY'
{verify}HPCJOB_VERIFY
}}

# Everything the script prints also goes to the log beside it, line by line as it comes, so an
# interrupted or killed run keeps its log.
main 2>&1 | tee -a -- "$here"/{log}
exit "${{PIPESTATUS[0]}}"
"""
