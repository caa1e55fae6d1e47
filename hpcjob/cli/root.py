"""The root of the command line: the Typer app, its global options (`--version`, and `--profile`
before the command as users of aws/gh/kubectl type it), the one error boundary, and `main`.

Heavy modules (jinja2, sqlite, paramiko, torch) are imported inside the commands that need them, so
`hpcjob --help` starts about as fast as Typer itself. No `from __future__ import annotations`:
Typer would evaluate every command's string annotations again on each start (~11 ms).
"""

import contextvars
import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from hpcjob import __version__
from hpcjob.cli import fastpath
from hpcjob.cli.options import ProfileOpt
from hpcjob.errors import HpcjobError

fastpath.plain_options()  # str/int options without pydantic: ~60 ms off every command

app = typer.Typer(
    name="hpcjob",
    help="Run ML jobs on a Slurm cluster (or this machine) and record every run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# `hpcjob --profile X status`: the profile given before the command (the command's own wins).
_ROOT_PROFILE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "hpcjob_root_profile", default=None
)


def chosen_profile(flag: str | None) -> str | None:
    """The --profile flag of the command, else the one given before the command."""
    return flag or _ROOT_PROFILE.get()


def _version(value: bool) -> None:
    if value:
        print(f"hpcjob {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    profile: ProfileOpt = None,
) -> None:
    """Run ML jobs on a Slurm cluster (or this machine) and record every run."""
    _ROOT_PROFILE.set(profile)


F = TypeVar("F", bound=Callable[..., Any])


def boundary(func: F) -> F:
    """The one error boundary: HpcjobError → `Error:`/`Hint:` on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from hpcjob.cli import output

        try:
            return func(*args, **kwargs)
        except HpcjobError as exc:
            output.error(exc)
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:
            damaged = _ledger_fault(exc)  # a ledger that went bad after it was opened
            if damaged is None:
                raise
            output.error(damaged)
            raise typer.Exit(damaged.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _ledger_fault(exc: Exception) -> HpcjobError | None:
    """An SQLite error that escaped the ledger (a page found damaged by a later query) in the
    user's words; None for anything else (that is a bug, and its traceback is shown)."""
    sqlite3 = sys.modules.get("sqlite3")  # only loaded when the ledger was opened
    if sqlite3 is None or not isinstance(exc, sqlite3.Error):
        return None
    from hpcjob.config import load_settings
    from hpcjob.ledger.store import ledger_error

    return ledger_error(str(load_settings().ledger_path), exc)


def command(typer_app: typer.Typer, name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Register a command on `typer_app` behind the error boundary."""

    def register(func: F) -> F:
        typer_app.command(name, **kwargs)(boundary(func))
        return func

    return register


def main() -> None:
    """The `hpcjob` program (hpcjob/cli/__init__.py has registered every command by now)."""
    fastpath.only_the_command(app, sys.argv[1:])  # Typer converts that command alone: ~12 ms
    try:
        app()
    except SystemExit as exc:
        fastpath.exit_now(exc.code)  # skips ~60 ms of interpreter teardown
    fastpath.exit_now(0)
