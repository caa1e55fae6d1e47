"""One rank of a multi-process job: its own log file, its exit recorded, signals passed on.

    python rank.py run --dir DIR -- COMMAND [ARG ...]     # what torchrun/srun start per rank
    python rank.py summary --dir DIR --ranks N --launcher-rc RC [--metrics FILE]

`run` starts COMMAND with its output (stdout and stderr) in `DIR/rank-<R>.out`; rank 0's also goes
to this process's stdout, so the job's output shows rank 0 as a single-process job's would. It
passes USR1/USR2/TERM/INT/HUP on to the command (Slurm's warning before the time limit reaches
only the launcher; a command reached directly as well gets the signal twice — handle it
idempotently) and, when the command ends, writes `DIR/rank-<R>.exit`: `CODE TIME HOST [SIGNAL]`
(CODE as bash reports it, 128 + N for a command killed by signal N; TIME in seconds since the
epoch). Started by srun, the command also gets torch's RANK, LOCAL_RANK and WORLD_SIZE from
SLURM_PROCID, SLURM_LOCALID and SLURM_NTASKS. A rank other than 0 that fails prints its last
lines to stderr, prefixed `[rank R]`, so the job's output holds the error lines of every rank.
The rank is torchrun's RANK, else srun's SLURM_PROCID.

`summary`, run by the job script once the launcher has ended, reads the exit records and prints
`CODE NOTE...`: the job's exit code and what the exit-status file adds. The first rank to fail
(earliest, not 0 and not 75) is named (`rank=3 host=tcn2 rank_exit=137`, and a `hpcjob:` line on
stderr); its code becomes the job's. When every rank stopped with a checkpoint (75, or 0 for
a rank that had finished), the job's code is 75 even though torchrun itself exits 1 after a
signal, so a requeue resumes it. With --metrics, the failure is added to that metrics file as
facts (`failed_rank`, `failed_rank_host`, `failed_rank_exit`).

Standard library only: workloads never import hpcjob.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import BinaryIO

CHECKPOINTED = 75  # train.py's EX_TEMPFAIL: stopped by a signal after saving a checkpoint
FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
TAIL_LINES = 20  # the lines of a failed rank's output shown in the job's output
_CHUNK = 65536


def rank_of(env: dict[str, str] | os._Environ[str]) -> int:
    """This process's global rank: torchrun's RANK, else srun's SLURM_PROCID, else 0."""
    for key in ("RANK", "SLURM_PROCID"):
        value = env.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def torch_env(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """What torch's env:// rendezvous needs, from srun's variables where torchrun set none."""
    if "RANK" in env or "SLURM_PROCID" not in env:
        return {}
    names = {"RANK": "SLURM_PROCID", "LOCAL_RANK": "SLURM_LOCALID", "WORLD_SIZE": "SLURM_NTASKS"}
    return {ours: env[theirs] for ours, theirs in names.items() if theirs in env}


def bash_code(returncode: int) -> int:
    """A child's exit as bash reports it: 128 + N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def signal_name(code: int) -> str | None:
    """`SIGKILL` for 137; None for a code that is not a signal's."""
    if code <= 128:
        return None
    try:
        return signal.Signals(code - 128).name
    except ValueError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        with path.open(errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except OSError:
        return []


def _copy(source: int, log: BinaryIO, echo: bool) -> None:
    """Everything the command writes into its log (and this process's stdout, for rank 0)."""
    out = sys.stdout.buffer
    while True:
        data = os.read(source, _CHUNK)
        if not data:
            return
        log.write(data)
        log.flush()
        if echo:
            try:
                out.write(data)
                out.flush()
            except OSError:  # nobody reads our stdout any more: the log still gets it all
                echo = False


def run(folder: Path, command: list[str]) -> int:
    """Run one rank's command (see the module's docstring); its exit code as bash reports it."""
    rank = rank_of(os.environ)
    host = socket.gethostname()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"rank-{rank}.out"
    with log_path.open("ab") as log:
        try:
            child = subprocess.Popen(
                command,
                stdout=subprocess.PIPE if rank == 0 else log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **torch_env(os.environ)},
            )
        except OSError as exc:
            message = f"hpcjob: rank {rank} on {host} could not start {command[0]}: {exc}\n"
            log.write(message.encode())
            sys.stderr.write(message)
            code = 127
        else:

            def forward(signum: int, _frame: FrameType | None) -> None:
                if child.poll() is None:
                    child.send_signal(signum)

            for sig in FORWARDED:
                signal.signal(sig, forward)
            if child.stdout is not None:
                _copy(child.stdout.fileno(), log, echo=True)
            code = bash_code(child.wait())
            for sig in FORWARDED:  # ended: a late signal must not kill us before the record
                signal.signal(sig, signal.SIG_IGN)
    name = signal_name(code)
    record = f"{code} {time.time():.6f} {host}" + (f" {name}" if name else "")
    _write_atomic(folder / f"rank-{rank}.exit", record + "\n")
    if rank != 0 and code not in (0, CHECKPOINTED):
        how = f"killed by {name}" if name else f"exit {code}"
        head = f"[rank {rank}] rank {rank} on {host} ended: {how}; its last lines:"
        lines = [f"[rank {rank}] {line}" for line in _tail(log_path)]
        sys.stderr.write("\n".join([head, *lines]) + "\n")
    return code


@dataclass(frozen=True)
class RankExit:
    rank: int
    code: int
    at: float
    host: str


def read_exits(folder: Path) -> list[RankExit]:
    """The exit records the ranks wrote (a damaged one is skipped)."""
    found = []
    for path in sorted(folder.glob("rank-*.exit")):
        words = path.read_text(errors="replace").split()
        number = path.name[len("rank-") : -len(".exit")]
        try:
            found.append(RankExit(int(number), int(words[0]), float(words[1]), words[2]))
        except (IndexError, ValueError):
            continue
    return sorted(found, key=lambda e: e.rank)


def decide(exits: list[RankExit], ranks: int, launcher_rc: int) -> tuple[int, RankExit | None]:
    """The job's exit code and the rank that failed first (None when none did)."""
    failed = sorted((e for e in exits if e.code not in (0, CHECKPOINTED)), key=lambda e: e.at)
    if failed:
        return failed[0].code, failed[0]
    stopped = any(e.code == CHECKPOINTED for e in exits)
    if stopped and len(exits) == ranks:
        return CHECKPOINTED, None
    if launcher_rc == 0 and len(exits) < ranks:
        return 1, None  # the launcher says all went well, but ranks never reported
    return launcher_rc, None


def _last_line(folder: Path, rank: int) -> str:
    lines = [line.strip() for line in _tail(folder / f"rank-{rank}.out") if line.strip()]
    return lines[-1][:300] if lines else ""


def summary(folder: Path, ranks: int, launcher_rc: int, metrics: Path | None) -> str:
    """`CODE NOTE...` for the job script; the first failure also goes to stderr and `metrics`."""
    exits = read_exits(folder)
    code, first = decide(exits, ranks, launcher_rc)
    missing = sorted(set(range(ranks)) - {e.rank for e in exits})
    note = []
    if first is not None:
        name = signal_name(first.code)
        how = f"killed by {name} (exit {first.code})" if name else f"exit {first.code}"
        last = "" if name else _last_line(folder, first.rank)
        sys.stderr.write(
            f"hpcjob: rank {first.rank} on {first.host} failed first ({how})"
            + (f": {last}" if last else "")
            + f"; the job ended with it (its output: ranks/…/rank-{first.rank}.out)\n"
        )
        note = [f"rank={first.rank}", f"host={first.host}", f"rank_exit={first.code}"]
        if metrics is not None:
            facts = {
                "failed_rank": first.rank,
                "failed_rank_host": first.host,
                "failed_rank_exit": first.code,
            }
            with metrics.open("a") as handle:
                handle.write(json.dumps({"facts": facts}) + "\n")
    elif code == CHECKPOINTED and launcher_rc != CHECKPOINTED:
        note = ["ranks=checkpointed"]
    if missing and code != 0:
        shown = ",".join(str(r) for r in missing[:16]) + (",…" if len(missing) > 16 else "")
        note.append(f"no_record={shown}")
    return " ".join([str(code), *note])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    one = sub.add_parser("run", help="run one rank's command")
    one.add_argument("--dir", type=Path, required=True, help="the folder of the ranks' files")
    one.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")
    end = sub.add_parser("summary", help="the job's exit code from the ranks' records")
    end.add_argument("--dir", type=Path, required=True)
    end.add_argument("--ranks", type=int, required=True, help="how many ranks the job started")
    end.add_argument("--launcher-rc", type=int, required=True, help="the launcher's exit code")
    end.add_argument("--metrics", type=Path, help="a metrics JSONL file to add the failure to")
    args = parser.parse_args(argv)
    if args.mode == "summary":
        print(summary(args.dir, args.ranks, args.launcher_rc, args.metrics))
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run: give the command after --")
    return run(args.dir, command)


if __name__ == "__main__":
    sys.exit(main())
