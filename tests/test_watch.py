"""The waiting and following loops on a fake clock: they back off as promised, wake up for the
job's exit-status file, give up at their timeout and stream a log by offset — driven by injected
time and Slurm's recorded answers, so no test here sleeps or depends on this machine's speed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hpcjob.config import Profile, Settings
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobInfo, JobState
from hpcjob.ledger.records import NewRun, Run
from hpcjob.run.context import Context
from hpcjob.run.rundir import exit_status_path
from hpcjob.run.watch import follow, wait
from hpcjob.scheduler.slurm import SlurmScheduler
from tests.helpers import ReplayShell, recorded

START = datetime(2026, 11, 27, 22, 23, tzinfo=timezone.utc)


class FakeClock:
    """Time that passes only when the code under test sleeps; `at` runs actions at given times."""

    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []
        self._due: list[tuple[float, Callable[[], None]]] = []

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._due.append((when, action))

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        for item in [d for d in self._due if d[0] <= self.t]:
            self._due.remove(item)
            item[1]()

    def now(self) -> datetime:
        return START + timedelta(seconds=self.t)


class TimedShell(ReplayShell):
    """The replay shell, noting the fake time of each squeue (each poll)."""

    def __init__(self, clock: FakeClock, **answers: list[str]) -> None:
        super().__init__({name: [recorded(f) for f in files] for name, files in answers.items()})
        self.clock = clock
        self.polled_at: list[float] = []

    def run(self, argv, **kwargs):  # type: ignore[no-untyped-def, override]
        if argv[0] == "squeue":
            self.polled_at.append(self.clock.t)
        return super().run(argv, **kwargs)


def started_run(
    tmp_path: Path, shell: TimedShell, clock: FakeClock, job_id: str
) -> tuple[Context, Run]:
    """A Slurm context on the replayed shell and fake clock, with one submitted run."""
    profile = Profile("slurm", {"scheduler": "slurm", "remote_root": "/runs"}, {})
    ctx = Context(Settings(tmp_path), profile, clock=clock)
    ctx._scheduler = SlurmScheduler(shell, "slurm:test")
    new = NewRun(
        profile="slurm", cluster="slurm:test", scheduler="slurm", workload="gpu-check",
        spec={"workload": "gpu-check", "resources": {}}, script="#!/bin/bash\n",
        script_hash="h", run_dir="/runs/r1", run_id="r1",
    )  # fmt: skip
    run = ctx.ledger.create_run(new)
    run = ctx.ledger.complete_submission(run.run_id, job_id, f"/runs/r1/slurm-{job_id}.out")
    return ctx, run


def test_wait_backs_off_from_the_start_interval_to_the_cap(tmp_path: Path) -> None:
    clock = FakeClock()
    # Job 101 pends for five polls, then has failed (exit 3): squeue, then sacct's record.
    shell = TimedShell(clock, squeue=["squeue_live"] * 5 + ["squeue_final"], sacct=["sacct_final"])
    ctx, run = started_run(tmp_path, shell, clock, "101")
    ticks: list[JobState] = []
    done = wait(ctx, run, on_tick=lambda r: ticks.append(r.state))
    assert done.state == JobState.FAILED and done.exit_code == 3
    # Polls 2, 4, 8, 16 s apart, then at the 30 s cap: 0, 2, 6, 14, 30, 60.
    assert shell.polled_at == [0.0, 2.0, 6.0, 14.0, 30.0, 60.0]
    assert ticks == [JobState.PENDING] * 5 + [JobState.FAILED]


def test_the_exit_status_file_ends_a_long_back_off_early(tmp_path: Path) -> None:
    clock = FakeClock()
    shell = TimedShell(clock, squeue=["squeue_live"] * 3 + ["squeue_final"], sacct=["sacct_final"])
    ctx, run = started_run(tmp_path, shell, clock, "101")
    # The job ends 7.1 s in (between polls at 6 and 14): its EXIT trap writes the file.
    clock.at(7.1, lambda: shell.files.__setitem__(exit_status_path(run), b"3 2026-11-27T22:23:07Z"))
    done = wait(ctx, run)
    assert done.state == JobState.FAILED
    assert shell.polled_at[:3] == [0.0, 2.0, 6.0]
    # Woken at the next quarter-second tick after the file appeared, not at 14 s.
    assert shell.polled_at[3] == pytest.approx(7.25)


def test_a_short_job_is_noticed_within_a_tick_of_its_end(tmp_path: Path) -> None:
    """In a wait's first seconds the exit-status file (cheap: a file, not the scheduler) is
    looked at every 0.02 s, so a trivial job's end is seen within 0.02 s, not at the next
    quarter second."""
    clock = FakeClock()
    shell = TimedShell(clock, squeue=["squeue_live", "squeue_final"], sacct=["sacct_final"])
    ctx, run = started_run(tmp_path, shell, clock, "101")
    ended = b"3 2026-11-27T22:23:07Z"
    clock.at(0.62, lambda: shell.files.__setitem__(exit_status_path(run), ended))
    done = wait(ctx, run)
    assert done.state == JobState.FAILED and done.exit_code == 3  # the file's code
    assert shell.polled_at[0] == 0.0 and 0.62 <= shell.polled_at[1] <= 0.64 + 1e-9
    assert len(shell.polled_at) == 2
    # squeue said it ended and the file how: sacct (seconds behind) is left to a later status.
    assert [argv[0] for argv in shell.calls if argv[0] in ("squeue", "sacct")] == ["squeue"] * 2


def test_an_ending_job_is_asked_about_again_soon_backing_off(tmp_path: Path) -> None:
    """The file is there but squeue still shows the job (Slurm is finishing it): ask again
    after 0.1 s, then 0.2, 0.4 … — not after a whole poll interval."""
    clock = FakeClock()
    shell = TimedShell(clock, squeue=["squeue_live"] * 3 + ["squeue_final"], sacct=["sacct_final"])
    ctx, run = started_run(tmp_path, shell, clock, "101")
    shell.files[exit_status_path(run)] = b"3 2026-11-27T22:23:07Z"
    done = wait(ctx, run)
    assert done.state == JobState.FAILED
    assert shell.polled_at == pytest.approx([0.0, 0.1, 0.3, 0.7])


def test_a_wait_that_goes_on_looks_at_the_file_every_quarter_second(tmp_path: Path) -> None:
    """Past its first seconds a wait looks at the file four times a second and asks the
    scheduler only at its backed-off pace."""
    clock = FakeClock()
    shell = TimedShell(clock, squeue=["squeue_live"] * 4 + ["squeue_final"], sacct=["sacct_final"])
    ctx, run = started_run(tmp_path, shell, clock, "101")
    clock.at(20.0, lambda: shell.files.__setitem__(exit_status_path(run), b"0 x"))
    wait(ctx, run)
    assert shell.polled_at[:4] == [0.0, 2.0, 6.0, 14.0]
    assert shell.polled_at[4] == pytest.approx(20.0)
    assert max(clock.slept) <= 0.25 and set(clock.slept[-10:]) == {0.25}


def test_wait_gives_up_at_its_timeout_and_leaves_the_run(tmp_path: Path) -> None:
    clock = FakeClock()
    shell = TimedShell(clock, squeue=["squeue_live"])  # pending for ever
    ctx, run = started_run(tmp_path, shell, clock, "101")
    with pytest.raises(HpcjobError, match="Gave up waiting for run r1 after 20 s; it is PENDING"):
        wait(ctx, run, timeout_s=20)
    assert 20 < clock.t <= 20 + ctx.scheduler.poll_cap_s
    assert ctx.ledger.get_run("r1").state == JobState.PENDING


def test_follow_streams_by_offset_and_asks_the_scheduler_at_its_own_pace(tmp_path: Path) -> None:
    clock = FakeClock()
    shell = TimedShell(clock, squeue=["squeue_live"] * 3 + ["squeue_final"], sacct=["sacct_final"])
    ctx, run = started_run(tmp_path, shell, clock, "104")
    out = run.output_path
    assert out is not None
    shell.files[out] = b"epoch 1\n"
    written = [b"epoch 1\n"]
    for second in (1, 2, 3, 5, 8):  # the job writes a line now and then, one cut mid-line

        def write(second: int = second) -> None:
            line = f"epoch {second + 1}\n".encode() if second != 3 else b"epo"
            written.append(line)
            shell.files[out] += line

        clock.at(second, write)
    shown: list[str] = []
    ended = follow(ctx, run, 0, shown.append)
    assert ended.state == JobState.CANCELLED
    assert "".join(shown) == b"".join(written).decode()  # every byte once, in order
    # The state is asked every 2 × the start interval (4 s), never on each 0.2 s read.
    gaps = [b - a for a, b in zip([0.0, *shell.polled_at], shell.polled_at, strict=False)]
    assert len(gaps) == 4 and all(4.0 - 1e-9 <= gap <= 4.2 + 1e-9 for gap in gaps)
    assert set(clock.slept) == {0.2}


def test_follow_shows_a_new_line_within_a_fifth_of_a_second(tmp_path: Path) -> None:
    """The output file is read five times a second (a file: the scheduler is not asked), so a
    line the job writes is shown within 0.2 s."""
    clock = FakeClock()
    shell = TimedShell(clock, squeue=["squeue_live"] * 2 + ["squeue_final"], sacct=["sacct_final"])
    ctx, run = started_run(tmp_path, shell, clock, "104")
    out = run.output_path
    assert out is not None
    writes = {1.03: b"first line\n", 2.51: b"second line\n"}
    for when, line in writes.items():
        clock.at(
            when, lambda line=line: shell.files.__setitem__(out, shell.files.get(out, b"") + line)
        )
    shown: list[tuple[float, str]] = []
    follow(ctx, run, 0, lambda text: shown.append((clock.t, text)))
    assert [text for _, text in shown] == ["first line\n", "second line\n"]
    for (when, _), (at, _) in zip(writes.items(), shown, strict=True):
        assert 0 <= at - when <= 0.2 + 1e-9


def test_follow_goes_on_to_the_next_attempt_of_a_requeued_run(tmp_path: Path) -> None:
    """Job 99 hits its limit and (another hpcjob process's refresh) resubmits it as job 100,
    which writes a file of its own: follow prints all of 99's output, a header, then 100's —
    not 100's file from 99's offset."""
    clock = FakeClock()
    shell = TimedShell(clock, squeue=["squeue_live"] * 3 + ["squeue_final"], sacct=["sacct_final"])
    ctx, run = started_run(tmp_path, shell, clock, "99")
    first, second = run.output_path, "/runs/r1/slurm-100.out"
    assert first is not None
    shell.files[first] = b"attempt one\n"

    def requeued() -> None:
        shell.files[first] += b"checkpoint saved\n"  # its last words, after follow's last read
        ended = ctx.ledger.record_info(
            ctx.ledger.get_run("r1"), JobInfo("99", JobState.TIMEOUT), "test"
        )
        assert ctx.ledger.claim_requeue(ended, 1, ended.token + "-a2", "auto-requeue 1 of 1")
        ctx.ledger.complete_submission("r1", "100", second)
        shell.files[second] = b"attempt two\n"

    clock.at(1.2, requeued)
    clock.at(9, lambda: shell.files.__setitem__(second, shell.files[second] + b"done\n"))
    shown: list[str] = []
    ended = follow(ctx, run, 0, shown.append)
    assert ended.job_id == "100" and ended.state == JobState.COMPLETED
    assert "".join(shown) == (
        "attempt one\ncheckpoint saved\n"
        "\n==> attempt 2 of 2: job 100, RUNNING <==\n"
        "attempt two\ndone\n"
    )
