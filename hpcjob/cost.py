"""What a job costs in SBU (pure): partition rates, the billed share of a node, estimate and actual.

A rate says how many SBU one unit costs per hour, and what a unit is: a core (CPU partitions)
or a GPU with its share of the node's cores and memory (GPU partitions: on Snellius a quarter
node, 1 GPU + 18 cores + 120 GiB on gpu_a100). A job is billed for the largest of what it asks
in units, in cores and in memory, and never less than the partition's smallest allocation; on an
exclusive partition it is billed for whole nodes.

Rates come from the profile's `sbu_rates` table (built-in: Snellius's, below). A profile's value
for a partition is either a number (SBU per GPU-hour on a partition whose name contains `gpu`,
per core-hour elsewhere) or a table with the keys of `Rate`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from hpcjob.errors import HpcjobError

# Snellius (SURF user documentation, "Snellius partitions and accounting"; DESIGN.md).
SNELLIUS_SBU_RATES: dict[str, dict[str, Any]] = {
    "rome": {"sbu_per_hour": 1.0, "per": "core", "min_units": 16, "mem_gib_per_unit": 1.75},
    "thin": {"sbu_per_hour": 1.0, "per": "core", "min_units": 16, "mem_gib_per_unit": 1.75},
    "genoa": {"sbu_per_hour": 1.0, "per": "core", "min_units": 24, "mem_gib_per_unit": 1.75},
    "fat_rome": {"sbu_per_hour": 1.5, "per": "core", "min_units": 16, "mem_gib_per_unit": 7.5},
    "fat_genoa": {"sbu_per_hour": 1.5, "per": "core", "min_units": 24, "mem_gib_per_unit": 7.5},
    "staging": {"sbu_per_hour": 2.0, "per": "core", "min_units": 1, "mem_gib_per_unit": 7.0},
    "gpu_a100": {
        "sbu_per_hour": 128.0,
        "per": "gpu",
        "min_units": 1,
        "cores_per_gpu": 18,
        "mem_gib_per_unit": 120.0,
    },
    "gpu_h100": {
        "sbu_per_hour": 192.0,
        "per": "gpu",
        "min_units": 1,
        "cores_per_gpu": 16,
        "mem_gib_per_unit": 180.0,
    },
    "gpu_mig": {
        "sbu_per_hour": 64.0,
        "per": "gpu",
        "min_units": 1,
        "cores_per_gpu": 9,
        "mem_gib_per_unit": 60.0,
    },
    # The course partitions' rates are not published (docs/decisions.md, "Course partitions"):
    # assumed, and said so with every estimate. gpu_course's A100 MIG 1g.5gb slice is smaller
    # than gpu_mig's, so gpu_mig's price per slice is the most it can cost — an estimate that
    # errs high, never low, against a course budget.
    "gpu_course": {
        "sbu_per_hour": 64.0,
        "per": "gpu",
        "min_units": 1,
        "cores_per_gpu": 9,
        "mem_gib_per_unit": 60.0,
        "assumed": "gpu_course's rate is not published; gpu_mig's (64 SBU per MIG slice-hour) "
        "is used, an upper bound for a smaller 1g.5gb slice",
    },
    "thin_course": {
        "sbu_per_hour": 1.0,
        "per": "core",
        "min_units": 16,
        "mem_gib_per_unit": 1.75,
        "assumed": "thin_course's rate is not published; thin's (1 SBU per core-hour) is used",
    },
}

_UNITS = ("core", "gpu")
# Why a run of the embedded scheduler costs nothing; NOT_BILLED is the note such a cost carries,
# shown after `cost: ` (submit, dry run) and as `runs --since`'s note.
NOT_BILLED_WHY = "the embedded scheduler runs jobs on this machine"
NOT_BILLED = f"none — {NOT_BILLED_WHY}"


@dataclass(frozen=True)
class Rate:
    """One partition's price: `sbu_per_hour` per unit (a core or a GPU)."""

    partition: str
    sbu_per_hour: float
    per: str = "core"  # "core" or "gpu"
    min_units: float = 1  # the smallest allocation, in units
    cores_per_gpu: int | None = None  # per=gpu: the cores that come with one GPU
    mem_gib_per_unit: float | None = None  # memory that comes with one unit
    exclusive: bool = False  # whole nodes only
    node_units: int | None = None  # units in a whole node (exclusive partitions)
    # Why the rate is a guess (the site does not publish it), said with every cost made of it.
    assumed: str | None = None


