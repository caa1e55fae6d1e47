"""The user's config files and the overrides on them: reading and writing YAML, JSON and TOML,
`--set`/`--sweep` values, and the keys an override may set."""

from __future__ import annotations

from typing import Any

import pytest

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.project.configfile import (
    apply_overrides,
    config_keys,
    dump_config,
    get_key,
    load_config,
    parse_set,
    parse_sweep,
    parse_value,
)

CONFIG: dict[str, Any] = {
    "training": {"epochs": 10, "learning_rate": 0.001, "batch_size": 32, "amp": False},
    "model": {"hidden_units": [128, 64], "name": "mlp"},
    "seed": 0,
}

YAML = b"""\
training:
  epochs: 10
  learning_rate: 0.001
  batch_size: 32
  amp: false
model:
  hidden_units:
  - 128
  - 64
  name: mlp
seed: 0
"""

JSON = b"""\
{
  "training": {"epochs": 10, "learning_rate": 0.001, "batch_size": 32, "amp": false},
  "model": {"hidden_units": [128, 64], "name": "mlp"},
  "seed": 0
}
"""

TOML = b"""\
seed = 0

[training]
epochs = 10
learning_rate = 0.001
batch_size = 32
amp = false

[model]
hidden_units = [128, 64]
name = "mlp"
"""


def error_of(call: Any, *args: Any, **kwargs: Any) -> HpcjobError:
    with pytest.raises(HpcjobError) as info:
        call(*args, **kwargs)
    assert info.value.exit_code == EXIT_USAGE
    return info.value


# ------------------------------------------------------------------------------- the files
@pytest.mark.parametrize(
    ("name", "data"),
    [("config.yaml", YAML), ("config.YML", YAML), ("config.json", JSON), ("conf/c.toml", TOML)],
)
def test_each_format_loads_the_same_mapping(name: str, data: bytes) -> None:
    assert load_config(name, data) == CONFIG


@pytest.mark.parametrize("name", ["config.yaml", "config.json", "config.toml"])
def test_dump_then_load_round_trips(name: str) -> None:
    loaded = load_config(name, dump_config(name, CONFIG))
    assert loaded == CONFIG
    if not name.endswith(".toml"):  # TOML puts a table's plain values before its tables
        assert config_keys(loaded) == config_keys(CONFIG)


def test_yaml_and_json_are_written_in_block_style() -> None:
    yaml_text = dump_config("c.yaml", CONFIG).decode()
    assert yaml_text.startswith("training:\n  epochs: 10\n")  # not sorted, not {flow: style}
    assert "- 128\n" in yaml_text
    assert dump_config("c.json", {"a": {"b": 1}}).decode() == '{\n  "a": {\n    "b": 1\n  }\n}\n'


@pytest.mark.parametrize(
    ("name", "data", "where"),
    [
        ("config.yaml", b"training:\n  epochs: 10\n lr: [1\n", "line 3"),
        ("config.json", b'{\n  "a": 1,\n  "b": \n}\n', "line 4"),
        ("config.toml", b"[training]\nepochs = 10\nlr = = 3\n", "line 3"),
    ],
)
def test_a_broken_file_is_named_with_its_line(name: str, data: bytes, where: str) -> None:
    error = error_of(load_config, name, data)
    assert name in error.message and where in error.message


@pytest.mark.parametrize(
    ("name", "data"),
    [("c.yaml", b"- a\n- b\n"), ("c.json", b"[1, 2]"), ("c.yaml", b"just text\n")],
)
def test_a_top_level_that_is_not_a_mapping_is_refused(name: str, data: bytes) -> None:
    error = error_of(load_config, name, data)
    assert "not a mapping" in error.message and name in error.message


def test_an_empty_yaml_file_is_an_empty_config() -> None:
    assert load_config("c.yaml", b"# nothing yet\n") == {}


def test_an_unknown_extension_lists_the_supported_ones() -> None:
    for name in ("config.ini", "config"):
        error = error_of(load_config, name, b"a=1")
        assert ".yaml, .yml, .json, .toml" in str(error.hint)
    error_of(dump_config, "config.ini", {})


def test_non_utf8_is_refused_by_name() -> None:
    assert "config.yaml" in error_of(load_config, "config.yaml", b"a: \xff\n").message


