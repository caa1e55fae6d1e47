"""`hpcjob show`: everything the ledger knows of one run, and what it means — where the run came
from (provenance, rerun/sweep lineage), what it cost (the estimate at submit and the actual),
how well it used what it asked for (efficiency), its loss curves; and `runs --since`'s spend."""

from __future__ import annotations

import dataclasses
from typing import Any

from hpcjob import cost, provenance
from hpcjob.clock import parse_utc
from hpcjob.config import profile_rates
from hpcjob.insight import curves, efficiency, nodes
from hpcjob.insight.rows import attempt_rows, elapsed_s, rows, run_row
from hpcjob.ledger.records import Attempt, Run
from hpcjob.run.context import Context
from hpcjob.run.steps import STEPS_FACT, step_usage


def run_detail(ctx: Context, run: Run) -> dict[str, Any]:
    """Everything the ledger knows of one run (`show`)."""
    ledger = ctx.ledger
    detail = run_row(run, ledger.latest_metrics([run.run_id]).get(run.run_id))
    detail.update(
        token=run.token,
        cluster=run.cluster,
        scheduler=run.scheduler,
        signal=run.signal,
        created_at=run.created_at,
        spec=run.spec,
        script_sha256=run.script_hash,
        script=run.script,
        history=[
            {"state": h.state.value, "at": h.at, "source": h.source, "detail": h.detail}
            for h in ledger.history(run.run_id)
        ],
        metrics=[
            {"step": m.step, "key": m.key, "value": m.value} for m in ledger.metrics(run.run_id)
        ],
        facts=ledger.facts(run.run_id),
        artifacts=[
            {"name": name, "path": path, "size": size}
            for name, path, size in ledger.artifacts(run.run_id)
        ],
        max_requeues=run.max_requeues,
        attempts=attempt_rows(ledger, run),
    )
    detail["failure"] = detail["facts"].get("failure")  # why it failed, and the fix
    detail.update(explain(ctx, run, detail))  # provenance, cost, efficiency
    detail["nodes"] = nodes_detail(ctx, run, detail)
    return detail


def nodes_detail(ctx: Context, run: Run, detail: dict[str, Any]) -> dict[str, Any] | None:
    """A run over several nodes or ranks: its nodes, ranks, each node's use (sacct per step,
    asked once the job ended) and each GPU's; None for one process on one node."""
    resources = run.spec.get("resources") or {}
    detail["facts"].pop(STEPS_FACT, None)
    if run.is_array or not nodes.is_scaled(resources):
        return None
    gpus = nodes.gpu_rows(detail["facts"].pop("gpu_ranks", None), detail.get("metrics") or [])
    found = step_usage(ctx, run)
    return nodes.nodes_section(resources, run.node, found.steps, found.note, gpus)


def _submit_facts(ctx: Context, run: Run, facts: dict[str, Any]) -> dict[str, Any]:
    """An array task's submit-time facts are its parent's."""
    if run.parent_run_id and "sbu_estimate" not in facts:
        return ctx.ledger.facts(run.parent_run_id)
    return facts


def actual_cost(ctx: Context, run: Run, facts: dict[str, Any]) -> cost.Cost | None:
    """What a run cost: what it was allocated, for as long as it ran (so far, while running),
    over all the jobs of an `--auto-requeue` run; None when it never started."""
    seconds = facts.get("sacct_elapsed_s", facts.get("local_elapsed_s"))
    if seconds is None:
        seconds = elapsed_s(run)
    # Each job a requeued run went through ran (and was billed) for its own time; the same
    # script asked for the same resources each time.
    earlier = [_attempt_seconds(a) for a in ctx.ledger.attempts(run.run_id)]
    if seconds is None and not earlier:
        return None
    spent = _cost_of(ctx, run, facts, (seconds or 0) + sum(earlier))
    return dataclasses.replace(spent, attempts=len(earlier) + 1) if earlier else spent


def _attempt_seconds(attempt: Attempt) -> float:
    if not attempt.started_at or not attempt.ended_at:
        return 0.0  # it never started
    return max(0.0, (parse_utc(attempt.ended_at) - parse_utc(attempt.started_at)).total_seconds())


