"""SBU cost: Snellius's rates, the smallest allocation, unknown partitions, profile overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpcjob.config import load_settings, resolve_profile
from hpcjob.cost import (
    SNELLIUS_SBU_RATES,
    Cost,
    Request,
    cost,
    estimate_line,
    parse_rates,
    period_bound,
    total,
)
from hpcjob.errors import HpcjobError

SNELLIUS = parse_rates(SNELLIUS_SBU_RATES)
HOUR = 3600


@pytest.mark.parametrize(
    ("partition", "cores", "gpus", "sbu_per_hour"),
    [
        ("gpu_a100", 18, 1, 128),
        ("gpu_h100", 16, 1, 192),
        ("gpu_mig", 9, 1, 64),
        ("rome", 16, 0, 16),  # 1 SBU per core-hour, 16 cores
        ("genoa", 24, 0, 24),
        ("fat_rome", 16, 0, 24),  # 1.5 per core-hour
        ("fat_genoa", 24, 0, 36),
        ("staging", 1, 0, 2),
    ],
)
def test_each_snellius_rate_for_its_smallest_allocation(
    partition: str, cores: int, gpus: int, sbu_per_hour: float
) -> None:
    spent = cost(SNELLIUS, Request(partition, cores=cores, gpus=gpus), HOUR)
    assert spent.sbu == sbu_per_hour
    assert spent.note is None  # nothing billed beyond the request


def test_gpu_jobs_are_billed_at_least_a_quarter_node() -> None:
    one_core = cost(SNELLIUS, Request("gpu_a100", cores=1, gpus=1), HOUR)
    assert one_core.sbu == 128 and one_core.units == 1
    # More cores than a quarter node brings: billed by cores, in whole quarter nodes.
    many_cores = cost(SNELLIUS, Request("gpu_a100", cores=36, gpus=1), HOUR)
    assert many_cores.sbu == 256 and "billed for 2 gpus per node (asked 1)" in str(many_cores.note)
    # Memory above a quarter node's 120 GiB, likewise.
    big_mem = cost(SNELLIUS, Request("gpu_a100", cores=1, gpus=1, mem_mb=200 * 1024), HOUR)
    assert big_mem.sbu == 256
    two_gpus = cost(SNELLIUS, Request("gpu_h100", cores=1, gpus=2), 30 * 60)
    assert two_gpus.sbu == 192  # 2 GPUs × half an hour × 192


def test_cpu_jobs_are_billed_per_core_with_the_smallest_allocation() -> None:
    assert cost(SNELLIUS, Request("rome", cores=1), HOUR).sbu == 16  # 1/8 node minimum
    assert cost(SNELLIUS, Request("rome", cores=64), 2 * HOUR).sbu == 128
    # 100 GiB on rome is the memory of 58 cores (1.75 GiB per core).
    assert cost(SNELLIUS, Request("rome", cores=1, mem_mb=100 * 1024), HOUR).sbu == 58
    two_nodes = cost(SNELLIUS, Request("genoa", cores=192, nodes=2), HOUR)
    assert two_nodes.sbu == 384 and two_nodes.units == 384


def test_exclusive_partitions_bill_whole_nodes() -> None:
    rates = parse_rates({"big": {"sbu_per_hour": 1.0, "exclusive": True, "node_units": 128}})
    assert cost(rates, Request("big", cores=4), HOUR).sbu == 128


def test_unknown_partition_says_how_to_set_a_rate() -> None:
    spent = cost(SNELLIUS, Request("gpu_vis", cores=1, gpus=1), HOUR)
    assert spent.sbu is None
    assert spent.note == "no SBU rate for partition gpu_vis (set sbu_rates in the profile)"
    assert estimate_line(spent) == f"cost: {spent.note}"
    assert cost(SNELLIUS, Request(None), HOUR).sbu is None


def test_estimate_line_says_max_at_the_time_limit() -> None:
    line = estimate_line(cost(SNELLIUS, Request("gpu_a100", cores=18, gpus=1), 3 * HOUR))
    assert line == "≈ 384 SBU (max, at the time limit: 3 h × 1 gpu × 128 SBU/h)"


def test_short_numbers_and_rates_as_plain_numbers() -> None:
    rates = parse_rates({"gpu_x": 10, "cpu_x": 0.5})
    assert rates["gpu_x"].per == "gpu" and rates["cpu_x"].per == "core"
    assert cost(rates, Request("gpu_x", gpus=2), HOUR).sbu == 20
    assert cost(rates, Request("cpu_x", cores=3), HOUR).sbu == 1.5
    assert total([Cost("a", 1.25, 1), Cost("b", None, 1), Cost("c", 2, 1)]) == (3.25, 1)


@pytest.mark.parametrize(
    ("table", "phrase"),
    [
        ({"rome": "cheap"}, "must be a number (SBU per hour) or a table"),
        ({"rome": {"per": "core"}}, "needs sbu_per_hour"),
        ({"rome": {"sbu_per_hour": 1, "price": 2}}, "unknown key(s) price"),
        ({"rome": {"sbu_per_hour": 1, "per": "node"}}, "per must be 'core' or 'gpu'"),
        ({"rome": {"sbu_per_hour": -1}}, "must not be negative"),
        ({"rome": {"sbu_per_hour": 1, "exclusive": True}}, "needs node_units"),
        ({"rome": {"sbu_per_hour": 1, "assumed": True}}, "assumed must be text"),
        ("128", "must be a table of partition = rate"),
    ],
)
def test_bad_rate_tables_are_refused_with_the_entry(table: Any, phrase: str) -> None:
    with pytest.raises(HpcjobError) as err:
        parse_rates(table)
    assert phrase in err.value.message


def write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def test_profile_overrides_and_extends_the_built_in_rates(isolated_home: Path) -> None:
    write_config(
        isolated_home,
        """
