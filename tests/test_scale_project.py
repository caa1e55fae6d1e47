"""A project workload launched with torchrun (issue 18): `launcher` in hpcjob.toml, the default it
gives, `--launcher` over it, the batch script that starts its own processes, the rendered line,
and one node of ranks on the embedded scheduler."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hpcjob.errors import HpcjobError
from hpcjob.project.projectfile import parse_project
from hpcjob.render import RenderContext, render_script, template_dirs
from hpcjob.spec import JobSpec, Program, SpecRequest, build_spec
from tests.helpers import ddp_project

Invoke = Any

DDP_TOML = """\
[workloads.train]
command = ["python", "ddp_sum.py"]
launcher = "torchrun"
"""


def _project(text: str) -> Any:
    return parse_project(text, Path("/p/hpcjob.toml"))


def test_the_project_file_takes_a_launcher_for_a_workload() -> None:
    workloads = _project(DDP_TOML + '[workloads.plain]\ncommand = ["x"]\n').workloads
    assert workloads["train"].launcher == "torchrun"
    assert workloads["plain"].launcher is None  # not declared
    assert _project(DDP_TOML.replace("torchrun", "srun")).workloads["train"].launcher == "srun"


def test_a_bad_launcher_in_the_project_file_is_refused_naming_the_line() -> None:
    with pytest.raises(HpcjobError) as caught:
        _project(DDP_TOML.replace('"torchrun"', '"mpirun"'))
    assert "line 3: launcher must be one of torchrun, srun, none, not 'mpirun'" in str(
        caught.value.message
    )
    with pytest.raises(HpcjobError, match="line 3: launcher must be a string"):
        _project(DDP_TOML.replace('"torchrun"', "2"))


def _program(launcher: str | None = None, kind: str = "project") -> Program:
    command = ("bash", "job.sh") if kind == "script" else ("python", "ddp_sum.py")
    return Program(kind=kind, command=command, source="hpcjob.toml", launcher=launcher)


def _resources(program: Program, **values: Any) -> tuple[int, int, int, str]:
    values.setdefault("time", "10:00")
    name = "job.sh" if program.kind == "script" else "train"
    res = build_spec(SpecRequest(workload=name, program=program, **values)).resources
    return res.nodes, res.gpus, res.procs_per_node, res.launcher


def test_a_workload_declaring_torchrun_runs_under_it_with_more_than_one_process() -> None:
    ddp = _program("torchrun")
    assert _resources(ddp, nodes=2, procs_per_node=2) == (2, 0, 2, "torchrun")
    assert _resources(ddp, nodes=2) == (2, 0, 1, "torchrun")
    assert _resources(ddp) == (1, 0, 1, "none")  # one process: run as it is
    # A DDP workload's GPUs are its ranks: one per GPU, even with plain --gpus.
    assert _resources(ddp, partition="gpu_a100", gpus=4) == (1, 4, 4, "torchrun")
    assert _resources(ddp, partition="gpu_a100") == (1, 1, 1, "none")


def test_the_command_line_launcher_wins_over_the_declared_one() -> None:
    assert _resources(_program("torchrun"), nodes=2, launcher="srun")[3] == "srun"
    assert _resources(_program("srun"), procs_per_node=2, launcher="torchrun")[3] == "torchrun"
    assert _resources(_program("torchrun"), procs_per_node=2, launcher="none")[3] == "none"


def test_a_workload_that_declares_no_launcher_keeps_the_rule_of_any_program() -> None:
    plain = _program()
    assert _resources(plain, partition="gpu_a100", gpus=4) == (1, 4, 1, "none")  # as before
    assert _resources(plain, procs_per_node=2) == (1, 0, 2, "torchrun")  # asked: wrapped
    assert _resources(_program("srun"), nodes=2) == (2, 0, 1, "srun")


@pytest.mark.parametrize(
    ("program", "values", "expected"),
    [
        (
            _program("none"),
            {"nodes": 2},
            'train declares launcher = "none" in hpcjob.toml (one process), but --nodes 2 '
            "× --procs-per-node 1 asks for 2",
        ),
        (
            _program("none"),
            {"procs_per_node": 3},
            "--procs-per-node 3 asks for 3",
        ),
        (
            _program(kind="script"),
            {"launcher": "torchrun"},
            "--launcher torchrun does not apply to the batch script job.sh",
        ),
        (
            _program(kind="script"),
            {"nodes": 2},
            "job.sh is a batch script: hpcjob runs it once, as one task on one node",
        ),
        (
            _program(kind="script"),
            {"procs_per_node": 2},
            "job.sh is a batch script: hpcjob runs it once, as one task on one node",
        ),
    ],
)
def test_processes_a_program_cannot_be_given_are_refused(
    program: Program, values: dict[str, Any], expected: str
) -> None:
    with pytest.raises(HpcjobError) as caught:
        _resources(program, **values)
    assert caught.value.exit_code == 2
    assert expected in caught.value.message


def test_a_batch_script_runs_unwrapped() -> None:
    script = _program(kind="script")
    assert _resources(script) == (1, 0, 1, "none")
    assert _resources(script, launcher="none") == (1, 0, 1, "none")
    assert _resources(script, partition="gpu_a100", gpus_per_node=2) == (1, 2, 1, "none")


def test_the_declared_launcher_is_recorded_with_the_program() -> None:
    spec = build_spec(
        SpecRequest(workload="train", time="5", program=_program("torchrun"), nodes=2)
    )
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["program"]["launcher"] == "torchrun"
    older = spec.to_dict()
    del older["program"]["launcher"]  # a run recorded before the key existed
    assert JobSpec.from_dict(older).program.launcher is None  # type: ignore[union-attr]


def test_the_rendered_script_launches_the_projects_command_word_by_word(tmp_path: Path) -> None:
    program = Program(
        kind="project",
        command=("python", "ddp sum.py", "--tag", "$(touch x)", "--config={config}"),
        config="c.yaml",
        launcher="torchrun",
    )
    spec = build_spec(
        SpecRequest(workload="train", partition="multi", nodes=2, procs_per_node=2, program=program)
    )
    context = RenderContext(run_id="r1", token="t", run_dir="/runs/r1", python="/venv/bin/python")
    script = render_script(spec, context, template_dirs([]))
    launched = [line for line in script.splitlines() if '"${hpcjob_launch[@]}"' in line]
    assert len(launched) == 1, launched
    line = launched[0]
    assert line.startswith('"${hpcjob_launch[@]}" ') and line.endswith(" &")
    command = line[line.index("/venv/bin/python") : -2]
    assert command == (
        "/venv/bin/python 'ddp sum.py' --tag '$(touch x)' --config=\"${HPCJOB_CONFIG}\""
    )
    words = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {command}"],
        capture_output=True,
        text=True,
        env={"HPCJOB_CONFIG": "/runs/r1/c.yaml", "PATH": "/usr/bin:/bin"},
        check=True,
        cwd=tmp_path,
    ).stdout.splitlines()
    config = "--config=/runs/r1/c.yaml"
    assert words == ["/venv/bin/python", "ddp sum.py", "--tag", "$(touch x)", config]
    assert not (tmp_path / "x").exists()
    assert "--nproc-per-node 2" in script and "#SBATCH --nodes=2" in script
    assert shlex.split(line)[0] == "${hpcjob_launch[@]}"


def test_the_embedded_scheduler_runs_a_declared_torchrun_workload_on_one_node(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ddp_project(tmp_path / "ddp")
    monkeypatch.chdir(root)
    result = cli("submit", "train", "--procs-per-node", "2", "--time", "5", "--wait", "--json")
    assert result.exit_code == 0, result.stderr + result.stdout
    run = result.json()
    assert run["state"] == "COMPLETED"
    detail = cli("show", run["run_id"], "--json").json()
    assert detail["spec"]["resources"]["launcher"] == "torchrun"
    sums = {m["step"]: m["value"] for m in detail["metrics"] if m["key"] == "sum"}
    worlds = {m["step"]: m["value"] for m in detail["metrics"] if m["key"] == "world_size"}
    assert sums == {1: 3.0} and worlds == {1: 2.0}  # ranks 0 and 1 add 1 + 2