def _cost_of(ctx: Context, run: Run, facts: dict[str, Any], seconds: float) -> cost.Cost:
    """The run's allocation (Slurm's, else its request) billed for `seconds`."""
    res = run.spec.get("resources") or {}
    estimate = _submit_facts(ctx, run, facts).get("sbu_estimate") or {}
    req = cost.request_from_spec(res, estimate.get("partition") or res.get("partition"))
    if facts.get("sacct_alloc_cpus"):  # what Slurm allocated, per node
        req = dataclasses.replace(req, cores=-(-int(facts["sacct_alloc_cpus"]) // req.nodes))
    if "sacct_alloc_gpus" in facts:
        req = dataclasses.replace(req, gpus=int(facts["sacct_alloc_gpus"]) // req.nodes)
    rates = profile_rates(ctx.settings, ctx.profile, run.profile)
    if cost.unbilled(run.scheduler, rates):
        return cost.Cost(req.partition, None, seconds / 3600, note=cost.NOT_BILLED)
    return cost.cost(rates, req, seconds)


def _array_cost(ctx: Context, run: Run, estimate: dict[str, Any] | None) -> cost.Cost | None:
    """The sum of what the array's tasks that ran cost; None while none has run."""
    tasks = ctx.ledger.tasks(run.run_id)
    spent = [actual_cost(ctx, t, ctx.ledger.facts(t.run_id)) for t in tasks]
    known = [c for c in spent if c is not None]
    partition = estimate.get("partition") if estimate else None
    hours = sum(c.hours for c in known)
    if not known:
        return None
    if all(c.note == cost.NOT_BILLED for c in known):
        return cost.Cost(partition, None, hours, note=cost.NOT_BILLED)
    total, missing = cost.total(known)
    return cost.Cost(
        partition,
        total if missing < len(known) else None,
        hours,
        note=f"sum of {len(known)} tasks that ran"
        + (f"; {missing} without a rate" if missing else ""),
        assumed=next((c.assumed for c in known if c.assumed), None),  # "(rate assumed: …)"
    )


def cost_section(ctx: Context, run: Run, facts: dict[str, Any]) -> dict[str, Any] | None:
    estimate = facts.get("sbu_estimate")
    actual = _array_cost(ctx, run, estimate) if run.is_array else actual_cost(ctx, run, facts)
    if estimate is None and actual is None:
        return None
    return {
        "estimate": estimate,
        "actual": actual.to_dict() if actual else None,
        "sbu": actual.sbu if actual else None,
    }


def efficiency_section(
    run: Run, facts: dict[str, Any], metrics: list[dict[str, Any]]
) -> dict[str, Any] | None:
    if not run.state.is_final or run.is_array:
        return None
    usage = efficiency.usage_from_facts(
        facts,
        state=run.state.value,
        workload=run.workload,
        resources=run.spec.get("resources") or {},
        args=run.spec.get("args") or {},
        elapsed_s=elapsed_s(run),
        gpu_util_series=[
            m["value"] for m in metrics if m["key"] == "gpu_util_pct" and m["value"] is not None
        ],
    )
    return efficiency.assess(usage).to_dict() if usage is not None else None


def explain(ctx: Context, run: Run, detail: dict[str, Any]) -> dict[str, Any]:
    """`show`'s provenance, cost and efficiency sections; their facts leave `facts`."""
    facts: dict[str, Any] = detail["facts"]
    own = {k: facts.pop(k) for k in list(facts) if k.startswith("provenance_")}
    estimate = facts.pop("sbu_estimate", None)
    if run.parent_run_id:
        own = {**_submit_facts(ctx, run, {}), **own}
    mine = {**facts, **own, **({"sbu_estimate": estimate} if estimate else {})}
    return {
        "provenance": provenance.section(own),
        "cost": cost_section(ctx, run, mine),
        "efficiency": efficiency_section(run, facts, detail.get("metrics") or []),
    }


def show_text(detail: dict[str, Any]) -> str:
    """What `show` prints after the ledger's record: where the run comes from (rerun, sweep),
    its loss curves, then its provenance, cost and efficiency sections."""
    lines = lineage(detail)
    heading = "\n" + "\n".join(lines) + "\n" if lines else ""
    parts = [heading, curves.chart_text(detail["metrics"])]
    for title, section, show_lines in (
        ("Provenance", detail.get("provenance"), provenance.show_lines),
        ("Cost", detail.get("cost"), cost.show_lines),
        ("Efficiency", detail.get("efficiency"), efficiency.show_lines),
        ("Nodes and ranks", detail.get("nodes"), nodes.show_lines),
    ):
        if section:
            parts.append(f"\n{title}:\n" + "\n".join(show_lines(section)) + "\n")
    return "".join(parts)


def spend(
    ctx: Context, runs: list[Run], since: str, until: str | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The runs that started in [since, until) with what each cost, and the total."""
    started = [
        r
        for r in runs
        if not r.is_array
        and r.started_at
        and since <= r.started_at
        and (not until or r.started_at < until)
    ]
    costs = [actual_cost(ctx, r, ctx.ledger.facts(r.run_id)) for r in started]
    found = rows(ctx, started)
    for row, spent in zip(found, costs, strict=True):
        row["sbu"] = spent.sbu if spent else None
        row["cost_note"] = spent.note if spent and spent.sbu is None else None
    total, missing = cost.total([c for c in costs if c is not None and c.note != cost.NOT_BILLED])
    summary = {
        "since": since,
        "until": until,
        "total_sbu": total,
        "runs_counted": len(started),
        "runs_without_rate": missing,
    }
    return found, summary


def estimate_text(ctx: Context, run: Run) -> str:
    """The submit confirmation's cost line, from the estimate recorded at submit."""
    estimate = ctx.ledger.facts(run.run_id).get("sbu_estimate")
    return cost.estimate_line(cost.Cost(**estimate)) if estimate else ""


_KINDS = {
    "project": "your project's workload",
    "python": "a Python file of your project",
    "script": "your batch script",
    "command": "a command",
}


def program_label(spec: dict[str, Any]) -> str:
    """` (your project's workload, hpcjob.toml)` after a program's name; `` for a built-in."""
    program = spec.get("program")
    if not program:
        return ""
    source = program.get("source") if program.get("kind") == "project" else None
    return f" ({_KINDS.get(program.get('kind'), 'your code')}" + (f", {source})" if source else ")")


def program_lines(spec: dict[str, Any]) -> list[str]:
    """`show`'s lines on what ran: a built-in workload, or the user's command, config (with its
    overrides) and code snapshot."""
    program = spec.get("program")
    if not program:
        return [f"Workload:   {spec.get('workload')} (built-in, hpcjob's own code)"]
    label = program_label(spec).strip(" ()")
    project = f", project {program['project']}" if program.get("project") else ""
    lines = [
        f"Workload:   {spec.get('workload')} ({label}{project})",
        f"Command:    {' '.join(program.get('command') or ())}",
    ]
    if program.get("config"):
        overrides = " ".join(f"{k}={v}" for k, v in (spec.get("args") or {}).items())
        lines.append(
            f"Config:     {program['config']}" + (f" with {overrides}" if overrides else "")
        )
    if program.get("snapshot"):
        lines.append(f"Code:       snapshot {program['snapshot'][:12]}")
    return lines


def lineage(detail: dict[str, Any]) -> list[str]:
    """`show`'s lines on where a run comes from: what ran, a rerun, a sweep, a sweep's task."""
    spec = detail.get("spec") or {}
    lines = program_lines(spec) if spec.get("workload") else []
    if spec.get("rerun_of"):
        lines.append(f"Rerun of:   {spec['rerun_of']}")
    sweep = spec.get("sweep")
    if sweep:
        params = " ".join(
            f"{p['name']}={','.join(map(str, p['values']))}" for p in sweep.get("params") or []
        )
        lines.append(
            f"Sweep:      {sweep.get('sweep_id')} — {sweep.get('tasks')} tasks, at most "
            f"{sweep.get('max_parallel')} at once; {params}"
        )
    task = spec.get("sweep_task")
    if task:
        params = " ".join(f"{k}={v}" for k, v in (task.get("params") or {}).items())
        lines.append(f"Sweep task: {task.get('index')} of sweep {task.get('sweep_id')}: {params}")
    return lines
