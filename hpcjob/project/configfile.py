"""The user's config files (YAML, JSON, TOML) and the `--set`/`--sweep` overrides applied to them.

Pure: files come in and go out as bytes. Keys are dotted paths (`training.epochs`); an override
may only set a key the file already has, with a value of a fitting type, so a typo fails before
the job is queued rather than after it started.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import PurePath
from typing import Any

import tomli_w
import yaml

from hpcjob.errors import EXIT_USAGE, HpcjobError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}
_NULL_WORDS = {"null", "Null", "NULL", "~"}
_CLOSEST = 3
_SET_EXAMPLE = "--set training.learning_rate=3e-4"
_SWEEP_EXAMPLE = "--sweep training.learning_rate=1e-4,3e-4"


# --------------------------------------------------------------------------------- the files
def _format(name: str) -> str:
    suffix = PurePath(name).suffix.lower()
    if suffix not in FORMATS:
        raise HpcjobError(
            f"{name}: hpcjob cannot read a config file "
            f"{'ending in ' + suffix if suffix else 'without an extension'}.",
            hint=f"Use one of the supported formats: {', '.join(FORMATS)}.",
            exit_code=EXIT_USAGE,
        )
    return FORMATS[suffix]


def load_config(name: str, data: bytes) -> dict[str, Any]:
    """The mapping in a config file, by its extension; a broken file names its line."""
    kind = _format(name)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _unreadable(name, f"it is not UTF-8 text (byte {exc.start})") from exc
    if kind == "yaml":
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _unreadable(name, _yaml_problem(exc)) from exc
        loaded = {} if loaded is None else loaded  # an empty file (or only comments)
    elif kind == "json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _unreadable(name, f"line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
        except RecursionError as exc:
            raise _unreadable(name, "it is nested too deeply") from exc
    else:
        try:
            loaded = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _unreadable(name, str(exc)) from exc  # "… (at line N, column M)"
    if not isinstance(loaded, dict):
        raise HpcjobError(
            f"{name} holds {_kind_of(loaded)} at the top, not a mapping of keys.",
            hint="A config file maps names to values, e.g. `training: {epochs: 10}`.",
            exit_code=EXIT_USAGE,
        )
    return loaded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _unreadable(name: str, why: str) -> HpcjobError:
    return HpcjobError(
        f"Cannot read the config file {name}: {why}.",
        hint=f"Fix {name} at the place named above.",
        exit_code=EXIT_USAGE,
    )


def dump_config(name: str, data: Mapping[str, Any]) -> bytes:
    """A config back as bytes in the format its name says (key order kept)."""
    kind = _format(name)
    plain = _plain(data)
    try:
        if kind == "yaml":
            text = yaml.safe_dump(
                plain, sort_keys=False, default_flow_style=False, allow_unicode=True
            )
        elif kind == "json":
            text = json.dumps(plain, indent=2, ensure_ascii=False) + "\n"
        else:
            text = tomli_w.dumps(plain)
    except (TypeError, ValueError, yaml.YAMLError) as exc:
        hint = "TOML has no null: give the key a value." if kind == "toml" else None
        raise HpcjobError(
            f"Cannot write {name} as {kind.upper()}: {exc}", hint=hint, exit_code=EXIT_USAGE
        ) from exc
    return text.encode("utf-8")


def _plain(value: Any) -> Any:
    """Mappings as dicts and tuples as lists, which every dumper takes."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# ---------------------------------------------------------------------------------- the keys
def config_keys(data: Mapping[str, Any]) -> list[str]:
    """Every dotted key path in document order, tables too: `training`, `training.epochs`, …"""
    return list(_walk(data, ""))


def _walk(data: Mapping[str, Any], prefix: str) -> Iterator[str]:
    for key, value in data.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, Mapping):
            yield from _walk(value, path + ".")


