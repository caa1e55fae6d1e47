"""setup-env in the user's words (pure): module names checked before anything runs, what went
wrong in a failed result (a module that does not exist, a full disk or quota, a requirement that
would not install or import, another Python), the summary, the `--json` result, the GPU check."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from hpcjob.envlog import disk_full, failing_requirement, module_problem
from hpcjob.envscript import EnvRequest, EnvResult, tail
from hpcjob.errors import EXIT_JOB_FAILED, EXIT_USAGE, HpcjobError
from hpcjob.ledger.records import Run

# Snellius' home quota; the summary shows the venv against it.
HOME_QUOTA_BYTES = 200 * 1024**3
HOME_QUOTA_FILES = 1_000_000


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


def check_module_names(modules: tuple[str, ...] | list[str], profile: str | None = None) -> None:
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
                f'Use the ASCII spelling "{ascii_spelling}" in the modules of {_named(profile)}.'
                if fixable
                else "Retype the name by hand; it was probably pasted from a PDF."
            ),
            exit_code=EXIT_USAGE,
        )


def _named(profile: str | None, start: bool = False) -> str:
    """The profile in words (`start`: to begin a sentence)."""
    named = f"profile {profile}" if profile else "the profile"
    return named[0].upper() + named[1:] if start else named


def _again(profile: str | None, flags: str = "") -> str:
    """The command that runs setup-env again for the same profile."""
    return (
        "hpcjob setup-env"
        + (f" {flags}" if flags else "")
        + (f" --profile {profile}" if profile else "")
    )


def result_error(
    result: EnvResult, request: EnvRequest, output: str, *, profile: str | None = None
) -> HpcjobError:
    """The user's words for a failed result; `profile` is the profile the venv belongs to."""
    where = f"the venv at {request.venv}"
    named = _named(profile)
    full = disk_full(output, result.extra.get("disk") or ())
    if full is not None and result.stage in ("venv", "install", "verify", "script"):
        return _disk_error(full, result, request, output, profile)
    if result.stage == "modules":
        return _module_error(result, request, output, profile)
    if result.error == "venv_not_writable":
        return _not_writable(result, request, profile)
    if result.error == "python_mismatch":
        return HpcjobError(
            f"{where} was made with Python {result.venv_python}, but {named}'s python "
            f"({request.python}{_with_modules(request)}) is Python {result.python_version}; "
            "a venv works only with the Python that made it.",
            hint=f"Rebuild it for this Python: {_again(profile, '--force')} (or set venv of "
            f"{named} to a new path to keep the old one).",
        )
    if result.error == "python_not_found":
        return HpcjobError(
            f"{_named(profile, start=True)}'s python ({request.python!r}) does not run on the "
            f"cluster{_with_modules(request)}. The output ends:\n" + tail(output, 8),
            hint=f"Set `python` of {named} to a command that exists there (python3), or load "
            'the module that provides it (Snellius: modules = ["2025", '
            '"Python/3.13.1-GCCcore-14.2.0"]).',
        )
    if result.stage == "install":
        failing = failing_requirement(output)
        which = f" ({failing} could not be installed)" if failing else ""
        return HpcjobError(
            f"Installing the requirements into {where} failed{which}. The log ends:\n"
            + tail(output),
            hint=f"Fix or pin that requirement in the file, then run {_again(profile)} again; "
            "the venv is marked unfinished until an install passes.",
        )
    if result.stage == "verify":
        broken = [p for p in result.packages if not p.get("ok")]
        lines = "\n".join(f"  {p['name']} (import {p['module']}): {p.get('error')}" for p in broken)
        return HpcjobError(
            f"The install finished but {len(broken)} requirement(s) do not import in {where}:\n"
            + lines,
            hint="A distribution whose import name differs is checked as name-with-underscores; "
            f"otherwise the package is broken for this Python: try {_again(profile, '--force')}.",
        )
    if result.stage == "script":
        again = "The venv stays marked unfinished and the next run repairs it."
        hint = (
            "Login-node commands are killed after 15 minutes on Snellius: run long installs "
            f"with {_again(profile, '--as-job')}. " + again
            if "killed" in (result.error or "")
            else "The log's end above says what went wrong; fix that and run "
            f"{_again(profile)}. " + again
        )
        return HpcjobError(
            f"The setup script {result.error}, before it finished. The log ends:\n" + tail(output),
            hint=hint,
        )
    return HpcjobError(
        f"setup-env failed ({result.stage}: {result.error}). The output ends:\n" + tail(output),
        hint=f"Check the python, modules and venv path of {named} (hpcjob config show"
        + (f" --profile {profile})." if profile else ")."),
    )


