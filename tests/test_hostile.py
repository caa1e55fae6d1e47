"""Hostile and bad input, catalogued: every case here is a row of docs/hostile-input.md.

Each case checks what the user gets (exit code and message, never a traceback), that nothing ran
that the user did not ask for (values that reach a job script are rendered AND executed with bash,
and a `touch PWNED` canary must not fire), and that the ledger is intact (PRAGMA integrity_check,
row counts) with no half-made run directory left behind.

The doc's table is rendered from the case lists below: `UPDATE_DOC=1 pytest tests/test_hostile.py`
(or `python -m tests.test_hostile`) rewrites it; a test fails while it is out of date.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, job_template

DOC = REPO / "docs" / "hostile-input.md"
CANARY = "PWNED"
SUB = "$(touch PWNED)"
TICKS = "`touch PWNED`"


# -- the catalogue ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CliCase:
    """A command line (and environment) and what the user must get."""

    id: str
    area: str
    given: str
    argv: tuple[str, ...]
    code: int
    phrase: str  # in stderr (or, for exit 0, in stdout)
    env: dict[str, str] = field(default_factory=dict)
    execute: str | None = None  # exit 0: run the rendered script; this must be in its output
    config: str | None = None  # config.toml text (bytes via latin-1 for broken encodings)


@dataclass(frozen=True)
class OutputCase:
    """A job whose output (or metrics.jsonl) is hostile; every reading command must cope."""

    id: str
    given: str
    command: str  # bash, the body of the job
    outcome: str  # what the user gets, for the doc
    metrics: dict[tuple[int, str], float | None] = field(default_factory=dict)  # must be stored
    absent_steps: tuple[int, ...] = ()  # must not be stored
    slow: bool = False


def _train(*args: str) -> tuple[str, ...]:
    return ("render", "train", *args)


def _submit(*args: str) -> tuple[str, ...]:
    return ("submit", "train", "--data-dir", "{pcam}", *args)


BAD_WORD = "is not valid: use"
SPEC = "The job request has problems"
CLI_CASES: tuple[CliCase, ...] = (
    # time limits
    CliCase("time-four-fields", "CLI value", "`--time 25:00:00:00`",
            _submit("--time", "25:00:00:00"), 2, "'25:00:00:00' is not a Slurm time"),
    CliCase("time-negative", "CLI value", "`--time -1`",
            _submit("--time", "-1"), 2, "'-1' is not a Slurm time"),
    CliCase("time-exponent", "CLI value", "`--time 1e9`",
            _submit("--time", "1e9"), 2, "'1e9' is not a Slurm time"),
    CliCase("time-zero", "CLI value", "`--time 0`",
            _submit("--time", "0"), 2, "'0' is zero; a job needs some time"),
    CliCase("time-field-range", "CLI value", "`--time 1:75:00`",
            _submit("--time", "1:75:00"), 2, "'1:75:00' has a field out of range"),
    CliCase("time-word", "CLI value", "`--time 1h`",
            _submit("--time", "1h"), 2, "'1h' is not a Slurm time"),
    # memory
    CliCase("mem-gib", "CLI value", "`--mem 16GiB` (accepted as 16G)",
            _train("--mem", "16GiB"), 0, "#SBATCH --mem=16G"),
    CliCase("mem-zero", "CLI value", "`--mem 0`",
            _submit("--mem", "0"), 2, "'0' is less than 1 MB"),
    CliCase("mem-unit", "CLI value", "`--mem 16X`",
            _submit("--mem", "16X"), 2, "'16X' is not a memory size"),
    CliCase("mem-negative", "CLI value", "`--mem -5G`",
            _submit("--mem", "-5G"), 2, "'-5G' is not a memory size"),
    # names that go into #SBATCH lines
    CliCase("partition-space", "CLI value", "`--partition 'gpu a100'`",
            _submit("--partition", "gpu a100"), 2, f"--partition 'gpu a100' {BAD_WORD}"),
    CliCase("partition-semicolon", "CLI value", "`--partition 'rome;touch PWNED'`",
            _submit("--partition", "rome;touch PWNED"), 2, BAD_WORD),
    CliCase("partition-newline", "CLI value", "`--partition $'rome\\ntouch PWNED'`",
            _submit("--partition", "rome\ntouch PWNED"), 2, BAD_WORD),
    CliCase("partition-trailing-newline", "CLI value", "`--partition $'gpu\\n'`",
            _submit("--partition", "gpu\n"), 2, BAD_WORD),
    CliCase("partition-subst", "CLI value", f"`--partition '{SUB}'`",
            _submit("--partition", SUB), 2, BAD_WORD),
    CliCase("partition-backticks", "CLI value", f"`--partition '{TICKS}'`",
            _submit("--partition", TICKS), 2, BAD_WORD),
    CliCase("partition-unicode-dash", "CLI value", "`--partition gpu–a100` (en dash)",
            _submit("--partition", "gpu\u2013a100"), 2, BAD_WORD),
    CliCase("account-subst", "CLI value", f"`--account '{SUB}'`",
            _submit("--account", SUB), 2, f"--account '{SUB}' {BAD_WORD}"),
    CliCase("constraint-semicolon", "CLI value", "`--constraint 'a;touch PWNED'`",
            _submit("--constraint", "a;touch PWNED"), 2, "--constraint 'a;touch PWNED'"),
    CliCase("job-name-double-quote", "CLI value", "`--job-name 'my\"job'`",
            _submit("--job-name", 'my"job'), 2, "--job-name 'my\"job' is not valid"),
    CliCase("job-name-single-quote", "CLI value", "`--job-name \"it's\"`",
            _submit("--job-name", "it's"), 2, "is not valid: use 1-64 letters"),
    CliCase("job-name-too-long", "CLI value", "`--job-name` of 65 letters",
            _submit("--job-name", "x" * 65), 2, "is not valid: use 1-64 letters"),
    # paths that go into the script body
    CliCase("data-dir-spaces", "CLI value", "`--data-dir '/data/my pcam'`",
            _train("--data-dir", "/data/my pcam"), 0, "--data-dir", execute="ARG[/data/my pcam]"),
    CliCase("data-dir-home-var", "CLI value", "`--data-dir '$HOME/pcam'` (not expanded)",
            _train("--data-dir", "$HOME/pcam"), 0, "--data-dir",
            execute="ARG[{cwd}/$HOME/pcam]"),
    CliCase("data-dir-quote", "CLI value", "`--data-dir \"/data/it's\"`",
            _train("--data-dir", "/data/it's"), 0, "--data-dir", execute="ARG[/data/it's]"),
    CliCase("data-dir-subst", "CLI value", f"`--data-dir '/data/{SUB}'`",
            _train("--data-dir", f"/data/{SUB}"), 0, "--data-dir", execute=f"ARG[/data/{SUB}]"),
    CliCase("data-dir-backticks", "CLI value", f"`--data-dir '/d/{TICKS}; touch PWNED'`",
            _train("--data-dir", f"/d/{TICKS}; touch PWNED"), 0, "--data-dir",
            execute=f"ARG[/d/{TICKS}; touch PWNED]"),
    CliCase("data-dir-newline", "CLI value", "`--data-dir $'/data\\ntouch PWNED'`",
            _train("--data-dir", "/data\ntouch PWNED"), 2, "must not contain a newline"),
    CliCase("data-dir-missing", "CLI value", "`submit --data-dir /nowhere` (embedded scheduler)",
            ("submit", "train", "--data-dir", "/nowhere"), 2,
            "the data directory /nowhere does not exist"),
    # workload arguments
    CliCase("epochs-zero", "CLI value", "`--epochs 0`",
            _submit("--epochs", "0"), 2, "--epochs must be at least 1, got 0"),
    CliCase("epochs-negative", "CLI value", "`--epochs -1`",
            _submit("--epochs", "-1"), 2, "--epochs must be at least 1, got -1"),
    CliCase("epochs-nan", "CLI value", "`--epochs NaN`",
            _submit("--epochs", "NaN"), 2, "'NaN' is not an integer"),
    CliCase("epochs-huge", "CLI value", "`--epochs 99999999999999999999999`",
            _submit("--epochs", "9" * 23), 2, "--epochs must be at most 100000"),
    CliCase("lr-nan", "CLI value", "`--lr nan`",
            _submit("--lr", "nan"), 2, "--lr must be a finite number, got nan"),
    CliCase("lr-inf", "CLI value", "`--lr inf`",
            _submit("--lr", "inf"), 2, "--lr must be a finite number, got inf"),
    CliCase("lr-negative", "CLI value", "`--lr -1`",
            _submit("--lr", "-1"), 2, "--lr must be greater than 0, got -1.0"),
    CliCase("lr-garbage", "CLI value", "`--lr '1e-3;touch PWNED'`",
            _submit("--lr", "1e-3;touch PWNED"), 2, "'1e-3;touch PWNED' is not a number"),
    CliCase("batch-zero", "CLI value", "`--batch-size 0`",
            _submit("--batch-size", "0"), 2, "--batch-size must be at least 1, got 0"),
    CliCase("seed-too-big", "CLI value", "`--seed 4294967296` (numpy takes 32 bits)",
            _submit("--seed", "4294967296"), 2, "--seed must be at most 4294967295"),
    CliCase("dropout-one", "CLI value", "`--dropout 1`",
            _submit("--dropout", "1"), 2, "--dropout must be less than 1"),
    CliCase("hidden-units-injection", "CLI value", "`--hidden-units '64;touch PWNED'`",
            _submit("--hidden-units", "64;touch PWNED"), 2, "must be positive whole numbers"),
    CliCase("cpus-huge", "CLI value", "`--cpus 99999999999999999999`",
            _submit("--cpus", "9" * 20), 2, "--cpus must be at most 100000"),
    CliCase("gpus-negative", "CLI value", "`--gpus -1`",
            _submit("--gpus", "-1"), 2, "--gpus must be at least 0, got -1"),
    CliCase("arg-wrong-workload", "CLI value", "`submit gpu-check --epochs 3`",
            ("submit", "gpu-check", "--epochs", "3"), 2,
            "--epochs does not apply to the gpu-check workload"),
    CliCase("workload-unknown", "CLI value", "`submit trian`",
            ("submit", "trian"), 2, "Unknown workload 'trian'"),
    CliCase("workload-path", "CLI value", "`submit ../../etc/passwd`",
            ("submit", "../../etc/passwd"), 2, "Unknown workload '../../etc/passwd'"),
    # arrays and dependencies (rendered for a Slurm profile: no cluster needed)
    CliCase("array-open-range", "CLI value", "`--array 0-`",
            _train("--profile", "slurm", "--array", "0-"), 2, "'0-' is not a Slurm array"),
    CliCase("array-backwards", "CLI value", "`--array 5-1`",
            _train("--profile", "slurm", "--array", "5-1"), 2, "the range 5-1 runs backwards"),
    CliCase("array-huge", "CLI value", "`--array 0-100000`",
            _train("--profile", "slurm", "--array", "0-100000"), 2,
            "has 100001 tasks; hpcjob takes at most 10000"),
    CliCase("array-zero-step", "CLI value", "`--array 0-10:0`",
            _train("--profile", "slurm", "--array", "0-10:0"), 2, "must be at least 1"),
    CliCase("after-garbage", "CLI value", "`--after '1; rm -rf ~'`",
            _submit("--after", "1; rm -rf ~"), 2,
            "--after '1; rm -rf ~' is not a job id (e.g. 18163908), a run id or `last`"),
    CliCase("after-unknown-job", "CLI value", "`--after 12345` (a job hpcjob never saw)",
            _train("--after", "12345"), 0, "#SBATCH --dependency=afterok:12345"),
    CliCase("auto-requeue-negative", "CLI value", "`--auto-requeue -1`",
            _submit("--auto-requeue", "-1"), 2, "--auto-requeue must be between 0 and 20"),
    CliCase("profile-injection", "CLI value", "`--profile 'a;b'`",
            ("status", "--profile", "a;b"), 2, "'a;b' is not a valid profile name"),
    CliCase("profile-path", "CLI value", "`--profile ../../x`",
            ("status", "--profile", "../../x"), 2, "'../../x' is not a valid profile name"),
    CliCase("ref-garbage", "CLI value", "`show \"'; DROP TABLE runs; --\"`",
            ("show", "'; DROP TABLE runs; --"), 1, "No run or job"),
    CliCase("limit-zero", "CLI value", "`runs --limit 0`",
            ("runs", "--limit", "0"), 2, "--limit must be at least 1"),
    CliCase("state-unknown", "CLI value", "`runs --state DONE`",
            ("runs", "--state", "DONE"), 2, "'DONE' is not a job state"),
    # environment variables
    CliCase("env-port-word", "environment", "`HPCJOB_PORT=abc`",
            ("config", "show"), 2, "HPCJOB_PORT='abc' is not a whole number",
            env={"HPCJOB_PORT": "abc"}),
    CliCase("env-modules-subst", "template variable", f"`HPCJOB_MODULES='2025,{SUB}'`",
            ("render", "gpu-check"), 0, "module load", env={"HPCJOB_MODULES": f"2025,{SUB}"},
            execute=f"MODULE[load] MODULE[{SUB}]"),
    CliCase("env-venv-subst", "template variable", f"`HPCJOB_VENV='~/my venv/{SUB}'`",
            ("render", "gpu-check"), 0, "/bin/activate", env={"HPCJOB_VENV": f"~/my venv/{SUB}"},
            execute="my venv/$(touch PWNED)/bin/activate: No such file"),
    CliCase("env-venv-dash", "template variable", "`HPCJOB_VENV='-venv'` (looks like an option)",
            ("render", "gpu-check"), 0, "source -- -venv/bin/activate",
            env={"HPCJOB_VENV": "-venv"}, execute="-venv/bin/activate: No such file"),
    CliCase("env-python-injection", "template variable", "`HPCJOB_PYTHON='python3; touch PWNED'`",
            ("render", "gpu-check"), 0, "'python3; touch PWNED'",
            env={"HPCJOB_PYTHON": "python3; touch PWNED"},
            execute="python3; touch PWNED: command not found"),
    CliCase("env-remote-root-subst", "template variable",
            f"`HPCJOB_REMOTE_ROOT='{{tmp}}/my runs/{SUB}'`",
            ("render", "gpu-check"), 0, '#SBATCH --output="', env={"HPCJOB_REMOTE_ROOT": "RUNROOT"},
            execute="== workload gpu-check =="),
    CliCase("env-remote-root-hash", "template variable", "`HPCJOB_REMOTE_ROOT='/scratch/p#1/runs'`",
            ("render", "gpu-check"), 0, '#SBATCH --output="/scratch/p#1/runs/',
            env={"HPCJOB_REMOTE_ROOT": "/scratch/p#1/runs"}),
    CliCase("env-remote-root-squote", "template variable",
            "`HPCJOB_REMOTE_ROOT=\"/scratch/it's/runs\"`",
            ("render", "gpu-check"), 0, '#SBATCH --output="/scratch/it\'s/runs/',
            env={"HPCJOB_REMOTE_ROOT": "/scratch/it's/runs"}),
    CliCase("env-remote-root-dquote", "template variable", "`HPCJOB_REMOTE_ROOT='/x/a\"b'`",
            ("render", "gpu-check"), 1, "cannot go into a job script header",
            env={"HPCJOB_REMOTE_ROOT": '/x/a"b'}),
    # config file values
    CliCase("config-bad-toml", "config file", "`profiles = [` (not TOML)",
            ("status",), 1, "is not valid TOML", config="profiles = [\n"),
    CliCase("config-not-utf8", "config file", "bytes `\\xff\\xfe` in config.toml",
            ("status",), 1, "is not valid TOML", config="\xff\xfe = 1\n"),
    CliCase("config-unknown-top", "config file", "`colour = \"red\"` at the top",
            ("status",), 1, "unknown top-level key(s) colour", config='colour = "red"\n'),
    CliCase("config-unknown-key", "config file", "`hots = \"x\"` in a profile",
            ("status",), 1, "unknown key 'hots'",
            config='[profiles.local]\nhots = "x"\n'),
    CliCase("config-wrong-type", "config file", "`port = \"22\"`",
            ("status",), 1, "port must be a whole number, got '22'",
            config='[profiles.local]\nport = "22"\n'),
    CliCase("config-bool-int", "config file", "`max_local_jobs = true`",
            ("status",), 1, "max_local_jobs must be a whole number",
            config="[profiles.local]\nmax_local_jobs = true\n"),
    CliCase("config-modules-string", "config file", "`modules = \"2025\"` (a string, not a list)",
            ("status",), 1, "modules must be a list of strings, got '2025'",
            config='[profiles.local]\nmodules = "2025"\n'),
    CliCase("config-path-newline", "config file", "`data_dir = \"a\\nb\"`",
            ("status",), 1, "data_dir must not contain a newline",
            config='[profiles.local]\ndata_dir = "a\\nb"\n'),
    CliCase("config-scheduler", "config file", "`scheduler = \"pbs\"`",
            ("status",), 1, "scheduler must be one of local, slurm, got 'pbs'",
            config='[profiles.local]\nscheduler = "pbs"\n'),
    CliCase("config-partitions-string", "config file", "`partitions = \"rome\"`",
            ("status",), 1, "must be a table of workload",
            config='[profiles.local]\npartitions = "rome"\n'),
    CliCase("config-profile-dots", "config file", '`[profiles."gpu.a100"]` used with --profile',
            ("status", "--profile", "gpu.a100", "--json"), 0, "[]",
            config='[profiles."gpu.a100"]\nscheduler = "local"\n'),
    CliCase("config-profile-slash", "config file", '`[profiles."../evil"]`',
            ("status",), 1, "the profile name '../evil' is not valid",
            config='[profiles."../evil"]\nscheduler = "slurm"\n'),
    CliCase("config-default-missing", "config file", '`default_profile = "nosuch"`',
            ("status",), 2, "There is no profile named 'nosuch'",
            config='default_profile = "nosuch"\n', env={"HPCJOB_PROFILE": ""}),
    CliCase("config-profiles-not-table", "config file", "`profiles = 3`",
            ("status",), 1, "`profiles` must be tables", config="profiles = 3\n"),
    # templates of the user's own
    CliCase("template-undefined", "template variable", "a user template using `{{ nosuch }}`",
            ("render", "gpu-check"), 1, "uses an undefined variable: 'nosuch' is undefined",
            config="TEMPLATE:{% extends \"base.sbatch.j2\" %}{% block command %}{{ nosuch }}"
                   "{% endblock %}"),
    CliCase("template-broken", "template variable", "a user template with `{% if %}`",
            ("render", "gpu-check"), 1, "is broken", config="TEMPLATE:{% if %}"),
    CliCase("template-python-subclasses", "template variable",
            "a user template with `{{ ''.__class__.__mro__[1].__subclasses__() }}`",
            ("render", "gpu-check"), 1, "tried something templates may not do",
            config="TEMPLATE:{{ ''.__class__.__mro__[1].__subclasses__() }}"),
    CliCase("template-python-globals", "template variable",
            "a user template with `{{ cycler.__init__.__globals__.os }}`",
            ("render", "gpu-check"), 1, "tried something templates may not do",
            config="TEMPLATE:{{ cycler.__init__.__globals__.os }}"),
)  # fmt: skip

OUTPUT_CASES: tuple[OutputCase, ...] = (
    OutputCase("out-100mb-one-line", "100 MB of output without a newline",
               "head -c 100000000 /dev/zero | tr '\\0' x\necho\necho 'Epoch 1: loss = 0.5'",
               "status/show/logs work; the first 64 MB are parsed for metrics; `logs` prints it "
               "all", slow=True),
    OutputCase("out-million-lines", "10^6 lines, then a metric line",
               "seq 1000000\necho 'Epoch 1: loss = 0.5'",
               "metrics parsed from the end; `logs --tail` works", {(1, "loss"): 0.5}),
    OutputCase("out-nul-bytes", "NUL bytes in the output",
               "printf 'a\\0b\\0\\n'\necho 'Epoch 1: loss = 0.25'",
               "NULs are passed through by `logs`; metrics parsed", {(1, "loss"): 0.25}),
    OutputCase("out-invalid-utf8", "invalid UTF-8",
               "printf '\\xff\\xfe\\xc3\\x28\\n'\necho 'Epoch 1: loss = 0.25'",
               "shown with U+FFFD replacement characters; metrics parsed", {(1, "loss"): 0.25}),
    OutputCase("out-truncated", "a last line cut off mid-way",
               "echo 'Epoch 1: loss = 0.5'\nprintf 'Epoch 2: lo'",
               "complete lines parsed, the torn one ignored", {(1, "loss"): 0.5}, (2,)),
    OutputCase("out-ansi", "ANSI colour and title escapes",
               "printf '\\033[31mred\\033[0m\\n\\033]0;pwned\\007\\n'\n"
               "echo 'Epoch 1: loss = 0.5'",
               "`logs` prints the bytes as the job wrote them (like `cat`); tables and --json "
               "never carry them (metric keys are [a-z0-9_])", {(1, "loss"): 0.5}),
    OutputCase("out-carriage-returns", "`\\r` progress bars",
               "printf 'Epoch 1: loss = 0.9\\rEpoch 1: loss = 0.5\\rEpoch 2: loss = 0.4\\n'",
               "each `\\r` segment is a line; the last value of a step wins",
               {(1, "loss"): 0.5, (2, "loss"): 0.4}),
    OutputCase("out-long-epoch-line", "a 1 MB line `Epoch 1: word1 word2 …` (no `=`)",
               "printf 'Epoch 1: '\nseq -f 'word%g' 150000 | tr '\\n' ' '\necho\n"
               "echo 'Epoch 2: loss = 0.5'",
               "parsed in one pass (a line is cut at 64 kB first); the next line's metrics are "
               "stored", {(2, "loss"): 0.5}),
    OutputCase("out-huge-epoch", "`Epoch 99999999999999999999999: loss = 1`",
               "echo 'Epoch 99999999999999999999999: loss = 1'\necho 'Epoch 1: loss = 0.5'",
               "an absurd step is ignored", {(1, "loss"): 0.5}),
    OutputCase("metric-nan-inf", "`HPCJOB_METRIC {\"step\": 1, \"loss\": NaN, \"acc\": Infinity}`",
               "echo 'HPCJOB_METRIC {\"step\": 1, \"loss\": NaN, \"acc\": Infinity, \"ok\": 2}'",
               "stored as missing values: `-` in tables, null in --json",
               {(1, "loss"): None, (1, "acc"): None, (1, "ok"): 2.0}),
    OutputCase("metric-garbage", "`HPCJOB_METRIC this is not json`",
               "echo 'HPCJOB_METRIC this is not json'\n"
               "echo 'HPCJOB_METRIC {\"step\": 1, \"a\": 1}'",
               "the line is skipped", {(1, "a"): 1.0}),
    OutputCase("metric-duplicate-keys", "`{\"step\": 1, \"loss\": 1, \"loss\": 2}`",
               "echo 'HPCJOB_METRIC {\"step\": 1, \"loss\": 1, \"loss\": 2}'",
               "the last one wins (as in JSON parsers)", {(1, "loss"): 2.0}),
    OutputCase("metric-enormous", "`1e400`, a 400-digit and a 5000-digit number",
               "printf 'HPCJOB_METRIC {\"step\": 1, \"a\": 1e400, \"b\": %s}\\n' "
               "$(printf '9%.0s' $(seq 400))\n"
               "printf 'HPCJOB_METRIC {\"step\": 2, \"c\": %s}\\n' $(printf '9%.0s' $(seq 5000))",
               "out-of-range numbers are stored as missing; a line Python cannot parse is skipped",
               {(1, "a"): None, (1, "b"): None}, (2,)),
    OutputCase("metric-wrong-types", "`{\"step\": \"1\", \"loss\": \"0.5\"}` and a bool",
               "echo 'HPCJOB_METRIC {\"step\": \"1\", \"loss\": 0.5}'\n"
               "echo 'HPCJOB_METRIC {\"step\": 2, \"loss\": \"0.5\", \"flag\": true, \"n\": 3}'",
               "a non-numeric step drops the line; non-numeric values are skipped",
               {(2, "n"): 3.0}, (1,)),
    OutputCase("metric-huge-step", "`{\"step\": 1e30, \"loss\": 1}`",
               "echo 'HPCJOB_METRIC {\"step\": 1e30, \"loss\": 1}'\n"
               "echo 'HPCJOB_METRIC {\"step\": -3, \"loss\": 1}'",
               "a step outside 0…2^31 drops the line", {}, (-3,)),
    OutputCase("metric-deep-nesting", "100,000 nested `[` and facts nested 50 deep",
               "printf 'HPCJOB_METRIC '; head -c 100000 /dev/zero | tr '\\0' '['; echo\n"
               "printf 'HPCJOB_METRIC {\"facts\": {\"deep\": %s1%s}, \"step\": 1, \"a\": 1}\\n' "
               "$(printf '[%.0s' $(seq 50)) $(printf ']%.0s' $(seq 50))",
               "too deep to parse: skipped; facts deeper than 16 levels are cut", {(1, "a"): 1.0}),
    OutputCase("metric-facts-nan", "`{\"facts\": {\"x\": NaN, \"big\": <20 kB string>}}`",
               "printf 'HPCJOB_METRIC {\"facts\": {\"x\": NaN, \"big\": \"%s\"}}\\n' "
               "$(head -c 20000 /dev/zero | tr '\\0' y)",
               "NaN facts become null, long ones are cut to 10000 characters; --json stays valid"),
    OutputCase("jsonl-broken-midline", "`metrics.jsonl` cut mid-line",
               "printf '{\"step\": 1, \"loss\": 0.5}\\n{\"step\": 2, \"lo' > metrics.jsonl",
               "the whole lines are read, the torn one skipped", {(1, "loss"): 0.5}, (2,)),
    OutputCase("provenance-hostile",
               "`provenance.json` with NaN, Infinity, `\"gpus\": [1, \"x\", null]`, 50 deep",
               "printf '{\"node\": NaN, \"seed\": Infinity, \"gpus\": [1, \"x\", null, "
               "{\"name\": NaN}], \"cuda\": \"x\", \"pip_freeze\": 5, \"data_files\": "
               "[1, {\"size\": -Infinity}], \"deep\": %s1%s}\n' "
               "$(printf '[%.0s' $(seq 50)) $(printf ']%.0s' $(seq 50)) > provenance.json",
               "stored like other facts (NaN → null, nesting cut at 16 levels); entries of the "
               "wrong type are skipped by `show`"),
    OutputCase("jsonl-binary", "`metrics.jsonl` with NUL bytes and invalid UTF-8",
               "printf '\\0\\xff\\n{\"step\": 1, \"loss\": 0.5}\\n\\xfe\\n' > metrics.jsonl",
               "unreadable lines skipped", {(1, "loss"): 0.5}),
)  # fmt: skip


# -- running a case ---------------------------------------------------------------------------


def ledger_state(home: Path) -> tuple[str, int]:
    """PRAGMA integrity_check and the number of runs (no ledger: ok, 0)."""
    path = home / "ledger.db"
    if not path.exists():
        return "ok", 0
    db = sqlite3.connect(path)
    try:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        count = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        db.close()
    return check, count


def fired(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob(CANARY)]


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home: Path) -> Path:
    """A working directory and stand-ins for python and `module` that print their arguments."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, tag in (("fakepython", "ARG"), ("module", "MODULE")):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\nfor a in "$@"; do printf \'{tag}[%s] \' "$a"; done; echo\n')
        tool.chmod(0o755)
    return tmp_path


