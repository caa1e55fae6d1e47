"""The only printer: one `Sink` per command — JSON for scripts, Rich tables and text for people —
and the live displays (the wait spinner, setup-env's progress).

stdout carries data (a table, a script, a log, or JSON); progress, hints and errors go to stderr,
so `--json` output is always clean JSON. A command hands its result to the sink and never asks
itself which of the two it is printing.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hpcjob.errors import HpcjobError

_STATE_STYLE = {
    "COMPLETED": "green",
    "RUNNING": "cyan",
    "PENDING": "yellow",
    "SUBMITTING": "yellow",
    "COMPLETING": "cyan",
    "CANCELLED": "magenta",
    "UNSUBMITTED": "magenta",
    "UNKNOWN": "dim",
}
_BAD = "bold red"


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    # Messages on stderr are not wrapped mid-sentence; tables on stdout fit the terminal.
    return Console(stderr=stderr, highlight=False, soft_wrap=stderr)


def state_text(state: str | None) -> str:
    if not state:
        return ""
    return f"[{_STATE_STYLE.get(state, _BAD)}]{state}[/]"


def duration(seconds: int | float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def print_json(data: Any) -> None:
    import json  # not loaded by `hpcjob --help`

    sys.stdout.write(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def print_text(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# What Rich would change in a message: markup (`[bold]`, `\\[`), emoji codes (`:smile:`), tabs
# and control characters.
_RICH_SYNTAX = re.compile(r"\[|:\S*:|[\x00-\x09\x0b-\x1f\x7f]")


def info(message: str) -> None:
    if _RICH_SYNTAX.search(message) is None:
        # Rich would print it unchanged (stderr is never wrapped): loading Rich's console, its
        # markup and emoji tables costs ~15 ms, a third of `hpcjob status` with no runs.
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        return
    _console(stderr=True).print(message)


def warn(message: str) -> None:
    _console(stderr=True).print(f"[yellow]Warning:[/] {message}")


def error(exc: HpcjobError) -> None:
    """The one place an error reaches the user: `Error: …` and `Hint: …` on stderr."""
    from rich.markup import escape

    console = _console(stderr=True)
    console.print(f"[bold red]Error:[/] {escape(exc.message)}")
    if exc.hint:
        console.print(f"[bold]Hint:[/] {escape(exc.hint)}")


RUN_COLUMNS = (
    ("run_id", "run"),
    ("job_id", "job id"),
    ("workload", "workload"),
    ("state", "state"),
    ("elapsed_s", "elapsed"),
    ("node", "node"),
    ("last_metric", "last metric"),
)


def print_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]] = RUN_COLUMNS,
    title: str | None = None,
    empty: str = "Nothing to show.",
    fit: str | None = None,
) -> None:
    """Rows as a table on stdout. `fit`: the one column whose values wrap so the table fits the
    terminal; every other column then keeps its values whole (none is cut with `…`)."""
    if not rows:
        info(empty)
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for key, header in columns:
        if fit is None:
            table.add_column(header)
        else:  # too narrow a terminal folds a value onto more lines rather than cutting it
            table.add_column(header, overflow="fold", no_wrap=key != fit)
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            if key == "state":
                cells.append(state_text(value))
            elif key.endswith("_s") and isinstance(value, (int, float)):
                cells.append(duration(value))
            else:
                cells.append("" if value is None else escape(str(value)))
        table.add_row(*cells)
    _console().print(table)


def print_pairs(pairs: Sequence[tuple[str, Any]], title: str | None = None) -> None:
    """A two-column key/value table (config show, show's header)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in pairs:
        table.add_row(key, state_text(value) if key == "state" else escape(_plain(value)))
    _console().print(table)


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value)
    return str(value)


def print_failure(failure: dict[str, Any] | None, console: Any = None) -> None:
    """Why a run failed (its last error line) and the fix, as `show` and `--wait` say it."""
    from rich.markup import escape

    if not failure or not failure.get("line"):
        return
    console = console or _console(stderr=True)
    console.print(f"\n[bold]Why:[/] {escape(failure['line'])}")
    if failure.get("fix"):
        console.print(f"[bold]Fix:[/] {escape(failure['fix'])}")