def _not_writable(result: EnvResult, request: EnvRequest, profile: str | None) -> HpcjobError:
    """A venv (or the folder it goes in) this user may not write: made by another user, or on a
    read-only filesystem. The script says so before it changes anything (or, should the venv
    change meanwhile, when the marker cannot be written)."""
    venv = request.venv
    what = {
        "folder": f"The folder the venv {venv} goes in is not writable by this user",
        "contents": f"Parts (bin/ or site-packages) of the venv at {venv} are not writable by "
        "this user",
        "marker": f"The venv at {venv} cannot be written by this user: its marker could not be "
        f"written ({result.extra.get('detail') or 'no reason given'})",
    }.get(str(result.extra.get("where")), f"The venv at {venv} is not writable by this user")
    done = (
        "the install finished, but the venv stays marked unfinished"
        if result.extra.get("where") == "marker"
        else "nothing was changed"
    )
    return HpcjobError(
        f"{what} (another user's venv, or a read-only filesystem?); {done}.",
        hint="Set `venv` in the profile to a path of your own (e.g. venv = "
        '"~/hpcjob/venv"), or have the permissions fixed so that you can write it (its '
        f"owner: chmod -R u+w, or chown to you); then run {_again(profile)} again.",
    )


def _with_modules(request: EnvRequest) -> str:
    return f", after module load {' '.join(request.modules)}" if request.modules else ""


def _module_error(
    result: EnvResult, request: EnvRequest, output: str, profile: str | None
) -> HpcjobError:
    problem = module_problem(result, output, request.modules)
    assert problem is not None
    named = _named(profile)
    if problem.module is None:
        return HpcjobError(
            f"{_named(profile, start=True)} loads modules ({', '.join(request.modules)}), but "
            "the cluster has no `module` command (neither in the login shell nor in "
            "$MODULESHOME/init).",
            hint=f"If this cluster has no environment modules, remove `modules` from {named} "
            "and point `python` at a Python there; otherwise check that `module avail` works in "
            "a login shell on it.",
        )
    module = problem.module
    family = module.split("/", 1)[0]
    said = f" ({problem.tool}: {problem.said})" if problem.said else ""
    hint = (
        f"See which versions exist: `module spider {family}` (Lmod) or `module avail {family}`; "
        "names are case-sensitive"
    )
    earlier = request.modules[: request.modules.index(module)] if module in request.modules else ()
    if not any(re.fullmatch(r"\d{4}", m) for m in earlier) and not re.fullmatch(r"\d{4}", module):
        hint += '; on Snellius load the software year before it, e.g. modules = ["2025", …]'
    return HpcjobError(
        f"The module {module} does not exist on the cluster"
        + (f" of {named}" if profile else "")
        + f": `module load {module}` failed{said}.",
        hint=hint + ".",
    )


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024**3:.2f} GiB"


