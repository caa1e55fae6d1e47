"""What hpcjob costs over SSH (issue 5): connections, sessions and round trips per command
(`submit`, `status` with 1, 51 and 102 tracked unfinished jobs and with 2 running, `logs`), and
the time of `hpcjob status` against a plain `ssh host squeue`, with the import cost of
`hpcjob.ssh`.

Needs the test cluster and its sshd (`sudo tests/cluster/start.sh`) and runs as root on that
machine. One command: `.venv/bin/python bench/ssh.py`. Writes "## SSH (issue 5)" into
bench/RESULTS.md. Counters come from `SSHShell.stats()`, read inside each CLI process by a small
driver that runs `hpcjob.cli.main()` with `SSHShell.close` wrapped.
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
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import machine, write_section

HEADING = "## SSH (issue 5)"
CLUSTER = Path("/var/tmp/hpcjob-test-cluster")
REPEATS = 9  # timed runs of each command, interleaved
COUNTED = 3  # counted runs of status and logs (the counts are the same each time)
PENDING = 50
PASS = "`python -c pass`"
PARAMIKO = "`python -c 'import paramiko'`"
SSH_MODULE = "`python -c 'import hpcjob.ssh.connect'`"
STATUS_50 = "`hpcjob status`, blocker + 50 pending"
KEYS = ("connections", "channels", "commands", "sftp_requests", "round_trips")

# Runs `hpcjob <args>` in this process and writes the SSH counters of every SSHShell it made,
# with the time spent connecting, in commands and in file operations (exclusive of each other).
DRIVER = r"""
import atexit, json, sys, time
from collections import Counter
t0 = time.perf_counter()
record_path = sys.argv[1]
import hpcjob.cli
import hpcjob.ssh  # imports paramiko as hpcjob does (without invoke, importlib.metadata)
import paramiko
from hpcjob.ssh.session import SSHShell
imported = time.perf_counter() - t0
shells, closed, stack, kinds = [], {}, [], Counter()
spent = {"t_connect": 0.0, "t_commands": 0.0, "t_files": 0.0}
edges = {}  # first SSH operation's start, last one's end (from t0)

def timed(name, key):
    original = getattr(SSHShell, name)
    def wrapper(self, *args, **kwargs):
        stack.append(0.0)
        start = time.perf_counter()
        edges.setdefault("first", start - t0)
        try:
            return original(self, *args, **kwargs)
        finally:
            end = time.perf_counter()
            total, inner = end - start, stack.pop()
            spent[key] += total - inner
            edges["last"] = end - t0
            if stack:
                stack[-1] += total
    setattr(SSHShell, name, wrapper)

timed("_open", "t_connect")
timed("run", "t_commands")
timed("_file_op", "t_files")
request = paramiko.SFTPClient._async_request
def counted_request(self, fileobj, t, *args):
    kinds[paramiko.sftp.CMD_NAMES.get(t, str(t))] += 1
    return request(self, fileobj, t, *args)
paramiko.SFTPClient._async_request = counted_request
init, close = SSHShell.__init__, SSHShell.close
def new_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    shells.append(self)
def new_close(self):
    closed.setdefault(id(self), self.stats())
    close(self)
SSHShell.__init__, SSHShell.close = new_init, new_close

@atexit.register
def dump():
    stats = [closed.get(id(s)) or s.stats() for s in shells]
    total = {k: sum(s[k] for s in stats) for k in (stats[0] if stats else {})}
    record = {"shells": len(shells), "unclosed": len(shells) - len(closed), **total,
              "t_import": imported, "t_total": time.perf_counter() - t0, **spent,
              "t_first": edges.get("first", 0.0), "t_last": edges.get("last", 0.0),
              "sftp_kinds": dict(kinds)}
    with open(record_path, "w") as out:
        json.dump(record, out)

