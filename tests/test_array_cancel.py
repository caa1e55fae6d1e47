"""Array tasks cancelled while still PENDING, on squeue/sacct outputs recorded from the real test
cluster (tests/cluster/record_array_cancel.py → tests/fixtures/slurm/*array_cancel*.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from hpcjob.jobstate import CANCELLED_PENDING_REASON, JobInfo, JobState
from hpcjob.ledger.store import Ledger
from hpcjob.scheduler.slurm import SlurmScheduler
from hpcjob.slurm import cancelled_before_start, parse_sacct, parse_squeue
from tests.helpers import ReplayShell, invoke, new_run, recorded

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
DEP = "array_cancel_dependency"  # --array=0-5 behind a held job; task 4, then all cancelled
THR = "array_cancel_throttled"  # --array=0-3%1 with task 0 running; task 2, then all cancelled
START, END = "2026-11-28T04:34:08Z", "2026-11-28T04:35:08Z"


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def tasks(scenario: str) -> tuple[str, list[str], str]:
    jobs = fixture(f"squeue_{scenario}_task")["jobs"]
    count = 6 if scenario == DEP else 4
    return jobs["array"], [f"{jobs['array']}_{i}" for i in range(count)], jobs["cancelled_task"]


def judged(step: str, sacct_answered: bool = True) -> list[str]:
    scenario = step.rsplit("_", 1)[0]
    _, ids, _ = tasks(scenario)
    squeue = parse_squeue(fixture(f"squeue_{step}")["stdout"])
    sacct = parse_sacct(fixture(f"sacct_{step}")["stdout"])
    return cancelled_before_start(ids, squeue, sacct, sacct_answered)


def test_recorded_slurm_keeps_no_record_of_a_task_cancelled_while_pending() -> None:
    """What the rule stands on, as Slurm 22.05 printed it."""
    array, _, task = tasks(DEP)
    assert fixture(f"scancel_{DEP}_task")["returncode"] == 0
    squeue = parse_squeue(fixture(f"squeue_{DEP}_task")["stdout"])
    assert task not in {r.job_id for r in squeue}
    assert all(task not in r.task_ids() for r in squeue)
    for name in (f"sacct_{DEP}_task", f"sacct_{DEP}_task_task", f"sacct_{DEP}_task_dup"):
        records = parse_sacct(fixture(name)["stdout"])
        assert task not in {r.job_id for r in records}, name
    holder = [
        r for r in parse_sacct(fixture(f"sacct_{DEP}_all")["stdout"]) if r.raw_job_id == array
    ]
    assert holder and holder[0].state == JobState.CANCELLED and "[" in holder[0].job_id


def test_nothing_is_concluded_before_any_cancel() -> None:
    _, ids, _ = tasks(DEP)
    squeue = parse_squeue(fixture(f"squeue_{DEP}_before")["stdout"])
    assert cancelled_before_start(ids, squeue, [], sacct_answered=True) == []
    _, ids, _ = tasks(THR)
    squeue = parse_squeue(fixture(f"squeue_{THR}_before")["stdout"])
    assert cancelled_before_start(ids, squeue, [], sacct_answered=True) == []


@pytest.mark.parametrize("scenario", [DEP, THR])
def test_one_pending_task_cancelled_is_found_and_only_it(scenario: str) -> None:
    _, _, task = tasks(scenario)
    assert judged(f"{scenario}_task") == [task]


def test_missing_task_without_sacct_is_never_concluded() -> None:
    assert judged(f"{DEP}_task", sacct_answered=False) == []
    _, _, task = tasks(DEP)
    # Slurm knows nothing at all (no array record either): missing is never done.
    assert cancelled_before_start([task], [], [], sacct_answered=True) == []


def test_whole_array_cancelled_while_pending_ends_every_task() -> None:
    _, ids, _ = tasks(DEP)
    assert judged(f"{DEP}_all") == ids
    assert judged(f"{DEP}_all", sacct_answered=False) == [t for t in ids if not t.endswith("_4")]


def test_throttled_array_cancelled_spares_the_task_that_ran() -> None:
    _, ids, _ = tasks(THR)
    assert judged(f"{THR}_all") == ids[1:]  # task 0 ran: Slurm's own record speaks for it


def poll(step: str) -> dict[str, Any]:
    scenario = step.rsplit("_", 1)[0]
    _, ids, _ = tasks(scenario)
    shell = ReplayShell(
        {"squeue": [recorded(f"squeue_{step}")], "sacct": [recorded(f"sacct_{step}")]}
    )
    return SlurmScheduler(shell, address="slurm:test").poll(ids)  # type: ignore[arg-type]


def test_poll_ends_the_cancelled_task_and_keeps_the_rest_pending() -> None:
    _, ids, task = tasks(DEP)
    infos = poll(f"{DEP}_task")
    assert infos[task].state == JobState.CANCELLED
    assert infos[task].reason == CANCELLED_PENDING_REASON and infos[task].started_at is None
    assert {infos[t].state for t in ids if t != task} == {JobState.PENDING}


@pytest.mark.parametrize("scenario", [DEP, THR])
def test_poll_after_cancelling_the_array(scenario: str) -> None:
    _, ids, _ = tasks(scenario)
    infos = poll(f"{scenario}_all")
    assert {infos[t].state for t in ids} == {JobState.CANCELLED}
    unstarted = ids if scenario == DEP else ids[1:]
    assert all(infos[t].reason == CANCELLED_PENDING_REASON for t in unstarted)
    assert all(infos[t].job_id == t for t in ids)
    if scenario == THR:
        assert infos[ids[0]].reason != CANCELLED_PENDING_REASON
        assert infos[ids[0]].started_at is not None


@pytest.mark.parametrize("scenario", [DEP, THR])
def test_squeue_of_one_task_shows_the_array_record_as_its_row(scenario: str) -> None:
    """Asked about one id, squeue prints the array's record as `123_1` (no node, 0:00)."""
    _, ids, _ = tasks(scenario)
    for step, expected in (("task", []), ("all", [ids[1]])):
        squeue = parse_squeue(fixture(f"squeue_{scenario}_{step}_one")["stdout"])
        sacct = parse_sacct(fixture(f"sacct_{scenario}_{step}")["stdout"])
        assert squeue[0].job_id == ids[1] and not squeue[0].is_array_rest
        assert cancelled_before_start([ids[1]], squeue, sacct, True) == expected
        assert cancelled_before_start([ids[1]], squeue, [], False) == expected


