"""The SQLite run ledger: migrations, runs and their history, metrics, refs, damaged files."""

from __future__ import annotations

import itertools
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from hpcjob.errors import HpcjobError
from hpcjob.joblog import Metric
from hpcjob.jobstate import JobInfo, JobState
from hpcjob.ledger import records, store
from hpcjob.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from hpcjob.ledger.store import Ledger
from tests.helpers import GUARD_S, new_run


def test_migrates_from_blank_and_records_each_migration() -> None:
    ledger = Ledger(":memory:")
    assert ledger.schema_version() == SCHEMA_VERSION
    names = [r[0] for r in ledger.db.execute("SELECT name FROM schema_migrations ORDER BY 1")]
    assert names == sorted(m.name for m in MIGRATIONS)
    tables = {r[0] for r in ledger.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "state_history", "metrics", "facts", "artifacts"} <= tables


def test_migrating_again_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    ledger = Ledger(path)
    assert ledger.db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(
        MIGRATIONS
    )


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    ledger.db.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'now')")
    ledger.close()
    with pytest.raises(HpcjobError, match="newer hpcjob"):
        Ledger(path)


def test_run_lifecycle_and_history() -> None:
    ledger = Ledger(":memory:")
    run = ledger.create_run(new_run())
    assert run.state == JobState.SUBMITTING and run.token.startswith("hpcjob-")
    run = ledger.set_submitted(run.run_id, "42", "/runs/x/slurm-42.out")
    assert (run.job_id, run.state) == ("42", JobState.PENDING)
    run = ledger.record_info(
        run, JobInfo("42", JobState.RUNNING, node="n1", started_at="2026-01-01T00:00:00Z"), "t"
    )
    run = ledger.record_info(run, JobInfo("42", JobState.COMPLETED, exit_code=0), "t")
    assert run.node == "n1" and run.exit_code == 0
    states = [h.state for h in ledger.history(run.run_id)]
    assert states == [JobState.SUBMITTING, JobState.PENDING, JobState.RUNNING, JobState.COMPLETED]
    assert ledger.unfinished("local") == []


def test_resolve_by_run_id_job_id_prefix_and_last() -> None:
    ledger = Ledger(":memory:")
    first = ledger.set_submitted(ledger.create_run(new_run()).run_id, "7", "o")
    second = ledger.set_submitted(ledger.create_run(new_run()).run_id, "8", "o")
    assert ledger.resolve("last").run_id == second.run_id
    assert ledger.resolve("7").run_id == first.run_id
    assert ledger.resolve(first.run_id).job_id == "7"
    with pytest.raises(HpcjobError, match="No run or job"):
        ledger.resolve("12345")


def test_an_ambiguous_run_id_prefix_lists_the_runs_it_matches() -> None:
    ledger = Ledger(":memory:")
    for i, workload in enumerate(("train", "eda", "gpu-check", "train")):
        run = ledger.create_run(new_run(run_id=f"r0{i}aaaa", workload=workload))
        ledger.set_submitted(run.run_id, str(700 + i), "o")
    ledger.create_run(new_run(run_id="r1bbbbb", workload="eda"))
    with pytest.raises(HpcjobError) as refused:
        ledger.resolve("r0")
    err = refused.value
    assert "'r0' is ambiguous" in err.message and "4 runs" in err.message
    assert "No run or job" not in err.message
    lines = err.message.splitlines()[1:]
    assert len(lines) == 4
    # Newest first, each with its job id, workload, state and when it was created.
    assert [line.split()[0] for line in lines] == ["r03aaaa", "r02aaaa", "r01aaaa", "r00aaaa"]
    assert lines[1].split()[:5] == ["r02aaaa", "job", "702", "gpu-check", "PENDING"]
    assert all(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line) for line in lines)
    assert err.hint is not None and "more of the run id" in err.hint
    # A prefix that matches one run still finds it, however short.
    assert ledger.resolve("r1").run_id == "r1bbbbb"
    assert ledger.resolve("r02").run_id == "r02aaaa"


def test_an_ambiguous_prefix_shows_at_most_ten_runs_and_counts_the_rest() -> None:
    ledger = Ledger(":memory:")
    for i in range(13):
        ledger.create_run(new_run(run_id=f"r5{i:02d}aaa"))
    with pytest.raises(HpcjobError) as refused:
        ledger.resolve("r5")
    lines = refused.value.message.splitlines()
    assert "13 runs" in lines[0]
    assert sum(line.lstrip().startswith("r5") for line in lines) == 10
    assert lines[-1].strip() == "… 3 more"
    # A run that has no job id yet says so.
    assert "no job yet" in lines[1]


def test_empty_ledger_has_a_friendly_last() -> None:
    with pytest.raises(HpcjobError, match="no runs yet"):
        Ledger(":memory:").resolve("last")


def test_metrics_upsert_and_latest() -> None:
    ledger = Ledger(":memory:")
    run = ledger.create_run(new_run())
    ledger.add_metrics(run.run_id, [Metric(1, "loss", 0.5), Metric(2, "loss", 0.4)])
    ledger.add_metrics(run.run_id, [Metric(2, "loss", 0.3), Metric(2, "val_loss", None)])
    assert [(m.step, m.key, m.value) for m in ledger.metrics(run.run_id)] == [
        (1, "loss", 0.5),
        (2, "loss", 0.3),
        (2, "val_loss", None),
    ]
    latest = ledger.latest_metrics([run.run_id])[run.run_id]
    assert {m.key for m in latest} == {"loss", "val_loss"}


def test_ledger_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "home" / "ledger.db"
    Ledger(path).close()
    assert path.stat().st_mode & 0o077 == 0
    assert path.parent.stat().st_mode & 0o077 == 0


