"""`hpcjob doctor`: the pure parsers on recorded outputs (df -P / -Pi, the probe's lines, Python
versions), the checks with an injected shell that replays what the test cluster printed, and the
command itself on the embedded profile."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hpcjob.checkup import disk_status, hpcjob_python_finding, purged_prefix
from hpcjob.config import load_settings, resolve_profile
from hpcjob.envscript import MARKER_NAME, environment_key
from hpcjob.errors import HpcjobError
from hpcjob.insight.doctor import CHECKS, PCAM_FILES, diagnose, failed
from hpcjob.probe import (
    parse_df,
    parse_probe,
    parse_python_version,
    probe_argv,
)
from hpcjob.run.context import Context
from hpcjob.scheduler.slurm import SlurmScheduler
from hpcjob.shell import CommandResult
from tests.helpers import ReplayShell, invoke, recorded

DOCTOR = Path(__file__).parent / "fixtures" / "doctor"
VENV = "/var/tmp/hpcjob-test-cluster/venvs/02cdb2ec6add"  # as in the recorded probes
PCAM = "/var/tmp/hpcjob-test-cluster/scratch/pcam-synth-1024-256-256-seed11"


def fixture(name: str) -> CommandResult:
    data = json.loads((DOCTOR / f"{name}.json").read_text())
    return CommandResult(tuple(data["command"]), data["returncode"], data["stdout"], data["stderr"])


# ------------------------------------------------------------------------------ the parsers


def test_df_of_a_roomy_filesystem_is_ok() -> None:
    space = parse_df(fixture("df_roomy").stdout)
    inodes = parse_df(fixture("dfi_roomy").stdout)
    assert [row.mount for row in space] == ["/"] and space[0].total > space[0].free > 0
    status, said = disk_status(space[0], inodes[0])
    assert status == "ok"
    assert "GiB free of" in said and "inodes used" in said


def test_df_of_a_nearly_full_filesystem_warns() -> None:
    space = parse_df(fixture("df_full").stdout)[0]
    inodes = parse_df(fixture("dfi_full").stdout)[0]
    assert (space.total, space.free) == (8192, 512)
    assert (inodes.total, inodes.used) == (64, 60)
    assert disk_status(space, None)[0] == "warn"  # 0.5 MiB free
    assert disk_status(space, inodes) == ("warn", disk_status(space, inodes)[1])
    assert "94% of 64 inodes used" in disk_status(space, inodes)[1]


def test_df_skips_headers_and_error_lines() -> None:
    text = "df: /nope: No such file or directory\n" + fixture("df_roomy").stdout
    assert len(parse_df(text)) == 1
    assert parse_df("") == []


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("3.9.18", (3, 9, 18)),
        ("Python 3.13.1", (3, 13, 1)),
        ("3.10", (3, 10, 0)),
        ("python3: command not found", None),
        ("", None),
    ],
)
def test_python_versions(text: str, version: tuple[int, int, int] | None) -> None:
    assert parse_python_version(text) == version


def test_hpcjob_on_an_old_python_on_a_login_node_fails_with_the_supported_ways() -> None:
    found = hpcjob_python_finding((3, 9, 18), "/usr/bin/python3", on_login_node=True)
    assert found.status == "fail"
    assert "3.9.18" in found.found and "3.10" in found.found
    assert found.fix is not None and "uv tool install hpcjob" in found.fix
    assert "module load 2025 Python/3.13.1-GCCcore-14.2.0" in found.fix
    ok = hpcjob_python_finding((3, 13, 1), "/sw/python3", on_login_node=True)
    assert ok.status == "ok" and "uv tool install" in ok.found
    assert hpcjob_python_finding((3, 11, 2), "/usr/bin/python3", False).status == "ok"


def test_the_probe_ignores_what_login_files_print() -> None:
    text = "Welcome to the cluster\n@doctor\tpython\tversion\t3.9.18\t/usr/bin/python3\n@doc\n"
    found = parse_probe(text)
    assert found.first("python") == ("version", "3.9.18", "/usr/bin/python3")
    assert not found.complete
    assert parse_probe(fixture("probe_healthy").stdout).complete


def test_the_probe_takes_values_as_arguments_never_as_script(tmp_path: Path) -> None:
    hostile = tmp_path / "$(touch pwned)'; touch pwned2; '"
    argv = probe_argv("python3", None, str(hostile), str(tmp_path / "runs"), data_files=PCAM_FILES)
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    found = parse_probe(done.stdout)
    assert found.complete, done.stderr
    assert found.first("data") == ("missing_dir", str(hostile))
    assert not list(tmp_path.glob("pwned*"))


def test_purged_prefixes() -> None:
    purged = {"/scratch-shared/": 14, "/scratch-local/": 6}
    assert purged_prefix("/scratch-shared/u/runs", purged) == "/scratch-shared/"
    assert purged_prefix("/scratch-sharedx/u", purged) is None
    assert purged_prefix("~/hpcjob/runs", purged) is None


# ------------------------------------------------------------------------------ the checks


WHO = CommandResult(("sh",), 0, "hpctest\tint5\t/home/hpctest\n", "")


def doctor_context(home: Path, shell: ReplayShell, **values: Any) -> Context:
    """A Slurm profile with a host whose login node is `shell` (the probe's answers recorded)."""
    lines = ["[profiles.lab]", 'host = "login.example.org"', 'python = "/usr/bin/python3"']
    settings = {"venv": VENV, "data_dir": PCAM, "remote_root": "~/hpcjob/runs", **values}
    for key, value in settings.items():
        if isinstance(value, dict):  # an inline table
            pairs = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items())
            lines.append(f"{key} = {{{pairs}}}")
        elif value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    settings_ = load_settings()
    profile = resolve_profile(settings_, profile_flag="lab")
    return Context(settings_, profile, _scheduler=SlurmScheduler(shell, "slurm:lab"))


