"""A growing ledger: the queries `status`, `runs` and `show last` run find their rows through an
index (SQLite's own query plan says so), never by reading every run; and an older ledger gets
the index migration with its runs listed as before (bench/ledger_growth.py measures the time)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from hpcjob.jobstate import JobInfo, JobState
from hpcjob.ledger.schema import SCHEMA_VERSION
from hpcjob.ledger.store import Ledger
from tests.helpers import new_run


def _plans(ledger: Ledger, call: Callable[[], object]) -> dict[str, str]:
    """Each statement `call` runs on the ledger, with SQLite's query plan for it."""
    statements: list[str] = []
    ledger.db.set_trace_callback(statements.append)
    try:
        call()
    finally:
        ledger.db.set_trace_callback(None)
    plans = {}
    for sql in statements:
        if sql.lstrip().upper().startswith("SELECT"):
            rows = ledger.db.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
            plans[sql] = "\n".join(str(row[-1]) for row in rows)
    return plans


def _crowded(ledger: Ledger) -> None:
    """Runs of two profiles, finished and not, an array with its tasks."""
    for n in range(6):
        run = ledger.create_run(new_run(run_id=f"r{n:06x}", profile="local" if n % 2 else "lab"))
        ledger.set_submitted(run.run_id, str(n), "o")
        if n < 4:
            ledger.record_info(run, JobInfo(str(n), JobState.COMPLETED, exit_code=0), "local")
    parent = ledger.create_run(new_run(spec={"resources": {"array": "0-2"}}))
    ledger.create_array_tasks(ledger.set_submitted(parent.run_id, "9", "o"), [0, 1, 2])


LOOKUPS: dict[str, Callable[[Ledger], object]] = {
    "runs": lambda ledger: ledger.list_runs(profile="local", limit=20),
    "runs --all-profiles": lambda ledger: ledger.list_runs(limit=20),
    "unfinished runs": lambda ledger: ledger.unfinished("local"),
    "awaiting accounting": lambda ledger: ledger.awaiting_accounting("local"),
    "requeue due": lambda ledger: ledger.requeue_due("local", 75),
    "show last": lambda ledger: ledger.resolve("last"),
    "show JOBID": lambda ledger: ledger.resolve("9_1"),
}


def _reads_all(sql: str, plan: str) -> str | None:
    """Why the plan reads (or sorts) every run, or every run of a profile; None if it does not."""
    limited = " LIMIT " in sql
    # Walking an index in the order shown stops at the LIMIT; a sort first needs every match.
    ordered = limited and "TEMP B-TREE FOR ORDER BY" not in plan
    for line in plan.splitlines():
        if line.startswith("SCAN runs") and ("INDEX" not in line or not ordered):
            return "it walks all runs"
        if line.startswith("SEARCH runs") and line.endswith("(profile=?)") and not ordered:
            return "it reads every run of the profile"
    if limited and not ordered and "(job_id=?)" not in plan:  # a job id: one run a cluster
        return "it sorts every match to show a few"
    return None


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_a_lookup_of_status_runs_or_show_reads_no_more_than_it_shows(lookup: str) -> None:
    """No full scan of the runs and no sort of all of them: the time stays flat as runs pile
    up (a LIMIT stops the walk along an index after the rows shown)."""
    ledger = Ledger(":memory:")
    _crowded(ledger)
    plans = _plans(ledger, lambda: LOOKUPS[lookup](ledger))
    assert plans, "the lookup ran no query"
    for sql, plan in plans.items():
        assert _reads_all(sql, plan) is None, f"{_reads_all(sql, plan)}:\n{sql}\n{plan}"


def test_runs_of_one_state_are_walked_in_order_among_that_state_alone() -> None:
    """`runs --state FAILED` reads the failed runs only, newest first, however few they are."""
    ledger = Ledger(":memory:")
    _crowded(ledger)
    plans = _plans(ledger, lambda: ledger.list_runs(profile="local", state="FAILED", limit=20))
    [(sql, plan)] = plans.items()
    assert "(profile=? AND state=?)" in plan and "TEMP B-TREE" not in plan, f"{sql}\n{plan}"


def _schema_4_ledger(path: Path) -> None:
    """A ledger as hpcjob wrote it at schema 4: two runs and an array (tasks created later)."""
    old = Ledger.__new__(Ledger)
    old.path = str(path)
    old.db = sqlite3.connect(path, isolation_level=None)
    old.migrate(upto=4)
    columns = (
        "run_id, token, job_id, profile, cluster, scheduler, workload, spec_json, script, "
        "script_hash, run_dir, state, created_at, updated_at, parent_run_id, array_task"
    )
    rows = [
        ("rold1", "1", "local", "2026-01-01T00:00:00Z", None, None),
        ("rarr", "2", "local", "2026-01-02T00:00:00Z", None, None),
        ("rnew", "3", "local", "2026-01-03T00:00:00Z", None, None),
        ("rtask1", "2_1", "local", "2026-01-04T00:00:00Z", "rarr", 1),
        ("rtask0", "2_0", "local", "2026-01-04T00:00:00Z", "rarr", 0),
        ("rlab", "4", "lab", "2026-01-05T00:00:00Z", None, None),
    ]
    for run_id, job_id, profile, created, parent, task in rows:
        old.db.execute(
            f"INSERT INTO runs ({columns}) VALUES "
            "(?, ?, ?, ?, 'c', 'local', 'train', '{}', 's', 'h', '/r', 'COMPLETED', ?, ?, ?, ?)",
            (run_id, run_id, job_id, profile, created, created, parent, task),
        )
    old.db.close()


def test_an_older_ledger_migrates_and_lists_its_runs_as_before(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    _schema_4_ledger(path)
    ledger = Ledger(path)
    assert ledger.schema_version() == SCHEMA_VERSION
    # Newest first by the time the run (an array task: its array) was created.
    assert [r.run_id for r in ledger.list_runs(profile="local")] == [
        "rnew",
        "rarr",
        "rtask0",
        "rtask1",
        "rold1",
    ]
    assert [r.run_id for r in ledger.list_runs(limit=3)] == ["rlab", "rnew", "rarr"]
    assert [r.run_id for r in ledger.list_runs(profile="local", limit=2)] == ["rnew", "rarr"]
    assert ledger.resolve("last").run_id == "rlab"


def test_new_runs_and_tasks_are_listed_with_their_array(tmp_path: Path) -> None:
    """Runs recorded after the migration sort as the older ones did: an array's tasks right
    after it, in task order, even when created after newer runs."""
    ledger = Ledger(tmp_path / "ledger.db")
    parent = ledger.create_run(new_run(run_id="rarr", spec={"resources": {"array": "0-1"}}))
    ledger.db.execute("UPDATE runs SET created_at = '2026-01-01T00:00:00Z'")
    ledger.create_run(new_run(run_id="rlater"))
    ledger.create_array_tasks(ledger.set_submitted(parent.run_id, "9", "o"), [1, 0])
    listed = ledger.list_runs(profile="local")
    assert listed[0].run_id == "rlater"
    assert [r.job_id for r in listed[1:]] == ["9", "9_0", "9_1"]
