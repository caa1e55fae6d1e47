"""eda.py on files whose faults are known (synth.json)."""

from __future__ import annotations

import json
from pathlib import Path

import eda
import numpy as np
import pytest
import synth


@pytest.fixture(scope="module")
def course_eda(course_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eda")
    # Blocks of 300 images: faults fall on both sides of block boundaries.
    argv = ["--data-dir", str(course_dir), "--output-dir", str(out), "--splits", "train,valid"]
    assert eda.main([*argv, "--block-size", "300"]) == 0
    return out


def test_fault_counts_and_examples_match_what_was_injected(
    course_eda: Path, course_dir: Path
) -> None:
    injected = json.loads((course_dir / "synth.json").read_text())["splits"]
    found = json.loads((course_eda / "eda.json").read_text())["splits"]
    for split in ("train", "valid"):
        faults = found[split]["faults"]
        for kind, name in (
            ("nan", "nan"),
            ("inf", "inf"),
            ("out_of_range", "big"),
            ("black", "black"),
            ("white", "white"),
        ):
            expected = injected[split]["faults"][name]
            assert faults[kind]["images"] == len(expected), (split, kind)
            assert faults[kind]["examples"] == expected[: eda.EXAMPLES], (split, kind)
        assert found[split]["images"] == injected[split]["n"]
        assert found[split]["positives"] == injected[split]["positives"]
    train = found["train"]
    assert train["faults"]["nan"]["pixels"] == 10 * (96 * 96 * 3 // 50)  # 2% of each image
    assert train["raw_max"] > 1e4 and 0 <= train["pixel_mean"] <= 255


def test_histograms_count_every_pixel_once_per_class(course_eda: Path) -> None:
    train = json.loads((course_eda / "eda.json").read_text())["splits"]["train"]
    hist = train["histogram"]
    assert sum(hist["class_0"]) == train["negatives"] * 96 * 96 * 3
    assert sum(hist["class_1"]) == train["positives"] * 96 * 96 * 3
    # Positives' centre is redder: more mass at high levels than negatives.
    high = [sum(hist[c][200:]) / sum(hist[c]) for c in ("class_0", "class_1")]
    assert high[1] > high[0]


def test_plots_and_facts_are_written(course_eda: Path) -> None:
    for split in ("train", "valid"):
        for kind in ("histogram", "samples", "outliers"):
            png = course_eda / f"eda_{split}_{kind}.png"
            assert png.read_bytes()[:4] == b"\x89PNG", png
    facts = [
        json.loads(ln)["facts"] for ln in (course_eda / "metrics.jsonl").read_text().splitlines()
    ]
    assert facts[0]["eda_train_images"] == 2048 and facts[0]["eda_train_black_images"] == 10
    assert facts[1]["eda_valid_images"] == 512


def test_official_data_is_clean(official_dir: Path, tmp_path: Path) -> None:
    argv = ["--data-dir", str(official_dir), "--output-dir", str(tmp_path), "--splits", "test"]
    assert eda.main(argv) == 0
    test = json.loads((tmp_path / "eda.json").read_text())["splits"]["test"]
    assert all(v["images"] == 0 for v in test["faults"].values())
    assert test["raw_min"] >= 0 and test["raw_max"] <= 255 and test["x_dtype"] == "uint8"
    assert np.isclose(test["positive_fraction"], 0.5)


def test_missing_split_is_an_error(official_dir: Path, tmp_path: Path) -> None:
    argv = ["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    assert eda.main(argv) == 1


@pytest.fixture(scope="module")
def no_test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The course layout: train and valid, no test split (made with synth, test files deleted)."""
    out = tmp_path_factory.mktemp("course-no-test")
    synth.generate(out, "course", {"train": 256, "valid": 64, "test": 32}, seed=2)
    for xy in "xy":
        (out / synth.file_name("test", xy)).unlink()
    return out


def test_a_missing_test_split_is_reported_and_the_others_analysed(
    no_test_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data-dir", str(no_test_split), "--output-dir", str(tmp_path)]
    assert eda.main(argv) == 0  # the default splits: train, valid, test
    out = capsys.readouterr()
    result = json.loads((tmp_path / "eda.json").read_text())
    assert sorted(result["splits"]) == ["train", "valid"]
    assert result["splits"]["train"]["images"] == 256
    missing = result["missing_splits"]
    assert list(missing) == ["test"]
    assert missing["test"] == [synth.file_name("test", "x"), synth.file_name("test", "y")]
    assert "split 'test' not found" in out.out and "skipped" in out.out
    assert "Error" not in out.err
    facts = [
        json.loads(ln)["facts"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert {"eda_missing_splits": ["test"]} in facts


def test_a_missing_train_split_is_an_error_before_any_analysis(
    no_test_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    name = synth.file_name("valid", "x")
    (data / name).symlink_to(no_test_split / name)
    (data / synth.file_name("valid", "y")).symlink_to(no_test_split / synth.file_name("valid", "y"))
    argv = ["--data-dir", str(data), "--output-dir", str(tmp_path / "out")]
    assert eda.main(argv) == 1
    err = capsys.readouterr().err
    assert "split 'train' not found" in err and "eda needs the train split" in err
    assert not (tmp_path / "out" / "eda_valid_histogram.png").exists()  # nothing analysed
