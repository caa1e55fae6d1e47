"""Parsing job output into metrics and facts: human lines, prefixed JSON, metrics.jsonl, CSV
files, garbage."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import pytest

from hpcjob.joblog import (
    MAX_HUMAN_LINE,
    JobOutput,
    _pairs,
    headline,
    normalise_key,
    parse_metrics_csv,
    parse_metrics_file,
    parse_metrics_jsonl,
    parse_output,
)

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


def values_of(out: JobOutput) -> dict[tuple[int, str], float | None]:
    return {(m.step, m.key): m.value for m in out.metric_list()}


def test_metrics_csv_by_header_with_an_epoch_column() -> None:
    text = "Epoch,Train Loss,val_acc,note\n1,0.5,0.8,warmup\n2,nan,inf,\n3.0,0.25,,x\n"
    assert values_of(parse_metrics_csv(text)) == {
        (1, "train_loss"): 0.5,
        (1, "val_acc"): 0.8,
        (2, "train_loss"): None,  # NaN and Inf are stored as missing
        (2, "val_acc"): None,
        (3, "train_loss"): 0.25,  # an empty cell and text are no metric
    }


def test_metrics_csv_prefers_step_to_epoch_as_the_json_objects_do() -> None:
    # Lightning's CSVLogger: the epoch and the global step, and rows that log different metrics.
    text = "epoch,step,train_loss,val_loss\n0,49,0.7,\n0,49,,0.69\n1,99,0.6,\n"
    assert values_of(parse_metrics_csv(text)) == {
        (49, "train_loss"): 0.7,
        (49, "val_loss"): 0.69,
        (99, "train_loss"): 0.6,
    }


def test_metrics_csv_without_a_step_column_counts_rows() -> None:
    text = "loss,acc\n0.9,0.1\n\n0.8,0.2\n"
    assert values_of(parse_metrics_csv(text)) == {
        (1, "loss"): 0.9,
        (1, "acc"): 0.1,
        (2, "loss"): 0.8,  # a blank line is no row
        (2, "acc"): 0.2,
    }


def test_metrics_csv_skips_a_torn_last_line() -> None:
    text = "step,loss\n1,0.5\n2,0.4\n3,0.3"  # 3,0.3 may still become 3,0.35
    assert values_of(parse_metrics_csv(text)) == {(1, "loss"): 0.5, (2, "loss"): 0.4}
    assert values_of(parse_metrics_csv("step,loss")) == {}
    assert values_of(parse_metrics_csv("")) == {}


def test_metrics_csv_rows_without_a_usable_step_are_skipped() -> None:
    text = "step,loss\nx,1\n-1,2\n,3\n4,4\n"
    assert values_of(parse_metrics_csv(text)) == {(4, "loss"): 4.0}


def test_metrics_csv_time_column_and_ragged_rows() -> None:
    text = "step,time,loss\n1,2026-01-01T00:00:00Z,0.5,extra\n2,12.5\n"
    (metric,) = parse_metrics_csv(text).metric_list()
    assert (metric.step, metric.key, metric.value) == (1, "loss", 0.5)
    assert metric.at == "2026-01-01T00:00:00Z"


def test_metrics_csv_adds_to_what_is_there_and_survives_garbage() -> None:
    out = parse_output("Epoch 1: loss = 0.9\n")
    parse_metrics_csv("step,acc\n1,0.5\n", out)
    assert values_of(out) == {(1, "loss"): 0.9, (1, "acc"): 0.5}
    huge = "step,loss\n1,0.5\n2," + '"' + "x" * 200_000 + '"\n'  # beyond csv's field limit
    assert values_of(parse_metrics_csv(huge)) == {(1, "loss"): 0.5}  # what came before it
    parse_metrics_csv("\x00\xff\ufffd,\n" * 100)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("metrics.csv", "step,loss\n1,0.5\n"),
        ("logs/Metrics.CSV", "step,loss\n1,0.5\n"),
        ("metrics.jsonl", '{"step": 1, "loss": 0.5}\n'),
        ("metrics.json", '{"step": 1, "loss": 0.5}\n'),
        ("train.log", "Epoch 1: loss = 0.5\n"),
        ("slurm-12.out", 'HPCJOB_METRIC {"step": 1, "loss": 0.5}\n'),
    ],
)
def test_parse_metrics_file_by_extension(name: str, text: str) -> None:
    assert values_of(parse_metrics_file(name, text)) == {(1, "loss"): 0.5}


def test_parse_metrics_file_trusts_the_extension() -> None:
    assert parse_metrics_file("metrics.csv", '{"step": 1, "loss": 0.5}\n').metrics == {}


@contextlib.contextmanager
def _fails_on_a_hang(seconds: int = 60) -> Iterator[None]:
    """Fail (never on speed: only on a hang) if the block runs longer than `seconds`."""

    def hung(signum: int, frame: object) -> None:
        raise AssertionError(f"still parsing after {seconds} s: the parser is not linear")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    "body",
    [
        "word " * 200_000,  # a lazy key from every letter: quadratic (1 MB: hours)
        "a" * 1_000_000 + " = x",
        "a = " * 250_000,  # separators without numbers
        "1" + " " * 1_000_000 + "x",  # blanks between the epoch and its colon
    ],
)
def test_a_megabyte_hostile_epoch_line_does_not_hang(body: str) -> None:
    line = f"Epoch {body}" if body.startswith("1") else f"Epoch 1: {body}"
    with _fails_on_a_hang():
        out = parse_output(f"{line}\nEpoch 2: loss = 0.5\n")
    assert [(m.step, m.key, m.value) for m in out.metric_list()] == [(2, "loss", 0.5)]


def test_pairs_are_found_in_one_pass_over_a_long_body() -> None:
    body = "word " * 200_000 + "Val Loss = 0.25, acc: 1e-1; x y = 3"
    with _fails_on_a_hang():
        pairs = _pairs(body)
    assert [(normalise_key(key), value) for key, value in pairs] == [
        (("word_" * 13)[:64], "0.25"),  # the key runs back over the words, cut to 64
        ("acc", "1e-1"),
        ("x_y", "3"),
    ]


def test_a_line_beyond_the_bound_is_cut_not_parsed_whole() -> None:
    out = parse_output("Epoch 1: loss = 0.5, " + "x" * MAX_HUMAN_LINE + " acc = 0.9\n")
    assert [(m.key, m.value) for m in out.metric_list()] == [("loss", 0.5)]
