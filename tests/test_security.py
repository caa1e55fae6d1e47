"""Secrets never reach hpcjob's artefacts, and what hpcjob creates is private to the user.

A full cycle on the embedded scheduler runs with secrets planted in the environment (tokens and
a password, as users keep them for their jobs) and a passphrase-protected private key named in the
profile; then every artefact is scanned for them: the ledger (sqlite dump and the raw file with
its WAL), every file under HPCJOB_HOME (run directories, job output, metrics, the embedded
scheduler's records, the cache, the config), and the `--json` output of every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PASSPHRASE, SECRET_ENV, artefacts, leaks, make_key, mode, needles


def test_no_secret_in_any_artefact_of_a_full_cycle(
    cli: Any, isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pcam_dir: Path
) -> None:
    key, body = make_key(tmp_path, PASSPHRASE)
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HPCJOB_IDENTITY_FILE", str(key))  # a path in the profile, never the key
    outputs: dict[str, bytes] = {}

    def run(*argv: str, codes: tuple[int, ...] = (0,)) -> Any:
        result = cli(*argv)
        assert result.exit_code in codes, (argv, result.stderr)
        outputs[" ".join(argv)] = (result.stdout + result.stderr).encode()
        return result

    assert run("config", "init").exit_code == 0
    first = run("submit", "gpu-check", "--wait", "--json").json()
    train = run(
        "submit", "train", "--epochs", "1", "--hidden-units", "16", "--batch-size", "64",
        "--data-dir", str(pcam_dir), "--wait", "--json",
    ).json()  # fmt: skip
    assert train["state"] == "COMPLETED"
    templates = isolated_home / "templates"
    templates.mkdir()
    (templates / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}sleep 60\n{% endblock %}'
    )
    sleeper = run("submit", "gpu-check", "--json").json()
    run("status", "--json")
    run("runs", "--json", "--all-profiles")
    for ref in (first["run_id"], train["run_id"], sleeper["run_id"]):
        run("show", ref, "--json")
        run("show", ref)
    run("logs", train["run_id"])
    run("cancel", sleeper["run_id"], "--json")
    run("wait", sleeper["run_id"], "--json", codes=(3,))
    run("wait", first["run_id"], "--json")
    run("partitions", "--json")
    run("config", "show", "--json")
    run("render", "train", "--data-dir", str(pcam_dir))
    run("submit", "train", "--dry-run", "--data-dir", str(pcam_dir), "--json")

    secrets = needles(body)
    everything = {**artefacts(isolated_home), **{f"output of `{k}`": v for k, v in outputs.items()}}
    assert len(everything) > 30  # the scan saw the run directories, not just the ledger
    assert not leaks(everything, secrets)


def test_files_hpcjob_creates_are_private(cli: Any, isolated_home: Path) -> None:
    assert cli("config", "init").exit_code == 0
    run = cli("submit", "gpu-check", "--wait", "--json").json()
    assert run["state"] == "COMPLETED"
    assert mode(isolated_home) == 0o700
    assert mode(isolated_home / "config.toml") == 0o600
    ledger = isolated_home / "ledger.db"
    assert mode(ledger) == 0o600
    for suffix in ("-wal", "-shm"):  # SQLite gives them the database file's mode
        side = Path(f"{ledger}{suffix}")
        if side.exists():
            assert mode(side) & 0o077 == 0, side
    run_dir = Path(run["run_dir"])
    assert mode(run_dir) == 0o700  # others cannot enter it: script, output, checkpoints
    assert mode(isolated_home / "local") == 0o700
    # Nothing under HPCJOB_HOME is reachable by other users even where HPCJOB_HOME itself is
    # not private (a folder a user points it at): each path is private, or lies in a private
    # folder below HPCJOB_HOME.
    exposed = [p for p in isolated_home.rglob("*") if not _private_below(isolated_home, p)]
    assert not exposed, [(str(p.relative_to(isolated_home)), oct(mode(p))) for p in exposed]


def _private_below(home: Path, path: Path) -> bool:
    for part in (path, *path.parents):
        if part == home:
            return False
        if mode(part) & 0o077 == 0:
            return True
    return False


def test_a_job_that_prints_its_environment_is_the_only_way_a_token_gets_out(
    cli: Any, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan is not blind: jobs do get the environment (as on Slurm: HF_TOKEN must reach a
    download), so a job that prints it puts the token in its own output, and the scan sees it."""
    monkeypatch.setenv("HF_TOKEN", SECRET_ENV["HF_TOKEN"])
    templates = isolated_home / "templates"
    templates.mkdir(parents=True)
    (templates / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}echo "token=$HF_TOKEN"\n{% endblock %}'
    )
    run = cli("submit", "gpu-check", "--wait", "--json").json()
    found = leaks(artefacts(isolated_home), [SECRET_ENV["HF_TOKEN"]])
    assert found and all(run["run_dir"] in f for f in found), found
