#!/usr/bin/env python3
"""Record real Slurm outputs into tests/fixtures/slurm/*.json (never type them by hand).

Run as root on a machine where tests/cluster/start.sh has brought the test cluster up:

    python3 tests/cluster/record_fixtures.py [--only NAME_PREFIX] [--skip-outages]

Commands run as the test user (as users are not root) through run-as-test-user.sh. Each fixture
holds the argv, the Slurm version, the user, a note, the exit status, stdout and stderr, and for
job-state fixtures a `jobs` map from what the recorder made the job do (`failed_exit3`) to its
job id. The outage fixtures briefly stop slurmdbd and slurmctld (only the ones start.sh started)
and start.sh brings them back. Takes about three minutes (a job has to reach its time limit).
Stdlib only, so it runs with the system python3.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "tests" / "fixtures" / "slurm"
STATE = Path(os.environ.get("HPCJOB_TEST_CLUSTER_DIR", "/var/tmp/hpcjob-test-cluster"))
RUN_AS = HERE / "run-as-test-user.sh"

# The argv hpcjob runs, so that the fixtures show exactly what its parsers will read.
sys.path.insert(0, str(REPO))
from hpcjob.slurm import (  # noqa: E402
    SQUEUE_FORMAT,
    access_argv,
    sacct_argv,
    sacct_steps_argv,
    scontrol_config_argv,
    sinfo_argv,
    squeue_argv,
)

ENV: dict[str, str] = {}
VERSION = ""
ONLY: str | None = None
WORK = Path()


def load_env() -> None:
    path = STATE / "cluster.env"
    if not path.exists():
        sys.exit(f"{path} is missing: run tests/cluster/start.sh first")
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            ENV[key] = value


def run(
    argv: list[str],
    *,
    user: str = "hpctest",
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run a Slurm command as USER (or root), with ENV added; return (returncode, stdout,
    stderr)."""
    full = argv if user == "root" else [str(RUN_AS), *argv]
    extra = {**(env or {}), "HPCJOB_TEST_PASS_ENV": " ".join(env or {})} if env else {}
    proc = subprocess.run(
        full,
        cwd=WORK,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **extra},
    )
    return proc.returncode, proc.stdout, proc.stderr


