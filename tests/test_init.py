"""Your own project: `hpcjob init` finds the trainer, its config and the keys hpcjob's options set,
and writes a commented hpcjob.toml that loads; setup-env installs the project's requirements."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hpcjob.envscript import requirements_sha256
from hpcjob.errors import HpcjobError
from hpcjob.project.detect import detect
from hpcjob.project.projectfile import find_project_file, load_project, parse_project
from hpcjob.project.requirements import notes, project_requirements
from hpcjob.project.starter import render_project_file
from tests.helpers import invoke

TRAIN_PY = '''"""Train a model."""
import argparse

from ml_core.solver import Trainer
from ml_core.utils import ExperimentTracker


def main():
    parser = argparse.ArgumentParser(description="Train (see the config)")
    parser.add_argument(
        "--config",
        type=str,
        default="experiments/configs/train_config.yaml",
        help="Path to the config file (YAML)",
    )
    parser.add_argument("--resume", default="none.pt")
    args = parser.parse_args()
    print(f"Epoch 1: Train_Loss = 0.7, Val_Loss = 0.8")


if __name__ == "__main__":
    main()
'''

TRAIN_CONFIG = """\
seed: 42
data:
  data_path: "./data/pcam"
  batch_size: 32
  num_workers: 2
model:
  hidden_units: [64, 32]
  dropout: 0.2
training:
  epochs: 5
  learning_rate: 0.001
  save_dir: "experiments/results"
"""

TRACKER_PY = """import csv
import os


class ExperimentTracker:
    def __init__(self, name, config, base_dir="experiments/results"):
        self.run_dir = os.path.join(base_dir, name)
        self.csv_path = os.path.join(self.run_dir, "metrics.csv")
        self.labels = pd.read_csv("labels.csv")  # read, not written
