"""What is recorded about a run when it is submitted: where it came from (the user's project in
git, hpcjob, the script and workload code) and the most it can cost (the SBU estimate).

The one edge here is `git` (subprocesses in the user's project); the job side of provenance is
written by `workloads/provenance.py` and read back by hpcjob/provenance.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcjob import __version__, cost
from hpcjob.clock import utc_now
from hpcjob.config import profile_rates
from hpcjob.ledger.records import Run
from hpcjob.provenance import DIFF_CAP, DIFF_PATH, NOT_A_REPO, SUBMIT_FACT
from hpcjob.run.context import Context, default_partition
from hpcjob.run.prepare import Prepared
from hpcjob.run.rundir import Files, code_files
from hpcjob.spec import array_task_ids


@dataclass(frozen=True)
class SubmitProvenance:
    """What is known at submit: `meta` goes into run.json and the ledger, `diff` (when the
    project is dirty) into the run directory as provenance/git.diff."""

    meta: dict[str, Any]
    diff: bytes | None = None


def _git(
    folder: Path | str, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes] | None:
    try:
        return subprocess.run(
            ["git", "-C", str(folder), *args],
            input=stdin,
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _git_text(folder: Path, *args: str) -> str | None:
    done = _git(folder, *args)
    if done is None or done.returncode != 0:
        return None
    return done.stdout.decode(errors="replace").strip()


def git_state(folder: Path) -> tuple[dict[str, Any], bytes | None]:
    """The project's commit, branch, dirty flag (and `git diff HEAD` when dirty); outside a git
    checkout, `{"repo": "not a git repo"}`."""
    top = _git_text(folder, "rev-parse", "--show-toplevel")
    if top is None:
        return {"repo": NOT_A_REPO, "folder": str(folder)}, None
    commit = _git_text(folder, "rev-parse", "--verify", "-q", "HEAD")
    branch = _git_text(folder, "rev-parse", "--abbrev-ref", "HEAD")
    status = _git_text(folder, "status", "--porcelain", "--untracked-files=all") or ""
    lines = status.splitlines()
    untracked = sum(line.startswith("??") for line in lines)
    dirty = len(lines) > untracked
    state: dict[str, Any] = {
        "repo": top,
        "commit": commit,  # None in a repository without commits
        "branch": None if branch == "HEAD" else branch,  # detached HEAD has no branch
        "dirty": dirty,
        "untracked_files": untracked,
    }
    diff = None
    if dirty and commit:
        found = _tracked_diff(top)
        if found is not None:
            diff, state["diff_files"] = found
    if diff is not None:
        state["diff_bytes"] = len(diff)
        state["diff"] = DIFF_PATH
        if len(diff) > DIFF_CAP:
            state["diff_truncated"] = True
            note = (
                f"\n# hpcjob: diff truncated at {DIFF_CAP} of {len(diff)} bytes; "
                f"see `git diff HEAD` at commit {commit} in {top}\n"
            )
            diff = diff[:DIFF_CAP] + note.encode()
    return state, diff


def _tracked_diff(top: str) -> tuple[bytes, int] | None:
    """`git diff HEAD` (tracked files only: never untracked ones) and how many files it covers,
    leaving out any file git's ignore rules name even though it is tracked (added with
    `git add -f`, or ignored after it was committed): what a project ignores stays home."""
    names = _git(top, "diff", "HEAD", "--name-only", "--no-renames", "-z")
    if names is None or names.returncode != 0:
        return None
    paths = [name for name in names.stdout.split(b"\0") if name]
    checked = _git(top, "check-ignore", "--no-index", "-z", "--stdin", stdin=b"\0".join(paths))
    ignored = set(checked.stdout.split(b"\0")) if checked and checked.returncode == 0 else set()
    kept = [os.fsdecode(name) for name in paths if name not in ignored]
    if not kept:
        return None
    args = ("diff", "HEAD", "--no-color", "--no-ext-diff", "--no-renames")
    limit = ("--", *kept) if ignored else ()  # literal paths: --literal-pathspecs below
    done = _git(top, "--literal-pathspecs", *args, *limit) if limit else _git(top, *args)
    if done is None or done.returncode != 0:
        return None
    return done.stdout, len(kept)


def at_submit(
    project: Path, *, hpcjob_version: str, script_sha256: str, workload_sha256: str
) -> SubmitProvenance:
    """Everything known about a run's origin before it is submitted."""
    git, diff = git_state(project)
    meta = {
        "git": git,
        "hpcjob_version": hpcjob_version,
        "script_sha256": script_sha256,
        "workload_sha256": workload_sha256,
    }
    return SubmitProvenance(meta=meta, diff=diff)


