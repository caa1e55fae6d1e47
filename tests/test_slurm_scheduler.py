"""SlurmScheduler and the refresh above it, with a Shell that replays outputs recorded from the real
test cluster (tests/fixtures/slurm). No Slurm needed; nothing is patched globally."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcjob.clock import utc_now
from hpcjob.config import Profile, Settings
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.ledger.records import NewRun
from hpcjob.run.context import Context
from hpcjob.run.prepare import Prepared
from hpcjob.run.refresh import refresh
from hpcjob.run.submit import submit
from hpcjob.scheduler.slurm import SlurmScheduler
from hpcjob.shell import CommandResult
from hpcjob.spec import SpecRequest, build_spec
from tests.helpers import ReplayShell, recorded


def test_submit_parses_the_job_id_and_passes_the_token() -> None:
    shell = ReplayShell({"sbatch": [recorded("sbatch_comment")]})
    job_id = SlurmScheduler(shell, "c").submit("/r/job.sh", token="hpcjob-tok", workdir="/r")
    assert job_id == "87"
    assert shell.calls[0][:4] == ["sbatch", "--parsable", "--comment", "hpcjob-tok"]


@pytest.mark.parametrize(
    ("fixture", "fragment"),
    [
        ("sbatch_invalid_partition", "no partition 'nosuchpart'"),
        ("sbatch_time_above_max", "time limit"),
        ("sbatch_gpu_impossible", "node configuration"),
        ("sbatch_invalid_account", "account"),
        ("sbatch_ctld_down", "controller"),
    ],
)
def test_sbatch_rejections_become_sentences(fixture: str, fragment: str) -> None:
    shell = ReplayShell({"sbatch": [recorded(fixture)]})
    with pytest.raises(HpcjobError) as info:
        SlurmScheduler(shell, "c").submit("/r/job.sh", token="t", workdir="/r")
    assert fragment.lower() in str(info.value).lower()
    assert info.value.hint


def test_poll_is_one_squeue_and_one_sacct_for_many_jobs() -> None:
    shell = ReplayShell({"squeue": [recorded("squeue_final")], "sacct": [recorded("sacct_final")]})
    ids = ["95_4", "95_5", "99", "100", "101", "102", "103", "104", "105", "106", "107", "108"]
    infos = SlurmScheduler(shell, "c").poll(ids)
    assert shell.commands() == ["squeue", "sacct"]
    assert infos["104"].state == JobState.CANCELLED
    assert infos["95_4"].state == JobState.COMPLETED


def test_interim_accounting_record_is_not_taken_for_the_end() -> None:
    shell = ReplayShell(
        {"squeue": [recorded("squeue_unknown_job")], "sacct": [recorded("sacct_lag_allocation")]}
    )
    assert SlurmScheduler(shell, "c").poll(["92"]) == {}  # missing is never done
    shell = ReplayShell(
        {"squeue": [recorded("squeue_unknown_job")], "sacct": [recorded("sacct_lag_complete")]}
    )
    info = SlurmScheduler(shell, "c").poll(["92"])["92"]
    assert info.state == JobState.COMPLETED and info.exit_code == 0
    assert info.facts["sacct_max_rss_bytes"] == 4600 * 1024


def test_accounting_down_is_remembered_and_squeue_answers() -> None:
    shell = ReplayShell(
        {"squeue": [recorded("squeue_final")], "sacct": [recorded("sacct_dbd_down")]}
    )
    scheduler = SlurmScheduler(shell, "c")
    infos = scheduler.poll(["103"])
    assert scheduler.accounting_off and "connection" in scheduler.accounting_off.lower()
    assert infos["103"].state == JobState.COMPLETED and infos["103"].exit_code is None


def test_squeue_garbage_and_outages_are_clear_errors() -> None:
    garbage = CommandResult(("squeue",), 0, "JOBID|JOBID|nonsense\n\x00\xff", "")
    with pytest.raises(HpcjobError, match="squeue"):
        SlurmScheduler(ReplayShell({"squeue": [garbage]}), "c").poll(["1"])
    down = ReplayShell({"squeue": [recorded("squeue_ctld_down")]})
    with pytest.raises(HpcjobError) as info:
        SlurmScheduler(down, "c").poll(["100"])
    assert "squeue" in info.value.message and "controller" in info.value.message


def context_with(shell: ReplayShell, tmp_path: Path) -> Context:
    profile = Profile("slurm", {"scheduler": "slurm", "remote_root": "/runs"}, {})
    ctx = Context(Settings(tmp_path), profile)
    ctx._scheduler = SlurmScheduler(shell, "slurm:test")
    return ctx


def prepared(run_dir: str = "/runs/r1") -> Prepared:
    spec = build_spec(SpecRequest(workload="gpu-check"))
    new = NewRun(
        profile="slurm", cluster="", scheduler="slurm", workload="gpu-check",
        spec=spec.to_dict(), script="#!/bin/bash\n", script_hash="h", run_dir=run_dir,
        run_id="r1",
    )  # fmt: skip
    return Prepared(spec=spec, new_run=new, script="#!/bin/bash\n")


def test_socket_timeout_checks_the_token_and_never_submits_twice(tmp_path: Path) -> None:
    timeout = CommandResult(
        ("sbatch",), 1, "", "sbatch: error: Batch job submission failed: Socket timed out on "
        "send/recv operation\n",
    )  # fmt: skip
    ready = prepared()
    found = CommandResult(
        ("squeue",),
        0,
        "JOBID|JOBID|ARRAY_JOB_ID|ARRAY_TASK_ID|STATE|REASON|PARTITION|NODELIST|TIME|TIME_LIMIT|"
        "START_TIME|COMMENT|NAME\n"
        f"4242|4242|4242|N/A|PENDING|Priority|rome||0:00|10:00|N/A|{ready.new_run.token}|j\n",
        "",
    )
    shell = ReplayShell({"sbatch": [timeout], "squeue": [found]})
    run = submit(context_with(shell, tmp_path), ready)
    assert run.job_id == "4242" and run.state == JobState.PENDING
    assert shell.commands().count("sbatch") == 1


def test_a_rejected_submission_is_recorded_unsubmitted(tmp_path: Path) -> None:
    nothing = CommandResult(("x",), 0, "", "")
    shell = ReplayShell(
        {"sbatch": [recorded("sbatch_invalid_account")], "squeue": [nothing], "sacct": [nothing]}
    )
    ctx = context_with(shell, tmp_path)
    with pytest.raises(HpcjobError):
        submit(ctx, prepared())
    run = ctx.ledger.get_run("r1")
    assert run.state == JobState.UNSUBMITTED and run.reason


def test_refresh_without_accounting_uses_the_exit_status_file(tmp_path: Path) -> None:
    shell = ReplayShell(
        {
            "sbatch": [CommandResult(("sbatch",), 0, "103\n", "")],
            "squeue": [recorded("squeue_final")],
            "sacct": [recorded("sacct_dbd_down")],
        }
    )
    ctx = context_with(shell, tmp_path)
    submit(ctx, prepared())
    shell.files["/runs/r1/exit-status"] = b"0 2026-11-27T22:23:05Z\n"
    shell.calls.clear()
    refresh(ctx)
    run = ctx.ledger.get_run("r1")
    assert run.state == JobState.COMPLETED and run.exit_code == 0
    assert shell.commands() == ["squeue", "sacct"]
    assert any("accounting" in note for note in ctx.notes)


def test_ended_job_waits_for_accounting_without_the_file(tmp_path: Path) -> None:
    nothing_yet = CommandResult(("sacct",), 0, recorded("sacct_final").stdout.splitlines()[0], "")
    shell = ReplayShell(
        {
            "sbatch": [CommandResult(("sbatch",), 0, "103\n", "")],
            "squeue": [recorded("squeue_final")],
            "sacct": [nothing_yet],
        }
    )
    ctx = context_with(shell, tmp_path)
    submit(ctx, prepared())
    refresh(ctx)
    assert ctx.ledger.get_run("r1").state == JobState.COMPLETING


def test_array_tasks_that_never_started_are_found_in_their_arrays_row() -> None:
    shell = ReplayShell(
        {"squeue": [recorded("squeue_unknown_jobs")], "sacct": [recorded("sacct_live")]}
    )
    infos = SlurmScheduler(shell, "c").poll(["95_0", "95_3"])
    sacct_call = next(argv for argv in shell.calls if argv[0] == "sacct")
    assert sacct_call[-1] == "--jobs=95_0,95_3,95"  # the array's own id asked for too
    assert infos["95_0"].state == JobState.RUNNING  # its own row wins
    assert infos["95_3"].state == JobState.PENDING  # from the `95_[2-5%2]` row


def test_ended_before_sacct_knew_it_gets_its_record_on_a_later_refresh(tmp_path: Path) -> None:
    header_only = CommandResult(("sacct",), 0, recorded("sacct_final").stdout.splitlines()[0], "")
    shell = ReplayShell(
        {
            "sbatch": [CommandResult(("sbatch",), 0, "103\n", "")],
            "squeue": [recorded("squeue_final")],
            "sacct": [header_only, recorded("sacct_final")],
        }
    )
    ctx = context_with(shell, tmp_path)
    submit(ctx, prepared())
    ended = utc_now()
    shell.files["/runs/r1/exit-status"] = f"0 {ended}\n".encode()
    refresh(ctx)  # squeue: ended; sacct: nothing yet; the exit-status file says 0
    run = ctx.ledger.get_run("r1")
    assert run.state == JobState.COMPLETED and run.ended_at == ended
    assert "sacct_elapsed_s" not in ctx.ledger.facts("r1")
    refresh(ctx)  # the accounting record has arrived: asked for in the one sacct call
    assert "sacct_elapsed_s" in ctx.ledger.facts("r1")


def test_a_job_known_ended_by_its_file_is_not_asked_of_sacct() -> None:
    """Its script has ended (the exit-status file is there) and squeue shows it ended: that is
    enough for now; sacct (slow, and seconds behind) is asked on a later poll. A job squeue no
    longer shows is still asked of sacct: missing is never done."""
    shell = ReplayShell({"squeue": [recorded("squeue_final")], "sacct": [recorded("sacct_final")]})
    infos = SlurmScheduler(shell, "c").poll(["103", "104"], ended=["103", "104"])
    assert shell.commands() == ["squeue"]
    assert infos["103"].state == JobState.COMPLETED and infos["103"].accounting_pending
    assert infos["104"].state == JobState.CANCELLED
    shell = ReplayShell(
        {"squeue": [recorded("squeue_unknown_job")], "sacct": [recorded("sacct_lag_complete")]}
    )
    infos = SlurmScheduler(shell, "c").poll(["92"], ended=["92"])
    assert shell.commands() == ["squeue", "sacct"] and infos["92"].state == JobState.COMPLETED


def test_a_waits_refresh_settles_its_run_from_squeue_and_the_file(tmp_path: Path) -> None:
    """The refresh of a wait whose job's file is there: squeue's end and the file's exit code,
    without sacct — neither for this run nor for other runs' late records (`status` asks)."""
    shell = ReplayShell(
        {
            "sbatch": [CommandResult(("sbatch",), 0, "103\n", "")],
            "squeue": [recorded("squeue_final")],
            "sacct": [recorded("sacct_final")],
        }
    )
    ctx = context_with(shell, tmp_path)
    submit(ctx, prepared())
    shell.files["/runs/r1/exit-status"] = f"0 {utc_now()}\n".encode()
    shell.calls.clear()
    refresh(ctx, watched=frozenset({"r1"}), ended=frozenset({"r1"}), late_accounting=False)
    run = ctx.ledger.get_run("r1")
    assert run.state == JobState.COMPLETED and run.exit_code == 0
    assert shell.commands() == ["squeue"]
    shell.calls.clear()
    refresh(ctx)  # a later status: sacct's record for it, as a late record
    assert "sacct" in shell.commands()
    assert ctx.ledger.facts("r1").get("sacct_elapsed_s") is not None