@dataclass(frozen=True)
class Request:
    """What is billed: per node cores, GPUs and memory, and the number of nodes."""

    partition: str | None
    cores: int = 1
    gpus: int = 0
    mem_mb: int | None = None
    nodes: int = 1


@dataclass(frozen=True)
class Cost:
    """SBU for some hours of a request, or why there is no number."""

    partition: str | None
    sbu: float | None
    hours: float
    units: float | None = None  # billed units (cores or GPUs) in all
    per: str | None = None
    sbu_per_hour: float | None = None
    note: str | None = None  # why no number, or what was billed beyond the request
    attempts: int = 1  # the jobs it adds up (an --auto-requeue run's attempts)
    assumed: str | None = None  # the rate's `assumed`: why its number is a guess

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- rates from the profile -------------------------------------------------------------------


def parse_rates(table: Any, where: str = "sbu_rates") -> dict[str, Rate]:
    """The profile's `sbu_rates` table as rates; a wrong entry is an error naming it."""
    if not isinstance(table, dict):
        raise HpcjobError(
            f"{where} must be a table of partition = rate, got {table!r}.",
            hint="e.g. [profiles.NAME.sbu_rates] gpu_a100 = 128, rome = { sbu_per_hour = 1.0, "
            "min_units = 16 }",
        )
    return {str(name): _rate(str(name), value, f"{where}.{name}") for name, value in table.items()}