sys.argv = ["hpcjob", *sys.argv[2:]]
hpcjob.cli.main()
"""


def cluster_env() -> dict[str, str]:
    path = CLUSTER / "cluster.env"
    if not path.exists():
        raise SystemExit(
            f"No test cluster: {path} is missing. Start it: sudo tests/cluster/start.sh"
        )
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.startswith("#")}


class Bench:
    def __init__(self, root: Path, env: dict[str, str], name: str) -> None:
        self.root = root
        self.home = root / name
        (self.home / "templates").mkdir(parents=True)
        pythons = sorted(glob.glob(str(CLUSTER / "venvs" / "*" / "bin" / "python")))
        if not pythons:
            raise SystemExit(f"No venv for the test user under {CLUSTER / 'venvs'}.")
        (self.home / "config.toml").write_text(
            "[profiles.cluster]\n"
            'scheduler = "slurm"\n'
            f'host = "{env["HPCJOB_TEST_SSH_HOST"]}"\n'
            f"port = {env['HPCJOB_TEST_SSH_PORT']}\n"
            f'user = "{env["HPCJOB_TEST_USER"]}"\n'
            f'identity_file = "{env["HPCJOB_TEST_SSH_KEY"]}"\n'
            f'known_hosts = "{env["HPCJOB_TEST_KNOWN_HOSTS"]}"\n'
            f'python = "{pythons[0]}"\n'
        )
        (self.home / "templates" / "gpu-check.sbatch.j2").write_text(
            '{% extends "base.sbatch.j2" %}{% block command %}sleep 600\n{% endblock %}'
        )
        self.env = {**os.environ, "HPCJOB_HOME": str(self.home), "HPCJOB_PROFILE": "cluster"}
        self.counted = 0

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hpcjob", *args]

    def hpcjob(self, *args: str) -> str:
        done = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"hpcjob {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def count(self, *args: str) -> dict[str, float]:
        """Run `hpcjob <args>` through the driver; its SSH counters and times, and its stdout."""
        self.counted += 1
        out = self.root / f"{self.home.name}-count-{self.counted}.json"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, str(out), *args],
            env=self.env, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - start
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"hpcjob {' '.join(args)} failed:\n{done.stderr}")
        record = json.loads(out.read_text())
        record.update(stdout=done.stdout, t_wall=wall)
        return record

    def submit(self, *args: str) -> dict[str, float]:
        return self.count("submit", "gpu-check", "--json", *args)


def median_counts(records: list[dict[str, Any]]) -> dict[str, str]:
    """The median of each counter; `median (lo–hi)` where the runs differ."""
    shown = {}
    for key in KEYS:
        values = [r.get(key, 0) for r in records]
        mid = statistics.median(values)
        low, high = min(values), max(values)
        shown[key] = f"{mid:g}" if low == high else f"{mid:g} ({low:g}–{high:g})"
    shown["ms"] = f"{statistics.median(r['t_wall'] for r in records) * 1000:.0f}"
    return shown


def count_row(what: str, tracked: str, records: list[dict[str, Any]]) -> str:
    c = median_counts(records)
    return (
        f"| {what} | {tracked} | {c['connections']} | {c['channels']} | {c['commands']} | "
        f"{c['sftp_requests']} | {c['round_trips']} | {c['ms']} |"
    )


def sftp_kinds(records: list[dict[str, Any]]) -> str:
    """SFTP requests by kind, of the first record (the runs of one command do the same)."""
    kinds = sorted(records[0]["sftp_kinds"].items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {n}" for name, n in kinds) or "none"


def unfinished(records: list[dict[str, Any]]) -> str:
    """Unfinished runs that the last `status --json` of these showed, by state."""
    rows = json.loads(records[-1]["stdout"])
    states = Counter(r["state"] for r in rows if r["state"] in ("PENDING", "RUNNING"))
    parts = ", ".join(f"{n} {state}" for state, n in sorted(states.items(), reverse=True))
    return f"{sum(states.values())}: {parts}" if states else "0"


def wait_running(job_ids: list[str], timeout_s: float = 30) -> None:
    """Until Slurm runs these jobs (or gives up after timeout_s: the row then says so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        argv = ["squeue", "-h", "-o", "%T", "-j", ",".join(job_ids)]
        states = subprocess.run(argv, capture_output=True, text=True).stdout.split()
        if states and all(state == "RUNNING" for state in states):
            return
        time.sleep(1)


def run_state(bench: Bench, run_id: str) -> str:
    rows = json.loads(bench.hpcjob("runs", "--json", "--limit", "1000"))
    return next((r["state"] for r in rows if r["run_id"] == run_id), "?")


def interleaved(commands: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(REPEATS):
        for name, (argv, env) in commands.items():
            start = time.perf_counter()
            done = subprocess.run(argv, env=env, capture_output=True, text=True)
            times[name].append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr}")
    return times


def import_times(bench: Bench, repeats: int = 3) -> list[tuple[str, float]]:
    """Top-level imports of `hpcjob status` by cumulative time (`python -X importtime`), medians
    in ms, largest first; the first entry is their sum."""
    runs: list[dict[str, float]] = []
    for _ in range(repeats):
        argv = [sys.executable, "-X", "importtime", "-m", "hpcjob", "status", "--json"]
        done = subprocess.run(argv, env=bench.env, capture_output=True, text=True)
        found: dict[str, float] = {}
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit() and not name.startswith("  "):
                found[name.strip()] = found.get(name.strip(), 0) + int(cumulative) / 1000
        runs.append(found)
    names = {name for found in runs for name in found}
    med = {name: statistics.median(found.get(name, 0.0) for found in runs) for name in names}
    total = statistics.median(sum(found.values()) for found in runs)
    return [("all", total), *sorted(med.items(), key=lambda kv: -kv[1])]


def clean_up(bench: Bench, user: str) -> None:
    """Cancel the jobs this benchmark submitted and remove their run folders on the cluster.
    Only its own jobs: other work may share the test user (`scancel --user` would end it)."""
    rows = json.loads(bench.hpcjob("runs", "--json", "--limit", "1000"))
    jobs = sorted({r["job_id"].split("_")[0] for r in rows if r.get("job_id")})
    folders = [r["run_dir"] for r in rows if r.get("run_dir")]
    if jobs:
        subprocess.run(["runuser", "-u", user, "--", "scancel", *jobs], check=False)
    if folders:
        subprocess.run(["runuser", "-u", user, "--", "rm", "-rf", *folders], check=False)


def main() -> None:
    env = cluster_env()
    user = env["HPCJOB_TEST_USER"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), env, "home")
        empty = Bench(Path(tmp), env, "empty")
        try:
            body = measure(bench, empty, env)
        finally:
            clean_up(bench, user)
    body += f"\nWhole benchmark: {time.perf_counter() - started:.0f} s.\n"
    print(body)
    write_section(body, HEADING)