def record_origin(
    ctx: Context, run: Run, prepared: Prepared, project: Path | None = None
) -> SubmitProvenance:
    """The run's provenance (project git state, versions, hashes) and SBU estimate at submit,
    kept as run facts; the git diff goes into the run directory (`run_files`)."""
    origin = at_submit(
        project or Path.cwd(),
        hpcjob_version=__version__,
        script_sha256=prepared.new_run.script_hash,
        workload_sha256=prepared.code_sha256,
    )
    estimate = sbu_estimate(ctx, prepared)
    ctx.ledger.set_facts(run.run_id, {SUBMIT_FACT: origin.meta, "sbu_estimate": estimate.to_dict()})
    if origin.diff is not None:
        ctx.notes.append(diff_note(origin.meta["git"]))
    return origin


def diff_note(git: dict[str, Any]) -> str:
    """What the user is told when the project's uncommitted changes travel with a run."""
    files = git.get("diff_files", 0)
    size = git.get("diff_bytes", 0) / 1024
    return (
        f"The uncommitted changes ({files} file{'s' if files != 1 else ''}, {size:.1f} KB) go "
        f"with the run as {DIFF_PATH} (files git ignores or does not track stay home)."
    )


def sbu_estimate(ctx: Context, prepared: Prepared) -> cost.Cost:
    """The most a job can cost: its request billed for its whole time limit (all array tasks)."""
    res = prepared.spec.resources
    rates = profile_rates(ctx.settings, ctx.profile, ctx.profile.name)
    if cost.unbilled(ctx.profile.scheduler, rates):
        return cost.Cost(res.partition, None, res.time_s / 3600, note=cost.NOT_BILLED)
    partition = res.partition or (default_partition(ctx) if rates else None)
    request = cost.request_from_spec(dataclasses.asdict(res), partition)
    estimate = cost.cost(rates, request, res.time_s)
    tasks = len(array_task_ids(res.array)) if res.array else 1
    if tasks > 1 and estimate.sbu is not None:
        estimate = dataclasses.replace(
            estimate,
            sbu=round(estimate.sbu * tasks, 2),
            units=(estimate.units or 0) * tasks,
            note=f"{tasks} array tasks" + (f"; {estimate.note}" if estimate.note else ""),
        )
    return estimate


def run_json(ctx: Context, prepared: Prepared, origin: SubmitProvenance) -> dict[str, Any]:
    """What `run.json` in the run directory holds: enough to know and rerun the run."""
    return {
        "run_id": prepared.new_run.run_id,
        "token": prepared.new_run.token,
        "created_at": utc_now(),
        "hpcjob_version": __version__,
        "profile": ctx.profile.name,
        "scheduler": ctx.profile.scheduler,
        "spec": {**prepared.spec.to_dict(), **prepared.extra},
        "script_sha256": prepared.new_run.script_hash,
        "workload_sha256": prepared.code_sha256,
        "project_git": origin.meta["git"],
        "provenance": origin.meta,
    }


def run_files(ctx: Context, prepared: Prepared, origin: SubmitProvenance) -> Files:
    """Everything a new run directory gets: the script, run.json, a snapshot of the workload
    code, the git diff of the project it was submitted from (if dirty), and the job's own files."""
    files = {**code_files(prepared.code), **prepared.files}
    files["run.json"] = (json.dumps(run_json(ctx, prepared, origin), indent=2).encode(), 0o644)
    files["job.sh"] = (prepared.script.encode(), 0o755)
    if origin.diff is not None:
        files[DIFF_PATH] = (origin.diff, 0o644)
    return files
