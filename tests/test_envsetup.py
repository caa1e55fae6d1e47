"""setup-env's pure part: fingerprint, module-name check, the rendered script, the result line."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from hpcjob.env.report import check_module_names, result_error, summary_rows
from hpcjob.envlog import failing_requirement
from hpcjob.envscript import (
    RESULT_PREFIX,
    EnvRequest,
    EnvResult,
    environment_key,
    fingerprint,
    import_name,
    parse_result,
    render_setup_script,
    requirement_names,
    requirements_sha256,
)
from hpcjob.errors import HpcjobError
from tests.helpers import ReplayShell, bash_wait_for, invoke, process_gone, wait_until

SYSTEM_PYTHON = "/usr/bin/python3"
BASE = EnvRequest(venv="~/hpcjob/venv", python="python3", modules=("2025",), requirements="six\n")


@pytest.mark.parametrize(
    "change",
    [
        {"modules": ("2025", "Python/3.13.1-GCCcore-14.2.0")},
        {"python": "python3.13"},
        {"requirements": "six==1.17.0\n"},
        {"installer": "uv"},
        {"editable": "~/project"},
        {"system_site_packages": True},
    ],
)
def test_fingerprint_changes_with_each_input(change: dict[str, object]) -> None:
    assert fingerprint(dataclasses.replace(BASE, **change)) != fingerprint(BASE)  # type: ignore[arg-type]


def test_fingerprint_is_stable_and_ignores_force() -> None:
    assert fingerprint(BASE) == fingerprint(dataclasses.replace(BASE, force=True))
    assert len(fingerprint(BASE)) == 64


def test_unicode_dash_in_module_name_is_named_with_its_ascii_spelling() -> None:
    with pytest.raises(HpcjobError) as refused:
        check_module_names(["2025", "Python/3.13.1\u2010GCCcore\u201014.2.0"])
    err = refused.value
    assert "U+2010 HYPHEN" in err.message and "Python/3.13.1" in err.message
    assert err.hint is not None and '"Python/3.13.1-GCCcore-14.2.0"' in err.hint
    assert err.exit_code == 2
    with pytest.raises(HpcjobError, match=r"U\+201C"):
        check_module_names(["\u201cfoss/2023a\u201d"])
    check_module_names(["2025", "Python/3.13.1-GCCcore-14.2.0"])  # plain ASCII passes


def test_requirement_and_import_names() -> None:
    text = (
        "# comment\ntorch>=2.1\nPyYAML==6.0 # pinned\nscikit-learn[alldeps]\n-r other.txt\n"
        "--index-url https://x\ntomli-w\nsome.dist\nhttps://example.org/pkg.whl\n"
    )
    names = requirement_names(text)
    assert names == ["torch", "PyYAML", "scikit-learn", "tomli-w", "some.dist"]
    assert [import_name(n) for n in names] == ["torch", "yaml", "sklearn", "tomli_w", "some_dist"]
    assert import_name("typing_extensions") == "typing_extensions"


HOSTILE = "x y/$(touch PWNED);'q\"`touch PWNED2`; rm -rf nothing"


def test_rendered_script_quotes_hostile_values() -> None:
    request = dataclasses.replace(
        BASE,
        venv=f"/tmp/{HOSTILE}",
        python=f"py {HOSTILE}",
        modules=(f"mod {HOSTILE}",),
        editable=f"~/{HOSTILE}",
        requirements=f"six\n{HOSTILE}\n",
    )
    script = render_setup_script(request)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # The assignments, evaluated by bash, give back exactly the values.
    lines = [ln for ln in script.splitlines() if ln.startswith(("venv_dir=", "python_cmd="))]
    shown = subprocess.run(
        ["bash", "-c", "\n".join(lines) + '\nprintf "%s\\n%s" "$venv_dir" "$python_cmd"'],
        capture_output=True,
        text=True,
        cwd="/tmp",
    ).stdout
    assert shown == f"/tmp/{HOSTILE}\npy {HOSTILE}"
    assert f"module load 'mod {HOSTILE}" not in script  # quoted, not pasted


def test_script_without_modules_loads_none() -> None:
    script = render_setup_script(dataclasses.replace(BASE, modules=()))
    assert "\nmodules=()\n" in script
    assert "\nmodules=(2025)\n" in render_setup_script(BASE)


def test_script_builds_a_hostile_venv_path_and_skips_when_up_to_date(tmp_path: Path) -> None:
    """Executed for real (no network: no requirements): the venv lands at exactly that path."""
    venv = tmp_path / HOSTILE / "venv"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    request = EnvRequest(venv=str(venv), python=SYSTEM_PYTHON, requirements="")
    (run_dir / "requirements.txt").write_text("")
    (run_dir / "setup-env.sh").write_text(render_setup_script(request))
    first = subprocess.run(
        ["bash", str(run_dir / "setup-env.sh")], capture_output=True, text=True, cwd=tmp_path
    )
    result = parse_result(first.stdout)
    assert first.returncode == 0, first.stdout + first.stderr
    assert result.ok and result.action == "create" and result.python_version
    assert (venv / "bin" / "python").exists()
    marker = json.loads((venv / ".hpcjob-env.json").read_text())
    assert marker["fingerprint"] == fingerprint(request)
    assert marker["requirements_sha256"] == requirements_sha256("")
    assert not list(tmp_path.rglob("PWNED*"))
    again = subprocess.run(["bash", str(run_dir / "setup-env.sh")], capture_output=True, text=True)
    assert parse_result(again.stdout).up_to_date
    # A different Python for the same venv: refused, with both versions.
    fake = tmp_path / "python-other"
    fake.write_text("#!/bin/sh\necho 3.99.0\n")
    fake.chmod(0o755)
    other = dataclasses.replace(request, python=str(fake))
    (run_dir / "setup-env.sh").write_text(render_setup_script(other))
    mismatch = subprocess.run(
        ["bash", str(run_dir / "setup-env.sh")], capture_output=True, text=True
    )
    parsed = parse_result(mismatch.stdout)
    assert mismatch.returncode == 6 and parsed.error == "python_mismatch"
    err = result_error(parsed, other, mismatch.stdout)
    assert "Python 3.99.0" in err.message and result.python_version in err.message
    assert err.hint is not None and "--force" in err.hint


def test_parse_result_takes_the_last_line() -> None:
    line = {"ok": True, "action": "verify", "packages": [{"name": "six", "ok": True}], "new": 1}
    text = f'noise\n{RESULT_PREFIX}{{"ok": false}}\n{RESULT_PREFIX}{json.dumps(line)}\nbye\n'
    result = parse_result(text)
    assert result.ok and result.up_to_date and result.packages[0]["name"] == "six"
    assert result.extra == {"new": 1}
    with pytest.raises(HpcjobError, match="without a result line"):
        parse_result("pip: killed\n")
    with pytest.raises(HpcjobError, match="broken result line"):
        parse_result(f"{RESULT_PREFIX}{{not json\n")


PIP_LOG = """Collecting six
ERROR: Could not find a version that satisfies the requirement nosuchpkg-xyz==9 (from versions:)
ERROR: No matching distribution found for nosuchpkg-xyz==9
"""


def test_pip_failure_names_the_requirement_and_shows_the_tail() -> None:
    assert failing_requirement(PIP_LOG) == "nosuchpkg-xyz==9"
    assert failing_requirement("all fine") is None
    result = EnvResult(ok=False, stage="install", error="install_failed")
    err = result_error(result, BASE, PIP_LOG)
    assert "nosuchpkg-xyz==9 could not be installed" in err.message
    assert "No matching distribution found" in err.message


def test_summary_explains_cuda_on_a_login_node() -> None:
    result = EnvResult(
        ok=True,
        action="create",
        python_version="3.13.1",
        packages=({"name": "torch", "module": "torch", "ok": True, "version": "2.5.1"},),
        torch={"version": "2.5.1", "cuda_build": "12.4", "cuda_available": False},
        venv_bytes=5 * 1024**3,
        venv_files=50_000,
        install_s=42.0,
    )
    rows = dict(summary_rows(result))
    assert rows["result"] == "created, verified" and rows["torch build"] == "CUDA 12.4"
    assert "expected on a login node" in rows["cuda available"]
    assert "2.5% of 200 GiB" in rows["venv size"] and "5.0% of 1M" in rows["venv size"]


def test_venv_warning_names_requirements_the_venv_does_not_hold(tmp_path: Path) -> None:
    """`submit` of a project workload passes its requirements: a venv set up for others is
    named; a marker from before markers held requirements cannot tell, and says nothing."""
    from hpcjob.config import Profile, Settings
    from hpcjob.env.setup import venv_warning
    from hpcjob.run.context import Context
    from hpcjob.scheduler.slurm import SlurmScheduler

    shell = ReplayShell({})
    ctx = Context(Settings(tmp_path), Profile("snellius", {"venv": "~/venv", "modules": ["2025"]}))
    ctx._scheduler = SlurmScheduler(shell, "slurm:test")
    marker = {
        "fingerprint": "f",
        "environment": environment_key(["2025"], "python3"),
        "requirements_sha256": requirements_sha256("torch\nnumpy\n"),
    }
    shell.files["/home/u/venv/.hpcjob-env.json"] = json.dumps(marker).encode()
    assert venv_warning(ctx) is None
    assert venv_warning(ctx, requirements="# ours\ntorch\nnumpy\n") is None
    warning = venv_warning(ctx, requirements="torch\nnumpy\npandas\n")
    assert warning is not None
    assert "does not hold the project's current requirements" in warning
    assert "hpcjob setup-env --profile snellius" in warning
    del marker["requirements_sha256"]
    shell.files["/home/u/venv/.hpcjob-env.json"] = json.dumps(marker).encode()
    assert venv_warning(ctx, requirements="pandas\n") is None
    del shell.files["/home/u/venv/.hpcjob-env.json"]
    assert "was not set up by hpcjob setup-env" in (venv_warning(ctx, requirements="x") or "")


def _config(home: Path, body: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'default_profile = "mine"\n[profiles.mine]\n{body}')


def test_cli_refuses_a_profile_without_venv(isolated_home: Path) -> None:
    _config(isolated_home, 'scheduler = "local"\n')
    result = invoke("setup-env", "--profile", "mine")
    assert result.exit_code == 2
    assert "has no venv path" in result.stderr and "venv =" in result.stderr


def test_cli_refuses_unicode_module_before_running(isolated_home: Path) -> None:
    _config(
        isolated_home,
        'scheduler = "local"\nvenv = "/nonexistent/v"\n'
        'modules = ["2025", "Python/3.13.1\u2010GCCcore\u201014.2.0"]\n',
    )
    result = invoke("setup-env", "--profile", "mine")
    assert result.exit_code == 2
    assert "U+2010" in result.stderr and "Python/3.13.1-GCCcore-14.2.0" in result.stderr
    assert (
        not (isolated_home / "ledger.db").exists()
        or "setup-env" not in invoke("runs", "--json", "--profile", "mine").stdout
    )


def test_cli_local_profile_creates_and_records(isolated_home: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _config(isolated_home, f'scheduler = "local"\nvenv = "{venv}"\npython = "{SYSTEM_PYTHON}"\n')
    empty = tmp_path / "req.txt"
    empty.write_text("")
    first = invoke("setup-env", "-P", "mine", "--requirements", str(empty), "--json")
    assert first.exit_code == 0, first.stderr
    assert first.json()["action"] == "create" and first.json()["state"] == "COMPLETED"
    again = invoke("setup-env", "-P", "mine", "--requirements", str(empty), "--json")
    assert again.json()["up_to_date"] is True
    runs = invoke("runs", "-P", "mine", "--json").json()
    assert [r["state"] for r in runs] == ["COMPLETED", "COMPLETED"]
    assert {r["workload"] for r in runs} == {"setup-env"}


# -- streaming (LocalShell) -------------------------------------------------------------------


def test_local_stream_hands_output_on_while_the_command_runs(tmp_path: Path) -> None:
    from hpcjob.shell import LocalShell

    gate = tmp_path / "go"
    seen: list[str] = []

    def on_output(text: str) -> None:
        seen.append(text)
        if text.startswith("first"):
            gate.touch()  # the command goes on only once its first line has arrived here

    command = f"echo first; {bash_wait_for(gate)}; echo second >&2; printf '\\xc3'; printf '\\xa9'"
    done = LocalShell().stream(["bash", "-c", command], on_output)
    # Had "first" come only at the end, the command would have waited for the gate in vain.
    assert done.returncode == 0, done.stderr
    assert done.stdout == "first\né" and done.stderr == "second\n"
    assert len(seen) >= 3 and seen[0] == "first\n"


def _kill_quietly(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_local_stream_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    """At its timeout the command is stopped with all it started. The timeout counts from the
    start, so on a busy machine the command may not have started its child by then: that try
    proves nothing, and the next one gets twice the time."""
    from hpcjob.shell import LocalShell

    pid_file = tmp_path / "child.pid"
    timeout = 0.5
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert timeout <= 64, "the command never started its child"
        # The child outlives every wait below: only the stop can end it in time.
        command = f"sleep 200 & echo $! > {pid_file}; wait"
        with pytest.raises(HpcjobError, match=re.escape(f"was stopped after {timeout:g} s")):
            LocalShell().stream(["bash", "-c", command], lambda _text: None, timeout=timeout)
        timeout *= 2
    child = int(pid_file.read_text())
    try:
        wait_until(lambda: process_gone(child), "the command's child to be stopped")
    finally:
        _kill_quietly(child)


def test_local_stream_interrupted_by_the_callback_stops_the_command(tmp_path: Path) -> None:
    from hpcjob.shell import LocalShell

    def interrupt(_text: str) -> None:
        raise KeyboardInterrupt

    shell_pid, child_pid = tmp_path / "pid", tmp_path / "child"
    command = f"echo $$ > {shell_pid}; sleep 200 & echo $! > {child_pid}; echo go; wait"
    with pytest.raises(KeyboardInterrupt):
        LocalShell().stream(["bash", "-c", command], interrupt)
    pids = [int(shell_pid.read_text()), int(child_pid.read_text())]  # written before "go"
    try:
        for pid in pids:
            wait_until(lambda pid=pid: process_gone(pid), f"process {pid} to be stopped")
    finally:
        for pid in pids:
            _kill_quietly(pid)


# -- progress ---------------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "setup-env"


def _fixture(name: str) -> dict[str, object]:
    return json.loads((FIXTURES / name).read_text())


def test_progress_follows_steps_and_pip_in_chunks_split_mid_line() -> None:
    from hpcjob.envlog import SetupProgress
    from hpcjob.envscript import STEP_PREFIX

    pip = str(_fixture("pip_no_space.json")["output"])
    text = (
        f"{STEP_PREFIX}python\npython:     python3 is Python 3.11.2\n{STEP_PREFIX}venv create\n"
        f"{STEP_PREFIX}install pip 2\n{pip}"
        "Collecting six\nRequirement already satisfied: six in ./venv\n"
    )
    progress = SetupProgress(requirements=("six", "torch"))
    labels = []
    for start in range(0, len(text), 7):  # lines arrive split across reads
        if progress.feed(text[start : start + 7]):
            labels.append(progress.label)
    assert labels[:4] == [
        "checking python",
        "creating venv",
        "installing: with pip",
        "installing torch (2/2)",
    ]
    assert "installing sympy (a dependency)" in labels
    assert "installing: unpacking 10 packages" in labels
    assert labels[-1] == "installing six (1/2)"
    assert progress.recent[-1] == "Requirement already satisfied: six in ./venv"


def test_plain_progress_prints_one_line_per_step_with_elapsed_time() -> None:
    from hpcjob.cli.output import ProgressDisplay
    from hpcjob.envscript import STEP_PREFIX

    now = [100.0]
    lines: list[str] = []
    display = ProgressDisplay(plain=True, clock=lambda: now[0], write=lines.append)
    with display.running(("six",), "/runs/r1/setup-env.log"):
        display.feed(f"{STEP_PREFIX}venv create\nnoise\n")
        now[0] = 112.0
        display.feed("more noise\n")
        display.feed(f"{STEP_PREFIX}verify\n")
    assert lines == [
        "setup-env: log /runs/r1/setup-env.log",
        "setup-env [   0 s] creating venv",
        "setup-env [  12 s] verifying",
    ]


# -- modules ------------------------------------------------------------------------------------

MODULES = ("2025", "Python/3.13.1-GCCcore-14.2.0")


@pytest.mark.parametrize(
    ("fixture", "tool", "said"),
    [
        (
            "module_lmod_unknown.json",
            "lmod",
            'The following module(s) are unknown: "Python/3.13.1-GCCcore-14.2.0"',
        ),
        (
            "module_envmodules_unknown.json",
            "environment-modules",
            "Unable to locate a modulefile for 'Python/3.13.1-GCCcore-14.2.0'",
        ),
    ],
)
def test_unknown_module_is_named_from_recorded_tool_output(
    fixture: str, tool: str, said: str
) -> None:
    from hpcjob.envlog import module_problem

    recorded = _fixture(fixture)
    output = str(recorded["stdout"]) + str(recorded["stderr"])
    result = EnvResult(
        ok=False, stage="modules", error="module_not_found", extra={"module_index": 1}
    )
    problem = module_problem(result, output, MODULES)
    assert problem is not None
    assert (problem.module, problem.tool, problem.said) == (MODULES[1], tool, said)
    request = dataclasses.replace(BASE, modules=MODULES)
    err = result_error(result, request, output)
    assert "The module Python/3.13.1-GCCcore-14.2.0 does not exist" in err.message
    assert err.hint is not None
    assert "module spider Python" in err.hint and "module avail Python" in err.hint
    assert "software year" not in err.hint  # 2025 is loaded before it


def _run_script(tmp_path: Path, request: EnvRequest, env: dict[str, str]) -> tuple[int, str]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "requirements.txt").write_text(request.requirements)
    (run_dir / "setup-env.sh").write_text(render_setup_script(request))
    done = subprocess.run(
        ["bash", str(run_dir / "setup-env.sh")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
    )
    return done.returncode, done.stdout + done.stderr


def test_script_stops_at_the_first_unknown_module(tmp_path: Path) -> None:
    """A `module` function (exported, as Lmod's init exports it) replaying Lmod's recorded
    answer for the second module: the script fails there, names it, and creates nothing."""
    recorded = _fixture("module_lmod_unknown.json")
    said = tmp_path / "lmod-said.txt"
    said.write_text(str(recorded["stderr"]))
    loaded = tmp_path / "loaded.txt"
    function = (
        f'() {{ echo "$*" >> {loaded}; '
        f'if [ "$2" = "{MODULES[1]}" ]; then cat {said} >&2; return 1; fi; }}'
    )
    venv = tmp_path / "venv"
    request = EnvRequest(venv=str(venv), python=SYSTEM_PYTHON, modules=MODULES)
    rc, output = _run_script(tmp_path, request, {"BASH_FUNC_module%%": function})
    result = parse_result(output)
    assert rc == 10 and (result.stage, result.error) == ("modules", "module_not_found")
    assert result.extra["module_index"] == 1
    assert loaded.read_text().splitlines() == ["purge", "load 2025", f"load {MODULES[1]}"]
    assert not venv.exists()
    err = result_error(result, request, output)
    assert f"The module {MODULES[1]} does not exist" in err.message
    assert "module(s) are unknown" in err.message


def test_script_without_a_module_command_says_so(tmp_path: Path) -> None:
    request = EnvRequest(venv=str(tmp_path / "venv"), python=SYSTEM_PYTHON, modules=("2025",))
    rc, output = _run_script(tmp_path, request, {"MODULESHOME": str(tmp_path / "none")})
    result = parse_result(output)
    assert rc == 10 and result.error == "no_module_command"
    err = result_error(result, request, output)
    assert "has no `module` command" in err.message and "2025" in err.message
    assert err.hint is not None and "remove `modules`" in err.hint


def test_first_module_not_a_year_suggests_loading_the_year() -> None:
    result = EnvResult(ok=False, stage="modules", error="module_not_found", extra={})
    request = dataclasses.replace(BASE, modules=("Python/3.13.1-GCCcore-14.2.0",))
    output = "ERROR: Unable to locate a modulefile for 'Python/3.13.1-GCCcore-14.2.0'\n"
    err = result_error(result, request, output)
    assert err.hint is not None and 'modules = ["2025"' in err.hint


# -- a full disk ---------------------------------------------------------------------------------

DISK = [
    {"what": "venv", "path": "/scratch/v", "mount": "/scratch", "free_bytes": 1024**2,
     "size_bytes": 30 * 1024**2, "free_files": 5000, "files": 6000},
    {"what": "tmp", "path": "/tmp", "mount": "/", "free_bytes": 50 * 1024**3,
     "size_bytes": 250 * 1024**3, "free_files": 10**6, "files": 10**7},
]  # fmt: skip


def test_no_space_names_the_filesystem_the_venv_size_and_the_way_out() -> None:
    output = str(_fixture("pip_no_space.json")["output"]) + f'{RESULT_PREFIX}{{"ok": false}}\n'
    result = EnvResult(
        ok=False,
        stage="install",
        error="install_failed",
        venv_bytes=30 * 1024**2,
        venv_files=2400,
        extra={"disk": DISK},
    )
    request = dataclasses.replace(BASE, venv="/scratch/v")
    err = result_error(result, request, output)
    assert "No space left on device on /scratch (the venv's filesystem)" in err.message
    assert "0.00 GiB free of 0.03 GiB" in err.message
    assert "The venv is 0.03 GiB in 2,400 files so far" in err.message
    assert "[Errno 28] No space left on device" in err.message  # the log's tail …
    assert RESULT_PREFIX not in err.message  # … without the script's own lines
    assert err.hint is not None
    assert "myquota" in err.hint and "--installer uv" in err.hint and "/projects" in err.hint


def test_verify_and_disk_probe_measure_the_venv_alike(tmp_path: Path) -> None:
    """Both embedded scripts report the venv's size and file count with the one shared walk."""
    from hpcjob.envscript import _DISK, _VERIFY

    venv = tmp_path / "venv"
    (venv / "lib" / "deep").mkdir(parents=True)
    for name, size in (("a", 1), ("lib/b", 10), ("lib/deep/c", 100)):
        (venv / name).write_bytes(b"x" * size)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to("/nonexistent")  # counted by lstat, not followed
    link = len(str(Path("/nonexistent")))

    def run(code: str, *args: str) -> str:
        done = subprocess.run(
            [SYSTEM_PYTHON, "-", *args], input=code, capture_output=True, text=True
        )
        return done.stdout

    disk = json.loads("{" + run(_DISK, str(venv), str(venv), str(tmp_path)).lstrip(", ") + "}")
    assert (disk["venv_bytes"], disk["venv_files"]) == (111 + link, 4)
    assert disk["disk"][0]["what"] == "venv"
    args = ("P:", "m", "f", "verify", "0", "pip", str(venv), "e", "r")
    verify = parse_result(run(_VERIFY, *args).replace("P:", RESULT_PREFIX, 1))
    assert (verify.venv_bytes, verify.venv_files) == (111 + link, 4)
    assert verify.ok and not (venv / "m").exists()  # `verify` writes no marker


def test_quota_and_a_named_path_pick_that_filesystem() -> None:
    from hpcjob.envlog import disk_full

    output = "OSError: [Errno 122] Disk quota exceeded: '/tmp/pip-unpack-1/torch.whl'\n"
    full = disk_full(output, DISK)
    assert full is not None and full.quota and full.mount == "/" and full.what == "tmp"
    assert disk_full("all went fine", DISK) is None
    result = EnvResult(ok=False, stage="install", error="install_failed", extra={"disk": DISK})
    err = result_error(result, BASE, output)
    assert "Disk quota exceeded on / ($TMPDIR's filesystem: /tmp/pip-unpack-1" in err.message
    assert "your quota there is used up" in err.message


# -- interrupted login-node runs -----------------------------------------------------------------


def _slow_python(tmp_path: Path) -> Path:
    """A `python` that hangs, as a stuck install does; it notes its pid."""
    fake = tmp_path / "slow-python"
    # It outlives every wait of the tests: only hpcjob stopping the script can end it in time.
    fake.write_text(f"#!/bin/bash\necho $$ > {tmp_path}/slow.pid\nexec sleep 200\n")
    fake.chmod(0o755)
    return fake


def _login_context(isolated_home: Path, tmp_path: Path, python: Path) -> object:
    from hpcjob.run.context import open_context

    _config(
        isolated_home,
        f'scheduler = "local"\nvenv = "{tmp_path / "venv"}"\npython = "{python}"\n',
    )
    return open_context("mine")


def test_login_run_that_times_out_ends_failed_with_its_log(
    isolated_home: Path, tmp_path: Path
) -> None:
    """The timeout counts from the start: a try that ends before the script reached its stuck
    python step (a busy machine) proves nothing, and the next one gets twice the time."""
    from hpcjob.env.setup import request_for, setup_on_login_node

    slow_pid = tmp_path / "slow.pid"
    ctx: Any = _login_context(isolated_home, tmp_path, _slow_python(tmp_path))
    request = request_for(ctx, "six\n")
    timeout = 1.5
    try:
        while True:
            with pytest.raises(HpcjobError) as failed:
                setup_on_login_node(ctx, request, timeout_s=timeout)
            if slow_pid.exists() and slow_pid.read_text().strip():
                break
            timeout *= 2
            assert timeout <= 96, "the script never reached its python step"
        message = failed.value.message
        assert "did not finish" in message and "recorded FAILED" in message
        run = ctx.ledger.list_runs(profile="mine")[0]
        assert run.state.value == "FAILED" and f"stopped after {timeout:g} s" in (run.reason or "")
        log = Path(run.output_path).read_text()
        assert "HPCJOB-SETUP-ENV-STEP python" in log and "the script was stopped" in log
        stuck = int(slow_pid.read_text())
        wait_until(lambda: process_gone(stuck), "the stuck python to be stopped")
    finally:
        if slow_pid.exists() and slow_pid.read_text().strip():
            _kill_quietly(int(slow_pid.read_text()))
        ctx.close()


def test_login_run_interrupted_by_ctrl_c_ends_cancelled(
    isolated_home: Path, tmp_path: Path
) -> None:
    from hpcjob.cli.output import ProgressDisplay
    from hpcjob.env.setup import request_for, setup_on_login_node
    from hpcjob.envscript import STEP_PREFIX

    class CtrlC(ProgressDisplay):
        def feed(self, text: str) -> None:
            if f"{STEP_PREFIX}python" in text:
                raise KeyboardInterrupt

    ctx: Any = _login_context(isolated_home, tmp_path, _slow_python(tmp_path))
    with pytest.raises(HpcjobError) as stopped:
        setup_on_login_node(ctx, request_for(ctx, ""), display=CtrlC(plain=True))
    assert stopped.value.exit_code == 130 and "CANCELLED" in stopped.value.message
    run = ctx.ledger.list_runs(profile="mine")[0]
    assert run.state.value == "CANCELLED" and "Ctrl-C" in (run.reason or "")
    assert "interrupted (Ctrl-C)" in Path(run.output_path).read_text()
    ctx.close()


# -- the GPU check --------------------------------------------------------------------------------


def test_gpu_check_result_joins_summary_json_and_exit_code() -> None:
    from hpcjob.env.report import GpuCheck, gpu_error

    gpu = GpuCheck(
        run_id="r9",
        job_id="42",
        partition="gpu_a100",
        state="FAILED",
        cuda_available=False,
        gpus_visible=0,
        torch="2.13.0+cpu",
        cuda_build=None,
        reason="this job asked for 1 GPU but none is visible: torch 2.13.0+cpu is a CPU-only build",
    )
    rows = dict(summary_rows(EnvResult(ok=True, action="verify"), gpu))
    assert rows["gpu check"].startswith("FAILED: this job asked for 1 GPU")
    assert "job 42 on gpu_a100, run r9" in rows["gpu check"]
    err = gpu_error(gpu)
    assert err.exit_code == 3 and "CPU-only build" in err.message and "r9" in (err.hint or "")
    assert gpu.as_dict()["ok"] is False


def test_gpu_partition_prefers_the_profile_then_the_first_with_gpus(
    isolated_home: Path,
) -> None:
    from hpcjob.env.setup import gpu_partition
    from hpcjob.run.context import open_context

    def part(name: str, gpus: dict[str, int]) -> dict[str, object]:
        return {"name": name, "is_default": False, "avail": "up", "max_time_s": 3600,
                "nodes": 1, "nodes_allocated": 0, "nodes_idle": 1, "nodes_other": 0,
                "cpus_per_node": 4, "mem_mb": 1000, "gpus_per_node": gpus}  # fmt: skip

    _config(isolated_home, 'scheduler = "slurm"\nvenv = "~/v"\n')
    cache = isolated_home / "cache" / "partitions-mine.json"
    cache.parent.mkdir(parents=True)
    parts = [part("rome", {}), part("gpu_a100", {"a100": 2}), part("gpu_h100", {"h100": 2})]
    cache.write_text(json.dumps(parts))
    assert gpu_partition(open_context("mine"), None) == "gpu_a100"
    assert gpu_partition(open_context("mine"), "gpu_h100") == "gpu_h100"
    with (isolated_home / "config.toml").open("a") as handle:
        handle.write('[profiles.mine.partitions]\ntrain = "gpu_h100"\n')
    assert gpu_partition(open_context("mine"), None) == "gpu_h100"
    cache.write_text(json.dumps([part("rome", {})]))
    with pytest.raises(HpcjobError, match="no partition with GPUs"):
        gpu_partition(open_context("mine"), None)


def test_cli_check_gpu_refuses_the_embedded_scheduler_before_installing(
    isolated_home: Path, tmp_path: Path
) -> None:
    _config(isolated_home, f'scheduler = "local"\nvenv = "{tmp_path / "v"}"\n')
    result = invoke("setup-env", "-P", "mine", "--check-gpu")
    assert result.exit_code == 2 and "--check-gpu submits a job" in result.stderr
    assert not (tmp_path / "v").exists()


def test_ssh_relay_drops_login_noise_and_keeps_split_characters() -> None:
    from hpcjob.ssh.channel import Relay

    got: list[str] = []
    relay = Relay("__m__", got.append)
    data = "motd says hi\n__m__\ncaf\u00e9 ok\n".encode()
    for index in range(len(data)):  # one byte at a time: the marker and é arrive split
        relay.feed(0, data[index : index + 1])
    assert "".join(got) == "caf\u00e9 ok\n"
    relay.feed(1, b"__m__\nwarning\n")
    assert got[-1] == "warning\n"


def test_python_that_does_not_run_is_named(tmp_path: Path) -> None:
    request = EnvRequest(venv=str(tmp_path / "venv"), python=str(tmp_path / "no-python"))
    rc, output = _run_script(tmp_path, request, {})
    result = parse_result(output)
    assert rc == 5 and result.error == "python_not_found"
    err = result_error(result, request, output)
    assert f"The profile's python ('{tmp_path}/no-python') does not run" in err.message
    assert err.hint is not None and "Python/3.13.1-GCCcore-14.2.0" in err.hint


# -- a venv this user cannot write (issue 16) ----------------------------------------------------


def test_cli_a_venv_whose_marker_cannot_be_written_is_a_clear_error(
    isolated_home: Path, tmp_path: Path
) -> None:
    """The failing write is real, at the real place: the script's verify step writes the marker
    through `<venv>/.hpcjob-env.json.tmp`, here a folder, so open() fails as it does in a venv
    another user owns (tests run as root, where permissions do not bite; the permission case
    itself runs as the test cluster's user in tests/integration/test_setup_env.py)."""
    venv = tmp_path / "venv"
    _config(isolated_home, f'scheduler = "local"\nvenv = "{venv}"\npython = "{SYSTEM_PYTHON}"\n')
    requirements = tmp_path / "req.txt"
    requirements.write_text("")
    assert invoke("setup-env", "-P", "mine", "--requirements", str(requirements)).exit_code == 0
    requirements.write_text("# nothing to install, but another fingerprint: an update\n")
    (venv / ".hpcjob-env.json.tmp").mkdir()
    result = invoke("setup-env", "-P", "mine", "--requirements", str(requirements))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr and "15 minutes" not in result.stderr
    assert f"The venv at {venv} cannot be written by this user" in result.stderr
    assert ".hpcjob-env.json.tmp" in result.stderr  # what failed, in the OS's words
    assert "`venv` in the profile" in result.stderr and "permissions" in result.stderr
    runs = invoke("runs", "-P", "mine", "--json").json()
    assert runs[0]["state"] == "FAILED"


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("venv", "The venv at /shared/venv is not writable by this user"),
        ("contents", "Parts (bin/ or site-packages) of the venv at /shared/venv are not writable"),
        ("folder", "The folder the venv /shared/venv goes in is not writable by this user"),
    ],
)
def test_a_venv_not_writable_names_what_and_the_fix(where: str, said: str) -> None:
    result = EnvResult(ok=False, stage="venv", error="venv_not_writable", extra={"where": where})
    request = dataclasses.replace(BASE, venv="/shared/venv")
    err = result_error(result, request, "rm: cannot remove '/shared/venv/x': Permission denied\n")
    assert said in err.message
    assert "nothing was changed" in err.message
    assert err.hint is not None and "`venv` in the profile" in err.hint
    assert "15 minutes" not in err.hint and "--as-job" not in err.hint


def test_a_script_that_ended_without_a_result_gets_no_unrelated_hint() -> None:
    ended = EnvResult(ok=False, stage="script", error="ended with exit status 1")
    err = result_error(ended, BASE, "Traceback (most recent call last):\nOSError: boom\n")
    assert err.hint is not None and "15 minutes" not in err.hint
    killed = EnvResult(ok=False, stage="script", error="was killed (signal 9)")
    err = result_error(killed, BASE, "")
    assert err.hint is not None and "15 minutes" in err.hint