def test_after_squeue_forgot_the_array_sacct_alone_ends_every_unstarted_task() -> None:
    """Minutes later squeue shows nothing; the array's CANCELLED record in sacct still covers
    the tasks it held, and the task taken out earlier is in no record while the array's is."""
    _, ids, _ = tasks(DEP)
    sacct = parse_sacct(fixture(f"sacct_{DEP}_all")["stdout"])
    assert cancelled_before_start(ids, [], sacct, sacct_answered=True) == ids
    _, ids, _ = tasks(THR)
    sacct = parse_sacct(fixture(f"sacct_{THR}_all")["stdout"])
    assert cancelled_before_start(ids, [], sacct, sacct_answered=True) == ids[1:]


def one_cancelled_while_pending(home: Path) -> Any:
    """Issue 16's case on the recorded outputs: task 2 of 1209 cancelled while pending (the
    poll as Slurm answered it), the other three then COMPLETED; the array's parent run."""
    array, ids, task = tasks(THR)
    ledger = Ledger(home / "ledger.db")
    parent = ledger.create_run(new_run(spec={"resources": {"array": "0-3%1"}}))
    parent = ledger.set_submitted(parent.run_id, array, "/runs/x/slurm-%A_%a.out")
    runs = {r.job_id: r for r in ledger.create_array_tasks(parent, [0, 1, 2, 3])}
    for job_id, info in poll(f"{THR}_task").items():
        runs[job_id] = ledger.record_info(runs[job_id], info, "slurm")
    for job_id in ids:
        if job_id != task:
            done = JobInfo(job_id, JobState.COMPLETED, exit_code=0, started_at=START, ended_at=END)
            ledger.record_info(runs[job_id], done, "slurm")
    return parent


def test_array_with_one_task_cancelled_while_pending_completes_and_wait_exits_0(
    isolated_home: Path,
) -> None:
    """The array is COMPLETED with the cancelled task in its reason; `wait` exits 0 and
    `status --check` agrees."""
    parent = one_cancelled_while_pending(isolated_home)
    _, _, task = tasks(THR)
    waited = invoke("wait", parent.run_id, "--json")
    assert waited.exit_code == 0, waited.stdout + waited.stderr
    row = waited.json()
    assert row["state"] == "COMPLETED"
    assert row["reason"] == "3 of 4 tasks COMPLETED; 1 cancelled before it started"
    checked = invoke("status", "--check", "--json")
    assert checked.exit_code == 0, checked.stdout
    shown = {r["job_id"]: r for r in checked.json()}
    assert shown[task]["state"] == "CANCELLED" and shown[task]["exit_code"] is None
    assert invoke("wait", task).exit_code == 3  # that one task itself did not complete
    header = invoke("show", task, "--no-script").stdout.split("\n\n")[0]
    assert re.search(r"^ *exit code +- *$", header, re.M), header  # none, not a made-up 0


def test_a_task_that_never_started_has_no_exit_code() -> None:
    """sacct prints `0:0` for the array's pending record: not an exit code of a task that never
    ran (nor of the array's tasks cancelled with it)."""
    for scenario in (DEP, THR):
        _, ids, _ = tasks(scenario)
        infos = poll(f"{scenario}_all")
        unstarted = ids if scenario == DEP else ids[1:]
        assert [(infos[t].exit_code, infos[t].signal) for t in unstarted] == [(None, None)] * len(
            unstarted
        )


def test_an_arrays_cost_on_the_embedded_scheduler_is_not_billed(isolated_home: Path) -> None:
    parent = one_cancelled_while_pending(isolated_home)
    invoke("status")
    text = invoke("show", parent.run_id, "--no-script").stdout
    cost = text[text.index("Cost:") :]
    assert "not billed: the embedded scheduler runs jobs on this machine" in cost, cost
    assert "without a rate" not in cost
