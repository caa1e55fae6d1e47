"""A user's own batch script (`hpcjob submit job.sh`): its #SBATCH lines as sbatch reads them, and
how they are sorted into hpcjob's options, sbatch's extras and what hpcjob drops."""

from __future__ import annotations

import pytest

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.project.batchscript import BatchScript, read_batch_script
from hpcjob.slurm import parse_sbatch_directives, sbatch_directives

JOB_SH = """\
#!/bin/bash
# Train the model on one A100.
#SBATCH -J myjob
#SBATCH -p gpu_a100 -t 1:00:00
#SBATCH --nodes=1 --cpus-per-task 18
#SBATCH --gres=gpu:a100:2
#SBATCH --mem=60G
#SBATCH --account="my project"
#SBATCH --output=slurm-%j.out
#SBATCH -e slurm-%j.err
#SBATCH --mail-type=END --exclusive
#SBATCH --dependency=afterok:123
#SBATCH -C scratch-node
#SBATCH -a 0-3%2

module load 2023
#SBATCH --qos=after-the-first-command
python train.py
"""


def error_of(text: str, name: str = "job.sh") -> HpcjobError:
    with pytest.raises(HpcjobError) as info:
        read_batch_script(name, text)
    assert info.value.exit_code == EXIT_USAGE
    return info.value


# ----------------------------------------------------------------- the #SBATCH lines (slurm.py)
def test_sbatch_directives_in_order_with_long_names() -> None:
    assert sbatch_directives(JOB_SH) == [
        ("job-name", "myjob"),
        ("partition", "gpu_a100"),
        ("time", "1:00:00"),
        ("nodes", "1"),
        ("cpus-per-task", "18"),
        ("gres", "gpu:a100:2"),
        ("mem", "60G"),
        ("account", "my project"),
        ("output", "slurm-%j.out"),
        ("error", "slurm-%j.err"),
        ("mail-type", "END"),
        ("exclusive", ""),
        ("dependency", "afterok:123"),
        ("constraint", "scratch-node"),
        ("array", "0-3%2"),
    ]


def test_sbatch_directives_know_their_lines() -> None:
    first, *_, last = parse_sbatch_directives(JOB_SH)
    assert (first.line_no, first.written, first.line) == (3, "-J", "#SBATCH -J myjob")
    assert (last.line_no, last.name, last.written) == (14, "array", "-a")


@pytest.mark.parametrize(
    ("flag", "name"),
    [
        ("-J", "job-name"),
        ("-t", "time"),
        ("-o", "output"),
        ("-e", "error"),
        ("-p", "partition"),
        ("-c", "cpus-per-task"),
        ("-G", "gpus"),
        ("-A", "account"),
        ("-N", "nodes"),
        ("-n", "ntasks"),
        ("-C", "constraint"),
        ("-a", "array"),
        ("-d", "dependency"),
        ("-D", "chdir"),
    ],
)
def test_short_options_become_long_names(flag: str, name: str) -> None:
    assert sbatch_directives(f"#!/bin/bash\n#SBATCH {flag} v\n") == [(name, "v")]


def test_sbatch_directives_skip_the_first_line_and_stop_at_the_first_command() -> None:
    assert sbatch_directives("#SBATCH -p first-line\n\n#SBATCH -p b\n") == [("partition", "b")]
    assert sbatch_directives("#!/bin/sh\nset -e\n#SBATCH -p late\n") == []


# ------------------------------------------------------------------- read_batch_script
def test_a_script_is_sorted_into_options_extra_and_ignored() -> None:
    script = read_batch_script("job.sh", JOB_SH)
    assert script.options == {
        "job_name": "myjob",
        "partition": "gpu_a100",
        "time": "1:00:00",
        "nodes": 1,
        "cpus_per_task": 18,
        "gpus": 2,
        "mem": "60G",
        "account": "my project",
        "after": "123",
        "constraint": "scratch-node",
        "array": "0-3%2",
    }
    assert script.extra == (("mail-type", "END"), ("exclusive", ""))
    assert len(script.ignored) == 3
    gpu_type, output, error = script.ignored  # in the order of their lines
    assert output.startswith("line 9 `#SBATCH --output=slurm-%j.out`: --output is dropped")
    assert "run directory" in output
    assert error.startswith("line 10 `#SBATCH -e slurm-%j.err`: --error is dropped")
    assert "the GPU type 'a100' is dropped; hpcjob asks for 2 GPU(s)" in gpu_type
    assert script.notes == ()


def test_a_script_without_sbatch_lines_asks_for_nothing() -> None:
    assert read_batch_script("job.sh", "#!/bin/bash\npython train.py\n") == BatchScript()


@pytest.mark.parametrize(
    ("line", "gpus"),
    [
        ("--gres=gpu:2", 2),
        ("--gres=gpu:a100:4", 4),
        ("--gres=gpu", 1),
        ("--gpus=2", 2),
        ("--gpus a100:3", 3),
        ("-G 2", 2),
        ("--gpus-per-node=4", 4),
    ],
)
def test_gpu_requests_become_a_count(line: str, gpus: int) -> None:
    assert read_batch_script("job.sh", f"#!/bin/bash\n#SBATCH {line}\n").options == {"gpus": gpus}


