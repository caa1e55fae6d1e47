"""Loss curves as text: a small chart of per-epoch series for `hpcjob show` (pure).

A series is a list of (epoch, value) points; a value of None (NaN or Inf in the job, stored as
missing) leaves a gap. The chart is plain unicode, so it reads the same in a terminal, a log file
and the README.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Point = tuple[int, float | None]

MARKERS = ("●", "◆", "▲", "■", "○", "◇")
OVERLAP = "✱"  # two series in one cell
LINE = "·"  # between two points of one series
# The curves `show` draws when the run has them: training against validation.
DEFAULT_KEYS = ("train_loss", "val_loss")


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def loss_series(
    metrics: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, list[Point]]:
    """The series to draw from `show`'s metric rows ({"step", "key", "value"}).

    By default train_loss and val_loss; a run without them gets its other `*_loss` keys.
    """
    by_key: dict[str, list[Point]] = {}
    for row in metrics:
        by_key.setdefault(str(row["key"]), []).append((int(row["step"]), row["value"]))
    if keys is None:
        keys = [k for k in DEFAULT_KEYS if k in by_key] or sorted(
            k for k in by_key if k.endswith("loss")
        )
    return {k: sorted(by_key[k]) for k in keys if k in by_key}


def _label(value: float) -> str:
    return f"{value:.4g}"


def render_chart(
    series: Mapping[str, Sequence[Point]], width: int = 48, height: int = 9
) -> list[str]:
    """The chart's lines: a y axis with the top/middle/bottom values, one marker per point,
    dots joining consecutive points of a series, the epochs below and a legend.

    Returns [] when no series has a finite value (nothing to draw).
    """
    points = [(s, v) for pts in series.values() for s, v in pts if _finite(v)]
    if not points:
        return []
    width, height = max(width, 8), max(height, 3)
    steps = sorted({s for s, _ in points})
    values = [float(v) for _, v in points if v is not None]
    low, high = min(values), max(values)
    if high - low < 1e-12 * max(1.0, abs(high)):  # a flat series sits in the middle
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
    first, last = steps[0], steps[-1]

    def column(step: int) -> int:
        if last == first:
            return width // 2
        return round((step - first) / (last - first) * (width - 1))

    def row(value: float) -> int:
        return round((high - value) / (high - low) * (height - 1))

    grid = [[" "] * width for _ in range(height)]
    _draw(series, grid, lambda step, value: (column(step), row(value)))
    middle = (height - 1) // 2
    labels = {r: _label(high - r / (height - 1) * (high - low)) for r in (0, middle, height - 1)}
    pad = max(len(text) for text in labels.values())
    lines = [f"{labels.get(r, ''):>{pad}} ┤{''.join(row).rstrip()}" for r, row in enumerate(grid)]
    lines.append(" " * pad + " └" + "─" * width)
    axis = [" "] * width
    for step in (first, last) if last != first else (first,):
        text = str(step)
        start = min(max(0, column(step) - len(text) // 2), width - len(text))
        axis[start : start + len(text)] = list(text)
    lines.append(" " * (pad + 2) + "".join(axis).rstrip() + "  (epoch)")
    legend = "  ".join(
        f"{MARKERS[i % len(MARKERS)]} {name}" for i, name in enumerate(series) if series[name]
    )
    lines.append(" " * (pad + 2) + legend)
    return lines


def _draw(
    series: Mapping[str, Sequence[Point]],
    grid: list[list[str]],
    cell_of: Callable[[int, float], tuple[int, int]],
) -> None:
    """Each series' markers into the grid, dots between consecutive points; a cell two series
    share gets the overlap mark."""
    owner: dict[tuple[int, int], int] = {}
    for index, unsorted in enumerate(series.values()):
        pts = sorted(unsorted, key=lambda point: point[0])
        mark = MARKERS[index % len(MARKERS)]
        cells = [cell_of(s, v) if v is not None and _finite(v) else None for s, v in pts]
        for a, b in itertools.pairwise(cells):
            if a is None or b is None:
                continue  # a missing value breaks the line
            for col in range(a[0] + 1, b[0]):
                r = round(a[1] + (b[1] - a[1]) * (col - a[0]) / (b[0] - a[0]))
                if grid[r][col] == " ":
                    grid[r][col] = LINE
        for cell in cells:
            if cell is None:
                continue
            col, r = cell
            previous = owner.get((r, col))
            grid[r][col] = OVERLAP if previous is not None and previous != index else mark
            owner[(r, col)] = index


def chart_text(metrics: Sequence[Mapping[str, Any]], width: int = 48, height: int = 9) -> str:
    """`show`'s curve section: a heading and the chart, or '' when there is nothing to draw."""
    lines = render_chart(loss_series(metrics), width=width, height=height)
    if not lines:
        return ""
    return "\nLoss curves:\n" + "\n".join(lines) + "\n"
