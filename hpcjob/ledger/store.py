"""Every SQL statement hpcjob runs on the ledger: `Ledger`, one SQLite file per invocation.

WAL mode so readers never wait for a writer; every write is one `BEGIN IMMEDIATE` transaction;
a conditional write (a claim) changes the run only while it is still as the caller saw it, so two
hpcjob processes never both act on one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcjob.clock import utc_now
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobInfo, JobState
from hpcjob.ledger import schema
from hpcjob.ledger.records import Attempt, NewRun, Run, StateChange, fresh_run_id

if TYPE_CHECKING:
    from hpcjob.joblog import Metric  # loaded where metrics are read (start-up)


class Ledger:
    """One SQLite database file; open one per invocation."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            _create_private(Path(self.path))
        try:
            self.db = sqlite3.connect(
                self.path, isolation_level=None, timeout=30.0, check_same_thread=False
            )
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout = 30000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self.migrate()
        except sqlite3.DatabaseError as exc:
            raise ledger_error(self.path, exc) from exc

    def close(self) -> None:
        self.db.close()

    # -- schema -------------------------------------------------------------------------------

    def schema_version(self) -> int:
        return schema.schema_version(self.db)

    def migrate(self, upto: int | None = None) -> None:
        schema.migrate(self.db, self.path, upto)

    def _write_sql(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._transaction([(sql, params)])

    def _transaction(
        self, statements: Iterable[tuple[str, Sequence[Any]]], *, guarded: bool = False
    ) -> bool:
        """The statements in one transaction. `guarded`: the others run only if the first changed
        a row; says whether it did (always True when not guarded)."""
        matched = True
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for n, (sql, params) in enumerate(statements):
                    if self.db.execute(sql, params).rowcount < 1 and guarded and n == 0:
                        matched = False
                        break
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise ledger_error(self.path, exc) from exc
        return matched

    # -- runs ---------------------------------------------------------------------------------

    def has_run_id(self, run_id: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None
        )

    def fresh_run_id(self) -> str:
        """A run id no run of this ledger has (a new run's directory is named after it)."""
        return fresh_run_id(self.has_run_id)

    def create_run(self, new: NewRun) -> Run:
        """Record a run as SUBMITTING, before the scheduler sees it. Its id comes from
        `fresh_run_id`; should another process have taken it since, nothing is recorded."""
        now = utc_now()
        try:
            self._insert_run(new, now)
        except sqlite3.IntegrityError as exc:
            if not self.has_run_id(new.run_id):
                raise
            raise HpcjobError(
                f"Another run took the run id {new.run_id} a moment ago; nothing was submitted.",
                hint="Run the same command again: it picks a new id.",
            ) from exc
        return self.get_run(new.run_id)

    def _insert_run(self, new: NewRun, now: str) -> None:
        self._transaction(
            [
                (
                    "INSERT INTO runs (run_id, token, profile, cluster, scheduler, workload, "
                    "spec_json, script, script_hash, run_dir, state, created_at, updated_at, "
                    "listed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new.run_id,
                        new.token,
                        new.profile,
                        new.cluster,
                        new.scheduler,
                        new.workload,
                        json.dumps(new.spec, sort_keys=True),
                        new.script,
                        new.script_hash,
                        new.run_dir,
                        JobState.SUBMITTING.value,
                        now,
                        now,
                        now,
                    ),
                ),
                _history(new.run_id, JobState.SUBMITTING, now, "hpcjob", None),
            ]
        )

    def set_submitted(self, run_id: str, job_id: str, output_path: str) -> Run:
        now = utc_now()
        self._transaction(
            [
                (
                    "UPDATE runs SET job_id = ?, output_path = ?, state = ?, submitted_at = ?, "
                    "updated_at = ? WHERE run_id = ?",
                    (job_id, output_path, JobState.PENDING.value, now, now, run_id),
                ),
                _history(run_id, JobState.PENDING, now, "scheduler", f"job {job_id}"),
            ]
        )
        return self.get_run(run_id)

    def complete_submission(
        self, run_id: str, job_id: str, output_path: str, source: str = "scheduler"
    ) -> Run:
        """Store the job id of a run that has none yet (exactly once: a second process that
        found the same job by its token changes nothing)."""
        now = utc_now()
        self._guarded(
            "UPDATE runs SET job_id = ?, output_path = ?, state = ?, submitted_at = ?, "
            "reason = NULL, ended_at = NULL, updated_at = ? WHERE run_id = ? AND job_id IS NULL",
            (job_id, output_path, JobState.PENDING.value, now, now, run_id),
            _history(run_id, JobState.PENDING, now, source, f"job {job_id}"),
        )
        return self.get_run(run_id)

    def note_submitting(self, run_id: str, reason: str) -> None:
        """Why a SUBMITTING run is still SUBMITTING (an sbatch whose outcome is unknown)."""
        self._write_sql(
            "UPDATE runs SET reason = ?, updated_at = ? WHERE run_id = ? AND state = ?",
            (reason, utc_now(), run_id, JobState.SUBMITTING.value),
        )

    def claim_for_resubmit(self, run_id: str) -> bool:
        """UNSUBMITTED (or stranded SUBMITTING) → SUBMITTING again, unless it got a job id."""
        now = utc_now()
        return self._guarded(
            "UPDATE runs SET state = ?, reason = NULL, ended_at = NULL, updated_at = ? "
            "WHERE run_id = ? AND job_id IS NULL AND state IN (?, ?)",
            (
                JobState.SUBMITTING.value,
                now,
                run_id,
                JobState.UNSUBMITTED.value,
                JobState.SUBMITTING.value,
            ),
            _history(run_id, JobState.SUBMITTING, now, "hpcjob", "resubmitted"),
        )

    def claim_requeue(self, run: Run, attempt: int, token: str, reason: str) -> bool:
        """An ended job → attempt `attempt`, and its run SUBMITTING again with `token`, in one
        transaction; False if the run no longer holds that job (another process claimed it)."""
        now = utc_now()
        return self._guarded(
            "UPDATE runs SET job_id = NULL, token = ?, state = ?, exit_code = NULL, "
            "signal = NULL, reason = ?, started_at = NULL, ended_at = NULL, updated_at = ? "
            "WHERE run_id = ? AND job_id IS ? AND state = ?",
            (
                token,
                JobState.SUBMITTING.value,
                reason,
                now,
                run.run_id,
                run.job_id,
                run.state.value,
            ),
            _history(run.run_id, JobState.SUBMITTING, now, "auto-requeue", reason),
            (
                "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    attempt,
                    run.job_id,
                    run.token,
                    run.state.value,
                    run.exit_code,
                    run.started_at,
                    run.ended_at,
                    run.reason,
                ),
            ),
            # The accounting facts (sacct's, the embedded scheduler's) were the old job's; the
            # new job's come with its own record. The old job's time is in its attempt row.
            (
                "DELETE FROM facts WHERE run_id = ? AND (key LIKE 'sacct\\_%' ESCAPE '\\' "
                "OR key LIKE 'local\\_%' ESCAPE '\\')",
                (run.run_id,),
            ),
        )

    def attempts(self, run_id: str) -> list[Attempt]:
        """The run's ended attempts, oldest first (the current job is not among them)."""
        rows = self.db.execute(
            "SELECT attempt, job_id, token, state, exit_code, started_at, ended_at, reason "
            "FROM attempts WHERE run_id = ? ORDER BY attempt",
            (run_id,),
        ).fetchall()
        return [Attempt(*tuple(r)) for r in rows]

    def requeue_due(self, profile: str, checkpoint_exit: int) -> list[Run]:
        """Runs of the profile that ended TIMEOUT (or FAILED with `checkpoint_exit`) with
        requeues left: what `--auto-requeue` resubmits."""
        timeout, failed = JobState.TIMEOUT.value, JobState.FAILED.value
        rows = self.db.execute(
            "SELECT * FROM runs WHERE profile = ? AND max_requeues > 0 AND job_id IS NOT NULL "
            "AND state IN (?, ?) AND (state = ? OR exit_code = ?) "  # runs_requeue finds them
            "AND max_requeues > (SELECT COUNT(*) FROM attempts a WHERE a.run_id = runs.run_id) "
            "ORDER BY created_at",
            (profile, timeout, failed, timeout, checkpoint_exit),
        ).fetchall()
        return [_run(r) for r in rows]

    def set_max_requeues(self, run_id: str, limit: int) -> None:
        """How many times `--auto-requeue` may resubmit the run."""
        self._write_sql("UPDATE runs SET max_requeues = ? WHERE run_id = ?", (int(limit), run_id))

    def _guarded(
        self, update: str, params: Sequence[Any], *then: tuple[str, Sequence[Any]]
    ) -> bool:
        """One transaction: a conditional UPDATE, then `then` (its history row …) only if it
        changed a row; says whether it did."""
        return self._transaction([(update, params), *then], guarded=True)

    def create_array_tasks(
        self, parent: Run, tasks: Sequence[int], specs: Mapping[int, dict[str, Any]] | None = None
    ) -> list[Run]:
        """One run per task of a submitted array, sharing the parent's run directory and its
        spec (or the task's own from `specs`: a sweep's tasks each have their arguments)."""
        assert parent.job_id is not None
        now = utc_now()
        ids: list[str] = []

        def statements() -> Iterator[tuple[str, Sequence[Any]]]:
            # Run inside the transaction (BEGIN IMMEDIATE holds the write lock): each id is
            # checked against the ledger as it is then, this array's earlier tasks included.
            for task in tasks:
                yield from self._task_rows(parent, task, specs, now, ids)

        self._transaction(statements())
        return [self.get_run(run_id) for run_id in ids]

    def _task_rows(
        self,
        parent: Run,
        task: int,
        specs: Mapping[int, dict[str, Any]] | None,
        now: str,
        ids: list[str],
    ) -> Iterator[tuple[str, Sequence[Any]]]:
        run_id = self.fresh_run_id()
        ids.append(run_id)
        job_id = f"{parent.job_id}_{task}"
        yield from [
            (
                "INSERT INTO runs (run_id, token, job_id, profile, cluster, scheduler, "
                "workload, spec_json, script, script_hash, run_dir, output_path, state, "
                "created_at, submitted_at, updated_at, parent_run_id, array_task, listed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    f"{parent.token}.{task}",
                    job_id,
                    parent.profile,
                    parent.cluster,
                    parent.scheduler,
                    parent.workload,
                    json.dumps((specs or {}).get(task, parent.spec), sort_keys=True),
                    parent.script,
                    parent.script_hash,
                    parent.run_dir,
                    f"{parent.run_dir}/slurm-{job_id}.out",
                    JobState.PENDING.value,
                    now,
                    parent.submitted_at,
                    now,
                    parent.run_id,
                    task,
                    parent.created_at,  # listed with its array (migration 5)
                ),
            ),
            _history(run_id, JobState.PENDING, now, "scheduler", f"task {task} of {parent.job_id}"),
        ]

    def sweep_runs(self, sweep_id: str) -> list[Run]:
        """The arrays of one sweep (its first and each resubmission), oldest first."""
        rows = self.db.execute(
            "SELECT * FROM runs WHERE parent_run_id IS NULL "
            "AND json_extract(spec_json, '$.sweep.sweep_id') = ? ORDER BY created_at, rowid",
            (sweep_id,),
        ).fetchall()
        return [_run(r) for r in rows]

    def tasks(self, parent_run_id: str) -> list[Run]:
        rows = self.db.execute(
            "SELECT * FROM runs WHERE parent_run_id = ? ORDER BY array_task", (parent_run_id,)
        ).fetchall()
        return [_run(r) for r in rows]

    def mark_unsubmitted(
        self, run_id: str, reason: str, *, only_if_submitting: bool = False
    ) -> bool:
        """A submission that never reached the scheduler: final, and safe to submit again.
        `only_if_submitting`: only a run still SUBMITTING without a job id (a recovery that
        races with another process finding the job must not undo it)."""
        now = utc_now()
        guard = " AND state = ? AND job_id IS NULL" if only_if_submitting else ""
        extra = (JobState.SUBMITTING.value,) if only_if_submitting else ()
        return self._guarded(
            "UPDATE runs SET state = ?, reason = ?, ended_at = ?, updated_at = ? "
            "WHERE run_id = ?" + guard,
            (JobState.UNSUBMITTED.value, reason, now, now, run_id, *extra),
            _history(run_id, JobState.UNSUBMITTED, now, "hpcjob", reason),
        )

    def record_info(self, run: Run, info: JobInfo, source: str) -> Run:
        """Store what the scheduler says of a run; a state change also enters the history."""
        now = utc_now()
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                "UPDATE runs SET state = ?, exit_code = COALESCE(?, exit_code), "
                "signal = COALESCE(?, signal), node = COALESCE(?, node), reason = ?, "
                "started_at = COALESCE(?, started_at), ended_at = COALESCE(?, ended_at), "
                "updated_at = ? WHERE run_id = ?",
                (
                    info.state.value,
                    info.exit_code,
                    info.signal,
                    info.node,
                    info.reason,
                    info.started_at,
                    info.ended_at,
                    now,
                    run.run_id,
                ),
            )
        ]
        if info.state != run.state:
            statements.append(_history(run.run_id, info.state, now, source, info.reason))
        self._transaction(statements)
        return self.get_run(run.run_id)

    def get_run(self, run_id: str) -> Run:
        row = self.db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise HpcjobError(f"No run {run_id!r} in the ledger.")
        return _run(row)

    def resolve(self, ref: str, cluster: str | None = None) -> Run:
        """A run by run id, job id (newest first, the current cluster preferred) or `last`."""
        ref = ref.strip()
        if ref == "last":
            row = self.db.execute(
                "SELECT * FROM runs WHERE parent_run_id IS NULL "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1"
            ).fetchone()
            if row is None:
                raise HpcjobError(
                    "The ledger has no runs yet.",
                    hint="Submit one: hpcjob submit gpu-check --wait",
                )
            return _run(row)
        row = self.db.execute("SELECT * FROM runs WHERE run_id = ?", (ref,)).fetchone()
        if row is None:
            row = self.db.execute(
                "SELECT * FROM runs WHERE job_id = ? "
                "ORDER BY (cluster = ?) DESC, created_at DESC, rowid DESC LIMIT 1",
                (ref, cluster or ""),
            ).fetchone()
        if row is None and len(ref) >= 2 and ref.startswith("r"):
            # Newest first; one more than is shown, to tell "ambiguous" and count the rest.
            rows = self.db.execute(
                "SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\' "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (_like_prefix(ref), _AMBIGUOUS_SHOWN + 1),
            ).fetchall()
            if len(rows) > 1:
                raise self._ambiguous(ref, [_run(r) for r in rows])
            row = rows[0] if rows else None
        if row is None:
            raise HpcjobError(
                f"No run or job {ref!r} in the ledger.",
                hint="`hpcjob runs` lists them; use a job id, a run id or `last`.",
            )
        return _run(row)

    def _ambiguous(self, ref: str, shown: list[Run]) -> HpcjobError:
        """The error for a prefix of several run ids: the newest few of them, and how many more."""
        total = self.db.execute(
            "SELECT COUNT(*) FROM runs WHERE run_id LIKE ? ESCAPE '\\'", (_like_prefix(ref),)
        ).fetchone()[0]
        rows = [
            (
                run.run_id,
                f"job {run.job_id}" if run.job_id else "no job yet",
                run.workload,
                run.state.value,
                f"created {run.created_at}",
            )
            for run in shown[:_AMBIGUOUS_SHOWN]
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  " + "  ".join([*(row[i].ljust(widths[i]) for i in range(4)), row[4]]) for row in rows
        ]
        if total > _AMBIGUOUS_SHOWN:
            lines.append(f"  … {total - _AMBIGUOUS_SHOWN} more")
        return HpcjobError(
            f"{ref!r} is ambiguous: it starts the run ids of {total} runs (newest first):\n"
            + "\n".join(lines),
            hint="Give more of the run id, or the job id (`hpcjob runs` lists them).",
        )

    # -- clusters -----------------------------------------------------------------------------

    def known_cluster(self, address: str) -> str | None:
        """The key of the cluster an address reaches, once learned (`learn_cluster`)."""
        row = self.db.execute(
            "SELECT cluster FROM cluster_names WHERE address = ?", (address,)
        ).fetchone()
        return None if row is None else str(row[0])

    def learn_cluster(self, address: str, cluster: str, hostless_profile: str | None) -> None:
        """Remember that `address` ("slurm:int5") reaches `cluster` ("slurm:snellius") and move
        the runs recorded under the address (and its setup-env runs, `login:<address>`) to the
        cluster's key, all in one transaction. `hostless_profile`: a profile without a host (the
        Slurm of the machine hpcjob runs on, its ledger in a home the login nodes share) — its
        runs under other login nodes' addresses move too, unless an address or key is known to
        be another cluster's (docs/decisions.md says why)."""
        scheme = address.split(":", 1)[0] + ":"
        statements: list[tuple[str, Sequence[Any]]] = [
            ("INSERT OR REPLACE INTO cluster_names VALUES (?, ?, ?)", (address, cluster, utc_now()))
        ]
        for prefix in ("", "login:"):
            key = prefix + cluster
            statements.append(
                ("UPDATE runs SET cluster = ? WHERE cluster = ?", (key, prefix + address))
            )
            if hostless_profile is not None:
                statements.append(
                    (
                        "UPDATE runs SET cluster = ? WHERE profile = ? AND cluster != ? "
                        "AND cluster LIKE ? ESCAPE '\\' AND substr(cluster, ?) NOT IN "
                        "(SELECT cluster FROM cluster_names UNION SELECT address FROM "
                        "cluster_names WHERE cluster != ?)",
                        (
                            key,
                            hostless_profile,
                            key,
                            _like_prefix(prefix + scheme),
                            len(prefix) + 1,
                            cluster,
                        ),
                    )
                )
        self._transaction(statements)

    def unfinished(self, profile: str) -> list[Run]:
        """Runs of a profile whose state may still change."""
        # `IN` the states that may change, not `NOT IN` the final ones: the index on (profile,
        # state) then finds them without reading the profile's finished runs.
        active = [s.value for s in JobState if not s.is_final]
        marks = ",".join("?" * len(active))
        rows = self.db.execute(
            f"SELECT * FROM runs WHERE profile = ? AND state IN ({marks}) ORDER BY created_at",
            (profile, *active),
        ).fetchall()
        return [_run(r) for r in rows]

    def awaiting_accounting(self, profile: str, within_s: int = 3600) -> list[Run]:
        """Slurm runs that ended in the last hour before sacct had their record."""
        since = datetime.fromtimestamp(time.time() - within_s, timezone.utc)
        rows = self.db.execute(
            "SELECT * FROM runs WHERE profile = ? AND scheduler = 'slurm' "
            "AND job_id IS NOT NULL AND COALESCE(ended_at, updated_at) >= ? "
            "AND NOT (parent_run_id IS NULL AND "
            "json_extract(spec_json, '$.resources.array') IS NOT NULL) AND NOT EXISTS "
            "(SELECT 1 FROM facts f WHERE f.run_id = runs.run_id AND f.key = 'sacct_elapsed_s')",
            (profile, since.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ).fetchall()
        return [r for r in map(_run, rows) if r.state.is_final]

    def list_runs(
        self,
        *,
        workload: str | None = None,
        state: str | None = None,
        profile: str | None = None,
        since: str | None = None,
        limit: int | None = 50,
    ) -> list[Run]:
        clauses, params = [], []
        for column, value in (("workload", workload), ("state", state), ("profile", profile)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("(created_at >= ? OR ended_at IS NULL OR ended_at >= ?)")
            params += [since, since]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # Newest first; an array's tasks right after it, in task order: the order of the index
        # runs_listed (runs_listed_all), walked backwards until the LIMIT (migration 5).
        sql = (
            f"SELECT * FROM runs {where} ORDER BY listed_at DESC, "
            "COALESCE(parent_run_id, run_id) DESC, COALESCE(array_task, -1)"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_run(r) for r in self.db.execute(sql, params).fetchall()]

    def history(self, run_id: str) -> list[StateChange]:
        rows = self.db.execute(
            "SELECT state, at, source, detail FROM state_history WHERE run_id = ? ORDER BY id",
            (run_id,),
        ).fetchall()
        return [StateChange(JobState.parse(r[0]), r[1], r[2], r[3]) for r in rows]

    # -- metrics, facts, artifacts ------------------------------------------------------------

    def add_metrics(self, run_id: str, metrics: Iterable[Metric]) -> int:
        rows = [(run_id, m.step, m.key, m.value, m.at) for m in metrics]
        if rows:
            self._transaction(
                ("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)", row) for row in rows
            )
        return len(rows)

    def metrics(self, run_id: str) -> list[Metric]:
        from hpcjob.joblog import Metric

        rows = self.db.execute(
            "SELECT step, key, value, at FROM metrics WHERE run_id = ? ORDER BY step, key",
            (run_id,),
        ).fetchall()
        return [Metric(r[0], r[1], r[2], r[3]) for r in rows]

    def latest_metrics(self, run_ids: Sequence[str]) -> dict[str, list[Metric]]:
        """Each run's metrics at its highest step."""
        if not run_ids:
            return {}
        from hpcjob.joblog import Metric

        marks = ",".join("?" * len(run_ids))
        rows = self.db.execute(
            f"SELECT m.run_id, m.step, m.key, m.value, m.at FROM metrics m "
            f"JOIN (SELECT run_id, MAX(step) AS step FROM metrics WHERE run_id IN ({marks}) "
            f"GROUP BY run_id) last ON m.run_id = last.run_id AND m.step = last.step "
            f"ORDER BY m.key",
            list(run_ids),
        ).fetchall()
        found: dict[str, list[Metric]] = {}
        for r in rows:
            found.setdefault(r[0], []).append(Metric(r[1], r[2], r[3], r[4]))
        return found

    def note_failure(self, run_id: str, reason: str) -> None:
        """Why a run failed, as its reason, where the scheduler gave none."""
        self._transaction(
            [
                (
                    "UPDATE runs SET reason = ?, updated_at = ? "
                    "WHERE run_id = ? AND (reason IS NULL OR reason = '')",
                    (reason, utc_now(), run_id),
                )
            ]
        )

    def set_facts(self, run_id: str, facts: dict[str, Any]) -> None:
        if facts:
            self._transaction(
                ("INSERT OR REPLACE INTO facts VALUES (?, ?, ?)", (run_id, k, json.dumps(v)))
                for k, v in facts.items()
            )

    def facts(self, run_id: str) -> dict[str, Any]:
        rows = self.db.execute(
            "SELECT key, value_json FROM facts WHERE run_id = ? ORDER BY key", (run_id,)
        ).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def set_artifacts(self, run_id: str, artifacts: Iterable[tuple[str, str, int | None]]) -> None:
        rows = list(artifacts)
        if rows:
            self._transaction(
                ("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?)", (run_id, *a)) for a in rows
            )

    def artifacts(self, run_id: str) -> list[tuple[str, str, int | None]]:
        rows = self.db.execute(
            "SELECT name, path, size FROM artifacts WHERE run_id = ? ORDER BY name", (run_id,)
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]


def _history(
    run_id: str, state: JobState, at: str, source: str, detail: str | None
) -> tuple[str, Sequence[Any]]:
    return (
        "INSERT INTO state_history (run_id, state, at, source, detail) VALUES (?, ?, ?, ?, ?)",
        (run_id, state.value, at, source, detail),
    )


# An ambiguous run-id prefix lists at most this many of the runs it matches.
_AMBIGUOUS_SHOWN = 10


def _like_prefix(ref: str) -> str:
    """A LIKE pattern for the run ids that start with `ref` (its `%`, `_` and `\\` literal)."""
    escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _run(row: sqlite3.Row) -> Run:
    data = dict(row)
    data.pop("listed_at", None)  # a sort key, not part of the run
    data["spec"] = json.loads(data.pop("spec_json"))
    data["state"] = JobState.parse(data["state"])
    return Run(**data)


def _create_private(path: Path) -> None:
    """The ledger and its folder are private to the user (0700/0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another hpcjob process created it first
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def ledger_error(path: str, exc: sqlite3.Error) -> HpcjobError:
    """The user-facing error for a sqlite3 failure on the ledger at `path`."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return HpcjobError(
            f"The ledger {path} stayed locked by another process for 30 s ({text}).",
            hint="Another hpcjob (or a program reading the file) holds it; try again shortly.",
        )
    if "not a database" in text or "malformed" in text or "disk image" in text:
        return HpcjobError(
            f"The ledger {path} is damaged ({text}). hpcjob has not changed it.",
            hint="Keep a copy of the file, then restore a backup or move it aside to start anew.",
        )
    return HpcjobError(f"The ledger {path} cannot be used: {text}.")