def print_run_detail(detail: dict[str, Any], show_script: bool = True) -> None:
    """`hpcjob show`: the run, its states, metrics, facts, artifacts and script."""
    from rich.markup import escape
    from rich.table import Table

    res = (detail.get("spec") or {}).get("resources") or {}
    print_pairs(
        [
            ("run", detail["run_id"]),
            ("job id", detail["job_id"]),
            ("workload", detail["workload"]),
            ("state", detail["state"]),
            ("exit code", _exit(detail)),
            ("reason", detail.get("reason")),
            ("profile", f"{detail['profile']} ({detail['scheduler']}, {detail['cluster']})"),
            ("resources", _resources(res)),
            ("arguments", _arguments(detail["spec"].get("args") or {})),
            ("data", detail["spec"].get("data_dir")),
            ("submitted", detail["submitted_at"]),
            ("started", detail["started_at"]),
            ("ended", detail["ended_at"]),
            ("elapsed", duration(detail["elapsed_s"])),
            ("node", detail["node"]),
            ("run dir", detail["run_dir"]),
            ("output", detail["output_path"]),
            ("script sha256", detail["script_sha256"][:16]),
        ],
        title=f"Run {detail['run_id']}",
    )
    console = _console()
    print_failure(detail.get("failure"), console)
    history = " → ".join(f"{h['state']} ({h['at'][11:19]})" for h in detail["history"])
    console.print(f"\n[bold]States:[/] {escape(history)}")
    _print_metrics(detail["metrics"])
    facts = {k: v for k, v in detail["facts"].items() if k != "failure"}  # shown as Why/Fix
    if facts:
        console.print("\n[bold]Facts:[/]")
        print_pairs(list(facts.items()))
    attempts = detail.get("attempts") or []
    if len(attempts) > 1 or detail.get("max_requeues"):
        _print_attempts(attempts, detail.get("max_requeues") or 0)
    if detail["artifacts"]:
        table = Table(title="Artifacts", title_justify="left", header_style="bold")
        for column in ("name", "size", "path"):
            table.add_column(column)
        for art in detail["artifacts"]:
            table.add_row(escape(art["name"]), size_text(art["size"]), escape(art["path"]))
        console.print()
        console.print(table)
    if show_script:
        console.print("\n[bold]Script:[/]")
        console.print(escape(detail["script"]), soft_wrap=True)


def _print_attempts(attempts: list[dict[str, Any]], max_requeues: int) -> None:
    """`submit --auto-requeue`: each scheduler job the run went through."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"Attempts (auto-requeue up to {max_requeues})",
        title_justify="left",
        header_style="bold",
    )
    for column in ("attempt", "job id", "state", "exit", "started", "ended"):
        table.add_column(column)
    for a in attempts:
        table.add_row(
            str(a["attempt"]),
            escape(str(a["job_id"] or "")),
            state_text(a["state"]),
            "-" if a["exit_code"] is None else str(a["exit_code"]),
            escape(a["started_at"] or ""),
            escape(a["ended_at"] or ""),
        )
    console = _console()
    console.print()
    console.print(table)


def _print_metrics(metrics: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not metrics:
        _console().print("\n[bold]Metrics:[/] none recorded")
        return
    keys = sorted({m["key"] for m in metrics})
    steps: dict[int, dict[str, Any]] = {}
    for m in metrics:
        steps.setdefault(m["step"], {})[m["key"]] = m["value"]
    table = Table(title="Metrics", title_justify="left", header_style="bold")
    table.add_column("epoch")
    for key in keys:
        table.add_column(key, justify="right")
    for step in sorted(steps):
        table.add_row(str(step), *(_num(steps[step].get(k)) for k in keys))
    console = _console()
    console.print()
    console.print(table)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) and abs(value) < 1e4 else f"{value:g}"


def size_text(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _arguments(args: dict[str, Any]) -> str:
    """The workload's arguments; those left to the job script (None) are not shown."""
    return " ".join(f"{k}={v}" for k, v in args.items() if v is not None)


