"""setup-env's pure part: fingerprint, module-name check, the rendered script, the result line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from hpcjob.envsetup import (
    RESULT_PREFIX,
    EnvRequest,
    EnvResult,
    check_module_names,
    failing_requirement,
    fingerprint,
    import_name,
    parse_result,
    render_setup_script,
    requirement_names,
    result_error,
    summary_rows,
)
from hpcjob.errors import HpcjobError
from tests.conftest import invoke

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
    assert "module purge" not in script
    assert "module purge" in render_setup_script(BASE)


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
    assert rows["result"] == "created, verified"
    assert "expected on a login node" in rows["cuda available"]
    assert "2.5% of 200 GiB" in rows["venv size"] and "5.0% of 1M" in rows["venv size"]


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