[profiles.snellius.sbu_rates]
gpu_course = { sbu_per_hour = 32, per = "gpu" }
rome = 2.0

[profiles.mine]
scheduler = "slurm"
[profiles.mine.sbu_rates]
gpu_a100 = 100
""",
    )
    settings = load_settings()
    snellius = resolve_profile(settings, profile_flag="snellius")
    assert snellius.get("sbu_rates")["gpu_course"]["sbu_per_hour"] == 32
    mine = resolve_profile(settings, profile_flag="mine")
    assert cost(parse_rates(mine.get("sbu_rates")), Request("gpu_a100", gpus=1), HOUR).sbu == 100


def test_a_bad_rate_in_the_config_file_names_the_profile(isolated_home: Path) -> None:
    write_config(isolated_home, '[profiles.local.sbu_rates]\nrome = "x"\n')
    with pytest.raises(HpcjobError) as err:
        resolve_profile(load_settings())
    assert "[profiles.local] sbu_rates.rome must be a number" in err.value.message


def test_period_bounds() -> None:
    assert period_bound("2026-11-01", "--since") == "2026-11-01T00:00:00Z"
    assert period_bound("2026-11-01T12:30", "--until") == "2026-11-01T12:30:00Z"
    with pytest.raises(HpcjobError) as err:
        period_bound("last week", "--since")
    assert err.value.exit_code == 2 and "2026-11-01" in str(err.value.hint)


def show(estimate: Cost | None, actual: Cost | None) -> list[str]:
    from hpcjob.cost import show_lines

    return show_lines(
        {
            "estimate": estimate.to_dict() if estimate else None,
            "actual": actual.to_dict() if actual else None,
        }
    )


def test_show_cost_reads_well_in_every_case() -> None:
    """`show`'s Cost section: never `estimate  cost: none — …` (a doubled word), never the
    same reason twice."""
    from hpcjob.cost import NOT_BILLED

    free = Cost("rome", None, 0.5, note=NOT_BILLED)
    assert show(free, Cost(None, None, 0.01, note=NOT_BILLED)) == [
        "  not billed: the embedded scheduler runs jobs on this machine"
    ]
    no_rate = cost(SNELLIUS, Request("gpu_vis", gpus=1), HOUR)
    assert show(no_rate, cost(SNELLIUS, Request("gpu_vis", gpus=1), 60)) == [
        "  unknown: no SBU rate for partition gpu_vis (set sbu_rates in the profile)"
    ]
    estimate = cost(SNELLIUS, Request("gpu_a100", gpus=1), HOUR)
    assert show(estimate, None) == [
        "  estimate  ≈ 128 SBU (max, at the time limit: 1 h × 1 gpu × 128 SBU/h)",
        "  actual    nothing: the job has not run",
    ]
    assert show(estimate, cost(SNELLIUS, Request("gpu_a100", gpus=1), 6 * 60)) == [
        "  estimate  ≈ 128 SBU (max, at the time limit: 1 h × 1 gpu × 128 SBU/h)",
        "  actual    12.8 SBU (6.0 min × 1 gpu × 128 SBU/h)",
    ]
    for lines in (show(free, None), show(no_rate, None)):
        text = "\n".join(lines)
        assert "cost:" not in text and "none — " not in text, text


# -- a GPU job gets its share of the node ------------------------------------------------------


def test_a_gpu_share_is_what_the_rate_knows_per_gpu_times_the_gpus() -> None:
    from hpcjob.cost import gpu_share, share_line

    a100 = gpu_share(SNELLIUS, "gpu_a100", 1)
    assert a100 is not None and (a100.cores, a100.mem_mb) == (18, 120 * 1024)
    assert share_line(a100, True, True) == (
        "gpu_a100: 1 GPU brings 18 cores + 120 GiB; requested them"
    )
    h100 = gpu_share(SNELLIUS, "gpu_h100", 2)
    assert h100 is not None and (h100.cores, h100.mem_mb) == (32, 360 * 1024)
    assert share_line(h100, False, True).endswith("requested the 360 GiB")
    assert gpu_share(SNELLIUS, "rome", 1) is None  # per core
    assert gpu_share(SNELLIUS, "gpu_a100", 0) is None
    assert gpu_share(SNELLIUS, None, 1) is None
    assert gpu_share(parse_rates({"gpu_a100": 128}), "gpu_a100", 1) is None  # no share known


# Port 1 on loopback refuses at once: a dry run goes on offline (test_profiles_cli.py).
OFFLINE_SNELLIUS = '[profiles.snellius]\nhost = "127.0.0.1"\nport = 1\nuser = "me"\n'
TRAIN = ["submit", "train", "--data-dir", "/projects/0/pcam", "--time", "01:00:00"]


@pytest.fixture
def offline_home(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HPCJOB_HOME, and a HOME of the test's own: never the developer's ~/.ssh."""
    (tmp_path / "user").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return isolated_home