def record(
    name: str,
    argv: list[str],
    note: str,
    *,
    user: str = "hpctest",
    jobs: dict[str, str] | None = None,
    result: tuple[int, str, str] | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run ARGV (unless RESULT is given) and write fixture NAME.json."""
    if result is None:
        result = run(argv, user=user, timeout=timeout, env=env)
    rc, out, err = result
    if ONLY and not name.startswith(ONLY):
        return rc, out, err
    fixture: dict[str, object] = {
        "command": argv,
        "slurm_version": VERSION,
        "user": user,
        "note": note,
        **({"env": env} if env else {}),
        "returncode": rc,
        "stdout": out,
        "stderr": err,
    }
    if jobs:
        fixture["jobs"] = jobs
    (OUT / f"{name}.json").write_text(json.dumps(fixture, indent=2) + "\n")
    print(f"  {name}: rc={rc} {len(out.splitlines())} lines", file=sys.stderr)
    return rc, out, err


def sbatch(*args: str, user: str = "hpctest") -> str:
    rc, out, err = run(["sbatch", "--parsable", *args], user=user)
    if rc != 0:
        sys.exit(f"sbatch {' '.join(args)} failed: {err}")
    return out.strip().split(";")[0]


def script(name: str, body: str, **sbatch_opts: str) -> str:
    """Write a job script with an #SBATCH header into the work dir; return its path."""
    header = "".join(f"#SBATCH --{k.replace('_', '-')}={v}\n" for k, v in sbatch_opts.items())
    header += f"#SBATCH --output={WORK}/%x-%j.out\n"
    path = WORK / f"{name}.sh"
    path.write_text(f"#!/bin/bash\n#SBATCH --job-name={name}\n{header}\n{body}\n")
    shutil.chown(path, ENV["HPCJOB_TEST_USER"], ENV["HPCJOB_TEST_USER"])
    return str(path)


def state_of(job_id: str) -> str:
    _, out, _ = run(["sacct", "-n", "-X", "-P", "-o", "State,JobName", "-j", job_id])
    line = out.strip().splitlines()[0] if out.strip() else ""
    return line


def wait_final(ids: list[str], timeout: float) -> None:
    """Wait until each id (an array: all its tasks) has a final, full record in sacct."""
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        _, out, _ = run(["sacct", "-n", "-P", "-o", "JobID,State,JobName", "-j", ",".join(ids)])
        rows = [line.split("|") for line in out.splitlines() if line.count("|") >= 2]
        for job in list(pending):
            mine = [r for r in rows if r[0] == job or r[0].startswith(job + "_")]
            mine = [r for r in mine if "." not in r[0]]
            if mine and all(
                r[2] != "allocation" and not _ACTIVE.match(r[1]) and "[" not in r[0] for r in mine
            ):
                pending.discard(job)
        if pending:
            time.sleep(1)
    if pending:
        print(f"  warning: still not final after {timeout}s: {sorted(pending)}", file=sys.stderr)


_ACTIVE = re.compile(r"(PENDING|RUNNING|REQUEUED|COMPLETING|SUSPENDED|CONFIGURING|RESIZING)")


def until(predicate, timeout: float, step: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


# --------------------------------------------------------------------------- scenarios


def record_sbatch() -> None:
    print("sbatch", file=sys.stderr)
    ok = script("fx-ok", "echo hello from $SLURM_JOB_ID", partition="rome", time="1")
    argv = ["sbatch", "--parsable", ok]
    record("sbatch_plain", argv, "plain submission: the job id on stdout")
    argv = ["sbatch", "--parsable", "--comment", "hpcjob-0123456789abcdef", ok]
    record("sbatch_comment", argv, "submission with the run token in --comment")
    arr = script("fx-arr", "sleep 3", partition="rome", time="1")
    argv = ["sbatch", "--parsable", "--array=0-3%2", arr]
    record("sbatch_array", argv, "an array prints only its base id")
    rejections = [
        ("sbatch_invalid_partition", ["--partition=nosuchpart"], "a partition that does not exist"),
        (
            "sbatch_time_above_max",
            ["--partition=staging", "--time=2-00:00:00"],
            "--time above staging's MaxTime (1-00:00:00), EnforcePartLimits=ALL",
        ),
        (
            "sbatch_gpu_impossible",
            ["--partition=gpu_a100", "--gpus=8"],
            "more GPUs than a gpu_a100 node has (2); the job id is used up and sacct shows FAILED",
        ),
        (
            "sbatch_gpu_on_cpu_partition",
            ["--partition=rome", "--gpus=1"],
            "a GPU on rome, whose node has none",
        ),
        (
            "sbatch_invalid_account",
            ["--account=nosuchacct"],
            "an account the user has no association with",
        ),
        ("sbatch_invalid_time", ["--time=1:2:3:4"], "a --time that is not a Slurm time"),
        ("sbatch_missing_script", [], "the script path does not exist"),
    ]
    for name, flags, note in rejections:
        target = str(WORK / "no-such-script.sh") if name == "sbatch_missing_script" else ok
        record(name, ["sbatch", "--parsable", *flags, target], note)


def record_lag() -> None:
    """Sample sacct from submit to end of a short job: missing, then interim, then full records."""
    print("sacct lag window", file=sys.stderr)
    job = sbatch(script("fx-lag", "sleep 2", partition="gpu_a100", time="1"))
    argv = sacct_argv([job])
    seen: set[str] = set()
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        rc, out, err = run(argv)
        rows = [line.split("|") for line in out.splitlines()[1:] if line]
        fields = next((r for r in rows if r[0] == job), [])
        if not fields:
            name, note = "sacct_lag_missing", "right after sbatch: sacct has no record yet"
        elif fields[2] == "allocation" and fields[4] == "PENDING":
            name = "sacct_lag_allocation_pending"
            note = "interim record 'allocation' still PENDING while its batch step runs or ended"
        elif fields[2] == "allocation":
            name = "sacct_lag_allocation"
            note = "just after the job ended: an interim record named 'allocation', no partition"
        elif fields[4] == "COMPLETED":
            name, note = "sacct_lag_complete", "the full record once accounting caught up"
        else:
            name, note = "sacct_lag_running", "the full record while the job runs"
        if name not in seen:
            seen.add(name)
            record(name, argv, note, jobs={"job": job}, result=(rc, out, err))
        if name == "sacct_lag_complete":
            break
        time.sleep(0.1)
    if not seen & {"sacct_lag_allocation", "sacct_lag_allocation_pending"}:
        print("  note: no interim 'allocation' record seen this time", file=sys.stderr)


def record_states() -> dict[str, str]:
    print("job states (about two minutes: one job runs into its time limit)", file=sys.stderr)
    jobs: dict[str, str] = {}
    # An array first, alone on gpu_h100's node: two tasks run, the rest wait as N_[2-5%2].
    jobs["array"] = sbatch(
        "--array=0-5%2", script("fx-array", "sleep 8", partition="gpu_h100", time="1")
    )
    time.sleep(1.5)
    record(
        "squeue_array",
        squeue_argv([jobs["array"]]),
        "an array --array=0-5%2: two tasks run, the rest pend as one row",
        jobs=dict(jobs),
    )
    # A time-limit job first so it starts at once on tcn1 (2 CPUs); the others share the rest.
    jobs["timeout"] = sbatch(script("fx-timeout", "sleep 600", partition="rome", time="1"))
    jobs["completed"] = sbatch(
        "--comment",
        "hpcjob-feedc0ffee",
        script(
            "fx-completed",
            "python3 -c 'x = bytearray(60 * 1024 * 1024); import time; t = time.time()\n"
            "while time.time() - t < 4: sum(range(10000))'\necho done",
            partition="rome",
            time="2",
        ),
    )
    jobs["failed_exit3"] = sbatch(script("fx-exit3", "echo failing; exit 3", partition="rome"))
    jobs["failed_signal"] = sbatch(script("fx-signal", "kill -9 $$", partition="rome"))
    jobs["gpu"] = sbatch(
        script(
            "fx-gpu",
            "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; sleep 5",
            partition="gpu_a100",
            gpus="1",
            time="2",
        )
    )
    jobs["cancelled"] = sbatch(script("fx-cancel", "sleep 600", partition="gpu_a100", time="5"))
    jobs["oom"] = sbatch(
        script(
            "fx-oom",
            "python3 -c 'import time; b = [bytearray(32 * 1024 * 1024) for _ in range(16)]; "
            "time.sleep(20)'",
            partition="gpu_a100",
            mem="100M",
            time="2",
        )
    )
    jobs["pending_begin"] = sbatch("--begin=now+1hour", script("fx-later", "true", time="1"))
    jobs["pending_resources"] = sbatch(
        script("fx-big", "sleep 1", partition="rome", cpus_per_task="2", time="1")
    )
    jobs["pending_dependency"] = sbatch(
        f"--dependency=afterok:{jobs['failed_exit3']}", script("fx-dep", "true", time="1")
    )
    ids = list(jobs.values())

    # While things run and wait: squeue and sacct of live jobs, sinfo of a busy cluster.
    until(
        lambda: "RUNNING" in state_of(jobs["cancelled"]) and "RUNNING" in state_of(jobs["timeout"]),
        30,
    )
    time.sleep(2)
    record(
        "squeue_live",
        squeue_argv(ids),
        "pending (BeginTime, Resources, Dependency, an array's pending rest N_[2-3%2]), "
        "running, array tasks",
        jobs=jobs,
    )
    record(
        "sacct_live", sacct_argv(ids), "the same jobs in sacct while they run and wait", jobs=jobs
    )
    record("sinfo_busy", sinfo_argv(), "partitions while jobs run")
    record("squeue_all", ["squeue", f"--format={SQUEUE_FORMAT}"], "all of the user's jobs")
    record("scancel_own", ["scancel", jobs["cancelled"]], "cancel one's own running job")
    record("scancel_begin", ["scancel", jobs["pending_begin"]], "cancel one's own pending job")

    wait_final([jobs["completed"], jobs["array"]], 120)
    record(
        "squeue_just_finished",
        squeue_argv([jobs["completed"], jobs["array"]]),
        "squeue shortly after jobs ended (squeue forgets them after MinJobAge)",
        jobs=jobs,
    )
    record(
        "sacct_array",
        sacct_argv([jobs["array"]]),
        "an array's tasks by its base id: JobID 27_0, JobIDRaw 28…",
        jobs=jobs,
    )
    # The dependency can never be met; after the final-state sample it is cancelled.
    wait_final([jobs[k] for k in jobs if k not in ("pending_dependency", "pending_resources")], 200)
    record(
        "squeue_dependency_never",
        squeue_argv([jobs["pending_dependency"]]),
        "a job whose afterok dependency failed waits forever",
        jobs=jobs,
    )
    run(["scancel", jobs["pending_dependency"]])
    wait_final(ids, 60)
    record(
        "squeue_final",
        squeue_argv(ids),
        "squeue --states=all keeps ended jobs (with their final state) for MinJobAge (300 s)",
        jobs=jobs,
    )
    record(
        "sacct_final",
        sacct_argv(ids),
        "final states: COMPLETED, FAILED 3:0, FAILED 0:9, CANCELLED by UID, TIMEOUT, "
        "OUT_OF_MEMORY (or what OverMemoryKill made of it), GPU job, array, with steps",
        jobs=jobs,
    )
    record(
        "squeue_unknown_job",
        squeue_argv(["999999"]),
        "one id squeue does not know (finished long ago or never existed): exit 1",
    )
    record(
        "squeue_unknown_jobs",
        squeue_argv(["999998", "999999"]),
        "several ids squeue does not know: header only, exit 0",
    )
    record("sacct_unknown_job", sacct_argv(["999999"]), "an id sacct has no record of")
    return jobs


# Each rank burns CPU and holds memory in proportion to its node (node 1 twice node 0's), so the
# per-node numbers differ and name their node.
RANK_WORK = """\
import sys, time
node = int(sys.argv[1])
keep = bytearray((40 + 60 * node) * 1024 * 1024)
t = time.process_time()
while time.process_time() - t < 2.0 + 2.0 * node:
    sum(range(10000))
time.sleep(3)
"""


def record_steps() -> None:
    """sacct per step of real 2-node jobs on `multi`, laid out as hpcjob's job scripts launch
    them: torchrun's (one srun task per node holding its 2 ranks) and srun's (a task per rank)."""
    print("sacct per step of 2-node jobs", file=sys.stderr)
    program = WORK / "rank_work.py"
    program.write_text(RANK_WORK)
    shutil.chown(program, ENV["HPCJOB_TEST_USER"], ENV["HPCJOB_TEST_USER"])
    rank = f"python3 {program} $SLURM_NODEID"
    torchrun = sbatch(
        script(
            "fx-steps-torchrun",
            f"srun --ntasks-per-node=1 bash -c '{rank} & {rank} & wait'",
            partition="multi",
            nodes="2",
            ntasks_per_node="1",
            cpus_per_task="2",
            mem="500M",
            time="2",
        )
    )
    wait_final([torchrun], 120)
    record(
        "sacct_steps_torchrun",
        sacct_steps_argv(torchrun),
        "--nodes 2, 2 processes per node under one srun task per node (hpcjob's torchrun "
        "layout): step .0 has 2 tasks, one per node; node 1's ranks use twice node 0's CPU "
        "and more memory",
        jobs={"torchrun": torchrun},
    )
    srun = sbatch(
        script(
            "fx-steps-srun",
            f"srun --ntasks-per-node=2 bash -c '{rank}'",
            partition="multi",
            nodes="2",
            ntasks_per_node="2",
            cpus_per_task="1",
            mem="500M",
            time="2",
        )
    )
    wait_final([srun], 120)
    record(
        "sacct_steps_srun",
        sacct_steps_argv(srun),
        "--nodes 2 --launcher srun: step .0 has a task per rank (4), 2 on each node",
        jobs={"srun": srun},
    )


def record_scancel_other() -> None:
    print("scancel of another user's job", file=sys.stderr)
    root_job = sbatch(
        f"--chdir={WORK}", "--output=/dev/null", "--time=1", "--wrap=sleep 60", user="root"
    )
    record(
        "scancel_other_user",
        ["scancel", root_job],
        "hpctest cancelling root's job",
        jobs={"root_job": root_job},
    )
    record("scancel_unknown", ["scancel", "999999"], "cancelling an id Slurm does not know")
    run(["scancel", root_job], user="root")


def record_sinfo() -> None:
    print("sinfo", file=sys.stderr)
    record("sinfo_idle", sinfo_argv(), "partitions of the idle test cluster")
    node = "hcn1"
    run(["scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=fixture"], user="root")
    try:
        record("sinfo_drained", sinfo_argv(), f"gpu_h100's only node ({node}) drained")
    finally:
        run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], user="root")


