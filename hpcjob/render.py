"""Job scripts from Jinja templates: the environment, the one quoting helper, template lookup.

Every value that reaches a script passes through `shell_quote` (script body) or `sbatch_line`
(#SBATCH header). A user's template folder overrides the built-ins by file name.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcjob import __version__
from hpcjob.errors import HpcjobError
from hpcjob.resources import builtin_dir
from hpcjob.spec import WORKLOADS, JobSpec, workload_argv


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

    Slurm groups words with double quotes only, so a value with spaces is double-quoted and any
    character that quoting cannot make safe is refused.
    """
    text = str(value)
    if any(ch in text for ch in '"\\\n\r\0'):
        raise HpcjobError(
            f"The value {text!r} for --{key} cannot go into a job script header.",
            hint="Avoid double quotes, backslashes and newlines in names and paths.",
        )
    if any(ch.isspace() for ch in text):
        text = f'"{text}"'
    return f"#SBATCH --{key}={text}"


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


def _environment(template_dirs: Sequence[Path]) -> Any:
    import jinja2

    env = jinja2.Environment(
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

    workload = WORKLOADS[spec.workload]
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
        "program": f"{ctx.run_dir.rstrip('/')}/workload/{workload.program}"
        if workload.program
        else None,
        "workload_args": workload_argv(spec),
        "task_args": ctx.task_args,
        "hpcjob_version": __version__,
    }
    try:
        return str(env.get_template(workload.template).render(**variables))
    except jinja2.TemplateNotFound as exc:
        raise HpcjobError(
            f"Template {exc.name!r} not found in {', '.join(str(d) for d in dirs)}."
        ) from exc
    except jinja2.UndefinedError as exc:
        raise HpcjobError(
            f"Template {workload.template} uses an undefined variable: {exc.message}",
            hint="A template of your own must only use the variables listed in docs/templates.md.",
        ) from exc
    except jinja2.TemplateError as exc:
        raise HpcjobError(f"Template {workload.template} is broken: {exc}") from exc


def script_hash(script: str) -> str:
    return hashlib.sha256(script.encode()).hexdigest()