def replay(probe: str, marker: bool = True, **more: list[CommandResult]) -> ReplayShell:
    # Two bash commands, in the checks' order: the accounts query, then the probe.
    bash = [recorded("access_course"), *more.pop("bash", [fixture(probe)])]
    shell = ReplayShell({"sh": [WHO], "bash": bash, "sinfo": [recorded("sinfo_idle")], **more})
    if marker:
        key = environment_key([], "/usr/bin/python3")
        shell.files[f"{VENV}/{MARKER_NAME}"] = json.dumps({"environment": key}).encode()
    return shell


def by_check(findings: list[Any]) -> dict[str, Any]:
    return {f.check: f for f in findings}


def test_a_healthy_profile_gives_each_check_a_finding(isolated_home: Path) -> None:
    shell = replay("probe_healthy")
    ctx = doctor_context(isolated_home, shell, partitions={"train": "gpu_a100"})
    found = diagnose(ctx)
    checks = by_check(found)
    assert list(checks) == [
        "python",
        "profile",
        "host key",
        "connection",
        "partitions",
        "accounts",
        "modules",
        "cluster python",
        "venv",
        "data",
        "quota",
        "purge",
    ]
    assert failed(found) == []
    assert checks["connection"].found.startswith("logged in as hpctest on int5")
    assert "train → gpu_a100" in checks["partitions"].found
    assert checks["venv"].status == "ok" and "torch 2.13.0" in checks["venv"].found
    assert checks["data"].status == "ok" and "train_x 1024x96x96x3 uint8" in checks["data"].found
    assert checks["quota"].status == "ok"
    assert checks["accounts"].status == "ok"
    assert "hpctest_acct (default): rome" in checks["accounts"].found
    # One probe for the modules, the venv, the data and the disks: one round trip; and the
    # accounts query.
    assert shell.commands().count("bash") == 2


def test_a_damaged_data_folder_fails_naming_the_files(isolated_home: Path) -> None:
    ctx = doctor_context(isolated_home, replay("probe_damaged_data"))
    found = diagnose(ctx)
    data = by_check(found)["data"]
    assert data.status == "fail"
    assert "camelyonpatch_level_2_split_train_x.h5 error OSError" in data.found
    assert "camelyonpatch_level_2_split_valid_y.h5 missing" in data.found
    assert data.fix is not None and "data_dir" in data.fix
    assert failed(found) == ["data"]


def test_a_venv_never_set_up_warns_with_setup_env(isolated_home: Path) -> None:
    ctx = doctor_context(isolated_home, replay("probe_no_venv", marker=False))
    checks = by_check(diagnose(ctx))
    assert checks["venv"].status == "warn"
    assert "does not exist" in checks["venv"].found
    assert checks["venv"].fix == "hpcjob setup-env --profile lab"
    assert checks["data"].status == "warn" and "cannot import h5py" in checks["data"].found


def test_a_venv_without_marker_warns(isolated_home: Path) -> None:
    ctx = doctor_context(isolated_home, replay("probe_healthy", marker=False))
    venv = by_check(diagnose(ctx))["venv"]
    assert venv.status == "warn" and "was not set up by hpcjob setup-env" in venv.found


def test_a_profile_without_venv_warns(isolated_home: Path) -> None:
    ctx = doctor_context(isolated_home, replay("probe_healthy"), venv=None)
    venv = by_check(diagnose(ctx))["venv"]
    assert venv.status == "warn" and "has no venv" in venv.found
    assert venv.fix is not None and "hpcjob setup-env --profile lab" in venv.fix


