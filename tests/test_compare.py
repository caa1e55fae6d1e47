"""`compare`'s table (pure, on show's details) and the metric summaries it and `plot` use."""

from __future__ import annotations

from typing import Any

from hpcjob.insight.compare import compare, metric_summary, settings, table_rows


def detail(run_id: str, lr: float, epochs: int, losses: list[float | None], **extra: Any) -> dict:
    return {
        "run_id": run_id,
        "workload": "train",
        "profile": "snellius",
        "state": "COMPLETED",
        "script_sha256": "a" * 64 if lr < 0.01 else "b" * 64,
        "spec": {
            "workload": "train",
            "args": {"lr": lr, "epochs": epochs, "hidden_units": "512,256"},
            "resources": {"partition": "gpu_a100", "time_s": 3600, "gpus": 1, "array": None},
            "data_dir": "/data",
            **extra,
        },
        "metrics": [{"step": i + 1, "key": "val_loss", "value": v} for i, v in enumerate(losses)]
        + [
            {"step": 1, "key": "val_auc", "value": 0.7},
            {"step": 2, "key": "val_auc", "value": 0.9},
        ],
        "facts": {"provenance_submit": {"workload_sha256": "c" * 64}},
    }


def test_only_the_settings_that_differ_and_metrics_side_by_side() -> None:
    a = detail("r1", 1e-3, 3, [0.7, 0.5, 0.6])
    b = detail("r2", 1e-2, 3, [0.8, 0.6, None], rerun_of="r1")
    data = compare([a, b])
    assert data["runs"] == ["r1", "r2"]
    rows = {r["setting"]: r["values"] for r in data["settings"]}
    assert set(rows) == {"lr", "script_sha256", "rerun_of"}
    assert rows["lr"] == {"r1": 1e-3, "r2": 1e-2}
    assert rows["rerun_of"] == {"r1": None, "r2": "r1"}
    metrics = {m["metric"]: m for m in data["metrics"]}
    assert metrics["val_loss"]["final"] == {"r1": 0.6, "r2": None}  # a NaN last epoch is no value
    assert metrics["val_loss"]["best"] == {"r1": 0.5, "r2": 0.6}  # lower is better for a loss
    assert metrics["val_auc"]["best"] == {"r1": 0.9, "r2": 0.9}  # higher for an AUC
    every = compare([a, b], show_all=True)
    assert {r["setting"] for r in every["settings"]} >= {"epochs", "partition", "workload_sha256"}


def test_settings_read_provenance_and_sweeps() -> None:
    task = detail("r3", 1e-3, 1, [0.5], sweep_task={"sweep_id": "r9", "index": 0, "params": {}})
    found = settings(task)
    assert found["workload_sha256"] == "c" * 12 and found["script_sha256"] == "a" * 12
    assert found["sweep"] == "r9" and found["partition"] == "gpu_a100"


def test_table_has_a_row_per_setting_and_two_per_metric() -> None:
    data = compare([detail("r1", 1e-3, 2, [0.7, 0.5]), detail("r2", 1e-2, 4, [0.6, 0.4])])
    columns, rows = table_rows(data)
    assert columns == [("name", ""), ("r1", "r1"), ("r2", "r2")]
    names = [r["name"] for r in rows]
    assert names[0] == "state" and "epochs" in names and "lr" in names
    assert "val_loss (final)" in names and "val_loss (best)" in names
    by_name = {r["name"]: r for r in rows}
    assert by_name["val_loss (best)"] == {"name": "val_loss (best)", "r1": "0.5", "r2": "0.4"}
    assert by_name["lr"]["r1"] == "0.001"


def test_metric_summary_of_nothing() -> None:
    assert metric_summary([]) == {}
    summary = metric_summary([{"step": 1, "key": "val_loss", "value": None}])
    assert summary == {"val_loss": {"final": None, "best": None, "epochs": 1}}


def test_best_is_the_highest_throughput_and_score_and_the_lowest_loss_or_time() -> None:
    series = [200.0, 300.0, 250.0]
    higher = ("images_per_s", "samples_per_s", "tokens_per_sec", "throughput", "tflops",
              "val_accuracy", "val_acc", "val_auc", "f1", "precision", "recall",
              "gpu_util_mean_pct")  # fmt: skip
    lower = ("val_loss", "train_loss", "epoch_time_s", "error_rate", "mse")
    for key in (*higher, *lower):
        metrics = [{"step": i + 1, "key": key, "value": v} for i, v in enumerate(series)]
        expected = 300.0 if key in higher else 200.0
        assert metric_summary(metrics)[key]["best"] == expected, key
