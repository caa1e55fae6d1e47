"""Pure parsing of what a job wrote: metrics and facts from its output and its metrics files.

Three sources feed the same result: JSON objects (one per line in `metrics.jsonl`, or on stdout
behind the `HPCJOB_METRIC ` prefix), CSV files with a header row (`epoch,train_loss,val_loss`, as
Lightning's CSVLogger writes them) and the human lines students print, such as
`Epoch 3: Train_Loss = 0.6523, Val_Loss = 0.7066`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

METRIC_PREFIX = "HPCJOB_METRIC "
# One `\s*` between the epoch and its colon: two in a row (around the optional `/ N`) would try
# every split of a long run of blanks.
_EPOCH_RE = re.compile(r"^\s*Epoch\s+(\d+)\s*(?:/\s*\d+\s*)?[:\-]\s*(.+)$", re.IGNORECASE)
# A pair is `key = value` / `key: value`. The key is found by scanning back from a separator, never
# by a lazy regex from each letter (that tried every start of a long `word word …` line: quadratic).
_SEPARATOR_RE = re.compile(r"[=:]")
_VALUE_RE = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)", re.IGNORECASE)
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_KEY_CHARS = _LETTERS | frozenset("0123456789_ ")
# A human line longer than this is cut before parsing: no real metric line is that long.
MAX_HUMAN_LINE = 64 * 1024
_RESERVED = {"step", "epoch", "time", "facts"}
_MAX_KEY = 64
# Steps are stored as SQLite integers; a step beyond this is garbage, not an epoch.
_MAX_STEP = 2**31 - 1
# A fact is a short value for `show`: deeper or longer values are cut, non-finite numbers dropped.
_MAX_FACT_DEPTH = 16
_MAX_FACT_TEXT = 10_000
_MAX_FACTS = 5_000  # keys of a facts object, items of a list
# Metric keys taken from one line (one step): a line with 100,000 keys is not a training log.
MAX_KEYS_PER_LINE = 256
CUT_FACT = "metrics_cut"


@dataclass(frozen=True)
class Metric:
    """One value of a run at a step (an epoch); None stands for NaN/Inf (stored as missing)."""

    step: int
    key: str
    value: float | None
    at: str | None = None


@dataclass
class JobOutput:
    """Metrics keyed by (step, key), later lines winning; facts merged in order."""

    metrics: dict[tuple[int, str], Metric] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def metric_list(self) -> list[Metric]:
        return sorted(self.metrics.values(), key=lambda m: (m.step, m.key))


def normalise_key(text: str) -> str:
    """`Train_Loss` / `Val Acc` → `train_loss` / `val_acc`."""
    key = re.sub(r"[^0-9a-z]+", "_", text.strip().lower()).strip("_")
    return key[:_MAX_KEY]


def _number(value: Any) -> float | str | None:
    """A finite float, None for NaN/Inf (stored as missing), or "skip" for non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "skip"
    try:
        number = float(value)
    except OverflowError:  # an integer with hundreds of digits
        return None
    return number if math.isfinite(number) else None


def _step(value: Any) -> int | None:
    """A usable step (epoch) number, or None for a bool, NaN, a negative or an absurd one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    step = int(value)
    return step if 0 <= step <= _MAX_STEP else None


def clean_fact(value: Any, depth: int = 0) -> Any:
    """A fact value that stores and prints as JSON: NaN/Inf → None, bounded depth and length."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        return str(value)[:_MAX_FACT_TEXT]
    if isinstance(value, str):
        return value[:_MAX_FACT_TEXT]
    if isinstance(value, (dict, list)):
        if depth >= _MAX_FACT_DEPTH:
            return "(nested too deeply)"
        if isinstance(value, dict):
            items = list(value.items())[:_MAX_FACTS]
            return {str(k)[:_MAX_KEY]: clean_fact(v, depth + 1) for k, v in items}
        return [clean_fact(v, depth + 1) for v in value[:_MAX_FACTS]]
    return value


def _note_cut(out: JobOutput, step: int, keys: int | None) -> None:
    """Say in the run's facts that a line had more metric keys than are kept."""
    many = f"{keys} keys" if keys is not None else "more keys"
    out.facts[CUT_FACT] = (
        f"step {step}: a line had {many}; only the first {MAX_KEYS_PER_LINE} were read"
    )


def parse_metric_object(obj: Any, out: JobOutput, line_no: int = 0) -> None:
    """One JSON object of the output contract into `out` (anything malformed is ignored)."""
    if not isinstance(obj, dict):
        return
    facts = obj.get("facts")
    if isinstance(facts, dict):
        for key, value in list(facts.items())[:_MAX_FACTS]:
            out.facts[str(key)[:_MAX_KEY]] = clean_fact(value)
    step = _step(obj.get("step", obj.get("epoch")))
    if step is None:
        return
    at = obj.get("time") if isinstance(obj.get("time"), str) else None
    taken = 0
    for raw_key, raw_value in obj.items():
        if taken >= MAX_KEYS_PER_LINE:
            _note_cut(out, step, len(obj))
            break
        taken += 1
        key = normalise_key(str(raw_key))
        if not key or key in _RESERVED:
            continue
        value = _number(raw_value)
        if value != "skip":
            out.metrics[(step, key)] = Metric(
                step, key, value if value is None else float(value), at
            )


