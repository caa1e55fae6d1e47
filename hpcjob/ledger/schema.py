"""The ledger's schema: named migrations, each applied with its record in one transaction.

Each migration says why the schema changed. Opening a ledger at the current schema takes no write
lock, so readers never wait for a writer; a ledger from a newer hpcjob is refused, never touched.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from hpcjob.clock import utc_now
from hpcjob.errors import HpcjobError


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    why: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial",
        "Runs with their spec, script and paths; state history; metrics; facts; artifacts.",
        """
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            token TEXT NOT NULL UNIQUE,
            job_id TEXT,
            profile TEXT NOT NULL,
            cluster TEXT NOT NULL,
            scheduler TEXT NOT NULL,
            workload TEXT NOT NULL,
            spec_json TEXT NOT NULL,
            script TEXT NOT NULL,
            script_hash TEXT NOT NULL,
            run_dir TEXT NOT NULL,
            output_path TEXT,
            state TEXT NOT NULL,
            exit_code INTEGER,
            signal INTEGER,
            node TEXT,
            reason TEXT,
            created_at TEXT NOT NULL,
            submitted_at TEXT,
            started_at TEXT,
            ended_at TEXT,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX runs_job ON runs (cluster, job_id);
        CREATE INDEX runs_state ON runs (profile, state);
        CREATE INDEX runs_created ON runs (created_at);
        CREATE TABLE state_history (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            state TEXT NOT NULL,
            at TEXT NOT NULL,
            source TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX state_history_run ON state_history (run_id, id);
        CREATE TABLE metrics (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            key TEXT NOT NULL,
            value REAL,
            at TEXT,
            PRIMARY KEY (run_id, step, key)
        );
        CREATE TABLE facts (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            value_json TEXT NOT NULL,
            PRIMARY KEY (run_id, key)
        );
        CREATE TABLE artifacts (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            path TEXT NOT NULL,
            size INTEGER,
            PRIMARY KEY (run_id, name)
        );
        """,
    ),
)

MIGRATIONS += (
    Migration(
        2,
        "array-tasks",
        "A Slurm job array is one submitted run (the parent, job id `123`) whose tasks are runs "
        "of their own (`123_4`), so each task has its state, output, metrics and history.",
        """
        ALTER TABLE runs ADD COLUMN parent_run_id TEXT REFERENCES runs (run_id);
        ALTER TABLE runs ADD COLUMN array_task INTEGER;
        CREATE INDEX runs_parent ON runs (parent_run_id)
        """,
    ),
)
MIGRATIONS += (
    Migration(
        3,
        "attempts",
        "`submit --auto-requeue N` resubmits a run that hit its time limit (or stopped with a "
        "checkpoint, exit 75) up to N times. It stays ONE run; each scheduler job it went "
        "through is an attempt with its own job id, state and times, so nothing is forgotten.",
        """
        ALTER TABLE runs ADD COLUMN max_requeues INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE attempts (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            attempt INTEGER NOT NULL,
            job_id TEXT,
            token TEXT,
            state TEXT NOT NULL,
            exit_code INTEGER,
            started_at TEXT,
            ended_at TEXT,
            reason TEXT,
            PRIMARY KEY (run_id, attempt)
        )
        """,
    ),
)

MIGRATIONS += (
    Migration(
        4,
        "cluster-names",
        "Runs were keyed by the address hpcjob reached Slurm at (`slurm:int5`, the login node's "
        "hostname), so a run submitted from one login node was never polled from another of the "
        "same cluster. Slurm's ClusterName is the same from every login node: each address's "
        "name is asked once and kept here, and runs move to `slurm:<ClusterName>` when it is "
        "learned (ledger/store.py `learn_cluster`).",
        """
        CREATE TABLE cluster_names (
            address TEXT PRIMARY KEY,
            cluster TEXT NOT NULL,
            learned_at TEXT NOT NULL
        )
        """,
    ),
)

MIGRATIONS += (
    Migration(
        5,
        "indexes-for-a-growing-ledger",
        "`status`, `runs` and `show last` read every run of the ledger (a full scan and a sort of "
        "100,000 runs: 0.5 s), so they slowed down as runs piled up. Each of their lookups now "
        "has an index: `runs` walks `runs_listed` in its own order and stops after the rows it "
        "shows, which needs the time an array's tasks sort by (their array's creation) in a "
        "column of its own, `listed_at`; `runs --state X` walks the runs of that state in the "
        "same order (runs_state_listed); the newest run, a job id, "
        "the unfinished runs, the runs awaiting their accounting record and those "
        "`--auto-requeue` may resubmit are each found by an index instead of reading all runs "
        "of the profile.",
        """
        ALTER TABLE runs ADD COLUMN listed_at TEXT;
        UPDATE runs SET listed_at = COALESCE(
            (SELECT p.created_at FROM runs p WHERE p.run_id = runs.parent_run_id), created_at);
        CREATE INDEX runs_listed ON runs
            (profile, listed_at, COALESCE(parent_run_id, run_id), COALESCE(array_task, -1) DESC);
        CREATE INDEX runs_listed_all ON runs
            (listed_at, COALESCE(parent_run_id, run_id), COALESCE(array_task, -1) DESC);
        CREATE INDEX runs_state_listed ON runs (profile, state, listed_at,
            COALESCE(parent_run_id, run_id), COALESCE(array_task, -1) DESC);
        CREATE INDEX runs_top ON runs (parent_run_id, created_at);
        CREATE INDEX runs_job_id ON runs (job_id);
        CREATE INDEX runs_ended ON runs (profile, COALESCE(ended_at, updated_at));
        CREATE INDEX runs_requeue ON runs (profile, state) WHERE max_requeues > 0
        """,
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


def schema_version(db: sqlite3.Connection) -> int:
    row = db.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
    ).fetchone()
    if row is None:
        return 0
    return int(db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0)


def migrate(db: sqlite3.Connection, path: str, upto: int | None = None) -> None:
    """Apply each pending migration together with its record, in one transaction each."""
    if schema_version(db) == SCHEMA_VERSION and upto is None:
        return  # the common case takes no write lock, so opening never waits on a writer
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise HpcjobError(
            f"The ledger {path} was written by a newer hpcjob (schema {current}, "
            f"this one knows {SCHEMA_VERSION}).",
            hint="Upgrade hpcjob: pip install --upgrade hpcjob",
        )
    for migration in MIGRATIONS:
        if migration.version <= current or (upto is not None and migration.version > upto):
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration.sql.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (migration.version, migration.name, utc_now()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
