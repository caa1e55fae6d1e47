"""`hpcjob compare`: the settings that differ between runs and their metrics side by side (pure).

Works on `show`'s details (app.run_detail), so it needs no scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hpcjob.sweep import best_value

# Resources worth comparing, by the name a person reads.
_RESOURCES = ("partition", "time_s", "nodes", "cpus_per_task", "mem_mb", "gpus", "array")


def settings(detail: Mapping[str, Any]) -> dict[str, Any]:
    """A run's settings, flattened to `name → value`."""
    spec = detail.get("spec") or {}
    res = spec.get("resources") or {}
    found: dict[str, Any] = {"workload": detail.get("workload"), "profile": detail.get("profile")}
    # A program's config values (what it used), then what was set or swept.
    found.update(spec.get("config_values") or {})
    found.update({name: value for name, value in (spec.get("args") or {}).items()})
    found.update({name: res.get(name) for name in _RESOURCES})
    found["data_dir"] = spec.get("data_dir")
    found["script_sha256"] = _short(detail.get("script_sha256"))
    found["workload_sha256"] = _short(_workload_hash(detail))
    found["rerun_of"] = spec.get("rerun_of")
    task = spec.get("sweep_task") or {}
    found["sweep"] = task.get("sweep_id") or (spec.get("sweep") or {}).get("sweep_id")
    return found


def _short(digest: Any) -> Any:
    return digest[:12] if isinstance(digest, str) else digest


def _workload_hash(detail: Mapping[str, Any]) -> Any:
    """The workload code's hash where the run recorded it (provenance, run facts)."""
    for holder in (detail.get("provenance"), detail.get("facts")):
        if isinstance(holder, Mapping):
            for key in ("workload_sha256", "workload_hash"):
                if holder.get(key):
                    return holder[key]
            submit = holder.get("provenance_submit")
            if isinstance(submit, Mapping) and submit.get("workload_sha256"):
                return submit["workload_sha256"]
    return None


def metric_summary(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric key: the final value (at the highest epoch), the best and the epochs."""
    by_key: dict[str, list[tuple[int, float | None]]] = {}
    for m in metrics:
        by_key.setdefault(str(m["key"]), []).append((int(m["step"]), m["value"]))
    summary = {}
    for key, points in sorted(by_key.items()):
        points.sort()
        values = [v for _, v in points]
        final = values[-1] if values and _finite(values[-1]) else None
        summary[key] = {"final": final, "best": best_value(values, key), "epochs": len(points)}
    return summary


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def compare(details: Sequence[Mapping[str, Any]], show_all: bool = False) -> dict[str, Any]:
    """`compare`'s data: the run ids, the settings that differ (or all), the metrics."""
    runs = [str(d["run_id"]) for d in details]
    per_run = [settings(d) for d in details]
    names = list(dict.fromkeys(name for s in per_run for name in s))
    rows = []
    for name in names:
        values = [s.get(name) for s in per_run]
        if show_all or len({repr(v) for v in values}) > 1:
            rows.append({"setting": name, "values": dict(zip(runs, values, strict=True))})
    summaries = [metric_summary(d.get("metrics") or []) for d in details]
    keys = sorted({key for s in summaries for key in s})
    metrics = [
        {
            "metric": key,
            "final": {r: s.get(key, {}).get("final") for r, s in zip(runs, summaries, strict=True)},
            "best": {r: s.get(key, {}).get("best") for r, s in zip(runs, summaries, strict=True)},
        }
        for key in keys
    ]
    states = {str(d["run_id"]): d.get("state") for d in details}
    return {"runs": runs, "states": states, "settings": rows, "metrics": metrics}


def table_rows(data: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """The compare data as one table: columns (key, header) and rows of text."""
    runs: list[str] = data["runs"]
    columns = [("name", ""), *((r, r) for r in runs)]
    rows: list[dict[str, Any]] = [{"name": "state", **data["states"]}]
    for row in data["settings"]:
        rows.append({"name": row["setting"], **{r: _text(v) for r, v in row["values"].items()}})
    for row in data["metrics"]:
        for kind in ("final", "best"):
            rows.append(
                {"name": f"{row['metric']} ({kind})", **{r: _text(v) for r, v in row[kind].items()}}
            )
    return columns, rows


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