def test_modules_without_a_module_command(isolated_home: Path) -> None:
    ctx = doctor_context(isolated_home, replay("probe_no_module_command"), modules=["2025"])
    found = diagnose(ctx)
    modules = by_check(found)["modules"]
    assert modules.status == "fail" and "`module` is not a command" in modules.found
    assert failed(found) == ["modules"]


def test_an_old_cluster_python_warns_with_the_module_python(isolated_home: Path) -> None:
    old = fixture("probe_healthy").stdout.replace(
        "python\tversion\t3.11.2", "python\tversion\t3.9.18"
    )
    shell = replay("probe_healthy", bash=[CommandResult(("bash",), 0, old, "")])
    python = by_check(diagnose(doctor_context(isolated_home, shell)))["cluster python"]
    assert python.status == "warn" and "Python 3.9.18" in python.found
    assert python.fix is not None and "Python/3.13.1-GCCcore-14.2.0" in python.fix


def test_a_missing_partition_fails_with_the_ones_there(isolated_home: Path) -> None:
    ctx = doctor_context(isolated_home, replay("probe_healthy"), partitions={"train": "gpu_course"})
    parts = by_check(diagnose(ctx))["partitions"]
    assert parts.status == "fail" and "gpu_course (train)" in parts.found
    assert "rome, gpu_a100" in parts.found


class _Refusing(ReplayShell):
    def __init__(self, error: HpcjobError, **answers: list[CommandResult]) -> None:
        super().__init__(answers)
        self.error = error

    def run(self, argv: Any, **kw: Any) -> CommandResult:
        if argv[0] in self.answers:
            return super().run(argv, **kw)
        self.calls.append(list(argv))
        raise self.error


def test_an_unknown_host_key_fails_and_skips_the_remote_checks(isolated_home: Path) -> None:
    error = HpcjobError(
        "The host key of login.example.org is not known, so hpcjob did not connect.\n"
        "ED25519 key fingerprint is SHA256:abc.",
        hint="Compare the fingerprint …, then accept it: `hpcjob connect lab` shows it and asks",
    )
    ctx = doctor_context(isolated_home, _Refusing(error))
    found = diagnose(ctx)
    checks = by_check(found)
    assert checks["host key"].status == "fail" and "SHA256:abc" in checks["host key"].found
    assert checks["host key"].fix is not None and "hpcjob connect lab" in checks["host key"].fix
    for name in ("partitions", "modules", "venv", "data", "quota"):
        assert checks[name].status == "skip" and "no connection" in checks[name].found, name
    assert failed(found) == ["host key"]


def test_a_probe_that_times_out_says_so_and_the_rest_goes_on(isolated_home: Path) -> None:
    timeout = HpcjobError("`bash -c …` did not answer within 270 s on login.example.org.")
    shell = _Refusing(timeout, sh=[WHO], sinfo=[recorded("sinfo_idle")])
    found = diagnose(doctor_context(isolated_home, shell))
    checks = by_check(found)
    assert checks["connection"].status == "ok" and checks["partitions"].status == "ok"
    for name in ("modules", "venv", "data", "quota"):
        assert checks[name].status == "fail" and "did not answer" in checks[name].found, name
    assert checks["accounts"].status in ("warn", "fail")  # its own query timed out too
    # The accounts query once, the probe once — not once per check.
    assert shell.commands().count("bash") == 2


def test_a_check_that_breaks_does_not_stop_the_others(isolated_home: Path) -> None:
    def broken(doc: Any) -> list[Any]:
        raise KeyError("oops")

    ctx = doctor_context(isolated_home, replay("probe_healthy"))
    found = diagnose(ctx, [("broken", broken), *CHECKS])
    assert found[0].check == "broken" and found[0].status == "fail"
    assert "KeyError" in found[0].found
    assert by_check(found)["data"].status == "ok"


def test_purge_risk_of_data_runs_and_venv(isolated_home: Path) -> None:
    ctx = doctor_context(isolated_home, replay("probe_healthy"), purged={"/var/tmp/": 14})
    purge = [f for f in diagnose(ctx) if f.check == "purge"]
    assert [f.status for f in purge] == ["warn", "warn"]  # the data folder and the venv
    assert "under /var/tmp/" in purge[0].found and "venv" in purge[1].found


# ------------------------------------------------------------------------------ the command


def test_doctor_on_the_embedded_profile(isolated_home: Path) -> None:
    result = invoke("doctor")
    assert result.exit_code == 0, result.stderr
    for word in ("python", "connection", "quota"):
        assert word in result.stdout
    data = invoke("doctor", "--json")
    assert data.exit_code == 0
    rows = data.json()
    assert {row["status"] for row in rows} <= {"ok", "skip", "warn"}
    assert {"check", "status", "found", "fix"} == set(rows[0])
    assert [row["check"] for row in rows][:4] == ["python", "profile", "host key", "connection"]


