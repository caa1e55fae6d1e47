"""Issue 19 over SSH and on the real Slurm: `hpcjob submit --wait` of a trivial job against
`sbatch --wait` (target ≤ 0.5×), how soon `hpcjob logs --follow` shows a line the job writes
(target ≤ 0.5 s), and `hpcjob status` over SSH with one running job against `ssh host squeue`
(target ≤ 1.2×), with where each one's time goes.

Needs the test cluster and its sshd (`tests/cluster/start.sh`) and runs as root on that machine,
holding the cluster lock: `flock /tmp/hpcjob-cluster.lock .venv/bin/python bench/remote.py`.
Writes "## Issue 19: over SSH and on the real Slurm" into bench/RESULTS.md. Each measurement
interleaves what it compares (medians of REPEATS runs), so the machine's load, shared with other
work, falls on both sides alike.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm as slurm_bench
import ssh as ssh_bench
from startup import RESULTS, machine, write_section

HEADING = "## Issue 19: over SSH and on the real Slurm"
REPEATS = int(os.environ.get("BENCH_REPEATS", "9"))
FOLLOWS = int(os.environ.get("BENCH_FOLLOWS", "7"))
WAIT_TARGET, FOLLOW_TARGET_S, STATUS_TARGET, PROJECT_TARGET = 0.5, 0.5, 1.2, 2.0
# The job `logs --follow` watches: it waits for a file the bench creates, then writes a line with
# the time it wrote it (this machine's clock, the bench's too).
FOLLOW_JOB = 'while [ ! -e go ]; do sleep 0.01; done\necho "mark $(date +%s.%N)"\nsleep 1\n'
# `hpcjob status` as shipped, and with one saving undone, in the same run.
WITHOUT_QUICK_ACK = (
    "import sys, hpcjob.ssh.session as s\n"
    "init = s.SSHShell.__init__\n"
    "def plain(self, *a, **k):\n    init(self, *a, **k)\n    self.quick_ack = False\n"
    "s.SSHShell.__init__ = plain\n"
    "sys.argv = ['hpcjob', *sys.argv[1:]]\nimport hpcjob.cli\nhpcjob.cli.main()\n"
)
WITH_METADATA = (
    "import sys, importlib.metadata\nsys.argv = ['hpcjob', *sys.argv[1:]]\n"
    "import hpcjob.cli\nhpcjob.cli.main()\n"
)


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "NOT met"


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}"


# ---------------------------------------------------------------- submit --wait on the real Slurm
def submit_wait(root: Path) -> list[str]:
    """`hpcjob submit --wait` and `sbatch --wait` of the same trivial script, interleaved; where
    hpcjob's time goes, from the PATH shims' log and the exit-status file's time."""
    bench = slurm_bench.Bench(root)
    bench.template("true")
    rendered = bench.hpcjob("render", "gpu-check", "--partition", "rome").stdout
    plain = bench.home / "plain"
    plain.mkdir()
    run_dir = rendered.split("HPCJOB_RUN_DIR=", 1)[1].split("\n", 1)[0].strip("'")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (plain / "job.sh").write_text(rendered)
    bench.hpcjob("submit", "gpu-check", "--partition", "rome", "--wait")  # sinfo cached, warm
    ours: list[float] = []
    theirs: list[float] = []
    steps: dict[str, list[float]] = {k: [] for k in ("start", "job", "notice", "end")}
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run(["sbatch", "--wait", "--quiet", "job.sh"], check=True, cwd=plain)
        theirs.append(time.perf_counter() - start)
        bench.log.unlink(missing_ok=True)
        wall0, start = time.time(), time.perf_counter()
        done = bench.hpcjob("submit", "gpu-check", "--partition", "rome", "--wait", "--json")
        ours.append(time.perf_counter() - start)
        row = json.loads(done.stdout)
        assert row["state"] == "COMPLETED", done.stderr
        calls = [line.split() for line in bench.log.read_text().splitlines()]
        sbatch = next(float(t) for t, c in calls if c == "sbatch")
        ended = os.path.getmtime(Path(row["run_dir"]) / "exit-status")
        seen = min((float(t) for t, c in calls if c == "squeue" and float(t) >= ended), default=0)
        steps["start"].append(sbatch - wall0)
        steps["job"].append(ended - sbatch)
        steps["notice"].append(seen - ended)
        steps["end"].append(wall0 + ours[-1] - seen)
    commands = bench.calls()
    ratio = statistics.median(ours) / statistics.median(theirs)
    return [
        f"**`submit --wait`, trivial job, real Slurm** ({REPEATS} each, interleaved, a new "
        f"process each): `hpcjob submit --wait` {ms(ours)} ms "
        f"({min(ours) * 1000:.0f}–{max(ours) * 1000:.0f}), `sbatch --wait` {ms(theirs)} ms "
        f"({min(theirs) * 1000:.0f}–{max(theirs) * 1000:.0f}) → **{ratio:.2f}×** (target ≤ "
        f"{WAIT_TARGET}×: {verdict(ratio, WAIT_TARGET)}).",
        "",
        "Where `hpcjob submit --wait` spends its time (medians, ms): start-up, ledger, render and "
        f"staging until sbatch {ms(steps['start'])}; Slurm starting and running the job until its "
        f"exit-status file {ms(steps['job'])}; the file seen and squeue asked "
        f"{ms(steps['notice'])}; squeue, harvest, the row and exit {ms(steps['end'])}. "
        f"Scheduler commands of the last run: {dict(commands)} (no sacct: its record, seconds "
        "behind, is left to the next `status`). `sbatch --wait` first looks after 2 s.",
    ]