def parse_human_line(line: str, out: JobOutput) -> bool:
    """`Epoch 3: Train_Loss = 0.6523, Val_Loss = 0.7066` into `out`; False if not such a line."""
    match = _EPOCH_RE.match(line[:MAX_HUMAN_LINE])
    if not match:
        return False
    step = _step(int(match.group(1)[:12]))
    if step is None:
        return False
    found = False
    for taken, (name, text) in enumerate(_pairs(match.group(2))):
        if taken >= MAX_KEYS_PER_LINE:
            _note_cut(out, step, None)
            break
        key = normalise_key(name)
        if not key or key in _RESERVED:
            continue
        number = float(text)
        out.metrics[(step, key)] = Metric(step, key, number if math.isfinite(number) else None)
        found = True
    return found


def _pairs(body: str) -> list[tuple[str, str]]:
    """The `(key, value)` pairs of an epoch line's body, in one pass: for each `=`/`:` followed
    by a number, the key is the run of letters, digits, `_` and spaces just before it (from its
    first letter), never reaching back into the previous pair."""
    pairs = []
    done = 0  # the end of the last pair: nothing before it is looked at again
    for separator in _SEPARATOR_RE.finditer(body):
        at = separator.start()
        if at < done:
            continue
        value = _VALUE_RE.match(body, at + 1)
        if not value:
            continue
        end = at
        while end > done and body[end - 1].isspace():
            end -= 1
        start = end
        while start > done and body[start - 1] in _KEY_CHARS:
            start -= 1
        while start < end and body[start] not in _LETTERS:
            start += 1
        if start == end:
            continue
        pairs.append((body[start:end], value.group(1)))
        done = value.end()
    return pairs


def parse_output(text: str, out: JobOutput | None = None) -> JobOutput:
    """Metrics and facts from a job's stdout (the human lines and the prefixed JSON lines)."""
    out = out or JobOutput()
    for line_no, line in enumerate(text.splitlines()):
        if line.startswith(METRIC_PREFIX):
            try:
                parse_metric_object(json.loads(line[len(METRIC_PREFIX) :]), out, line_no)
            except (ValueError, RecursionError):  # incl. a number of >4300 digits
                continue
        else:
            parse_human_line(line, out)
    return out


def parse_metrics_jsonl(text: str, out: JobOutput | None = None) -> JobOutput:
    """Metrics and facts from `metrics.jsonl`; a torn last line (still being written) is skipped."""
    out = out or JobOutput()
    for line_no, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            parse_metric_object(json.loads(line), out, line_no)
        except (ValueError, RecursionError):  # incl. a number of >4300 digits
            continue
    return out


def parse_metrics_csv(text: str, out: JobOutput | None = None) -> JobOutput:
    """Metrics from a CSV file whose first row names the columns. The `step` (else `epoch`)
    column gives the step, as in the JSON objects; without one, the row number (1 for the first
    data row). Other columns are metrics where their cell is a number; a torn last line (still
    being written) is skipped."""
    out = out or JobOutput()
    if not text.endswith(("\n", "\r")):
        text = text[: max(text.rfind("\n"), text.rfind("\r")) + 1]
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [normalise_key(column) for column in next(rows, [])]
        step_at = next((header.index(k) for k in ("step", "epoch") if k in header), None)
        time_at = header.index("time") if "time" in header else None
        number = 0
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue
            number += 1
            step = _csv_step(row, step_at) if step_at is not None else _step(number)
            if step is not None:
                _csv_row(header, row, step, _csv_time(row, time_at), out)
    except csv.Error:  # a field beyond csv's size limit: keep what was read
        pass
    return out


def _csv_step(row: list[str], index: int) -> int | None:
    cell = _csv_number(row[index]) if index < len(row) else None
    return _step(cell) if isinstance(cell, float) else None


def _csv_time(row: list[str], index: int | None) -> str | None:
    """A time column's text (an ISO-8601 time), unless it is a number (seconds, say)."""
    if index is None or index >= len(row) or not row[index].strip():
        return None
    return row[index].strip() if _csv_number(row[index]) == "skip" else None


def _csv_number(cell: str) -> float | str | None:
    """A finite float, None for NaN/Inf, or "skip" for a cell that is not a number."""
    try:
        number = float(cell)
    except ValueError:
        return "skip"
    return number if math.isfinite(number) else None


def _csv_row(header: list[str], row: list[str], step: int, at: str | None, out: JobOutput) -> None:
    for key, cell in zip(header, row, strict=False):  # a short or long row: what lines up
        if not key or key in _RESERVED:
            continue
        value = _csv_number(cell)
        if value != "skip":
            out.metrics[(step, key)] = Metric(
                step, key, value if value is None else float(value), at
            )


def parse_metrics_file(name: str, text: str, out: JobOutput | None = None) -> JobOutput:
    """Metrics from a file by its extension: `.csv`, `.jsonl`/`.json` (one object a line), and
    anything else read as a job's output (human lines and prefixed JSON)."""
    suffix = PurePath(name).suffix.lower()
    if suffix == ".csv":
        return parse_metrics_csv(text, out)
    if suffix in (".jsonl", ".json"):
        return parse_metrics_jsonl(text, out)
    return parse_output(text, out)


def headline(metrics: list[Metric]) -> str:
    """The one metric a status table shows for a run's latest step."""
    if not metrics:
        return ""
    by_key = {m.key: m for m in metrics}
    for key in ("val_loss", "train_loss", "loss", "val_acc", "tflops"):
        if key in by_key:
            metric = by_key[key]
            break
    else:
        metric = metrics[0]
    value = "nan" if metric.value is None else f"{metric.value:.4g}"
    return f"epoch {metric.step} {metric.key}={value}"
