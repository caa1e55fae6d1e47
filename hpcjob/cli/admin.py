"""Commands about hpcjob's own files: the `config` group (show, init) and the `ledger` group
(backup, check).

No `from __future__ import annotations`: Typer reads these annotations as objects.
"""

from typing import Annotated

import typer

from hpcjob.cli.options import JsonOpt, ProfileOpt
from hpcjob.cli.output import Sink, info, print_pairs, print_table, print_text
from hpcjob.cli.root import app, chosen_profile, command
from hpcjob.errors import HpcjobError

config_app = typer.Typer(help="Show or create the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
ledger_app = typer.Typer(help="Back up or check the run ledger file.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


@command(config_app, "show")
def config_show(profile: ProfileOpt = None, json_out: JsonOpt = False) -> None:
    """The effective settings of a profile and where each value came from."""
    from hpcjob.config import load_settings, resolve_profile

    settings = load_settings()
    resolved = resolve_profile(settings, profile_flag=chosen_profile(profile))
    rows = [
        {"key": key, "value": resolved.values[key], "source": resolved.sources.get(key, "")}
        for key in sorted(resolved.values)
    ]
    exists = settings.config_path.exists()

    def human() -> None:
        print_pairs(
            [
                ("profile", resolved.name),
                ("home", str(settings.home)),
                (
                    "config file",
                    f"{settings.config_path}" + ("" if exists else " (none; `hpcjob config init`)"),
                ),
                ("ledger", str(settings.ledger_path)),
            ]
        )
        print_table(rows, columns=(("key", "key"), ("value", "value"), ("source", "source")))

    data = {
        "profile": resolved.name,
        "home": str(settings.home),
        "config_file": str(settings.config_path),
        "config_file_exists": exists,
        "ledger": str(settings.ledger_path),
        "settings": rows,
    }
    Sink(json_out).result(data, human)


@command(config_app, "init")
def config_init(
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write a commented starter config to $HPCJOB_HOME/config.toml; its default_profile is the
    profile chosen now (`slurm` where sbatch is on PATH)."""
    import os

    from hpcjob.config import load_settings, starter_profile, write_starter_config

    settings = load_settings()
    name, why = starter_profile(settings, chosen_profile(None), dict(os.environ))
    path = write_starter_config(settings, force=force, default_profile=name)
    info(
        f'Wrote {path} with default_profile = "{name}" (the profile chosen now: {why}). '
        "Edit it, then check with `hpcjob config show`."
    )
    print_text(f"{path}\n")


@command(ledger_app, "backup")
def ledger_backup(
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="The new file (default $HPCJOB_HOME/backups/…)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy the ledger to a new private file (0600) while hpcjob may be running."""
    from pathlib import Path

    from hpcjob.config import load_settings
    from hpcjob.ledger.tools import backup, default_backup_path

    settings = load_settings()
    target = Path(out).expanduser() if out else default_backup_path(settings.home)
    report = backup(settings.ledger_path, target)
    Sink(json_out).result(
        report,
        lambda: info(
            f"Backed up {report['runs']} runs to {report['backup']} ({report['bytes']} B)."
        ),
    )


@command(ledger_app, "check")
def ledger_check(json_out: JsonOpt = False) -> None:
    """Check the ledger file (SQLite integrity, schema, runs per state); never changes it."""
    from hpcjob.config import load_settings
    from hpcjob.ledger.tools import check

    report = check(load_settings().ledger_path)
    states = ", ".join(f"{n} {s}" for s, n in report["runs_by_state"].items()) or "none"
    pairs = [
        ("ledger", report["ledger"]),
        ("ok", "yes" if report["ok"] else "NO"),
        ("schema", report["schema_version"]),
        ("runs", f"{report['runs']} ({states})"),
        ("mode", report["mode"]),
        *(("problem", p) for p in report["problems"]),
    ]
    Sink(json_out).result(report, lambda: print_pairs(pairs))
    if not report["ok"]:
        raise HpcjobError(
            f"The ledger {report['ledger']} has problems: {'; '.join(report['problems'])}.",
            hint="Keep a copy of the file (`hpcjob ledger backup`), then restore an older backup.",
        )
