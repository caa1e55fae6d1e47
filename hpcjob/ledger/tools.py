"""Looking after the ledger file itself: an online backup and an integrity check.

Both read the ledger through SQLite and never write to it: a backup is taken with SQLite's online
backup API (a consistent copy while other hpcjob processes keep writing), into a new file that is
private to the user (0600) and never replaces an existing one. A damaged ledger is reported in
plain words and left exactly as it is.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hpcjob.errors import HpcjobError
from hpcjob.ledger.schema import SCHEMA_VERSION
from hpcjob.ledger.store import ledger_error


def _open_read_only(path: Path) -> sqlite3.Connection:
    """The ledger, opened so that nothing can write to it (a missing file is an error)."""
    if not path.exists():
        raise HpcjobError(
            f"There is no ledger at {path} yet.",
            hint="It is created by the first `hpcjob submit` (HPCJOB_HOME chooses its folder).",
        )
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise _damaged(path, exc) from exc
    return db


def _damaged(path: Path, exc: sqlite3.Error) -> HpcjobError:
    return ledger_error(str(path), exc)


def default_backup_path(home: Path, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return home / "backups" / f"ledger-{stamp}.sqlite"


def backup(ledger_path: Path, out: Path) -> dict[str, Any]:
    """Copy the ledger to `out` (a new file, mode 0600) with SQLite's online backup API, then
    check the copy. Returns what a user wants to know about the copy."""
    if out.exists():
        raise HpcjobError(
            f"{out} already exists; hpcjob never overwrites a file with a backup.",
            hint="Give another --out, or move the old file away.",
            exit_code=2,
        )
    source = _open_read_only(ledger_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as exc:
        source.close()
        raise HpcjobError(f"Cannot create {out}: {exc.strerror}.", exit_code=1) from exc
    target = sqlite3.connect(out)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        integrity = target.execute("PRAGMA integrity_check").fetchone()[0]
        runs = target.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error as exc:
        target.close()
        out.unlink(missing_ok=True)
        raise _damaged(ledger_path, exc) from exc
    finally:
        source.close()
    target.close()
    os.chmod(out, 0o600)
    return {
        "ledger": str(ledger_path),
        "backup": str(out),
        "bytes": out.stat().st_size,
        "runs": runs,
        "integrity": integrity,
        "mode": oct(out.stat().st_mode & 0o777),
    }


def check(ledger_path: Path) -> dict[str, Any]:
    """SQLite's integrity and foreign-key checks, the schema version and runs per state."""
    db = _open_read_only(ledger_path)
    try:
        problems = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
        problems = [p for p in problems if p != "ok"]
        orphans = db.execute("PRAGMA foreign_key_check").fetchall()
        if orphans:
            problems.append(f"{len(orphans)} row(s) point at runs that do not exist")
        version = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
        states = dict(
            db.execute("SELECT state, COUNT(*) FROM runs GROUP BY state ORDER BY state").fetchall()
        )
    except sqlite3.Error as exc:
        raise _damaged(ledger_path, exc) from exc
    finally:
        db.close()
    mode = ledger_path.stat().st_mode & 0o777
    if mode & 0o077:
        problems.append(f"the file is readable by others (mode {oct(mode)}); chmod 600 it")
    return {
        "ledger": str(ledger_path),
        "ok": not problems,
        "problems": problems,
        "schema_version": version,
        "schema_version_known": SCHEMA_VERSION,
        "runs": sum(states.values()),
        "runs_by_state": states,
        "mode": oct(mode),
    }
