"""`hpcjob budget`, the dry run's budget line and submit's over-budget warning: the reader of
accinfo/budget-overview on their (reconstructed) output and on hostile output, the one probe
command and its cache, the ledger's spend where the cluster has no budget tool, and the CLI.

accinfo and budget-overview exist only on Snellius, so their output here is reconstructed from
SURF's documentation (tests/fixtures/budget/README.md), not recorded; the test cluster shows the
real SSH path in tests/integration/test_budget.py."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from hpcjob import budget
from hpcjob.budget import (
    Budget,
    for_account,
    parse_budget,
    parse_sbu,
    probe_argv,
    split_probe,
)
from hpcjob.config import Profile, Settings
from hpcjob.cost import NOT_BILLED, Cost
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobInfo, JobState
from hpcjob.run.context import Context
from hpcjob.scheduler.slurm import SlurmScheduler
from hpcjob.shell import CommandResult
from tests.helpers import ReplayShell, invoke, new_run

BUDGET = Path(__file__).parent / "fixtures" / "budget"
RATES = {"rome": {"sbu_per_hour": 1.0, "per": "core", "min_units": 16}}


def fixture(name: str) -> str:
    return (BUDGET / name).read_text()


def probe_output(tool: str | None, text: str = "", rc: int = 0, noise: str = "") -> str:
    """What the probe prints on a login node where `tool` answers (None: neither exists)."""
    if tool is None:
        return noise
    return f"{noise}\n@@hpcjob-budget-begin {tool}\n{text}\n@@hpcjob-budget-end {tool} {rc}\n"


# -- the reader -------------------------------------------------------------------------------


def test_accinfo_key_value_lines_with_sbu_and_minutes() -> None:
    assert parse_budget(fixture("accinfo.txt")) == [
        Budget(
            account="hpctest_acct",
            remaining_sbu=87654.5,
            initial_sbu=100000.0,
            used_sbu=12345.5,
            valid_until="2027-06-30",
            last_update="2026-12-06 10:00:01",
        )
    ]


def test_accinfo_with_two_accounts_and_thousands_separators() -> None:
    found = parse_budget(fixture("accinfo_two_accounts.txt"))
    assert found is not None
    assert [(b.account, b.remaining_sbu, b.initial_sbu, b.used_sbu) for b in found] == [
        ("gpuuva012", 765432.75, 1000000.0, 234567.25),
        ("tcourse42", 50.0, 50000.0, 49950.0),
    ]
    assert found[1].valid_until == "2027-01-31"


def test_budget_overview_table() -> None:
    found = parse_budget(fixture("budget-overview.txt"))
    assert found is not None
    assert [(b.account, b.remaining_sbu, b.valid_until) for b in found] == [
        ("gpuuva012", 765432.75, "2026-12-31"),
        ("tcourse42", 50.0, "2027-01-31"),
    ]


@pytest.mark.parametrize(
    ("text", "sbu"),
    [
        ("1,000,000", 1000000.0),
        ("12345.5", 12345.5),
        ("50000:00", 50000.0),
        ("90:30", 90.5),
        ("1,234:59 SBU", 1234.98),
        ("87654 SBUs", 87654.0),
        ("0", 0.0),
        ("-5", None),  # negative: not read
        ("-12:00", None),
        ("1.000.000", None),  # a European thousands separator is ambiguous: not guessed
        ("12,34", None),
        ("1e9", None),
        ("90:75", None),  # no 75th minute
        ("9" * 30, None),  # above any budget
        ("", None),
        ("unknown", None),
    ],
)
def test_numbers_are_read_or_refused_never_guessed(text: str, sbu: float | None) -> None:
    assert parse_sbu(text) == sbu


def test_keys_are_matched_loosely_and_unknown_lines_ignored() -> None:
    text = (
        "Welcome to Snellius!\n"
        "Project: abc123\n"
        "SBU granted = 2,000\n"
        "Spent: 500\n"
        "SBUs left: 1,500\n"
        "Expires: 2027-03-01\n"
        "Some other line: with a value\n"
    )
    assert parse_budget(text) == [
        Budget("abc123", remaining_sbu=1500.0, initial_sbu=2000.0, used_sbu=500.0,
               valid_until="2027-03-01")
    ]  # fmt: skip


def test_remaining_is_worked_out_from_granted_and_used_when_not_shown() -> None:
    found = parse_budget("Account : a1\nInitial budget : 1000\nUsed budget : 250:30\n")
    assert found == [Budget("a1", remaining_sbu=749.5, initial_sbu=1000.0, used_sbu=250.5)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "accinfo: command failed\n",
        "\x00\x01\x02 binary \xff garbage",
        "Account : a1\nRemaining budget : lots\n",  # a number that is none
        "Account : a1\n",  # no amount at all
        "x" * 5_000_000,  # a huge line
        ("Remaining budget : " + "9" * 5000 + "\n") * 200,  # huge numbers on long lines
        "| Account | Remaining |\n|---|---|\n| a | b | c |\n",  # rows that do not line up
    ],
)
def test_odd_output_reads_as_nothing_and_never_raises(text: str) -> None:
    assert parse_budget(text) is None
    # What the patterns see is bounded (no regex runs away), checked without timing it: at most
    # MAX_TEXT characters, no line above MAX_LINE.
    lines = budget._lines(text)
    assert sum(map(len, lines)) <= budget.MAX_TEXT
    assert all(len(line) <= budget.MAX_LINE for line in lines)


def test_a_negative_amount_is_unknown_and_the_rest_still_reads() -> None:
    found = parse_budget("Account : a1\nInitial budget : 100\nRemaining budget : -20\n")
    assert found == [Budget("a1", remaining_sbu=None, initial_sbu=100.0)]


def test_a_budget_is_found_by_account() -> None:
    two = parse_budget(fixture("accinfo_two_accounts.txt")) or []
    assert for_account(two, "TCOURSE42") == two[1]
    assert for_account(two, None) is None  # several: none is taken for the default
    assert for_account(two, "other") is None
    one = [Budget(None, remaining_sbu=5.0)]
    assert for_account(one, "acct") == Budget("acct", remaining_sbu=5.0)


# -- the one probe command --------------------------------------------------------------------


def test_the_probe_is_one_command_that_asks_each_tool_only_if_it_exists(tmp_path: Path) -> None:
    """Run for real in bash: a PATH with only budget-overview (accinfo is missing) answers in
    the same command, and a login shell's chatter before it is not taken for the answer."""
    import subprocess

    tool = tmp_path / "budget-overview"
    tool.write_text(f"#!/bin/sh\ncat {BUDGET / 'budget-overview.txt'}\n")
    tool.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    argv = probe_argv()
    assert argv[:2] == ["bash", "-c"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    answers = split_probe("Last login: yesterday\nmodule chatter\n" + done.stdout)
    assert [(a.tool, a.returncode) for a in answers] == [("budget-overview", 0)]
    assert parse_budget(answers[0].text) == parse_budget(fixture("budget-overview.txt"))
    empty = subprocess.run(argv, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert empty.returncode == 0 and split_probe(empty.stdout) == []


# -- asking the cluster, the cache ------------------------------------------------------------


def cluster_context(tmp_path: Path, stdout: str, **profile: Any) -> tuple[Context, ReplayShell]:
    """A Slurm profile whose login node answers the probe (`bash`) with `stdout`."""
    shell = ReplayShell({"bash": [CommandResult(("bash",), 0, stdout, "")]})
    values = {"scheduler": "slurm", "host": "login.example", "sbu_rates": RATES, **profile}
    ctx = Context(Settings(tmp_path / "home"), Profile("cluster", values))
    ctx._scheduler = SlurmScheduler(shell, "slurm:login.example")
    return ctx, shell


def test_the_answer_is_cached_per_profile_and_written_atomically(tmp_path: Path) -> None:
    from hpcjob.insight.budget import ask_cluster

    ctx, shell = cluster_context(tmp_path, probe_output("accinfo", fixture("accinfo.txt")))
    first = ask_cluster(ctx)
    assert first is not None and first.tool == "accinfo"
    assert first.budgets[0].remaining_sbu == 87654.5
    assert ask_cluster(ctx) == first
    assert shell.commands() == ["bash"]  # the second came from the cache
    cache = ctx.settings.home / "cache"
    assert [p.name for p in cache.iterdir()] == ["budget-cluster.json"]  # no temporary left
    ask_cluster(ctx, refresh=True)
    assert shell.commands() == ["bash", "bash"]
    old = time.time() - 600
    os.utime(cache / "budget-cluster.json", (old, old))  # past its few minutes
    ask_cluster(ctx)
    assert len(shell.calls) == 3
    (cache / "budget-cluster.json").write_text("{not json")  # damaged: asked again
    again = ask_cluster(ctx)
    assert again is not None and again.budgets == first.budgets
    assert len(shell.calls) == 4


def test_no_tool_and_unreadable_output_are_answers_too(tmp_path: Path) -> None:
    from hpcjob.insight.budget import ask_cluster, read_answer

    ctx, _ = cluster_context(tmp_path, probe_output(None, noise="motd\n"))
    none = ask_cluster(ctx)
    assert none is not None and none.tool is None and none.unreadable is None
    odd = read_answer(probe_output("accinfo", "Service temporarily unavailable"), "t")
    assert odd.unreadable == "could not read accinfo's output"
    failed = read_answer(probe_output("accinfo", "accinfo: database error", rc=2), "t")
    assert failed.unreadable == (
        "could not read accinfo's output (it exited 2: accinfo: database error)"
    )
    later = read_answer(
        probe_output("accinfo", "garbage", rc=1) + probe_output("budget-overview",
                                                                fixture("budget-overview.txt")),
        "t",
    )  # fmt: skip
    assert later.tool == "budget-overview" and len(later.budgets) == 2


# -- the ledger's spend where the cluster has no budget tool ---------------------------------


def ran(ctx: Context, account: str | None, seconds: int, started: str, **spec: Any) -> str:
    """A run of 16 cores on rome that ran `seconds` (sacct's elapsed), recorded in the ledger."""
    resources = {"partition": "rome", "cpus_per_task": 16, "account": account, **spec}
    run = ctx.ledger.create_run(
        new_run(profile=ctx.profile.name, cluster="slurm:login.example", scheduler="slurm",
                spec={"workload": "train", "resources": resources})
    )  # fmt: skip
    run = ctx.ledger.set_submitted(run.run_id, f"{seconds}", "/out")
    info = JobInfo(run.job_id or "", JobState.COMPLETED, exit_code=0, started_at=started,
                   ended_at=started)  # fmt: skip
    ctx.ledger.record_info(run, info, "test")
    ctx.ledger.set_facts(run.run_id, {"sacct_elapsed_s": seconds})
    return run.run_id


def test_without_a_budget_tool_the_ledger_says_what_hpcjobs_runs_spent(tmp_path: Path) -> None:
    from hpcjob.insight.budget import budget_rows

    ctx, _ = cluster_context(tmp_path, probe_output(None))
    ran(ctx, "acct_a", 3600, "2026-11-02T10:00:00Z")  # 16 SBU
    ran(ctx, "acct_a", 1800, "2026-11-01T10:00:00Z")  # 8 SBU
    ran(ctx, None, 900, "2026-12-01T10:00:00Z")  # 4 SBU, the default account
    rows = budget_rows(ctx, None)
    assert [(r["account"], r["used_sbu"], r["since"], r["runs"]) for r in rows] == [
        (None, 4.0, "2026-12-01T10:00:00Z", 1),
        ("acct_a", 24.0, "2026-11-01T10:00:00Z", 2),
    ]
    assert {r["source"] for r in rows} == {"ledger"}
    assert all(r["remaining_sbu"] is None for r in rows)
    assert rows[1]["note"] == (
        "spent by hpcjob's runs of profile cluster only, since 2026-11-01; the cluster's own "
        "budget tool (accinfo, budget-overview) was not found"
    )
    only = budget_rows(ctx, "acct_a")
    assert [r["used_sbu"] for r in only] == [24.0]
    nothing = budget_rows(ctx, "acct_b")
    assert [(r["account"], r["used_sbu"], r["since"]) for r in nothing] == [("acct_b", 0, None)]


def test_unreadable_output_falls_back_to_the_ledger_and_says_why(tmp_path: Path) -> None:
    from hpcjob.insight.budget import budget_rows

    ctx, _ = cluster_context(tmp_path, probe_output("accinfo", "%%% garbage %%%"))
    ran(ctx, "acct_a", 3600, "2026-11-02T10:00:00Z")
    rows = budget_rows(ctx, None)
    assert rows[0]["source"] == "ledger" and rows[0]["used_sbu"] == 16.0
    assert rows[0]["note"].endswith("; could not read accinfo's output")


def test_the_cluster_tool_answers_and_an_unknown_account_is_an_error(tmp_path: Path) -> None:
    from hpcjob.insight.budget import budget_rows

    ctx, _ = cluster_context(tmp_path, probe_output("accinfo", fixture("accinfo_two_accounts.txt")))
    rows = budget_rows(ctx, None)
    assert [(r["account"], r["remaining_sbu"], r["source"]) for r in rows] == [
        ("gpuuva012", 765432.75, "accinfo"),
        ("tcourse42", 50.0, "accinfo"),
    ]
    assert [r["account"] for r in budget_rows(ctx, "tcourse42")] == ["tcourse42"]
    with pytest.raises(HpcjobError) as caught:
        budget_rows(ctx, "nosuch")
    assert caught.value.message == (
        "accinfo shows no account 'nosuch'; it shows: gpuuva012, tcourse42."
    )


# -- the dry run's line and submit's warning --------------------------------------------------


def test_the_dry_run_line_says_what_is_left_and_what_the_job_may_cost(tmp_path: Path) -> None:
    from hpcjob.insight.budget import budget_line

    ctx, _ = cluster_context(tmp_path, probe_output("accinfo", fixture("accinfo.txt")))
    line = budget_line(ctx, Cost("rome", 64.0, 4.0), "hpctest_acct")
    checked = line.split("checked ")[1][:5]
    assert line == (
        f"budget: 87,654 SBU left on account hpctest_acct (accinfo, checked {checked} UTC); "
        "this job ≤ 64.0 SBU"
    )
    big = budget_line(ctx, Cost("rome", 90000.0, 4.0), None)  # the only account
    assert big.endswith("this job ≤ 90,000 SBU — more than is left (a submit warns, and goes on)")


def test_the_dry_run_line_without_a_tool_is_the_ledger_variant(tmp_path: Path) -> None:
    from hpcjob.insight.budget import budget_line

    ctx, _ = cluster_context(tmp_path, probe_output(None))
    assert budget_line(ctx, Cost("rome", 16.0, 1.0), "acct_a").startswith(
        "budget: unknown (the cluster's own budget tool (accinfo, budget-overview) was not "
        "found); hpcjob's runs of profile cluster spent 0 SBU on account acct_a; this job"
    )
    assert not ctx.settings.ledger_path.exists()  # a dry run creates no ledger
    ran(ctx, "acct_a", 3600, "2026-11-02T10:00:00Z")
    assert budget_line(ctx, Cost("rome", 16.0, 1.0), "acct_a") == (
        "budget: unknown (the cluster's own budget tool (accinfo, budget-overview) was not "
        "found); hpcjob's runs of profile cluster spent 16.0 SBU on account acct_a since "
        "2026-11-02; this job ≤ 16.0 SBU"
    )


def test_the_embedded_scheduler_has_no_budget(tmp_path: Path) -> None:
    from hpcjob.insight.budget import budget_line, budget_rows, over_budget

    ctx = Context(Settings(tmp_path / "home"), Profile("local", {"scheduler": "local"}))
    free = Cost(None, None, 1.0, note=NOT_BILLED)
    assert budget_line(ctx, free, None) == "budget: none — runs on this machine"
    assert over_budget(ctx, free, None) is None
    assert budget_rows(ctx, None)[0]["source"] == "none"


def test_submit_warns_when_the_estimate_exceeds_what_is_left(tmp_path: Path) -> None:
    from hpcjob.insight.budget import over_budget

    two = probe_output("accinfo", fixture("accinfo_two_accounts.txt"))
    ctx, shell = cluster_context(tmp_path, two)
    warning = over_budget(ctx, Cost("gpu_a100", 64.0, 0.5), "tcourse42")
    assert warning is not None
    assert warning.startswith(
        "This job may cost up to 64.0 SBU, more than the 50.0 SBU left on account tcourse42 "
        "(accinfo, checked "
    )
    assert "submitted all the same: accinfo lags behind" in warning
    assert over_budget(ctx, Cost("gpu_a100", 64.0, 0.5), "gpuuva012") is None  # it fits
    assert over_budget(ctx, Cost("gpu_a100", 64.0, 0.5), None) is None  # which account: unknown
    assert over_budget(ctx, Cost("gpu_course", None, 0.5, note="no rate"), "tcourse42") is None
    assert shell.commands() == ["bash"]  # one query, then the cache
    assert ctx.notes == []


class _DownShell(ReplayShell):
    def run(self, argv: Any, **kwargs: Any) -> CommandResult:
        raise HpcjobError("Cannot reach login.example: Connection refused.")


def test_a_failure_to_ask_never_fails_a_submit(tmp_path: Path) -> None:
    from hpcjob.insight.budget import budget_line, over_budget

    ctx, _ = cluster_context(tmp_path, "")
    ctx._scheduler = SlurmScheduler(_DownShell({}), "slurm:login.example")
    assert over_budget(ctx, Cost("rome", 64.0, 4.0), "a") is None
    assert ctx.notes == ["The budget was not checked: Cannot reach login.example: Connection "
                         "refused."]  # fmt: skip
    line = budget_line(ctx, Cost("rome", 64.0, 4.0), "a")
    assert line == "budget: not checked: Cannot reach login.example: Connection refused."


# -- the command ------------------------------------------------------------------------------


def slurm_here(home: Path, monkeypatch: pytest.MonkeyPatch, accinfo: str | None) -> None:
    """A host-less Slurm profile (LocalShell: this machine is its login node) whose PATH holds an
    `accinfo` printing `accinfo` (None: no budget tool at all)."""
    bin_dir = home.parent / "bin"
    bin_dir.mkdir(parents=True)
    if accinfo is not None:
        (bin_dir / "accinfo.txt").write_text(accinfo)
        tool = bin_dir / "accinfo"
        tool.write_text(f"#!/bin/sh\ncat '{bin_dir / 'accinfo.txt'}'\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        '[profiles.here]\nscheduler = "slurm"\naccount = "hpctest_acct"\n'
    )
    monkeypatch.setenv("HPCJOB_PROFILE", "here")


def test_budget_command_text_and_json(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slurm_here(isolated_home, monkeypatch, fixture("accinfo.txt"))
    shown = invoke("budget")
    assert shown.exit_code == 0, shown.stderr
    for phrase in ("hpctest_acct", "87,654", "100,000", "12,346", "2027-06-30"):
        assert phrase in shown.stdout
    assert "From accinfo on the login node, checked " in shown.stderr
    data = invoke("budget", "--json").json()
    assert [{k: v for k, v in r.items() if k != "checked_at"} for r in data] == [
        {
            "account": "hpctest_acct",
            "remaining_sbu": 87654.5,
            "initial_sbu": 100000.0,
            "used_sbu": 12345.5,
            "valid_until": "2027-06-30",
            "source": "accinfo",
            "note": None,
        }
    ]
    assert data[0]["checked_at"].endswith("Z") and data[0]["checked_at"][10] == "T"
    wrong = invoke("budget", "--account", "other")
    assert wrong.exit_code == 1
    assert "accinfo shows no account 'other'; it shows: hpctest_acct." in wrong.stderr


def test_budget_command_without_a_tool_says_it_is_the_ledgers_spend(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slurm_here(isolated_home, monkeypatch, None)
    shown = invoke("budget")
    assert shown.exit_code == 0, shown.stderr
    assert "hpctest_acct" in shown.stdout
    assert "spent by hpcjob's runs of profile here only (none has run)" in shown.stderr
    assert "budget tool (accinfo, budget-overview) was not found" in shown.stderr
    data = invoke("budget", "--json").json()
    assert [(r["account"], r["used_sbu"], r["source"]) for r in data] == [
        ("hpctest_acct", 0, "ledger")
    ]


def test_budget_command_on_the_embedded_scheduler(isolated_home: Path) -> None:
    data = invoke("budget", "--json").json()
    assert [(r["source"], r["note"]) for r in data] == [("none", "none — runs on this machine")]