def test_gres_other_than_gpus_passes_through() -> None:
    script = read_batch_script("job.sh", "#!/bin/bash\n#SBATCH --gres=gpu:1,shard:2\n")
    assert script.options == {"gpus": 1} and script.extra == (("gres", "shard:2"),)


def test_the_last_of_a_repeated_option_wins_as_in_sbatch() -> None:
    text = "#!/bin/bash\n#SBATCH -p a\n#SBATCH --partition=b\n"
    assert read_batch_script("job.sh", text).options == {"partition": "b"}


def test_one_task_is_hpcjobs_own_and_more_pass_through_with_a_note() -> None:
    assert read_batch_script("job.sh", "#!/bin/bash\n#SBATCH --ntasks=1\n") == BatchScript()
    script = read_batch_script("job.sh", "#!/bin/bash\n#SBATCH -n 4\n")
    assert script.extra == (("ntasks", "4"),)
    (note,) = script.notes
    assert note.startswith("line 2 `#SBATCH -n 4`: --ntasks=4 goes to sbatch")
    assert "srun" in note


@pytest.mark.parametrize(
    ("option", "why"),
    [
        ("--chdir=/tmp", "run directory"),
        ("--comment=mine", "comment"),
        ("--open-mode=append", "run directory"),
        ("--parsable", "sbatch's answer"),
        ("--wait", "hpcjob submit --wait"),
        ("--test-only", "hpcjob render"),
    ],
)
def test_options_hpcjob_sets_itself_are_dropped_with_a_note(option: str, why: str) -> None:
    script = read_batch_script("job.sh", f"#!/bin/bash\n#SBATCH {option}\n")
    assert script.options == {} and script.extra == ()
    (note,) = script.ignored
    assert "is dropped" in note and why in note


def test_other_options_pass_through_unchanged() -> None:
    text = "#!/bin/bash\n#SBATCH --qos=short --export=NONE --requeue\n#SBATCH --signal=B:USR1@60\n"
    assert read_batch_script("job.sh", text).extra == (
        ("qos", "short"),
        ("export", "NONE"),
        ("requeue", ""),
        ("signal", "B:USR1@60"),
    )


def test_a_script_must_start_with_a_shebang() -> None:
    for text in ("python train.py\n", "\n#!/bin/bash\n", ""):
        error = error_of(text)
        assert "job.sh does not start with a `#!` line" in error.message
        assert "#!/bin/bash" in str(error.hint)


def test_every_unusable_line_is_reported_at_once_with_its_number() -> None:
    error = error_of(
        "#!/bin/bash\n"
        "#SBATCH --cpus-per-task=many\n"
        "#SBATCH --nodes=1-2\n"
        "#SBATCH --gpus=a100:two\n"
        "#SBATCH --gres=gpu:a100:x2\n"
        "#SBATCH -n four\n"
        "#SBATCH --dependency=afterany:12\n"
        "#SBATCH --dependency=afterok:12:13\n"
        "#SBATCH --partition\n"
        "#SBATCH -pgpu\n"
        "#SBATCH -x node1\n"
        "python train.py\n",
        name="train.sh",
    )
    message = error.message
    assert message.startswith("train.sh has #SBATCH lines hpcjob cannot use:")
    expected = [
        "line 2 `#SBATCH --cpus-per-task=many`: --cpus-per-task wants a whole number, not 'many'",
        "line 3 `#SBATCH --nodes=1-2`: --nodes wants a whole number, not '1-2'",
        "line 4 `#SBATCH --gpus=a100:two`: --gpus wants a whole number, not 'a100:two'",
        "line 6 `#SBATCH -n four`: --ntasks wants a whole number, not 'four'",
        "line 7 `#SBATCH --dependency=afterany:12`: hpcjob can wait for one job to succeed "
        "(afterok:JOB_ID), not 'afterany:12'",
        "line 8 `#SBATCH --dependency=afterok:12:13`: hpcjob can wait for one job",
        "line 9 `#SBATCH --partition`: --partition needs a value",
        "line 10 `#SBATCH -pgpu`: write -p gpu or --partition=gpu instead of -pgpu",
        "line 11 `#SBATCH -x node1`: hpcjob does not know the option '-x'",
    ]
    for phrase in expected:
        assert phrase in message
    # gpu:a100:x2 reads, as in Slurm, as one GPU of the type `a100:x2`: not a number problem
    assert "line 5" not in message


def test_an_unclosed_quote_names_the_script_and_line() -> None:
    error = error_of('#!/bin/bash\n#SBATCH --job-name="a b\n')
    assert error.message.startswith("job.sh: Cannot read the job script line")
    assert "(line 2)" in error.message


def test_an_unquoted_hash_ends_the_line_as_sbatch_reads_it() -> None:
    # Recorded on the test cluster (slurm-wlm 22.05.8): `#SBATCH --job-name=a#b --time=7` gave
    # JobName=a and the partition's default time; `--comment="c#d"` kept its `#`.
    text = '#!/bin/bash\n#SBATCH --job-name=a#b --time=7\n#SBATCH --comment="c#d"\n'
    assert sbatch_directives(text) == [("job-name", "a"), ("comment", "c#d")]
