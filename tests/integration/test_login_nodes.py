"""Several login nodes, one cluster (issue 17, item 1), on the test cluster.

A second login "node" is this machine with another hostname: hpcjob run in a UTS namespace of
its own (`unshare --uts`, the profile without a host: Slurm on the machine hpcjob runs on), or
the test cluster's second sshd (start.sh's login2: port 2223, its own hostname and process
table). Files and Slurm are shared, as the home and Slurm of Snellius's int4–int6 are.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helpers import Result, invoke, ledger_run, status_of
from tests.integration.support import (
    GatedPackage,
    UserSession,
    Valve,
    known_hosts_for_port,
    setup_env_profile,
    start_setup_env,
    wait_until,
    write_config,
)


def on_node(user: UserSession, hostname: str, *args: str) -> Result:
    """hpcjob as the test user on a "login node" called `hostname` (same files, same Slurm)."""
    argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]
    proc = subprocess.run(
        [*argv, *user.argv(*args)], cwd=user.workdir, capture_output=True, text=True, timeout=300
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_a_run_submitted_on_one_login_node_is_polled_from_another(user: UserSession) -> None:
    user.template("gpu-check", "echo ran on the cluster")
    submitted = on_node(user, "int5-test", "submit", "gpu-check", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.json()
    stored = ledger_run(user.home, run["run_id"])
    assert stored is not None
    assert stored["cluster"] == f"slurm:{user.cluster['HPCJOB_TEST_CLUSTER_NAME']}"

    def state_on_int6() -> str:
        status = on_node(user, "int6-test", "status", "--json")
        assert status.exit_code == 0, status.stderr
        (row,) = [r for r in status.json() if r["run_id"] == run["run_id"]]
        return str(row["state"])

    # Keyed by the login node's hostname, int6 never polled int5's run: it stayed PENDING.
    assert wait_until(lambda: state_on_int6() == "COMPLETED", "int6 polling int5's run")


def second_login_node(cluster: dict[str, str]) -> tuple[int, str, str]:
    """The test cluster's second login node: port, hostname, known_hosts file."""
    keys = ("HPCJOB_TEST_SSH_PORT2", "HPCJOB_TEST_SSH_HOSTNAME2", "HPCJOB_TEST_KNOWN_HOSTS2")
    missing = [key for key in keys if key not in cluster]
    if missing:
        pytest.fail(
            f"The test cluster has no second login node ({', '.join(missing)} missing from "
            "cluster.env): run `sudo tests/cluster/start.sh` from this checkout."
        )
    return int(cluster[keys[0]]), cluster[keys[1]], cluster[keys[2]]


@pytest.mark.ssh
def test_setup_env_on_one_login_node_is_not_judged_by_ps_on_another(
    remote_venv: tuple[Path, Path], cluster: dict[str, str], tmp_path: Path
) -> None:
    """The driver is SIGKILLed while its script runs on node A (this machine's sshd, reached
    through a connection that outlives the driver, as from a laptop that went to sleep); status
    through node B, whose ps cannot see A's processes, leaves the run RUNNING and says why, then
    settles it from the log once the script has ended."""
    port2, hostname2, known_hosts2 = second_login_node(cluster)
    venv, requirements = remote_venv
    venv_setting = str(venv)
    home = tmp_path / "home"  # remote_venv's HPCJOB_HOME
    folder = Path(cluster["HPCJOB_TEST_SCRATCH"]) / f"gated-{uuid.uuid4().hex[:8]}"
    gated = GatedPackage.create(folder, cluster["HPCJOB_TEST_USER"])
    with Valve(int(cluster["HPCJOB_TEST_SSH_PORT"]), outlive_client=True) as valve:
        known = known_hosts_for_port(cluster, valve.port, tmp_path / "known_hosts_a")
        node_a = setup_env_profile(cluster, venv_setting, port=valve.port, known_hosts=str(known))
        write_config(home, node_a)
        try:
            running = start_setup_env(requirements, gated)
            running.proc.kill()  # SIGKILL: nothing is recorded by hpcjob itself
            running.finish(timeout=60)
            killed = f"hpcjob was killed while setup-env ran (pid {running.proc.pid})"
            node_b = setup_env_profile(cluster, venv_setting, port=port2, known_hosts=known_hosts2)
            write_config(home, node_b)  # from now on the profile lands on node B

            run_id = invoke("runs", "--json").json()[0]["run_id"]
            run, notes = status_of(run_id)
            # ps on B sees no such process; before, the run was FAILED for it.
            assert run["state"] == "RUNNING", (run, notes)
            here = socket.gethostname()
            assert killed in notes, notes
            assert f"started on login node {here}" in notes and f"reached {hostname2}" in notes
            gated.release()
            run, notes = wait_until(
                lambda: (s := status_of(run_id))[0]["state"] != "RUNNING" and s, "the run settled"
            )
            assert run["state"] == "COMPLETED", (run, notes)
            assert f"finished on {here}" in (run["reason"] or ""), run
            assert (venv / ".hpcjob-env.json").exists()
        finally:
            gated.release()
            shutil.rmtree(folder, ignore_errors=True)
