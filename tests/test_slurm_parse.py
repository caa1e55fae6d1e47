"""hpcjob.slurm on real Slurm output (tests/fixtures/slurm/, recorded by
tests/cluster/record_fixtures.py on the test cluster), plus tables and hostile input."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcjob import slurm
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.slurm import SlurmErrorKind

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
ALL = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def jobs(name: str) -> dict[str, str]:
    mapping: dict[str, str] = load(name)["jobs"]
    return mapping


def by_id(rows: list[Any]) -> dict[str, Any]:
    return {row.job_id: row for row in rows}


# ------------------------------------------------------------------------------ provenance
def test_fixtures_exist() -> None:
    assert len(ALL) >= 30


@pytest.mark.parametrize("name", ALL)
def test_fixture_says_where_it_came_from(name: str) -> None:
    data = load(name)
    assert set(data) >= {"command", "slurm_version", "user", "note", "returncode", "stdout"}
    # bash: the one command that asks for the user's accounts (slurm.access_argv)
    commands = {"sbatch", "squeue", "sacct", "sinfo", "scancel", "scontrol", "bash"}
    assert data["command"][0] in commands
    assert data["slurm_version"].startswith("22.05")
    assert data["user"] == "hpctest"


WITH_JOBS = [n for n in ALL if any(a.startswith("--jobs=") for a in load(n)["command"])]


def test_most_query_fixtures_are_per_job() -> None:
    assert len(WITH_JOBS) >= 12


@pytest.mark.parametrize("name", WITH_JOBS)
def test_fixture_command_is_what_hpcjob_runs(name: str) -> None:
    command = load(name)["command"]
    ids = next(a for a in command if a.startswith("--jobs=")).removeprefix("--jobs=").split(",")
    if command[0] == "squeue":
        assert command == slurm.squeue_argv(ids)
    elif name.startswith("sacct_steps"):  # one job's steps
        assert command == slurm.sacct_steps_argv(*ids)
    else:
        assert command == slurm.sacct_argv(ids)


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("sinfo")])
def test_sinfo_fixture_command_is_what_hpcjob_runs(name: str) -> None:
    assert load(name)["command"] == slurm.sinfo_argv()


# ------------------------------------------------------------------------------------ sbatch
@pytest.mark.parametrize("name", ["sbatch_plain", "sbatch_comment", "sbatch_array"])
def test_sbatch_job_id(name: str) -> None:
    data = load(name)
    result = slurm.parse_sbatch_job_id(data["stdout"])
    assert result.job_id == data["stdout"].strip()
    assert result.job_id.isdigit()
    assert result.cluster is None


def test_sbatch_job_id_with_cluster_and_login_banner() -> None:
    out = load("sbatch_plain")["stdout"]
    banner = "Welcome to Snellius!\nmodule 2025 loaded\n\n"
    assert slurm.parse_sbatch_job_id(banner + out).job_id == out.strip()
    assert slurm.parse_sbatch_job_id("27;hpcjobtest\n") == slurm.SbatchResult("27", "hpcjobtest")


@pytest.mark.parametrize(
    "stdout", ["", "\n\n", "Submitted batch job 27\n", "27\nlogout\n", "27;;\n", "-27\n", "27 28"]
)
def test_sbatch_job_id_garbage(stdout: str) -> None:
    with pytest.raises(HpcjobError, match="did not print a job id") as err:
        slurm.parse_sbatch_job_id(stdout)
    assert err.value.hint is not None and "squeue" in err.value.hint


def test_sbatch_argv() -> None:
    argv = slurm.sbatch_argv("/runs/r1/job.sh", comment="hpcjob-abc", extra=["--array=0-9%2"])
    assert argv == [
        "sbatch",
        "--parsable",
        "--comment",
        "hpcjob-abc",
        "--array=0-9%2",
        "/runs/r1/job.sh",
    ]
    with pytest.raises(ValueError):
        slurm.sbatch_argv("job.sh", comment="two words")


@pytest.mark.parametrize(
    ("name", "kind", "in_message", "in_hint"),
    [
        (
            "sbatch_invalid_partition",
            SlurmErrorKind.INVALID_PARTITION,
            "'nosuchpart'",
            "partitions",
        ),
        ("sbatch_time_above_max", SlurmErrorKind.TIME_LIMIT, "time limit", "less --time"),
        ("sbatch_gpu_impossible", SlurmErrorKind.NODE_CONFIG, "node configuration", "GPU"),
        ("sbatch_gpu_on_cpu_partition", SlurmErrorKind.NODE_CONFIG, "not available", "GPU"),
        ("sbatch_invalid_account", SlurmErrorKind.INVALID_ACCOUNT, "account", "sacctmgr"),
        ("sbatch_invalid_time", SlurmErrorKind.INVALID_TIME, "--time", "D-HH:MM:SS"),
        ("sbatch_missing_script", SlurmErrorKind.SCRIPT_UNREADABLE, "no-such-script.sh", "staged"),
        ("sbatch_ctld_down", SlurmErrorKind.CONTROLLER_DOWN, "controller", "later"),
    ],
)
def test_sbatch_rejections(name: str, kind: SlurmErrorKind, in_message: str, in_hint: str) -> None:
    data = load(name)
    assert data["returncode"] != 0 and data["stdout"] == ""
    assert slurm.parse_slurm_error(data["stderr"]).kind is kind
    message, hint = slurm.parse_sbatch_error(data["stderr"])
    assert message.startswith("sbatch ")
    assert in_message in message
    assert hint is not None and in_hint in hint
    assert "sbatch: error:" not in message


def test_sbatch_socket_timeout_says_it_may_have_been_queued() -> None:
    # Not reproducible on the test cluster; the text is Slurm's (slurm_errno.c).
    stderr = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n"
    assert slurm.parse_slurm_error(stderr).kind is SlurmErrorKind.SOCKET_TIMEOUT
    message, hint = slurm.parse_sbatch_error(stderr)
    assert "Socket timed out" in message
    assert hint is not None and "token" in hint


def test_sbatch_unknown_error_is_passed_on_plainly() -> None:
    message, hint = slurm.parse_sbatch_error("sbatch: error: Something new went wrong\n")
    assert message == "sbatch refused the job: Something new went wrong"
    assert hint is None
    assert slurm.parse_slurm_error("").kind is SlurmErrorKind.OTHER


def test_sbatch_while_accounting_is_down_still_submits() -> None:
    data = load("sbatch_dbd_down")
    assert data["returncode"] == 0
    assert slurm.parse_sbatch_job_id(data["stdout"]).job_id.isdigit()


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sacct_dbd_down", SlurmErrorKind.ACCOUNTING_DOWN),
        ("squeue_ctld_down", SlurmErrorKind.CONTROLLER_DOWN),
        ("sinfo_ctld_down", SlurmErrorKind.CONTROLLER_DOWN),
        ("squeue_unknown_job", SlurmErrorKind.UNKNOWN_JOB),
        ("scancel_other_user", SlurmErrorKind.PERMISSION_DENIED),
    ],
)
def test_failures_are_classified(name: str, kind: SlurmErrorKind) -> None:
    data = load(name)
    assert data["returncode"] != 0
    err = slurm.parse_slurm_error(data["stderr"])
    assert err.kind is kind
    assert err.message and "error:" not in err.message


# ------------------------------------------------------------------------------------ squeue
def test_squeue_live_jobs() -> None:
    ids = jobs("squeue_live")
    rows = by_id(slurm.parse_squeue(load("squeue_live")["stdout"]))
    assert rows[ids["timeout"]].state is JobState.RUNNING
    assert rows[ids["timeout"]].nodes == "tcn1"
    assert rows[ids["timeout"]].time_limit_s == 60
    assert rows[ids["cancelled"]].time_limit_s == 300
    assert rows[ids["failed_exit3"]].time_limit_s == 3600  # the partition's DefaultTime
    later = rows[ids["pending_begin"]]
    assert later.state is JobState.PENDING and later.reason == "BeginTime"
    assert later.nodes is None and later.start_time is not None
    assert rows[ids["pending_dependency"]].reason == "Dependency"
    assert rows[ids["completed"]].comment == "hpcjob-feedc0ffee"
    assert rows[ids["timeout"]].comment is None
    assert rows[ids["timeout"]].name == "fx-timeout"
    assert all(row.reason is None for row in rows.values() if row.state is JobState.RUNNING)


def test_squeue_array_rows() -> None:
    array = jobs("squeue_array")["array"]
    rows = slurm.parse_squeue(load("squeue_array")["stdout"])
    rest = [r for r in rows if r.is_array_rest]
    assert [r.job_id for r in rest] == [f"{array}_[2-5%2]"]
    assert rest[0].state is JobState.PENDING and rest[0].reason == "JobArrayTaskLimit"
    assert rest[0].task_ids() == [f"{array}_{i}" for i in range(2, 6)]
    assert rest[0].array_job_id == array and rest[0].array_task == "2-5%2"
    running = sorted(r.job_id for r in rows if r.state is JobState.RUNNING)
    assert running == [f"{array}_0", f"{array}_1"]
    task = by_id(rows)[f"{array}_0"]
    assert task.array_job_id == array and task.array_task == "0"
    assert task.raw_job_id != array  # each task has its own raw id
    assert task.task_ids() == [f"{array}_0"]


def test_squeue_all_states_keeps_ended_jobs() -> None:
    ids = jobs("squeue_final")
    rows = by_id(slurm.parse_squeue(load("squeue_final")["stdout"]))
    expected = {
        "timeout": JobState.TIMEOUT,
        "completed": JobState.COMPLETED,
        "failed_exit3": JobState.FAILED,
        "failed_signal": JobState.FAILED,
        "cancelled": JobState.CANCELLED,
        "pending_begin": JobState.CANCELLED,
        "pending_dependency": JobState.CANCELLED,
        "gpu": JobState.COMPLETED,
    }
    for label, state in expected.items():
        assert rows[ids[label]].state is state, label
    assert all(row.state.is_final for row in rows.values())
    assert rows[ids["timeout"]].reason == "TimeLimit"
    assert rows[ids["timeout"]].time_used_s >= 60
    tasks = [r for r in rows.values() if r.array_job_id == ids["array"]]
    assert len(tasks) == 6 and not any(r.is_array_rest for r in tasks)


def test_squeue_dependency_never_satisfied() -> None:
    (row,) = slurm.parse_squeue(load("squeue_dependency_never")["stdout"])
    assert row.state is JobState.PENDING and row.reason == "DependencyNeverSatisfied"


def test_squeue_without_jobs() -> None:
    assert slurm.parse_squeue(load("squeue_unknown_jobs")["stdout"]) == []
    assert slurm.parse_squeue(load("squeue_unknown_job")["stdout"]) == []  # failed: no header


def test_squeue_skips_a_login_banner() -> None:
    text = "Last login: yesterday\nWelcome!\n" + load("squeue_live")["stdout"]
    assert len(slurm.parse_squeue(text)) == len(slurm.parse_squeue(load("squeue_live")["stdout"]))


def test_squeue_keeps_a_bar_in_the_job_name() -> None:
    header, row = load("squeue_dependency_never")["stdout"].splitlines()[:2]
    (parsed,) = slurm.parse_squeue(f"{header}\n{row}|b\n")
    assert parsed.name == "fx-dep|b"


@pytest.mark.parametrize(
    "text",
    [
        "JOBID|NAME\n1|x\n",  # another format
        "Welcome to the cluster\n",  # no header at all
        "slurm_load_jobs error: Invalid job id specified\n",
    ],
)
def test_squeue_garbage(text: str) -> None:
    with pytest.raises(HpcjobError, match="squeue"):
        slurm.parse_squeue(text)


def test_squeue_short_row() -> None:
    header = load("squeue_live")["stdout"].splitlines()[0]
    with pytest.raises(HpcjobError, match="columns"):
        slurm.parse_squeue(f"{header}\n27|27|27\n")


@pytest.mark.parametrize("ids", [[], ["--help"], ["27;rm -rf /"], ["27_[0-3]"], ["x"]])
def test_argv_builders_refuse_what_is_not_a_job_id(ids: list[str]) -> None:
    for build in (slurm.squeue_argv, slurm.sacct_argv, slurm.scancel_argv):
        with pytest.raises((HpcjobError, ValueError)):
            build(ids)


def test_argv_builders_batch_all_ids_in_one_call() -> None:
    ids = [str(n) for n in range(1000, 1500)] + ["27_3"]
    squeue = slurm.squeue_argv(ids)
    sacct = slurm.sacct_argv(ids)
    assert squeue[0] == "squeue" and squeue[-1] == "--jobs=" + ",".join(ids)
    assert sacct[0] == "sacct" and sacct[-1] == "--jobs=" + ",".join(ids)
    assert slurm.scancel_argv(["27", "28_1"]) == ["scancel", "27", "28_1"]


# ------------------------------------------------------------------------------------- sacct
def test_sacct_final_states() -> None:
    ids = jobs("sacct_final")
    rows = slurm.parse_sacct(load("sacct_final")["stdout"])
    assert not any("." in row.job_id for row in rows)  # steps folded into their jobs
    job = by_id(rows)

    done = job[ids["completed"]]
    assert done.state is JobState.COMPLETED
    assert (done.exit_code, done.signal) == (0, None)
    assert done.comment == "hpcjob-feedc0ffee"
    assert done.max_rss_bytes is not None and done.max_rss_bytes > 60 * 1024**2  # from .batch
    assert done.total_cpu_s is not None and done.total_cpu_s > 2.5
    assert done.elapsed_s is not None and done.elapsed_s >= 4
    assert done.req_mem_mb == 1000 and done.alloc_cpus == 1 and done.gpus == 0
    assert done.partition == "rome" and done.nodes == "tcn1" and done.name == "fx-completed"
    assert done.time_limit_s == 120
    assert done.submit is not None and done.start is not None and done.end is not None
    assert done.start <= done.end and not done.is_interim

    exit3 = job[ids["failed_exit3"]]
    assert exit3.state is JobState.FAILED and (exit3.exit_code, exit3.signal) == (3, None)

    killed = job[ids["failed_signal"]]
    assert killed.state is JobState.FAILED and (killed.exit_code, killed.signal) == (0, 9)

    cancelled = job[ids["cancelled"]]
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.state_text.startswith("CANCELLED by ")

    timeout = job[ids["timeout"]]
    assert timeout.state is JobState.TIMEOUT
    assert timeout.time_limit_s == 60
    assert timeout.elapsed_s is not None and timeout.elapsed_s >= 60

    gpu = job[ids["gpu"]]
    assert gpu.gpus == 1 and gpu.gpu_types == {"a100": 1} and gpu.partition == "gpu_a100"

    # Over its --mem, OverMemoryKill killed it (no cgroup OOM here): signal 9 and a peak above.
    oom = job[ids["oom"]]
    assert oom.state in (JobState.OUT_OF_MEMORY, JobState.FAILED)
    assert oom.req_mem_mb == 100
    assert oom.max_rss_bytes is not None and oom.max_rss_bytes > 100 * 1024**2

    never = job[ids["pending_begin"]]
    assert never.state is JobState.CANCELLED and never.start is None and never.nodes is None
    assert never.elapsed_s == 0

    tasks = [r for r in rows if r.array_job_id == ids["array"]]
    assert [r.job_id for r in tasks] == [f"{ids['array']}_{i}" for i in range(6)]
    assert all(r.state is JobState.COMPLETED for r in tasks)
    assert tasks[-1].raw_job_id == ids["array"]  # the last task keeps the array's own id
    assert all(row.state.is_final for row in rows)


def test_sacct_exit_codes_are_the_jobs_own_or_none() -> None:
    """sacct prints `0:0` on a job that never started and on one ended by its limit or scancel
    (recorded: its batch step says `0:15`): not an exit status 0. A job that never ran has
    none; one the time limit or scancel ended has its batch step's (here: killed by TERM)."""
    ids = jobs("sacct_final")
    job = by_id(slurm.parse_sacct(load("sacct_final")["stdout"]))
    for never in ("pending_begin", "pending_dependency"):
        assert (job[ids[never]].exit_code, job[ids[never]].signal) == (None, None), never
    for ended in ("timeout", "cancelled"):
        assert (job[ids[ended]].exit_code, job[ids[ended]].signal) == (None, 15), ended
    # What sacct says itself stays: COMPLETED 0:0, FAILED 3:0, FAILED 0:9 (killed by KILL).
    assert (job[ids["completed"]].exit_code, job[ids["completed"]].signal) == (0, None)
    assert (job[ids["failed_exit3"]].exit_code, job[ids["failed_exit3"]].signal) == (3, None)
    assert (job[ids["failed_signal"]].exit_code, job[ids["failed_signal"]].signal) == (0, 9)


