"""Staging a run directory over SSH: one `write_files` command (a tar on stdin) against the
per-file SFTP writes hpcjob used before, over links with added latency.

Needs the test cluster's sshd (`sudo tests/cluster/start.sh`); run as root on that machine. One
command: `.venv/bin/python bench/staging.py`. A small TCP relay between paramiko and sshd holds
every chunk for half the round-trip time in each direction (latency only, no bandwidth limit),
which is what a laptop far from the login node sees. The files are the ones `submit` stages:
the workload snapshot, run.json and job.sh. Writes "## Staging over SSH" into bench/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ssh import cluster_env  # noqa: E402
from startup import machine, write_section  # noqa: E402

from hpcjob.resources import workload_files  # noqa: E402
from hpcjob.ssh.connect import ConnectOptions, ssh_shell_for  # noqa: E402
from hpcjob.ssh.session import SSHShell  # noqa: E402

HEADING = "## Staging over SSH"
RTTS_MS = (0, 10, 40)
REPEATS = 7


class DelayRelay:
    """127.0.0.1:port → target, each chunk forwarded `rtt/2` after it arrived, per direction."""

    def __init__(self, target: tuple[str, int], rtt_ms: float) -> None:
        self.target, self.one_way = target, rtt_ms / 2000
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, upstream)
            self._pipe(upstream, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        due: list[tuple[float, int, bytes]] = []
        ready = threading.Condition()
        seq = iter(range(1 << 62))

        def read() -> None:
            while data := _recv(src):
                with ready:
                    heapq.heappush(due, (time.monotonic() + self.one_way, next(seq), data))
                    ready.notify()
            with ready:
                heapq.heappush(due, (time.monotonic() + self.one_way, next(seq), b""))
                ready.notify()

        def write() -> None:
            while True:
                with ready:
                    while not due or due[0][0] > time.monotonic():
                        ready.wait(None if not due else due[0][0] - time.monotonic())
                    _, _, data = heapq.heappop(due)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self.server.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def staged_files() -> dict[str, tuple[bytes, int]]:
    files = {f"workload/{name}": (data, 0o644) for name, data in workload_files().items()}
    files["run.json"] = (b'{"run_id": "bench"}' * 50, 0o644)
    files["job.sh"] = (b"#!/bin/bash\n#SBATCH --time=00:10:00\n" * 40, 0o755)
    return files


def per_file_sftp(shell: SSHShell, root: str, files: dict[str, tuple[bytes, int]]) -> None:
    """hpcjob's staging before: make the folders, then one atomic SFTP write per file."""
    shell.makedirs(root)
    shell.makedirs(f"{root}/workload")
    for name, (data, mode) in files.items():
        shell.write_bytes(f"{root}/{name}", data, mode)


def one_command(shell: SSHShell, root: str, files: dict[str, tuple[bytes, int]]) -> None:
    shell.write_files(root, files)


def measure(env: dict[str, str], rtt_ms: float, known_hosts: Path) -> dict[str, list[float]]:
    relay = DelayRelay((env["HPCJOB_TEST_SSH_HOST"], int(env["HPCJOB_TEST_SSH_PORT"])), rtt_ms)
    host_key = Path(env["HPCJOB_TEST_SSH_HOST_KEY_PUB"]).read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{relay.port} {' '.join(host_key)}\n")
    profile = {
        "host": "127.0.0.1",
        "port": relay.port,
        "user": env["HPCJOB_TEST_USER"],
        "identity_file": env["HPCJOB_TEST_SSH_KEY"],
        "known_hosts": str(known_hosts),
    }
    files = staged_files()
    times: dict[str, list[float]] = {"per-file SFTP (before)": [], "one command (now)": []}
    counts: dict[str, dict[str, int]] = {}
    base = f"/home/{env['HPCJOB_TEST_USER']}/hpcjob-staging-bench-{uuid.uuid4().hex[:8]}"
    try:
        with ssh_shell_for(profile, ConnectOptions(interactive=False)) as shell:
            shell.run(["true"])
            shell.exists("/")  # the SFTP session is open before either is timed
            for _ in range(REPEATS):
                for name, stage in zip(times, (per_file_sftp, one_command), strict=True):
                    before = shell.stats()
                    started = time.perf_counter()
                    stage(shell, f"{base}/{uuid.uuid4().hex[:8]}", files)
                    times[name].append((time.perf_counter() - started) * 1000)
                    after = shell.stats()
                    counts[name] = {k: after[k] - before[k] for k in ("commands", "sftp_requests")}
    finally:
        relay.close()
        subprocess.run(["rm", "-rf", base], check=False)
    return {**times, "counts": counts}  # type: ignore[dict-item]


def main() -> None:
    env = cluster_env()
    files = staged_files()
    size_kb = sum(len(data) for data, _ in files.values()) / 1024
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rtt in RTTS_MS:
            result = measure(env, rtt, Path(tmp) / "known_hosts")
            counts = result.pop("counts")
            meds = {name: statistics.median(values) for name, values in result.items()}
            before, now = meds["per-file SFTP (before)"], meds["one command (now)"]
            for name, values in result.items():
                c = counts[name]  # type: ignore[index]
                rows.append(
                    f"| {rtt} | {name} | {c['commands']} | {c['sftp_requests']} | "
                    f"{meds[name]:.0f} | {min(values):.0f}–{max(values):.0f} |"
                )
            rows.append(f"| {rtt} | ratio now / before | | | {now / before:.2f} | |")
            print(f"rtt {rtt} ms: before {before:.0f} ms, now {now:.0f} ms", flush=True)
    body = "\n".join(
        [
            HEADING,
            "",
            f"Machine: {machine()}; the test cluster's sshd on 127.0.0.1, user hpctest, through a "
            "relay adding the round-trip time shown (latency only). Command: "
            "`.venv/bin/python bench/staging.py` (as root, cluster running).",
            "",
            f"Staging the {len(files)} files `submit` writes ({size_kb:.0f} KiB) into a new run "
            f"directory on one open connection; {REPEATS} runs of each, interleaved; medians.",
            "",
            "| added RTT (ms) | staging | commands | SFTP requests | median ms | min–max ms |",
            "|---:|---|---:|---:|---:|---:|",
            *rows,
            "",
            "`submit` over SSH makes one connection either way; the SFTP session it still opens "
            "is for finding the remote home folder (one request).",
        ]
    )
    print(body)
    write_section(body + "\n", HEADING)


if __name__ == "__main__":
    os.umask(0o022)
    main()