def execute_script(script: str, sandbox: Path, root: str) -> str:
    """Run a rendered script with bash, as a job would, with python and `module` stand-ins."""
    run_id = re.search(r"for run (r[0-9a-f]{6})", script)
    assert run_id is not None
    run_dir = Path(os.path.abspath(os.path.expanduser(root))) / run_id.group(1)
    run_dir.mkdir(parents=True)
    path = sandbox / "job.sh"
    path.write_text(script)
    home = sandbox / "userhome"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": f"{sandbox / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(sandbox),
    }
    done = subprocess.run(
        ["bash", str(path)], cwd=sandbox / "cwd", env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    return done.stdout + done.stderr


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_case(
    case: CliCase,
    cli: Any,
    sandbox: Path,
    isolated_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    pcam_dir: Path,
) -> None:
    root = str(sandbox / "my runs" / SUB)
    env = {k: v.replace("RUNROOT", root) for k, v in case.env.items()}
    if case.execute:
        env.setdefault("HPCJOB_PYTHON", str(sandbox / "bin" / "fakepython"))
        env.setdefault("HPCJOB_REMOTE_ROOT", str(sandbox / "runs"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if case.config is not None:
        isolated_home.mkdir(parents=True, exist_ok=True)
        if case.config.startswith("TEMPLATE:"):
            (isolated_home / "templates").mkdir()
            text = case.config.removeprefix("TEMPLATE:")
            (isolated_home / "templates" / "gpu-check.sbatch.j2").write_text(text)
        else:
            (isolated_home / "config.toml").write_bytes(case.config.encode("latin-1"))
    before = ledger_state(isolated_home)
    argv = [a.replace("{pcam}", str(pcam_dir)) for a in case.argv]
    result = cli(*argv)
    assert result.exit_code == case.code, (result.stdout[-2000:], result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    where = result.stdout if case.code == 0 else result.stderr
    assert case.phrase in where, where
    if case.code:
        assert where.lstrip().startswith(("Error:", "Usage:")), where
    assert ledger_state(isolated_home) == ("ok", before[1])  # nothing recorded, nothing broken
    runs = isolated_home / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # no half-made run directory
    if case.execute:
        out = execute_script(result.stdout, sandbox, env["HPCJOB_REMOTE_ROOT"])
        assert case.execute.replace("{cwd}", str(sandbox / "cwd")) in out, out
    assert not fired(sandbox, Path.home()), "a value was executed"


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=[pytest.mark.slow] if c.slow else []) for c in OUTPUT_CASES],
    ids=lambda c: c.id,
)
def test_output_case(case: OutputCase, cli: Any, isolated_home: Path, sandbox: Path) -> None:
    job_template(isolated_home, case.command)
    submitted = cli("submit", "gpu-check", "--wait", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.json()
    assert run["state"] == "COMPLETED"
    for argv in (("status", "--json"), ("runs", "--json"), ("show", run["run_id"], "--json")):
        result = cli(*argv)
        assert result.exit_code == 0, result.stderr
        json.loads(result.stdout)  # valid JSON (no NaN, no control characters)
    table = cli("show", run["run_id"], "--no-script")
    assert table.exit_code == 0 and "Traceback" not in table.stderr
    if case.slow:  # the 100 MB line: logs in a process of its own, to /dev/null
        done = subprocess.run(
            [sys.executable, "-m", "hpcjob", "logs", run["run_id"], "--tail", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0 and b"Traceback" not in done.stderr
    else:
        logs = cli("logs", run["run_id"], "--tail", "3")
        assert logs.exit_code == 0 and "Traceback" not in logs.stderr
    shown = cli("show", run["run_id"], "--json").json()
    metrics = {(m["step"], m["key"]): m["value"] for m in shown["metrics"]}
    for key, value in case.metrics.items():
        assert key in metrics and metrics[key] == value, (key, metrics)
    assert not [k for k in metrics if k[0] in case.absent_steps], metrics
    if case.id == "metric-facts-nan":
        assert shown["facts"]["x"] is None and len(shown["facts"]["big"]) == 10_000
    if case.id == "provenance-hostile":
        job = shown["provenance"]["job"]
        assert job["node"] is None and job["seed"] is None and job["gpus"][:3] == [1, "x", None]
        assert "(nested too deeply)" in json.dumps(job["deep"])
        assert "GPU" in table.stdout and "node      None" in table.stdout
    if case.id == "metric-deep-nesting":
        assert "(nested too deeply)" in json.dumps(shown["facts"]["deep"])
    assert ledger_state(isolated_home) == ("ok", 1)


def test_every_template_value_is_quoted_or_hpcjob_made() -> None:
    """Built-in templates: a value reaches the script through `sbatch(...)`, `| q`, `| qpath`,
    or is one hpcjob makes itself (its version, the run id, a workload name it validated, a
    sweep's task id, an int, a program's command that render.command_line quoted word by
    word)."""
    safe = {"hpcjob_version", "run_id", "spec.workload", "index", "command_line"}
    for path in sorted((REPO / "templates").glob("*.j2")):
        for expr in re.findall(r"{{(.*?)}}", path.read_text()):
            expr = expr.strip()
            if expr.startswith("sbatch(") or re.search(r"\|\s*q(path)?\s*$", expr):
                continue
            assert expr in safe, f"{path.name}: {{{{ {expr} }}}} reaches the script unquoted"


# -- the doc ----------------------------------------------------------------------------------

_BEGIN, _END = "<!-- cases:begin -->", "<!-- cases:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table() -> str:
    lines = [
        "| id | area | input tried | what the user gets |",
        "|---|---|---|---|",
    ]
    for c in CLI_CASES:
        outcome = (
            f"exit 0; {'the script runs and shows `' + c.execute + '`' if c.execute else ''}"
            if c.code == 0
            else f"exit {c.code}: `{c.phrase}`"
        ).rstrip("; ")
        if c.code == 0 and c.execute:
            outcome += " (value inert: the `touch PWNED` canary never fires)"
        elif c.code == 0:
            outcome += f" (`{c.phrase}`)"
        lines.append(f"| `{c.id}` | {c.area} | {_cell(c.given)} | {_cell(outcome)} |")
    for o in OUTPUT_CASES:
        lines.append(
            f"| `{o.id}` | job output | {_cell(o.given)} | exit 0 for status, show, runs, logs "
            f"(valid --json); {_cell(o.outcome)} |"
        )
    return "\n".join(lines)


def _doc_with_table(text: str) -> str:
    head, _, rest = text.partition(_BEGIN)
    _, _, tail = rest.partition(_END)
    return f"{head}{_BEGIN}\n{render_table()}\n{_END}{tail}"


def test_the_doc_lists_every_case() -> None:
    from tests.helpers import rewrite_requested  # here: `python tests/test_hostile.py` runs too

    text = DOC.read_text()
    wanted = _doc_with_table(text)
    if rewrite_requested("UPDATE_DOC"):
        DOC.write_text(wanted)
        text = wanted
    assert text == wanted, "docs/hostile-input.md is out of date: UPDATE_DOC=1 pytest " + __file__
    ids = [c.id for c in CLI_CASES] + [o.id for o in OUTPUT_CASES]
    assert len(ids) == len(set(ids))
    for case_id in ids:
        assert f"| `{case_id}` |" in text


if __name__ == "__main__":
    DOC.write_text(_doc_with_table(DOC.read_text()))
    print(f"wrote {DOC} ({len(CLI_CASES) + len(OUTPUT_CASES)} cases)")
