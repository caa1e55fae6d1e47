"""Parsing job output into metrics and facts: human lines, prefixed JSON, metrics.jsonl, garbage."""

from __future__ import annotations

from hpcjob.joblog import headline, parse_metrics_jsonl, parse_output

STUDENT_OUTPUT = """\
Loading data...
First batch OK: x=(32, 3, 96, 96) y=(32,)
Epoch 1: Train_Loss = 0.6931, Val_Loss = 0.6523
Epoch 2: Train_Loss = 0.5123, Val_Loss = 0.7066, Val_Acc = 0.8123
epoch 3 - train loss: 0.40, val loss: nan
Done.
"""


def test_human_epoch_lines() -> None:
    out = parse_output(STUDENT_OUTPUT)
    values = {(m.step, m.key): m.value for m in out.metric_list()}
    assert values[(1, "train_loss")] == 0.6931
    assert values[(2, "val_loss")] == 0.7066
    assert values[(2, "val_acc")] == 0.8123
    assert values[(3, "train_loss")] == 0.40
    assert values[(3, "val_loss")] is None  # NaN is stored as missing, not as a number


def test_prefixed_json_and_facts() -> None:
    text = (
        'HPCJOB_METRIC {"facts": {"gpu_count": 0, "torch": "2.13.0"}}\n'
        'HPCJOB_METRIC {"step": 1, "epoch": 1, "train_loss": 0.5, "val_auc": 0.9, '
        '"time": "2026-01-01T00:00:00Z", "note": "text is ignored", "ok": true}\n'
        "HPCJOB_METRIC {not json\n"
        "HPCJOB_METRIC [1, 2]\n"
        'HPCJOB_METRIC {"step": "x", "loss": 1}\n'
    )
    out = parse_output(text)
    assert out.facts == {"gpu_count": 0, "torch": "2.13.0"}
    keys = {m.key for m in out.metric_list()}
    assert keys == {"train_loss", "val_auc"}
    assert all(m.at == "2026-01-01T00:00:00Z" for m in out.metric_list())


def test_metrics_jsonl_with_torn_last_line_and_non_finite_values() -> None:
    text = (
        '{"step": 1, "train_loss": 0.5}\n'
        '{"step": 2, "train_loss": Infinity, "val_loss": NaN}\n'
        '{"step": 3, "train_lo'
    )
    out = parse_metrics_jsonl(text)
    values = {(m.step, m.key): m.value for m in out.metric_list()}
    assert values == {(1, "train_loss"): 0.5, (2, "train_loss"): None, (2, "val_loss"): None}


def test_binary_and_huge_garbage_do_not_crash() -> None:
    garbage = (
        "\x00\xff\ufffd" * 1000
        + "\nEpoch 99999999999999999999: loss = 0.5\n"  # no epoch has that number: dropped
        + "Epoch 3: loss = 1e999\n"  # overflows to inf: kept as missing, never as inf
    )
    out = parse_output(garbage)
    assert [(m.step, m.key, m.value) for m in out.metric_list()] == [(3, "loss", None)]
    deep = "HPCJOB_METRIC " + "[" * 100000 + "\n"
    parse_output(deep)


def test_headline_prefers_validation_loss() -> None:
    out = parse_output(STUDENT_OUTPUT)
    last = [m for m in out.metric_list() if m.step == 2]
    assert headline(last) == "epoch 2 val_loss=0.7066"
    assert headline([]) == ""