def _disk_error(
    full: Any, result: EnvResult, request: EnvRequest, output: str, profile: str | None
) -> HpcjobError:
    kind = "Disk quota exceeded" if full.quota else "No space left on device"
    place = full.mount or "the filesystem"
    role = {"venv": "the venv's", "tmp": "$TMPDIR's", "cache": "the installer cache's"}.get(
        full.what or "", "a"
    )
    if full.free_files == 0:
        room = "no files (inodes) left"
    elif full.free_bytes is not None:
        room = f"{_gib(full.free_bytes)} free of {_gib(full.size_bytes)}"
    else:
        room = "no room"
    what = "your quota there is used up" if full.quota else f"it has {room}"
    size = ""
    if result.venv_bytes is not None:
        size = (
            f" The venv is {_gib(result.venv_bytes)} in {result.venv_files or 0:,} files so far "
            f"(home on Snellius: 200 GiB and 1M files)."
        )
    return HpcjobError(
        f"Setting up the venv at {request.venv} failed: {kind} on {place} ({role} filesystem"
        f"{': ' + full.path if full.path else ''}); {what}.{size} The log ends:\n"
        + tail(output, 6),
        hint="See your usage with `myquota` (Snellius). Put the venv where there is room: set "
        f"`venv` of {_named(profile)} to a path on /projects or on scratch (e.g. "
        '"/scratch-shared/$USER/venv"), or use --installer uv, which writes fewer files; then '
        f"run {_again(profile)} again (the unfinished venv is repaired).",
    )


_DONE = {
    "create": "created",
    "update": "updated",
    "rebuild": "rebuilt",
    "repair": "repaired",
    "verify": "up to date",
}


@dataclass(frozen=True)
class GpuCheck:
    """What the gpu-check job in the new venv found."""

    run_id: str
    job_id: str | None
    partition: str | None
    state: str
    cuda_available: bool | None
    gpus_visible: int | None
    torch: str | None
    cuda_build: str | None
    reason: str | None  # why it failed, in the job's words

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and bool(self.cuda_available)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "run_id": self.run_id,
            "job_id": self.job_id,
            "partition": self.partition,
            "state": self.state,
            "cuda_available": self.cuda_available,
            "gpus_visible": self.gpus_visible,
            "torch": self.torch,
            "cuda_build": self.cuda_build,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Outcome:
    """One setup-env: its run, the script's result, the output, and the GPU check if asked."""

    run: Run
    result: EnvResult
    output: str
    gpu: GpuCheck | None = None


def summary_rows(result: EnvResult, gpu: GpuCheck | None = None) -> list[tuple[str, Any]]:
    """The key/value lines the summary shows."""
    rows: list[tuple[str, Any]] = [
        ("result", _DONE.get(result.action or "", str(result.action)) + ", verified"),
        ("python", result.python_version),
    ]
    for package in result.packages:
        rows.append((package["name"], f"ok {package.get('version') or ''}".strip()))
    torch = result.torch
    if torch:
        build = torch.get("cuda_build")
        rows.append(("torch build", f"CUDA {build}" if build else "CPU only (no CUDA)"))
        available = torch.get("cuda_available")
        rows.append(
            (
                "cuda available",
                "yes"
                if available
                else "no (expected on a login node without GPUs; "
                "--check-gpu confirms on a GPU node)",
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
    if gpu is not None:
        rows.append(("gpu check", _gpu_line(gpu)))
    return rows


def _gpu_line(gpu: GpuCheck) -> str:
    where = f"job {gpu.job_id} on {gpu.partition}, run {gpu.run_id}"
    if gpu.ok:
        return f"ok: torch sees CUDA with {gpu.gpus_visible} GPU(s) ({where})"
    return f"FAILED: {gpu.reason or 'the job ended ' + gpu.state} ({where})"


def result_json(outcome: Outcome) -> dict[str, Any]:
    result, run = outcome.result, outcome.run
    data = {
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
    if outcome.gpu is not None:
        data["gpu_check"] = outcome.gpu.as_dict()
    return data


def gpu_error(gpu: GpuCheck) -> HpcjobError:
    """The non-zero exit for a GPU check that did not see CUDA."""
    return HpcjobError(
        f"The venv is set up, but the gpu-check job {gpu.job_id} on {gpu.partition} ended "
        f"{gpu.state}: {gpu.reason or 'torch does not see CUDA there'}.",
        hint=f"Its whole output: hpcjob logs {gpu.run_id}. For CUDA, install a CUDA build of "
        "torch (e.g. pin the torch wheel for the cluster's CUDA in --requirements).",
        exit_code=EXIT_JOB_FAILED,
    )