def test_toml_cannot_hold_null() -> None:
    error = error_of(dump_config, "c.toml", {"a": None})
    assert "TOML has no null" in str(error.hint)


# -------------------------------------------------------------------------------- the keys
def test_config_keys_are_every_dotted_path_tables_too() -> None:
    assert config_keys(CONFIG) == [
        "training",
        "training.epochs",
        "training.learning_rate",
        "training.batch_size",
        "training.amp",
        "model",
        "model.hidden_units",
        "model.name",
        "seed",
    ]


def test_get_key() -> None:
    assert get_key(CONFIG, "training.epochs") == 10
    assert get_key(CONFIG, "model") == CONFIG["model"]
    for missing in ("training.lr", "training.epochs.x", "nothing"):
        with pytest.raises(KeyError):
            get_key(CONFIG, missing)


# ------------------------------------------------------------------------------ the values
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("-3", -3),
        ("3.5", 3.5),
        ("3e-4", 3e-4),  # YAML 1.1 (PyYAML) alone would keep these two as text
        ("1e-3", 1e-3),
        ("1E5", 1e5),
        ("1.0e5", 1e5),
        ("[1e-3, 2e-3]", [1e-3, 2e-3]),
        ("[128,64]", [128, 64]),
        ("{a: 1}", {"a": 1}),
        ("true", True),
        ("False", False),
        ("null", None),
        ("~", None),
        ("adam", "adam"),
        ("hello world", "hello world"),
        ("1:30", "1:30"),  # not 90 (YAML 1.1's base 60)
        ("010", "010"),  # not 8 (YAML 1.1's octal)
        ("2024-01-01", "2024-01-01"),  # not a date, which JSON cannot write
        ("#1", "#1"),  # not a YAML comment
        ("[1, 2", "[1, 2"),  # unreadable YAML stays text
        ("", ""),
    ],
)
def test_parse_value(text: str, value: Any) -> None:
    parsed = parse_value(text)
    assert parsed == value
    assert type(parsed) is type(value)


def test_parse_set() -> None:
    assert parse_set("training.learning_rate=3e-4") == ("training.learning_rate", 3e-4)
    assert parse_set(" model.name = a=b") == ("model.name", "a=b")  # split at the first =
    for bad in ("training.epochs", "=3", " =3"):
        error = error_of(parse_set, bad)
        assert "--set training.learning_rate=3e-4" in str(error.hint)


def test_parse_sweep_splits_at_commas_outside_brackets() -> None:
    assert parse_sweep("training.learning_rate=1e-4,3e-4") == (
        "training.learning_rate",
        [1e-4, 3e-4],
    )
    assert parse_sweep("model.hidden_units=[128,64],[256,128]") == (
        "model.hidden_units",
        [[128, 64], [256, 128]],
    )
    assert parse_sweep("model.name='a,b',c") == ("model.name", ["a,b", "c"])


def test_parse_sweep_splits_at_semicolons_when_there_are_any() -> None:
    assert parse_sweep("data.files=a,b;c") == ("data.files", ["a,b", "c"])


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("training.epochs=1,2,1", "'1' is there twice"),
        ("training.learning_rate=1e-3,0.001", "'0.001' is there twice"),
        ("training.epochs=1,,2", "value 2 is empty"),
        ("training.epochs=1,2,", "value 3 is empty"),
        ("training.epochs=", "value 1 is empty"),
        ("model.hidden_units=[1,2],[3", "unclosed or unmatched"),
        ("model.hidden_units=[1,2]],[3]", "unclosed or unmatched"),
        ("training.epochs", "is not KEY=VALUE1,VALUE2"),
    ],
)
def test_parse_sweep_refuses(text: str, phrase: str) -> None:
    assert phrase in error_of(parse_sweep, text).message


def test_a_sweep_reports_every_bad_value_at_once() -> None:
    message = error_of(parse_sweep, "training.epochs=1,,1").message
    assert "value 2 is empty" in message and "'1' is there twice" in message


def test_true_and_one_are_different_sweep_values() -> None:
    assert parse_sweep("x=1,true") == ("x", [1, True])


