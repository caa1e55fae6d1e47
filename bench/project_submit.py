"""Submitting your own project over SSH (issue 15): a project of 1,000 files / 20 MiB against a
built-in workload plus the time the bytes alone take to travel.

Needs the test cluster and its sshd (`sudo tests/cluster/start.sh`); run as root on that
machine. One command: `.venv/bin/python bench/project_submit.py`. Through a relay adding 10 ms
(and 0 ms) of round-trip time (bench/staging.py's `DelayRelay`), each a fresh process
(`python -m hpcjob submit … --json`), interleaved:

1. `submit gpu-check` (built in) from an empty folder;
2. `submit train` in the project with new code (one file changed since the last submit, not
   committed), so the snapshot is uploaded;
3. the same with the code unchanged (the snapshot is on the cluster already: no upload);
4. the bytes alone: the same snapshot written with one `SSHShell.write_files` (one tar) on an
   open connection, in a process of its own (the relay's threads run in this one);
5. of that, the unpacking alone: the same tar through `UNPACK_SCRIPT` as the test user on this
   machine, without SSH (the cluster's disk).

Target: t(2) ≤ 2 × (t(1) + t(4)). Driver runs of (1)–(3) show where the time goes. The
jobs are cancelled and the cluster folders removed afterwards. Writes "## Submitting your own
project over SSH (issue 15)" into bench/RESULTS.md.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from snapshot import GIT_ENV, MIB, project_files  # noqa: E402
from ssh import CLUSTER, cluster_env  # noqa: E402
from staging import DelayRelay  # noqa: E402
from startup import machine, write_section  # noqa: E402

from hpcjob.project.snapshot import take_snapshot  # noqa: E402
from hpcjob.shell import UNPACK_SCRIPT, tar_payload  # noqa: E402

HEADING = "## Submitting your own project over SSH (issue 15)"
RTTS_MS = (10, 0)
REPEATS = int(os.environ.get("BENCH_REPEATS", "9"))
PROFILED = 3  # driver runs of each project submit, for where the time goes
TARGET = 2.0
BUILTIN, NEW, SAME, BYTES, UNPACK = (
    "`submit gpu-check` (built in), empty folder",
    "`submit train`, new code (snapshot uploaded)",
    "`submit train`, code unchanged (snapshot on the cluster)",
    "the bytes alone: one `write_files` of the snapshot",
    "of that, unpacking alone: `UNPACK_SCRIPT` on the cluster's side, no SSH",
)
PROJECT_FILE = '[project]\nname = "bench"\n\n[workloads.train]\ncommand = ["python", "train.py"]\n'
TRAIN = "import time\n\nprint('training')  # round {}\ntime.sleep(1)\n"

# Runs `hpcjob <args>` in this process with the steps of a submit timed (exclusive of each other:
# a step's time leaves out the steps inside it) and counted, and writes them as JSON.
DRIVER = r"""
import atexit, json, subprocess, sys, time
t0 = time.perf_counter()
out_path = sys.argv[1]
import hpcjob.cli
import hpcjob.project.snapshot, hpcjob.run.origin, hpcjob.run.project, hpcjob.shell
import hpcjob.ssh.session
from hpcjob.ssh.session import SSHShell
spent, calls, stack = {"import": time.perf_counter() - t0}, {}, []

def timed(owner, name, step):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        stack.append(0.0)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            total = time.perf_counter() - start
            inner = stack.pop()
            spent[step] = spent.get(step, 0.0) + total - inner
            calls[step] = calls.get(step, 0) + 1
            if stack:
                stack[-1] += total
    setattr(owner, name, wrapper)

