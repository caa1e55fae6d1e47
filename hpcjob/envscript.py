"""The setup-env script, all pure: the request and its fingerprint, the bash script rendered from
it, and its result line (what its other output says is hpcjob/envlog.py).

The script prints three kinds of lines besides the tools' own output: `HPCJOB-SETUP-ENV-STEP …`
when it starts a step, `HPCJOB-SETUP-ENV-RESULT {json}` once at the end (also after a failure),
and nothing else of its own that a parser needs. It appends everything it prints to
`setup-env.log` beside itself as it goes, so a killed run keeps its log, and writes its process id
and the login node's hostname to `setup-env.pid` (`4242 int5`) so that an interrupted login-node
run can be stopped — on that login node.
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


def requirements_sha256(text: str) -> str:
    """sha256 of what a requirements text asks for: each line stripped, comments and blank lines
    left out, so a reworded comment is no change. Recorded in the venv's marker, so `submit` can
    tell when a project's requirements have moved on from its venv."""
    lines = [ln.split(" #", 1)[0].strip() for ln in text.splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith("#")]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


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
        requirements_sha256=shell_quote(requirements_sha256(request.requirements)),
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
requirements_sha256 = sys.argv[9]
result = {"ok": True, "action": action, "installer": installer, "install_s": float(install_s),
          "python_version": "%d.%d.%d" % sys.version_info[:3], "packages": []}
for pair in sys.argv[10:]:
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
    try:
        with open(tmp, "w") as handle:
            json.dump({"fingerprint": fingerprint, "environment": environment,
                       "requirements_sha256": requirements_sha256,
                       "python_version": result["python_version"],
                       "installer": installer, "written_at": time.strftime(
                           "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, handle)
        os.replace(tmp, marker)
    except OSError as exc:  # the script checked before, but a venv may change meanwhile
        result.update(ok=False, stage="venv", error="venv_not_writable", where="marker",
                      detail=str(exc))
print(prefix + json.dumps(result), flush=True)
sys.exit(0 if result["ok"] else 11 if result.get("stage") == "venv" else 7)
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
# The login node's name beside the pid: another login node's ps cannot see this process.
echo "$$ $(uname -n)" > "$here"/{pid}

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

not_writable() {{  # where this user may not write what setup-env must change, as a fixed word
    local probe
    if [ "$action" = create ]; then
        probe=$(dirname -- "$venv_dir")
        while [ ! -e "$probe" ] && [ "$probe" != / ] && [ "$probe" != . ]; do
            probe=$(dirname -- "$probe")
        done
        [ -w "$probe" ] || echo folder
        return 0
    fi
    if [ "$action" != update ] && [ ! -w "$(dirname -- "$venv_dir")" ]; then
        echo folder  # a repair or rebuild removes the venv and makes it anew
    elif [ ! -w "$venv_dir" ]; then
        echo venv
    else
        for probe in "$venv_dir/bin" "$venv_dir"/lib/python*/site-packages; do
            if [ -d "$probe" ] && [ ! -w "$probe" ]; then
                echo contents
                break
            fi
        done
    fi
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
        cat -- "$said"
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
    # Said before anything changes, and in words: a venv another user made, or one on a
    # read-only filesystem, would otherwise fail halfway or only when the marker is written.
    blocked=$(not_writable)
    [ -z "$blocked" ] || fail venv venv_not_writable 11 ", \\"where\\": \\"$blocked\\""
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
    "$((SECONDS - start))" "$used" "$venv_dir" {environment} {requirements_sha256} \\
    {checks} <<'HPCJOB_VERIFY'
{verify}HPCJOB_VERIFY
}}

# Everything the script prints also goes to the log beside it, line by line as it comes, so an
# interrupted or killed run keeps its log.
main 2>&1 | tee -a -- "$here"/{log}
exit "${{PIPESTATUS[0]}}"
"""
