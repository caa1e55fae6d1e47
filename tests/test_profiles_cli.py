"""A profile on the command line means what it says: a host is Slurm over SSH, `config init`
keeps the profile chosen now, `connect NAME`, errors that name the profile, a dry run offline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

Invoke = Any


@pytest.fixture
def home(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HPCJOB_HOME made, and a HOME of the test's own: never the developer's ~/.ssh."""
    user_home = tmp_path / "user"
    user_home.mkdir()
    monkeypatch.setenv("HOME", str(user_home))
    isolated_home.mkdir(parents=True, exist_ok=True)
    return isolated_home


def write_config(home: Path, text: str) -> None:
    (home / "config.toml").write_text(text)


def test_config_show_says_the_host_implies_slurm(cli: Invoke, home: Path) -> None:
    write_config(home, '[profiles.lab]\nhost = "login.lab.example"\n')
    shown = cli("config", "show", "-P", "lab", "--json").json()
    rows = {row["key"]: row for row in shown["settings"]}
    assert rows["scheduler"]["value"] == "slurm"
    assert rows["scheduler"]["source"].startswith("implied by host")
    write_config(home, '[profiles.lab]\nhost = "login.lab.example"\nscheduler = "local"\n')
    refused = cli("config", "show", "-P", "lab")
    assert refused.exit_code == 2
    assert "Profile lab contradicts itself" in refused.stderr
    assert "Traceback" not in refused.stderr


