"""Rendering: golden scripts, the quoting helper, and hostile values rendered AND executed."""

from __future__ import annotations

import difflib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hpcjob.errors import HpcjobError
from hpcjob.render import RenderContext, render_script, sbatch_line, shell_path, template_dirs
from hpcjob.spec import JobSpec, SpecRequest, build_spec
from tests.helpers import ci_required, rewrite_requested, wait_until

GOLDEN = Path(__file__).parent / "golden"

SNELLIUS = dict(
    modules=("2025", "Python/3.13.1-GCCcore-14.2.0"), venv="~/hpcjob/venv", python="python3"
)
CASES = {
    "gpu-check-local": (SpecRequest(workload="gpu-check"), {"python": "/usr/bin/python3"}),
    "gpu-check-a100": (SpecRequest(workload="gpu-check", partition="gpu_a100"), SNELLIUS),
    "train-snellius": (
        SpecRequest(
            workload="train",
            partition="gpu_a100",
            time="1-00:00:00",
            cpus_per_task=18,
            mem="120G",
            account="ecf1234",
            constraint="scratch-node",
            data_dir="/projects/0/pcam",
            stage_data=True,
            args={"epochs": 3, "lr": 1e-4, "weighted_sampling": False},
        ),
        SNELLIUS,
    ),
    # More GPUs, more nodes: torchrun under srun (one per node), P ranks on each.
    "train-1x4-gpu": (
        SpecRequest(workload="train", partition="gpu_h100", gpus_per_node=4, data_dir="/d"),
        SNELLIUS,
    ),
    "train-2x4-gpu": (
        SpecRequest(
            workload="train", partition="gpu_a100", nodes=2, gpus_per_node=4, data_dir="/d"
        ),
        SNELLIUS,
    ),
    "train-2x4-cpu": (
        SpecRequest(
            workload="train",
            partition="rome",
            nodes=2,
            procs_per_node=4,
            cpus_per_task=2,
            data_dir="/d",
        ),
        SNELLIUS,
    ),
    "eda-rome": (SpecRequest(workload="eda", partition="rome", data_dir="~/pcam"), SNELLIUS),
    "setup-env": (SpecRequest(workload="setup-env", partition="rome"), SNELLIUS),
}


def render(spec: JobSpec, run_dir: str = "/home/u/hpcjob/runs/r000001", **ctx: object) -> str:
    context = RenderContext(
        run_id="r000001",
        token="hpcjob-" + "0" * 32,
        run_dir=run_dir,
        **ctx,  # type: ignore[arg-type]
    )
    return render_script(spec, context, template_dirs([]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_scripts(name: str) -> None:
    request, ctx = CASES[name]
    script = render(build_spec(request), **ctx)
    golden = GOLDEN / f"{name}.sh"
    update = rewrite_requested("UPDATE_GOLDEN")
    if not golden.exists() and not update:
        if ci_required():
            pytest.fail(f"{golden} is missing (CI never writes golden files): UPDATE_GOLDEN=1")
        golden.write_text(script)
        pytest.fail(f"{golden} did not exist; written now — review and commit it")
    if update:
        golden.write_text(script)
    expected = golden.read_text()
    if script != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), script.splitlines(True), "golden", "now"
            )
        )
        pytest.fail(f"{name} differs from {golden} (UPDATE_GOLDEN=1 to accept):\n{diff}")


def test_sbatch_line_quotes_spaces_and_refuses_what_it_cannot_quote() -> None:
    assert sbatch_line("time", "01:00:00") == "#SBATCH --time=01:00:00"
    assert sbatch_line("output", "/a b/x.out") == '#SBATCH --output="/a b/x.out"'
    for bad in ('a"b', "a\nb", "a\\b"):
        with pytest.raises(HpcjobError):
            sbatch_line("output", bad)


def _as_slurm_reads(line: str) -> str:
    """The value of a `#SBATCH --key=value` line as sbatch reads it (`_get_argument` in
    src/sbatch/opt.c, Slurm 22.05): `"` and `'` quote, `\\` escapes, an unquoted `#` ends the
    line, an unquoted blank ends the word. Observed on the test cluster (Slurm 22.05.8, sbatch
    then scontrol show job): `--comment=/tmp/p#1/x` gave `Comment=/tmp/p`, while
    `--output="/tmp/sb11/p#1/it's/o.out"` and `--job-name="a'b#c"` came through whole."""
    text = line.split("=", 1)[1]
    out, quote, escaped = [], "", False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
            continue
        elif quote:
            if ch == quote:
                quote = ""
                continue
        elif ch in "\"'":
            quote = ch
            continue
        elif ch == "#" or ch.isspace():
            break
        out.append(ch)
    return "".join(out)