def record_config() -> None:
    print("scontrol show config", file=sys.stderr)
    record(
        "scontrol_config",
        scontrol_config_argv(),
        "the configuration; its ClusterName keys hpcjob's runs (the same on every login node)",
    )


def record_access() -> None:
    """The accounts query (one command: groups, cluster, the default account and associations, the
    partitions' access lists) as the test user, who is in hpctest_acct (default) and
    hpctest_course; start.sh makes gpu_course for hpctest_course and thin_course for
    other_course. Then sacctmgr that cannot answer, through a copy of slurm.conf (SLURM_CONF):
    slurmdbd unreachable, and accounting off — no daemon is stopped."""
    print("accounts", file=sys.stderr)
    record("access_course", access_argv(), "a default account and a course account")
    record("access_sinfo", sinfo_argv(), "partitions with the course partitions start.sh makes")
    conf = Path("/etc/slurm/slurm.conf").read_text()
    for name, key, value, note in (
        ("access_dbd_unreachable", "AccountingStoragePort", "9", "slurmdbd cannot be reached"),
        (
            "access_accounting_off",
            "AccountingStorageType",
            "accounting_storage/none",
            "no accounting storage",
        ),
    ):
        lines = [line for line in conf.splitlines() if not line.startswith(f"{key}=")]
        path = WORK / f"{name}.conf"
        path.write_text("\n".join([*lines, f"{key}={value}"]) + "\n")
        path.chmod(0o644)
        record(name, access_argv(), f"{note} ({key}={value})", env={"SLURM_CONF": str(path)})