def test_sacct_live_jobs() -> None:
    ids = jobs("sacct_live")
    job = by_id(slurm.parse_sacct(load("sacct_live")["stdout"]))
    running = job[ids["timeout"]]
    assert running.state is JobState.RUNNING and running.end is None
    assert running.max_rss_bytes is None  # nothing sampled yet
    rest = job[f"{ids['array']}_[2-5%2]"]
    assert rest.state is JobState.PENDING and rest.reason == "JobArrayTaskLimit"
    assert rest.nodes is None
    assert job[ids["pending_begin"]].reason == "BeginTime"
    assert job[ids["pending_dependency"]].reason == "Dependency"


def test_sacct_array_by_base_id() -> None:
    array = jobs("sacct_array")["array"]
    rows = slurm.parse_sacct(load("sacct_array")["stdout"])
    assert {r.array_job_id for r in rows} == {array}
    assert sorted(r.array_task or "" for r in rows) == [str(i) for i in range(6)]
    assert all(r.max_rss_bytes for r in rows)


def test_sacct_lag_window() -> None:
    """New job: no record; then an interim `allocation` record; then the real one."""
    assert slurm.parse_sacct(load("sacct_lag_missing")["stdout"]) == []

    (pending,) = slurm.parse_sacct(load("sacct_lag_allocation_pending")["stdout"])
    assert pending.is_interim and pending.state is JobState.PENDING  # the job is running!
    assert pending.partition is None and pending.req_mem_mb is None  # ReqMem printed as `16?`

    (ended,) = slurm.parse_sacct(load("sacct_lag_allocation")["stdout"])
    assert ended.is_interim and ended.state is JobState.COMPLETED

    (full,) = slurm.parse_sacct(load("sacct_lag_complete")["stdout"])
    assert not full.is_interim and full.name == "fx-lag" and full.partition == "gpu_a100"
    assert full.state is JobState.COMPLETED and full.max_rss_bytes