@pytest.mark.parametrize(
    "value",
    ["/scratch/p#1/runs/%j.out", "/scratch/it's/x.out", "/a b/#c d/'e'", "#", "'", "plain"],
)
def test_sbatch_line_values_reach_slurm_whole(value: str) -> None:
    """An unquoted `#` is a comment to Slurm and `'` a quote: `/scratch/p#1` became `/scratch/p`."""
    line = sbatch_line("output", value)
    assert _as_slurm_reads(line) == value, line
    assert shlex.split(line.split("=", 1)[1]) == [value]  # hpcjob's own reader agrees


def test_shell_path_keeps_home() -> None:
    assert shell_path("~/venv dir") == "\"$HOME\"/'venv dir'"
    assert shell_path("/x/$(y)") == "'/x/$(y)'"


HOSTILE = [
    "$(touch PWNED1)",
    "; touch PWNED2 #",
    "`touch PWNED3`",
    'it\'s "quoted" & | > PWNED4',
    "  spaces  and\ttabs ",
    "~/$HOME/${PATH}",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_inert_when_executed(tmp_path: Path, value: str) -> None:
    """Render with a hostile data path and run dir, execute the script, and check that the program
    received the value byte for byte and nothing else ran."""
    run_dir = tmp_path / "my runs" / "r000001"
    run_dir.mkdir(parents=True)
    recorder = tmp_path / "record argv"
    recorder.write_text(
        '#!/bin/bash\nprintf "%s\\0" "$@" > "$HPCJOB_RUN_DIR/argv"\n'
        'printf "%s" "$HPCJOB_DATA_DIR" > "$HPCJOB_RUN_DIR/data_dir"\n'
    )
    recorder.chmod(0o755)
    spec = build_spec(SpecRequest(workload="train", data_dir=value, args={"hidden_units": "8,4"}))
    script = render(spec, run_dir=str(run_dir), python=str(recorder))
    (run_dir / "job.sh").write_text(script)
    done = subprocess.run(
        ["bash", str(run_dir / "job.sh")], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    argv = (run_dir / "argv").read_text().split("\0")[:-1]
    expected_data = value if not value.startswith("~/") else str(Path.home()) + value[1:]
    assert argv[argv.index("--data-dir") + 1] == expected_data
    assert argv[argv.index("--hidden-units") + 1] == "8,4"
    assert (run_dir / "exit-status").read_text().split()[0] == "0"
    leftovers = [p.name for p in tmp_path.rglob("PWNED*")] + [
        p.name for p in Path.cwd().glob("PWNED*")
    ]
    assert leftovers == []


def test_paths_that_start_with_a_dash_are_never_options(tmp_path: Path) -> None:
    """A data folder or venv named `-T…` staged and activated: `cp -r -T/.` took it for options."""
    run_dir = tmp_path / "runs" / "r000001"
    run_dir.mkdir(parents=True)
    (tmp_path / "-Tdata").mkdir()
    (tmp_path / "-Tdata" / "x.h5").write_text("pcam")
    (tmp_path / "-venv" / "bin").mkdir(parents=True)
    (tmp_path / "-venv" / "bin" / "activate").write_text("export ACTIVATED=yes\n")
    recorder = tmp_path / "recorder"
    recorder.write_text(
        '#!/bin/bash\nls -- "$3" > "$HPCJOB_RUN_DIR/staged"\n'
        'echo "$ACTIVATED" > "$HPCJOB_RUN_DIR/activated"\n'
    )
    recorder.chmod(0o755)
    spec = build_spec(SpecRequest(workload="eda", data_dir="-Tdata", stage_data=True))
    script = render(spec, run_dir=str(run_dir), python=str(recorder), venv="-venv")
    (run_dir / "job.sh").write_text(script)
    done = subprocess.run(
        ["bash", str(run_dir / "job.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TMPDIR": str(tmp_path / "node")},
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / "staged").read_text() == "x.h5\n"
    assert (run_dir / "activated").read_text() == "yes\n"


def test_setup_env_makes_a_venv_named_like_an_option(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r000001"
    run_dir.mkdir(parents=True)
    spec = build_spec(SpecRequest(workload="setup-env"))
    script = render(spec, run_dir=str(run_dir), python=sys.executable, venv="-v")
    venv_part = script[script.index("venv_dir=") : script.index('"$venv_dir/bin/python" -m pip')]
    done = subprocess.run(
        ["bash", "-c", "set -eu\n" + venv_part], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "-v" / "bin" / "python").exists()


def test_hostile_module_and_venv_names_are_quoted() -> None:
    spec = build_spec(SpecRequest(workload="gpu-check"))
    script = render(spec, modules=("2025; touch PWNED",), venv="/v/$(touch X)")
    assert "module load '2025; touch PWNED'" in script
    assert "source -- '/v/$(touch X)'/bin/activate" in script


def test_newline_in_data_dir_is_refused() -> None:
    with pytest.raises(HpcjobError, match="newline"):
        build_spec(SpecRequest(workload="train", data_dir="/a\n#SBATCH --partition=x"))


def test_user_template_overrides_builtin_by_name(tmp_path: Path) -> None:
    (tmp_path / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}echo mine {{ run_id }}\n{% endblock %}'
    )
    spec = build_spec(SpecRequest(workload="gpu-check"))
    context = RenderContext(run_id="r1", token="t", run_dir="/r")
    script = render_script(spec, context, template_dirs([tmp_path]))
    assert "echo mine r1" in script and "#SBATCH --job-name=hpcjob-gpu-check" in script


def test_undefined_template_variable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "gpu-check.sbatch.j2").write_text("{{ no_such_thing }}")
    spec = build_spec(SpecRequest(workload="gpu-check"))
    context = RenderContext(run_id="r1", token="t", run_dir="/r")
    with pytest.raises(HpcjobError, match="undefined"):
        render_script(spec, context, template_dirs([tmp_path]))


def test_spec_round_trips_through_json() -> None:
    spec = CASES["train-snellius"][0]
    built = build_spec(spec)
    assert JobSpec.from_dict(json.loads(json.dumps(built.to_dict()))) == built


def test_a_programs_command_is_quoted_word_by_word_with_placeholders_as_variables() -> None:
    import subprocess

    from hpcjob.render import command_line

    words = ["python", "train.py", "--config={config}", "{data_dir}/x y", "$(touch /tmp/no)", "'"]
    line = command_line(words, "/venv/bin/python")
    assert line.startswith('/venv/bin/python train.py --config="${HPCJOB_CONFIG}"')
    shown = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {line.split(' ', 1)[1]}"],
        capture_output=True,
        text=True,
        env={"HPCJOB_CONFIG": "/r/c.yaml", "HPCJOB_DATA_DIR": "/d", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout.splitlines()
    assert shown == ["train.py", "--config=/r/c.yaml", "/d/x y", "$(touch /tmp/no)", "'"]
    assert command_line(["python3", "-c", "print(1)"], "python") == "python -c 'print(1)'"
    assert command_line(["nvidia-smi", ""], "python") == "nvidia-smi ''"


def test_a_script_ended_by_term_writes_143_not_0_into_its_exit_status(tmp_path: Path) -> None:
    """The time limit and scancel end a job with TERM (to all its processes, as here). Killed by
    it, bash would run the EXIT trap with the last status, often 0: a job that was stopped
    would read as done where the exit-status file is all there is (accounting off)."""
    import os
    import signal

    run_dir = tmp_path / "r000001"
    run_dir.mkdir()
    program = tmp_path / "program"
    program.write_text('#!/bin/bash\ntouch "$HPCJOB_RUN_DIR/started"\nsleep 60\n')
    program.chmod(0o755)
    spec = build_spec(SpecRequest(workload="gpu-check"))
    script = render(spec, str(run_dir), python=str(program))
    (run_dir / "job.sh").write_text(script)
    job = subprocess.Popen(
        ["bash", str(run_dir / "job.sh")], cwd=tmp_path, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until((run_dir / "started").exists, "the job's program to start")
        os.killpg(job.pid, signal.SIGTERM)
        assert job.wait(timeout=30) == 143
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert (run_dir / "exit-status").read_text().split()[0] == "143"
