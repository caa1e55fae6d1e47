"""The output contract of the job programs: one JSON object per line, for hpcjob to read.

Every object goes to two places, because a job may die before its run directory is fetched
and a user's own script may only print: appended to `<output_dir>/metrics.jsonl`, and printed
on stdout behind the fixed prefix `HPCJOB_METRIC `. Two kinds of object travel this way:

- metrics: `{"step": 3, "epoch": 3, "train_loss": 0.41, ..., "time": "2025-01-01T12:00:00Z"}`;
  every numeric (non-bool) value other than step/epoch is a metric;
- facts: `{"facts": {"torch": "2.5.1", "gpu_names": ["NVIDIA A100"]}}`, information that is not
  a series (versions, devices, sizes).

JSON has no NaN or Infinity, so non-finite floats are written as null.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PREFIX = "HPCJOB_METRIC "
METRICS_FILE = "metrics.jsonl"


def utc_now() -> str:
    """The current time as ISO-8601 UTC with a Z suffix, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def clean(value: Any) -> Any:
    """`value` made JSON-safe: non-finite floats → None, numpy scalars → Python, tuples → lists."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy or torch scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def encode(obj: Mapping[str, Any]) -> str:
    """One compact JSON line for `obj`."""
    return json.dumps(clean(obj), separators=(",", ":"), allow_nan=False)


def metric(step: int, values: Mapping[str, Any], time: str | None = None) -> dict[str, Any]:
    """A metrics object for one epoch (step and epoch are the same number here)."""
    return {"step": int(step), "epoch": int(step), **values, "time": time or utc_now()}


def facts(values: Mapping[str, Any]) -> dict[str, Any]:
    """A facts object: non-series information about the job."""
    return {"facts": dict(values)}


def emit(obj: Mapping[str, Any], output_dir: str | Path = ".") -> None:
    """Append `obj` to metrics.jsonl in `output_dir` and print it behind the prefix, flushed."""
    line = encode(obj)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
    sys.stdout.write(PREFIX + line + "\n")
    sys.stdout.flush()


class Report:
    """The report channel of one program run, bound to its output directory."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)

    def emit(self, obj: Mapping[str, Any]) -> None:
        emit(obj, self.output_dir)

    def metric(self, step: int, **values: Any) -> None:
        self.emit(metric(step, values))

    def facts(self, **values: Any) -> None:
        self.emit(facts(values))


class QuietReport(Report):
    """The report channel of a rank other than 0: says nothing."""

    def emit(self, obj: Mapping[str, Any]) -> None:
        pass
