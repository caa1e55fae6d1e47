"""Profiles: precedence flag > environment > config file > built-in, and each value's source."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hpcjob.config import (
    Settings,
    resolve_profile,
    select_profile_name,
    write_starter_config,
)
from hpcjob.errors import HpcjobError


def settings_with(tmp_path: Path, text: str | None) -> Settings:
    settings = Settings(tmp_path)
    if text is not None:
        settings.config_path.write_text(text)
    return settings


def test_precedence_and_sources(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        '[profiles.snellius]\nuser = "scur1"\naccount = "file-acct"\ndata_dir = "/file"\n',
    )
    profile = resolve_profile(
        settings,
        profile_flag="snellius",
        flags={"account": "flag-acct"},
        environ={"HPCJOB_DATA_DIR": "/env", "HPCJOB_MODULES": "2025, CUDA/12.8.0"},
    )
    assert profile.get("host") == "snellius.surf.nl"
    assert profile.sources["host"] == "built-in profile snellius"
    assert profile.get("user") == "scur1"
    assert "config.toml [profiles.snellius]" in profile.sources["user"]
    assert profile.get("data_dir") == "/env"
    assert profile.sources["data_dir"] == "env HPCJOB_DATA_DIR"
    assert profile.get("account") == "flag-acct"
    assert profile.sources["account"] == "flag --account"
    assert profile.modules == ["2025", "CUDA/12.8.0"]


def test_profile_selection_order() -> None:
    assert select_profile_name("a", {"HPCJOB_PROFILE": "b"}, {"default_profile": "c"})[0] == "a"
    assert select_profile_name(None, {"HPCJOB_PROFILE": "b"}, {"default_profile": "c"})[0] == "b"
    assert select_profile_name(None, {}, {"default_profile": "c"})[0] == "c"
    assert select_profile_name(None, {"PATH": "/nonexistent"}, {})[0] == "local"


def test_sbatch_on_path_selects_slurm(tmp_path: Path) -> None:
    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\n")
    sbatch.chmod(0o755)
    assert select_profile_name(None, {"PATH": str(tmp_path)}, {})[0] == "slurm"


def test_unknown_key_gets_a_suggestion(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, '[profiles.x]\nschedular = "slurm"\n')
    with pytest.raises(HpcjobError) as info:
        resolve_profile(settings, profile_flag="x", environ={})
    assert "schedular" in info.value.message
    assert "scheduler" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[profiles.x\n", "not valid TOML"),
        ('[profiles.x]\nport = "22"\n', "port must be a whole number"),
        ('[profiles.x]\nmodules = "2025"\n', "modules must be a list"),
        ('[profiles.x]\nscheduler = "pbs"\n', "scheduler must be one of"),
        ('colour = "blue"\n', "unknown top-level key"),
    ],
)
def test_bad_config_files_are_explained(tmp_path: Path, text: str, fragment: str) -> None:
    settings = settings_with(tmp_path, text)
    with pytest.raises(HpcjobError, match=fragment):
        resolve_profile(settings, profile_flag="x", environ={})


def test_unknown_profile(tmp_path: Path) -> None:
    with pytest.raises(HpcjobError) as info:
        resolve_profile(settings_with(tmp_path, None), profile_flag="snelius", environ={})
    assert "snellius" in (info.value.hint or "")
    assert info.value.exit_code == 2


def test_bad_env_number(tmp_path: Path) -> None:
    with pytest.raises(HpcjobError, match="HPCJOB_PORT"):
        resolve_profile(
            settings_with(tmp_path, None), profile_flag="snellius", environ={"HPCJOB_PORT": "x"}
        )


def test_starter_config_is_private_valid_and_never_overwritten(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, None)
    path = write_starter_config(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    profile = resolve_profile(settings, environ={})
    assert profile.name == "local"
    with pytest.raises(HpcjobError, match="already exists"):
        write_starter_config(settings)
    path.write_text("# mine\n")
    write_starter_config(settings, force=True)
    assert "default_profile" in path.read_text()


# ------------------------------------------------------------- a host means Slurm over SSH
def test_a_host_implies_slurm_and_says_so(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, '[profiles.lab]\nhost = "login.lab.example"\n')
    profile = resolve_profile(settings, profile_flag="lab", environ={})
    assert profile.scheduler == "slurm"
    assert profile.sources["scheduler"].startswith("implied by host")
    assert "[profiles.lab]" in profile.sources["scheduler"]  # where the host came from
    # The defaults of a cluster, not of this machine's embedded scheduler.
    assert profile.get("remote_root") == "~/hpcjob/runs"
    assert profile.get("python") == "python3"
    from_env = resolve_profile(
        settings_with(tmp_path, "[profiles.lab]\n"),
        profile_flag="lab",
        environ={"HPCJOB_HOST": "login.lab.example"},
    )
    assert from_env.scheduler == "slurm"
    assert from_env.sources["scheduler"] == "implied by host (env HPCJOB_HOST)"


def test_a_host_with_the_local_scheduler_is_refused(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path, '[profiles.lab]\nhost = "login.lab.example"\nscheduler = "local"\n'
    )
    with pytest.raises(HpcjobError) as info:
        resolve_profile(settings, profile_flag="lab", environ={})
    message = info.value.message
    assert "profile lab" in message.lower()
    assert "host" in message and "scheduler" in message and "local" in message
    assert 'scheduler = "slurm"' in (info.value.hint or "")
    assert info.value.exit_code == 2
    # The built-in `local` profile given a host is the same contradiction, never quietly local.
    with pytest.raises(HpcjobError, match="profile local"):
        resolve_profile(
            settings_with(tmp_path, None), profile_flag="local", environ={"HPCJOB_HOST": "x.org"}
        )


def test_a_profile_with_a_host_runs_its_scheduler_over_ssh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpcjob.scheduler.factory import scheduler_for

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config of the developer's
    settings = settings_with(tmp_path, '[profiles.lab]\nhost = "login.lab.example"\n')
    scheduler = scheduler_for(resolve_profile(settings, profile_flag="lab", environ={}), settings)
    assert scheduler.name == "slurm" and not scheduler.jobs_run_here
    assert scheduler.address == "slurm:login.lab.example"  # nothing connects until first use
