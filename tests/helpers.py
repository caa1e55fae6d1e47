"""What tests share: running the CLI (in-process and as a process), recorded Slurm outputs and the
Shell that replays them, a ledger row to start from, the secret-scanning helpers, and the ways a
test waits for an event instead of guessing a duration (`wait_until`, `bash_wait_for`, the embedded
scheduler's job records, the ledger read directly). Test modules import from here, never from each
other."""

from __future__ import annotations

import json
import os
import selectors
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
from typer.testing import CliRunner

from hpcjob.ledger.records import NewRun
from hpcjob.shell import CommandResult

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"


REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")

# Bounds a hang, never a wait for something expected: CI runs on a loaded 2-core machine, where
# a process may take many seconds to get going.
GUARD_S = 120.0


def ci_required(environ: Mapping[str, str] = os.environ) -> bool:
    """A CI run, where every test is required: CI=true/1/yes or HPCJOB_REQUIRE_CLUSTER=1. There
    the integration tests must run, any skip fails the run (conftest.py), and golden files are
    compared, never rewritten."""
    return (
        environ.get("CI", "").strip().lower() in ("true", "1", "yes")
        or environ.get("HPCJOB_REQUIRE_CLUSTER") == "1"
    )


def rewrite_requested(flag: str) -> bool:
    """Whether `flag` (UPDATE_GOLDEN, UPDATE_DOC) is set to regenerate committed files. In CI it
    fails the test instead: there files are compared, never rewritten."""
    if os.environ.get(flag) != "1":
        return False
    if ci_required():
        pytest.fail(
            f"{flag}=1 is refused in CI: files committed to the repository are compared here, "
            "never rewritten. Regenerate them locally, review the diff and commit it."
        )
    return True


def wait_until(
    condition: Callable[[], T], what: str, guard_s: float = GUARD_S, tick_s: float = 0.05
) -> T:
    """Poll `condition` until it returns something truthy, and return that. The guard only
    bounds a hang: reaching it is a failure that names what never happened."""
    deadline = time.monotonic() + guard_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"gave up after {guard_s:g} s waiting for {what} (last answer: {value!r})"
            )
        time.sleep(tick_s)


def bash_wait_for(path: Path | str, guard_s: int = int(GUARD_S)) -> str:
    """A line of bash that waits until `path` exists: a gate the test opens when it is ready.
    After `guard_s` (a hang) it fails the job with exit status 1 and says so."""
    quoted = shlex.quote(str(path))
    return (
        f"for _ in $(seq {guard_s * 10}); do [ -e {quoted} ] && break; sleep 0.1; done; "
        f'[ -e {quoted} ] || {{ echo "hpcjob test: {path} never appeared" >&2; exit 1; }}'
    )


def read_until(stream: IO[Any], phrase: str, guard_s: float = GUARD_S) -> str:
    """Read a child process's pipe until `phrase` has appeared; return everything read. Reads the
    file descriptor itself, so `communicate()` afterwards returns the rest."""
    fd, wanted, data = stream.fileno(), phrase.encode(), b""
    deadline = time.monotonic() + guard_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while wanted not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"gave up after {guard_s:g} s waiting for {phrase!r}: {data!r}"
                )
            if selector.select(left):
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the output ended before {phrase!r} appeared: {data!r}")
                data += chunk
    return data.decode(errors="replace")


def local_job(home: Path, job_id: str) -> dict[str, Any]:
    """The embedded scheduler's record of a job ($HPCJOB_HOME/local/jobs/<id>.json; replaced
    atomically, so always whole), or {} before it exists."""
    path = home / "local" / "jobs" / f"{job_id}.json"
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def warn_job(home: Path, job_id: str) -> None:
    """What `#SBATCH --signal=B:USR1@…` does before the time limit: SIGUSR1 to the running job's
    batch shell (its process group leader), not to the rest of the job."""
    record = wait_until(
        lambda: (rec := local_job(home, job_id)).get("state") == "RUNNING" and rec,
        f"job {job_id} to run",
    )
    os.kill(int(record["pgid"]), signal.SIGUSR1)


def ledger_run(home: Path, run_id: str) -> dict[str, Any] | None:
    """A run as the ledger holds it, read directly and read-only (every command would refresh it
    first), or None before it is there."""
    path = home / "ledger.db"
    if not path.exists():
        return None
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    except sqlite3.OperationalError:  # not created yet by the first hpcjob
        return None
    finally:
        db.close()
    return dict(row) if row is not None else None


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of a process (R, S, Z …), or None when there is none."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat_line.rsplit(")", 1)[1].split()[0]


