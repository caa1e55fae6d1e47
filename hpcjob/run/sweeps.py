"""A sweep in the ledger: its arrays (the first and each resubmission, by `sweep_id`) and each
task's latest attempt — what `sweep status` shows and `sweep resubmit` resubmits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hpcjob.errors import HpcjobError
from hpcjob.ledger.records import Run
from hpcjob.ledger.store import Ledger
from hpcjob.sweep import best_value, lower_is_better


def sweep_of(ledger: Ledger, ref: str) -> tuple[str, list[Run]]:
    """The sweep a reference names (its parent run, one of its tasks, or `last`) and all its
    arrays, oldest first."""
    run = ledger.resolve(ref)
    if run.parent_run_id:
        run = ledger.get_run(run.parent_run_id)
    info = run.spec.get("sweep") or {}
    if not info.get("sweep_id"):
        raise HpcjobError(
            f"Run {run.run_id} is not a sweep.",
            hint="Start one with: hpcjob submit train --sweep lr=1e-3,1e-4 …",
        )
    return str(info["sweep_id"]), ledger.sweep_runs(str(info["sweep_id"]))


def task_rows(
    ledger: Ledger, arrays: Sequence[Run], metric: str = "val_loss"
) -> list[dict[str, Any]]:
    """One row per task of the sweep (its latest attempt), the best one marked."""
    latest: dict[int, Run] = {}
    attempts: dict[int, int] = {}
    for parent in arrays:  # oldest first: a later array's task replaces an earlier attempt
        for task in ledger.tasks(parent.run_id):
            if task.array_task is None:
                continue
            latest[task.array_task] = task
            attempts[task.array_task] = attempts.get(task.array_task, 0) + 1
    order = [p["name"] for p in arrays[0].spec["sweep"]["params"]] if arrays else []
    rows: list[dict[str, Any]] = []
    for index in sorted(latest):
        task = latest[index]
        values = [m.value for m in ledger.metrics(task.run_id) if m.key == metric]
        stored = (task.spec.get("sweep_task") or {}).get("params") or {}
        params = {name: stored[name] for name in [*order, *stored] if name in stored}
        rows.append(
            {
                "task": index,
                "params": params,
                "parameters": " ".join(f"{k}={v}" for k, v in params.items()),
                "run_id": task.run_id,
                "job_id": task.job_id,
                "state": task.state.value,
                "attempts": attempts[index],
                "metric": metric,
                "best": best_value(values, metric),
                "final": next((v for v in reversed(values) if v is not None), None),
                "epochs": len(values),
                "is_best": False,
            }
        )
    scored = [r for r in rows if r["best"] is not None]
    if scored:
        pick = min if lower_is_better(metric) else max
        winner = pick(scored, key=lambda r: float(r["best"]))
        winner["is_best"] = True
    return rows
