"""`show` for a run over several nodes or ranks (pure): its nodes, its ranks, what each node used
(sacct per step: under torchrun the launch step `<jobid>.0` runs one task per node, so the
busiest and the idlest task sacct names are nodes), and the GPUs' utilisation per rank.

sacct (Slurm 22.05) names only the task that used the most and the one that used the least of
each resource, with the sum over all tasks: on two nodes that is each node's number; on more,
the nodes it names and, where one node is left, that node's from the sum. With the srun launcher
a task is a rank, so the numbers are per rank."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hpcjob.slurm import StepUsage, TaskExtreme, expand_nodelist

_GIB = 1024**3
_MIB = 1024**2


def ranks_of(resources: dict[str, Any]) -> tuple[int, int, int, str]:
    """(nodes, processes per node, ranks, launcher) of a spec's resources."""
    nodes = int(resources.get("nodes") or 1)
    launcher = str(resources.get("launcher") or "none")
    procs = int(resources.get("procs_per_node") or 1) if launcher != "none" else 1
    return nodes, procs, nodes * procs, launcher


def is_scaled(resources: dict[str, Any]) -> bool:
    """Whether the run had more than one node or rank (and so a nodes section)."""
    return ranks_of(resources)[2] > 1


def launch_step(steps: Sequence[StepUsage]) -> StepUsage | None:
    """The step the launcher ran: of the numbered steps, the one over the most nodes (`.0`)."""
    numbered = [s for s in steps if s.step.isdigit()]
    return min(numbered, key=lambda s: (-len(s.nodes), int(s.step)), default=None)


def per_node(
    nodes: Sequence[str], most: TaskExtreme | None, least: TaskExtreme | None, total: float | None
) -> dict[str, float]:
    """Each node's amount, one task per node: the nodes sacct names as the most and the least,
    and a single node left over from the sum over all tasks."""
    known: dict[str, float] = {}
    for extreme in (most, least):
        if extreme is not None and extreme.node is not None and extreme.node in nodes:
            known.setdefault(extreme.node, extreme.value)
    left = [n for n in nodes if n not in known]
    if len(left) == 1 and total is not None:
        known[left[0]] = max(0.0, total - sum(known.values()))
    return known


def _ratio(part: float | None, whole: float | None) -> float | None:
    return None if part is None or not whole else round(part / whole, 4)


def _node_rows(step: StepUsage, ranks_per_node: int) -> list[dict[str, Any]]:
    """One row per node of a step with one task per node."""
    nodes = list(step.nodes)
    cores = step.alloc_cpus // len(nodes) if step.alloc_cpus and nodes else None
    whole = cores * step.elapsed_s if cores and step.elapsed_s else None
    cpu = per_node(nodes, step.cpu_max, step.cpu_min, step.cpu_sum_s)
    mem = per_node(nodes, step.mem_max, step.mem_min, step.mem_sum_bytes)
    rows = []
    for node in nodes:
        busy = cpu.get(node)
        rows.append(
            {
                "node": node,
                "ranks": ranks_per_node,
                "cores": cores,
                "cpu_s": busy,
                "cpu_efficiency": _ratio(busy, whole),
                "max_rss_bytes": None if node not in mem else int(mem[node]),
            }
        )
    return rows


def _rank_extremes(step: StepUsage) -> dict[str, Any]:
    """The busiest and idlest rank (a task per rank: srun), by CPU and by memory."""
    cores = step.alloc_cpus / step.tasks if step.alloc_cpus and step.tasks else None
    whole = cores * step.elapsed_s if cores and step.elapsed_s else None

    def one(extreme: TaskExtreme | None, cpu: bool) -> dict[str, Any] | None:
        if extreme is None:
            return None
        found: dict[str, Any] = {"rank": extreme.task, "node": extreme.node}
        if cpu:
            found.update(cpu_s=extreme.value, cpu_efficiency=_ratio(extreme.value, whole))
        else:
            found["max_rss_bytes"] = int(extreme.value)
        return found

    return {
        "cores": cores,
        "cpu_most": one(step.cpu_max, True),
        "cpu_least": one(step.cpu_min, True),
        "mem_most": one(step.mem_max, False),
        "mem_least": one(step.mem_min, False),
    }