snapshot, session = hpcjob.project.snapshot, hpcjob.ssh.session
timed(snapshot, "take_snapshot", "snapshot: list, stat, read")
timed(snapshot, "_git_paths", "snapshot: git ls-files")
timed(snapshot, "snapshot_hash", "snapshot: hash")
timed(hpcjob.run.origin, "git_state", "provenance: git rev-parse, status, diff")
timed(hpcjob.run.project, "_git_top", "git rev-parse --show-toplevel")
timed(session, "tar_payload", "tar build")
timed(SSHShell, "_open", "connect (TCP, key exchange, login)")
timed(SSHShell, "write_files", "write_files (send, unpack)")
timed(SSHShell, "exists", "SFTP: exists")
timed(SSHShell, "expand_home", "SFTP: home folder")
timed(SSHShell, "_sftp", "SFTP: open session")
timed(SSHShell, "run", "other remote commands (sbatch)")
git = []
run = subprocess.run
def counted_run(argv, *args, **kwargs):
    if argv and argv[0] == "git":
        git.append(" ".join(str(a) for a in argv[3:5]))
    return run(argv, *args, **kwargs)
subprocess.run = counted_run
shells = []
init = SSHShell.__init__
def new_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    shells.append(self)
SSHShell.__init__ = new_init

@atexit.register
def dump():
    stats = {}
    for shell in shells:
        for key, value in shell.stats().items():
            stats[key] = stats.get(key, 0) + value
    record = {"spent": spent, "calls": calls, "git": git, "ssh": stats,
              "t_total": time.perf_counter() - t0}
    with open(out_path, "w") as out:
        json.dump(record, out)

sys.argv = ["hpcjob", *sys.argv[2:]]
hpcjob.cli.main()
"""

# Times one `SSHShell.write_files` of the project's snapshot on an open connection: the
# connection and the snapshot are made first, untimed. Prints milliseconds.
TRANSFER = r"""
import json, sys, time
from pathlib import Path
from hpcjob.project.snapshot import take_snapshot
from hpcjob.ssh.connect import ConnectOptions, ssh_shell_for
profile, project, dest = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
files = take_snapshot(project).files
with ssh_shell_for(profile, ConnectOptions(interactive=False)) as shell:
    shell.run(["true"])
    start = time.perf_counter()
    shell.write_files(dest, files)
    print((time.perf_counter() - start) * 1000)
