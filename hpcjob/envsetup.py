"""`hpcjob setup-env`: the profile's venv, built with its modules, verified, and fingerprinted.

The pure part (fingerprint, module-name check, the rendered shell script, parsing its result line)
is separate from the edge (`setup_on_login_node`, `setup_as_job`), which stages the script through
the scheduler's shell and records the run in the ledger like any run.

The same rendered script runs on the login node and inside the `setup-env` batch job: it creates or
repairs the venv, installs, verifies in that very environment, and only then writes the marker
`<venv>/.hpcjob-env.json` with the fingerprint, so a half-finished install never looks healthy.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpcjob import __version__
from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.render import shell_path, shell_quote

if TYPE_CHECKING:
    from hpcjob.app import Context
    from hpcjob.ledger import Run

RESULT_PREFIX = "HPCJOB-SETUP-ENV-RESULT "
MARKER_NAME = ".hpcjob-env.json"
INSTALLERS = ("pip", "uv")
# Snellius' home quota; the summary shows the venv against it.
HOME_QUOTA_BYTES = 200 * 1024**3
HOME_QUOTA_FILES = 1_000_000
LOGIN_TIMEOUT_S = 15 * 60  # login-node commands are killed after 15 minutes on Snellius
SCRIPT_NAME = "setup-env.sh"
REQUIREMENTS_NAME = "requirements.txt"
LOG_NAME = "setup-env.log"

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
# Characters a PDF or a word processor puts where a module name had an ASCII one.
_LOOKALIKES = {
    "\u2010": "-",  # HYPHEN
    "\u2011": "-",  # NON-BREAKING HYPHEN
    "\u2012": "-",  # FIGURE DASH
    "\u2013": "-",  # EN DASH
    "\u2014": "-",  # EM DASH
    "\u2015": "-",  # HORIZONTAL BAR
    "\u2212": "-",  # MINUS SIGN
    "\ufe63": "-",  # SMALL HYPHEN-MINUS
    "\uff0d": "-",  # FULLWIDTH HYPHEN-MINUS
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u00a0": " ",  # NO-BREAK SPACE
    "\u2009": " ",
    "\u200b": "",  # ZERO WIDTH SPACE
    "\u2044": "/",  # FRACTION SLASH
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
    stage: str | None = None  # where it failed: python, venv, install, verify
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


# -- pure ---------------------------------------------------------------------------------------


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


def import_name(distribution: str) -> str:
    """The module a distribution is imported as (the common exceptions, else - → _)."""
    key = re.sub(r"[-_.]+", "-", distribution).lower()
    return _IMPORT_NAMES.get(key, distribution.replace("-", "_").replace(".", "_"))


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


def venv_warning(ctx: Context) -> str | None:
    """A sentence when the profile's venv was never set up, never finished, or was set up for
    other modules or another Python than the profile names now; None when it matches."""
    venv = ctx.profile.get("venv")
    if not venv or ctx.profile.scheduler == "local":
        return None
    shell = ctx.scheduler.shell
    marker = f"{shell.expand_home(str(venv)).rstrip('/')}/{MARKER_NAME}"
    fix = f"run `hpcjob setup-env --profile {ctx.profile.name}` first"
    try:
        stored = json.loads(shell.read_bytes(marker, 0, 65536)) if shell.exists(marker) else None
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict):
        return (
            f"The venv {venv} was not set up by hpcjob setup-env, or its install did not finish: "
            f"the job may fail with ModuleNotFoundError; {fix}."
        )
    expected = environment_key(ctx.profile.modules, str(ctx.profile.get("python") or "python3"))
    if stored.get("environment") not in (None, expected):
        return (
            f"The venv {venv} was set up for other modules or another Python than profile "
            f"{ctx.profile.name} names now; {fix}."
        )
    return None


def check_module_names(modules: tuple[str, ...] | list[str]) -> None:
    """Refuse module names with Unicode look-alikes (pasted from a PDF) before anything runs."""
    for module in modules:
        bad = [ch for ch in module if ord(ch) > 127]
        if not bad:
            continue
        ch = bad[0]
        name = unicodedata.name(ch, "unnamed character")
        ascii_spelling = "".join(_LOOKALIKES.get(c, c) for c in module)
        fixable = all(c in _LOOKALIKES for c in bad)
        raise HpcjobError(
            f"The module name {module!r} contains {ch!r} (U+{ord(ch):04X} {name}), "
            "which `module load` will not find.",
            hint=(
                f'Use the ASCII spelling "{ascii_spelling}" in the profile\'s modules.'
                if fixable
                else "Retype the name by hand; it was probably pasted from a PDF."
            ),
            exit_code=EXIT_USAGE,
        )


def render_setup_script(request: EnvRequest) -> str:
    """The bash script that creates, updates or repairs the venv and verifies it.

    It reads `requirements.txt` beside itself and prints one result line behind RESULT_PREFIX.
    """
    if request.installer not in INSTALLERS:
        raise HpcjobError(f"Unknown installer {request.installer!r}; use pip or uv.", exit_code=2)
    pairs = [f"{name}={import_name(name)}" for name in requirement_names(request.requirements)]
    modules = ""
    if request.modules:
        loads = "".join(f"module load {shell_quote(m)}\n" for m in request.modules)
        modules = f"set +u\nmodule purge\n{loads}set -u\n"
    editable = f" -e {shell_path(request.editable)}" if request.editable else ""
    site = " --system-site-packages" if request.system_site_packages else ""
    checks = " ".join(shell_quote(p) for p in pairs)
    return _SCRIPT.format(
        version=__version__,
        prefix=shell_quote(RESULT_PREFIX),
        venv=shell_path(request.venv),
        python=shell_quote(request.python),
        fingerprint=shell_quote(fingerprint(request)),
        environment=shell_quote(environment_key(request.modules, request.python)),
        installer=shell_quote(request.installer),
        force="1" if request.force else "0",
        modules=modules,
        site=site,
        editable=editable,
        checks=checks,
        marker=shell_quote(MARKER_NAME),
        verify=_VERIFY,
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


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def result_error(result: EnvResult, request: EnvRequest, output: str) -> HpcjobError:
    """The user's words for a failed result."""
    where = f"the venv at {request.venv}"
    if result.error == "python_mismatch":
        return HpcjobError(
            f"{where} was made with Python {result.venv_python}, but the profile's python "
            f"({request.python}, with its modules) is Python {result.python_version}.",
            hint="Rebuild it for this Python: hpcjob setup-env --force",
        )
    if result.stage == "install":
        failing = failing_requirement(output)
        named = f" ({failing} could not be installed)" if failing else ""
        return HpcjobError(
            f"Installing the requirements into {where} failed{named}. The log ends:\n"
            + tail(output),
            hint="Fix or pin that requirement in the file, then run hpcjob setup-env again; "
            "the venv is marked unfinished until an install passes.",
        )
    if result.stage == "verify":
        broken = [p for p in result.packages if not p.get("ok")]
        lines = "\n".join(f"  {p['name']} (import {p['module']}): {p.get('error')}" for p in broken)
        return HpcjobError(
            f"The install finished but {len(broken)} requirement(s) do not import in {where}:\n"
            + lines,
            hint="A distribution whose import name differs is checked as name-with-underscores; "
            "otherwise the package is broken for this Python: try --force.",
        )
    return HpcjobError(
        f"setup-env failed ({result.stage}: {result.error}). The output ends:\n" + tail(output),
        hint="Check the profile's python, modules and venv path (hpcjob config show).",
    )