def stop_daemon(name: str) -> None:
    cmd = f'source "{HERE}/lib.sh" && stop_ours {name}'
    subprocess.run(["bash", "-c", cmd], check=True)


def restart_cluster() -> None:
    subprocess.run([str(HERE / "start.sh")], check=True)


def record_outages(job: str) -> None:
    print("outages: slurmdbd, then slurmctld, stopped briefly", file=sys.stderr)
    try:
        stop_daemon("slurmdbd")
        record(
            "sacct_dbd_down",
            sacct_argv([job]),
            "slurmdbd is down (accounting unavailable)",
            timeout=300,
        )
        record(
            "sbatch_dbd_down",
            ["sbatch", "--parsable", "--wrap=true", "--time=1", "--output=/dev/null"],
            "sbatch while slurmdbd is down (slurmctld queues accounting)",
        )
    finally:
        restart_cluster()
    try:
        stop_daemon("slurmctld")
        record("squeue_ctld_down", squeue_argv([job]), "slurmctld is down", timeout=300)
        record(
            "sbatch_ctld_down",
            ["sbatch", "--parsable", "--wrap=true", "--time=1"],
            "slurmctld is down",
            timeout=300,
        )
        record("sinfo_ctld_down", sinfo_argv(), "slurmctld is down", timeout=300)
    finally:
        restart_cluster()


