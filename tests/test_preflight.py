"""What `prepare` refuses before anything is recorded or submitted, all of it in one error: the
request, the live partitions (replayed from a recorded sinfo), the data files and the venv's
python where the job will read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpcjob.config import Profile, Settings
from hpcjob.errors import HpcjobError
from hpcjob.run.context import Context
from hpcjob.run.prepare import prepare
from hpcjob.scheduler.slurm import SlurmScheduler
from hpcjob.slurm import parse_sinfo
from hpcjob.spec import SpecRequest, build_spec
from tests.helpers import ReplayShell, recorded

PCAM_FILES = [
    f"camelyonpatch_level_2_split_{split}_{xy}.h5" for split in ("train", "valid") for xy in "xy"
]


def cluster_context(tmp_path: Path, **profile: Any) -> tuple[Context, ReplayShell]:
    """A Slurm profile on a login node reached over a shell that replays the recorded sinfo of
    the test cluster (rome, gpu_a100, gpu_h100, staging) and the user's accounts, and holds
    `shell.files`."""
    shell = ReplayShell({"sinfo": [recorded("sinfo_idle")], "bash": [recorded("access_course")]})
    values = {"scheduler": "slurm", "host": "login.example", "remote_root": "~/runs", **profile}
    ctx = Context(Settings(tmp_path / "home"), Profile("cluster", values))
    ctx._scheduler = SlurmScheduler(shell, "slurm:login.example")
    return ctx, shell


def refused(ctx: Context, **request: Any) -> HpcjobError:
    with pytest.raises(HpcjobError) as caught:
        prepare(ctx, SpecRequest(**request))
    assert caught.value.exit_code == 2
    return caught.value


# -- item 10: every problem at once ------------------------------------------------------------


def test_a_bad_time_and_an_unknown_partition_are_reported_together(tmp_path: Path) -> None:
    ctx, _ = cluster_context(tmp_path)
    err = refused(ctx, workload="gpu-check", partition="gpu_a10", time="1h")
    assert "--time: '1h' is not a Slurm time" in err.message
    assert "no partition 'gpu_a10'. Did you mean 'gpu_a100'?" in err.message
    assert "gpu_h100, rome, staging" in err.message  # the partitions one can use
    assert err.hint is not None and "hpcjob partitions" in err.hint


def test_request_and_partition_fit_problems_come_in_one_list(tmp_path: Path) -> None:
    ctx, shell = cluster_context(tmp_path)
    shell.files.update({f"/data/{name}": b"x" for name in PCAM_FILES})
    err = refused(
        ctx,
        workload="train",
        partition="staging",
        time="2-00:00:00",
        gpus=1,
        cpus_per_task=4,
        data_dir="/data",
        args={"epochs": 0},
    )
    problems = [line for line in err.message.splitlines() if line.startswith("  - ")]
    assert len(problems) == 4, err.message
    assert "--epochs must be at least 1, got 0" in err.message
    assert "--time 2-00:00:00 is above staging's limit of 1-00:00:00" in err.message
    assert "staging has no GPUs but 1 were asked for" in err.message
    assert "--cpus 4 is more than a staging node has (2)" in err.message


def test_build_spec_checks_the_partitions_it_is_given() -> None:
    partitions = parse_sinfo(recorded("sinfo_idle").stdout)
    with pytest.raises(HpcjobError) as caught:
        build_spec(SpecRequest(workload="gpu-check", partition="gpu_a10", time="1h"), partitions)
    assert "--time: '1h'" in caught.value.message and "'gpu_a100'?" in caught.value.message
    # The default partition (rome) is the one checked when none is named.
    with pytest.raises(HpcjobError, match="rome has no GPUs"):
        build_spec(SpecRequest(workload="gpu-check", gpus=1), partitions)
    spec = build_spec(SpecRequest(workload="gpu-check", partition="gpu_a100"), partitions)
    assert spec.resources.gpus == 1


def test_a_cluster_that_does_not_answer_still_lets_the_request_problems_be_told(
    tmp_path: Path,
) -> None:
    ctx, shell = cluster_context(tmp_path)
    shell.answers["sinfo"] = [recorded("sinfo_ctld_down")]
    err = refused(ctx, workload="gpu-check", time="1h")
    assert "--time: '1h' is not a Slurm time" in err.message
    with pytest.raises(HpcjobError) as down:
        prepare(ctx, SpecRequest(workload="gpu-check"))
    assert "--time" not in down.value.message and down.value.exit_code != 2


# -- item 3: the data and the venv's python, where the job will read them -------------------------


class CountingShell(ReplayShell):
    """The replaying shell, counting the file look-ups (each a round trip over SSH)."""

    def __init__(self) -> None:
        super().__init__({"sinfo": [recorded("sinfo_idle")], "bash": [recorded("access_course")]})
        self.lookups: list[str] = []

    def exists(self, path: str) -> bool:
        self.lookups.append(f"exists {path}")
        return super().exists(path)

    def list_files(self, path: str, max_depth: int = 2) -> list[tuple[str, int]]:
        self.lookups.append(f"list {path}")
        return super().list_files(path, max_depth)


def remote(tmp_path: Path, **profile: Any) -> tuple[Context, CountingShell]:
    ctx, _ = cluster_context(tmp_path, **profile)
    shell = CountingShell()
    ctx._scheduler = SlurmScheduler(shell, "slurm:login.example")
    return ctx, shell


def test_a_data_folder_missing_on_the_cluster_is_refused_before_submit(tmp_path: Path) -> None:
    ctx, shell = remote(tmp_path)
    for workload in ("train", "eda"):
        err = refused(ctx, workload=workload, data_dir="/projects/pcam")
        assert "the data directory /projects/pcam does not exist on login.example" in err.message
        assert err.hint is not None and "--data-dir" in err.hint
    assert "sbatch" not in shell.commands()


def test_missing_pcam_files_are_named_with_one_listing(tmp_path: Path) -> None:
    ctx, shell = remote(tmp_path)
    shell.files["/projects/pcam/camelyonpatch_level_2_split_train_x.h5"] = b"x"
    shell.files["/projects/pcam/README"] = b"x"
    err = refused(ctx, workload="train", data_dir="/projects/pcam")
    assert "/projects/pcam on login.example lacks" in err.message
    for name in PCAM_FILES[1:]:
        assert name in err.message
    assert PCAM_FILES[0] not in err.message
    assert shell.lookups == ["list /projects/pcam"]  # one look, not one per file
    for name in PCAM_FILES:
        shell.files[f"/projects/pcam/{name}"] = b"x"
    shell.lookups.clear()
    prepare(ctx, SpecRequest(workload="train", data_dir="/projects/pcam"))
    assert shell.lookups == ["list /projects/pcam"]
    # `~/…` is the home folder on the cluster.
    for name in PCAM_FILES:
        shell.files[f"/home/u/pcam/{name}"] = b"x"
    prepare(ctx, SpecRequest(workload="eda", data_dir="~/pcam"))


def test_a_venv_without_its_python_on_the_cluster_is_refused_with_the_fix(
    tmp_path: Path,
) -> None:
    ctx, shell = remote(tmp_path, venv="~/hpcjob/venv")
    err = refused(ctx, workload="gpu-check")
    assert "the venv ~/hpcjob/venv has no bin/python on login.example" in err.message
    assert err.hint is not None and "hpcjob setup-env -P cluster" in err.hint
    assert shell.lookups == ["exists /home/u/hpcjob/venv/bin/python"]
    shell.files["/home/u/hpcjob/venv/bin/python"] = b""
    prepare(ctx, SpecRequest(workload="gpu-check"))
    # setup-env itself makes the venv: it is never refused for lacking one.
    del shell.files["/home/u/hpcjob/venv/bin/python"]
    prepare(ctx, SpecRequest(workload="setup-env", require_data=False))


def test_every_problem_at_once_request_partition_data_and_venv(tmp_path: Path) -> None:
    ctx, shell = remote(tmp_path, venv="~/venv")
    err = refused(ctx, workload="train", partition="gpu_a10", time="1h", data_dir="/nope")
    problems = [line for line in err.message.splitlines() if line.startswith("  - ")]
    assert len(problems) == 4, err.message
    assert "--time: '1h'" in err.message and "Did you mean 'gpu_a100'?" in err.message
    assert "/nope does not exist" in err.message and "has no bin/python" in err.message
    assert err.hint is not None and "hpcjob setup-env -P cluster" in err.hint
    assert len(shell.lookups) <= 3


def test_a_programs_data_folder_is_checked_on_the_cluster(tmp_path: Path) -> None:
    from hpcjob.spec import Program

    ctx, shell = remote(tmp_path)
    program = Program(kind="command", command=("ls", "{data_dir}"), source="the command line")
    request = SpecRequest(workload="ls", program=program, data_dir="/projects/mine")
    with pytest.raises(HpcjobError, match=r"/projects/mine does not exist on login\.example"):
        prepare(ctx, request)
    shell.files["/projects/mine/anything.bin"] = b"x"
    prepare(ctx, request)
    assert shell.lookups[-1] == "exists /projects/mine"


def test_render_and_checks_turned_off_look_at_nothing(tmp_path: Path) -> None:
    ctx, shell = remote(tmp_path, venv="~/venv")
    request = SpecRequest(workload="train", data_dir="/nope")
    prepare(ctx, request, check_cluster=False, check_files=False)
    assert shell.lookups == [] and shell.calls == []