_DONE = {
    "create": "created",
    "update": "updated",
    "rebuild": "rebuilt",
    "repair": "repaired",
    "verify": "up to date",
}


def summary_rows(result: EnvResult) -> list[tuple[str, Any]]:
    """The key/value lines the summary shows."""
    rows: list[tuple[str, Any]] = [
        ("result", _DONE.get(result.action or "", str(result.action)) + ", verified"),
        ("python", result.python_version),
    ]
    for package in result.packages:
        rows.append((package["name"], f"ok {package.get('version') or ''}".strip()))
    torch = result.torch
    if torch:
        rows.append(("torch", f"{torch.get('version')} (CUDA build {torch.get('cuda_build')})"))
        available = torch.get("cuda_available")
        rows.append(
            (
                "cuda available",
                "yes"
                if available
                else "no (expected on a login node without GPUs; "
                "`hpcjob submit gpu-check` confirms on a GPU node)",
            )
        )
    if result.venv_bytes is not None and result.venv_files is not None:
        gib = result.venv_bytes / 1024**3
        rows.append(
            (
                "venv size",
                f"{gib:.2f} GiB ({100 * result.venv_bytes / HOME_QUOTA_BYTES:.1f}% of 200 GiB), "
                f"{result.venv_files} files ({100 * result.venv_files / HOME_QUOTA_FILES:.1f}% of "
                "1M)",
            )
        )
    if result.install_s is not None:
        rows.append(("install seconds", result.install_s))
    return rows


