"""How well a finished job used what it asked for (pure) — `seff`, with GPUs too.

CPU efficiency is CPU time / (cores × elapsed), memory is the peak (MaxRSS) against the request,
time is elapsed against the limit, and GPU utilisation is what the training workload sampled.
The numbers come from the run's facts: sacct's (`sacct_*`) on Slurm, the embedded scheduler's
(`local_*`, from its supervisor's getrusage) on this machine. At most one plain-language hint
says what is badly off and what to ask for instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# "Badly off": below these fractions, and only where the request was big enough to matter.
_CPU_LOW = 0.25
_MEM_LOW = 0.25
_TIME_LOW = 0.25
_GPU_LOW = 30.0  # percent
_CPU_OVER = 1.1  # busier than the cores asked for (without ConstrainCores a job can be)
_SAMPLE_S = 30  # sacct samples a job's memory this often (JobAcctGatherFrequency's default)
_MIN_PEAK_BYTES = 1024**2  # a peak below 1 MiB: nothing was measured
_MIN_CORES = 4  # a 1–3 core job wastes little
_MIN_MEM_MB = 4096
_MIN_TIME_S = 1800
_GIB = 1024**3


@dataclass(frozen=True)
class Usage:
    """What a job was given and what it used; None where unknown."""

    state: str
    workload: str
    elapsed_s: float | None = None
    cores: int | None = None
    cpu_s: float | None = None  # CPU time used (user + system)
    max_rss_bytes: int | None = None
    req_mem_mb: int | None = None
    time_limit_s: int | None = None
    gpus: int = 0
    gpu_util_pct: float | None = None  # mean over the job, as sampled by the workload
    num_workers: int | None = None  # train's data loader workers, when known
    source: str = "sacct"
    cores_asked: bool = True  # False: the embedded scheduler gave the job all of this machine
    # What the job trained on (train's `device` fact) and, when GPUs were asked for but torch
    # could not use them, why; stopped: train refused to go on without them (no --allow-cpu).
    device: str | None = None
    gpu_unused_reason: str | None = None
    stopped_for_gpu: bool = False


@dataclass(frozen=True)
class Efficiency:
    """The ratios, and at most one hint."""

    source: str
    elapsed_s: float | None
    cores: int | None
    cores_used: float | None
    cpu_efficiency: float | None  # 0..1
    mem_peak_bytes: int | None
    mem_requested_bytes: int | None
    mem_efficiency: float | None  # 0..1
    time_limit_s: int | None
    time_used: float | None  # 0..1
    gpus: int
    gpu_util_pct: float | None
    hint: str | None
    gpu_unused: str | None = None  # the GPUs asked for were not used: what happened instead
    mem_note: str | None = None  # why the peak is no ground for advice (too little data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usage_from_facts(
    facts: dict[str, Any],
    *,
    state: str,
    workload: str,
    resources: dict[str, Any],
    args: dict[str, Any] | None = None,
    elapsed_s: float | None = None,
    gpu_util_series: list[float] | None = None,
) -> Usage | None:
    """A Usage from the run's facts (sacct's first, else the embedded scheduler's) and its spec;
    None when the job never ran or nothing was measured."""
    if "sacct_elapsed_s" in facts:
        prefix, source = "sacct_", "sacct"
        cpu_s = facts.get("sacct_total_cpu_s")
    elif "local_elapsed_s" in facts:
        prefix, source = "local_", "embedded scheduler"
        cpu_s = facts.get("local_cpu_s")
    else:
        return None
    elapsed = facts.get(f"{prefix}elapsed_s", elapsed_s)
    req_mem = facts.get(f"{prefix}req_mem_mb") or resources.get("mem_mb")
    util = facts.get("gpu_util_mean_pct")
    if util is None and gpu_util_series:
        util = sum(gpu_util_series) / len(gpu_util_series)
    workers = (args or {}).get("num_workers")
    if workers is None:
        workers = facts.get("num_workers")
    return Usage(
        state=state,
        workload=workload,
        elapsed_s=elapsed,
        cores=facts.get(f"{prefix}alloc_cpus") or resources.get("cpus_per_task"),
        cpu_s=cpu_s,
        max_rss_bytes=facts.get(f"{prefix}max_rss_bytes"),
        req_mem_mb=req_mem,
        time_limit_s=facts.get(f"{prefix}time_limit_s") or resources.get("time_s"),
        gpus=int(facts.get(f"{prefix}alloc_gpus") or resources.get("gpus") or 0),
        gpu_util_pct=util,
        num_workers=workers if isinstance(workers, int) else None,
        source=source,
        cores_asked=source == "sacct" or bool(resources.get("cpus_per_task")),
        device=facts.get("device") if isinstance(facts.get("device"), str) else None,
        gpu_unused_reason=facts.get("gpu_unused_reason"),
        stopped_for_gpu=bool(facts.get("gpu_unused_reason")) and not facts.get("allow_cpu"),
    )


def _ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return round(part / whole, 4)


def assess(usage: Usage) -> Efficiency:
    """The ratios and the one hint that matters most."""
    cores_used = None
    if usage.cpu_s is not None and usage.elapsed_s:
        cores_used = round(usage.cpu_s / usage.elapsed_s, 2)
    core_seconds = usage.cores * usage.elapsed_s if usage.cores and usage.elapsed_s else None
    mem_req = usage.req_mem_mb * 1024**2 if usage.req_mem_mb else None
    eff = Efficiency(
        source=usage.source,
        elapsed_s=usage.elapsed_s,
        cores=usage.cores,
        cores_used=cores_used,
        cpu_efficiency=_ratio(usage.cpu_s, core_seconds),
        mem_peak_bytes=usage.max_rss_bytes,
        mem_requested_bytes=mem_req,
        mem_efficiency=_ratio(usage.max_rss_bytes, mem_req),
        time_limit_s=usage.time_limit_s,
        time_used=_ratio(usage.elapsed_s, usage.time_limit_s),
        gpus=usage.gpus,
        gpu_util_pct=None if usage.gpu_util_pct is None else round(usage.gpu_util_pct, 1),
        hint=None,
        gpu_unused=gpu_unused(usage),
        mem_note=_too_little_memory_data(usage),
    )
    return Efficiency(**{**asdict(eff), "hint": hint(usage, eff)})


def hint(usage: Usage, eff: Efficiency) -> str | None:
    """One plain-language hint for the worst problem, or None when nothing is badly off."""
    for check in (
        _gpu_unused_hint,
        _out_of_memory,
        _timeout,
        _gpu_idle,
        _cpu_over,
        _cpu_idle,
        _memory_unused,
        _time_unused,
    ):
        text = check(usage, eff)
        if text:
            return text
    return None


def gpu_unused(usage: Usage) -> str | None:
    """What ran instead of the GPUs the job asked for (train's facts), or None: it used them,
    asked for none, or nothing says."""
    if not usage.gpus or usage.device != "cpu":
        return None
    why = f" ({usage.gpu_unused_reason})" if usage.gpu_unused_reason else ""
    return f"train stopped{why}" if usage.stopped_for_gpu else f"trained on the CPU{why}"


def _gpu_unused_hint(usage: Usage, eff: Efficiency) -> str | None:
    # First of all: a GPU partition bills GPU hours (128 SBU/h on Snellius's A100s) whatever ran.
    if eff.gpu_unused is None:
        return None
    gpus = f"{usage.gpus} GPU{'' if usage.gpus == 1 else 's'}"
    fix = "fix the job's environment (`hpcjob setup-env --check-gpu` shows what torch sees)"
    if usage.stopped_for_gpu:
        return (
            f"{gpus} asked for, but torch could not use {'it' if usage.gpus == 1 else 'them'}: "
            f"{usage.gpu_unused_reason} — train stopped rather than bill GPU hours for CPU "
            f"training; {fix}, or give --allow-cpu to train on the CPU anyway"
        )
    return (
        f"the {gpus} asked for went unused: {eff.gpu_unused} — {fix}, or submit to a CPU "
        "partition without --gpus"
    )


def _out_of_memory(usage: Usage, eff: Efficiency) -> str | None:
    # Slurm's OverMemoryKill ends such a job FAILED (0:9) rather than OUT_OF_MEMORY.
    over = usage.state == "FAILED" and (eff.mem_efficiency or 0) >= 1.0
    if usage.state != "OUT_OF_MEMORY" and not over:
        return None
    peak = eff.mem_peak_bytes or eff.mem_requested_bytes or 0
    return (
        f"ran out of memory (peak {_gb(peak)} of {_gb(eff.mem_requested_bytes)} GB requested) "
        f"— ask for --mem {_mem_flag(peak * 2)}"
    )


def _timeout(usage: Usage, eff: Efficiency) -> str | None:
    if usage.state != "TIMEOUT" or not usage.time_limit_s:
        return None
    more = _time_flag(usage.time_limit_s * 2)
    if usage.workload == "train":
        return (
            f"hit its time limit of {_duration(usage.time_limit_s)} — train saved a checkpoint: "
            f"resubmit to resume, or ask for --time {more}"
        )
    return f"hit its time limit of {_duration(usage.time_limit_s)} — ask for --time {more}"


def _gpu_idle(usage: Usage, eff: Efficiency) -> str | None:
    if not usage.gpus or eff.gpu_util_pct is None or eff.gpu_util_pct >= _GPU_LOW:
        return None
    if usage.workload == "train" and (usage.num_workers or 0) < 2 and (usage.cores or 0) > 2:
        return (
            f"the GPU was busy {eff.gpu_util_pct:.0f}% of the time — it waits for data; "
            f"try --num-workers {min(8, (usage.cores or 2) - 1)} and --stage-data"
        )
    return (
        f"the GPU was busy {eff.gpu_util_pct:.0f}% of the time — it waits for data or the "
        "batches are small; try a larger --batch-size, --stage-data, or a MIG slice"
    )


def _cpu_over(usage: Usage, eff: Efficiency) -> str | None:
    """Busier than the cores it asked for: on a node it shares, it takes others' cores."""
    cores, used = usage.cores, eff.cores_used
    if not cores or used is None or (eff.cpu_efficiency or 0) <= _CPU_OVER:
        return None
    if not usage.cores_asked or (usage.elapsed_s or 0) < _SAMPLE_S:
        return None  # nothing asked to ask more of; seconds of elapsed time round too coarsely
    more = math.ceil(used)
    return f"used {used:.1f} cores, more than the {cores} it asked for — ask for --cpus {more}"


def _cpu_idle(usage: Usage, eff: Efficiency) -> str | None:
    cores, used = usage.cores, eff.cores_used
    if not cores or cores < _MIN_CORES or used is None or (eff.cpu_efficiency or 0) >= _CPU_LOW:
        return None
    if not usage.cores_asked:
        return None  # nobody asked for these cores: nothing to ask for less of
    if usage.workload == "train" and (usage.num_workers or 0) < 2:
        return (
            f"asked for {cores} cores, used {used:.1f} — the data loader is single-process; "
            f"try --num-workers {min(8, cores - 1)}"
        )
    return f"asked for {cores} cores, used {used:.1f} — ask for --cpus {max(1, math.ceil(used))}"


def _too_little_memory_data(usage: Usage) -> str | None:
    """Why the measured peak is no ground for --mem advice; None when it is."""
    if usage.max_rss_bytes is None:
        return None
    if usage.source == "sacct" and usage.elapsed_s is not None and usage.elapsed_s < _SAMPLE_S:
        return f"{_duration(usage.elapsed_s)} measured; sacct samples memory every {_SAMPLE_S} s"
    if usage.max_rss_bytes < _MIN_PEAK_BYTES:
        return "nothing was measured"
    return None


def _memory_unused(usage: Usage, eff: Efficiency) -> str | None:
    if eff.mem_peak_bytes is None or not usage.req_mem_mb or usage.req_mem_mb < _MIN_MEM_MB:
        return None
    if eff.mem_note:
        return None  # too little data: `show` says so on the memory line
    if (eff.mem_efficiency or 0) >= _MEM_LOW:
        return None
    return (
        f"peak memory {_gb(eff.mem_peak_bytes)} of {_gb(eff.mem_requested_bytes)} GB requested "
        f"— ask for --mem {_mem_flag(eff.mem_peak_bytes * 1.5)}"
    )


def _time_unused(usage: Usage, eff: Efficiency) -> str | None:
    limit, used = usage.time_limit_s, usage.elapsed_s
    if usage.state != "COMPLETED" or not limit or limit < _MIN_TIME_S or used is None:
        return None
    if usage.source != "sacct":
        return None  # the embedded scheduler starts jobs at once whatever their limit
    if (eff.time_used or 0) >= _TIME_LOW:
        return None
    return (
        f"used {_duration(used)} of {_duration(limit)} — a shorter --time starts sooner "
        f"(e.g. --time {_time_flag(max(used * 2, 600))})"
    )


# -- words ------------------------------------------------------------------------------------


def _gb(size: float | None) -> str:
    if size is None:
        return "?"
    return f"{size / _GIB:.1f}" if size < 10 * _GIB else f"{size / _GIB:.0f}"


def _mem_flag(size: float) -> str:
    """A --mem value at least `size`: whole GiB, rounded up to a power of two up to 16G."""
    gib = max(1, math.ceil(size / _GIB))
    if gib <= 16:
        gib = 1 << (gib - 1).bit_length()
    return f"{gib}G"


def _time_flag(seconds: float) -> str:
    """A --time value at least `seconds`, rounded up to 10 minutes (HH:MM:SS or D-HH:MM:SS)."""
    total = math.ceil(seconds / 600) * 600
    days, rest = divmod(total, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:00"
    return f"{days}-{clock}" if days else clock


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.0f} h" if hours == int(hours) or hours >= 10 else f"{hours:.1f} h"


def show_lines(section: dict[str, Any]) -> list[str]:
    """`hpcjob show`'s efficiency lines from run_detail's `efficiency` section."""
    lines = []
    cores, used, cpu = section.get("cores"), section.get("cores_used"), section["cpu_efficiency"]
    if cpu is not None and cpu > 1:
        lines.append(
            f"  CPU       {cpu:.0%} ({used:.2f} cores busy — more than the {cores} asked for)"
        )
    elif cpu is not None:
        lines.append(
            f"  CPU       {cpu:.0%} ({used:.2f} of {cores} core{'' if cores == 1 else 's'} busy)"
        )
    peak, req = section.get("mem_peak_bytes"), section.get("mem_requested_bytes")
    if peak is not None:
        of = f" of {_gb(req)} GB requested ({section['mem_efficiency']:.0%})" if req else ""
        note = section.get("mem_note")
        why = f" — too little data to advise ({note})" if note else ""
        lines.append(f"  memory    peak {_gb(peak)} GB{of}{why}")
    elapsed, limit = section.get("elapsed_s"), section.get("time_limit_s")
    if elapsed is not None:
        of = f" of {_duration(limit)} ({section['time_used']:.0%})" if limit else ""
        lines.append(f"  time      {_duration(elapsed)}{of}")
    if section.get("gpu_unused"):
        lines.append(f"  GPU       unused: {section['gpu_unused']}")
    elif section.get("gpus"):
        util = section.get("gpu_util_pct")
        lines.append(
            f"  GPU       {util:.0f}% busy" if util is not None else "  GPU       not sampled"
        )
    lines.append(f"  hint      {section['hint']}" if section.get("hint") else "  hint      none")
    lines.append(f"  (from {section['source']})")
    return lines