# --------------------------------------------------------------------------- the overrides
def test_apply_overrides_sets_dotted_keys_on_a_copy() -> None:
    result = apply_overrides(
        CONFIG,
        {"training.epochs": 3, "model.hidden_units": [256, 128], "model.name": "cnn"},
        name="config.yaml",
    )
    assert result["training"]["epochs"] == 3
    assert result["model"] == {"hidden_units": [256, 128], "name": "cnn"}
    assert CONFIG["training"]["epochs"] == 10  # the original is untouched
    assert CONFIG["model"]["hidden_units"] == [128, 64]


def test_numbers_are_converted_where_that_loses_nothing() -> None:
    result = apply_overrides(
        CONFIG, {"training.learning_rate": 1, "training.epochs": 20.0}, name="c.yaml"
    )
    assert result["training"]["learning_rate"] == 1.0
    assert type(result["training"]["learning_rate"]) is float
    assert result["training"]["epochs"] == 20 and type(result["training"]["epochs"]) is int


def test_null_and_tables_may_replace_what_they_should() -> None:
    result = apply_overrides(
        CONFIG, {"training.epochs": None, "model": {"name": "x"}}, name="c.yaml"
    )
    assert result["training"]["epochs"] is None and result["model"] == {"name": "x"}


def test_an_unknown_key_names_the_closest_existing_ones() -> None:
    error = error_of(apply_overrides, CONFIG, {"training.lr": 1e-4}, name="config.yaml")
    assert "config.yaml" in error.message
    assert "training.lr: no such key (closest: training.learning_rate)" in error.message


@pytest.mark.parametrize(
    ("key", "closest"),
    [
        ("lr", "training.learning_rate"),  # the initials of the last part
        ("epochs", "training.epochs"),  # the same last part
        ("training.epoch", "training.epochs"),  # spelled alike
        ("model.hiden_units", "model.hidden_units"),
        ("batch", "training.batch_size"),  # contained in the last part
    ],
)
def test_closest_keys(key: str, closest: str) -> None:
    message = error_of(apply_overrides, CONFIG, {key: 1}, name="c.yaml").message
    assert f"{key}: no such key (closest: {closest})" in message


def test_every_refused_key_is_reported_at_once() -> None:
    error = error_of(
        apply_overrides,
        CONFIG,
        {
            "training.lr": 1e-4,
            "nothing_alike": 1,
            "training.epochs.x": 1,
            "training.batch_size": "big",
        },
        name="config.yaml",
    )
    assert error.message.startswith("Cannot set these keys of config.yaml:")
    assert "training.lr: no such key (closest: training.learning_rate)" in error.message
    assert "nothing_alike: no such key\n" in error.message
    assert "training.epochs.x: training.epochs is an int (10), not a table of keys" in error.message
    assert "training.batch_size is an int (32), not 'big'" in error.message


@pytest.mark.parametrize(
    ("key", "value", "phrase"),
    [
        ("training.epochs", "ten", "training.epochs is an int (10), not 'ten'"),
        ("training.epochs", True, "training.epochs is an int (10), not True"),
        ("training.epochs", 2.5, "training.epochs is an int (10), not 2.5"),
        ("training.epochs", [1], "training.epochs is an int (10), not [1]"),
        ("training.learning_rate", "fast", "training.learning_rate is a float (0.001), not 'fast'"),
        ("training.learning_rate", False, "is a float (0.001), not False"),
        ("training.amp", 1, "training.amp is a bool (False), not 1"),
        ("training.amp", "yes please", "training.amp is a bool (False), not 'yes please'"),
        ("training", 5, "training is a table of keys; set one of them, e.g. training.epochs"),
        ("model.name.first", "x", "model.name is text ('mlp'), not a table of keys"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused(key: str, value: Any, phrase: str) -> None:
    assert phrase in error_of(apply_overrides, CONFIG, {key: value}, name="c.yaml").message


def test_set_values_parsed_from_the_command_line_fit_their_keys() -> None:
    overrides = dict(parse_set(text) for text in ("training.learning_rate=3e-4", "training.amp=on"))
    result = apply_overrides(CONFIG, overrides, name="c.yaml")
    assert result["training"]["learning_rate"] == 3e-4 and result["training"]["amp"] is True
