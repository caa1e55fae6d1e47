"""The rows `status`, `runs`, `submit`, `wait` and `partitions` print: the same keys in the table
and in `--json` (ISO-8601 UTC times, durations in seconds), and the attempts of a requeued run.

`status` and `runs` import this module on every start: what only some rows need (the metric
parser, spec's formats, the refresh pipeline) loads inside the function that needs it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from hpcjob.clock import parse_utc
from hpcjob.jobstate import JobState

if TYPE_CHECKING:
    from hpcjob.joblog import Metric
    from hpcjob.ledger.records import Run
    from hpcjob.ledger.store import Ledger
    from hpcjob.run.context import Context
    from hpcjob.slurm import AccountAccess, Partition


def partition_rows(found: list[Partition], access: AccountAccess | None) -> list[dict[str, Any]]:
    """`hpcjob partitions`' rows, each with the user's accounts that may use it where known."""
    if access is None or access.unknown:
        return [partition_row(p) for p in found]
    return [partition_row(p, access.accounts_for(p.name)) for p in found]


def partition_row(part: Partition, accounts: list[str] | None = None) -> dict[str, Any]:
    """A partition as `hpcjob partitions` shows it (same keys in the table and in --json);
    `accounts`: the user's accounts that may use it (None: not known)."""
    from hpcjob.spec import format_memory, format_time

    gpus = ", ".join(f"{n}× {kind}" for kind, n in sorted(part.gpus_per_node.items()))
    shown = "?" if accounts is None else ", ".join(accounts) or "-"
    return {
        "name": part.name + ("*" if part.is_default else ""),  # sinfo marks the default so
        "partition": part.name,
        "default": part.is_default,
        "state": part.state,
        "time_limit": format_time(part.max_time_s) if part.max_time_s else "unlimited",
        "time_limit_s": part.max_time_s,
        "nodes": part.nodes,
        "cpus_per_node": part.cpus_per_node,
        "mem_per_node": format_memory(part.mem_mb),
        "mem_mb": part.mem_mb,
        "gpus": gpus or "-",
        "gpus_per_node": part.gpus_per_node,
        "accounts": accounts,
        "your_accounts": shown,
    }


def elapsed_s(run: Run, now: datetime | None = None) -> int | None:
    if not run.started_at:
        return None
    start = parse_utc(run.started_at)
    end = parse_utc(run.ended_at) if run.ended_at else (now or datetime.now(timezone.utc))
    return max(0, int((end - start).total_seconds()))


def run_row(run: Run, latest: list[Metric] | None = None) -> dict[str, Any]:
    """The row `status`, `runs` and `submit` print: same keys in the table and in --json."""
    from hpcjob.joblog import headline

    spec = run.spec
    return {
        "run_id": run.run_id,
        "job_id": run.job_id,
        "workload": run.workload,
        "state": run.state.value,
        "profile": run.profile,
        "partition": (spec.get("resources") or {}).get("partition"),
        "elapsed_s": elapsed_s(run),
        "node": run.node,
        "exit_code": run.exit_code,
        "last_metric": headline(latest or []),
        "submitted_at": run.submitted_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "run_dir": run.run_dir,
        "output_path": run.output_path,
        "reason": run.reason,
    }


def sort_runs(runs: list[Run]) -> list[Run]:
    """Newest first, an array's tasks right after it in task order (as `runs` lists them)."""
    created = {r.run_id: r.created_at for r in runs}

    def key(run: Run) -> tuple[str, str, int]:
        group = run.parent_run_id or run.run_id
        return (
            created.get(group, run.created_at),
            group,
            1 if run.array_task is None else -run.array_task,
        )

    return sorted(runs, key=key, reverse=True)


def recent_runs(ctx: Context, limit: int) -> list[Run]:
    """`status`: the profile's unfinished runs (refreshed first) and its `limit` most recent
    finished ones, sorted as `runs` lists them."""
    from hpcjob.run.refresh import refresh

    refresh(ctx)
    ledger = ctx.ledger
    active = ledger.unfinished(ctx.profile.name)
    recent = [
        r
        for r in ledger.list_runs(profile=ctx.profile.name, limit=limit + len(active))
        if r.state.is_final
    ][:limit]
    return sort_runs(active + recent)


def ended_badly(runs: list[Run]) -> list[Run]:
    """The runs `status --check` exits 3 for: ended other than COMPLETED, judged as `wait` judges
    them. An array task cancelled before it started is left to its array, whose state says
    whether the array failed (a pending task cancelled is the user's decision)."""
    return [
        r
        for r in runs
        if r.state.is_final
        and r.state != JobState.COMPLETED
        and not (r.parent_run_id and r.cancelled_before_start)
    ]


def rows(ctx: Context, runs: list[Run]) -> list[dict[str, Any]]:
    latest = ctx.ledger.latest_metrics([r.run_id for r in runs])
    return [run_row(r, latest.get(r.run_id)) for r in runs]


def attempt_rows(ledger: Ledger, run: Run) -> list[dict[str, Any]]:
    """Every attempt of a run for `show` (table and --json): the ended ones, then the current."""
    past = ledger.attempts(run.run_id)
    found = [dict(a.__dict__) for a in past]
    found.append(
        {
            "attempt": len(past) + 1,
            "job_id": run.job_id,
            "token": run.token,
            "state": run.state.value,
            "exit_code": run.exit_code,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "reason": run.reason,
        }
    )
    return found
