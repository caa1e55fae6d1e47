"""Efficiency from recorded sacct output (tests/fixtures/slurm/sacct_final.json, real Slurm 22.05)
and from the embedded scheduler's facts; one hint when something is badly off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcjob import slurm
from hpcjob.insight.efficiency import Usage, assess, show_lines, usage_from_facts
from hpcjob.scheduler.slurm import _from_sacct

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"


def sacct_facts() -> dict[str, tuple[str, dict[str, Any]]]:
    """Each job of the recorded sacct output as (state, facts) — what the ledger stores."""
    data = json.loads((FIXTURES / "sacct_final.json").read_text())
    out = {}
    for record in slurm.parse_sacct(data["stdout"]):
        info = _from_sacct(record)
        out[record.job_id] = (info.state.value, info.facts)
    return out


RECORDED = sacct_facts()


def efficiency_of(job_id: str, workload: str = "gpu-check", **resources: Any) -> Any:
    state, facts = RECORDED[job_id]
    usage = usage_from_facts(facts, state=state, workload=workload, resources=resources)
    assert usage is not None
    return assess(usage)


def test_completed_cpu_job_from_recorded_sacct() -> None:
    eff = efficiency_of("100")  # fx-completed: 3.816 s CPU in 4 s on 1 core, 72580K of 1000M
    assert eff.source == "sacct"
    assert eff.cpu_efficiency == pytest.approx(3.816 / 4, abs=1e-3)
    assert eff.cores_used == pytest.approx(0.95, abs=0.01)
    assert eff.mem_peak_bytes == 72580 * 1024
    assert eff.mem_efficiency == pytest.approx(72580 * 1024 / (1000 * 1024**2), abs=1e-3)
    assert eff.time_used == pytest.approx(4 / 120, abs=1e-3)
    assert eff.hint is None  # small requests: nothing badly off
    lines = "\n".join(show_lines(eff.to_dict()))
    assert "CPU       95% (0.95 of 1 core busy)" in lines
    assert "peak 0.1 GB of 1.0 GB requested (7%)" in lines


def test_memory_killed_job_gets_a_memory_hint() -> None:
    eff = efficiency_of("105")  # fx-oom: OverMemoryKill, FAILED 0:9, 535744K of 100M
    assert eff.mem_efficiency is not None and eff.mem_efficiency > 1
    assert eff.hint == "ran out of memory (peak 0.5 of 0.1 GB requested) — ask for --mem 2G"


def test_timeout_gets_a_time_hint() -> None:
    eff = efficiency_of("99")  # fx-timeout: 75 s against a 1 min limit
    assert eff.time_used == pytest.approx(75 / 60, abs=1e-3)
    assert eff.hint == "hit its time limit of 60 s — ask for --time 00:10:00"
    train = efficiency_of("99", workload="train")
    assert "train saved a checkpoint: resubmit to resume" in str(train.hint)


def test_gpu_job_without_samples_says_so() -> None:
    eff = efficiency_of("103")  # fx-gpu: gres/gpu:a100=1
    assert eff.gpus == 1 and eff.gpu_util_pct is None
    assert "  GPU       not sampled" in show_lines(eff.to_dict())


def test_a_job_that_never_ran_has_no_efficiency() -> None:
    assert usage_from_facts({}, state="CANCELLED", workload="eda", resources={}) is None


def usage(**kw: Any) -> Usage:
    base: dict[str, Any] = {
        "state": "COMPLETED",
        "workload": "train",
        "elapsed_s": 3600.0,
        "cores": 18,
        "cpu_s": 1.2 * 3600,
        "max_rss_bytes": 30 * 1024**3,
        "req_mem_mb": 64 * 1024,
        "time_limit_s": 7200,
        "gpus": 1,
        "gpu_util_pct": 85.0,
        "num_workers": 0,
    }
    return Usage(**{**base, **kw})


def test_idle_cores_with_a_single_process_loader() -> None:
    eff = assess(usage())
    assert eff.cpu_efficiency == pytest.approx(1.2 / 18, abs=1e-3)
    assert eff.hint == (
        "asked for 18 cores, used 1.2 — the data loader is single-process; try --num-workers 8"
    )
    other = assess(usage(workload="eda", num_workers=None))
    assert other.hint == "asked for 18 cores, used 1.2 — ask for --cpus 2"


def test_unused_memory_and_time() -> None:
    mem = assess(usage(cpu_s=15 * 3600, max_rss_bytes=int(2.1 * 1024**3)))
    assert mem.hint == "peak memory 2.1 of 64 GB requested — ask for --mem 4G"
    short = assess(usage(cpu_s=240 * 17, elapsed_s=240.0, max_rss_bytes=40 * 1024**3))
    assert short.hint == "used 4 min of 2 h — a shorter --time starts sooner (e.g. --time 00:10:00)"


def test_idle_gpu_comes_first_and_only_one_hint() -> None:
    eff = assess(usage(gpu_util_pct=12.0, max_rss_bytes=1024**3, elapsed_s=60.0, cpu_s=60.0))
    assert eff.hint == (
        "the GPU was busy 12% of the time — it waits for data; try --num-workers 8 and --stage-data"
    )


def test_gpu_utilisation_from_the_epoch_metrics_when_no_summary() -> None:
    facts = {"local_elapsed_s": 10.0, "local_cpu_s": 9.0, "local_alloc_cpus": 1}
    found = usage_from_facts(
        facts,
        state="COMPLETED",
        workload="train",
        resources={"gpus": 1},
        gpu_util_series=[40.0, 60.0],
    )
    assert found is not None and found.source == "embedded scheduler"
    assert assess(found).gpu_util_pct == 50.0


def test_embedded_scheduler_runs_are_not_nagged_about_what_nobody_asked() -> None:
    facts = {"local_elapsed_s": 60.0, "local_cpu_s": 60.0, "local_alloc_cpus": 16,
             "local_time_limit_s": 7200, "local_max_rss_bytes": 1024**3}  # fmt: skip
    found = usage_from_facts(facts, state="COMPLETED", workload="train", resources={})
    assert found is not None and not found.cores_asked
    eff = assess(found)
    assert eff.cpu_efficiency == pytest.approx(1 / 16, abs=1e-3)
    assert eff.hint is None  # all 16 cores were lent, not asked; a shorter --time starts nothing
    asked = usage_from_facts(
        facts, state="COMPLETED", workload="eda", resources={"cpus_per_task": 16}
    )
    assert asked is not None
    assert assess(asked).hint == "asked for 16 cores, used 1.0 — ask for --cpus 1"


def test_gpus_asked_for_but_unused_come_first_with_the_reason() -> None:
    reason = "torch 2.13.0+cpu is a CPU-only build: install a CUDA build of torch"
    facts = {"local_elapsed_s": 600.0, "local_cpu_s": 590.0, "local_alloc_cpus": 16,
             "device": "cpu", "gpus_requested": 1, "gpu_unused_reason": reason,
             "allow_cpu": True}  # fmt: skip
    found = usage_from_facts(facts, state="COMPLETED", workload="train", resources={"gpus": 1})
    assert found is not None
    eff = assess(found)
    assert eff.gpu_unused == f"trained on the CPU ({reason})"
    assert eff.hint is not None and eff.hint.startswith(
        f"the 1 GPU asked for went unused: trained on the CPU ({reason})"
    )
    lines = show_lines(eff.to_dict())
    assert f"  GPU       unused: trained on the CPU ({reason})" in lines
    assert "  GPU       not sampled" not in lines

    stopped = usage_from_facts(
        {**facts, "local_elapsed_s": 3.0, "allow_cpu": False},
        state="FAILED",
        workload="train",
        resources={"gpus": 1},
    )
    assert stopped is not None
    hint = assess(stopped).hint
    assert hint is not None and hint.startswith("1 GPU asked for, but torch could not use it")
    assert reason in hint and "--allow-cpu" in hint
    # A CPU job on the CPU, and a GPU job on its GPU, are not flagged.
    cpu_job = usage_from_facts(facts, state="COMPLETED", workload="train", resources={})
    assert cpu_job is not None and assess(cpu_job).gpu_unused is None
    on_gpu = usage_from_facts(
        {**facts, "device": "cuda:0"}, state="COMPLETED", workload="train", resources={"gpus": 1}
    )
    assert on_gpu is not None and assess(on_gpu).gpu_unused is None


def test_more_cpu_than_asked_for_is_said_and_cores_suggested() -> None:
    eff = assess(usage(workload="eda", cores=1, cpu_s=1.56 * 3600, gpus=0, num_workers=None))
    assert eff.cpu_efficiency == pytest.approx(1.56)
    lines = "\n".join(show_lines(eff.to_dict()))
    assert "CPU       156% (1.56 cores busy — more than the 1 asked for)" in lines
    assert "of 1 core busy" not in lines
    assert eff.hint == "used 1.6 cores, more than the 1 it asked for — ask for --cpus 2"


def test_too_little_memory_data_is_said_instead_of_advice() -> None:
    """sacct samples memory every 30 s: a 5 s job's peak (or a peak of nothing) is no ground
    for --mem advice."""
    short = usage(workload="eda", elapsed_s=5.0, cpu_s=4.0, cores=1, gpus=0,
                  max_rss_bytes=0, time_limit_s=600)  # fmt: skip
    for case in (short, usage(workload="eda", cores=1, cpu_s=3000.0, gpus=0, max_rss_bytes=0)):
        eff = assess(case)
        assert "--mem" not in str(eff.hint), eff.hint
        lines = "\n".join(show_lines(eff.to_dict()))
        assert "memory    peak 0.0 GB of 64 GB requested (0%) — too little data to advise" in lines
    assert "(5 s measured; sacct samples memory every 30 s)" in "\n".join(
        show_lines(assess(short).to_dict())
    )
    # Measured over a long run, a small peak is advice worth giving.
    small = usage(workload="eda", cores=1, cpu_s=3000.0, gpus=0, max_rss_bytes=200 * 1024**2)
    assert assess(small).hint == "peak memory 0.2 of 64 GB requested — ask for --mem 1G"