def test_sacct_unknown_job_and_empty_output() -> None:
    assert slurm.parse_sacct(load("sacct_unknown_job")["stdout"]) == []
    assert slurm.parse_sacct("") == []


def test_sacct_parses_by_header_not_position() -> None:
    text = "State|JobID|ExitCode\nFAILED|27|3:0\nFAILED|27.batch|3:0\n"
    (row,) = slurm.parse_sacct(text)
    assert (row.job_id, row.state, row.exit_code) == ("27", JobState.FAILED, 3)
    assert row.elapsed_s is None and row.max_rss_bytes is None and row.gpus == 0


def test_sacct_keeps_a_bar_in_the_comment() -> None:
    header, row = load("sacct_lag_complete")["stdout"].splitlines()[:2]
    (parsed,) = slurm.parse_sacct(f"{header}\n{row}a|b\n")
    assert parsed.comment == "a|b"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("JobID|State\n27|COMPLETED|extra\n", "columns"),
        ("JobID|JobName\n27|x\n", "State"),
        ("Welcome!\n", "no header"),
        ("JobID|State|ExitCode\n27|FAILED|three\n", "exit code"),
        ("JobID|State|MaxRSS\n27|COMPLETED|lots\n", "size"),
        ("JobID|State|ElapsedRaw\n27|COMPLETED|1h\n", "ElapsedRaw"),
        ("JobID|State|Start\n27|COMPLETED|yesterday\n", "time"),
    ],
)
def test_sacct_garbage(text: str, match: str) -> None:
    with pytest.raises(HpcjobError, match=match):
        slurm.parse_sacct(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3:0", (3, None)), ("0:9", (0, 9)), ("0:0", (0, None)), ("", (None, None))],
)
def test_exit_codes(text: str, expected: tuple[int | None, int | None]) -> None:
    assert slurm.parse_exit_code(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72600K", 72600 * 1024),
        ("1.5G", 1.5 * 1024**3),
        ("1000M", 1000 * 1024**2),
        ("0", 0),
        ("", None),
        ("2T", 2 * 1024**4),
    ],
)
def test_sizes(text: str, expected: float | None) -> None:
    assert slurm.parse_size_bytes(text) == expected