# ------------------------------------------------------------------ config init keeps the choice
def fake_sbatch(folder: Path) -> str:
    """A folder with an `sbatch` in it, as on a login node (never run: only found on PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    sbatch = folder / "sbatch"
    sbatch.write_text("#!/bin/sh\nexit 1\n")
    sbatch.chmod(0o755)
    return str(folder)


def test_config_init_on_a_login_node_keeps_the_detected_slurm(
    cli: Invoke, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HPCJOB_PROFILE")
    monkeypatch.setenv("PATH", fake_sbatch(tmp_path / "bin"))
    assert cli("config", "show", "--json").json()["profile"] == "slurm"  # detected before
    created = cli("config", "init")
    assert created.exit_code == 0, created.stderr
    text = (home / "config.toml").read_text()
    assert 'default_profile = "slurm"' in text
    assert 'default_profile = "slurm"' in created.stderr and "sbatch is on PATH" in created.stderr
    assert cli("config", "show", "--json").json()["profile"] == "slurm"  # and after


def test_config_init_without_sbatch_writes_local(
    cli: Invoke, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HPCJOB_PROFILE")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli("config", "init").exit_code == 0
    assert 'default_profile = "local"' in (home / "config.toml").read_text()
    assert cli("config", "show", "--json").json()["profile"] == "local"


# ------------------------------------------------------------- errors that name their profile
def cache_partitions(home: Path, profile: str) -> None:
    """A fresh sinfo cache of the profile (as `hpcjob partitions` leaves it): no sinfo runs."""
    cache = home / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    part = {
        "name": "gpu_a100",
        "is_default": False,
        "avail": "up",
        "max_time_s": 5 * 86400,
        "nodes": 4,
        "nodes_allocated": 0,
        "nodes_idle": 4,
        "nodes_other": 0,
        "cpus_per_node": 72,
        "mem_mb": 491520,
        "gpus_per_node": {"a100": 4},
    }
    rome = {**part, "name": "rome", "is_default": True, "gpus_per_node": {}}
    (cache / f"partitions-{profile}.json").write_text(json.dumps([part, rome]))


def test_an_unknown_partition_names_the_profile(cli: Invoke, home: Path) -> None:
    write_config(home, '[profiles.lab]\nscheduler = "slurm"\n')
    cache_partitions(home, "lab")
    refused = cli("submit", "gpu-check", "-P", "lab", "-p", "gpu_a10", "--dry-run")
    assert refused.exit_code == 2
    assert "no partition 'gpu_a10'" in refused.stderr and "gpu_a100" in refused.stderr
    assert "Profile lab: the job request has problems" in refused.stderr
    assert "the cluster has no partition 'gpu_a10'" in refused.stderr
    assert "`hpcjob partitions --profile lab`" in refused.stderr


def test_a_failing_sinfo_names_the_profile(
    cli: Invoke, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(home, '[profiles.lab]\nscheduler = "slurm"\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sinfo = bin_dir / "sinfo"
    sinfo.write_text("#!/bin/sh\necho 'Unable to contact slurm controller' >&2\nexit 1\n")
    sinfo.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    refused = cli("submit", "gpu-check", "-P", "lab", "--dry-run")
    assert refused.exit_code == 1
    assert "Profile lab: Asking Slurm for its partitions (sinfo) failed" in refused.stderr
    assert "Unable to contact slurm controller" in refused.stderr


def test_a_missing_data_dir_names_the_profile_that_set_it(cli: Invoke, home: Path) -> None:
    write_config(home, '[profiles.local]\ndata_dir = "/nowhere/pcam"\n')
    refused = cli("submit", "train")
    assert refused.exit_code == 2
    assert "/nowhere/pcam" in refused.stderr
    assert "data_dir of profile local" in refused.stderr


def test_a_remote_root_that_cannot_be_written_names_the_profile(
    cli: Invoke, home: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    write_config(home, f'[profiles.local]\nremote_root = "{blocker}/runs"\n')
    refused = cli("submit", "gpu-check")
    assert refused.exit_code == 1
    assert "Could not stage" in refused.stderr
    assert "remote_root of profile local" in refused.stderr


def test_setup_env_hints_name_the_profile() -> None:
    from hpcjob.env.report import result_error
    from hpcjob.envscript import EnvRequest, EnvResult

    request = EnvRequest(venv="~/hpcjob/venv", python="python3")
    mismatch = EnvResult(
        ok=False, stage="venv", error="python_mismatch", venv_python="3.11", python_version="3.13"
    )
    error = result_error(mismatch, request, "", profile="lab")
    assert "profile lab's python" in error.message
    assert "hpcjob setup-env --force --profile lab" in (error.hint or "")
    missing = EnvResult(ok=False, stage="python", error="python_not_found")
    assert "Profile lab's python" in result_error(missing, request, "", profile="lab").message


# -------------------------------------------------------------------- connect NAME, as hinted
def test_connect_takes_the_profile_as_its_argument(cli: Invoke, home: Path) -> None:
    # A host that is no host name fails before any network: it shows which profile was used.
    write_config(home, '[profiles.lab]\nhost = "not a host"\n')
    for args in (["connect", "lab"], ["connect", "lab", "-P", "lab"], ["-P", "lab", "connect"]):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.stderr)
        assert "Profile lab's host 'not a host' is not a host name" in result.stderr, args
    local = cli("connect", "local")
    assert local.exit_code == 2 and "Profile 'local' has no host" in local.stderr
    for args in (["connect", "lab", "-P", "snellius"], ["-P", "snellius", "connect", "lab"]):
        both = cli(*args)
        assert both.exit_code == 2, args
        assert "lab" in both.stderr and "snellius" in both.stderr and "two" in both.stderr.lower()


# ------------------------------------------------------------ a dry run without a connection
# Port 1 on loopback refuses at once: no name lookup, no network (the shell retries the refusal a
# few times with its backoff before it gives up, as for any command).
UNREACHABLE = '[profiles.lab]\nhost = "127.0.0.1"\nport = 1\nuser = "me"\n'


def test_a_dry_run_without_a_connection_checks_what_it_can_and_says_what_it_could_not(
    cli: Invoke, home: Path
) -> None:
    write_config(home, UNREACHABLE)
    dry = cli("submit", "gpu-check", "-P", "lab", "-p", "gpu_a100", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    shown = dry.json()
    assert shown["run_dir"].startswith("~/hpcjob/runs/r")  # the remote home is not known
    partitions, files, home_dir = shown["not_checked"]
    assert partitions.startswith("the live partitions (no connection to 127.0.0.1): ")
    assert "no partitions cached for profile lab" in partitions
    assert files.startswith("the data folder and the venv's python on 127.0.0.1")
    assert home_dir.startswith("the remote home")


def test_a_dry_run_with_a_broken_host_is_refused_not_offline(cli: Invoke, home: Path) -> None:
    write_config(home, '[profiles.lab]\nhost = "not a host"\n')
    refused = cli("submit", "gpu-check", "-P", "lab", "--dry-run")
    assert refused.exit_code == 1
    assert "Profile lab's host 'not a host' is not a host name" in refused.stderr


def test_a_dry_run_without_a_connection_uses_the_cached_partitions(cli: Invoke, home: Path) -> None:
    write_config(home, UNREACHABLE)
    cache_partitions(home, "lab")
    os.utime(home / "cache" / "partitions-lab.json", (0, 0))  # however old: said to be
    refused = cli("submit", "gpu-check", "-P", "lab", "-p", "gpu_a10", "--dry-run")
    assert refused.exit_code == 2
    assert "Profile lab: the job request has problems" in refused.stderr
    assert "Checked against the partitions cached at 1970-01-01T00:00:00Z" in refused.stderr
    told = cli("submit", "gpu-check", "-P", "lab", "-p", "gpu_a100", "--dry-run")
    assert told.exit_code == 0, told.stderr
    assert "Valid as far as it could be checked" in told.stderr
    assert "run directory would be ~/hpcjob/runs/r" in told.stderr
    assert "not checked: the live partitions (no connection to 127.0.0.1)" in told.stderr
    assert "cached at 1970-01-01T00:00:00Z instead" in told.stderr
    assert "Traceback" not in told.stderr
