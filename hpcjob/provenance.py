"""Where a run came from, as facts (pure): the user's project (git), hpcjob, the script and
workload code at submit; the node, GPUs, versions, packages, data files and seed inside the job.

The submit side is read by hpcjob/run/origin.py (`git` in the user's project); the job side is
written by `workloads/provenance.py` into `provenance.json` in the run directory and read back
here when the run ends. The ledger keeps both as run facts: `provenance_submit` and
`provenance_job`; `hpcjob show` presents them as one `provenance` section.
"""

from __future__ import annotations

import json
from typing import Any

from hpcjob.joblog import clean_fact

# A diff beyond this is cut (the ledger and run directory are no place for a dataset in git).
DIFF_CAP = 1024 * 1024
DIFF_PATH = "provenance/git.diff"
JOB_FILE = "provenance.json"
SUBMIT_FACT = "provenance_submit"
JOB_FACT = "provenance_job"
NOT_A_REPO = "not a git repo"
_SHOWN_FILES = 8


def job_facts(text: str) -> dict[str, Any]:
    """`provenance.json` as written by the job, as the ledger fact; {} if unreadable."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    # The job (or whoever writes the run directory) wrote it: validated like any other fact.
    return {JOB_FACT: clean_fact(data)} if isinstance(data, dict) else {}


def section(facts: dict[str, Any]) -> dict[str, Any] | None:
    """show's `provenance` section: submit-time and job-time facts merged."""
    submit, job = facts.get(SUBMIT_FACT), facts.get(JOB_FACT)
    if not submit and not job:
        return None
    # Cleaned again: a ledger written before job_facts cleaned may hold NaN.
    return {**_dict(submit), "job": clean_fact(job) if isinstance(job, dict) else None}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def show_lines(prov: dict[str, Any]) -> list[str]:
    """`hpcjob show`'s provenance lines."""
    lines = []
    git = prov.get("git")
    if isinstance(git, dict):
        lines.append(f"  project   {_git_line(git)}")
    if prov.get("hpcjob_version"):
        lines.append(
            f"  hpcjob    {prov['hpcjob_version']}; script {str(prov.get('script_sha256'))[:12]}, "
            f"workload code {str(prov.get('workload_sha256'))[:12]}"
        )
    job = _dict(prov.get("job"))
    if not job:
        lines.append(
            "  in job    not recorded (yet): the job writes provenance.json when it starts"
        )
        return lines
    lines.append(f"  node      {job.get('node')}")
    for gpu in _list(job.get("gpus")):
        if not isinstance(gpu, dict):
            continue  # the job wrote something else: nothing to show
        lines.append(
            f"  GPU       {gpu.get('name')} ({gpu.get('memory')}), driver {gpu.get('driver')}"
        )
    cuda = _dict(job.get("cuda"))
    if cuda.get("driver_cuda") or cuda.get("torch_cuda"):
        lines.append(
            f"  CUDA      driver {cuda.get('driver_cuda') or '-'}, "
            f"torch built for {cuda.get('torch_cuda') or '-'}"
        )
    lines.append(f"  python    {job.get('python')}  torch {job.get('torch') or '-'}")
    packages = _list(job.get("pip_freeze"))
    lines.append(f"  packages  {len(packages)} (pip freeze in `hpcjob show --json`)")
    files = [item for item in _list(job.get("data_files")) if isinstance(item, dict)]
    for item in files[:_SHOWN_FILES]:
        lines.append(
            f"  data      {item.get('name')} {item.get('size')} B, "
            f"fingerprint {str(item.get('fingerprint'))[:12]}"
        )
    if len(files) > _SHOWN_FILES:
        lines.append(f"  data      … {len(files) - _SHOWN_FILES} more files (`show --json`)")
    if job.get("seed") is not None:
        lines.append(f"  seed      {job['seed']}")
    return lines


def _git_line(git: dict[str, Any]) -> str:
    if git.get("repo") == NOT_A_REPO:
        return f"{NOT_A_REPO} ({git.get('folder')})"
    commit = (git.get("commit") or "no commits")[:12]
    text = f"{git.get('repo')} @ {commit} ({git.get('branch') or 'detached'})"
    if git.get("dirty"):
        cut = ", truncated" if git.get("diff_truncated") else ""
        text += f", dirty: diff in {git.get('diff', DIFF_PATH)} ({git.get('diff_bytes')} B{cut})"
    return text
