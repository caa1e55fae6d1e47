"""Validation of job requests: Slurm time and memory formats, counts, names, workload arguments."""

from __future__ import annotations

import pytest

from hpcjob.errors import HpcjobError
from hpcjob.spec import (
    SpecRequest,
    build_spec,
    format_time,
    parse_memory_mb,
    parse_time_limit,
    workload_argv,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30 * 60),  # MM
        ("5:30", 5 * 60 + 30),  # MM:SS
        ("01:00:00", 3600),  # HH:MM:SS
        ("2-12", 2 * 86400 + 12 * 3600),  # D-HH
        ("1-02:30", 86400 + 2 * 3600 + 30 * 60),  # D-HH:MM
        ("5-00:00:00", 5 * 86400),  # D-HH:MM:SS
        ("120:00:00", 120 * 3600),
    ],
)
def test_time_formats(text: str, seconds: int) -> None:
    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "10:61", "1:00:60", "1-24", "0", "-5", "1-2-3", "a:b"])
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time_limit(text)


def test_format_time_round_trips() -> None:
    assert format_time(3600) == "01:00:00"
    assert format_time(5 * 86400 + 61) == "5-00:01:01"
    assert parse_time_limit(format_time(93784)) == 93784


@pytest.mark.parametrize(
    ("text", "mb"),
    [("16G", 16384), ("500M", 500), ("1T", 1048576), ("16GB", 16384), ("2048", 2048)],
)
def test_memory(text: str, mb: int) -> None:
    assert parse_memory_mb(text) == mb


@pytest.mark.parametrize("text", ["", "12Q", "G", "-1G", "0"])
def test_bad_memory(text: str) -> None:
    with pytest.raises(ValueError):
        parse_memory_mb(text)


def test_all_problems_reported_at_once_with_exit_2() -> None:
    request = SpecRequest(
        workload="train",
        time="25:99",
        mem="lots",
        cpus_per_task=0,
        partition="gpu a100",
        job_name="$(touch x)",
        args={"epochs": 0, "lr": -1.0, "batch_size": 0, "dropout": 1.5, "hidden_units": "a,b"},
    )
    with pytest.raises(HpcjobError) as info:
        build_spec(request)
    message = info.value.message
    assert info.value.exit_code == 2
    for fragment in (
        "--time",
        "--mem",
        "--cpus",
        "--partition",
        "--job-name",
        "--epochs",
        "--lr",
        "--batch-size",
        "--dropout",
        "--hidden-units",
        "--data-dir",
    ):
        assert fragment in message, fragment


def test_argument_of_another_workload_is_refused() -> None:
    with pytest.raises(HpcjobError, match="--epochs does not apply to the gpu-check"):
        build_spec(SpecRequest(workload="gpu-check", args={"epochs": 3}))


def test_unknown_workload_lists_the_known_ones() -> None:
    with pytest.raises(HpcjobError) as info:
        build_spec(SpecRequest(workload="trian"))
    assert "train" in (info.value.hint or "")


def test_nan_and_inf_learning_rates_are_refused() -> None:
    for lr in (float("nan"), float("inf")):
        with pytest.raises(HpcjobError, match="finite"):
            build_spec(SpecRequest(workload="train", data_dir="/d", args={"lr": lr}))


def test_defaults_and_gpu_partition_gets_a_gpu() -> None:
    spec = build_spec(SpecRequest(workload="train", partition="gpu_a100", data_dir="/data"))
    assert spec.resources.gpus == 1
    assert spec.resources.time == "02:00:00"
    assert spec.args["epochs"] == 3
    cpu = build_spec(SpecRequest(workload="gpu-check", partition="rome"))
    assert cpu.resources.gpus == 0


def test_workload_argv() -> None:
    spec = build_spec(
        SpecRequest(workload="train", data_dir="/d", args={"epochs": 2, "weighted_sampling": False})
    )
    argv = workload_argv(spec)
    assert argv[:2] == ["--epochs", "2"]
    assert "--no-weighted-sampling" in argv


def test_render_allows_missing_data_dir() -> None:
    spec = build_spec(SpecRequest(workload="train", require_data=False))
    assert spec.data_dir == "/path/to/pcam"


def test_arrays_and_dependencies() -> None:
    from hpcjob.spec import array_task_ids

    spec = build_spec(SpecRequest(workload="gpu-check", array="0-9%2", after="123"))
    assert spec.resources.array == "0-9%2"
    assert spec.resources.dependency == "afterok:123"
    assert array_task_ids("0-9%2") == list(range(10))
    assert array_task_ids("1,4-8:2") == [1, 4, 6, 8]
    with pytest.raises(HpcjobError) as info:
        build_spec(SpecRequest(workload="gpu-check", array="0-9;rm", after="$(x)"))
    assert "--array" in info.value.message and "--after" in info.value.message


def test_keep_checkpoints_is_left_to_train_unless_given() -> None:
    spec = build_spec(SpecRequest(workload="train", data_dir="/d"))
    assert spec.args["keep_checkpoints"] is None  # train.py keeps last.pt and best.pt only
    assert "--keep-checkpoints" not in workload_argv(spec)
    given = build_spec(SpecRequest(workload="train", data_dir="/d", args={"keep_checkpoints": 2}))
    assert workload_argv(given)[-2:] == ["--keep-checkpoints", "2"]
    with pytest.raises(HpcjobError, match="--keep-checkpoints must be at least 0, got -1"):
        build_spec(SpecRequest(workload="train", data_dir="/d", args={"keep_checkpoints": -1}))


def test_booleans_go_to_the_program_only_when_they_differ_from_its_default() -> None:
    plain = workload_argv(build_spec(SpecRequest(workload="train", data_dir="/d")))
    assert not [a for a in plain if "sampling" in a or "allow-cpu" in a]
    spec = build_spec(
        SpecRequest(
            workload="train", data_dir="/d", args={"allow_cpu": True, "weighted_sampling": False}
        )
    )
    argv = workload_argv(spec)
    assert "--allow-cpu" in argv and "--no-weighted-sampling" in argv
    with pytest.raises(HpcjobError, match="--allow-cpu does not apply to the eda workload"):
        build_spec(SpecRequest(workload="eda", data_dir="/d", args={"allow_cpu": True}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("partition", "gpu\n"),
        ("account", "acct\n"),
        ("job_name", "job\n"),
        ("constraint", "a100\n"),
        ("array", "0-3\n"),
        ("after", "123\n"),
    ],
)
def test_a_trailing_newline_is_refused(field: str, value: str) -> None:
    """`$` also matches before a final newline: the validators must match the whole string."""
    request = SpecRequest(workload="train", data_dir="/d", **{field: value})
    with pytest.raises(HpcjobError) as info:
        build_spec(request)
    assert info.value.exit_code == 2