def get_key(config: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key; KeyError if there is none."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def closest_keys(key: str, keys: list[str]) -> list[str]:
    """Up to three existing keys a mistyped one may have meant: the same last part (`epochs` →
    `training.epochs`), a last part that contains it or has it as initials (`lr` →
    `training.learning_rate`), then the most alike by spelling."""
    parent, _, last = key.rpartition(".")
    same, contains = [], []
    for candidate in keys:
        their = candidate.rpartition(".")[2].lower()
        initials = "".join(word[:1] for word in their.split("_") if word)
        if their == last.lower():
            same.append(candidate)
        elif last and (last.lower() in their or last.lower() == initials):
            contains.append(candidate)
    # Beside the key, compare last parts (a shared `training.` prefix says nothing); elsewhere
    # whole paths, but never a table above the key (`training` for `training.lr`).
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    spelled = [siblings[n] for n in difflib.get_close_matches(last, siblings, n=_CLOSEST)]
    others = [k for k in keys if k not in siblings.values() and not key.startswith(k + ".")]
    spelled += difflib.get_close_matches(key, others, n=_CLOSEST, cutoff=0.75)
    return list(dict.fromkeys([*same, *contains, *spelled]))[:_CLOSEST]


# -------------------------------------------------------------------------------- the values
class _ValueLoader(yaml.SafeLoader):
    """YAML for one `--set` value, with the numbers people mean: PyYAML's YAML 1.1 rules read
    `3e-4` as text, `1:30` as 90 (base 60), `010` as 8 (octal) and `2024-01-01` as a date.
    Here the first is a float, the others stay text (as in YAML 1.2, JSON and TOML)."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_DROPPED = (_INT, _FLOAT, "tag:yaml.org,2002:timestamp")
_ValueLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ValueLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0b[01_]+)$"),
    list("-+0123456789"),
)
_ValueLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)"
        r"|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A `--set` value as YAML: `[128,64]` a list, `true` a bool, `3` an int, `3e-4` a float,
    `null`/`~` None; an empty value is "" and anything YAML cannot read stays text."""
    if not text.strip():
        return ""
    try:
        value = yaml.load(text, Loader=_ValueLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError:
        return text
    if value is None and text.strip() not in _NULL_WORDS:
        return text  # `#1` is a YAML comment, but here the user meant the text
    return value


def parse_set(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` (split at the first `=`) into the key and its parsed value."""
    key, has_value, value = text.partition("=")
    key = key.strip()
    if not has_value or not key:
        raise HpcjobError(
            f"--set {text!r} is not KEY=VALUE.",
            hint=f"Name a key of the config file and its value, e.g. `{_SET_EXAMPLE}`.",
            exit_code=EXIT_USAGE,
        )
    return key, parse_value(value)


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """`KEY=V1,V2,…` into the key and its values. The values are split at `;` when there is
    one, otherwise at the commas outside brackets (`[128,64],[256,128]` is two lists)."""
    key, has_value, rest = text.partition("=")
    key = key.strip()
    if not has_value or not key:
        raise HpcjobError(
            f"--sweep {text!r} is not KEY=VALUE1,VALUE2,….",
            hint=f"Name a key of the config file and its values, e.g. `{_SWEEP_EXAMPLE}`.",
            exit_code=EXIT_USAGE,
        )
    pieces = rest.split(";") if ";" in rest else _split_commas(rest, text)
    problems: list[str] = []
    values: list[Any] = []
    for number, piece in enumerate(pieces, 1):
        if not piece.strip():
            problems.append(f"value {number} is empty")
            continue
        value = parse_value(piece.strip())
        if any(_same(value, seen) for seen in values):
            problems.append(f"the value {piece.strip()!r} is there twice")
            continue
        values.append(value)
    if problems:
        raise HpcjobError(
            f"--sweep {text!r}: {'; '.join(problems)}.",
            hint=f"Give each value once, separated by commas, e.g. `{_SWEEP_EXAMPLE}`.",
            exit_code=EXIT_USAGE,
        )
    return key, values


def _split_commas(rest: str, text: str) -> list[str]:
    """Split at commas outside [], {} and quotes."""
    pieces: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in rest:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth < 0:
                break
        elif char == "," and depth == 0:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    if depth != 0 or quote:
        raise HpcjobError(
            f"--sweep {text!r} has an unclosed or unmatched bracket or quote.",
            hint="Close each [ with ] and each { with }, e.g. "
            "`--sweep model.hidden_units=[128,64],[256,128]`.",
            exit_code=EXIT_USAGE,
        )
    return [*pieces, "".join(current)]


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (True is not 1, but 1 is 1.0)."""
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)


# ---------------------------------------------------------------------------- the overrides
def apply_overrides(
    config: Mapping[str, Any], overrides: Mapping[str, Any], *, name: str
) -> dict[str, Any]:
    """A deep copy of `config` with each dotted key set; every refused key is reported at once
    (unknown keys with the closest existing ones, keys below a value, values of the wrong type)."""
    result: dict[str, Any] = copy.deepcopy(dict(config))
    keys = config_keys(config)
    problems: list[str] = []
    for dotted, value in overrides.items():
        parent, problem = _parent_of(result, dotted, keys)
        if problem:
            problems.append(problem)
            continue
        last = dotted.rpartition(".")[2]
        new, problem = _fit(dotted, parent[last], value)
        if problem:
            problems.append(problem)
        else:
            parent[last] = copy.deepcopy(new)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise HpcjobError(
            f"Cannot set {'this key' if len(problems) == 1 else 'these keys'} of {name}:\n{lines}",
            hint=f"--set takes a key that {name} already has, as a dotted path such as "
            f"{keys[-1] if keys else 'training.epochs'}, and a value of the same kind.",
            exit_code=EXIT_USAGE,
        )
    return result


def _parent_of(
    config: dict[str, Any], dotted: str, keys: list[str]
) -> tuple[dict[str, Any], str | None]:
    """The mapping that holds the key's last part, or a problem in words."""
    parts = dotted.split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):
            above = ".".join(parts[:depth])
            return {}, f"{dotted}: {above} is {_kind_of(node)} ({node!r}), not a table of keys"
        if part not in node:
            return {}, _unknown(dotted, keys)
        if depth < len(parts) - 1:
            node = node[part]
    return node, None


def _unknown(dotted: str, keys: list[str]) -> str:
    closest = closest_keys(dotted, keys)
    if not closest:
        return f"{dotted}: no such key"
    return f"{dotted}: no such key (closest: {', '.join(closest)})"


def _fit(dotted: str, old: Any, new: Any) -> tuple[Any, str | None]:
    """The value to store for `new` over `old`, or a problem when the kinds clearly differ."""
    refused = f"{dotted} is {_kind_of(old)} ({old!r}), not {new!r}"
    if isinstance(old, bool):
        return (new, None) if isinstance(new, bool) else (None, refused)
    if isinstance(old, (int, float)):
        if new is None:
            return None, None
        if isinstance(new, bool) or not isinstance(new, (int, float)):
            return None, refused
        if isinstance(old, int):
            if isinstance(new, float) and not new.is_integer():
                return None, refused
            return int(new), None
        try:
            return float(new), None
        except OverflowError:
            return None, refused
    if isinstance(old, Mapping) and not isinstance(new, Mapping):
        first = next(iter(old), "key")
        return None, f"{dotted} is a table of keys; set one of them, e.g. {dotted}.{first}"
    return new, None


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else f"a {type(value).__name__}"