@pytest.mark.parametrize(
    ("tres", "expected"),
    [
        ("billing=1,cpu=1,gres/gpu:a100=1,gres/gpu=1,mem=1000M,node=1", (1, {"a100": 1})),
        ("billing=1,cpu=1,mem=1000M,node=1", (0, {})),
        ("cpu=18,gres/gpu=1,mem=120G", (1, {})),
        ("gres/gpu:a100=2,gres/gpu:h100=1", (3, {"a100": 2, "h100": 1})),
        ("", (0, {})),
    ],
)
def test_tres_gpus(tres: str, expected: tuple[int, dict[str, int]]) -> None:
    assert slurm.parse_tres_gpus(tres) == expected


# ------------------------------------------------------------------------------------- sinfo
def test_sinfo_partitions() -> None:
    parts = {p.name: p for p in slurm.parse_sinfo(load("sinfo_idle")["stdout"])}
    assert list(parts) == ["rome", "gpu_a100", "gpu_h100", "staging"]
    assert [p.name for p in parts.values() if p.is_default] == ["rome"]
    assert parts["rome"].max_time_s == 5 * 86400
    assert parts["staging"].max_time_s == 86400
    assert parts["rome"].gpus_per_node == {} and parts["rome"].gpus == 0
    assert parts["gpu_a100"].gpus_per_node == {"a100": 2} and parts["gpu_a100"].gpus == 2
    assert parts["gpu_h100"].gpus_per_node == {"h100": 2}
    for part in parts.values():
        assert part.available and part.state == "idle"
        assert part.nodes == 1 and part.cpus_per_node == 2 and part.mem_mb > 1000


