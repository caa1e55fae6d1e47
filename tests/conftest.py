"""Shared fixtures (an isolated HPCJOB_HOME, the CLI runner, synthetic PCAM data) and the rule
that in CI a skipped test is a failed run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, ci_required, invoke

# -- in CI, a skip is a failure ---------------------------------------------------------------
# Where every test is required (ci_required(): CI=true/1/yes or HPCJOB_REQUIRE_CLUSTER=1), a test
# that skips, for any reason (no cluster, no ssh-agent, no ssh-keygen, a GPU or none), did not
# show what it exists to show: the run fails, and the summary names each skip and its reason.

_required = False
_skips: list[tuple[str, str]] = []  # (test, reason)


def pytest_configure(config: pytest.Config) -> None:
    global _required
    _required = ci_required()  # read before any test changes the environment


def _note_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr  # (file, line, "Skipped: why") for a skip
        why = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
        _skips.append((report.nodeid, why.removeprefix("Skipped: ")))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note_skip(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note_skip(report)  # a whole module skipped


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _required and _skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not (_required and _skips):
        return
    terminalreporter.section(
        f"REQUIRED: {len(_skips)} test(s) skipped in CI, which fails the run", red=True, bold=True
    )
    for nodeid, reason in _skips:
        terminalreporter.write_line(f"SKIPPED {nodeid}: {reason}", red=True)
    terminalreporter.write_line(
        "Every test is required here (CI=true/1/yes or HPCJOB_REQUIRE_CLUSTER=1): make what each "
        "one needs available (.ci/run starts the test cluster and installs openssh-client)."
    )


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HPCJOB_HOME and the local profile; never the developer's files."""
    home = tmp_path / "hpcjob-home"
    monkeypatch.setenv("HPCJOB_HOME", str(home))
    monkeypatch.setenv("HPCJOB_PROFILE", "local")
    monkeypatch.setenv("HPCJOB_LOCAL_KILL_WAIT", "1")
    for key in list(os.environ):
        if (
            key.startswith("HPCJOB_")
            and key
            not in (
                "HPCJOB_HOME",
                "HPCJOB_PROFILE",
                "HPCJOB_LOCAL_KILL_WAIT",
                "HPCJOB_REQUIRE_CLUSTER",  # the tests' own setting, not hpcjob's
            )
            and not key.startswith("HPCJOB_TEST_")
        ):
            monkeypatch.delenv(key)
    return home


@pytest.fixture
def cli() -> Any:
    return invoke


@pytest.fixture(scope="session")
def pcam_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small synthetic PCAM set (official flavour) made by the workloads' own generator."""
    out = tmp_path_factory.mktemp("pcam")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "workloads" / "synth.py"),
            str(out),
            "--flavour",
            "official",
            "--train",
            "1024",
            "--valid",
            "256",
            "--test",
            "256",
            "--seed",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    yield out
