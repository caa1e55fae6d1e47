"""No way in through a run directory (issue 17): every read of what a job or the cluster wrote is
bounded, and what was cut is said. Big inputs are generated (sparse files, a fake channel), and a
counting shell checks how much was read: reading it all fails the test, fast."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hpcjob.errors import HpcjobError
from hpcjob.joblog import CUT_FACT, MAX_KEYS_PER_LINE, parse_metrics_jsonl, parse_output
from hpcjob.run.rerun import SNAPSHOT_FILE_MAX, workload_snapshot
from hpcjob.run.watch import TAIL_MAX, attempt_logs, read_log_end
from hpcjob.shell import LocalShell
from hpcjob.ssh.channel import collect
from tests.helpers import REPO, ReplayShell

DOC = REPO / "docs" / "hostile-input.md"
BIG = 4 * 1024**3  # a 4 GB output, sparse: costs nothing to make, everything to read


class CountingShell(LocalShell):
    def __init__(self) -> None:
        self.read = 0

    def read_bytes(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        data = super().read_bytes(path, offset, limit)
        self.read += len(data)
        return data


def _huge_output(tmp_path: Path, end: bytes) -> Path:
    path = tmp_path / "slurm-1.out"
    with open(path, "wb") as handle:
        handle.truncate(BIG)
        handle.seek(BIG)
        handle.write(end)
    return path


def _ctx_run(path: Path) -> tuple[Any, Any, CountingShell]:
    shell = CountingShell()
    ledger = SimpleNamespace(attempts=lambda run_id: [])
    ctx = SimpleNamespace(scheduler=SimpleNamespace(shell=shell), ledger=ledger)
    state = SimpleNamespace(value="COMPLETED", is_final=True)
    run = SimpleNamespace(run_id="r1", job_id="1", output_path=str(path), state=state)
    return ctx, run, shell


def test_logs_tail_seeks_to_the_end(tmp_path: Path) -> None:
    """bounded-logs-tail"""
    path = _huge_output(tmp_path, b"one\ntwo\nthree\nfour\n")
    ctx, run, shell = _ctx_run(path)
    (log,) = attempt_logs(ctx, run, tail=3)
    assert log.data.endswith(b"two\nthree\nfour\n") and log.size == BIG + 19
    assert shell.read <= 2 * 1024 * 1024  # a block or two, not 4 GB


def test_logs_tail_of_one_endless_line_stops_at_the_cap(tmp_path: Path) -> None:
    """bounded-logs-tail"""
    path = _huge_output(tmp_path, b"x" * 100)
    ctx, run, shell = _ctx_run(path)
    (log,) = attempt_logs(ctx, run, tail=2)
    assert len(log.data) == TAIL_MAX and log.cut == BIG + 100 - TAIL_MAX
    assert shell.read == TAIL_MAX


def test_setup_env_log_keeps_its_end_with_a_note(tmp_path: Path) -> None:
    """bounded-setup-env-log"""
    path = _huge_output(tmp_path, b"\nHPCJOB_SETUP_RESULT {}\n")
    ctx, run, shell = _ctx_run(path)
    text = read_log_end(ctx, run, max_bytes=1024 * 1024)
    assert text.startswith("[hpcjob: the first ") and "bytes of the output are not shown]" in text
    assert text.endswith("HPCJOB_SETUP_RESULT {}\n") and shell.read == 1024 * 1024


class SnapshotShell(ReplayShell):
    def list_files(self, path: str, max_depth: int = 2) -> list[tuple[str, int]]:
        return [("train.py", 100), ("model.py", BIG)]

    def read_bytes(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        raise AssertionError(f"read {path}: a file of the snapshot was read")


def test_a_huge_workload_snapshot_is_refused_unread() -> None:
    """bounded-rerun-snapshot"""
    shell = SnapshotShell({})
    shell.files["/runs/r1/workload/train.py"] = b""  # the folder exists
    ctx: Any = SimpleNamespace(scheduler=SimpleNamespace(shell=shell))
    run: Any = SimpleNamespace(run_id="r1", run_dir="/runs/r1")
    with pytest.raises(HpcjobError) as caught:
        workload_snapshot(ctx, run)
    assert f"model.py ({BIG} B) over {SNAPSHOT_FILE_MAX} bytes" in caught.value.message
    assert "--current-code" in (caught.value.hint or "")


class EndlessChannel:
    """An SSH channel whose command answers with `total` bytes of stdout, then exits 0."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.closed = False
        self.status_event = threading.Event()
        self.status_event.set()
        self.exit_status = 0

    @property
    def eof_received(self) -> bool:
        return self.left == 0

    def recv_ready(self) -> bool:
        return self.left > 0

    def recv(self, size: int) -> bytes:
        take = min(size, self.left)
        self.left -= take
        return b"y" * take

    def recv_stderr_ready(self) -> bool:
        return False


def test_ssh_command_output_is_kept_up_to_a_cap_with_a_note() -> None:
    """bounded-ssh-output"""
    channel: Any = EndlessChannel(20 * 1024 * 1024)
    out, err, status = collect(channel, timeout=30, max_bytes=1024 * 1024)
    assert status == 0 and channel.left == 0  # all of it read: the command could finish
    assert len(out) == 1024 * 1024
    assert f"{19 * 1024 * 1024} bytes of stdout past {1024 * 1024} were dropped" in err.decode()


def test_a_line_with_100000_metric_keys_is_cut_with_a_note() -> None:
    """bounded-metric-keys"""
    keys = {f"k{i}": i for i in range(100_000)}
    parsed = parse_metrics_jsonl(json.dumps({"step": 1, **keys}) + "\n")
    assert len(parsed.metrics) < MAX_KEYS_PER_LINE
    assert "a line had 100001 keys" in parsed.facts[CUT_FACT]
    human = parse_output("Epoch 2: " + ", ".join(f"k{i} = 1" for i in range(100_000)) + "\n")
    assert len(human.metrics) == MAX_KEYS_PER_LINE and CUT_FACT in human.facts


@pytest.mark.parametrize(
    "row",
    [
        "bounded-logs-tail",
        "bounded-setup-env-log",
        "bounded-rerun-snapshot",
        "bounded-ssh-output",
        "bounded-metric-keys",
    ],
)
def test_the_doc_lists_each_bounded_read(row: str) -> None:
    assert f"| `{row}` |" in DOC.read_text()