def _rate(partition: str, value: Any, where: str) -> Rate:
    if _is_number(value):
        per = "gpu" if "gpu" in partition.lower() else "core"
        return _checked(Rate(partition, float(value), per=per), where)
    if not isinstance(value, dict):
        raise HpcjobError(f"{where} must be a number (SBU per hour) or a table, got {value!r}.")
    known = {f for f in Rate.__dataclass_fields__ if f != "partition"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise HpcjobError(
            f"{where}: unknown key(s) {', '.join(unknown)}.",
            hint=f"A rate table may have: {', '.join(sorted(known))}.",
        )
    if "sbu_per_hour" not in value:
        raise HpcjobError(f"{where} needs sbu_per_hour.")
    for key in ("sbu_per_hour", "min_units", "mem_gib_per_unit", "cores_per_gpu", "node_units"):
        if key in value and not _is_number(value[key]):
            raise HpcjobError(f"{where}.{key} must be a number, got {value[key]!r}.")
    if "exclusive" in value and not isinstance(value["exclusive"], bool):
        raise HpcjobError(f"{where}.exclusive must be true or false.")
    if "assumed" in value and not isinstance(value["assumed"], str):
        raise HpcjobError(f"{where}.assumed must be text: why the rate is a guess.")
    per = value.get("per", "gpu" if "gpu" in partition.lower() else "core")
    return _checked(Rate(partition, **{**value, "per": per}), where)


def _checked(rate: Rate, where: str) -> Rate:
    if rate.per not in _UNITS:
        raise HpcjobError(f"{where}.per must be 'core' or 'gpu', got {rate.per!r}.")
    if rate.sbu_per_hour < 0 or rate.min_units < 0:
        raise HpcjobError(f"{where}: rates and minimums must not be negative.")
    if rate.exclusive and not rate.node_units:
        raise HpcjobError(f"{where}: an exclusive partition needs node_units (units per node).")
    return rate


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GpuShare:
    """The cores and memory that a node's GPUs bring on a per-GPU partition (billed whether the
    script asks for them or not), and how the cores are split over the node's ranks."""

    partition: str
    gpus: int  # on each node
    cores: int  # on each node
    mem_mb: int  # on each node (Slurm's --mem is per node)
    ranks: int = 1  # processes the launcher starts on each node
    nodes: int = 1

    @property
    def cores_per_rank(self) -> int:
        """Each rank's cores (--cpus-per-task is per rank; the template multiplies for torchrun's
        one task per node): the node's share split evenly, at least one."""
        return max(1, self.cores // self.ranks)


def gpu_share(
    rates: dict[str, Rate], partition: str | None, gpus: int, ranks: int = 1, nodes: int = 1
) -> GpuShare | None:
    """What `gpus` GPUs on each node bring on `partition`: its rate's cores and memory per GPU,
    times the GPUs, split over `ranks` processes per node; None where the rate does not know
    them (no rate, per core, no cores or memory per GPU) or no GPU is asked."""
    rate = rates.get(partition) if partition else None
    if rate is None or rate.per != "gpu" or gpus < 1:
        return None
    if rate.assumed:  # a guessed price says nothing of how the node is shared: ask for nothing
        return None
    if not rate.cores_per_gpu or not rate.mem_gib_per_unit:
        return None
    mem_mb = round(rate.mem_gib_per_unit * 1024) * gpus
    return GpuShare(
        rate.partition, gpus, rate.cores_per_gpu * gpus, mem_mb, max(1, ranks), max(1, nodes)
    )


def share_line(share: GpuShare, cores: bool, mem: bool) -> str:
    """What was filled in: `gpu_a100: 1 GPU brings 18 cores + 120 GiB; requested them`; with
    several ranks or nodes the share per node and each rank's cores."""
    per_node = share.ranks > 1 or share.nodes > 1
    each = " per node" if per_node else ""
    gib = f"{share.mem_mb / 1024:g} GiB"
    gpus = f"{share.gpus} GPU" + ("" if share.gpus == 1 else "s")
    verb = "brings" if share.gpus == 1 and not per_node else "bring"
    what = "them" if cores and mem else f"the {share.cores} cores" if cores else f"the {gib}{each}"
    line = f"{share.partition}: {gpus}{each} {verb} {share.cores} cores + {gib}{each}; requested "
    line += what
    if cores and share.ranks > 1:
        split = share.cores_per_rank * share.ranks
        rest = "" if split == share.cores else f", {split} of the {share.cores}"
        line += f" ({share.cores_per_rank} cores for each of {share.ranks} ranks{rest})"
    return line


def unbilled(scheduler: str, rates: dict[str, Rate]) -> bool:
    """A run of the embedded scheduler costs nothing, unless its profile gave it rates."""
    return not rates and scheduler == "local"


def request_from_spec(resources: dict[str, Any], partition: str | None = None) -> Request:
    """The billed request from a spec's `resources` (Slurm's defaults: 1 core, 1 node)."""
    return Request(
        partition=partition or resources.get("partition"),
        cores=int(resources.get("cpus_per_task") or 1) * _ranks_per_task(resources),
        gpus=int(resources.get("gpus") or 0),
        mem_mb=resources.get("mem_mb"),
        nodes=int(resources.get("nodes") or 1),
    )


def _ranks_per_task(resources: dict[str, Any]) -> int:
    """Processes the cores of --cpus are each asked for on a node (1 without a launcher)."""
    if resources.get("launcher") in (None, "none"):
        return 1
    return max(1, int(resources.get("procs_per_node") or 1))


# -- the arithmetic ---------------------------------------------------------------------------


def billed_units(rate: Rate, req: Request) -> float:
    """Units billed per node: the largest of units, cores and memory asked, at least the
    smallest allocation; whole nodes on an exclusive partition."""
    if rate.exclusive and rate.node_units:
        return float(rate.node_units)
    asked = [float(rate.min_units), float(req.gpus if rate.per == "gpu" else req.cores)]
    if rate.per == "gpu" and rate.cores_per_gpu:
        asked.append(math.ceil(req.cores / rate.cores_per_gpu))
    if rate.mem_gib_per_unit and req.mem_mb:
        asked.append(math.ceil(req.mem_mb / 1024 / rate.mem_gib_per_unit - 1e-9))
    units = max(asked)
    return float(units if rate.node_units is None else min(units, rate.node_units))


def cost(rates: dict[str, Rate], req: Request, seconds: float) -> Cost:
    """SBU for `seconds` of the request; without a rate for its partition, the reason why."""
    hours = max(0.0, seconds) / 3600
    if not req.partition:
        return Cost(None, None, hours, note="no partition known (the cluster's default)")
    rate = rates.get(req.partition)
    if rate is None:
        return Cost(
            req.partition,
            None,
            hours,
            note=f"no SBU rate for partition {req.partition} (set sbu_rates in the profile)",
        )
    per_node = billed_units(rate, req)
    units = per_node * max(1, req.nodes)
    asked = req.gpus if rate.per == "gpu" else req.cores
    note = None
    if per_node > asked:
        note = f"billed for {_units(per_node, rate.per)} per node (asked {asked})"
    return Cost(
        req.partition,
        round(units * rate.sbu_per_hour * hours, 2),
        hours,
        units=units,
        per=rate.per,
        sbu_per_hour=rate.sbu_per_hour,
        note=note,
        assumed=rate.assumed,
    )


def _units(n: float, per: str) -> str:
    whole = f"{n:g}"
    return f"{whole} {per}" + ("" if n == 1 else "s")


def total(costs: list[Cost]) -> tuple[float, int]:
    """The sum of the known costs, and how many had no number."""
    known = [c.sbu for c in costs if c.sbu is not None]
    return round(sum(known), 2), len(costs) - len(known)


# -- words ------------------------------------------------------------------------------------


def sbu_text(sbu: float) -> str:
    return f"{sbu:.0f}" if sbu >= 100 else f"{sbu:.3g}" if sbu < 1 else f"{sbu:.1f}"


def estimate_line(estimate: Cost) -> str:
    """The submit/dry-run line: `≈ 384 SBU (max, at the time limit: 3 h × 1 gpu × 128 SBU/h)`."""
    if estimate.sbu is None or estimate.sbu_per_hour is None:
        return f"cost: {estimate.note}"
    extra = f"; {estimate.note}" if estimate.note else ""
    return (
        f"≈ {sbu_text(estimate.sbu)} SBU (max, at the time limit: {estimate.hours:.3g} h × "
        f"{_units(estimate.units or 0, estimate.per or 'unit')} × {estimate.sbu_per_hour:g} "
        f"SBU/h{extra})" + assumed_text(estimate)
    )


def assumed_text(figure: Cost) -> str:
    """` (rate assumed: …)` after a cost whose rate is a guess; empty otherwise."""
    return f" (rate assumed: {figure.assumed})" if figure.assumed else ""


def actual_line(actual: Cost) -> str:
    if actual.sbu is None:
        return _no_number(actual.note)
    if actual.units is None or actual.sbu_per_hour is None:  # a sum (an array's tasks)
        return f"{sbu_text(actual.sbu)} SBU ({actual.note})" + assumed_text(actual)
    return (
        f"{sbu_text(actual.sbu)} SBU ({actual.hours * 60:.1f} min × "
        f"{_units(actual.units, actual.per or 'unit')} × {actual.sbu_per_hour:g} SBU/h"
        + (f"; {actual.attempts} attempts" if actual.attempts > 1 else "")
        + ")"
        + assumed_text(actual)
    )


def _no_number(note: str | None) -> str:
    """Why a cost has no number, as `show` says it."""
    if note == NOT_BILLED:
        return f"not billed: {NOT_BILLED_WHY}"
    return f"unknown: {note}" if note else "unknown"


def show_lines(section: dict[str, Any]) -> list[str]:
    """`hpcjob show`'s cost lines from run_detail's `cost` section: the estimate at submit and
    the actual cost; one line when neither has a number for the same reason."""
    estimate = Cost(**section["estimate"]) if section.get("estimate") else None
    actual = Cost(**section["actual"]) if section.get("actual") else None
    numbers = [c.sbu for c in (estimate, actual) if c is not None]
    notes = {c.note for c in (estimate, actual) if c is not None}
    if not any(n is not None for n in numbers) and len(notes) == 1:
        note = notes.pop()
        if actual is not None or note == NOT_BILLED:
            return [f"  {_no_number(note)}"]
    lines = []
    if estimate is not None:
        shown = estimate_line(estimate) if estimate.sbu is not None else _no_number(estimate.note)
        lines.append(f"  estimate  {shown}")
    if actual is not None:
        lines.append(f"  actual    {actual_line(actual)}")
    elif estimate is not None:
        lines.append("  actual    nothing: the job has not run")
    return lines


# -- periods ----------------------------------------------------------------------------------


def period_bound(text: str, option: str) -> str:
    """`2026-11-01` or `2026-11-01T12:00[:00][Z]` as the ledger's ISO-8601 UTC text."""
    from datetime import datetime, timezone

    value = text.strip()
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            moment = datetime.strptime(value.removesuffix("Z"), fmt)
        except ValueError:
            continue
        return moment.replace(tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    raise HpcjobError(
        f"{option} {text!r} is not a date.",
        hint=f"Use {option} 2026-11-01 or {option} 2026-11-01T12:00 (UTC).",
        exit_code=2,
    )