def nodes_section(
    resources: dict[str, Any],
    node_list: str | None,
    steps: Sequence[StepUsage],
    note: str | None = None,
    gpus: Sequence[dict[str, Any]] = (),
) -> dict[str, Any] | None:
    """`show`'s nodes section: None for a run of one process on one node."""
    if not is_scaled(resources):
        return None
    count, procs, ranks, launcher = ranks_of(resources)
    step = launch_step(steps)
    names = list(step.nodes) if step is not None and step.nodes else expand_nodelist(node_list)
    section: dict[str, Any] = {
        "nodes": names,
        "node_count": count,
        "procs_per_node": procs,
        "ranks": ranks,
        "launcher": launcher,
        "step": step.step_id if step is not None else None,
        "elapsed_s": step.elapsed_s if step is not None else None,
        "mem_requested_bytes": (resources.get("mem_mb") or 0) * _MIB or None,
        "per_node": [],
        "per_rank": None,
        "gpus": list(gpus),
        "note": note,
    }
    if step is not None and step.tasks and step.tasks == len(step.nodes):
        section["per_node"] = _node_rows(step, procs)
    elif step is not None:
        section["per_rank"] = _rank_extremes(step)
    return section


GPU_UTIL_RANK = "gpu_util_r"  # train's epoch metric of rank N's GPU: gpu_util_r<N>


def gpu_rows(placement: Any, metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each rank's GPU: its node and local rank (train's fact `gpu_ranks`) and how busy it was,
    the mean of its epochs' `gpu_util_r<rank>`; none where nothing was sampled per rank."""
    series: dict[int, list[float]] = {}
    for metric in metrics:
        key, value = str(metric.get("key")), metric.get("value")
        index = key.removeprefix(GPU_UTIL_RANK)
        if key.startswith(GPU_UTIL_RANK) and index.isdigit() and isinstance(value, (int, float)):
            series.setdefault(int(index), []).append(float(value))
    places: dict[int, dict[str, Any]] = {}
    for place in placement if isinstance(placement, list) else []:
        if isinstance(place, dict) and str(place.get("rank")).isdigit():
            places[int(place["rank"])] = place
    rows = []
    for rank in sorted(set(series) | set(places)):
        values = series.get(rank)
        rows.append(
            {
                "rank": rank,
                "node": places.get(rank, {}).get("node"),
                "local_rank": places.get(rank, {}).get("local_rank"),
                "util_pct": round(sum(values) / len(values), 1) if values else None,
            }
        )
    return rows


# -- words ------------------------------------------------------------------------------------


def _size(size: float | None) -> str:
    if size is None:
        return "?"
    return f"{size / _MIB:.0f} MiB" if size < _GIB else f"{size / _GIB:.1f} GiB"


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"


def show_lines(section: dict[str, Any]) -> list[str]:
    """`hpcjob show`'s lines on the nodes and ranks of a run."""
    names = section["nodes"]
    lines = [f"  nodes     {', '.join(names) if names else '(not known yet)'}"]
    per = f"{section['node_count']} node{'s' if section['node_count'] != 1 else ''}"
    lines.append(
        f"  ranks     {section['ranks']} ({per} × {section['procs_per_node']} per node, "
        f"{section['launcher']})"
    )
    rows = section.get("per_node") or []
    step = f"step {section['step']}"
    if rows:
        cores = rows[0].get("cores")
        each = f"of {cores} core{'' if cores == 1 else 's'} each; " if cores else ""
        cpu = ", ".join(f"{r['node']} {_pct(r['cpu_efficiency'])}" for r in rows)
        lines.append(f"  CPU       per node: {cpu} ({each}{step})")
        asked = section.get("mem_requested_bytes")
        of = f" (of {_size(asked)} requested per node)" if asked else ""
        mem = ", ".join(f"{r['node']} {_size(r['max_rss_bytes'])}" for r in rows)
        lines.append(f"  memory    peak per node: {mem}{of}")
    ranked = section.get("per_rank")
    if ranked:
        lines.extend(_rank_lines(ranked, step))
    for gpu in section.get("gpus") or []:
        util = gpu.get("util_pct")
        shown = f"{util:.0f}% busy" if util is not None else "not sampled"
        where = gpu.get("node") or "?"
        if gpu.get("local_rank") is not None:
            where += f" GPU {gpu['local_rank']}"
        lines.append(f"  GPU       rank {gpu.get('rank')} ({where}): {shown}")
    if section.get("note"):
        lines.append(f"  ({section['note']})")
    return lines


def _rank_lines(ranked: dict[str, Any], step: str) -> list[str]:
    def who(found: dict[str, Any]) -> str:
        return f"rank {found.get('rank', '?')} ({found.get('node') or '?'})"

    lines = []
    most, least = ranked.get("cpu_most"), ranked.get("cpu_least")
    if most and least:
        lines.append(
            f"  CPU       per rank: least {who(least)} {_pct(least['cpu_efficiency'])}, most "
            f"{who(most)} {_pct(most['cpu_efficiency'])} ({step})"
        )
    most, least = ranked.get("mem_most"), ranked.get("mem_least")
    if most and least:
        lines.append(
            f"  memory    peak per rank: least {who(least)} {_size(least['max_rss_bytes'])}, "
            f"most {who(most)} {_size(most['max_rss_bytes'])}"
        )
    return lines