"""


def make_project(root: Path) -> int:
    """The snapshot bench's project less two source files, plus hpcjob.toml and train.py: 1,000
    files, 20 MiB, committed to git. Returns its size in bytes."""
    files = project_files()
    for rel in sorted(files)[-2:]:  # two source files (pkg19/…)
        del files[rel]
    files["hpcjob.toml"] = PROJECT_FILE.encode()
    files["train.py"] = TRAIN.format(0).encode()
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    git = ["git", "-C", str(root)]
    for argv in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=bench", "-c", "user.email=b@example.org", "commit", "-qm", "code"],
    ):
        subprocess.run([*git, *argv], check=True, env=GIT_ENV, capture_output=True)
    assert len(files) == 1000, len(files)
    return sum(len(content) for content in files.values())


class Session:
    """One added RTT: a relay, an HPCJOB_HOME whose profile points at it, the timed commands."""

    def __init__(self, tmp: Path, env: dict[str, str], rtt_ms: int, remote: str) -> None:
        self.rtt_ms, self.tmp, self.remote = rtt_ms, tmp, remote
        self.user = env["HPCJOB_TEST_USER"]
        target = (env["HPCJOB_TEST_SSH_HOST"], int(env["HPCJOB_TEST_SSH_PORT"]))
        self.relay = DelayRelay(target, rtt_ms)
        home = tmp / f"home-{rtt_ms}"
        home.mkdir()
        known_hosts = home / "known_hosts"
        host_key = Path(env["HPCJOB_TEST_SSH_HOST_KEY_PUB"]).read_text().split()[:2]
        known_hosts.write_text(f"[127.0.0.1]:{self.relay.port} {' '.join(host_key)}\n")
        pythons = sorted(glob.glob(str(CLUSTER / "venvs" / "*" / "bin" / "python")))
        if not pythons:
            raise SystemExit(f"No venv for the test user under {CLUSTER / 'venvs'}.")
        self.profile = {
            "host": "127.0.0.1",
            "port": self.relay.port,
            "user": env["HPCJOB_TEST_USER"],
            "identity_file": env["HPCJOB_TEST_SSH_KEY"],
            "known_hosts": str(known_hosts),
        }
        (home / "config.toml").write_text(
            "[profiles.bench]\n"
            'scheduler = "slurm"\n'
            + "".join(f"{key} = {json.dumps(value)}\n" for key, value in self.profile.items())
            + f'python = "{pythons[0]}"\n'
            f'remote_root = "{remote}/runs-{rtt_ms}"\n'
        )
        self.env = {**os.environ, "HPCJOB_HOME": str(home), "HPCJOB_PROFILE": "bench"}
        self.job_ids: list[str] = []
        self.transfers = 0

    def submit(self, cwd: Path, *args: str) -> float:
        """`hpcjob submit ARGS --time 1 --json` in a fresh process; its wall time in ms."""
        argv = [sys.executable, "-m", "hpcjob", "submit", *args, "--time", "1", "--json"]
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=self.env, capture_output=True, text=True)
        ms = (time.perf_counter() - start) * 1000
        self._record(done, args)
        return ms

    def profiled(self, cwd: Path, *args: str) -> dict[str, Any]:
        """The same submit through DRIVER: its steps' times, SSH counters, git calls."""
        out = self.tmp / f"driver-{uuid.uuid4().hex[:8]}.json"
        argv = [sys.executable, "-c", DRIVER, str(out), "submit", *args, "--time", "1", "--json"]
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=self.env, capture_output=True, text=True)
        wall = (time.perf_counter() - start) * 1000
        self._record(done, args)
        record: dict[str, Any] = json.loads(out.read_text())
        record["t_wall"] = wall / 1000
        return record

    def _record(self, done: subprocess.CompletedProcess[str], args: tuple[str, ...]) -> None:
        if done.returncode != 0:
            raise SystemExit(f"hpcjob submit {' '.join(args)} failed:\n{done.stderr}")
        self.job_ids.append(str(json.loads(done.stdout)["job_id"]))

    def transfer(self, project: Path) -> float:
        self.transfers += 1
        dest = f"{self.remote}/bytes-{self.rtt_ms}/{self.transfers}"
        argv = [sys.executable, "-c", TRANSFER, json.dumps(self.profile), str(project), dest]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"write_files failed:\n{done.stderr}")
        return float(done.stdout.split()[-1])

    def unpack(self, payload: bytes) -> float:
        """The tar `write_files` sends, unpacked by the test user on this machine (no SSH): the
        cluster side's share of the bytes' time (the disk, tar, the moves into place)."""
        self.transfers += 1
        home = f"/home/{self.user}"
        dest = f"{self.remote.replace('~', home, 1)}/unpack-{self.rtt_ms}/{self.transfers}"
        argv = ["runuser", "-u", self.user, "--", "bash", "-c", UNPACK_SCRIPT, "unpack", dest]
        start = time.perf_counter()
        subprocess.run(argv, input=payload, check=True, cwd="/")
        return (time.perf_counter() - start) * 1000


def change(project: Path, round_no: int) -> None:
    """New code: train.py differs from every earlier submit (left uncommitted, as while working)."""
    (project / "train.py").write_text(TRAIN.format(round_no))


def measure(session: Session, project: Path, empty: Path) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in (BUILTIN, NEW, SAME, BYTES, UNPACK)}
    payload = tar_payload(take_snapshot(project).files)
    round_no = 0

    def next_code() -> None:
        nonlocal round_no
        round_no += 1
        change(project, round_no)

    # Warm-up (untimed): the remote folders, the ledger, the page cache, each path once.
    session.submit(empty, "gpu-check")
    next_code()
    session.submit(project, "train")
    session.transfer(project)
    steps: list[tuple[str, Callable[[], float]]] = [
        (BUILTIN, lambda: session.submit(empty, "gpu-check")),
        (NEW, lambda: session.submit(project, "train")),
        (SAME, lambda: session.submit(project, "train")),
        (BYTES, lambda: session.transfer(project)),
        (UNPACK, lambda: session.unpack(payload)),
    ]
    for _ in range(REPEATS):
        for name, step in steps:
            if name == NEW:
                next_code()
            # No step pays for writing back the 20 MiB the one before it wrote.
            os.sync()
            times[name].append(step())
    profiles: dict[str, list[dict[str, Any]]] = {NEW: [], SAME: [], BUILTIN: []}
    for _ in range(PROFILED):
        next_code()
        profiled = (
            (NEW, project, "train"),
            (SAME, project, "train"),
            (BUILTIN, empty, "gpu-check"),
        )
        for name, cwd, workload in profiled:
            os.sync()
            profiles[name].append(session.profiled(cwd, workload))
    return {"times": times, "profiles": profiles}


