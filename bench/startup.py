"""Start-up cost of hpcjob commands against a bare `import typer, rich` (issue 2, item 13).

One command: `.venv/bin/python bench/startup.py`. Runs each command many times, interleaved so the
machine's load affects all alike, reports medians and the ratio to `import typer, rich`, and writes
the table into bench/RESULTS.md under "## Start-up (issue 2)".
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
HEADING = "## Start-up (issue 2)"
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


def write_section(body: str, heading: str = HEADING) -> None:
    """Put `body` into bench/RESULTS.md in place of the section under `heading`."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + body.rstrip("\n") + "\n" + ("" if end == -1 else text[end:])
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    # Byte-code as an installed hpcjob has it: a stale or missing .pyc (PYTHONDONTWRITEBYTECODE,
    # a file edited since) would time the compiler instead of the start-up.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "hpcjob")], check=True)
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HPCJOB_HOME": home, "HPCJOB_PROFILE": "local"}
        times = measure(env)
    base = statistics.median(times["python -c 'import typer, rich'"])
    lines = [
        HEADING,
        "",
        f"Machine: {machine()}. {REPEATS} runs of each command, interleaved; medians.",
        "Command: `.venv/bin/python bench/startup.py`.",
        "",
        "| command | median (ms) | × `import typer, rich` |",
        "|---|---:|---:|",
    ]
    for name, samples in times.items():
        median = statistics.median(samples)
        lines.append(f"| `{name}` | {median * 1000:.0f} | {median / base:.2f} |")
    ratio = statistics.median(times["hpcjob --help"]) / base
    lines += ["", f"Target: `hpcjob --help` ≤ 1.5× → measured {ratio:.2f}×.", ""]
    body = "\n".join(lines)
    print(body)
    write_section(body)


if __name__ == "__main__":
    main()