def test_sinfo_busy_and_drained() -> None:
    busy = {p.name: p for p in slurm.parse_sinfo(load("sinfo_busy")["stdout"])}
    assert busy["rome"].state in ("allocated", "mixed") and busy["rome"].nodes_allocated == 1
    drained = {p.name: p for p in slurm.parse_sinfo(load("sinfo_drained")["stdout"])}
    assert drained["gpu_h100"].nodes_other == 1 and drained["gpu_h100"].state == "down"
    assert drained["gpu_h100"].available  # the partition is up; its only node is not
    assert drained["gpu_a100"].state == "idle"


def test_sinfo_merges_rows_of_one_partition() -> None:
    header, rome = load("sinfo_idle")["stdout"].splitlines()[:2]
    other = "rome*|up|5-00:00:00|3|1/1/1/3|4|9000|gpu:a100:1"
    (part,) = slurm.parse_sinfo(f"{header}\n{rome}\n{other}\n")
    assert part.nodes == 4 and part.nodes_idle == 2 and part.nodes_other == 1
    assert part.cpus_per_node == 4 and part.mem_mb == 9000 and part.gpus_per_node == {"a100": 1}
    assert part.state == "mixed"


def test_sinfo_unlimited_and_down() -> None:
    header = load("sinfo_idle")["stdout"].splitlines()[0]
    (part,) = slurm.parse_sinfo(f"{header}\ndebug|down|infinite|1|0/0/1/1|128+|224000+|(null)\n")
    assert part.max_time_s is None and not part.available and part.state == "down"
    assert part.cpus_per_node == 128