def result_json(result: EnvResult, run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "state": run.state.value,
        "up_to_date": result.up_to_date,
        "action": result.action,
        "python_version": result.python_version,
        "installer": result.installer,
        "packages": list(result.packages),
        "torch": result.torch,
        "venv_bytes": result.venv_bytes,
        "venv_files": result.venv_files,
        "install_s": result.install_s,
        "run_dir": run.run_dir,
    }


# -- the edge -----------------------------------------------------------------------------------


def request_for(
    ctx: Context,
    requirements: str,
    *,
    installer: str = "pip",
    editable: str | None = None,
    system_site_packages: bool = False,
    force: bool = False,
) -> EnvRequest:
    """The request from the profile: refused before anything runs if it cannot work."""
    profile = ctx.profile
    venv = profile.get("venv")
    if not venv:
        raise HpcjobError(
            f"Profile {profile.name!r} has no venv path.",
            hint=f'Set venv = "~/hpcjob/venv" under [profiles.{profile.name}] in '
            f"{ctx.settings.config_path}, or HPCJOB_VENV.",
            exit_code=EXIT_USAGE,
        )
    check_module_names(profile.modules)
    if installer not in INSTALLERS:
        raise HpcjobError(f"--installer must be pip or uv, not {installer!r}.", exit_code=2)
    return EnvRequest(
        venv=str(venv),
        python=str(profile.get("python") or "python3"),
        modules=tuple(profile.modules),
        requirements=requirements,
        installer=installer,
        editable=editable,
        system_site_packages=system_site_packages,
        force=force,
    )


def _stage(ctx: Context, run_dir: str, request: EnvRequest, script: str) -> None:
    shell = ctx.scheduler.shell
    shell.makedirs(run_dir)
    shell.write_bytes(f"{run_dir}/{REQUIREMENTS_NAME}", request.requirements.encode())
    shell.write_bytes(f"{run_dir}/{SCRIPT_NAME}", script.encode(), mode=0o755)


def setup_on_login_node(ctx: Context, request: EnvRequest) -> tuple[Run, EnvResult, str]:
    """Run the script through the profile's shell; record it as a run of scheduler `login`."""
    from hpcjob.app import run_root
    from hpcjob.jobstate import JobState
    from hpcjob.ledger import NewRun
    from hpcjob.render import script_hash
    from hpcjob.scheduler import JobInfo, utc_now

    scheduler = ctx.scheduler
    script = render_setup_script(request)
    new = NewRun(
        profile=ctx.profile.name,
        # Not the scheduler's cluster: refresh must never ask Slurm about this run.
        cluster=f"login:{scheduler.cluster}",
        scheduler="login",
        workload="setup-env",
        spec={"workload": "setup-env", "resources": {}, "args": _spec_args(request)},
        script=script,
        script_hash=script_hash(script),
        run_dir="",
    )
    run_dir = f"{run_root(ctx).rstrip('/')}/{new.run_id}"
    new = NewRun(**{**new.__dict__, "run_dir": run_dir})
    run = ctx.ledger.create_run(new)
    try:
        _stage(ctx, run_dir, request, script)
    except (HpcjobError, OSError) as exc:
        ctx.ledger.mark_unsubmitted(run.run_id, f"staging the run directory failed: {exc}")
        raise HpcjobError(f"Could not stage {run_dir}: {exc}") from exc
    log_path = f"{run_dir}/{LOG_NAME}"
    run = ctx.ledger.set_submitted(run.run_id, "login", log_path)
    started = utc_now()
    run = ctx.ledger.record_info(
        run, JobInfo("login", JobState.RUNNING, started_at=started), "login node"
    )
    begun = time.monotonic()
    try:
        done = scheduler.shell.run(
            ["bash", f"{run_dir}/{SCRIPT_NAME}"], check=False, timeout=LOGIN_TIMEOUT_S
        )
    except HpcjobError as exc:
        ctx.ledger.record_info(
            run, JobInfo("login", JobState.FAILED, ended_at=utc_now(), reason=exc.message), "login"
        )
        raise
    output = done.stdout + (f"\n{done.stderr}" if done.stderr else "")
    scheduler.shell.write_bytes(log_path, output.encode())
    try:
        result = parse_result(done.stdout)
    except HpcjobError:
        result = EnvResult(ok=False, stage="script", error=f"exit {done.returncode}")
    ok = result.ok and done.returncode == 0
    run = ctx.ledger.record_info(
        run,
        JobInfo(
            "login",
            JobState.COMPLETED if ok else JobState.FAILED,
            exit_code=done.returncode,
            started_at=started,
            ended_at=utc_now(),
            reason=None if ok else f"{result.stage}: {result.error}",
        ),
        "login node",
    )
    ctx.ledger.set_facts(run.run_id, {"setup_env_s": round(time.monotonic() - begun, 1)})
    return run, result, output