def clean_up(sessions: list[Session], user: str, remote: str) -> None:
    """Cancel this benchmark's jobs (only its own: others share the test user) and remove its
    folders on the cluster."""
    jobs = sorted({job for s in sessions for job in s.job_ids})
    if jobs:
        subprocess.run(["runuser", "-u", user, "--", "scancel", *jobs], check=False)
    folder = remote.replace("~", f"/home/{user}", 1)
    subprocess.run(["runuser", "-u", user, "--", "rm", "-rf", folder], check=False)


def main() -> None:
    env = cluster_env()
    user = env["HPCJOB_TEST_USER"]
    remote = f"~/hpcjob-project-bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    results: dict[int, dict[str, Any]] = {}
    sessions: list[Session] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        project, empty = tmp / "project", tmp / "empty"
        project.mkdir()
        empty.mkdir()
        size = make_project(project)
        try:
            for rtt in RTTS_MS:
                session = Session(tmp, env, rtt, remote)
                sessions.append(session)
                try:
                    results[rtt] = measure(session, project, empty)
                finally:
                    session.relay.close()
                print(summary(rtt, results[rtt]["times"]), flush=True)
        finally:
            clean_up(sessions, user, remote)
    load = (load_before, os.getloadavg()[0])
    body = report(results, size, time.perf_counter() - started, load)
    print(body)
    write_section(body, HEADING)


def summary(rtt: int, times: dict[str, list[float]]) -> str:
    med = {name: statistics.median(values) for name, values in times.items()}
    ratio = med[NEW] / (med[BUILTIN] + med[BYTES])
    verdict = "met" if ratio <= TARGET else "NOT met"
    return (
        f"rtt {rtt} ms: "
        + ", ".join(f"{v:.0f}" for v in med.values())
        + f" → new code / (built in + bytes) = {ratio:.2f} (target ≤ {TARGET:g}: {verdict})"
    )


def ratio_of(times: dict[str, list[float]]) -> float:
    med = {name: statistics.median(values) for name, values in times.items()}
    return med[NEW] / (med[BUILTIN] + med[BYTES])


STARTUP, OTHER = "start-up, imports, exit", "the rest: config, ledger, render, output"


def breakdown(records: list[dict[str, Any]]) -> dict[str, str]:
    """Where a submit's time goes (driver runs): the median ms of each step, `ms (calls)`."""
    steps = {step for r in records for step in r["spent"] if step != "import"}
    shown: dict[str, str] = {}
    for step in steps:
        ms = statistics.median(r["spent"].get(step, 0.0) for r in records) * 1000
        calls = statistics.median(r["calls"].get(step, 0) for r in records)
        shown[step] = f"{ms:.0f} ({calls:.0f})"
    startup = [r["t_wall"] - r["t_total"] + r["spent"]["import"] for r in records]
    rest = [r["t_total"] - sum(r["spent"].values()) for r in records]
    shown[STARTUP] = f"{statistics.median(startup) * 1000:.0f}"
    shown[OTHER] = f"{statistics.median(rest) * 1000:.0f}"
    shown["wall"] = f"**{statistics.median(r['t_wall'] for r in records) * 1000:.0f}**"
    ssh = records[0]["ssh"]
    shown["SSH commands / SFTP requests"] = f"{ssh['commands']} / {ssh['sftp_requests']}"
    shown["git calls"] = str(len(records[0]["git"]))
    return shown


LAST = (STARTUP, OTHER, "wall", "SSH commands / SFTP requests", "git calls")


def _order(step: str) -> tuple[int, str]:
    return (0 if step.startswith(("snapshot", "git", "provenance")) else 1, step)