def measure(bench: Bench, empty: Bench, env: dict[str, str]) -> str:
    rows: list[str] = []
    first = bench.submit()
    blocker = json.loads(first["stdout"])
    rows.append(count_row("`submit` (the first: the blocker, `sleep 600`)", "–", [first]))
    wait_running([blocker["job_id"]])
    status_1 = [bench.count("status", "--json") for _ in range(COUNTED)]
    n_1 = unfinished(status_1)
    later = [bench.submit("--after", blocker["job_id"]) for _ in range(PENDING)]
    rows.append(count_row(f"`submit --after BLOCKER` ({PENDING} submits)", "–", later))
    rows.append(count_row("`status`", f"{n_1} (the blocker)", status_1))
    status_50 = [bench.count("status", "--json") for _ in range(COUNTED)]
    n_50 = unfinished(status_50)
    rows.append(count_row("`status`", f"{n_50} (+ {PENDING} behind the blocker)", status_50))
    status_0 = [empty.count("status", "--json") for _ in range(COUNTED)]
    logs = [bench.count("logs", blocker["run_id"]) for _ in range(COUNTED)]
    blocker_state = run_state(bench, blocker["run_id"])

    key, kh = env["HPCJOB_TEST_SSH_KEY"], env["HPCJOB_TEST_KNOWN_HOSTS"]
    host, port = env["HPCJOB_TEST_SSH_HOST"], env["HPCJOB_TEST_SSH_PORT"]
    plain = ["ssh", "-p", port, "-i", key, "-o", f"UserKnownHostsFile={kh}"]
    plain += ["-o", "BatchMode=yes", f"{env['HPCJOB_TEST_USER']}@{host}", "squeue"]
    py = sys.executable
    times = interleaved(
        {
            "`ssh … squeue`": (plain, bench.env),
            STATUS_50: (bench.argv("status", "--json"), bench.env),
            "`hpcjob status`, empty ledger": (empty.argv("status", "--json"), empty.env),
            PASS: ([py, "-c", "pass"], bench.env),
            PARAMIKO: ([py, "-c", "import paramiko"], bench.env),
            SSH_MODULE: ([py, "-c", "import hpcjob.ssh.connect"], bench.env),
        }
    )
    imports = import_times(bench)
    # An array adds 50 task runs behind the same blocker; status must cost the same round trips.
    array = bench.submit("--after", blocker["job_id"], "--array", f"0-{PENDING - 1}")
    status_array = [bench.count("status", "--json") for _ in range(COUNTED)]
    n_array = unfinished(status_array)
    rows.append(count_row("`submit --array 0-49 --after BLOCKER`", "–", [array]))
    rows.append(count_row("`status`", f"{n_array} (+ the array's runs)", status_array))
    # Running jobs are read (output, metrics, files) on every refresh: two more, if they start.
    more = [bench.submit("--partition", p) for p in ("rome", "staging")]
    wait_running([json.loads(r["stdout"])["job_id"] for r in more])
    status_running = [bench.count("status", "--json") for _ in range(COUNTED)]
    n_running = unfinished(status_running)
    rows.append(count_row("`status`", f"{n_running} (+ 2 more running)", status_running))
    rows.append(count_row("`status`, empty ledger", "0", status_0))
    rows.append(count_row(f"`logs` of the blocker ({blocker_state} by then)", "–", logs))
    n_end = unfinished([bench.count("status", "--json")])
    notes = [
        f"SFTP requests by kind: submit {sftp_kinds(later)}; status ({n_50}) "
        f"{sftp_kinds(status_50[-1:])}; status ({n_running}) {sftp_kinds(status_running[-1:])}; "
        f"logs {sftp_kinds(logs)}. A pipelined write or read "
        "counts as one request per chunk, so `round trips` overstates waits on the network.",
        f"Unfinished runs at the end: {n_end}; the blocker was {blocker_state} at `logs`.",
    ]
    return report(rows, times, status_50, n_50, imports, notes)


