"""--stage-data: the node feature that gives a node-local disk, a private staging folder that is
removed when the job ends, and the warning for data on a purged filesystem."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hpcjob.errors import HpcjobError
from hpcjob.render import RenderContext, render_script, template_dirs
from hpcjob.run.prepare import purge_note
from hpcjob.spec import SpecRequest, build_spec, with_feature
from tests.helpers import Result

Invoke = Any

SNELLIUS_PURGED = {"/scratch-shared/": 14, "/scratch-local/": 6}


def render_snellius(cli: Invoke, *extra: str) -> Result:
    result: Result = cli(
        "render", "train", "-P", "snellius", "--data-dir", "/scratch-shared/u/pcam", *extra
    )
    assert result.exit_code == 0, result.stderr
    return result


def test_render_on_snellius_stages_into_a_private_folder_on_a_scratch_node(cli: Invoke) -> None:
    script = render_snellius(cli, "--stage-data").stdout
    assert "#SBATCH --constraint=scratch-node\n" in script
    assert 'hpcjob_stage_dir="$(mktemp -d -- "${TMPDIR:-/tmp}/hpcjob-data.XXXXXXXXXX")"' in script
    assert 'HPCJOB_DATA_DIR="$hpcjob_stage_dir"' in script
    assert "hpcjob-data-$HPCJOB_RUN_ID" not in script  # no predictable shared path
    trap = next(line for line in script.splitlines() if line.endswith("' EXIT"))
    # The copy goes before the exit status is written: a finished job has left nothing behind.
    assert trap.index('rm -rf -- "$hpcjob_stage_dir"') < trap.index('> "$hpcjob_exit_file"')


def test_a_users_constraint_is_combined_with_the_stage_feature(cli: Invoke) -> None:
    script = render_snellius(cli, "--stage-data", "--constraint", "a100").stdout
    assert "#SBATCH --constraint=a100&scratch-node\n" in script
    plain = render_snellius(cli, "--constraint", "a100").stdout
    assert "#SBATCH --constraint=a100\n" in plain and "mktemp" not in plain


def test_with_feature() -> None:
    assert with_feature(None, "scratch-node") == "scratch-node"
    assert with_feature("a100", "scratch-node") == "a100&scratch-node"
    assert with_feature("a100&scratch-node", "scratch-node") == "a100&scratch-node"  # a rerun
    assert with_feature("a100|h100", "scratch-node") == "(a100|h100)&scratch-node"
    assert with_feature("[a100|h100]", "scratch-node") == "[a100|h100]&scratch-node"
    # A rerun of that job: the recorded constraint is valid and not extended again.
    again = build_spec(SpecRequest(workload="gpu-check", constraint="(a100|h100)&scratch-node"))
    assert with_feature(again.resources.constraint, "scratch-node") == "(a100|h100)&scratch-node"
    with pytest.raises(HpcjobError, match="stage_constraint"):
        with_feature("a100", "x&y")


def test_data_on_a_purged_filesystem_is_warned_about(cli: Invoke) -> None:
    told = render_snellius(cli).stderr
    assert "/scratch-shared/u/pcam is under /scratch-shared/" in told and "14 days" in told
    home = cli("render", "train", "-P", "snellius", "--data-dir", "/projects/0/pcam")
    assert home.exit_code == 0 and "purged" not in home.stderr
    assert "6 days" in (purge_note("/scratch-local/u/x", SNELLIUS_PURGED, "snellius") or "")
    assert purge_note("/scratch-shared", SNELLIUS_PURGED, "snellius") is not None
    for elsewhere in ("/scratch-sharedX/u", "/home/u/scratch-shared/x", "~/pcam", None):
        assert purge_note(elsewhere, SNELLIUS_PURGED, "snellius") is None


def test_a_profile_says_its_own_purge_rules(
    cli: Invoke, isolated_home: Path, tmp_path: Path
) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.toml").write_text(
        '[profiles.lab]\nscheduler = "local"\nstage_constraint = "nvme"\n'
        '[profiles.lab.purged]\n"/scratch/" = 30\n'
    )
    result = cli("render", "train", "-P", "lab", "--data-dir", "/scratch/u/pcam", "--stage-data")
    assert result.exit_code == 0, result.stderr
    assert "30 days" in result.stderr and "#SBATCH --constraint=nvme\n" in result.stdout
    (isolated_home / "config.toml").write_text('[profiles.lab.purged]\n"/scratch/" = "soon"\n')
    refused = cli("render", "train", "-P", "lab", "--data-dir", "/scratch/u/pcam")
    assert refused.exit_code != 0 and "purged must be a table" in refused.stderr


@pytest.mark.parametrize("status", [0, 3])
def test_the_staged_folder_is_private_and_gone_when_the_job_ends(
    tmp_path: Path, status: int
) -> None:
    """The script itself, run by bash: the staged copy is mode 0700 under $TMPDIR, removed at
    exit, and the exit status is still written with the job's own code."""
    run_dir = tmp_path / "runs" / "r000001"
    run_dir.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.h5").write_text("pcam")
    recorder = tmp_path / "recorder"
    recorder.write_text(
        '#!/bin/bash\nprintf "%s %s\\n" "$3" "$(stat -c %a "$3")" > "$HPCJOB_RUN_DIR/staged"\n'
        f'ls -- "$3" >> "$HPCJOB_RUN_DIR/staged"\nexit {status}\n'
    )
    recorder.chmod(0o755)
    spec = build_spec(SpecRequest(workload="eda", data_dir=str(tmp_path / "data"), stage_data=True))
    context = RenderContext(
        run_id="r000001", token="hpcjob-" + "0" * 32, run_dir=str(run_dir), python=str(recorder)
    )
    (run_dir / "job.sh").write_text(render_script(spec, context, template_dirs([])))
    node = tmp_path / "node"
    done = subprocess.run(
        ["bash", str(run_dir / "job.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TMPDIR": str(node)},
    )
    assert done.returncode == status, done.stderr
    first, listing = (run_dir / "staged").read_text().split("\n", 1)
    staged, mode = first.rsplit(" ", 1)
    assert mode == "700" and listing == "x.h5\n"
    assert re.fullmatch(re.escape(str(node)) + r"/hpcjob-data\.\w{10}", staged)
    assert not Path(staged).exists() and list(node.iterdir()) == []
    assert (run_dir / "exit-status").read_text().split()[0] == str(status)


def test_a_staged_run_on_the_embedded_scheduler_completes(
    cli: Invoke, pcam_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not a project: no code travels
    result = cli(
        "submit", "--stage-data", "--data-dir", str(pcam_dir), "--wait", "--json", "--",
        "bash", "-c", 'stat -c "mode %a" "$HPCJOB_DATA_DIR"; ls "$HPCJOB_DATA_DIR"',
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    run = result.json()
    assert run["state"] == "COMPLETED"
    log = cli("logs", run["run_id"]).stdout
    staged = re.search(r"staged to (\S+)", log)
    assert staged and re.search(r"/hpcjob-data\.\w{10}$", staged.group(1))
    assert "mode 700" in log and "camelyonpatch_level_2_split_train_x.h5" in log
    assert not Path(staged.group(1)).exists()
    assert "purged" not in result.stderr  # the local profile purges nothing