def report(
    results: dict[int, dict[str, Any]], size: int, seconds: float, load: tuple[float, float]
) -> str:
    rows: list[str] = []
    verdicts: list[str] = []
    uploads: list[str] = []
    for rtt in sorted(results):
        times = results[rtt]["times"]
        med = {name: statistics.median(values) for name, values in times.items()}
        for name, values in times.items():
            rows.append(
                f"| {rtt} | {name} | {med[name]:.0f} | {min(values):.0f}–{max(values):.0f} |"
            )
        ratio = ratio_of(times)
        rows.append(f"| {rtt} | **ratio** new code / (built in + bytes) | {ratio:.2f} | |")
        verdict = "met" if ratio <= TARGET else "missed"
        verdicts.append(f"{rtt} ms: {ratio:.2f} ({verdict})")
        uploads.append(
            f"{rtt} ms: new − unchanged {med[NEW] - med[SAME]:.0f} ms, the bytes alone "
            f"{med[BYTES]:.0f} ms (unpacking alone {med[UNPACK]:.0f} ms)"
        )
    columns = [(rtt, name) for rtt in sorted(results) for name in (BUILTIN, NEW, SAME)]
    shown = {col: breakdown(results[col[0]]["profiles"][col[1]]) for col in columns}
    steps = sorted({step for col in columns for step in shown[col]} - set(LAST), key=_order)
    short = {BUILTIN: "built in", NEW: "new code", SAME: "unchanged"}
    profile_rows = [
        f"| {step} | " + " | ".join(shown[col].get(step, "–") for col in columns) + " |"
        for step in [*steps, *LAST]
    ]
    lines = [
        HEADING,
        "",
        f"Machine: {machine()}; the test cluster (Slurm 22.05) with its sshd on 127.0.0.1, user "
        "hpctest, through a relay adding the round-trip time shown (latency only, bench/staging.py"
        "'s `DelayRelay`). Command: `.venv/bin/python bench/project_submit.py` (as root, "
        "cluster running, under `flock /tmp/hpcjob-cluster.lock`).",
        "",
        f"The project: 1,000 files, {size / MIB:.1f} MiB (the code-snapshot bench's files, "
        "hpcjob.toml with `train = python train.py`), in git; new code = train.py changed and "
        "left uncommitted before the submit. Each submit is `python -m hpcjob submit … --time 1 "
        f"--json` in a fresh process (one SSH connection each); {REPEATS} rounds, interleaved, "
        "after one untimed warm-up of each, `sync` before each (none pays for the writeback of "
        "the one before); medians. The bytes alone: the same snapshot through one "
        "`SSHShell.write_files` (one tar on one command) on a connection already open.",
        "",
        "| added RTT (ms) | what | median ms | min–max ms |",
        "|---:|---|---:|---:|",
        *rows,
        "",
        f"Target: a project submit with new code ≤ {TARGET:g} × (a built-in submit + the "
        f"transfer time of its bytes) → measured {'; '.join(verdicts)}.",
        "",
        f"What new code adds to a submit against what its bytes take alone: {'; '.join(uploads)}. "
        "Sending and unpacking 20 MiB dominate; the unpacking (tar into a temporary folder, "
        "then into place) is the cluster's disk, and varies with what else writes to it.",
        "",
        f"Where the time goes: {PROFILED} more runs of each through a driver that times the "
        "steps of a submit in its process (ms, each step without the steps inside it; "
        "calls in brackets; medians):",
        "",
        "| step | " + " | ".join(f"{rtt} ms, {short[name]}" for rtt, name in columns) + " |",
        "|---|" + "---:|" * len(columns),
        *profile_rows,
        "",
        "`SFTP: open session` holds the first channel of each connection, which waits about 40 ms "
        "beyond its round trips for sshd (Nagle) to get a delayed ACK — here the relay's: its "
        "socket to sshd ACKs late, as hpcjob's own no longer does (TCP_QUICKACK, issue 19), so "
        "both sides of the ratio pay it. A project submit adds to a built-in one: "
        "the snapshot (git ls-files, reading and hashing 20 MiB), the provenance git calls, the "
        "marker's `exists` (one SFTP request) and, with new code, the tar of the snapshot and "
        "its own `write_files` command.",
        "",
        f"Whole benchmark: {seconds:.0f} s; the machine's load average (1 min) {load[0]:.1f} "
        f"before, {load[1]:.1f} after: other work shared its cores, hence the wide ranges.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.umask(0o022)
    main()