def setup_as_job(ctx: Context, request: EnvRequest) -> tuple[Run, EnvResult, str]:
    """Submit the setup-env workload (its template runs the same staged script) and wait."""
    from hpcjob import app as core
    from hpcjob.spec import SpecRequest

    prepared = core.prepare(ctx, SpecRequest(workload="setup-env", require_data=False))
    script = render_setup_script(request)
    _stage(ctx, prepared.new_run.run_dir, request, script)  # the job's template runs it
    run = core.submit(ctx, prepared)
    run = core.wait(ctx, run)
    output = core.read_log(ctx, run).decode("utf-8", errors="replace")
    try:
        result = parse_result(output)
    except HpcjobError:
        result = EnvResult(ok=False, stage="job", error=f"the job ended {run.state.value}")
    return run, result, output


def _spec_args(request: EnvRequest) -> dict[str, Any]:
    return {
        "venv": request.venv,
        "installer": request.installer,
        "editable": request.editable,
        "system_site_packages": request.system_site_packages,
        "force": request.force,
        "fingerprint": fingerprint(request),
    }


# -- the script ---------------------------------------------------------------------------------

# Runs inside the venv's python: import every requirement, torch's facts, the venv's size; the
# marker is written only when everything imported.
_VERIFY = r"""
import importlib, importlib.metadata, json, os, sys, time
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
size = files = 0
for root, dirs, names in os.walk(venv):
    for name in names:
        files += 1
        try:
            size += os.lstat(os.path.join(root, name)).st_size
        except OSError:
            pass
result["venv_bytes"], result["venv_files"] = size, files
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

_SCRIPT = """#!/bin/bash
# Rendered by hpcjob {version}: create, update or repair a venv, then verify it.
set -uo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
prefix={prefix}
venv_dir={venv}
python_cmd={python}
fingerprint={fingerprint}
installer={installer}
force={force}
marker="$venv_dir"/{marker}

fail() {{  # stage, error, exit status; the values are fixed words and version numbers
    printf '%s{{"ok": false, "stage": "%s", "error": "%s"%s}}\\n' "$prefix" "$1" "$2" "${{4:-}}"
    exit "$3"
}}
version_of() {{
    "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null
}}

{modules}want=$(version_of "$python_cmd") || fail python python_not_found 5
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
echo "venv:       $venv_dir ($action)"

start=$SECONDS
used=$installer
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
        "$python_cmd" -m venv{site} -- "$venv_dir" || fail venv venv_failed 9
    fi
    if [ "$installer" = uv ] && ! command -v uv >/dev/null 2>&1; then
        echo "uv is not on PATH here; installing with pip" >&2
        used=pip
    fi
    rc=0
    if [ "$used" = uv ]; then
        uv pip install --python "$venv_dir/bin/python" -r "$here/requirements.txt"{editable} \\
            2>&1 || rc=$?
    else
        "$venv_dir/bin/python" -m pip install --disable-pip-version-check \\
            -r "$here/requirements.txt"{editable} 2>&1 || rc=$?
    fi
    [ "$rc" -eq 0 ] || fail install install_failed 4
fi

"$venv_dir/bin/python" - "$prefix" "$marker" "$fingerprint" "$action" \\
    "$((SECONDS - start))" "$used" "$venv_dir" {environment} {checks} <<'HPCJOB_VERIFY'
{verify}HPCJOB_VERIFY
"""