@pytest.mark.parametrize(
    ("gres", "expected"),
    [
        ("(null)", {}),
        ("gpu:a100:2", {"a100": 2}),
        ("gpu:a100:4(S:0-1)", {"a100": 4}),
        ("gpu:4", {"gpu": 4}),
        ("gpu:a100_3g.20gb:2,gpu:a100:1", {"a100_3g.20gb": 2, "a100": 1}),
        ("shard:8,gpu:h100:4(S:0-3)", {"h100": 4}),
        ("gpu:a100:2(S:0),gpu:a100:2(S:1)", {"a100": 4}),
    ],
)
def test_gres_gpus(gres: str, expected: dict[str, int]) -> None:
    assert slurm.parse_gres_gpus(gres) == expected


@pytest.mark.parametrize(
    "text",
    [
        "PARTITION|AVAIL\nrome|up\n",
        "PARTITION|AVAIL|TIMELIMIT|NODES|NODES(A/I/O/T)|CPUS|MEMORY|GRES\nrome|up|1:00|1|1/1|2|9|x\n",
        "PARTITION|AVAIL|TIMELIMIT|NODES|NODES(A/I/O/T)|CPUS|MEMORY|GRES\nrome|up|soon|1|0/1/0/1|2|9|x\n",
        "PARTITION|AVAIL|TIMELIMIT|NODES|NODES(A/I/O/T)|CPUS|MEMORY|GRES\nr|up|1:00|1|0/1/0/1|2|9|gpu:a:b\n",
        "slurm_load_partitions: Unable to contact slurm controller (connect failure)\n",
    ],
)
def test_sinfo_garbage(text: str) -> None:
    with pytest.raises(HpcjobError):
        slurm.parse_sinfo(text)


