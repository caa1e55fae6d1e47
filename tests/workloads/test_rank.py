"""workloads/rank.py, the wrapper between torchrun/srun and each rank: the rank's own log, its
exit record, signals passed on, and the job's exit code from the records (who failed first;
75 when every rank stopped with a checkpoint). Real processes, driven by events (files the
child writes, signals the test sends), never by guessing how long something takes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import rank as rankmod
from jobrun import WORKLOADS

from tests.helpers import wait_until

RANK_PY = WORKLOADS / "rank.py"

# A child that says it is ready (its pid in a file), then waits for USR1 and exits 75, as
# train.py does after its checkpoint.
WAITS_FOR_USR1 = """\
import os, signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
open(sys.argv[1], "w").write(str(os.getpid()))
while not got:
    time.sleep(0.01)
print("checkpoint saved", flush=True)
sys.exit(75)
"""


def wrapper(folder: Path, rank: int, *command: str) -> subprocess.Popen[str]:
    env = {**os.environ, "RANK": str(rank)}
    argv = [sys.executable, str(RANK_PY), "run", "--dir", str(folder), "--", *command]
    pipe = subprocess.PIPE
    return subprocess.Popen(argv, env=env, stdout=pipe, stderr=pipe, text=True)


def record(folder: Path, rank: int) -> list[str]:
    return (folder / f"rank-{rank}.exit").read_text().split()


def test_rank_0_output_goes_to_its_file_and_the_jobs_output(tmp_path: Path) -> None:
    proc = wrapper(tmp_path, 0, sys.executable, "-c", "print('epoch 1 done')")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out == "epoch 1 done\n"
    assert (tmp_path / "rank-0.out").read_text() == "epoch 1 done\n"
    code, at, host = record(tmp_path, 0)
    assert code == "0" and float(at) > 0 and host


def test_another_ranks_output_stays_in_its_file_unless_it_fails(tmp_path: Path) -> None:
    quiet = wrapper(tmp_path, 2, sys.executable, "-c", "print('rank 2 talking')")
    out, err = quiet.communicate(timeout=120)
    assert (quiet.returncode, out, err) == (0, "", "")
    assert (tmp_path / "rank-2.out").read_text() == "rank 2 talking\n"

    failing = wrapper(
        tmp_path, 3, sys.executable, "-c", "import sys; print('loading'); sys.exit('bad shard 7')"
    )
    out, err = failing.communicate(timeout=120)
    assert failing.returncode == 1 and out == ""
    assert "[rank 3] rank 3 on" in err and "ended: exit 1; its last lines:" in err
    assert "[rank 3] loading\n[rank 3] bad shard 7" in err
    assert record(tmp_path, 3)[0] == "1"


def test_usr1_is_passed_on_and_the_checkpoint_exit_recorded(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = wrapper(tmp_path / "ranks", 1, sys.executable, "-c", WAITS_FOR_USR1, str(ready))
    wait_until(lambda: ready.exists() and ready.read_text(), "the child to be ready")
    proc.send_signal(signal.SIGUSR1)  # to the wrapper only: it must pass it on
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert record(tmp_path / "ranks", 1)[0] == "75"
    assert err == ""  # stopping with a checkpoint is not a failure


def test_a_killed_rank_is_recorded_as_killed(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = wrapper(tmp_path, 1, sys.executable, "-c", WAITS_FOR_USR1, str(ready))
    child = int(wait_until(lambda: ready.exists() and ready.read_text(), "the child's pid"))
    os.kill(child, signal.SIGKILL)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 137
    assert record(tmp_path, 1)[0] == "137" and record(tmp_path, 1)[-1] == "SIGKILL"
    assert "rank 1 on" in err and "ended: killed by SIGKILL" in err


def test_a_command_that_cannot_start_is_127(tmp_path: Path) -> None:
    proc = wrapper(tmp_path, 0, str(tmp_path / "no-such-program"))
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 127
    assert "could not start" in err and record(tmp_path, 0)[0] == "127"


def exits(*rows: tuple[int, int, float]) -> list[rankmod.RankExit]:
    return [rankmod.RankExit(rank, code, at, f"node{rank // 2}") for rank, code, at in rows]


def test_the_first_rank_to_fail_is_named_and_gives_the_jobs_code() -> None:
    # Rank 3 was killed first; the others failed after it (their collectives broke).
    records = exits((0, 1, 10.5), (1, 1, 10.4), (2, 0, 9.0), (3, 137, 10.1))
    code, first = rankmod.decide(records, ranks=4, launcher_rc=1)
    assert code == 137 and first is not None and (first.rank, first.host) == (3, "node1")


def test_every_rank_stopped_with_a_checkpoint_is_75_though_torchrun_says_1() -> None:
    assert rankmod.decide(exits((0, 75, 1), (1, 75, 1)), ranks=2, launcher_rc=1) == (75, None)
    # A rank that had already finished its work counts as stopped too.
    assert rankmod.decide(exits((0, 75, 1), (1, 0, 1)), ranks=2, launcher_rc=1) == (75, None)
    # A rank without a record (killed before it could write one): not a clean stop.
    assert rankmod.decide(exits((0, 75, 1)), ranks=2, launcher_rc=1) == (1, None)


def test_the_launchers_code_stands_when_the_ranks_say_nothing_more() -> None:
    assert rankmod.decide(exits((0, 0, 1), (1, 0, 1)), ranks=2, launcher_rc=0) == (0, None)
    assert rankmod.decide([], ranks=2, launcher_rc=1) == (1, None)  # rendezvous never happened
    assert rankmod.decide(exits((0, 0, 1)), ranks=2, launcher_rc=0) == (1, None)


def test_the_summary_line_names_the_rank_and_adds_facts(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "rank-0.exit").write_text("1 20.0 tcn1\n")
    (tmp_path / "rank-1.exit").write_text("3 19.0 tcn2\n")
    (tmp_path / "rank-1.out").write_text("Traceback ...\nValueError: bad shard 7\n")
    (tmp_path / "rank-9.exit").write_text("garbage\n")  # damaged: skipped
    metrics = tmp_path / "metrics.jsonl"
    line = rankmod.summary(tmp_path, ranks=2, launcher_rc=1, metrics=metrics)
    assert line == "3 rank=1 host=tcn2 rank_exit=3"
    err = capsys.readouterr().err
    assert "hpcjob: rank 1 on tcn2 failed first (exit 3): ValueError: bad shard 7" in err
    facts = json.loads(metrics.read_text())["facts"]
    assert facts == {"failed_rank": 1, "failed_rank_host": "tcn2", "failed_rank_exit": 3}

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "rank-0.exit").write_text("75 1.0 tcn1\n")
    assert rankmod.summary(stopped, ranks=2, launcher_rc=1, metrics=None) == "1 no_record=1"
    (stopped / "rank-1.exit").write_text("75 1.0 tcn2\n")
    assert rankmod.summary(stopped, ranks=2, launcher_rc=1, metrics=None) == "75 ranks=checkpointed"


def test_srun_ranks_get_torchs_variables_and_torchruns_are_left_alone() -> None:
    srun = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}
    assert rankmod.torch_env(srun) == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}
    assert rankmod.torch_env({**srun, "RANK": "5"}) == {}  # torchrun's own
    assert rankmod.torch_env({}) == {}


def test_a_srun_rank_runs_with_torchs_variables(tmp_path: Path) -> None:
    env = {**os.environ, "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NTASKS": "2"}
    env.pop("RANK", None)
    show = (
        "import os; print(os.environ['RANK'], os.environ['LOCAL_RANK'], os.environ['WORLD_SIZE'])"
    )
    argv = [sys.executable, str(RANK_PY), "run", "--dir", str(tmp_path), "--",
            sys.executable, "-c", show]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rank-1.out").read_text() == "1 1 2\n"
