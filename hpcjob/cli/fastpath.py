"""Start-up and exit costs of the `hpcjob` process, which every command pays (bench/startup.py,
bench/ssh.py measure them).

Three costs have nothing to do with the command's work:

- Typer (≥ 0.26) converts every option through a pydantic `TypeAdapter`, so each command imports
  pydantic: ~60 ms on each run. `plain_options` converts the plain ones (`str`, `int`, `float`,
  `bool`, optional or not, without a custom parser, range, path or file settings) itself, with
  the error a user sees from Typer, and leaves every other annotation to Typer. It reaches into
  Typer's private `core.build_runtime_param`; when a Typer release changes that, it does nothing
  and Typer's own path runs (only slower).
- Typer turns every registered command into a Click command (each parameter's annotation read
  and converted) before it looks at the command line: ~12 ms for hpcjob's 25 commands.
  `only_the_command` registers just the one the command line names (a group with its commands),
  so Typer converts that one; with no command, an unknown one, `--help` or `--version` before it,
  every command stays, so the listing and Typer's suggestions are as before.
- Tearing the interpreter down (module finalisers of cryptography, pydantic-core …) costs another
  ~60 ms after the command is done. `exit_now` flushes the output, runs the `atexit` handlers and
  ends the process without that, unless a non-daemon thread still runs.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

_PLAIN = (str, int, float, bool)
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def plain_target(annotation: Any, info: Any) -> type | None:
    """The plain type an option converts to, or None when Typer must convert it."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return None
        annotation = args[0]
    if annotation not in _PLAIN:
        return None
    special = (
        getattr(info, "parser", None),
        getattr(info, "click_type", None),
        getattr(info, "min", None),
        getattr(info, "max", None),
        getattr(info, "formats", None),
        getattr(info, "mode", None),
        getattr(info, "path_type", None),
    )
    if any(value is not None for value in special):
        return None
    flags = ("exists", "writable", "resolve_path", "allow_dash", "atomic", "clamp")
    if any(getattr(info, flag, False) for flag in flags):
        return None
    return annotation  # type: ignore[no-any-return]


def convert(value: Any, target: type) -> Any:
    """`value` as `target`; ValueError with Typer's wording when it is not one."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, target) and (target is bool or not isinstance(value, bool)):
        return value
    if target is str:
        return str(value)
    if target is bool:
        word = str(value).strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError(f"{value!r} is not a valid boolean.")
    try:
        return target(value)
    except (TypeError, ValueError):
        kind = "an integer" if target is int else "a number"
        raise ValueError(f"{value!r} is not {kind}.") from None


def plain_options() -> None:
    """Let plain options skip pydantic (see the module docstring). Safe to call twice."""
    try:
        from typer import _coercion, core
        from typer._click.exceptions import BadParameter
    except ImportError:  # another Typer layout: keep Typer's own conversion
        return
    original = getattr(core, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if original is None or base is None or getattr(original, "hpcjob_plain", False):
        return

    @dataclass(frozen=True)
    class PlainRuntimeParam(base):  # type: ignore[misc, valid-type]
        target: type = str

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                return convert(value, self.target)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None

    def build_runtime_param(descriptor: Any) -> Any:
        info = getattr(descriptor, "parameter_info", None)
        target = None
        if getattr(descriptor, "file_annotation", None) is None:
            target = plain_target(getattr(descriptor, "annotation", None), info)
        if target is None:
            return original(descriptor)
        return PlainRuntimeParam(
            parameter_info=info, annotation=descriptor.annotation, target=target
        )

    build_runtime_param.hpcjob_plain = True  # type: ignore[attr-defined]
    setattr(core, "build_runtime_param", build_runtime_param)  # noqa: B010


# The root's options (cli/root.py) that take a value, so the word after them is not the command.
_ROOT_VALUE_OPTIONS = ("--profile", "-P")


def command_word(argv: list[str]) -> str | None:
    """The command the command line names (`status` in `--profile lab status --json`); None when
    it names none or a root option other than --profile comes first (Typer decides then)."""
    words = iter(argv)
    for word in words:
        if word in _ROOT_VALUE_OPTIONS:
            next(words, None)
        elif word.startswith("--profile="):
            continue
        elif word.startswith("-"):
            return None  # --help, --version, an unknown option, `--`: every command stays
        else:
            return word
    return None


def only_the_command(app: Any, argv: list[str]) -> None:
    """Keep on `app` (a Typer) only the command or group that `argv` invokes; all when it names
    none that is registered (see the module docstring)."""
    word = command_word(argv)
    if word is None:
        return
    commands = [c for c in app.registered_commands if _command_name(c) == word]
    groups = [g for g in app.registered_groups if g.name == word]
    if commands or groups:
        app.registered_commands = commands
        app.registered_groups = groups


def _command_name(info: Any) -> str | None:
    """The name Typer gives a registered command (its own, else the function's, dashed)."""
    if info.name:
        return str(info.name)
    callback = info.callback
    return None if callback is None else callback.__name__.lower().replace("_", "-")


def exit_now(code: Any) -> None:
    """End the process with `code` (a SystemExit code) without tearing the interpreter down."""
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        raise SystemExit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`hpcjob status | head`)
            status = status or 1
    os._exit(status)
