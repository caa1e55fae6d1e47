"""Harvest what a job wrote into the ledger: metrics and facts from its output and
`metrics.jsonl` (while it runs, and once more when it ended), then its provenance and the list of
artifacts it left. Idempotent: metrics are upserted by (run, step, key)."""

from __future__ import annotations

from hpcjob import provenance
from hpcjob.failure import TAIL_BYTES, explain_failure
from hpcjob.joblog import JobOutput, parse_metrics_file, parse_metrics_jsonl, parse_output
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context
from hpcjob.run.rundir import CODE_DIR, code_outputs, files_dir, is_artifact

_MAX_READ = 64 * 1024 * 1024


def harvest(ctx: Context, run: Run) -> JobOutput:
    """Read the run's output and metrics.jsonl into the ledger (idempotent)."""
    shell = ctx.scheduler.shell
    parsed = JobOutput()
    output = ""
    # size(): None for anything but a regular file, so a FIFO named like the output or
    # metrics.jsonl, or a link to a device, is never opened (it would hang or never end).
    if run.output_path and shell.size(run.output_path) is not None:
        output = read_text(ctx, run.output_path)
        parse_output(output, parsed)
    folder = files_dir(run)
    metrics_path = f"{folder}/metrics.jsonl"
    if shell.size(metrics_path) is not None:
        parse_metrics_jsonl(read_text(ctx, metrics_path), parsed)
    program = run.spec.get("program") or {}
    # A program's own CSV/JSONL files (the project file's `metrics`), read on every harvest.
    for name, _ in code_outputs(shell, run, program.get("metrics") or ()):
        parse_metrics_file(name, read_text(ctx, f"{folder}/{CODE_DIR}/{name}"), parsed)
    ctx.ledger.add_metrics(run.run_id, parsed.metric_list())
    ctx.ledger.set_facts(run.run_id, parsed.facts)
    if run.state.is_final:
        _harvest_provenance(ctx, run, folder)
        _harvest_failure(ctx, run, output[-TAIL_BYTES:])
        files = shell.list_files(folder) if shell.exists(folder) else []
        artifacts = [(name, f"{folder}/{name}", size) for name, size in files if is_artifact(name)]
        patterns = [*(program.get("artifacts") or ()), *(program.get("metrics") or ())]
        for name, size in code_outputs(shell, run, patterns):
            path = f"{CODE_DIR}/{name}"
            artifacts.append((path, f"{folder}/{path}", size))
        ctx.ledger.set_artifacts(run.run_id, artifacts)
    return parsed


def _harvest_provenance(ctx: Context, run: Run, folder: str) -> None:
    """What the job wrote about itself (provenance.json) into the run's facts."""
    path = f"{folder}/{provenance.JOB_FILE}"
    if ctx.scheduler.shell.size(path) is not None:
        ctx.ledger.set_facts(run.run_id, provenance.job_facts(read_text(ctx, path)))


def _harvest_failure(ctx: Context, run: Run, tail: str) -> None:
    """A run that ended other than COMPLETED: why (its last error line, cause and fix) into its
    facts, and the line as its reason where the scheduler gave none."""
    if run.state.value == "COMPLETED":
        return
    failure = explain_failure(run.state.value, run.exit_code, tail, ctx.ledger.facts(run.run_id))
    if failure is None:
        return
    ctx.ledger.set_facts(run.run_id, {"failure": failure.as_fact()})
    if failure.line:
        ctx.ledger.note_failure(run.run_id, failure.line)


def read_text(ctx: Context, path: str) -> str:
    data = ctx.scheduler.shell.read_bytes(path, 0, _MAX_READ)
    return data.decode("utf-8", errors="replace")
