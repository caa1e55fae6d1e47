"""Course accounts and partitions (issue 17: 2): which partitions each of the user's accounts may
use, read from one recorded query of the test cluster (tests/fixtures/slurm/access_*.json: the
test user is in hpctest_acct, its default, and hpctest_course; gpu_course is for hpctest_course
only, thin_course for other_course only), and what preflight does with it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from hpcjob import slurm
from hpcjob.config import Profile, Settings
from hpcjob.errors import HpcjobError
from hpcjob.insight.rows import partition_rows
from hpcjob.run.context import Context, cached_access
from hpcjob.run.prepare import account_findings, prepare
from hpcjob.scheduler.local import LocalScheduler
from hpcjob.scheduler.slurm import SlurmScheduler
from hpcjob.slurm import AccountAccess, Association, PartitionAccess, usable_partitions
from hpcjob.spec import SpecRequest
from tests.helpers import ReplayShell, recorded

EVERYWHERE = ("rome", "gpu_a100", "gpu_h100", "staging")


def access_of(name: str = "access_course") -> AccountAccess:
    return slurm.parse_access(recorded(name).stdout)


# -- the parsers, on recorded output ------------------------------------------------------------


def test_the_recorded_query_gives_each_account_its_partitions() -> None:
    access = access_of()
    assert access.unknown is None
    assert access.user == "hpctest"
    assert access.default_account == "hpctest_acct"
    assert access.partitions == {
        "hpctest_course": (*EVERYWHERE, "gpu_course"),
        "hpctest_acct": EVERYWHERE,
    }
    assert access.known_partitions == (*EVERYWHERE, "gpu_course", "thin_course")
    assert access.accounts_for("gpu_course") == ["hpctest_course"]
    assert access.accounts_for("thin_course") == []


def test_each_part_of_the_query_parses_on_its_own() -> None:
    parts = slurm._access_parts(recorded("access_course").stdout)
    assert slurm.parse_user_associations(parts["assoc"][1]) == (
        "hpctest_acct",
        [
            Association("hpcjobtest", "hpctest_course", None, ("normal",)),
            Association("hpcjobtest", "hpctest_acct", None, ("normal",)),
        ],
    )
    access = {p.name: p for p in slurm.parse_partition_access(parts["partitions"][1])}
    assert access["rome"] == PartitionAccess("rome")  # ALL everywhere
    assert access["gpu_course"].allow_accounts == ("hpctest_course",)
    assert access["thin_course"].allow_accounts == ("other_course",)


@pytest.mark.parametrize(
    ("fixture", "phrase"),
    [
        ("access_dbd_unreachable", "sacctmgr did not answer: sacctmgr: error: "),
        ("access_accounting_off", "not running a supported accounting_storage plugin"),
    ],
)
def test_sacctmgr_that_cannot_answer_makes_the_access_unknown(fixture: str, phrase: str) -> None:
    access = access_of(fixture)
    assert access.unknown is not None and phrase in access.unknown
    assert access.partitions == {}


def test_a_login_banner_before_the_query_is_skipped() -> None:
    text = "Welcome to Snellius!\n@@hpcjob-access is not a marker here\n"
    assert slurm.parse_access(text + recorded("access_course").stdout) == access_of()


def test_a_cut_off_answer_is_unknown_not_a_guess() -> None:
    text = recorded("access_course").stdout
    cut = text[: text.index("@@hpcjob-access partitions")]
    access = slurm.parse_access(cut)
    assert access.unknown is not None and "no partitions part" in access.unknown
    assert slurm.parse_access("").unknown is not None


def test_associations_of_another_cluster_are_left_out() -> None:
    text = recorded("access_course").stdout.replace(
        "|hpcjobtest|hpctest_course|", "|othercluster|hpctest_course|"
    )
    assert slurm.parse_access(text).accounts == ["hpctest_acct"]


def test_no_association_on_this_cluster_is_unknown() -> None:
    text = recorded("access_course").stdout.replace("|hpcjobtest|", "|othercluster|")
    access = slurm.parse_access(text)
    assert access.unknown is not None and "no association for user hpctest" in access.unknown


def test_a_part_that_timed_out_says_so() -> None:
    text = recorded("access_course").stdout
    head, tail = text.split("@@hpcjob-access assoc 0\n", 1)
    cut = head + "@@hpcjob-access assoc 124\n" + tail[tail.index("@@hpcjob-access partitions") :]
    assert slurm.parse_access(cut).unknown == "sacctmgr did not answer within 20 s"


class BrokenShell(ReplayShell):
    def run(self, argv: Any, **kw: Any) -> Any:
        raise HpcjobError(f"`{' '.join(argv)}` did not answer within 60 s.")


def test_a_query_that_does_not_come_back_is_unknown_not_an_error() -> None:
    access = SlurmScheduler(BrokenShell({}), "c").account_access()
    assert access.unknown == "the accounts query failed: no answer within 60 s"


# -- the access function ---------------------------------------------------------------------


def test_an_association_for_one_partition_restricts_the_account_to_it() -> None:
    parts = [PartitionAccess("rome"), PartitionAccess("gpu_course")]
    assocs = [
        Association("c", "course", "gpu_course"),
        Association("c", "research", None),
    ]
    assert usable_partitions(assocs, parts) == {
        "course": ("gpu_course",),
        "research": ("rome", "gpu_course"),
    }


def test_deny_accounts_allow_groups_and_qos_lists_are_held_against_each_account() -> None:
    parts = [
        PartitionAccess("denied", deny_accounts=("a",)),
        PartitionAccess("staff", allow_groups=("staff",)),
        PartitionAccess("highqos", allow_qos=("high",)),
        PartitionAccess("nolow", deny_qos=("low",)),
    ]
    assocs = [Association("c", "a", None, ("low",)), Association("c", "b", None, ("high",))]
    assert usable_partitions(assocs, parts, groups=["students"]) == {
        "a": (),
        "b": ("denied", "highqos", "nolow"),
    }
    # Groups not known: AllowGroups is not held against anyone.
    assert usable_partitions(assocs, parts, groups=None)["a"] == ("staff",)
    assert "staff" in usable_partitions(assocs, parts, groups=["staff"])["b"]


def test_the_access_survives_its_cache_form_and_refuses_a_damaged_one() -> None:
    access = access_of()
    assert AccountAccess.from_dict(json.loads(json.dumps(access.to_dict()))) == access
    for bad in ({}, {"partitions": [], "known_partitions": []}, {"partitions": {}, "user": 1}):
        with pytest.raises(ValueError):
            AccountAccess.from_dict(bad)


def test_the_scheduler_asks_in_one_command_and_the_embedded_one_has_no_accounts(
    tmp_path: Path,
) -> None:
    shell = ReplayShell({"bash": [recorded("access_course")]})
    assert SlurmScheduler(shell, "c").account_access() == access_of()
    assert shell.calls == [slurm.access_argv()]
    assert LocalScheduler(tmp_path).account_access() is None


# -- preflight -------------------------------------------------------------------------------


def course_context(
    tmp_path: Path, access: str = "access_course", **profile: Any
) -> tuple[Context, ReplayShell]:
    """A Slurm profile over a shell replaying the test cluster's recorded sinfo (with the course
    partitions) and accounts query."""
    shell = ReplayShell({"sinfo": [recorded("access_sinfo")], "bash": [recorded(access)]})
    values = {"scheduler": "slurm", "host": "login.example", "remote_root": "~/runs", **profile}
    ctx = Context(Settings(tmp_path / "home"), Profile("course", values))
    ctx._scheduler = SlurmScheduler(shell, "slurm:login.example")
    return ctx, shell


def refused(ctx: Context, **request: Any) -> HpcjobError:
    with pytest.raises(HpcjobError) as caught:
        prepare(ctx, SpecRequest(workload="gpu-check", **request), check_files=False)
    assert caught.value.exit_code == 2
    return caught.value


def test_a_partition_the_default_account_may_not_use_is_refused_with_its_partitions(
    tmp_path: Path,
) -> None:
    ctx, _ = course_context(tmp_path)
    err = refused(ctx, partition="thin_course")
    assert (
        "account hpctest_acct (your default) may not use partition thin_course; it may use: "
        "rome, gpu_a100, gpu_h100, staging" in err.message
    )
    assert err.hint is not None
    assert "None of your accounts (hpctest_course, hpctest_acct) may use" in err.hint


def test_another_account_that_may_use_the_partition_is_named_as_the_fix(tmp_path: Path) -> None:
    ctx, _ = course_context(tmp_path)
    err = refused(ctx, partition="gpu_course", account="hpctest_acct")
    assert "account hpctest_acct may not use partition gpu_course" in err.message
    assert err.hint is not None and "Submit with --account hpctest_course" in err.hint


def test_the_one_account_that_may_use_the_partition_is_picked_and_said(tmp_path: Path) -> None:
    ctx, _ = course_context(tmp_path)
    prepared = prepare(
        ctx, SpecRequest(workload="gpu-check", partition="gpu_course"), check_files=False
    )
    assert prepared.spec.resources.account == "hpctest_course"
    assert "#SBATCH --account=hpctest_course" in prepared.script
    assert prepared.new_run.spec["resources"]["account"] == "hpctest_course"
    assert any(
        "Partition gpu_course is for account hpctest_course" in note
        and "your default hpctest_acct may not use it" in note
        for note in ctx.notes
    ), ctx.notes


def test_a_partition_the_default_account_may_use_gets_no_account(tmp_path: Path) -> None:
    ctx, _ = course_context(tmp_path)
    for partition in ("rome", None):  # None: the cluster's default (rome)
        prepared = prepare(
            ctx, SpecRequest(workload="gpu-check", partition=partition), check_files=False
        )
        assert prepared.spec.resources.account is None
        assert "--account" not in prepared.script
    assert not any("account" in note for note in ctx.notes), ctx.notes


def test_an_account_the_user_does_not_have_is_refused_with_their_accounts(
    tmp_path: Path,
) -> None:
    ctx, _ = course_context(tmp_path)
    err = refused(ctx, partition="rome", account="other_course")
    assert (
        "you have no account other_course on this cluster; yours: hpctest_course, hpctest_acct"
        in err.message
    )
    assert err.hint is not None and "leave it out for your default, hpctest_acct" in err.hint


def test_the_profiles_account_is_named_as_the_source(tmp_path: Path) -> None:
    ctx, _ = course_context(tmp_path, account="nosuch")
    err = refused(ctx, partition="rome")
    assert "you have no account nosuch (the account of profile course)" in err.message


def test_account_problems_come_with_the_requests_own_problems(tmp_path: Path) -> None:
    ctx, _ = course_context(tmp_path)
    err = refused(ctx, partition="thin_course", time="1h")
    assert "--time: '1h' is not a Slurm time" in err.message
    assert "may not use partition thin_course" in err.message


def test_an_unknown_partition_is_left_to_the_name_check(tmp_path: Path) -> None:
    ctx, _ = course_context(tmp_path)
    err = refused(ctx, partition="gpu_cours")
    assert "Did you mean 'gpu_course'?" in err.message
    assert "may not use" not in err.message


def test_without_sacctmgr_preflight_goes_on_and_says_so(tmp_path: Path) -> None:
    ctx, _ = course_context(tmp_path, access="access_dbd_unreachable")
    prepared = prepare(
        ctx, SpecRequest(workload="gpu-check", partition="thin_course"), check_files=False
    )
    assert prepared.spec.resources.partition == "thin_course"  # Slurm will say
    assert any(
        "Your accounts' partitions were not checked: sacctmgr did not answer" in note
        for note in ctx.notes
    ), ctx.notes


def test_the_accounts_are_asked_once_an_hour_and_read_from_the_cache_offline(
    tmp_path: Path,
) -> None:
    ctx, shell = course_context(tmp_path)
    prepare(ctx, SpecRequest(workload="gpu-check", partition="gpu_course"), check_files=False)
    prepare(ctx, SpecRequest(workload="gpu-check", partition="rome"), check_files=False)
    assert shell.commands().count("bash") == 1
    cache = tmp_path / "home" / "cache" / "accounts-course.json"
    old = time.time() - 2 * 3600
    os.utime(cache, (old, old))
    ctx.offline = "no route to host"
    assert cached_access(ctx) == access_of()  # however old
    assert shell.commands().count("bash") == 1
    ctx.offline = None
    assert cached_access(ctx) == access_of()
    assert shell.commands().count("bash") == 2  # an hour is up: asked again


def test_an_unknown_answer_is_asked_again_after_a_few_minutes(tmp_path: Path) -> None:
    ctx, shell = course_context(tmp_path, access="access_accounting_off")
    assert cached_access(ctx) is not None
    cache = tmp_path / "home" / "cache" / "accounts-course.json"
    old = time.time() - 600
    os.utime(cache, (old, old))
    cached_access(ctx)
    assert shell.commands().count("bash") == 2


def test_the_embedded_scheduler_takes_any_account(tmp_path: Path) -> None:
    ctx = Context(Settings(tmp_path / "home"), Profile("local", {"scheduler": "local"}))
    prepared = prepare(
        ctx,
        SpecRequest(workload="gpu-check", partition="thin_course", account="anything"),
        check_files=False,
    )
    assert prepared.spec.resources.account == "anything"
    assert cached_access(ctx) is None


def test_several_accounts_and_no_default_known_ask_for_one() -> None:
    access = AccountAccess("u", None, {"a": ("p",), "b": ("p",)}, known_partitions=("p",))
    [(problem, fix)] = account_findings(access, None, "p")
    assert problem == "partition p needs an account: none was given"
    assert (
        fix == "Submit with --account a or --account b, or choose a partition the account may use."
    )


# -- `hpcjob partitions` -----------------------------------------------------------------------


def test_partition_rows_name_the_accounts_that_may_use_each() -> None:
    found = slurm.parse_sinfo(recorded("access_sinfo").stdout)
    rows = {row["partition"]: row for row in partition_rows(found, access_of())}
    assert rows["gpu_course"]["accounts"] == ["hpctest_course"]
    assert rows["thin_course"]["your_accounts"] == "-"
    assert rows["rome"]["your_accounts"] == "hpctest_course, hpctest_acct"
    unknown = partition_rows(found, access_of("access_accounting_off"))
    assert {row["accounts"] for row in unknown} == {None}
    assert {row["your_accounts"] for row in unknown} == {"?"}