"""


def skeleton(root: Path) -> Path:
    """A course-skeleton repository, as students get it."""
    for package in ("data", "models", "solver", "utils"):
        (root / "src" / "ml_core" / package).mkdir(parents=True)
        (root / "src" / "ml_core" / package / "__init__.py").write_text("")
    (root / "src" / "ml_core" / "__init__.py").write_text("")
    (root / "src" / "ml_core" / "utils" / "tracker.py").write_text(TRACKER_PY)
    (root / "experiments" / "configs").mkdir(parents=True)
    (root / "experiments" / "train.py").write_text(TRAIN_PY)
    (root / "experiments" / "evaluate.py").write_text('if __name__ == "__main__":\n    pass\n')
    (root / "experiments" / "configs" / "train_config.yaml").write_text(TRAIN_CONFIG)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "ml-core"\nversion = "0.1.0"\ndependencies = ["torch>=2.1"]\n'
    )
    (root / "requirements.txt").write_text("torch>=2.1\nnumpy\npyyaml\nmatplotlib\n")
    return root


# -- detect -----------------------------------------------------------------------------------


def test_detect_finds_the_course_skeleton(tmp_path: Path) -> None:
    found = detect(skeleton(tmp_path / "repo"))
    assert found.trainer == "experiments/train.py"
    assert found.config == "experiments/configs/train_config.yaml"
    assert found.config_flag == "--config" and "--config default" in found.config_found
    options = dict(found.options)
    assert options["epochs"] == "training.epochs"
    assert options["lr"] == "training.learning_rate"
    assert options["batch-size"] == "data.batch_size"
    assert options["seed"] == "seed"
    assert "hidden-units" not in options  # a list: no single value an option could set
    assert found.data_key == "data.data_path"
    assert found.requirements == "requirements.txt"
    assert found.src_packages == ("ml_core",)
    assert found.metrics == ("experiments/results/*/metrics.csv",)  # not labels.csv: it is read
    assert "experiments/results/**/*.pt" in found.artifacts
    assert found.scripts == ("experiments/evaluate.py",)
    assert found.name == "ml-core" and not found.notes


def test_written_file_parses_and_maps_the_options(tmp_path: Path) -> None:
    root = skeleton(tmp_path / "repo")
    text = render_project_file(detect(root))
    project = parse_project(text, root / "hpcjob.toml")
    train = project.workloads["train"]
    assert train.command == ("python", "experiments/train.py", "--config", "{config}")
    assert train.config == "experiments/configs/train_config.yaml"
    assert dict(train.options) == {
        "epochs": "training.epochs",
        "lr": "training.learning_rate",
        "batch_size": "data.batch_size",
        "seed": "seed",
        "dropout": "model.dropout",
        "num_workers": "data.num_workers",
    }
    assert train.metrics == ("experiments/results/*/metrics.csv",)
    assert train.partition is None  # a hint only, commented out
    assert project.name == "ml-core"
    # Each hint, uncommented, is a valid line too.
    hints = ('# partition = "gpu_a100"', '# time = "01:00:00"', '# data_dir = "data.data_path"')
    for hint in hints:
        assert hint in text
        parse_project(text.replace(hint, hint[2:]), root / "hpcjob.toml")
    with_data = parse_project(text.replace(hints[2], hints[2][2:]), root / "hpcjob.toml")
    assert with_data.workloads["train"].options["data_dir"] == "data.data_path"
    hinted = text.replace('# partition = "gpu_a100"', 'partition = "gpu_a100"')
    assert parse_project(hinted, root / "hpcjob.toml").workloads["train"].partition == "gpu_a100"
    # Each key of the workload is explained by the comment right above it.
    lines = text.splitlines()
    start, end = lines.index("[workloads.train]"), lines.index("[workloads.train.options]")
    keys = [i for i in range(start + 1, end) if re.match(r"^[a-z_]+ = ", lines[i])]
    assert len(keys) == 4 and all(lines[i - 1].startswith("# ") for i in keys)
    assert lines[end - 1].startswith("# ")  # and the options table by the lines above it
    evaluate = text[text.index("# [workloads.evaluate]") :]
    assert '# command = ["python", "experiments/evaluate.py"]' in evaluate


def test_ambiguous_keys_prefer_training_and_a_searched_config(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "configs").mkdir(parents=True)
    (root / "train.py").write_text(
        'import argparse\np = argparse.ArgumentParser()\np.add_argument("--config", '
        "required=True)\n"
    )
    (root / "configs" / "train.yaml").write_text(
        "eval:\n  epochs: 1\n  lr: 0.5\ntraining:\n  num_epochs: 10\n  optimizer:\n    lr: 0.1\n"
        "batch_size: 8\n"
    )
    (root / "configs" / "model.yaml").write_text("layers: 3\n")
    found = detect(root)
    assert found.trainer == "train.py" and found.config == "configs/train.yaml"
    assert "named like training" in found.config_found
    assert found.options["epochs"] == "training.num_epochs"
    assert found.options["lr"] == "training.optimizer.lr"
    assert found.options["batch-size"] == "batch_size"
    assert found.metrics == () and found.artifacts == ("**/*.pt", "**/*.pth")
    assert found.requirements is None
    parse_project(render_project_file(found), root / "hpcjob.toml")


def test_the_only_config_of_a_configs_folder_and_json(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "scripts" / "train.py").write_text('parser.add_argument("--cfg", type=str)\n')
    (root / "configs" / "base.json").write_text(json.dumps({"optim": {"learning_rate": 0.01}}))
    found = detect(root)
    assert (found.config, found.config_flag) == ("configs/base.json", "--cfg")
    assert found.options == {"lr": "optim.learning_rate"}
    train = parse_project(render_project_file(found), root / "hpcjob.toml").workloads["train"]
    assert train.command == ("python", "scripts/train.py", "--cfg", "{config}")


def test_a_trainer_that_takes_no_config_gets_no_options(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "configs").mkdir(parents=True)
    (root / "train.py").write_text("print('Epoch 1: Train_Loss = 1.0')\n")
    (root / "configs" / "train.yaml").write_text("epochs: 3\n")
    found = detect(root)
    assert found.config is None and found.options == {}
    assert any("takes no --config" in note for note in found.notes)
    project = parse_project(render_project_file(found), root / "hpcjob.toml")
    assert project.workloads["train"].command == ("python", "train.py")


def test_a_folder_without_a_trainer_gets_a_commented_example(tmp_path: Path) -> None:
    root = tmp_path / "notebooks"
    root.mkdir()
    (root / "analysis.py").write_text("x = 1\n")
    found = detect(root)
    assert found.trainer is None
    text = render_project_file(found)
    project = parse_project(text, root / "hpcjob.toml")
    assert project.workloads == {} and project.name == "notebooks"
    assert "found no training script" in text
    example = "\n".join(
        line[2:] for line in text.splitlines() if line.startswith(("# [", "# command", "# config"))
    )
    uncommented = parse_project(f'[project]\nname = "x"\n{example}\n', root / "hpcjob.toml")
    assert uncommented.workloads["train"].config == "configs/train.yaml"


def test_a_big_data_folder_and_a_venv_are_not_searched(tmp_path: Path) -> None:
    root = skeleton(tmp_path / "repo")
    (root / "data" / "pcam").mkdir(parents=True)
    (root / "data" / "pcam" / "train.py").write_text("")  # never taken for the trainer's config
    venv = root / "myenv"
    (venv / "lib").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("")
    (venv / "lib" / "writer.py").write_text('open("history.csv", "w")\n')
    found = detect(root)
    assert found.metrics == ("experiments/results/*/metrics.csv",)


# -- hpcjob init ------------------------------------------------------------------------------


def test_cli_init_writes_a_file_that_loads_and_never_overwrites(tmp_path: Path) -> None:
    root = skeleton(tmp_path / "repo")
    done = invoke("init", str(root), "--json")
    assert done.exit_code == 0, done.stderr
    data = done.json()
    assert data["path"] == str(root / "hpcjob.toml")
    assert data["options"]["epochs"] == "training.epochs"
    assert data["next"][-2:] == ["hpcjob setup-env", "hpcjob submit train --epochs 3"]
    assert find_project_file(root / "src" / "ml_core") == root / "hpcjob.toml"
    project = load_project(root / "hpcjob.toml")
    assert project.workloads["train"].options["batch_size"] == "data.batch_size"
    written = (root / "hpcjob.toml").read_bytes()
    (root / "hpcjob.toml").write_text(written.decode() + "# my own edit\n")
    again = invoke("init", str(root))
    assert again.exit_code == 2
    assert "already exists" in again.stderr and "nothing was overwritten" in again.stderr
    assert (root / "hpcjob.toml").read_text().endswith("# my own edit\n")
    assert [p.name for p in root.iterdir() if p.name.startswith(".hpcjob")] == []


def test_cli_init_tells_a_person_what_it_found(tmp_path: Path) -> None:
    root = skeleton(tmp_path / "repo")
    done = invoke("init", str(root))
    assert done.exit_code == 0, done.stderr
    for phrase in ("experiments/train.py", "training.learning_rate", "requirements.txt"):
        assert phrase in done.stdout
    assert "hpcjob setup-env" in done.stderr and "hpcjob submit train --epochs 3" in done.stderr


def test_cli_init_refuses_a_pyproject_with_a_tool_table(tmp_path: Path) -> None:
    root = skeleton(tmp_path / "repo")
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text() + '\n[tool.hpcjob.workloads.train]\ncommand = ["python", "x.py"]\n'
    )
    done = invoke("init", str(root))
    assert done.exit_code == 2
    assert "[tool.hpcjob]" in done.stderr and "nothing was overwritten" in done.stderr
    assert not (root / "hpcjob.toml").exists()


def test_cli_init_without_a_trainer_says_so(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    done = invoke("init", str(root))
    assert done.exit_code == 0, done.stderr
    assert "Found no training script" in done.stderr
    assert load_project(root / "hpcjob.toml").workloads == {}
    assert invoke("init", str(tmp_path / "missing")).exit_code == 2


# -- which requirements setup-env installs ----------------------------------------------------


def test_requirements_txt_with_includes_and_local_paths(tmp_path: Path) -> None:
    root = skeleton(tmp_path / "repo")
    (root / "reqs").mkdir()
    (root / "reqs" / "base.txt").write_text("scipy==1.13\n-r more.txt\n")
    (root / "reqs" / "more.txt").write_text("pandas\n")
    (root / "requirements.txt").write_text(
        "--index-url https://download.pytorch.org/whl/cu121\n-r reqs/base.txt\ntorch>=2.1\n"
        "-e .\n./vendor/mylib\n-e git+https://github.com/x/y.git#egg=y\n-c constraints.txt\n"
    )
    text, source = project_requirements(root, None) or ("", "")
    assert source == "requirements.txt (with reqs/base.txt, reqs/more.txt inlined)"
    kept = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert kept == [
        "--index-url https://download.pytorch.org/whl/cu121",
        "scipy==1.13",
        "pandas",
        "torch>=2.1",
        "torch>=2.1",  # pyproject's dependencies, in place of `-e .`
        "-e git+https://github.com/x/y.git#egg=y",
    ]
    said = notes(text)
    assert any('"-e ."' in n and "snapshot" in n and "PYTHONPATH" in n for n in said)
    assert any('"./vendor/mylib"' in n for n in said)
    assert any('"-c constraints.txt"' in n for n in said)
    (root / "requirements.txt").write_text("-r nowhere.txt\n")
    with pytest.raises(HpcjobError, match=r"requirements.txt line 1: `-r nowhere.txt`"):
        project_requirements(root, None)


def test_pyproject_only_and_the_project_files_own_requirements(tmp_path: Path) -> None:
    root = skeleton(tmp_path / "repo")
    (root / "requirements.txt").unlink()
    text, source = project_requirements(root, None) or ("", "")
    assert (text, source) == ("torch>=2.1\n", "pyproject.toml [project.dependencies]")
    (root / "hpcjob.toml").write_text('[project]\nrequirements = ["pyyaml", "h5py>=3.8"]\n')
    project = load_project(root / "hpcjob.toml")
    text, source = project_requirements(root, project) or ("", "")
    assert [ln for ln in text.splitlines() if not ln.startswith("#")] == [
        "torch>=2.1",
        "pyyaml",
        "h5py>=3.8",
    ]
    assert source == "pyproject.toml [project.dependencies] + hpcjob.toml [project] requirements"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert project_requirements(empty, None) is None
    found = detect(root)
    assert found.requirements == "pyproject.toml [project.dependencies]"


def test_requirements_hash_ignores_comments_and_blank_lines() -> None:
    assert requirements_sha256("torch\n# a note\n\nnumpy  # pinned later\n") == (
        requirements_sha256("torch\nnumpy\n")
    )
    assert requirements_sha256("torch\nnumpy\n") != requirements_sha256("torch\nnumpy<2\n")


def _config(home: Path, venv: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'default_profile = "mine"\n[profiles.mine]\nscheduler = "local"\nvenv = "{venv}"\n'
        'python = "/usr/bin/python3"\n'
    )


def test_cli_setup_env_installs_the_projects_requirements(
    isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline: the project's requirements name nothing to download (`-e .` is left out), but
    they are what is staged, fingerprinted and recorded in the venv's marker."""
    venv = tmp_path / "venv"
    _config(isolated_home, venv)
    root = tmp_path / "repo"
    root.mkdir()
    (root / "requirements.txt").write_text("# course project requirements\n-e .\n")
    (root / "hpcjob.toml").write_text('[project]\nname = "course"\n')
    first = invoke("setup-env", "-P", "mine", "--project", str(root), "--json")
    assert first.exit_code == 0, first.stderr
    data = first.json()
    assert data["requirements_from"] == f"requirements.txt in {root}"
    staged = Path(data["run_dir"]) / "requirements.txt"
    text, _ = project_requirements(root, load_project(root / "hpcjob.toml")) or ("", "")
    assert staged.read_text() == text and "# course project requirements" in text
    marker = json.loads((venv / ".hpcjob-env.json").read_text())
    assert marker["requirements_sha256"] == requirements_sha256(text)
    # From inside the project (found from the cwd): the same requirements, so nothing to do.
    (root / "src").mkdir()
    monkeypatch.chdir(root / "src")  # found from a subfolder, as hpcjob.toml is looked for
    again = invoke("setup-env", "-P", "mine", "--json")
    assert again.exit_code == 0, again.stderr
    assert again.json()["up_to_date"] is True
    assert again.json()["requirements_from"] == f"requirements.txt in {root}"
    said = invoke("setup-env", "-P", "mine")
    assert said.exit_code == 0, said.stderr
    assert re.search(r"Requirements of project .*: requirements\.txt", said.stderr)
    assert '"-e ."' in said.stderr and "snapshot" in said.stderr


def test_cli_setup_env_in_a_project_without_requirements_says_so(
    isolated_home: Path, tmp_path: Path
) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.toml").write_text(
        'default_profile = "mine"\n[profiles.mine]\nscheduler = "local"\n'
    )
    root = tmp_path / "repo"
    root.mkdir()
    (root / "hpcjob.toml").write_text('[project]\nname = "bare"\n')
    done = invoke("setup-env", "--project", str(root))
    assert done.exit_code == 2 and "has no venv path" in done.stderr  # refused after choosing
    assert "names no requirements" in done.stderr
    assert "[project.dependencies]" in done.stderr and "built-in workloads'" in done.stderr
    missing = invoke("setup-env", "--project", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "is not a folder" in missing.stderr
