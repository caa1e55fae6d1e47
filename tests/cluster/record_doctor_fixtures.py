#!/usr/bin/env python3
"""Record the outputs `hpcjob doctor` parses into tests/fixtures/doctor/*.json (never typed by
hand): `df -P`/`df -Pi` of a roomy filesystem and of a nearly full one (a small tmpfs mounted for
the purpose, filled, then unmounted), and the doctor's probe script (hpcjob/probe.py) run as the
test user on the test cluster for a healthy profile, a damaged data folder, modules where there
is no `module` command and a venv that was never made.

Run as root where tests/cluster/start.sh has brought the test cluster up, with the repo's venv:

    .venv/bin/python tests/cluster/record_doctor_fixtures.py

Each fixture holds the argv (the probe's script itself replaced by a placeholder), the df
version, the user, a note, the exit status, stdout and stderr, like record_fixtures.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "tests" / "fixtures" / "doctor"
STATE = Path(os.environ.get("HPCJOB_TEST_CLUSTER_DIR", "/var/tmp/hpcjob-test-cluster"))
USER = "hpctest"

sys.path.insert(0, str(REPO))
from hpcjob.insight.doctor import PCAM_FILES  # noqa: E402
from hpcjob.probe import probe_argv  # noqa: E402


def save(
    name: str, argv: list[str], proc: subprocess.CompletedProcess[str], note: str, user: str
) -> None:
    shown = [
        "<hpcjob.probe script>" if i == 2 and argv[0] == "bash" else a for i, a in enumerate(argv)
    ]
    version = subprocess.run(["df", "--version"], capture_output=True, text=True).stdout
    data = {
        "command": shown,
        "df_version": version.splitlines()[0],
        "user": user,
        "note": note,
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"recorded {name}")


def as_user(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = [f"HOME=/home/{USER}", "PATH=/usr/local/bin:/usr/bin:/bin"]
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return subprocess.run(
        [runuser, "-u", USER, "--", "env", "-i", *env, *argv], capture_output=True, text=True,
        timeout=300, cwd="/",
    )  # fmt: skip


def record_df() -> None:
    for flag, name in (("-P", "df_roomy"), ("-Pi", "dfi_roomy")):
        argv = ["df", flag, "--", "/"]
        save(
            name, argv, subprocess.run(argv, capture_output=True, text=True), "the root fs", "root"
        )
    with tempfile.TemporaryDirectory() as mount:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=64", "tmpfs", mount],
                       check=True)  # fmt: skip
        try:
            (Path(mount) / "big").write_bytes(b"\0" * (7 * 1024 * 1024 + 512 * 1024))
            for i in range(58):
                (Path(mount) / f"f{i}").touch()
            for flag, name in (("-P", "df_full"), ("-Pi", "dfi_full")):
                argv = ["df", flag, "--", mount]
                note = "an 8 MiB tmpfs with 64 inodes, 7.5 MiB and 59 files written"
                save(name, argv, subprocess.run(argv, capture_output=True, text=True), note, "root")
        finally:
            subprocess.run(["umount", mount], check=True)


def record_probe(venv: str, pcam: str) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="doctor-fixtures-", dir=STATE / "scratch"))
    damaged = scratch / "pcam-damaged"
    damaged.mkdir()
    for name in PCAM_FILES[:3]:
        shutil.copy(Path(pcam) / name, damaged / name)
    x = damaged / PCAM_FILES[0]
    x.write_bytes(x.read_bytes()[:4096])  # cut short: h5py cannot open it
    subprocess.run(["chmod", "-R", "a+rX", str(scratch)], check=True)
    cases = [
        ("probe_healthy", "/usr/bin/python3", venv, pcam, [], "a set-up venv, the synthetic PCAM"),
        ("probe_damaged_data", "/usr/bin/python3", venv, str(damaged), [],
         "train_x cut to 4 KiB, valid_y missing"),
        ("probe_no_module_command", "/usr/bin/python3", venv, pcam, ["2025"],
         "modules on a machine without `module`"),
        ("probe_no_venv", "/usr/bin/python3", f"/home/{USER}/hpcjob/never-made", pcam, [],
         "a venv that was never set up; the data read by the profile's python"),
    ]  # fmt: skip
    try:
        for name, python, venv_dir, data, modules, note in cases:
            argv = probe_argv(
                python, venv_dir, data, "~/hpcjob/runs", data_files=PCAM_FILES, modules=modules
            )
            save(name, argv, as_user(argv), note, USER)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    venvs = sorted((STATE / "venvs").glob("*/bin/python"))
    pcam = sorted((STATE / "scratch").glob("pcam-synth-*"))
    if not venvs or not pcam:
        sys.exit("run the integration tests once first: they make the test user's venv and data")
    record_df()
    record_probe(str(venvs[0].parent.parent), str(pcam[0]))


if __name__ == "__main__":
    main()
