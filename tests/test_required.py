"""Required means required: in CI any skip fails the run (the hook in tests/conftest.py), and
.ci/run makes CI required by itself, whatever its caller exported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import GUARD_S, REPO, ci_required

# A tiny suite as CI may meet one: a test that passes, one that skips from inside, one skipped by
# a mark (as a GPU test is), and a whole module skipped at import (as a missing tool does).
SKIPPING = """
import pytest

def test_runs():
    pass

def test_needs_a_tool():
    pytest.skip("ssh-agent is not installed")

@pytest.mark.skipif(True, reason="asserts the CPU-only path")
def test_needs_no_gpu():
    pass
"""
MODULE_SKIP = """
import pytest

pytest.skip("the test cluster is not running", allow_module_level=True)
"""


def _pytest(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on `folder` with this repository's conftest as a plugin, in an environment
    that says only what `env` says about CI."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "HPCJOB_REQUIRE_CLUSTER", "PYTEST_ADDOPTS")
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-q", str(folder)],
        cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=GUARD_S,
    )  # fmt: skip


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")  # not this repository's settings
    (folder / "test_skips.py").write_text(SKIPPING)
    (folder / "test_cluster.py").write_text(MODULE_SKIP)
    return folder


def test_in_ci_any_skip_fails_the_run_and_each_is_named(suite: Path) -> None:
    done = _pytest(suite, CI="true")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "REQUIRED: 3 test(s) skipped in CI, which fails the run" in out
    assert "SKIPPED test_skips.py::test_needs_a_tool: ssh-agent is not installed" in out
    assert "SKIPPED test_skips.py::test_needs_no_gpu: asserts the CPU-only path" in out
    assert "SKIPPED test_cluster.py: the test cluster is not running" in out
    assert re.search(r"1 passed, 3 skipped", out), out


def test_outside_ci_a_skip_is_only_reported(suite: Path) -> None:
    done = _pytest(suite)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REQUIRED" not in done.stdout and "1 passed, 3 skipped" in done.stdout


@pytest.mark.parametrize(
    ("env", "required"),
    [
        ({"CI": "true"}, True),
        ({"CI": "1"}, True),
        ({"CI": "yes"}, True),
        ({"CI": "TRUE"}, True),
        ({"HPCJOB_REQUIRE_CLUSTER": "1"}, True),
        ({}, False),
        ({"CI": ""}, False),
        ({"CI": "false"}, False),
        ({"CI": "0"}, False),
        ({"HPCJOB_REQUIRE_CLUSTER": "0"}, False),
    ],
)
def test_what_counts_as_ci(env: dict[str, str], required: bool) -> None:
    assert ci_required(env) is required


def test_the_integration_tests_use_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.support import cluster_required

    monkeypatch.delenv("HPCJOB_REQUIRE_CLUSTER", raising=False)
    for value, required in (("1", True), ("yes", True), ("true", True), ("", False)):
        monkeypatch.setenv("CI", value)
        assert cluster_required() is required, value


def test_ci_script_requires_every_test_by_itself() -> None:
    """.ci/run exports what makes the tests required before it runs any of them, so a caller
    with CI=1, or none at all, cannot turn the integration tests into skips."""
    script = (REPO / ".ci" / "run").read_text()
    exported = re.search(r"^export CI=true HPCJOB_REQUIRE_CLUSTER=1$", script, re.M)
    runs_tests = re.search(r"^make test$", script, re.M)
    assert exported and runs_tests and exported.start() < runs_tests.start()
    assert ci_required({"CI": "true", "HPCJOB_REQUIRE_CLUSTER": "1"})
