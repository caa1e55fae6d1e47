"""Commands about your own project: `init` (write hpcjob.toml from what is found in the folder).

No `from __future__ import annotations`: Typer reads these annotations as objects.
"""

from typing import Annotated, Any

import typer

from hpcjob.cli.options import JsonOpt
from hpcjob.cli.output import Sink, print_pairs
from hpcjob.cli.root import app, command
from hpcjob.errors import HpcjobError


@command(app)
def init(
    folder: Annotated[
        str | None, typer.Argument(help="Your project's folder (default: the current one).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write hpcjob.toml for your own project: its training script, config, the options that set
    the config's keys, requirements and metrics files, found in the folder and commented. An
    existing project file is never overwritten."""
    import os
    from pathlib import Path

    from hpcjob.project.detect import detect
    from hpcjob.project.projectfile import PROJECT_FILE, parse_project
    from hpcjob.project.starter import render_project_file, write_project_file

    root = Path(folder).expanduser() if folder else Path.cwd()
    if not root.is_dir():
        raise HpcjobError(f"{folder!r} is not a folder.", exit_code=2)
    root = root.resolve()
    found = detect(root)
    text = render_project_file(found)
    parse_project(text, root / PROJECT_FILE)  # what init writes must load; a failure is a bug
    path = write_project_file(root, text)
    here = Path.cwd().resolve()
    steps = [] if root == here else [f"cd {os.path.relpath(root, here)}"]
    if found.trainer is None:
        steps.append(f"edit {PROJECT_FILE}: describe your training program")
    else:
        epochs = " --epochs 3" if "epochs" in found.options else ""
        steps += ["hpcjob setup-env", f"hpcjob submit train{epochs}"]
    data = _found_json(found, str(path), steps)
    sink = Sink(json_out)

    def human() -> None:
        from rich.markup import escape

        print_pairs(_found_rows(data), title=f"Wrote {escape(str(path))}")
        for note in found.notes:
            sink.say(f"Note: {escape(note)}")
        if found.trainer is None:
            sink.say(
                f"Found no training script: {PROJECT_FILE} holds a commented example workload "
                "to fill in."
            )
        sink.say("Next: " + "   then   ".join(f"[bold]{escape(step)}[/]" for step in steps))

    sink.result(data, human)


def _found_json(found: Any, path: str, steps: list[str]) -> dict[str, Any]:
    return {
        "path": path,
        "name": found.name,
        "trainer": found.trainer,
        "config": found.config,
        "config_found": found.config_found or None,
        "options": dict(found.options),
        "data_key": found.data_key,
        "requirements": found.requirements,
        "src_packages": list(found.src_packages),
        "metrics": list(found.metrics),
        "artifacts": list(found.artifacts),
        "more_programs": list(found.scripts),
        "notes": list(found.notes),
        "next": steps,
    }


def _found_rows(data: dict[str, Any]) -> list[tuple[str, Any]]:
    """What a person reads: each finding, and `none found` where there was none."""
    none = "none found"
    config = data["config"]
    if config and data["config_found"]:
        config = f"{config} ({data['config_found']})"
    options = "\n".join(f"--{option} → {key}" for option, key in data["options"].items())
    rows: list[tuple[str, Any]] = [
        ("training script", data["trainer"] or none),
        ("config", config or none),
        ("options", options or none),
    ]
    if data["data_key"]:
        rows.append(("data path", f"{data['data_key']} (data_dir = … suggested, commented out)"))
    rows += [
        ("requirements", data["requirements"] or none),
        ("src layout", ", ".join(f"src/{p}" for p in data["src_packages"]) or "no"),
        ("metrics", "\n".join(data["metrics"]) or none),
        ("artifacts", "\n".join(data["artifacts"]) or none),
    ]
    if data["more_programs"]:
        rows.append(("more programs", ", ".join(data["more_programs"]) + " (commented out)"))
    return rows
