"""`hpcjob budget` and the dry run's budget line over the real SSH path to the test cluster: the
cluster has no accinfo (so the ledger's spend is shown, and says so), then an `accinfo` in the
test user's ~/bin (a login shell's PATH, as on Snellius) that prints the reconstructed output of
tests/fixtures/budget/accinfo.txt — and a submit whose estimate exceeds what it says is left
warns, and is submitted all the same."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import invoke
from tests.integration.support import SSHLogin, ssh_profile, write_config

pytestmark = pytest.mark.ssh

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "budget" / "accinfo.txt"
RATES = """
[profiles.cluster.sbu_rates]
rome = { sbu_per_hour = 1.0, per = "core", min_units = 16 }
"""


def use_profile(cluster: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'A laptop' (this process) whose profile `cluster` reaches the test user over SSH, bills
    rome as Snellius does, and names the test account."""
    write_config(home, ssh_profile(cluster, account=cluster["HPCJOB_TEST_ACCOUNT"]) + RATES)
    monkeypatch.setenv("HPCJOB_HOME", str(home))
    monkeypatch.setenv("HPCJOB_PROFILE", "cluster")


@pytest.fixture
def accinfo(cluster: dict[str, str]) -> Iterator[Path]:
    """An `accinfo` in the test user's ~/bin printing ~/bin/accinfo.txt (the fixture to begin
    with); removed afterwards, and ~/bin too when the test made it."""
    user = cluster["HPCJOB_TEST_USER"]
    bin_dir = Path(f"/home/{user}/bin")
    made = not bin_dir.exists()
    bin_dir.mkdir(exist_ok=True)
    tool, text = bin_dir / "accinfo", bin_dir / "accinfo.txt"
    shutil.copyfile(FIXTURE, text)
    tool.write_text(f"#!/bin/sh\ncat '{text}'\n")
    tool.chmod(0o755)
    for path in (bin_dir, tool, text):
        shutil.chown(path, user, user)
    try:
        yield text
    finally:
        tool.unlink(missing_ok=True)
        text.unlink(missing_ok=True)
        if made:
            shutil.rmtree(bin_dir, ignore_errors=True)


def test_without_accinfo_the_ledger_spend_is_shown_and_says_so(
    cluster: dict[str, str], ssh_login: SSHLogin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not Path(f"/home/{cluster['HPCJOB_TEST_USER']}/bin/accinfo").exists()
    use_profile(cluster, tmp_path / "home", monkeypatch)
    shown = invoke("budget", "--json")
    assert shown.exit_code == 0, shown.stderr
    [row] = shown.json()
    assert (row["account"], row["source"], row["used_sbu"]) == ("hpctest_acct", "ledger", 0)
    assert "the cluster's own budget tool (accinfo, budget-overview) was not found" in row["note"]
    text = invoke("budget")
    assert "spent by hpcjob's runs of profile cluster only" in text.stderr
    dry = invoke("submit", "gpu-check", "--time", "60", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert (
        "budget: unknown (the cluster's own budget tool (accinfo, budget-overview) was not "
        "found); hpcjob's runs of profile cluster spent 0 SBU on account hpctest_acct; "
        "this job ≤ 16.0 SBU"
    ) in dry.stderr


def test_accinfo_is_read_over_ssh_and_shown_in_the_dry_run(
    cluster: dict[str, str],
    ssh_login: SSHLogin,
    accinfo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_profile(cluster, tmp_path / "home", monkeypatch)
    shown = invoke("budget", "--json")
    assert shown.exit_code == 0, shown.stderr
    [row] = shown.json()
    assert (row["account"], row["source"]) == ("hpctest_acct", "accinfo")
    assert (row["remaining_sbu"], row["initial_sbu"], row["used_sbu"]) == (87654.5, 1e5, 12345.5)
    assert row["valid_until"] == "2027-06-30"
    checked = row["checked_at"][11:16]
    dry = invoke("submit", "gpu-check", "--time", "60", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert (
        f"budget: 87,654 SBU left on account hpctest_acct (accinfo, checked {checked} UTC); "
        "this job ≤ 16.0 SBU"
    ) in dry.stderr
    as_json = invoke("submit", "gpu-check", "--time", "60", "--dry-run", "--json").json()
    assert as_json["budget"].startswith("budget: 87,654 SBU left on account hpctest_acct")


def test_a_submit_over_what_is_left_warns_and_goes_on(
    cluster: dict[str, str],
    ssh_login: SSHLogin,
    accinfo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    low = FIXTURE.read_text().replace("87654:30", "10:00")
    assert low != FIXTURE.read_text()
    accinfo.write_text(low)
    use_profile(cluster, tmp_path / "home", monkeypatch)
    done = invoke("submit", "gpu-check", "--time", "60", "--json")
    assert done.exit_code == 0, done.stderr
    assert done.json()["job_id"]  # submitted all the same
    assert (
        "This job may cost up to 16.0 SBU, more than the 10.0 SBU left on account hpctest_acct"
    ) in " ".join(done.stderr.split())
    assert invoke("cancel", done.json()["job_id"]).exit_code == 0
