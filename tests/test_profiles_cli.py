"""A profile on the command line means what it says: a host is Slurm over SSH, `config init`
keeps the profile chosen now, `connect NAME`, errors that name the profile, a dry run offline."""

from __future__ import annotations

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