def main() -> None:
    global VERSION, ONLY, WORK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="record only fixtures whose name starts with this")
    parser.add_argument(
        "--skip-outages", action="store_true", help="do not stop slurmdbd/slurmctld"
    )
    args = parser.parse_args()
    ONLY = args.only
    if os.geteuid() != 0:
        sys.exit("run as root (it runs commands as the test user and as root)")
    load_env()
    VERSION = ENV["HPCJOB_TEST_SLURM_VERSION"]
    WORK = Path(ENV["HPCJOB_TEST_SCRATCH"]) / f"fixtures-{int(time.time())}"
    WORK.mkdir(parents=True)
    shutil.chown(WORK, ENV["HPCJOB_TEST_USER"], ENV["HPCJOB_TEST_USER"])
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"recording into {OUT} (jobs run in {WORK})", file=sys.stderr)

    if ONLY and ONLY.startswith("access"):  # a group of its own: no job needs to run for it
        record_access()
        return
    if ONLY and ONLY.startswith("sacct_steps"):  # a group of its own: two 2-node jobs
        record_steps()
        return
    record_access()
    record_sinfo()
    record_config()
    record_sbatch()
    record_scancel_other()
    record_lag()
    jobs = record_states()
    record_steps()
    if not args.skip_outages:
        record_outages(jobs["completed"])
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