def test_doctor_exits_1_when_a_check_fails(isolated_home: Path, tmp_path: Path) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.toml").write_text(
        f'[profiles.local]\ndata_dir = "{tmp_path / "no-such-data"}"\n'
    )
    result = invoke("doctor", "--json")
    assert result.exit_code == 1
    data = next(row for row in result.json() if row["check"] == "data")
    assert data["status"] == "fail" and "does not exist" in data["found"]
    human = invoke("doctor")
    assert human.exit_code == 1 and "failed: data" in " ".join(human.stderr.split())
    assert "Traceback" not in human.stderr


def test_the_starter_config_shows_the_login_node_profile(isolated_home: Path) -> None:
    """The starter file's `[profiles.slurm]` example, uncommented, gives setup-env the module
    Python the README promises (a login node's own python3 is too old)."""
    from hpcjob.config import write_starter_config
    from hpcjob.env.setup import request_for

    path = write_starter_config(load_settings())
    lines = path.read_text().splitlines()
    start = lines.index("# [profiles.slurm]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:] if line.startswith("# ") else "")
    path.write_text("\n".join(block) + "\n")
    settings = load_settings()
    profile = resolve_profile(settings, profile_flag="slurm")
    assert profile.modules == ["2025", "Python/3.13.1-GCCcore-14.2.0"]
    assert profile.get("venv") == "~/hpcjob/venv"
    request = request_for(Context(settings, profile), "six\n")
    assert request.modules == ("2025", "Python/3.13.1-GCCcore-14.2.0")


def test_x_and_y_of_a_split_must_hold_as_many_rows(isolated_home: Path) -> None:
    text = fixture("probe_healthy").stdout.replace(
        "split_train_y.h5\tok\t1024x1x1x1", "split_train_y.h5\tok\t1000x1x1x1"
    )
    shell = replay("probe_healthy", bash=[CommandResult(("bash",), 0, text, "")])
    data = by_check(diagnose(doctor_context(isolated_home, shell)))["data"]
    assert data.status == "fail" and "train: x has 1024 rows, y 1000" in data.found


def test_a_part_of_the_probe_that_hangs_is_stopped_and_said(tmp_path: Path) -> None:
    """A python that never answers (a hung filesystem, a stuck module Python): the probe stops
    that part after its limit, says `timeout`, and goes on to the rest."""
    hanging = tmp_path / "python3"
    hanging.write_text("#!/bin/sh\nexec sleep 60\n")
    hanging.chmod(0o755)
    argv = probe_argv(str(hanging), None, None, str(tmp_path), limit_s=1)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    found = parse_probe(done.stdout)
    assert found.complete, done.stderr
    assert found.first("python") == ("timeout", str(hanging))
    assert found.first("quota") is not None  # the disks were still measured


def test_imports_that_time_out_warn(isolated_home: Path) -> None:
    text = fixture("probe_healthy").stdout.replace(
        "@doctor\tvenv\timport\th5py\tok\t3.16.0\n", "@doctor\tvenv\ttimeout_imports\tpy\n"
    )
    shell = replay("probe_healthy", bash=[CommandResult(("bash",), 0, text, "")])
    venv = by_check(diagnose(doctor_context(isolated_home, shell)))["venv"]
    assert venv.status == "warn" and "took over 30 s" in venv.found


def test_accounts_against_the_profile(isolated_home: Path) -> None:
    # Recorded: hpctest has hpctest_acct (default) and hpctest_course; gpu_course is for
    # hpctest_course alone, thin_course for an account hpctest lacks.
    picked = doctor_context(
        isolated_home, replay("probe_healthy"), partitions={"train": "gpu_course"}
    )
    accounts = by_check(diagnose(picked))["accounts"]
    assert accounts.status == "warn"
    assert (
        "gpu_course (train) is not for hpctest_acct: hpcjob picks hpctest_course" in accounts.found
    )
    barred = doctor_context(
        isolated_home, replay("probe_healthy"), partitions={"eda": "thin_course"}
    )
    accounts = by_check(diagnose(barred))["accounts"]
    assert accounts.status == "fail" and "no account of yours may use thin_course" in accounts.found
    assert accounts.fix is not None and "hpcjob partitions --profile lab" in accounts.fix
    lacking = doctor_context(isolated_home, replay("probe_healthy"), account="nobody_acct")
    accounts = by_check(diagnose(lacking))["accounts"]
    assert accounts.status == "fail"
    assert "names account nobody_acct, which user hpctest does not have" in accounts.found
    assert "yours: hpctest_course, hpctest_acct" in accounts.found
