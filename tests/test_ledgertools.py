"""`hpcjob ledger backup` and `hpcjob ledger check` on real ledger files: a consistent private copy
while another process writes, and a check that reports damage and never changes the file."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hpcjob.errors import HpcjobError
from hpcjob.ledger.schema import SCHEMA_VERSION
from hpcjob.ledger.store import Ledger
from hpcjob.ledger.tools import backup, check, default_backup_path
from tests.helpers import mode, new_run


def ledger_with_runs(path: Path, count: int = 3) -> Path:
    ledger = Ledger(path)
    for n in range(count):
        ledger.create_run(new_run(run_id=f"r{n}"))
    ledger.set_submitted("r0", "7", "/runs/r0/slurm-7.out")
    ledger.close()
    return path


def states(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT state FROM runs ORDER BY run_id")]
    finally:
        db.close()


# -- backup -----------------------------------------------------------------------------------


def test_backup_is_a_consistent_private_copy_while_a_writer_holds_a_transaction(
    tmp_path: Path,
) -> None:
    source = ledger_with_runs(tmp_path / "ledger.db")
    writer = Ledger(source)  # another hpcjob
    # Committed, but still only in the write-ahead log (a copy of the file alone would miss it).
    writer.db.execute("UPDATE runs SET state = 'RUNNING' WHERE run_id = 'r1'")
    writer.db.execute("BEGIN IMMEDIATE")  # and now in the middle of a change
    writer.db.execute("UPDATE runs SET state = 'CANCELLED'")
    try:
        report = backup(source, tmp_path / "backups" / "copy.sqlite")
    finally:
        writer.db.execute("COMMIT")
        writer.close()
    copy = Path(report["backup"])
    assert report["runs"] == 3 and report["integrity"] == "ok"
    assert report["mode"] == "0o600" and mode(copy) == 0o600
    assert report["bytes"] == copy.stat().st_size
    # What was committed when the copy was taken, not the change in flight.
    assert states(copy) == ["PENDING", "RUNNING", "SUBMITTING"]
    assert states(source) == ["CANCELLED"] * 3
    assert check(copy)["ok"]  # a whole ledger of its own (no -wal needed beside it)


def test_backup_never_overwrites_a_file(tmp_path: Path) -> None:
    source = ledger_with_runs(tmp_path / "ledger.db")
    out = tmp_path / "old-backup.sqlite"
    out.write_bytes(b"an older backup")
    with pytest.raises(HpcjobError) as refused:
        backup(source, out)
    assert refused.value.exit_code == 2
    assert "already exists; hpcjob never overwrites a file with a backup" in refused.value.message
    assert out.read_bytes() == b"an older backup"


def test_backup_of_a_missing_ledger_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(HpcjobError, match="There is no ledger at"):
        backup(tmp_path / "ledger.db", tmp_path / "copy.sqlite")
    assert not (tmp_path / "copy.sqlite").exists()


def test_default_backup_name_carries_the_time(tmp_path: Path) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert default_backup_path(tmp_path, now) == tmp_path / "backups/ledger-20260102T030405Z.sqlite"


# -- check ------------------------------------------------------------------------------------


def test_check_of_a_sound_ledger(tmp_path: Path) -> None:
    path = ledger_with_runs(tmp_path / "ledger.db")
    report = check(path)
    assert report["ok"] is True and report["problems"] == []
    assert report["schema_version"] == report["schema_version_known"] == SCHEMA_VERSION
    assert report["runs"] == 3 and report["runs_by_state"] == {"PENDING": 1, "SUBMITTING": 2}
    assert report["mode"] == "0o600"


def test_check_names_a_ledger_others_can_read(tmp_path: Path) -> None:
    path = ledger_with_runs(tmp_path / "ledger.db")
    path.chmod(0o644)
    report = check(path)
    assert report["ok"] is False
    assert report["problems"] == ["the file is readable by others (mode 0o644); chmod 600 it"]


def _damage_index(path: Path) -> None:
    """Change one key in the runs_state index page (the table keeps its row): the kind of damage
    only SQLite's integrity check finds."""
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs_state'").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())
    at = data.find(b"SUBMITTING", (root - 1) * size, root * size)
    assert at >= 0, "the index page holds no SUBMITTING key"
    data[at] = ord("X")
    path.write_bytes(bytes(data))


def test_check_reports_damage_inside_and_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = ledger_with_runs(tmp_path / "ledger.db")
    _damage_index(path)
    before = path.read_bytes()
    report = check(path)
    assert report["ok"] is False
    assert any("missing from index runs_state" in p for p in report["problems"]), report
    assert path.read_bytes() == before


def test_check_of_a_file_that_is_no_database_is_a_sentence(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    before = path.read_bytes()
    with pytest.raises(HpcjobError) as damaged:
        check(path)
    assert "is damaged" in damaged.value.message and "has not changed it" in damaged.value.message
    assert path.read_bytes() == before


def test_check_reads_a_ledger_from_a_newer_hpcjob_without_changing_it(tmp_path: Path) -> None:
    path = ledger_with_runs(tmp_path / "ledger.db")
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO schema_migrations VALUES (?, 'from the future', '2030-01-01T00:00:00Z')",
        (SCHEMA_VERSION + 1,),
    )
    db.commit()
    db.close()
    before = path.read_bytes()
    report = check(path)
    assert report["schema_version"] == SCHEMA_VERSION + 1
    assert report["schema_version_known"] == SCHEMA_VERSION
    assert report["runs"] == 3
    assert path.read_bytes() == before  # not migrated, not "repaired"
    with pytest.raises(HpcjobError, match="written by a newer hpcjob"):
        Ledger(path)  # while every other command refuses it
