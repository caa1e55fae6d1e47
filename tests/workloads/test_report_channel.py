"""The output contract: one JSON line per object, in metrics.jsonl and behind the stdout prefix."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import report


def test_emit_appends_to_the_file_and_prints_the_same_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    channel = report.Report(tmp_path / "out")
    channel.facts(torch="2.5.1", gpu_names=["A100"])
    channel.metric(1, train_loss=0.5, val_auc=np.float32(0.75), note="text")
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    printed = capsys.readouterr().out.splitlines()
    assert printed == [report.PREFIX + line for line in lines]
    assert printed[0].startswith("HPCJOB_METRIC {")
    facts, metric = (json.loads(line) for line in lines)
    assert facts == {"facts": {"torch": "2.5.1", "gpu_names": ["A100"]}}
    assert metric["step"] == metric["epoch"] == 1
    assert metric["train_loss"] == 0.5 and metric["val_auc"] == 0.75
    assert datetime.fromisoformat(metric["time"].replace("Z", "+00:00")).utcoffset().seconds == 0


def test_non_finite_numbers_become_null_and_lines_stay_compact(tmp_path: Path) -> None:
    report.emit({"step": 2, "val_auc": math.nan, "x": [math.inf, 1.0]}, tmp_path)
    line = (tmp_path / "metrics.jsonl").read_text()
    assert line == '{"step":2,"val_auc":null,"x":[null,1.0]}\n'
