"""A finished job's accounting per step (what each node's, or each rank's, task used), asked of
the scheduler once when `show` first needs it and kept in the run's facts (`sacct_steps`)."""

from __future__ import annotations

from dataclasses import dataclass

from hpcjob.errors import HpcjobError
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context
from hpcjob.slurm import StepUsage

STEPS_FACT = "sacct_steps"


@dataclass(frozen=True)
class Steps:
    """The job's steps, or why there are none to show."""

    steps: list[StepUsage]
    note: str | None = None


def step_usage(ctx: Context, run: Run) -> Steps:
    """The run's steps: kept from an earlier look, else asked of its scheduler (once it ended:
    only then are they complete, and only then are they kept)."""
    kept = ctx.ledger.facts(run.run_id).get(STEPS_FACT)
    if kept:
        return Steps([StepUsage.from_dict(step) for step in kept])
    if run.scheduler != "slurm":
        return Steps([], "the embedded scheduler keeps no accounting per node")
    if not run.job_id or not run.state.is_final:
        return Steps([], "per-node numbers come once the job has ended")
    if run.profile != ctx.profile.name:
        return Steps([], f"not asked: the run is profile {run.profile}'s (show -P {run.profile})")
    try:
        found = ctx.scheduler.step_usage(run.job_id)
    except HpcjobError as exc:  # the login node cannot be reached: show the rest
        return Steps([], f"sacct could not be asked: {exc.message.splitlines()[0][:200]}")
    if found is None:
        return Steps([], "the scheduler keeps no accounting per node")
    if not any(step.step.isdigit() for step in found):
        why = ctx.scheduler.accounting_off
        return Steps(
            found,
            f"sacct has no launch step (.0) for job {run.job_id}" + (f": {why}" if why else ""),
        )
    ctx.ledger.set_facts(run.run_id, {STEPS_FACT: [step.to_dict() for step in found]})
    return Steps(found)
