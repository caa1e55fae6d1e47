"""Start-up cost of hpcjob commands against a bare `import typer, rich` (issues 2 and 19).

One command: `.venv/bin/python bench/startup.py`. Runs each command many times, interleaved so the
machine's load affects all alike, reports medians and the ratio to `import typer, rich` with each
target of issue 19 and whether it is met, and writes the table into bench/RESULTS.md under
"### Start-up" of the issue 19 section.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "### Start-up"
BASE = "python -c 'import typer, rich'"
# Issue 19's targets: a command's median at most this many times `import typer, rich`.
TARGETS = {
    "hpcjob --help": 1.2,
    "hpcjob status (empty ledger)": 1.5,
    "hpcjob runs --json (empty)": 1.5,
}
REPEATS = int(os.environ.get("BENCH_REPEATS", "21"))


def commands() -> dict[str, list[str]]:
    hpcjob = str(Path(sys.executable).parent / "hpcjob")
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import typer, rich'": [sys.executable, "-c", "import typer, rich"],
        "hpcjob --help": [hpcjob, "--help"],
        "hpcjob status (empty ledger)": [hpcjob, "status"],
        "hpcjob runs --json (empty)": [hpcjob, "runs", "--json"],
    }


def measure(env: dict[str, str]) -> dict[str, list[float]]:
    cmds = commands()
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(REPEATS):
        for name, argv in cmds.items():
            started = time.perf_counter()
            subprocess.run(argv, env=env, capture_output=True, check=True)
            times[name].append(time.perf_counter() - started)
    return times


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {date.today()}"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: they say how busy it was)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def write_section(body: str, heading: str = HEADING) -> None:
    """Put `body` into bench/RESULTS.md in place of the section under `heading` (up to the next
    heading of its level or above); a new section goes at the end."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        level = heading.split(" ", 1)[0]
        ends = [
            text.find("\n" + "#" * n + " ", start + len(heading)) for n in range(2, len(level) + 1)
        ]
        end = min((e for e in ends if e != -1), default=-1)
        text = text[:start] + body.rstrip("\n") + "\n" + ("" if end == -1 else text[end:])
    RESULTS.write_text(text.rstrip("\n") + "\n")


def report(times: dict[str, list[float]], load: str) -> str:
    base = statistics.median(times[BASE])
    lines = [
        HEADING,
        "",
        f"Machine: {machine()}; load average before the run {load}. {REPEATS} runs of each "
        "command, interleaved; medians.",
        "Command: `.venv/bin/python bench/startup.py`.",
        "",
        "| command | median (ms) | × `import typer, rich` | target |",
        "|---|---:|---:|---|",
    ]
    for name, samples in times.items():
        ratio = statistics.median(samples) / base
        target = TARGETS.get(name)
        verdict = (
            "" if target is None else f"≤ {target}×: {'met' if ratio <= target else 'NOT met'}"
        )
        lines.append(
            f"| `{name}` | {statistics.median(samples) * 1000:.0f} | {ratio:.2f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    # Byte-code as an installed hpcjob has it: a stale or missing .pyc (PYTHONDONTWRITEBYTECODE,
    # a file edited since) would time the compiler instead of the start-up.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "hpcjob")], check=True)
    load = load_average()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HPCJOB_HOME": home, "HPCJOB_PROFILE": "local"}
        times = measure(env)
    body = report(times, load)
    print(body)
    write_section(body)


if __name__ == "__main__":
    main()