# ----------------------------------------------------------------------------------- scancel
def test_scancel_of_another_users_job() -> None:
    data = load("scancel_other_user")
    (failure,) = slurm.parse_scancel_errors(data["stderr"])
    assert failure.job_id == data["jobs"]["root_job"]
    assert failure.reason == "Access/permission denied"


@pytest.mark.parametrize("name", ["scancel_own", "scancel_begin", "scancel_unknown"])
def test_scancel_quiet_success(name: str) -> None:
    # Slurm 22.05 says nothing, and exits 0, even for an id it does not know.
    data = load(name)
    assert data["returncode"] == 0 and slurm.parse_scancel_errors(data["stderr"]) == []


# ------------------------------------------------------------------------------------- times
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30 * 60),  # a bare number is minutes
        ("90", 90 * 60),
        ("10:30", 10 * 60 + 30),  # MM:SS
        ("01:30:00", 5400),
        ("1-12", 36 * 3600),  # D-HH
        ("1-12:30", 36 * 3600 + 1800),
        ("5-00:00:00", 5 * 86400),
        (" 2:00:00 ", 7200),
        ("UNLIMITED", None),
        ("infinite", None),
        ("INVALID", None),
    ],
)
def test_slurm_time_limits(text: str, seconds: int | None) -> None:
    assert slurm.parse_slurm_time(text) == seconds


