"""The text loss curves `show` draws: known series, gaps, one epoch, flat series."""

from __future__ import annotations

from hpcjob.insight.curves import LINE, MARKERS, OVERLAP, chart_text, loss_series, render_chart


def plot_rows(lines: list[str]) -> list[str]:
    """The chart's grid rows (what follows the axis bar), without the y labels."""
    return [line.split("┤", 1)[1] for line in lines if "┤" in line]


def test_known_series_draws_exactly() -> None:
    lines = render_chart({"train_loss": [(1, 1.0), (2, 0.5), (3, 0.0)]}, width=9, height=3)
    assert lines == [
        "  1 ┤●··",
        "0.5 ┤   ·●·",
        "  0 ┤      ··●",
        "    └─────────",
        "     1       3  (epoch)",
        "     ● train_loss",
    ]


def test_train_and_validation_each_get_a_marker_and_a_legend() -> None:
    lines = render_chart(
        {"train_loss": [(1, 0.7), (2, 0.5)], "val_loss": [(1, 0.6), (2, 0.65)]}, width=20
    )
    rows = plot_rows(lines)
    assert rows[0].startswith(MARKERS[0])  # the highest value, at the first epoch
    assert rows[-1].endswith(MARKERS[0])  # the lowest, at the last
    assert sum(r.count(MARKERS[1]) for r in rows) == 2
    assert f"{MARKERS[0]} train_loss  {MARKERS[1]} val_loss" in lines[-1]
    assert lines[0].startswith("0.7 ┤") and lines[len(rows) - 1].startswith("0.5 ┤")


def test_missing_value_leaves_a_gap_and_no_line_across_it() -> None:
    series = {"val_loss": [(1, 1.0), (2, None), (3, 1.0), (4, float("nan")), (5, 1.0)]}
    rows = plot_rows(render_chart(series, width=9, height=3))
    middle = rows[1]
    assert middle.count(MARKERS[0]) == 3  # epochs 1, 3, 5; None and NaN are not drawn
    assert LINE not in middle  # nothing joins a point to a missing neighbour


def test_one_epoch_is_one_point_in_the_middle() -> None:
    lines = render_chart({"train_loss": [(1, 0.42)]}, width=11, height=5)
    rows = plot_rows(lines)
    assert [r.rstrip() for r in rows].count("") == 4
    assert rows[2] == " " * 5 + MARKERS[0]  # flat: middle row; one epoch: middle column
    assert "1  (epoch)" in lines[-2]


def test_flat_series_is_a_level_line() -> None:
    lines = render_chart({"train_loss": [(1, 2.0), (2, 2.0), (3, 2.0)]}, width=9, height=5)
    rows = plot_rows(lines)
    assert rows[2] == f"{MARKERS[0]}{LINE * 3}{MARKERS[0]}{LINE * 3}{MARKERS[0]}"
    assert lines[2].startswith("  2 ┤")


def test_two_series_in_one_cell_are_marked_as_overlap() -> None:
    rows = plot_rows(render_chart({"a": [(1, 1.0), (2, 0.0)], "b": [(1, 1.0)]}, width=8))
    assert rows[0].startswith(OVERLAP)


def test_nothing_to_draw() -> None:
    assert render_chart({}) == []
    assert render_chart({"val_loss": [(1, None)]}) == []
    assert chart_text([]) == ""


def test_series_from_show_metrics_prefer_train_and_val_loss() -> None:
    metrics = [
        {"step": 2, "key": "train_loss", "value": 0.5},
        {"step": 1, "key": "train_loss", "value": 0.7},
        {"step": 1, "key": "val_loss", "value": 0.6},
        {"step": 1, "key": "val_auc", "value": 0.8},
    ]
    assert loss_series(metrics) == {
        "train_loss": [(1, 0.7), (2, 0.5)],
        "val_loss": [(1, 0.6)],
    }
    assert loss_series([{"step": 1, "key": "nll_loss", "value": 1.0}]) == {"nll_loss": [(1, 1.0)]}
    assert loss_series(metrics, keys=["val_auc"]) == {"val_auc": [(1, 0.8)]}
    text = chart_text(metrics)
    assert text.startswith("\nLoss curves:\n") and "train_loss" in text and "val_auc" not in text