# ------------------------------------------------------------------------------ logs --follow
def read_until(
    proc: subprocess.Popen[bytes], marker: bytes, deadline: float
) -> tuple[bytes, float]:
    """Read the process's stdout (unbuffered: select() sees only the pipe) until a line holds
    `marker`: that line and when it came."""
    assert proc.stdout is not None
    fd, seen = proc.stdout.fileno(), b""
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            break
        seen += chunk
        for line in seen.splitlines(keepends=True):
            if marker in line and line.endswith(b"\n"):
                return line, time.time()
    raise SystemExit(f"`logs --follow` never printed {marker!r}")


def follow_latency(argv: list[str], env: dict[str, str], home: Path, local_dir: Any) -> float:
    """Submit the follow job, follow it, let it write its line: seconds from the job's write to
    the line on `logs --follow`'s stdout."""
    (home / "templates" / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}' + FOLLOW_JOB + "{% endblock %}"
    )
    done = subprocess.run([*argv, "submit", "gpu-check", "--json"], env=env, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr.decode())
    row = json.loads(done.stdout)
    proc = subprocess.Popen(
        [*argv, "logs", "--follow", row["run_id"]], env=env, bufsize=0,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        read_until(proc, b"== workload", time.time() + 120)  # running, and followed
        (local_dir(row["run_dir"]) / "go").touch()
        line, seen = read_until(proc, b"mark ", time.time() + 30)
    finally:
        proc.terminate()
        proc.wait()
        (local_dir(row["run_dir"]) / "go").touch()  # a job still waiting ends
    return seen - float(line.split()[1])


def follow_part(root: Path, env: dict[str, str]) -> list[str]:
    local = slurm_bench.Bench(root / "follow-local")
    over_ssh = ssh_bench.Bench(root, env, "follow-ssh")
    home = Path(os.path.expanduser(f"~{env['HPCJOB_TEST_USER']}"))
    py = [sys.executable, "-m", "hpcjob"]
    found: dict[str, list[float]] = {"on the login node (local Slurm)": [], "over SSH": []}
    try:
        for _ in range(FOLLOWS):
            found["on the login node (local Slurm)"].append(
                follow_latency(py, local.env, local.home, Path)
            )
            found["over SSH"].append(
                follow_latency(
                    py,
                    over_ssh.env,
                    over_ssh.home,
                    lambda d: Path(d.replace("~", str(home), 1)),
                )
            )
    finally:
        ssh_bench.clean_up(over_ssh, env["HPCJOB_TEST_USER"])
    lines = [
        f"**`logs --follow`**: a job waits for a file, then writes a line with its time; "
        f"`hpcjob logs --follow` prints it (ms from the job's write to the line on its stdout, "
        f"{FOLLOWS} jobs each, alternating; target ≤ {FOLLOW_TARGET_S * 1000:.0f} ms):",
        "",
        "| where | median | max |",
        "|---|---:|---:|",
    ]
    for where, values in found.items():
        lines.append(f"| {where} | {ms(values)} | {max(values) * 1000:.0f} |")
    worst = max(max(v) for v in found.values())
    lines += [
        "",
        f"Slowest of all: {worst * 1000:.0f} ms (target ≤ {FOLLOW_TARGET_S * 1000:.0f} ms: "
        f"{verdict(worst, FOLLOW_TARGET_S)}). `follow` reads new output five times a second "
        "(a stat and a read by offset; over SSH, SFTP requests on the open connection).",
    ]
    return lines


# --------------------------------------------------------------------------- status over SSH
def status_part(root: Path, env: dict[str, str]) -> list[str]:
    bench = ssh_bench.Bench(root, env, "status")
    try:
        blocker = json.loads(bench.submit()["stdout"])
        ssh_bench.wait_running([blocker["job_id"]])
        return status_measure(bench, env)
    finally:
        ssh_bench.clean_up(bench, env["HPCJOB_TEST_USER"])


def status_measure(bench: Any, env: dict[str, str]) -> list[str]:
    key, kh = env["HPCJOB_TEST_SSH_KEY"], env["HPCJOB_TEST_KNOWN_HOSTS"]
    plain = ["ssh", "-p", env["HPCJOB_TEST_SSH_PORT"], "-i", key, "-o", f"UserKnownHostsFile={kh}"]
    plain += ["-o", "BatchMode=yes", f"{env['HPCJOB_TEST_USER']}@{env['HPCJOB_TEST_SSH_HOST']}"]
    py = sys.executable
    status = ["status", "--json"]
    cmds = {
        "`ssh … squeue`": ([*plain, "squeue"], bench.env),
        "`ssh … true`": ([*plain, "true"], bench.env),
        "`hpcjob status`, one running job": (bench.argv(*status), bench.env),
        "the same without TCP_QUICKACK": ([py, "-c", WITHOUT_QUICK_ACK, *status], bench.env),
        "the same with importlib.metadata": ([py, "-c", WITH_METADATA, *status], bench.env),
        "`python -c pass`": ([py, "-c", "pass"], bench.env),
        "`python -c 'import hpcjob.cli'`": ([py, "-c", "import hpcjob.cli"], bench.env),
        "`python -c 'import hpcjob.ssh.connect'`": (
            [py, "-c", "import hpcjob.ssh.connect"], bench.env,
        ),
    }  # fmt: skip
    ssh_bench.REPEATS = REPEATS
    times = ssh_bench.interleaved(cmds)
    med = {name: statistics.median(v) * 1000 for name, v in times.items()}
    base = med["`ssh … squeue`"]
    ours = med["`hpcjob status`, one running job"]
    records = [bench.count(*status) for _ in range(5)]

    def part(k: str) -> float:
        return statistics.median(r[k] for r in records) * 1000

    def count(k: str) -> str:
        return f"{statistics.median(r[k] for r in records):g}"

    wall, total, imported = part("t_wall"), part("t_total"), part("t_import")
    before = part("t_first") - imported
    after = total - part("t_last")
    ratio = ours / base
    floor = ours - part("t_connect")
    return [
        f"**`hpcjob status` over SSH, one running job** ({REPEATS} runs of each, interleaved, a "
        "new process each):",
        "",
        "| command | median ms | min–max ms | × `ssh … squeue` |",
        "|---|---:|---:|---:|",
        *[
            f"| {n} | {med[n]:.0f} | {min(v) * 1000:.0f}–{max(v) * 1000:.0f} | "
            f"{med[n] / base:.2f} |"
            for n, v in times.items()
        ],
        "",
        f"`hpcjob status`: {ours:.0f} ms against `ssh … squeue` {base:.0f} ms → **{ratio:.2f}×** "
        f"(target ≤ {STATUS_TARGET}×: {verdict(ratio, STATUS_TARGET)}).",
        "",
        f"Where its time goes (5 driver runs, medians of {wall:.0f} ms): interpreter start and "
        f"exit {wall - total:.0f} ms; importing hpcjob.cli + hpcjob.ssh (paramiko) "
        f"{imported:.0f} ms; config, ledger and lazy imports {before:.0f} ms; connecting (TCP, "
        f"key exchange, login) {part('t_connect'):.0f} ms; the one remote command (squeue) "
        f"{part('t_commands'):.0f} ms; SFTP {part('t_files'):.0f} ms; output and closing "
        f"{after:.0f} ms. Channels {count('channels')}, commands {count('commands')}, SFTP "
        f"requests {count('sftp_requests')}. Without its own handshake (a connection kept "
        f"between invocations, as OpenSSH's ControlMaster does) it would take about "
        f"{floor:.0f} ms ({floor / base:.2f}×).",
    ]


# ---------------------------------------------------------------------------- project submit
def project_line() -> str:
    """The project-submit ratio as bench/project_submit.py last wrote it into RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    found = [line for line in text.splitlines() if line.startswith("Target: a project submit")]
    if not found:
        return "**Project submit over SSH**: run `bench/project_submit.py` (not measured yet)."
    return (
        "**Project submit over SSH** (bench/project_submit.py, its own section below: "
        f'"Submitting your own project over SSH"): {found[0]}'
    )


def main() -> None:
    env = ssh_bench.cluster_env()
    started, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder in ("wait", "follow-local"):
            (root / folder).mkdir()
        parts = [submit_wait(root / "wait"), follow_part(root, env), status_part(root, env)]
    load_after = os.getloadavg()
    body = [
        HEADING,
        "",
        f"Machine: {machine()}; the test cluster (Slurm 22.05, sshd on 127.0.0.1:2222, user "
        "hpctest, key login). Command: `flock /tmp/hpcjob-cluster.lock .venv/bin/python "
        f"bench/remote.py` (as root). Load average (1, 5, 15 min) before "
        f"{', '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{', '.join(f'{x:.2f}' for x in load_after)}: the machine's 2 cores are shared with "
        "other work, hence the ranges; each comparison is interleaved in one run.",
        "",
    ]
    for part in parts:
        body += [*part, ""]
    body += [project_line(), "", f"Whole benchmark: {time.perf_counter() - started:.0f} s.", ""]
    text = "\n".join(body)
    print(text)
    write_section(text, HEADING)


if __name__ == "__main__":
    main()
