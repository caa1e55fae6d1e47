"""Many hpcjob processes at once against one ledger: 16 parallel submits on the real Slurm (and on
the embedded scheduler), with two `status` loops and a `logs --follow` running beside them.

Asserted: one ledger row per job, 16 distinct job ids, no "database is locked", no traceback,
every `status --json` output parses and every row in it is complete (no torn reads).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.support import UserSession, jobs_with_token, ledger_rows, wait_until

pytestmark = [pytest.mark.slurm]

# bench/faults.py raises it to find how many processes hold at once.
SUBMITS = int(os.environ.get("HPCJOB_TEST_CONCURRENCY", "16"))
ROW_KEYS = {"run_id", "job_id", "state", "workload", "run_dir", "submitted_at"}


@dataclass
class Outcome:
    """What every process printed; filled by the threads that ran them."""

    submits: list[tuple[int, str, str]] = field(default_factory=list)
    status_outputs: int = 0
    status_rounds: list[int] = field(default_factory=lambda: [0, 0])  # started, per loop
    torn: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock = threading.Lock()

    def problem(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


def _bad(stderr: str) -> str | None:
    for phrase in ("database is locked", "Traceback", "stayed locked"):
        if phrase in stderr:
            return phrase
    return None


def storm(user: UserSession, env: dict[str, str], submits: int = SUBMITS) -> Outcome:
    """`submits` submits at once, two status loops and one logs --follow, until all submits end."""
    outcome = Outcome()
    first = user.hpcjob("submit", "gpu-check", "--json", extra_env=env)
    assert first.exit_code == 0, first.stderr
    follow_ref = first.json()["run_id"]
    stop = threading.Event()

    def status_loop(index: int) -> None:
        while not stop.is_set():
            outcome.status_rounds[index] += 1
            proc = subprocess.run(
                user.argv("status", "--json", "--limit", "50", extra_env=env),
                capture_output=True, text=True, cwd=user.workdir, timeout=120,
            )  # fmt: skip
            if proc.returncode != 0 or _bad(proc.stderr):
                outcome.problem(f"status exited {proc.returncode}: {proc.stderr[-500:]}")
                continue
            try:
                rows = json.loads(proc.stdout)
            except ValueError:
                outcome.torn.append(proc.stdout[:200])
                continue
            with outcome.lock:
                outcome.status_outputs += 1
            for row in rows:
                missing = ROW_KEYS - row.keys()
                if missing or (
                    row["state"] not in ("SUBMITTING", "UNSUBMITTED") and not row["job_id"]
                ):
                    outcome.torn.append(json.dumps(row))

    def follow() -> None:
        proc = subprocess.run(
            user.argv("logs", follow_ref, "--follow", extra_env=env),
            capture_output=True, text=True, cwd=user.workdir, timeout=300,
        )  # fmt: skip
        if proc.returncode != 0 or _bad(proc.stderr):
            outcome.problem(f"logs --follow exited {proc.returncode}: {proc.stderr[-500:]}")

    def submit() -> None:
        proc = subprocess.run(
            user.argv("submit", "gpu-check", "--json", extra_env=env),
            capture_output=True, text=True, cwd=user.workdir, timeout=300,
        )  # fmt: skip
        with outcome.lock:
            outcome.submits.append((proc.returncode, proc.stdout, proc.stderr))

    def rounds_past(marks: list[int]) -> bool:
        return all(now > mark for now, mark in zip(outcome.status_rounds, marks, strict=True))

    side = [threading.Thread(target=status_loop, args=(i,)) for i in range(2)]
    side.append(threading.Thread(target=follow))
    for thread in side:
        thread.start()
    # The submits start while both status loops are at work, and the loops go on for a full
    # round more after the last submit ended (while the jobs run).
    wait_until(lambda: rounds_past([0, 0]), "both status loops at work", tick_s=0.05)
    workers = [threading.Thread(target=submit) for _ in range(submits)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    marks = list(outcome.status_rounds)
    wait_until(lambda: rounds_past([m + 1 for m in marks]), "a status round after the submits")
    stop.set()
    for thread in side:
        thread.join()
    for code, _out, err in outcome.submits:
        if code != 0 or _bad(err):
            outcome.problem(f"submit exited {code}: {err[-500:]}")
    return outcome


def check(user: UserSession, outcome: Outcome, submits: int = SUBMITS) -> list[dict[str, Any]]:
    assert outcome.errors == [], "\n".join(outcome.errors)
    assert outcome.torn == [], outcome.torn[:3]
    assert outcome.status_outputs >= 2
    submitted = [json.loads(out) for _code, out, _err in outcome.submits]
    job_ids = [s["job_id"] for s in submitted]
    assert len(set(job_ids)) == submits and all(job_ids)
    rows = ledger_rows(user.home)
    assert len(rows) == submits + 1  # the followed run and the storm's
    assert len({r["run_id"] for r in rows}) == len(rows)
    assert len({r["token"] for r in rows}) == len(rows)
    by_job = {r["job_id"]: r for r in rows}
    assert set(job_ids) <= set(by_job)
    return rows


def test_sixteen_parallel_submits_on_slurm(user: UserSession) -> None:
    user.template("gpu-check", "echo concurrent; sleep 1")
    outcome = storm(user, {})
    rows = check(user, outcome)
    for row in rows:  # and Slurm has exactly one job per run
        assert jobs_with_token(user, row["token"]) == {row["job_id"]}


def test_sixteen_parallel_submits_on_the_embedded_scheduler(user: UserSession) -> None:
    user.template("gpu-check", "echo concurrent")
    env = {"HPCJOB_PROFILE": "local", "HPCJOB_MAX_LOCAL_JOBS": "4"}
    outcome = storm(user, env)
    check(user, outcome)
    # One embedded-scheduler job per run, each with its own token.
    records = [json.loads(p.read_text()) for p in (user.home / "local" / "jobs").glob("*.json")]
    assert len({r["token"] for r in records}) == len(records) == SUBMITS + 1
