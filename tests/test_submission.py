"""Exactly-once submission on recorded Slurm outputs: completing a run a crash left SUBMITTING,
resubmitting one that never arrived, and handing a run over to sbatch.

The ledger is a real SQLite file; a run's age is set by back-dating its `updated_at`, never by
waiting; a live submitter is a `SubmitterLock` held by the test. Job 100 carries the token
hpcjob-feedc0ffee in the recorded `squeue_all` and `sacct_final`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hpcjob.config import Profile, Settings
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context
from hpcjob.run.lock import SubmitterLock
from hpcjob.run.recovery import GRACE_S, SETTLE_S, complete_submission
from hpcjob.run.submit import AMBIGUOUS, hand_over, resubmit
from hpcjob.scheduler.slurm import SlurmScheduler
from tests.helpers import ReplayShell, new_run, recorded

TOKEN = "hpcjob-feedc0ffee"  # job 100's comment in squeue_all and sacct_final
NO_JOBS = {"squeue": [recorded("squeue_unknown_jobs")], "sacct": [recorded("sacct_unknown_job")]}
NEVER_ARRIVED = "the submission never reached the scheduler (no job carries its token)"


def context(tmp_path: Path, shell: ReplayShell) -> Context:
    profile = Profile("slurm", {"scheduler": "slurm", "remote_root": "/runs"}, {})
    ctx = Context(Settings(tmp_path), profile)  # the ledger: tmp_path / "ledger.db"
    ctx._scheduler = SlurmScheduler(shell, "slurm:test")
    return ctx


def backdate(ctx: Context, run_id: str, age_s: float) -> None:
    then = datetime.now(timezone.utc) - timedelta(seconds=age_s)
    ctx.ledger.db.execute(
        "UPDATE runs SET updated_at = ? WHERE run_id = ?",
        (then.strftime("%Y-%m-%dT%H:%M:%SZ"), run_id),
    )


def stranded(ctx: Context, age_s: float = 0, reason: str | None = None) -> Run:
    """Run r1 as a crash left it: SUBMITTING, no job id, last changed `age_s` ago."""
    ctx.ledger.create_run(
        new_run(profile="slurm", scheduler="slurm", run_id="r1", token=TOKEN, run_dir="/runs/r1")
    )
    if reason is not None:
        ctx.ledger.note_submitting("r1", reason)
    backdate(ctx, "r1", age_s)
    return ctx.ledger.get_run("r1")


def dead_submitters_lock(home: Path, run_id: str = "r1") -> None:
    """The lock file a submitter that died leaves behind (nobody holds it)."""
    (home / "submitting").mkdir(exist_ok=True)
    (home / "submitting" / f"{run_id}.lock").write_text("4242\n")


def history(ctx: Context, run_id: str = "r1") -> list[tuple[str, str]]:
    return [(h.state.value, h.source) for h in ctx.ledger.history(run_id)]


# -- complete_submission: what a refresh does with a run left SUBMITTING ---------------------


def test_found_by_token_in_squeue_the_record_is_completed(tmp_path: Path) -> None:
    shell = ReplayShell({"squeue": [recorded("squeue_all")]})
    ctx = context(tmp_path, shell)
    run = complete_submission(ctx, stranded(ctx))
    assert (run.state, run.job_id) == (JobState.PENDING, "100")
    assert run.output_path == "/runs/r1/slurm-100.out"
    assert shell.commands() == ["squeue"]  # found at once: no sacct, and never an sbatch
    assert history(ctx)[-1] == ("PENDING", "found by token")
    assert any("found it by its token as job 100" in note for note in ctx.notes)


def test_found_by_token_in_sacct_once_squeue_forgot_it(tmp_path: Path) -> None:
    shell = ReplayShell(
        {"squeue": [recorded("squeue_unknown_jobs")], "sacct": [recorded("sacct_final")]}
    )
    ctx = context(tmp_path, shell)
    run = complete_submission(ctx, stranded(ctx, age_s=GRACE_S + 60))
    assert (run.state, run.job_id) == (JobState.PENDING, "100")
    assert shell.commands() == ["squeue", "sacct"]


def test_a_live_submitter_is_left_alone_however_old_the_run(tmp_path: Path) -> None:
    shell = ReplayShell(NO_JOBS)
    ctx = context(tmp_path, shell)
    run = stranded(ctx, age_s=GRACE_S + 60)
    with SubmitterLock(ctx.settings.home, "r1"):
        after = complete_submission(ctx, run)
    assert (after.state, after.job_id, after.reason) == (JobState.SUBMITTING, None, None)
    assert shell.calls == []  # not even looked up: its own process is at it
    assert ctx.notes == []


@pytest.mark.parametrize(
    ("submitter", "reason", "age_s", "state"),
    [
        # The submitter died (its lock is left, unheld): concluded after SETTLE_S.
        ("dead", None, 0, JobState.SUBMITTING),
        ("dead", None, SETTLE_S + 60, JobState.UNSUBMITTED),
        # No lock file to ask (a ledger from another machine): only after GRACE_S.
        ("unknown", None, SETTLE_S + 60, JobState.SUBMITTING),
        ("unknown", None, GRACE_S + 60, JobState.UNSUBMITTED),
        # An sbatch whose outcome is unknown may still arrive: GRACE_S, not SETTLE_S.
        ("dead", f"{AMBIGUOUS}: socket timed out", SETTLE_S + 60, JobState.SUBMITTING),
        ("dead", f"{AMBIGUOUS}: socket timed out", GRACE_S + 60, JobState.UNSUBMITTED),
    ],
)
def test_not_found_is_concluded_only_once_nothing_can_still_arrive(
    tmp_path: Path, submitter: str, reason: str | None, age_s: float, state: JobState
) -> None:
    shell = ReplayShell(NO_JOBS)
    ctx = context(tmp_path, shell)
    if submitter == "dead":
        dead_submitters_lock(ctx.settings.home)
    after = complete_submission(ctx, stranded(ctx, age_s=age_s, reason=reason))
    assert shell.commands() == ["squeue", "sacct"]  # looked for by token first
    assert after.state == state and after.job_id is None
    if state == JobState.UNSUBMITTED:
        assert after.reason == NEVER_ARRIVED and after.ended_at
        assert history(ctx)[-1] == ("UNSUBMITTED", "hpcjob")
        assert any("`hpcjob resubmit r1` submits it" in note for note in ctx.notes)
    else:
        assert after.reason == reason and ctx.notes == []


def test_a_lookup_that_fails_changes_nothing_and_says_so(tmp_path: Path) -> None:
    shell = ReplayShell({"squeue": [recorded("squeue_ctld_down")]})
    ctx = context(tmp_path, shell)
    dead_submitters_lock(ctx.settings.home)
    after = complete_submission(ctx, stranded(ctx, age_s=GRACE_S + 60))
    assert (after.state, after.job_id) == (JobState.SUBMITTING, None)  # no guess either way
    [note] = ctx.notes
    assert "was left SUBMITTING and could not be looked up by its token" in note
    assert "controller" in note and "asks again on the next refresh" in note


@pytest.mark.parametrize(
    ("output", "job_id"), [("slurm-4321.out", "4321"), ("slurm-4321_2.out", "4321")]
)
def test_without_accounting_the_job_id_comes_from_its_output_file(
    tmp_path: Path, output: str, job_id: str
) -> None:
    """squeue has forgotten the job and sacct is down; the job that started left its output."""
    shell = ReplayShell(
        {"squeue": [recorded("squeue_unknown_jobs")], "sacct": [recorded("sacct_dbd_down")]}
    )
    shell.files[f"/runs/r1/{output}"] = b"== hpcjob run r1 ==\n"
    ctx = context(tmp_path, shell)
    after = complete_submission(ctx, stranded(ctx, age_s=GRACE_S + 60))
    assert (after.state, after.job_id) == (JobState.PENDING, job_id)
    assert any(f"found it by its token as job {job_id}" in note for note in ctx.notes)


# -- resubmit ---------------------------------------------------------------------------------


def unsubmitted(ctx: Context) -> Run:
    stranded(ctx)
    ctx.ledger.mark_unsubmitted("r1", NEVER_ARRIVED)
    return ctx.ledger.get_run("r1")


def test_resubmit_finds_the_job_by_token_and_submits_nothing(tmp_path: Path) -> None:
    shell = ReplayShell({"squeue": [recorded("squeue_all")]})
    ctx = context(tmp_path, shell)
    unsubmitted(ctx)
    run, submitted_now = resubmit(ctx, "r1")
    assert not submitted_now
    assert (run.state, run.job_id) == (JobState.PENDING, "100")
    assert "sbatch" not in shell.commands()


def test_resubmit_claims_restages_and_calls_sbatch_once(tmp_path: Path) -> None:
    shell = ReplayShell({**NO_JOBS, "sbatch": [recorded("sbatch_comment")]})
    ctx = context(tmp_path, shell)
    before = unsubmitted(ctx)
    run, submitted_now = resubmit(ctx, "r1")
    assert submitted_now and (run.state, run.job_id) == (JobState.PENDING, "87")
    assert run.token == TOKEN and run.run_id == "r1"  # the same run, the same token
    [sbatch] = [argv for argv in shell.calls if argv[0] == "sbatch"]
    assert sbatch[sbatch.index("--comment") + 1] == TOKEN
    assert shell.files["/runs/r1/job.sh"] == before.script.encode()
    assert b'"token": "hpcjob-feedc0ffee"' in shell.files["/runs/r1/run.json"]
    assert "/runs/r1/workload/train.py" in shell.files
    assert [state for state, _ in history(ctx)] == [
        "SUBMITTING", "UNSUBMITTED", "SUBMITTING", "PENDING"
    ]  # fmt: skip
    assert not (ctx.settings.home / "submitting" / "r1.lock").exists()  # released


def test_resubmit_keeps_a_run_json_the_first_attempt_wrote(tmp_path: Path) -> None:
    shell = ReplayShell({**NO_JOBS, "sbatch": [recorded("sbatch_comment")]})
    shell.files["/runs/r1/run.json"] = b'{"written": "at the first attempt"}'
    ctx = context(tmp_path, shell)
    unsubmitted(ctx)
    resubmit(ctx, "r1")
    assert shell.files["/runs/r1/run.json"] == b'{"written": "at the first attempt"}'


def test_resubmit_that_cannot_look_up_the_token_submits_nothing(tmp_path: Path) -> None:
    shell = ReplayShell({"squeue": [recorded("squeue_ctld_down")]})
    ctx = context(tmp_path, shell)
    unsubmitted(ctx)
    with pytest.raises(HpcjobError, match="controller"):
        resubmit(ctx, "r1")
    assert "sbatch" not in shell.commands()
    assert ctx.ledger.get_run("r1").state == JobState.UNSUBMITTED


def test_resubmit_refuses_a_run_that_reached_the_scheduler(tmp_path: Path) -> None:
    shell = ReplayShell({})
    ctx = context(tmp_path, shell)
    stranded(ctx)
    ctx.ledger.set_submitted("r1", "55", "/runs/r1/slurm-55.out")
    with pytest.raises(HpcjobError) as refused:
        resubmit(ctx, "r1")
    assert refused.value.exit_code == 2
    assert "Run r1 is PENDING as job 55; only a run that never reached" in refused.value.message
    assert shell.calls == []


def test_resubmit_refuses_a_run_of_another_profile(tmp_path: Path) -> None:
    shell = ReplayShell({})
    ctx = context(tmp_path, shell)
    ctx.ledger.create_run(new_run(profile="other", run_id="r1", token=TOKEN))
    ctx.ledger.mark_unsubmitted("r1", NEVER_ARRIVED)
    with pytest.raises(HpcjobError) as refused:
        resubmit(ctx, "r1")
    assert refused.value.exit_code == 2
    assert "belongs to profile 'other', not 'slurm'" in refused.value.message
    assert refused.value.hint == "hpcjob resubmit r1 --profile other"
    assert shell.calls == [] and ctx.ledger.get_run("r1").state == JobState.UNSUBMITTED


# -- hand_over --------------------------------------------------------------------------------


def test_a_rejected_sbatch_marks_the_run_unsubmitted(tmp_path: Path) -> None:
    shell = ReplayShell({**NO_JOBS, "sbatch": [recorded("sbatch_invalid_account")]})
    ctx = context(tmp_path, shell)
    with pytest.raises(HpcjobError, match="account"):
        hand_over(ctx, stranded(ctx))
    run = ctx.ledger.get_run("r1")
    assert run.state == JobState.UNSUBMITTED and "account" in (run.reason or "").lower()
    assert shell.commands().count("sbatch") == 1


@pytest.mark.parametrize(
    "lookup",
    [
        {"squeue": [recorded("squeue_ctld_down")]},  # the controller is down: cannot look
        NO_JOBS,  # looked, and the job is not (yet) there
    ],
)
def test_an_sbatch_with_unknown_outcome_stays_submitting_and_is_not_repeated(
    tmp_path: Path, lookup: dict[str, list[object]]
) -> None:
    shell = ReplayShell({**lookup, "sbatch": [recorded("sbatch_ctld_down")]})  # type: ignore[dict-item]
    ctx = context(tmp_path, shell)
    with pytest.raises(HpcjobError) as unclear:
        hand_over(ctx, stranded(ctx))
    assert "It is not known whether the scheduler queued run r1" in unclear.value.message
    assert "hpcjob did not submit it again" in unclear.value.message
    assert unclear.value.hint is not None and "hpcjob resubmit r1" in unclear.value.hint
    run = ctx.ledger.get_run("r1")
    assert (run.state, run.job_id) == (JobState.SUBMITTING, None)
    assert (run.reason or "").startswith(f"{AMBIGUOUS}: ")
    assert shell.commands().count("sbatch") == 1
