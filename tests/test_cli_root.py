"""The root of the command line: `--profile`/`-P` before the command, as users of aws, gh and
kubectl type it, with the same precedence as after it (the command's own flag wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import invoke


@pytest.fixture
def two_profiles(isolated_home: Path) -> Path:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.toml").write_text(
        '[profiles.alpha]\nscheduler = "local"\n\n[profiles.beta]\nscheduler = "local"\n'
    )
    return isolated_home


def profile_shown(*args: str) -> str:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return str(result.json()["profile"])


def test_profile_before_the_command_is_used(two_profiles: Path) -> None:
    assert profile_shown("config", "show") == "local"  # HPCJOB_PROFILE, set by the fixture
    assert profile_shown("--profile", "alpha", "config", "show") == "alpha"
    assert profile_shown("-P", "beta", "config", "show") == "beta"


def test_the_commands_own_flag_wins(two_profiles: Path) -> None:
    assert profile_shown("-P", "alpha", "config", "show", "-P", "beta") == "beta"


def test_a_profile_before_the_command_reaches_run_commands(two_profiles: Path) -> None:
    result = invoke("-P", "alpha", "status", "--json")
    assert result.exit_code == 0 and result.json() == []
    wrong = invoke("--profile", "gamma", "status")
    assert wrong.exit_code == 2
    assert "no profile named 'gamma'" in wrong.stderr and "alpha" in wrong.stderr


def test_each_invocation_starts_without_the_last_ones_profile(two_profiles: Path) -> None:
    assert profile_shown("-P", "alpha", "config", "show") == "alpha"
    assert profile_shown("config", "show") == "local"
