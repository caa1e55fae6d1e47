"""Job scripts from Jinja templates: the environment, the one quoting helper, template lookup.

Every value that reaches a script passes through `shell_quote` (script body) or `sbatch_line`
(#SBATCH header). A user's template folder overrides the built-ins by file name.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcjob import __version__
from hpcjob.errors import HpcjobError
from hpcjob.resources import builtin_dir
from hpcjob.spec import (
    PLACEHOLDER_VARIABLES,
    PROGRAM_TEMPLATE,
    WORKLOADS,
    JobSpec,
    Program,
    workload_argv,
)

_PLACEHOLDER_RE = re.compile(r"\{(config|data_dir|run_dir)\}")


def shell_quote(value: object) -> str:
    """One value as one inert shell word."""
    return shlex.quote(str(value))


def shell_path(value: object) -> str:
    """A path as one inert shell word, keeping a leading `~/` meaning the user's home."""
    text = str(value)
    if text == "~":
        return '"$HOME"'
    if text.startswith("~/"):
        return '"$HOME"/' + shlex.quote(text[2:])
    return shlex.quote(text)


def sbatch_line(key: str, value: object) -> str:
    """`#SBATCH --key=value`. Slurm reads these lines itself, not through a shell.

    Slurm's parser (`_get_argument` in sbatch/opt.c) takes `"` and `'` as quotes, `\\` as an
    escape and an unquoted `#` as the start of a comment: `--output=/p#1/x` would become
    `--output=/p`. So a value with spaces, `'` or `#` is double-quoted (inside double quotes
    both are plain characters), and the characters quoting cannot make safe are refused.
    """
    text = str(value)
    if any(ch in text for ch in '"\\\n\r\0'):
        raise HpcjobError(
            f"The value {text!r} for --{key} cannot go into a job script header.",
            hint="Avoid double quotes, backslashes and newlines in names and paths.",
        )
    if any(ch.isspace() or ch in "'#" for ch in text):
        text = f'"{text}"'
    return f"#SBATCH --{key}={text}" if text else f"#SBATCH --{key}"


def command_line(words: Sequence[str], python: str) -> str:
    """A program's command as one shell line: each word quoted, `{config}`, `{data_dir}` and
    `{run_dir}` as the job's variables; a first word `python`/`python3` is the job's Python."""
    parts = []
    for index, word in enumerate(words):
        if index == 0 and word in ("python", "python3"):
            parts.append(shell_quote(python))
            continue
        pieces = []
        for position, piece in enumerate(_PLACEHOLDER_RE.split(word)):
            if position % 2:  # a placeholder's name
                pieces.append(f'"${{{PLACEHOLDER_VARIABLES[piece]}}}"')
            elif piece:
                pieces.append(shell_quote(piece))
        parts.append("".join(pieces) or "''")
    return " ".join(parts)


# Written last into a snapshot's folder: the snapshot is whole (program.sbatch.j2 checks it).
SNAPSHOT_MARKER = ".hpcjob-snapshot"


def snapshot_dir(run_dir: str, sha256: str) -> str:
    """Where a code snapshot lives on the cluster: beside the run directories, once per content
    (`<root>/.snapshots/<sha256>`), shared by reruns and sweep tasks."""
    root = run_dir.rstrip("/").rsplit("/", 1)[0]
    return f"{root}/.snapshots/{sha256}"


def config_name(program: Program) -> str | None:
    """The file name the run's own copy of the config has in `config/` of the run directory."""
    return program.config.rsplit("/", 1)[-1] if program.config else None


@dataclass(frozen=True)
class RenderContext:
    """Everything a template may use besides the spec: where the run lives and how to run Python."""

    run_id: str
    token: str
    run_dir: str
    modules: Sequence[str] = ()
    venv: str | None = None
    python: str = "python3"
    output_name: str = "slurm-%j.out"
    # A sweep: each array task's own program arguments, by task id (unquoted; `q` quotes them).
    task_args: tuple[tuple[int, tuple[str, ...]], ...] = ()
    # A program swept over config keys: each array task reads `config/task-<i>/<name>`.
    config_per_task: bool = False


def _environment(template_dirs: Sequence[Path]) -> Any:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    # Sandboxed: a user's template is text, not code; Jinja's plain environment lets
    # `{{ cycler.__init__.__globals__.os }}` reach Python itself at render time.
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = shell_quote
    env.filters["qpath"] = shell_path
    env.globals["sbatch"] = sbatch_line
    return env


def template_dirs(user_dirs: Sequence[Path | str | None]) -> list[Path]:
    """User folders that exist, then the built-ins."""
    dirs = [Path(d).expanduser() for d in user_dirs if d]
    return [d for d in dirs if d.is_dir()] + [builtin_dir("templates")]


def render_script(spec: JobSpec, ctx: RenderContext, dirs: Sequence[Path]) -> str:
    """The job script for a spec: the workload's template rendered with StrictUndefined."""
    import jinja2
    from jinja2.exceptions import SecurityError

    program = spec.program
    template = PROGRAM_TEMPLATE if program is not None else WORKLOADS[spec.workload].template
    main = WORKLOADS[spec.workload].program if program is None else None
    env = _environment(dirs)
    res = spec.resources
    variables = {
        "spec": spec,
        "job": res,
        "run_id": ctx.run_id,
        "token": ctx.token,
        "run_dir": ctx.run_dir,
        "output": f"{ctx.run_dir.rstrip('/')}/"
        + ("slurm-%A_%a.out" if res.array else ctx.output_name),
        "modules": list(ctx.modules),
        "venv": ctx.venv,
        "python": ctx.python,
        "data_dir": spec.data_dir,
        "stage_data": spec.stage_data,
        "program": f"{ctx.run_dir.rstrip('/')}/workload/{main}" if main else None,
        "workload_args": workload_argv(spec) if program is None else [],
        "task_args": ctx.task_args,
        "hpcjob_version": __version__,
        "rank_program": f"{ctx.run_dir.rstrip('/')}/workload/rank.py",
    }
    if program is not None:
        variables.update(
            user=program,
            command_line=command_line(program.command, ctx.python),
            snapshot_dir=snapshot_dir(ctx.run_dir, program.snapshot) if program.snapshot else None,
            config_name=config_name(program),
            config_per_task=ctx.config_per_task,
            provenance_program=f"{ctx.run_dir.rstrip('/')}/workload/provenance.py",
        )
    try:
        return str(env.get_template(template).render(**variables))
    except SecurityError as exc:
        raise HpcjobError(
            f"Template {template} tried something templates may not do: {exc}",
            hint="Templates are rendered in Jinja's sandbox: no `_`-attributes, no Python "
            "internals; use the variables listed in docs/templates.md.",
        ) from exc
    except jinja2.TemplateNotFound as exc:
        raise HpcjobError(
            f"Template {exc.name!r} not found in {', '.join(str(d) for d in dirs)}."
        ) from exc
    except jinja2.UndefinedError as exc:
        raise HpcjobError(
            f"Template {template} uses an undefined variable: {exc.message}",
            hint="A template of your own must only use the variables listed in docs/templates.md.",
        ) from exc
    except jinja2.TemplateError as exc:
        raise HpcjobError(f"Template {template} is broken: {exc}") from exc


def script_hash(script: str) -> str:
    return hashlib.sha256(script.encode()).hexdigest()
