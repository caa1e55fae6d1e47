"""Several login nodes, one cluster (issue 17, item 1): runs are keyed by Slurm's ClusterName,
asked once per address and cached in the ledger; old address keys move to it; a setup-env script
started on another login node is never judged by this node's ps."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hpcjob import slurm
from hpcjob.config import Profile, Settings
from hpcjob.envscript import EnvResult
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.ledger.store import Ledger
from hpcjob.run.context import Context, cluster_key
from hpcjob.run.login import _LOOK, LOGIN_TIMEOUT_S, LoginSighting, judge_login_run
from hpcjob.run.refresh import refresh
from hpcjob.scheduler.local import LocalScheduler
from hpcjob.scheduler.slurm import SlurmScheduler
from hpcjob.shell import CommandResult
from tests.helpers import ReplayShell, new_run, recorded

# -- the parser, on the recorded `scontrol show config` -------------------------------------------


def test_cluster_name_is_read_from_the_recorded_scontrol_show_config() -> None:
    assert slurm.parse_cluster_name(recorded("scontrol_config").stdout) == "hpcjobtest"


def test_output_without_a_cluster_name_is_a_clear_error() -> None:
    with pytest.raises(HpcjobError, match="no ClusterName line"):
        slurm.parse_cluster_name("Configuration data as of 2026-12-06T19:35:22\nFoo = bar\n")


# -- the ledger: the cache and moving old keys ----------------------------------------------------


def _cluster_of(ledger: Ledger, run_id: str) -> str:
    return ledger.get_run(run_id).cluster


def _ledger_with_old_keys() -> Ledger:
    ledger = Ledger(":memory:")
    runs = {
        "r5": ("slurm", "slurm:int5", "slurm"),  # this login node, host-less profile
        "r4": ("slurm", "slurm:int4", "slurm"),  # another login node, same host-less profile
        "rl5": ("slurm", "login:slurm:int5", "login"),  # a setup-env run on the login node
        "rl4": ("slurm", "login:slurm:int4", "login"),
        "rssh": ("snellius", "slurm:snellius.surf.nl", "slurm"),  # over SSH: another address
        "rlab": ("lab", "slurm:login.lab.example", "slurm"),  # another cluster altogether
        "rloc": ("slurm", "local:laptop", "local"),  # the embedded scheduler
    }
    for run_id, (profile, key, scheduler) in runs.items():
        ledger.create_run(new_run(run_id=run_id, profile=profile, cluster=key, scheduler=scheduler))
    return ledger


def test_learning_a_name_moves_the_address_and_its_login_runs() -> None:
    ledger = _ledger_with_old_keys()
    assert ledger.known_cluster("slurm:snellius.surf.nl") is None
    ledger.learn_cluster("slurm:snellius.surf.nl", "slurm:snellius", hostless_profile=None)
    assert ledger.known_cluster("slurm:snellius.surf.nl") == "slurm:snellius"
    assert _cluster_of(ledger, "rssh") == "slurm:snellius"
    # A profile with a host moves only the runs of that address.
    for run_id, key in [("r5", "slurm:int5"), ("r4", "slurm:int4"), ("rl4", "login:slurm:int4")]:
        assert _cluster_of(ledger, run_id) == key


def test_a_hostless_profile_moves_every_login_nodes_runs_but_no_other_profiles() -> None:
    ledger = _ledger_with_old_keys()
    ledger.learn_cluster("slurm:int5", "slurm:snellius", hostless_profile="slurm")
    for run_id in ("r5", "r4"):
        assert _cluster_of(ledger, run_id) == "slurm:snellius"
    for run_id in ("rl5", "rl4"):
        assert _cluster_of(ledger, run_id) == "login:slurm:snellius"
    assert _cluster_of(ledger, "rlab") == "slurm:login.lab.example"  # another profile
    assert _cluster_of(ledger, "rssh") == "slurm:snellius.surf.nl"  # its address not learned yet
    assert _cluster_of(ledger, "rloc") == "local:laptop"  # not a Slurm key
    before = [ledger.get_run(r) for r in ("r5", "r4", "rl5", "rl4", "rlab", "rssh", "rloc")]
    ledger.learn_cluster("slurm:int5", "slurm:snellius", hostless_profile="slurm")  # again
    assert [ledger.get_run(r) for r in ("r5", "r4", "rl5", "rl4", "rlab", "rssh", "rloc")] == before


def test_a_hostless_profile_leaves_runs_known_to_be_another_clusters() -> None:
    ledger = _ledger_with_old_keys()
    ledger.create_run(new_run(run_id="rlisa", profile="slurm", cluster="slurm:lisa-login1"))
    ledger.create_run(new_run(run_id="rlisa2", profile="slurm", cluster="slurm:lisa"))
    ledger.learn_cluster("slurm:lisa-login1", "slurm:lisa", hostless_profile=None)
    ledger.learn_cluster("slurm:int5", "slurm:snellius", hostless_profile="slurm")
    assert _cluster_of(ledger, "rlisa") == "slurm:lisa"  # its address said so
    assert _cluster_of(ledger, "rlisa2") == "slurm:lisa"  # a name another address gave
    assert _cluster_of(ledger, "r4") == "slurm:snellius"


def test_the_cache_migration_applies_from_the_previous_schema(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    old = Ledger.__new__(Ledger)
    old.path = str(path)
    old.db = sqlite3.connect(path, isolation_level=None)
    old.db.row_factory = sqlite3.Row
    old.migrate(upto=3)
    old.db.close()
    ledger = Ledger(path)
    assert ledger.known_cluster("slurm:int5") is None
    ledger.learn_cluster("slurm:int5", "slurm:snellius", hostless_profile="slurm")
    assert Ledger(path).known_cluster("slurm:int5") == "slurm:snellius"


# -- the key of an invocation ---------------------------------------------------------------------


class CountingShell(ReplayShell):
    def count(self, program: str) -> int:
        return sum(1 for argv in self.calls if argv[0] == program)


def _slurm_context(home: Path, shell: ReplayShell, address: str, **profile: Any) -> Context:
    ctx = Context(Settings(home), Profile("slurm", {"scheduler": "slurm", **profile}, {}))
    ctx._scheduler = SlurmScheduler(shell, address)
    return ctx


def test_status_on_a_second_login_node_polls_the_first_ones_runs(tmp_path: Path) -> None:
    """A run submitted on int5 (an older hpcjob keyed it `slurm:int5`) is polled from int6."""
    ledger = Ledger(Settings(tmp_path).ledger_path)
    run = ledger.create_run(new_run(run_id="r1", profile="slurm", cluster="slurm:int5"))
    ledger.complete_submission(run.run_id, "101", "/runs/r1/slurm-101.out")
    ledger.close()
    answers = {"squeue": [recorded("squeue_final")], "sacct": [recorded("sacct_final")]}
    shell = CountingShell(answers)
    ctx = _slurm_context(tmp_path, shell, "slurm:int6")
    [polled] = refresh(ctx)
    assert polled.state == JobState.FAILED and polled.exit_code == 3
    assert polled.cluster == "slurm:hpcjobtest"
    assert shell.count("scontrol") == 1
    ctx.ledger.close()
    # The next invocation, on any login node, finds the name in the ledger: no extra command.
    again = CountingShell({"squeue": [recorded("squeue_final")]})
    ctx = _slurm_context(tmp_path, again, "slurm:int6")
    assert cluster_key(ctx) == "slurm:hpcjobtest"
    refresh(ctx)
    assert again.count("scontrol") == 0


def test_status_with_nothing_to_poll_asks_nothing(tmp_path: Path) -> None:
    shell = CountingShell({})
    ctx = _slurm_context(tmp_path, shell, "slurm:int6")
    assert refresh(ctx) == []
    assert shell.calls == []


def test_when_scontrol_cannot_answer_the_address_stands_in_with_a_note(tmp_path: Path) -> None:
    argv = tuple(slurm.scontrol_config_argv())
    down = CommandResult(
        argv, 1, "", "slurm_load_ctl_conf error: Unable to contact slurm controller"
    )
    shell = CountingShell({"scontrol": [down]})
    ctx = _slurm_context(tmp_path, shell, "slurm:snellius.surf.nl", host="snellius.surf.nl")
    assert cluster_key(ctx) == "slurm:snellius.surf.nl"
    assert cluster_key(ctx) == "slurm:snellius.surf.nl"
    assert shell.count("scontrol") == 1
    [note] = ctx.notes
    assert "Could not learn the cluster's name" in note and "slurm:snellius.surf.nl" in note
    # Not cached: the next invocation asks again, learns it, and moves the runs.
    ctx.ledger.create_run(new_run(run_id="r1", profile="slurm", cluster="slurm:snellius.surf.nl"))
    ctx.ledger.close()
    ctx = _slurm_context(tmp_path, ReplayShell({}), "slurm:snellius.surf.nl", host="x")
    assert cluster_key(ctx) == "slurm:hpcjobtest"
    assert ctx.ledger.get_run("r1").cluster == "slurm:hpcjobtest"


def test_the_embedded_scheduler_keeps_its_hostname_key(tmp_path: Path) -> None:
    ctx = Context(Settings(tmp_path), Profile("local", {"scheduler": "local"}, {}))
    ctx._scheduler = LocalScheduler(tmp_path / "local")
    assert cluster_key(ctx) == f"local:{socket.gethostname()}"
    assert ctx.notes == []


# -- a setup-env script on another login node -----------------------------------------------------


def seen(**kw: Any) -> LoginSighting:
    base: dict[str, Any] = {
        "driver_pid": 4242,
        "driver_gone": True,
        "script_pid": 777,
        "script_running": False,  # ps on int6 cannot see int5's processes
        "result": None,
        "age_s": 60.0,
        "script_node": "int5",
        "this_node": "int6",
    }
    return LoginSighting(**{**base, **kw})


LOG = "/home/u/runs/r1/setup-env.log"


def test_a_script_on_another_login_node_is_not_judged_by_ps_here() -> None:
    verdict = judge_login_run("r1", LOG, seen())
    assert verdict.state is None and not verdict.stop_script
    assert verdict.note is not None
    for phrase in ("login node int5", "reached int6", "ps -o args= -p 777", LOG):
        assert phrase in verdict.note


def test_a_script_on_another_login_node_is_settled_from_its_log() -> None:
    done = judge_login_run("r1", LOG, seen(result=EnvResult(ok=True)))
    assert done.state == JobState.COMPLETED and "int5" in (done.reason or "")
    failed = judge_login_run("r1", LOG, seen(result=EnvResult(ok=False, stage="install")))
    assert failed.state == JobState.FAILED and not failed.stop_script


def test_a_script_on_another_login_node_without_a_result_fails_after_the_limit() -> None:
    young = judge_login_run("r1", LOG, seen(age_s=LOGIN_TIMEOUT_S + 60))
    assert young.state is None  # the login node's limit, plus a grace for its log
    old = judge_login_run("r1", LOG, seen(age_s=LOGIN_TIMEOUT_S + 3600))
    assert old.state == JobState.FAILED and not old.stop_script
    assert "wrote no result within the 15-minute login-node limit" in (old.reason or "")


def _look(run_dir: Path) -> str:
    found = subprocess.run(
        ["bash", "-c", _LOOK, "hpcjob-look", str(run_dir)], capture_output=True, text=True
    )
    return found.stdout.strip()


def test_the_look_names_the_other_node_and_reads_old_pid_files(tmp_path: Path) -> None:
    here = socket.gethostname()
    (tmp_path / "setup-env.pid").write_text("777 int5-elsewhere\n")
    assert _look(tmp_path) == f"elsewhere 777 int5-elsewhere {here}"
    script = tmp_path / "setup-env.sh"
    script.write_text("sleep 30\n")
    sleeper = subprocess.Popen(["bash", str(script)])
    try:
        (tmp_path / "setup-env.pid").write_text(f"{sleeper.pid} {here}\n")
        assert _look(tmp_path) == f"running {sleeper.pid}"
        (tmp_path / "setup-env.pid").write_text(f"{sleeper.pid}\n")  # an older hpcjob's file
        assert _look(tmp_path) == f"running {sleeper.pid}"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _look(tmp_path) == f"gone {sleeper.pid}"