def header(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH --")]


def test_a_snellius_gpu_train_asks_for_its_share_and_the_estimate_agrees(
    cli: Any, offline_home: Path
) -> None:
    write_config(offline_home, OFFLINE_SNELLIUS)
    dry = cli(*TRAIN, "-P", "snellius", "--gpus", "1", "-p", "gpu_a100", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    shown = dry.json()
    lines = header(shown["script"])
    assert "#SBATCH --cpus-per-task=18" in lines and "#SBATCH --mem=120G" in lines
    assert "gpu_a100: 1 GPU brings 18 cores + 120 GiB; requested them" in dry.stderr
    estimate = shown["sbu_estimate"]
    assert (estimate["units"], estimate["sbu"], estimate["note"]) == (1, 128, None)

    rendered = cli(*TRAIN, "-P", "snellius", "--gpus", "2", "-p", "gpu_h100", "--dry-run")
    assert rendered.exit_code == 0, rendered.stderr
    lines = header(rendered.stdout)
    assert "#SBATCH --cpus-per-task=32" in lines and "#SBATCH --mem=360G" in lines
    assert "gpu_h100: 2 GPUs bring 32 cores + 360 GiB; requested them" in rendered.stderr


def test_a_node_of_4_a100s_gets_4_shares_split_over_its_ranks(cli: Any, offline_home: Path) -> None:
    # 4 GPUs on one node: 4 × (18 cores + 120 GiB), 18 cores for each of the 4 torchrun ranks
    # (the template asks for 4 × 18 in the one task per node), all 480 GiB for the node.
    write_config(offline_home, OFFLINE_SNELLIUS)
    dry = cli(
        *TRAIN, "-P", "snellius", "-p", "gpu_a100", "--gpus-per-node", "4", "--dry-run", "--json"
    )
    assert dry.exit_code == 0, dry.stderr
    lines = header(dry.json()["script"])
    assert "#SBATCH --nodes=1" in lines and "#SBATCH --ntasks-per-node=1" in lines
    assert "#SBATCH --cpus-per-task=72" in lines and "#SBATCH --mem=480G" in lines
    assert "#SBATCH --gpus-per-node=4" in lines
    assert (
        "gpu_a100: 4 GPUs per node bring 72 cores + 480 GiB per node; requested them "
        "(18 cores for each of 4 ranks)"
    ) in dry.stderr
    assert dry.json()["sbu_estimate"]["units"] == 4


def test_two_nodes_of_4_a100s_get_the_share_on_each_node(cli: Any, offline_home: Path) -> None:
    write_config(offline_home, OFFLINE_SNELLIUS)
    args = [*TRAIN, "-P", "snellius", "-p", "gpu_a100", "--nodes", "2", "--gpus-per-node", "4"]
    dry = cli(*args, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    lines = header(dry.json()["script"])
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --ntasks-per-node=1" in lines
    assert "#SBATCH --cpus-per-task=72" in lines and "#SBATCH --mem=480G" in lines  # per node
    assert "gpu_a100: 4 GPUs per node bring 72 cores + 480 GiB per node" in dry.stderr
    assert dry.json()["sbu_estimate"]["units"] == 8  # 2 nodes × 4 GPUs, nothing more
    # srun starts each rank as its own task: --cpus-per-task is one rank's share.
    srun = cli(*args, "--launcher", "srun", "--dry-run", "--json")
    assert srun.exit_code == 0, srun.stderr
    lines = header(srun.json()["script"])
    assert "#SBATCH --ntasks-per-node=4" in lines and "#SBATCH --cpus-per-task=18" in lines
    assert "#SBATCH --mem=480G" in lines
    # Fewer ranks than GPUs: each rank gets the cores of the GPUs it drives.
    two = cli(*args, "--procs-per-node", "2", "--dry-run", "--json")
    assert two.exit_code == 0, two.stderr
    assert "#SBATCH --cpus-per-task=72" in header(two.json()["script"])
    assert "(36 cores for each of 2 ranks)" in two.stderr


def test_the_share_fills_only_what_is_not_given_on_several_nodes(
    cli: Any, offline_home: Path
) -> None:
    write_config(offline_home, OFFLINE_SNELLIUS)
    args = [*TRAIN, "-P", "snellius", "-p", "gpu_h100", "--nodes", "2", "--gpus-per-node", "2"]
    cpus = cli(*args, "--cpus", "4", "--dry-run", "--json")
    assert cpus.exit_code == 0, cpus.stderr
    lines = header(cpus.json()["script"])
    assert "#SBATCH --cpus-per-task=8" in lines and "#SBATCH --mem=360G" in lines
    assert "requested the 360 GiB per node" in cpus.stderr
    mem = cli(*args, "--mem", "64G", "--dry-run", "--json")
    lines = header(mem.json()["script"])
    assert "#SBATCH --cpus-per-task=32" in lines and "#SBATCH --mem=64G" in lines
    assert "requested the 32 cores (16 cores for each of 2 ranks)" in mem.stderr


def test_explicit_cpus_and_mem_win_over_the_share(cli: Any, offline_home: Path) -> None:
    write_config(offline_home, OFFLINE_SNELLIUS)
    both = cli(
        *TRAIN,
        "-P",
        "snellius",
        "-p",
        "gpu_a100",
        "--cpus",
        "4",
        "--mem",
        "32G",
        "--dry-run",
        "--json",
    )
    assert both.exit_code == 0, both.stderr
    lines = header(both.json()["script"])
    assert "#SBATCH --cpus-per-task=4" in lines and "#SBATCH --mem=32G" in lines
    assert "brings" not in both.stderr
    cpus = cli(*TRAIN, "-P", "snellius", "-p", "gpu_a100", "--cpus", "4", "--dry-run", "--json")
    lines = header(cpus.json()["script"])
    assert "#SBATCH --cpus-per-task=4" in lines and "#SBATCH --mem=120G" in lines
    assert "requested the 120 GiB" in cpus.stderr


def test_a_profile_without_share_info_gets_nothing_added(cli: Any, offline_home: Path) -> None:
    write_config(
        offline_home,
        '[profiles.lab]\nhost = "127.0.0.1"\nport = 1\nuser = "me"\n'
        "[profiles.lab.sbu_rates]\ngpu_a100 = 100\n"
        'gpu_x = { sbu_per_hour = 10, per = "gpu", cores_per_gpu = 8, mem_gib_per_unit = 64 }\n',
    )
    plain = cli(*TRAIN, "-P", "lab", "-p", "gpu_a100", "--dry-run", "--json")
    assert plain.exit_code == 0, plain.stderr
    lines = header(plain.json()["script"])
    assert not [line for line in lines if "--cpus-per-task" in line or "--mem" in line]
    assert "brings" not in plain.stderr
    added = cli(*TRAIN, "-P", "lab", "-p", "gpu_x", "--dry-run", "--json")  # a user's own table
    assert added.exit_code == 0, added.stderr
    lines = header(added.json()["script"])
    assert "#SBATCH --cpus-per-task=8" in lines and "#SBATCH --mem=64G" in lines


# -- course partitions: assumed rates, said so -------------------------------------------------


def test_the_course_partitions_have_rates_marked_assumed() -> None:
    gpu = cost(SNELLIUS, Request("gpu_course", cores=1, gpus=1), HOUR)
    assert (gpu.sbu, gpu.sbu_per_hour) == (64, 64)  # gpu_mig's: the most a slice can cost
    assert estimate_line(gpu) == (
        "≈ 64.0 SBU (max, at the time limit: 1 h × 1 gpu × 64 SBU/h) (rate assumed: "
        "gpu_course's rate is not published; gpu_mig's (64 SBU per MIG slice-hour) is used, an "
        "upper bound for a smaller 1g.5gb slice)"
    )
    thin = cost(SNELLIUS, Request("thin_course", cores=4), HOUR)
    assert thin.sbu == 16  # thin's: 16 cores at least
    assert (
        thin.assumed == "thin_course's rate is not published; thin's (1 SBU per core-hour) is used"
    )
    assert cost(SNELLIUS, Request("rome", cores=16), HOUR).assumed is None


def test_show_says_where_a_rate_is_assumed() -> None:
    estimate = cost(SNELLIUS, Request("thin_course", cores=16), HOUR)
    actual = cost(SNELLIUS, Request("thin_course", cores=16), 1800)
    estimate_shown, actual_shown = show(estimate, actual)
    assert estimate_shown.endswith(
        "(rate assumed: thin_course's rate is not published; thin's (1 SBU per core-hour) is used)"
    )
    assert actual_shown.startswith(
        "  actual    8.0 SBU (30.0 min × 16 cores × 1 SBU/h) (rate assumed:"
    )


def test_an_assumed_rate_fills_no_gpu_share() -> None:
    from hpcjob.cost import gpu_share

    # The price is a guess; how a course node is shared is not known: ask for nothing.
    assert gpu_share(SNELLIUS, "gpu_course", 1) is None


def test_a_profiles_own_course_rate_is_not_assumed(isolated_home: Path) -> None:
    from hpcjob.config import profile_rates

    write_config(isolated_home, "[profiles.snellius.sbu_rates]\ngpu_course = 32\n")
    settings = load_settings()
    snellius = resolve_profile(settings, profile_flag="snellius")
    rates = profile_rates(settings, snellius, "snellius")
    assert rates["gpu_course"].assumed is None and rates["thin_course"].assumed is not None


def test_a_dry_run_on_a_course_partition_says_the_rate_is_assumed(
    cli: Any, offline_home: Path
) -> None:
    write_config(offline_home, OFFLINE_SNELLIUS)
    dry = cli(*TRAIN, "-P", "snellius", "-p", "gpu_course", "--gpus", "1", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "(rate assumed: gpu_course's rate is not published" in dry.stderr
    assert "brings" not in dry.stderr  # no share filled from a guessed rate
