"""The embedded scheduler: Slurm's behaviour for job scripts on this machine, without Slurm.

A submitted script gets a job id, a record under `<local_dir>/jobs/` and a detached supervisor
process (`python -m hpcjob.scheduler.local`) that survives the CLI. The supervisor waits for a
free slot (at most `max_jobs` run at once, first come first served), runs the script with Slurm's
environment variables, writes its output where `#SBATCH --output` says, enforces `--time`
(TERM, then KILL after `kill_wait_s`), sends the `--signal` warning, and records the final state.
A supervisor that dies is noticed by the next poll: its job is marked FAILED with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hpcjob.clock import parse_utc, utc_now
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobInfo, JobState
from hpcjob.scheduler.header import ScriptHeader, array_tasks, expand_output, parse_script_header
from hpcjob.shell import LocalShell, Shell

_TICK_S = 0.05


def _order(job_id: str) -> tuple[int, int]:
    """Queue order: by job id, an array's tasks by task id."""
    base, _, task = job_id.partition("_")
    return int(base), int(task) if task else -1


def _is_job_id(name: str) -> bool:
    base, _, task = name.partition("_")
    return base.isdigit() and (not task or task.isdigit())


class LocalScheduler:
    """The Scheduler protocol on this machine (see the module docstring)."""

    name = "local"
    poll_start_s = 0.2
    poll_cap_s = 2.0
    jobs_run_here = True
    # Its own records answer every poll, and a submit either queues the job or says why not.
    accounting_off: str | None = None
    last_submit_ambiguous = False

    def __init__(self, local_dir: Path, max_jobs: int = 2, kill_wait_s: float = 5.0) -> None:
        self.root = local_dir
        self.max_jobs = max(1, max_jobs)
        self.kill_wait_s = float(os.environ.get("HPCJOB_LOCAL_KILL_WAIT", kill_wait_s))
        self.shell: Shell = LocalShell()
        self.address = f"local:{socket.gethostname()}"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)  # job records: the user's own
        for sub in ("jobs", "queue", "slots", "tokens", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- the protocol -------------------------------------------------------------------------

    def submit(self, script_path: str, *, token: str, workdir: str) -> str:
        script = Path(script_path)
        header = parse_script_header(script.read_text(encoding="utf-8"), script.name)
        job_id = self._next_id()
        (self.root / "tokens" / token).write_text(job_id)
        if header.array is None:
            self._enqueue(job_id, script, header, token, workdir)
        else:
            # An array: one record and one supervisor per task (`12_0`, `12_1` …), as Slurm
            # shows them; the throttle is a set of slot locks of the array's own.
            tasks, throttle = array_tasks(header.array)
            for task in tasks:
                array = {"array_job_id": job_id, "task": task, "count": len(tasks),
                         "min": tasks[0], "max": tasks[-1], "throttle": throttle}  # fmt: skip
                self._enqueue(f"{job_id}_{task}", script, header, token, workdir, array)
        return job_id

    def _enqueue(
        self,
        job_id: str,
        script: Path,
        header: ScriptHeader,
        token: str,
        workdir: str,
        array: dict[str, Any] | None = None,
    ) -> None:
        task = array["task"] if array else None
        record = {
            "job_id": job_id,
            "name": header.job_name,
            "token": token,
            "script": str(script),
            "workdir": workdir,
            "output": expand_output(header.output, job_id, header.job_name, task),
            "array": array,
            "time_s": header.time_s,
            "warn_signal": header.signal,  # not "signal": that is how the job ended
            "cpus": header.cpus_per_task,
            "mem_mb": header.mem_mb,
            "gpus": header.gpus,
            "partition": header.partition or "local",
            "account": header.account,
            "after": list(header.after),
            "max_jobs": self.max_jobs,
            "kill_wait_s": self.kill_wait_s,
            "state": JobState.PENDING.value,
            "submitted_at": utc_now(),
        }
        self._write(job_id, record)
        (self.root / "queue" / job_id).touch()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpcjob.scheduler.local", str(self.root), job_id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI and its terminal
            close_fds=True,
        )
        with self._locked(job_id) as rec:
            rec.setdefault("supervisor", _proc_identity(proc.pid))

    def poll(self, job_ids: Sequence[str], ended: Collection[str] = ()) -> dict[str, JobInfo]:
        # Its one record of each job is always the quick word: `ended` changes nothing here.
        infos: dict[str, JobInfo] = {}
        for job_id in job_ids:
            if not (self.root / "jobs" / f"{job_id}.json").exists():
                continue
            record = self._read(job_id)
            if record["state"] in ("PENDING", "RUNNING") and not _supervisor_alive(record):
                record = self._fail_orphan(job_id)
            infos[job_id] = _info(record)
        return infos

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in self._with_tasks(job_ids):
            if not (self.root / "jobs" / f"{job_id}.json").exists():
                raise HpcjobError(f"The embedded scheduler has no job {job_id}.")
            with self._locked(job_id) as rec:
                if rec["state"] == "PENDING":
                    rec.update(
                        state="CANCELLED", ended_at=utc_now(), reason="cancelled while pending"
                    )
                    (self.root / "queue" / job_id).unlink(missing_ok=True)
                elif rec["state"] == "RUNNING":
                    rec["cancel_requested"] = utc_now()
                    _signal_group(rec.get("pgid"), signal.SIGTERM)

    def _with_tasks(self, job_ids: Sequence[str]) -> list[str]:
        """An array's id stands for all its tasks (as with scancel)."""
        found: list[str] = []
        for job_id in job_ids:
            if (self.root / "jobs" / f"{job_id}.json").exists() or "_" in job_id:
                found.append(job_id)
                continue
            tasks = sorted(
                (p.stem for p in (self.root / "jobs").glob(f"{job_id}_*.json")), key=_order
            )
            found += tasks or [job_id]
        return found

    def find_by_token(self, token: str) -> str | None:
        path = self.root / "tokens" / token
        return path.read_text().strip() if path.exists() else None

    def partitions(self) -> None:
        """Any partition name runs here, on this machine."""
        return None

    def cluster_name(self) -> None:
        """Its jobs run on this machine: the address is the cluster."""
        return None

    def account_access(self) -> None:
        """No accounts here: any partition, any account."""
        return None

    def step_usage(self, job_id: str) -> None:
        """No accounting per step here: a job's ranks are one process tree on this machine."""
        return None

    def close(self) -> None:
        self.shell.close()

    # -- records ------------------------------------------------------------------------------

    def _next_id(self) -> str:
        counter = self.root / "next_id"
        with open(self.root / "next_id.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = int(counter.read_text()) if counter.exists() else 1
            counter.write_text(str(current + 1))
        return str(current)

    def _read(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / "jobs" / f"{job_id}.json").read_text())
        return data

    def _write(self, job_id: str, record: dict[str, Any]) -> None:
        path = self.root / "jobs" / f"{job_id}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)

    @contextmanager
    def _locked(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Read-modify-write one record under its lock (the supervisor and the CLI both write)."""
        with open(self.root / "jobs" / f"{job_id}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = self._read(job_id)
            yield record
            self._write(job_id, record)

    def _fail_orphan(self, job_id: str) -> dict[str, Any]:
        with self._locked(job_id) as rec:
            if rec["state"] in ("PENDING", "RUNNING") and not _supervisor_alive(rec):
                _signal_group(rec.get("pgid"), signal.SIGKILL)
                pid = (rec.get("supervisor") or {}).get("pid", "?")
                rec.update(
                    state="FAILED",
                    ended_at=utc_now(),
                    reason=f"the embedded scheduler's runner (pid {pid}) died; the job was stopped",
                )
                (self.root / "queue" / job_id).unlink(missing_ok=True)
            return dict(rec)

    # -- the supervisor (runs in its own detached process) ------------------------------------

    def supervise(self, job_id: str) -> None:
        with self._locked(job_id) as rec:
            rec["supervisor"] = _proc_identity(os.getpid())
        slots = self._wait_for_slot(job_id)
        if slots is None:
            return
        try:
            self._run(job_id)
        finally:
            for slot in slots:
                if slot is not None:
                    slot.close()

    def _wait_for_slot(self, job_id: str) -> Any:
        """Hold a slot lock for the job's life (released by the OS even if this process dies)."""
        queue = self.root / "queue"
        while True:
            record = self._read(job_id)
            if record["state"] != "PENDING":
                return None  # cancelled while waiting
            blocked = self._dependency_blocks(job_id, record.get("after") or [])
            if blocked is None:
                return None  # never satisfied: cancelled
            if blocked:
                time.sleep(_TICK_S * 4)
                continue
            array = record.get("array") or {}
            # First come, first served; an array's tasks in task order.
            ahead = [q for q in os.listdir(queue) if _is_job_id(q) and _order(q) < _order(job_id)]
            ahead = [q for q in ahead if _supervisor_alive(self._read(q))]
            if not ahead:
                throttle = (
                    self._take_slot(f"array-{array['array_job_id']}", array["throttle"])
                    if array.get("throttle")
                    else None
                )
                if not array.get("throttle") or throttle is not None:
                    slot = self._take_slot("slot", self.max_jobs)
                    if slot is not None:
                        return (slot, throttle)
                    if throttle is not None:
                        throttle.close()
            time.sleep(_TICK_S * 2)

    def _take_slot(self, prefix: str, count: int | None) -> Any:
        """One of `count` slot locks named `prefix-<i>`, or None when all are held."""
        for index in range(count or 0):
            handle = open(self.root / "slots" / f"{prefix}-{index}", "a")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                handle.close()
        return None

    def _dependency_blocks(self, job_id: str, after: list[str]) -> bool | None:
        """True while an afterok dependency has not completed; None (and the job cancelled) once
        one ended otherwise — Slurm would leave it pending forever (DependencyNeverSatisfied)."""
        infos = self.poll(after)
        for dep in after:
            info = infos.get(dep)
            if info is not None and info.state.is_final and info.state != JobState.COMPLETED:
                reason = f"dependency never satisfied: job {dep} ended {info.state.value}"
                with self._locked(job_id) as rec:
                    rec.update(state="CANCELLED", ended_at=utc_now(), reason=reason)
                (self.root / "queue" / job_id).unlink(missing_ok=True)
                return None
        return any(dep not in infos or not infos[dep].state.is_final for dep in after)

    def _run(self, job_id: str) -> None:
        rec = self._read(job_id)
        output = Path(rec["output"])
        if not Path(rec["workdir"]).is_dir() or not output.parent.is_dir():
            # What Slurm does too: the job fails at once with exit code 0:53 and no output.
            self._finish(job_id, "FAILED", 0, 53, f"output directory {output.parent} is missing")
            return
        tmpdir = self.root / "tmp" / job_id
        tmpdir.mkdir(exist_ok=True)
        began = time.monotonic()
        with open(output, "wb") as out:
            proc = subprocess.Popen(
                ["/bin/bash", rec["script"]],
                cwd=rec["workdir"],
                env=_slurm_env(rec, str(tmpdir)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            with self._locked(job_id) as live:
                if live["state"] != "PENDING":  # cancelled in the instant before the start
                    _signal_group(proc.pid, signal.SIGKILL)
                live.update(
                    state="RUNNING", started_at=utc_now(), pgid=proc.pid, node=socket.gethostname()
                )
            (self.root / "queue" / job_id).unlink(missing_ok=True)
            ending = self._watch(proc, rec, out)
        self._record_usage(job_id, _usage(time.monotonic() - began, rec))
        _signal_group(proc.pid, signal.SIGKILL)  # like Slurm: nothing of the job outlives it
        _remove_tree(tmpdir)
        returncode = proc.returncode
        if ending:  # the script's own exit status, or the signal that ended it (as sacct's)
            code, sig = (None, -returncode) if returncode < 0 else (returncode, 0)
            self._finish(job_id, ending, code, sig, None)
        elif returncode == 0:
            self._finish(job_id, "COMPLETED", 0, 0, None)
        elif returncode < 0:
            self._finish(job_id, "FAILED", 0, -returncode, None)
        else:
            self._finish(job_id, "FAILED", returncode, 0, None)

    def _watch(self, proc: subprocess.Popen[bytes], rec: dict[str, Any], out: Any) -> str | None:
        """Wait for the script, enforcing cancel and the time limit; CANCELLED, TIMEOUT or None."""
        started = time.monotonic()
        limit = rec.get("time_s")
        warn = rec.get("warn_signal")
        warned = False
        ending: str | None = None
        kill_at: float | None = None
        while proc.poll() is None:
            time.sleep(_TICK_S)
            elapsed = time.monotonic() - started
            if warn and limit and not warned and elapsed >= limit - warn[1]:
                warned = True
                _signal_pid(proc.pid, warn[0])  # B: the batch shell only
            if ending is None and self._read(rec["job_id"]).get("cancel_requested"):
                ending, kill_at = "CANCELLED", time.monotonic() + self.kill_wait_s
                _banner(out, rec, "")
                _signal_group(proc.pid, signal.SIGTERM)
            elif ending is None and limit and elapsed >= limit:
                ending, kill_at = "TIMEOUT", time.monotonic() + self.kill_wait_s
                _banner(out, rec, " DUE TO TIME LIMIT")
                _signal_group(proc.pid, signal.SIGTERM)
            if kill_at is not None and time.monotonic() >= kill_at:
                _signal_group(proc.pid, signal.SIGKILL)
        if ending is None and self._read(rec["job_id"]).get("cancel_requested"):
            # `cancel` signals the job itself: on a loaded machine it may be gone before the
            # next look above, and a cancelled job is not a failed one.
            _banner(out, rec, "")
            ending = "CANCELLED"
        return ending

    def _record_usage(self, job_id: str, usage: dict[str, Any]) -> None:
        with self._locked(job_id) as rec:
            rec["usage"] = usage

    def _finish(
        self, job_id: str, state: str, exit_code: int | None, sig: int, reason: str | None
    ) -> None:
        with self._locked(job_id) as rec:
            rec.update(state=state, exit_code=exit_code, signal=sig, ended_at=utc_now())
            if reason:
                rec["reason"] = reason
        (self.root / "queue" / job_id).unlink(missing_ok=True)


def _banner(out: Any, rec: dict[str, Any], why: str) -> None:
    stamp = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    host = socket.gethostname()
    line = f"slurmstepd: error: *** JOB {rec['job_id']} ON {host} CANCELLED AT {stamp}{why} ***\n"
    out.write(line.encode())
    out.flush()


def _slurm_env(rec: dict[str, Any], tmpdir: str) -> dict[str, str]:
    host = socket.gethostname()
    env = dict(os.environ)
    env.update(
        SLURM_JOB_ID=rec["job_id"],
        SLURM_JOBID=rec["job_id"],
        SLURM_JOB_NAME=rec["name"],
        SLURM_SUBMIT_DIR=rec["workdir"],
        SLURM_SUBMIT_HOST=host,
        SLURM_JOB_PARTITION=rec["partition"],
        SLURM_JOB_NODELIST=host,
        SLURMD_NODENAME=host,
        SLURM_NNODES="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NTASKS="1",
        SLURM_CLUSTER_NAME="local",
        SLURM_RESTART_COUNT="0",
        TMPDIR=tmpdir,
        HPCJOB_EMBEDDED="1",  # no srun here: a launcher runs its ranks directly (base.sbatch.j2)
    )
    array = rec.get("array")
    if array:
        env.update(
            SLURM_ARRAY_JOB_ID=str(array["array_job_id"]),
            SLURM_ARRAY_TASK_ID=str(array["task"]),
            SLURM_ARRAY_TASK_COUNT=str(array["count"]),
            SLURM_ARRAY_TASK_MIN=str(array["min"]),
            SLURM_ARRAY_TASK_MAX=str(array["max"]),
        )
    env["SLURM_CPUS_ON_NODE"] = str(rec.get("cpus") or os.cpu_count() or 1)
    if rec.get("cpus"):
        env["SLURM_CPUS_PER_TASK"] = str(rec["cpus"])
    if rec.get("mem_mb"):
        env["SLURM_MEM_PER_NODE"] = str(rec["mem_mb"])
    if rec.get("gpus"):
        env["SLURM_GPUS"] = str(rec["gpus"])
    if rec.get("account"):
        env["SLURM_JOB_ACCOUNT"] = rec["account"]
    return env


def _usage(elapsed_s: float, rec: dict[str, Any]) -> dict[str, Any]:
    """What sacct would say of the job: elapsed, and the CPU time and peak memory of the job's
    process tree (every descendant this supervisor's child waited for), from getrusage."""
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss_unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    usage = {
        "elapsed_s": round(elapsed_s, 2),
        "cpu_s": round(used.ru_utime + used.ru_stime, 2),
        "max_rss_bytes": used.ru_maxrss * rss_unit,
        "alloc_cpus": rec.get("cpus") or os.cpu_count() or 1,  # the job may use every core
        "req_mem_mb": rec.get("mem_mb"),
        "time_limit_s": rec.get("time_s"),
    }
    return {k: v for k, v in usage.items() if v is not None}


def _info(rec: dict[str, Any]) -> JobInfo:
    usage = rec.get("usage") or {}
    return JobInfo(
        job_id=rec["job_id"],
        state=JobState.parse(rec["state"]),
        exit_code=rec.get("exit_code"),
        signal=rec.get("signal"),
        node=rec.get("node"),
        submitted_at=rec.get("submitted_at"),
        started_at=rec.get("started_at"),
        ended_at=rec.get("ended_at"),
        reason=rec.get("reason"),
        facts={f"local_{k}": v for k, v in usage.items()},
    )


def _proc_identity(pid: int) -> dict[str, Any]:
    """A pid plus its start time, so a recycled pid is not taken for the same process."""
    return {"pid": pid, "start": _proc_start(pid)}


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]  # zombies linger: treat them as dead


def _supervisor_alive(rec: dict[str, Any]) -> bool:
    ident = rec.get("supervisor")
    if not ident:
        # Spawned a moment ago and not yet registered: give it a grace period.
        submitted = rec.get("submitted_at")
        if submitted is None:
            return False
        age = datetime.now(timezone.utc) - parse_utc(submitted)
        return age.total_seconds() < 10
    if not Path("/proc").is_dir():  # no /proc (macOS): ask the kernel about the pid alone
        try:
            os.kill(int(ident["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    start = _proc_start(int(ident["pid"]))
    return start is not None and (ident.get("start") is None or start == ident["start"])


def _signal_group(pgid: int | None, sig: int) -> None:
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str]) -> None:
    """Entry of the detached supervisor: `python -m hpcjob.scheduler.local LOCAL_DIR JOB_ID`."""
    root, job_id = Path(argv[0]), argv[1]
    record = json.loads((root / "jobs" / f"{job_id}.json").read_text())
    scheduler = LocalScheduler(
        root, max_jobs=int(record["max_jobs"]), kill_wait_s=float(record["kill_wait_s"])
    )
    scheduler.supervise(job_id)


if __name__ == "__main__":
    main(sys.argv[1:])
