"""The commented hpcjob.toml that `hpcjob init` writes from what hpcjob/project/detect.py found,
and the one write of it: atomic, and never over a file that is there.

What `render_project_file` writes always parses with `parse_project` (the tests hold it to that);
every key carries a comment that says what it does, and the guesses say how they were made.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.project.detect import TRAINERS, Detected, workload_name
from hpcjob.project.projectfile import PROJECT_FILE, find_project_file

_HEADER = """\
# hpcjob.toml: how hpcjob runs this project on a cluster. Written by `hpcjob init` from what it
# found here; every line is a guess you may change. Each [workloads.NAME] is a program you submit
# with `hpcjob submit NAME`. Your code travels with each run as a snapshot, and the config file is
# copied per run with your options applied to the copy: your code needs no change.
"""


def render_project_file(found: Detected) -> str:
    """The commented project file for what was found (an example workload when no trainer)."""
    parts = [_HEADER, _project_table(found)]
    if found.trainer is None:
        parts.append(_example(found))
    else:
        parts.append(_train_table(found))
        parts.append(_options_table(found))
    parts.append(_more_programs(found))
    return "\n".join(part for part in parts if part)


def _project_table(found: Detected) -> str:
    if found.requirements:
        installs = f"# `hpcjob setup-env` installs {found.requirements} and these requirements:"
    else:
        installs = "# `hpcjob setup-env` installs these (found no requirements.txt or pyproject's):"
    lines = [
        "[project]",
        f"name = {_q(found.name)}",
        installs,
        '# requirements = ["pyyaml"]',
        "# Left out of the code snapshot that travels with each run (gitignore-like globs):",
        '# exclude = ["data/", "*.ckpt"]',
    ]
    if found.src_layout:
        packages = ", ".join(f"src/{p}" for p in found.src_packages)
        lines.append(f"# src/ layout ({packages}): jobs find it on PYTHONPATH, nothing to install.")
    return "\n".join(lines) + "\n"


def _train_table(found: Detected) -> str:
    trainer = str(found.trainer)
    lines = ["[workloads.train]"]
    if found.config is not None:
        config_words = [found.config_flag, "{config}"] if found.config_flag else ["{config}"]
        lines += [
            "# The program and its arguments; {config} is this run's copy of the config below.",
            f"command = {_list(['python', trainer, *config_words])}",
            f"# Found as {found.config_found}.",
            f"config = {_q(found.config)}",
        ]
    else:
        lines += [
            "# The program and its arguments.",
            f"command = {_list(['python', trainer])}",
            "# No config file found for it. If it reads one, name it and hand over a copy per run:",
            f"# command = {_list(['python', trainer, '--config', '{config}'])}",
            '# config = "configs/train.yaml"',
        ]
    lines.append(
        "# Files the program writes that hold metrics, read into hpcjob's ledger (lines such as"
    )
    lines.append('# "Epoch 3: Train_Loss = 0.65, Val_Loss = 0.70" in its output are read anyway):')
    if found.metrics:
        lines.append(_array("metrics", found.metrics))
    else:
        lines.append('# metrics = ["results/*/metrics.csv"]')
    lines.append("# Files recorded as the run's artifacts (checkpoints, plots; see `hpcjob show`):")
    lines.append(_array("artifacts", found.artifacts))
    lines += [
        "# Default resources (the command line's --partition/--time win; see `hpcjob partitions`):",
        '# partition = "gpu_a100"',
        '# time = "01:00:00"',
    ]
    return "\n".join(lines) + "\n"


def _options_table(found: Detected) -> str:
    if found.config is None:
        return ""
    lines = [
        "# hpcjob's options → keys of the config: `hpcjob submit train --epochs 3` sets the key",
        "# mapped to epochs in this run's copy of the config. Add any option = key you like.",
        "[workloads.train.options]",
    ]
    lines += [f"{option} = {_q(key)}" for option, key in found.options.items()]
    if not found.options:
        lines.append('# epochs = "training.epochs"  (no key of the config looked like one)')
    if found.data_key:
        lines.append(
            f"# Uncomment so that --data-dir (or the profile's data_dir) sets {found.data_key}:"
        )
        lines.append(f"# data_dir = {_q(found.data_key)}")
    return "\n".join(lines) + "\n"


def _example(found: Detected) -> str:
    looked = ", ".join(TRAINERS) + " or src/**/train.py"
    return (
        f"# hpcjob init found no training script:\n# none of {looked}.\n"
        "# Describe your program here and remove the leading '# ':\n"
        "#\n"
        "# [workloads.train]\n"
        '# command = ["python", "train.py", "--config", "{config}"]\n'
        '# config = "configs/train.yaml"\n'
        '# metrics = ["results/*/metrics.csv"]\n'
        '# artifacts = ["results/**/*.pt"]\n'
        '# partition = "gpu_a100"\n'
        '# time = "01:00:00"\n'
        "#\n"
        "# [workloads.train.options]\n"
        '# epochs = "training.epochs"\n'
        '# lr = "training.learning_rate"\n'
    )


def _more_programs(found: Detected) -> str:
    taken = {"train"}
    blocks = []
    for path in found.scripts:
        name = workload_name(path)
        if name in taken:
            continue
        taken.add(name)
        blocks.append(f"# [workloads.{name}]\n# command = {_list(['python', path])}\n")
    if not blocks:
        return ""
    heading = "# More programs found here; uncomment one to submit it with `hpcjob submit NAME`:\n"
    return heading + "#\n".join(blocks)


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def _list(words: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_q(w) for w in words) + "]"


def _array(key: str, words: tuple[str, ...]) -> str:
    """`key = [...]` on one line, or one item a line when that would be long."""
    line = f"{key} = {_list(words)}"
    if len(line) <= 100:
        return line
    return f"{key} = [\n" + "".join(f"    {_q(w)},\n" for w in words) + "]"


def write_project_file(folder: Path, text: str) -> Path:
    """Write `<folder>/hpcjob.toml` atomically; refused (nothing written) when the folder already
    has a project file, hpcjob.toml or pyproject.toml's [tool.hpcjob]."""
    target = folder / PROJECT_FILE
    existing = find_project_file(folder)
    if existing is not None and existing.parent == folder.resolve():
        _refuse(existing)
    tmp = folder / f".{PROJECT_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.link(tmp, target)  # unlike a rename, fails when the target is there: never overwrites
    except FileExistsError:
        _refuse(target)
    except OSError as exc:
        raise HpcjobError(f"Cannot write {target}: {exc.strerror or exc}.") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _refuse(existing: Path) -> None:
    what = "exists" if existing.name == PROJECT_FILE else "has a [tool.hpcjob] table"
    raise HpcjobError(
        f"{existing} already {what}: this project is described; nothing was overwritten.",
        hint="Edit that file, or remove it and run hpcjob init again.",
        exit_code=EXIT_USAGE,
    )