def test_damaged_ledger_is_reported_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(HpcjobError, match="damaged"):
        Ledger(path)
    assert path.read_bytes() == garbage


def test_readers_are_not_blocked_by_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    writer = Ledger(path)
    run = writer.create_run(new_run())
    writer.db.execute("BEGIN IMMEDIATE")
    writer.db.execute("UPDATE runs SET node = 'x' WHERE run_id = ?", (run.run_id,))
    reader = Ledger(path)
    seen: list[str | None] = []
    thread = threading.Thread(target=lambda: seen.append(reader.get_run(run.run_id).node))
    thread.start()
    # The writer commits only once the reader is done: a reader that waited for the writer would
    # give up at its 30 s busy timeout, having read nothing (the guard only bounds a hang).
    thread.join(timeout=GUARD_S)
    assert not thread.is_alive()
    writer.db.execute("COMMIT")
    assert seen == [None]  # read the last committed state while the write was in flight


def test_writers_wait_for_each_other_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledgers = [Ledger(path) for _ in range(4)]
    errors: list[BaseException] = []

    def work(ledger: Ledger) -> None:
        try:
            for _ in range(20):
                ledger.create_run(new_run())
        except (sqlite3.Error, HpcjobError) as exc:  # pragma: no cover - the failure we test for
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(lg,)) for lg in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ledgers[0].db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 80


def test_migrates_from_every_earlier_schema(tmp_path: Path) -> None:
    """A ledger written by each earlier schema gets the later migrations and keeps its runs."""
    for version in range(1, SCHEMA_VERSION):
        path = tmp_path / f"v{version}.db"
        old = Ledger.__new__(Ledger)
        old.path = str(path)
        old.db = sqlite3.connect(path, isolation_level=None)
        old.db.row_factory = sqlite3.Row
        old.migrate(upto=version)
        old.db.execute(
            "INSERT INTO runs (run_id, token, profile, cluster, scheduler, workload, spec_json, "
            "script, script_hash, run_dir, state, created_at, updated_at) VALUES ('rold', 't', "
            "'local', 'c', 'local', 'train', '{}', 's', 'h', '/r', 'COMPLETED', 'x', 'x')"
        )
        old.db.close()
        ledger = Ledger(path)
        assert ledger.schema_version() == SCHEMA_VERSION
        run = ledger.get_run("rold")
        assert run.state == JobState.COMPLETED and run.parent_run_id is None


def test_array_tasks_are_runs_of_their_own() -> None:
    ledger = Ledger(":memory:")
    spec = {"workload": "train", "resources": {"array": "0-2%2"}}
    parent = ledger.create_run(new_run(spec=spec))
    parent = ledger.set_submitted(parent.run_id, "500", "/runs/x/slurm-500.out")
    tasks = ledger.create_array_tasks(parent, [0, 1, 2])
    assert parent.is_array and not tasks[0].is_array
    assert [t.job_id for t in tasks] == ["500_0", "500_1", "500_2"]
    assert tasks[1].output_path == "/runs/x/slurm-500_1.out"
    assert ledger.resolve("500_2").run_id == tasks[2].run_id
    assert ledger.resolve("500").run_id == parent.run_id
    assert ledger.resolve("last").run_id == parent.run_id  # the submitted run, not a task
    assert [r.job_id for r in ledger.list_runs()] == ["500", "500_0", "500_1", "500_2"]


def _tiny_id_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ids of each length (r000000/r000001, r00000000/r00000001, …), taken in turn."""
    turn = itertools.cycle((0, 1))

    def two_ids(nbytes: int = 3) -> str:
        return "r" + f"{next(turn):0{2 * nbytes}x}"

    monkeypatch.setattr(records, "new_run_id", two_ids)
    monkeypatch.setattr(store, "new_run_id", two_ids, raising=False)  # before fresh_run_id


def test_array_tasks_get_distinct_ids_in_a_crowded_id_space(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger = Ledger(":memory:")
    parent = ledger.create_run(new_run(run_id="r000000", spec={"resources": {"array": "0-3"}}))
    parent = ledger.set_submitted(parent.run_id, "500", "o")
    _tiny_id_space(monkeypatch)
    tasks = ledger.create_array_tasks(parent, [0, 1, 2, 3])  # one transaction
    ids = [t.run_id for t in tasks]
    assert len({*ids, parent.run_id}) == 5
    assert ids[0] == "r000001" and all(len(i) > 7 for i in ids[1:])  # longer once full
    assert ledger.resolve("r000000").run_id == "r000000"  # an exact id wins over prefixes
    assert ledger.resolve(ids[1]).array_task == 1


def test_new_runs_get_free_ids_and_a_full_space_fails_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger = Ledger(":memory:")
    _tiny_id_space(monkeypatch)
    made = [ledger.create_run(new_run(run_id=ledger.fresh_run_id())).run_id for _ in range(10)]
    assert len(set(made)) == 10
    parent = ledger.set_submitted(made[0], "600", "o")
    ledger.create_array_tasks(parent, [0, 1])  # the last two ids of the space
    runs = ledger.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    with pytest.raises(HpcjobError, match="No free run id"):
        ledger.create_array_tasks(parent, [2, 3])
    with pytest.raises(HpcjobError, match="No free run id"):
        ledger.fresh_run_id()
    assert ledger.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == runs  # rolled back


def test_a_run_id_taken_meanwhile_is_refused_clearly() -> None:
    ledger = Ledger(":memory:")
    ledger.create_run(new_run(run_id="r123456"))
    with pytest.raises(HpcjobError, match="took the run id r123456"):
        ledger.create_run(new_run(run_id="r123456"))