def process_gone(pid: int) -> bool:
    """Gone, or a zombie (dead, waiting for its parent to reap it)."""
    return process_state(pid) in (None, "Z")


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def invoke(*args: str) -> Result:
    """Run the CLI in-process, stdout and stderr apart."""
    from hpcjob.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def status_of(run_id: str) -> tuple[dict[str, Any], str]:
    """One run's row of `hpcjob status --json` (in-process), and what status said on stderr."""
    listed = invoke("status", "--json")
    assert listed.exit_code == 0, listed.stderr
    (run,) = [r for r in listed.json() if r["run_id"] == run_id]
    return run, listed.stderr


def run_hpcjob(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """Run hpcjob as a separate process, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "hpcjob", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def new_run(**overrides: object) -> NewRun:
    values: dict[str, object] = dict(
        profile="local",
        cluster="local:test",
        scheduler="local",
        workload="train",
        spec={"workload": "train", "resources": {"partition": None}},
        script="#!/bin/bash\necho hi\n",
        script_hash="abc",
        run_dir="/runs/x",
    )
    values.update(overrides)
    return NewRun(**values)  # type: ignore[arg-type]


def recorded(name: str) -> CommandResult:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return CommandResult(tuple(data["command"]), data["returncode"], data["stdout"], data["stderr"])


class ReplayShell:
    """Answers each command (by its program name) from a queue of recorded results."""

    def __init__(self, answers: Mapping[str, Sequence[CommandResult]]) -> None:
        self.answers = {k: list(v) for k, v in answers.items()}
        # The cluster's name is asked once per ledger, before the first run needs its key.
        self.answers.setdefault("scontrol", [recorded("scontrol_config")])
        self.calls: list[list[str]] = []
        self.files: dict[str, bytes] = {}

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        env: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> CommandResult:
        self.calls.append(list(argv))
        queue = self.answers.get(argv[0])
        if not queue:
            raise AssertionError(f"unexpected command {argv}")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def read_bytes(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        data = self.files[path][offset:]
        return data if limit is None else data[:limit]

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.files[path] = data

    def write_files(self, root: str, files: Mapping[str, tuple[bytes, int]]) -> None:
        for name, (data, _mode) in files.items():
            self.files[f"{root}/{name}"] = data

    def makedirs(self, path: str) -> None:
        pass

    def exists(self, path: str) -> bool:
        """A file, or a folder that holds one."""
        folder = path.rstrip("/") + "/"
        return path in self.files or any(name.startswith(folder) for name in self.files)

    def size(self, path: str) -> int | None:
        return len(self.files[path]) if path in self.files else None

    def expand_home(self, path: str) -> str:
        return path.replace("~", "/home/u", 1)

    def list_files(self, path: str, max_depth: int = 2) -> list[tuple[str, int]]:
        prefix = path.rstrip("/") + "/"
        return [(p[len(prefix) :], len(d)) for p, d in self.files.items() if p.startswith(prefix)]

    def commands(self) -> list[str]:
        return [argv[0] for argv in self.calls]


SECRET_ENV = {
    "HF_TOKEN": "hf_PLANTEDtokenDoNotLeak0001",
    "WANDB_API_KEY": "wandbPLANTEDkey0000000000000000000002",
    "AWS_SECRET_ACCESS_KEY": "awsPLANTEDsecret/0003+xyz",
    "GITHUB_TOKEN": "ghp_PLANTEDgithub0004",
    "DB_PASSWORD": "PLANTED-password-0005",
}


PASSPHRASE = "PLANTED passphrase 0006"


def make_key(folder: Path, passphrase: str) -> tuple[Path, list[str]]:
    """An encrypted ed25519 key and the lines of its body (what must never be copied)."""
    key = folder / "id_planted"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)], check=True
    )
    body = [ln for ln in key.read_text().splitlines() if ln and not ln.startswith("-----")]
    return key, body


def needles(key_body: Iterable[str], passphrase: str = PASSPHRASE) -> list[str]:
    return [*SECRET_ENV.values(), passphrase, *[line for line in key_body if len(line) > 20]]


def leaks(blobs: dict[str, bytes], secrets: list[str]) -> list[str]:
    found = []
    for where, data in blobs.items():
        for secret in secrets:
            if secret.encode() in data:
                found.append(f"{secret[:12]}… in {where}")
    return found


def artefacts(home: Path) -> dict[str, bytes]:
    """Every file under HPCJOB_HOME, plus a text dump of the ledger."""
    blobs = {str(p): p.read_bytes() for p in home.rglob("*") if p.is_file()}
    ledger = home / "ledger.db"
    if ledger.exists():
        db = sqlite3.connect(ledger)
        blobs["ledger dump"] = "\n".join(db.iterdump()).encode()
        db.close()
    return blobs


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


COURSE = Path(__file__).parent / "fixtures" / "course"
# The course project's hpcjob.toml: its trainer as the workload `train`, options mapped to keys.
COURSE_PROJECT_FILE = """\
[project]
name = "course"

[workloads.train]
command = ["python", "experiments/train.py", "--config", "{config}"]
config = "experiments/configs/train_config.yaml"
metrics = ["experiments/results/*/metrics.csv"]
artifacts = ["experiments/results/*/*.pt"]
time = "00:30:00"

[workloads.train.options]
epochs = "training.epochs"
lr = "training.learning_rate"
batch-size = "data.batch_size"
seed = "seed"
"""


def course_project(dest: Path, *, git: bool = True) -> Path:
    """A repository shaped like the MLOps course skeleton (src/ml_core, experiments/train.py with
    a YAML config, requirements.txt, pyproject.toml, a job.sh), committed to git unless `git` is
    off. Its trainer prints `Epoch N: Train_Loss = …, Val_Loss = …` and writes
    experiments/results/<name>/metrics.csv; it needs only PyYAML."""
    shutil.copytree(COURSE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for stored, name in (("pyproject.toml.txt", "pyproject.toml"), ("gitignore.txt", ".gitignore")):
        (dest / stored).rename(dest / name)
    (dest / "job.sh").chmod(0o755)
    if git:
        commit_all(dest, "skeleton")
    return dest


def commit_all(dest: Path, message: str) -> None:
    """A new git repository in `dest` with everything in it committed."""
    for argv in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=Student", "-c", "user.email=s@example.org", "commit", "-qm", message],
    ):
        subprocess.run(["git", "-C", str(dest), *argv], check=True, capture_output=True)


def job_template(home: Path, command: str) -> None:
    """A user template for gpu-check in HPCJOB_HOME whose job runs `command` (raw bash)."""
    folder = home / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}{% raw %}\n'
        + command
        + "\n{% endraw %}{% endblock %}\n"
    )


# A program for launcher tests: every rank adds its rank + 1 with gloo (CPU) and rank 0 prints
# the sum and the world size; run under torchrun (its environment gives the ranks).
ALLREDUCE_PROGRAM = """\
import os
import socket

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
node = os.environ.get("SLURM_NODEID", "?")
print(f"rank {rank} on {socket.gethostname()} node {node}", flush=True)
if rank == 0:
    print(f"allreduce sum={int(value.item())} world={world}", flush=True)
dist.destroy_process_group()
"""


# A user's own DDP program (issue 18): every rank prints its RANK/WORLD_SIZE line; the ranks
# all-reduce rank + 1 (4 ranks: 1 + 2 + 3 + 4 = 10) and rank 0 alone writes the metrics.
DDP_SUM_PROGRAM = """\
import json
import os

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
total = int(value.item())
env = {k: os.environ.get(k, "?") for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")}
print(f"ddp_sum rank {env['RANK']} local {env['LOCAL_RANK']} of {env['WORLD_SIZE']} "
      f"master {env['MASTER_ADDR']} node {os.environ.get('SLURM_NODEID', '?')}", flush=True)
if rank == 0:
    print(f"ddp_sum sum={total} world={world}", flush=True)
    with open(os.environ["HPCJOB_METRICS"], "a") as out:
        out.write(json.dumps({"step": 1, "sum": total, "world_size": world}) + "\\n")
dist.destroy_process_group()
"""


def ddp_project(dest: Path, launcher: str = "torchrun") -> Path:
    """A small git project whose workload `train` runs ddp_sum.py and declares `launcher`."""
    dest.mkdir(parents=True)
    (dest / "ddp_sum.py").write_text(DDP_SUM_PROGRAM)
    (dest / "hpcjob.toml").write_text(
        f'[workloads.train]\ncommand = ["python", "ddp_sum.py"]\nlauncher = "{launcher}"\n'
    )
    commit_all(dest, "ddp")
    return dest