@pytest.mark.parametrize("text", ["1h", "1:2:3:4", "-5", "1-", "1.5", "abc", "1-2-3", "::"])
def test_slurm_time_garbage(text: str) -> None:
    with pytest.raises(HpcjobError, match="time limit") as err:
        slurm.parse_slurm_time(text)
    assert err.value.hint is not None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1:00", 60),  # squeue: M:SS
        ("0:04", 4),
        ("1:00:00", 3600),
        ("00:01:26", 86),
        ("1-02:03:04", 93784),
        ("00:03.690", 3.69),  # TotalCPU: MM:SS.mmm
        ("01:02:03.5", 3723.5),
        ("UNLIMITED", None),
        ("infinite", None),
        ("", None),
    ],
)
def test_slurm_durations(text: str, seconds: float | None) -> None:
    assert slurm.parse_slurm_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "1h", "1-2", "a:b"])
def test_slurm_duration_garbage(text: str) -> None:
    with pytest.raises(HpcjobError, match="duration"):
        slurm.parse_slurm_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00:00"),
        (59, "00:00:59"),
        (3600, "01:00:00"),
        (86399, "23:59:59"),
        (86400, "1-00:00:00"),
        (5 * 86400 + 3661, "5-01:01:01"),
    ],
)
def test_format_slurm_time(seconds: int, text: str) -> None:
    assert slurm.format_slurm_time(seconds) == text
    assert slurm.parse_slurm_time(text) == seconds


def test_format_slurm_time_round_trips() -> None:
    for seconds in range(0, 3 * 86400, 997):
        assert slurm.parse_slurm_time(slurm.format_slurm_time(seconds)) == seconds
    with pytest.raises(ValueError):
        slurm.format_slurm_time(-1)


# --------------------------------------------------------------------------------- array ids
@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("27", ["27"]),
        ("27_3", ["27_3"]),
        ("27_[0-3]", ["27_0", "27_1", "27_2", "27_3"]),
        ("27_[0-3%2]", ["27_0", "27_1", "27_2", "27_3"]),
        ("27_[5]", ["27_5"]),
        ("27_[1,4-6]", ["27_1", "27_4", "27_5", "27_6"]),
        ("27_[0-8:4]", ["27_0", "27_4", "27_8"]),
        ("27_[2-5%2]", ["27_2", "27_3", "27_4", "27_5"]),
        ("541_[0-1]", ["541_0", "541_1"]),  # never read as 5410
    ],
)
def test_expand_array_ids(job_id: str, expected: list[str]) -> None:
    assert slurm.expand_array_ids(job_id) == expected


@pytest.mark.parametrize(
    "job_id",
    [
        "",
        "abc",
        "27_",
        "27_[",
        "27_[]",
        "27_[3-1]",
        "27_[a-b]",
        "27_[0-99999999]",
        "27_[0-3:0]",
        "_[0-3]",
        "27_[0-3]x",
    ],
)
def test_expand_array_ids_garbage(job_id: str) -> None:
    with pytest.raises(HpcjobError):
        slurm.expand_array_ids(job_id)


# ------------------------------------------------------------------------ hostile input
PARSERS: list[tuple[str, Callable[[str], object]]] = [
    ("sacct_final", slurm.parse_sacct),
    ("sacct_live", slurm.parse_sacct),
    ("squeue_live", slurm.parse_squeue),
    ("squeue_final", slurm.parse_squeue),
    ("sinfo_busy", slurm.parse_sinfo),
    ("sbatch_plain", slurm.parse_sbatch_job_id),
]


@pytest.mark.parametrize(("name", "parse"), PARSERS)
def test_mangled_output_fails_only_with_a_clear_error(
    name: str, parse: Callable[[str], object]
) -> None:
    """Real output with characters dropped, duplicated or replaced: a result or HpcjobError."""
    text = load(name)["stdout"]
    rng = random.Random(name)
    alphabet = "|:-_.[]%0123456789\n \x00\ufffdNKMG"
    for _ in range(300):
        chars = list(text)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(chars))
            action = rng.choice(("drop", "dup", "replace"))
            if action == "drop":
                del chars[pos]
            elif action == "dup":
                chars.insert(pos, chars[pos])
            else:
                chars[pos] = rng.choice(alphabet)
            if not chars:
                break
        try:
            parse("".join(chars))
        except HpcjobError as err:
            assert err.message  # says what it could not read