def report(
    rows: list[str],
    times: dict[str, list[float]],
    status_50: list[dict[str, Any]],
    n_50: str,
    imports: list[tuple[str, float]],
    notes: list[str],
) -> str:
    med = {name: statistics.median(values) * 1000 for name, values in times.items()}
    base = med["`ssh … squeue`"]
    ours = med[STATUS_50]
    table = [
        f"| {name} | {med[name]:.0f} | {min(v) * 1000:.0f}–{max(v) * 1000:.0f} | "
        f"{med[name] / base:.2f} |"
        for name, v in times.items()
    ]

    def part(key: str) -> float:
        return statistics.median(r[key] for r in status_50) * 1000

    wall, total = part("t_wall"), part("t_total")
    before = part("t_first") - part("t_import")
    after = total - part("t_last")
    ratio = ours / base
    verdict = "met" if ratio <= 1.5 else f"missed by {ours - 1.5 * base:.0f} ms"
    pass_ms = med[PASS]
    top = ", ".join(f"{name} {ms:.0f}" for name, ms in imports[1:7])
    lines = [
        HEADING,
        "",
        f"Machine: {machine()}; the test cluster (Slurm 22.05) with OpenSSH's sshd on "
        "127.0.0.1:2222, user hpctest, key login. Other test suites may share the cluster and "
        "the machine while this runs.",
        "Command: `.venv/bin/python bench/ssh.py` (as root, cluster running). Counters from "
        "`SSHShell.stats()` inside each CLI process (a driver wraps `SSHShell.close` and runs "
        "`hpcjob.cli.main()`); round trips = remote commands + SFTP requests. The 50 pending "
        f"jobs are {PENDING} separate submits with `--after BLOCKER`; the array adds 50 task runs "
        "in one submit.",
        "",
        "| command | tracked unfinished | connections | sessions (channels) | commands | "
        "SFTP requests | round trips | wall ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Medians of {COUNTED} runs (of {PENDING} for submit), ranges where runs differ. Goals: "
        "one connection per command, ≤ 3 sessions, round trips constant in the number of jobs.",
        *[f"\n{note}" for note in notes],
        "",
        f"Time ({REPEATS} runs of each, interleaved, a new process each; medians):",
        "",
        "| command | median (ms) | min–max (ms) | × `ssh … squeue` |",
        "|---|---:|---:|---:|",
        *table,
        "",
        f"`hpcjob status` with {n_50} tracked over SSH: {ours:.0f} ms against `ssh … squeue` "
        f"{base:.0f} ms → {ratio:.2f}× (goal ≤ 1.5×: {verdict}).",
        "",
        f"Where its time goes ({COUNTED} driver runs, medians of {wall:.0f} ms): interpreter start "
        f"and exit {wall - total:.0f} ms, importing hpcjob.cli + paramiko + hpcjob.ssh "
        f"{part('t_import'):.0f} ms, then config, ledger and lazy imports {before:.0f} ms, "
        f"connecting (TCP, key exchange, login) {part('t_connect'):.0f} ms, remote commands "
        f"{part('t_commands'):.0f} ms, SFTP {part('t_files'):.0f} ms, output and closing "
        f"{after:.0f} ms.",
        "",
        f"Import cost: `import hpcjob.ssh.connect` +{med[SSH_MODULE] - pass_ms:.0f}"
        f" ms over `python -c pass`, `import paramiko` alone "
        f"+{med[PARAMIKO] - pass_ms:.0f} ms. All imports of `hpcjob "
        f"status` (`-X importtime`, top level, cumulative): {imports[0][1]:.0f} ms; largest: "
        f"{top} ms.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