def _exit(detail: dict[str, Any]) -> str:
    """`3`, `0 (signal 9)`; `-` when there is none: it never started, is still running, or a
    signal ended it (`- (signal 15)`)."""
    code, sig = detail.get("exit_code"), detail.get("signal")
    return ("-" if code is None else f"{code}") + (f" (signal {sig})" if sig else "")


def _resources(res: dict[str, Any]) -> str:
    parts = [f"partition={res.get('partition') or '(default)'}"]
    if res.get("time_s"):
        from hpcjob.spec import format_time  # only `show` needs it

        parts.append(f"time={format_time(res['time_s'])}")
    for key in ("nodes", "cpus_per_task", "mem_mb", "gpus", "account", "constraint"):
        if res.get(key):
            parts.append(f"{key}={res[key]}")
    return " ".join(parts)


@contextmanager
def spinner(text: str) -> Iterator[Any]:
    """A spinner on stderr while waiting; yields the Rich status to update its text."""
    console = _console(stderr=True)
    with console.status(text) as status:
        yield status


class Sink:
    """Where one command's output goes: `--json` prints data as JSON on stdout and keeps quiet
    otherwise; a person gets tables, text and messages. Warnings reach both."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode

    def result(self, data: Any, show: Callable[[], None] | None = None) -> None:
        """The command's result: `data` as JSON, or `show()` for a person (nothing if None)."""
        if self.json_mode:
            print_json(data)
        elif show is not None:
            show()

    def rows(
        self,
        rows: Sequence[dict[str, Any]],
        columns: Sequence[tuple[str, str]] = RUN_COLUMNS,
        title: str | None = None,
        empty: str = "Nothing to show.",
    ) -> None:
        """Rows: a JSON list (`[]` when empty), or a table with these columns."""
        self.result(list(rows), lambda: print_table(rows, columns, title=title, empty=empty))

    def say(self, message: str) -> None:
        """A message for a person on stderr (Rich markup); `--json` leaves it out."""
        if not self.json_mode:
            info(message)

    def waiting(self, text: str) -> contextlib.AbstractContextManager[Any]:
        """A spinner whose text the caller updates while it waits; `--json` shows none."""
        if self.json_mode:
            return contextlib.nullcontext(_NoStatus())
        return spinner(text)

    def setup_display(self) -> ProgressDisplay:
        """setup-env's progress: a live line on a terminal, plain lines in logs and `--json`."""
        return ProgressDisplay(plain=self.json_mode or not sys.stderr.isatty())


class _NoStatus:
    def update(self, text: str) -> None:
        pass


class ProgressDisplay:
    """Shows what the script is doing while it runs: a live line (rich, on stderr) for a person,
    or one plain line per step for logs and `--json` (`plain`). The clock is injected."""

    def __init__(
        self,
        plain: bool,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] | None = None,
    ) -> None:
        from hpcjob.envlog import SetupProgress  # the step parser; loaded by setup-env only

        self.plain = plain
        self.clock = clock
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.progress = SetupProgress()
        self._started = clock()
        self._live: Any = None

    @contextlib.contextmanager
    def running(self, requirements: tuple[str, ...], log_path: str) -> Iterator[None]:
        self.progress = type(self.progress)(requirements=requirements)
        self._started = self.clock()
        if self.plain:
            self.write(f"setup-env: log {log_path}")
            yield
            return
        from rich.console import Console
        from rich.live import Live

        console = Console(stderr=True, highlight=False)
        self._live = Live(self, console=console, refresh_per_second=8, transient=True)
        with self._live:
            yield
        self._live = None

    def note(self, message: str) -> None:
        self.write(message)

    def feed(self, text: str) -> None:
        if self.progress.feed(text) and self.plain:
            self.write(f"setup-env [{self.clock() - self._started:4.0f} s] {self.progress.label}")

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.text import Text

        elapsed = f"{self.clock() - self._started:.0f} s"
        head = Spinner("dots", Text.assemble((self.progress.label, "bold"), f"  {elapsed}"))
        recent = [Text(f"  {line[:160]}", style="dim") for line in self.progress.recent]
        return Group(head, *recent)
