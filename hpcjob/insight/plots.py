"""`hpcjob plot`: one PNG comparing runs' per-epoch curves (matplotlib, imported only here).

Each run gets a colour, each metric a line style; the data come from the ledger, so plotting
needs no connection to the cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcjob.errors import HpcjobError
from hpcjob.insight.curves import Point, loss_series
from hpcjob.run.context import Context
from hpcjob.run.watch import resolve

_STYLES = ("-", "--", ":", "-.")


def default_out(run_ids: Sequence[str], folder: Path | None = None) -> Path:
    """`plot-<run>-<run>….png` in the current folder."""
    name = "plot-" + "-".join(run_ids[:6]) + ("-etc" if len(run_ids) > 6 else "") + ".png"
    return (folder or Path.cwd()) / name


def write_png(
    curves: Mapping[str, Mapping[str, Sequence[Point]]],
    out: Path,
    labels: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw `curves` (run → metric → points) into `out`, written atomically."""
    try:
        import matplotlib
    except ImportError as exc:
        raise HpcjobError(
            "`hpcjob plot` needs matplotlib, which is not installed here.",
            hint="pip install matplotlib (or: pip install 'hpcjob[workloads]').",
        ) from exc
    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = list(dict.fromkeys(k for series in curves.values() for k in series))
    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (run_id, series) in enumerate(curves.items()):
        for key, points in series.items():
            xs = [step for step, _ in points]
            ys = [float("nan") if v is None else v for _, v in points]  # a gap, not a zero
            label = f"{run_id} {key}" + (
                f" ({labels[run_id]})" if labels and labels.get(run_id) else ""
            )
            axes.plot(
                xs,
                ys,
                _STYLES[metrics.index(key) % len(_STYLES)],
                color=colors[index % len(colors)],
                marker="o",
                markersize=3,
                label=label,
            )
    axes.set_xlabel("epoch")
    axes.set_ylabel(", ".join(metrics))
    axes.set_title(title or "hpcjob: " + ", ".join(curves))
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(fontsize="small")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        figure.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
    return out


def plot_refs(
    ctx: Context, refs: Sequence[str], out: Path | None, metrics: Sequence[str] | None
) -> tuple[Path, list[str]]:
    """`hpcjob plot`: the runs' curves from the ledger into one PNG; (path, run ids)."""
    curves: dict[str, dict[str, list[Point]]] = {}
    labels: dict[str, str] = {}
    for ref in refs:
        run = resolve(ctx, ref)
        recorded = ctx.ledger.metrics(run.run_id)
        rows = [{"step": m.step, "key": m.key, "value": m.value} for m in recorded]
        series = loss_series(rows, keys=list(metrics) if metrics else None)
        if not any(v is not None for points in series.values() for _, v in points):
            wanted = ", ".join(metrics) if metrics else "train_loss/val_loss"
            have = sorted({m.key for m in recorded})
            raise HpcjobError(
                f"Run {run.run_id} ({run.workload}, {run.state.value}) has no {wanted} metrics"
                + (f"; it has {', '.join(have)}." if have else " recorded."),
                hint="Plot a run that has reported epochs (`hpcjob show RUN` lists its metrics)"
                + (", or choose one with --metric." if have else "."),
            )
        curves[run.run_id] = series
        params = (run.spec.get("sweep_task") or {}).get("params") or {}
        labels[run.run_id] = " ".join(f"{k}={v}" for k, v in params.items())
    path = write_png(curves, out or default_out(list(curves)), labels=labels)
    return path, list(curves)
