"""Sweeps: `submit --sweep lr=1e-3,1e-4 --sweep hidden=256,512` as ONE job array.

The cartesian product of the values becomes the array's tasks (task i runs combination i); the
job script picks the task's arguments by `$SLURM_ARRAY_TASK_ID` from a `case` rendered here and
quoted by render's helper. The array's parent run is the sweep: its spec carries
`sweep` = {sweep_id, params, max_parallel}; each task is a run of its own whose spec has its own
arguments and `sweep_task` = {sweep_id, index, params}. Resubmitting failed tasks makes a new
array (only those indices) with the same `sweep_id`, so `sweep status` sees every attempt.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.spec import (
    WORKLOADS,
    ArgDef,
    JobSpec,
    Resources,
    SpecRequest,
    array_task_seeds,
    check_arg,
    workload_argv,
)

# Slurm's default MaxArraySize is 1001 (task ids 0…1000).
MAX_TASKS = 1000
DEFAULT_MAX_PARALLEL = 4
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Sweep:
    """Which workload arguments take which values; task i is the i-th combination."""

    params: tuple[tuple[str, tuple[Any, ...]], ...]
    max_parallel: int = DEFAULT_MAX_PARALLEL
    sweep_id: str | None = None  # the first array's run id, set when it is prepared
    indices: tuple[int, ...] | None = None  # only these tasks (a resubmission); None: all
    # "args": a built-in workload's options; "config": keys of a program's config file.
    target: str = "args"

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.params]

    def combinations(self) -> list[dict[str, Any]]:
        """Every task's parameters, in task order (the last parameter varies fastest)."""
        values = [vals for _, vals in self.params]
        return [dict(zip(self.names, combo, strict=True)) for combo in itertools.product(*values)]

    def task_indices(self) -> list[int]:
        return list(self.indices) if self.indices is not None else list(range(self.size))

    @property
    def size(self) -> int:
        return math.prod(len(vals) for _, vals in self.params)

    def array_spec(self) -> str:
        """Slurm's --array for the tasks to run, with the `%` throttle."""
        tasks = self.task_indices()
        return f"{compress_indices(tasks)}%{min(self.max_parallel, len(tasks))}"

    def apply(self, spec: JobSpec) -> JobSpec:
        """The parent's spec: the swept arguments are the tasks' own (None here)."""
        return dataclasses.replace(spec, args={**spec.args, **dict.fromkeys(self.names)})

    def task_argv(self, workload: str) -> tuple[tuple[int, tuple[str, ...]], ...]:
        """Each task's extra program arguments (all tasks, so any subset can be resubmitted)."""
        return tuple(
            (index, tuple(workload_argv(JobSpec(workload, Resources(), args=combo))))
            for index, combo in enumerate(self.combinations())
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep_id": self.sweep_id,
            # A list, not a mapping: the ledger stores JSON with sorted keys, and the order of
            # the parameters decides which task runs which combination.
            "params": [{"name": name, "values": list(vals)} for name, vals in self.params],
            "max_parallel": self.max_parallel,
            "tasks": len(self.task_indices()),
            **({"target": self.target} if self.target != "args" else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sweep:
        return cls(
            params=tuple((p["name"], tuple(p["values"])) for p in data["params"]),
            max_parallel=int(data.get("max_parallel") or DEFAULT_MAX_PARALLEL),
            sweep_id=data.get("sweep_id"),
            target=str(data.get("target") or "args"),
        )


def compress_indices(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → `0-2,5,7-8`."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    start = prev = ordered[0]
    for value in [*ordered[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ",".join(parts)


# -- parsing ----------------------------------------------------------------------------------


def parse_sweeps(workload: str, texts: Sequence[str], max_parallel: int | None = None) -> Sweep:
    """`--sweep NAME=V1,V2` options into a Sweep, each value checked with the workload's own
    argument type and rule; every problem at once (exit 2). Values that hold commas themselves
    (`--hidden-units 512,256`) are separated with `;`: `hidden=512,256;256,128`."""
    definition = WORKLOADS.get(workload)
    if definition is None:
        raise HpcjobError(f"Unknown workload {workload!r}.", exit_code=EXIT_USAGE)
    problems: list[str] = []
    params: list[tuple[str, tuple[Any, ...]]] = []
    for text in texts:
        name, sep, raw = text.partition("=")
        arg = _find_arg(definition.args, name.strip())
        if not sep or not raw.strip():
            problems.append(f"--sweep {text!r}: write NAME=VALUE1,VALUE2 (e.g. lr=1e-3,1e-4)")
            continue
        if arg is None:
            known = ", ".join(a.name for a in definition.args) or "none"
            problems.append(
                f"--sweep {text!r}: {workload} has no argument {name.strip()!r} (it has: {known})"
            )
            continue
        if arg.name in dict(params):
            problems.append(f"--sweep {arg.name} is given twice; list all its values in one")
            continue
        words = [w.strip() for w in raw.split(";" if ";" in raw else ",")]
        values = []
        for word in words:
            value, problem = _parse_value(arg, word)
            if problem is None:
                problem = check_arg(arg, value)
            if problem:
                problems.append(f"--sweep {arg.name}={word!r}: {problem}")
            else:
                values.append(value)
        if len(set(map(repr, values))) != len(values):
            problems.append(f"--sweep {arg.name} lists a value twice")
        params.append((arg.name, tuple(values)))
    return make_sweep(
        params,
        max_parallel,
        problems,
        hint="Each --sweep is NAME=V1,V2,… with a workload argument's name, e.g. "
        "--sweep lr=1e-3,1e-4 --sweep hidden=256,512.",
    )


def make_sweep(
    params: Sequence[tuple[str, tuple[Any, ...]]],
    max_parallel: int | None,
    problems: list[str],
    *,
    hint: str,
    target: str = "args",
) -> Sweep:
    """The sweep of these parameters, or every problem found (with those already found) at once."""
    if max_parallel is not None and max_parallel < 1:
        problems.append(f"--max-parallel must be at least 1, got {max_parallel}")
    size = math.prod(len(vals) for _, vals in params) if params else 0
    if size > MAX_TASKS:
        problems.append(f"the sweep has {size} combinations; at most {MAX_TASKS} fit one array")
    if problems:
        raise HpcjobError(
            "The sweep has problems:\n" + "\n".join(f"  - {p}" for p in problems),
            hint=hint,
            exit_code=EXIT_USAGE,
        )
    return Sweep(tuple(params), max_parallel or DEFAULT_MAX_PARALLEL, target=target)


def _find_arg(args: Sequence[ArgDef], name: str) -> ArgDef | None:
    """By name (`hidden_units`, `hidden-units`, `--hidden-units`) or a unique prefix (`hidden`)."""
    key = name.lstrip("-").replace("-", "_")
    exact = [a for a in args if a.name == key]
    prefixed = [a for a in args if a.name.startswith(key)] if key else []
    return exact[0] if exact else (prefixed[0] if len(prefixed) == 1 else None)


def _parse_value(arg: ArgDef, word: str) -> tuple[Any, str | None]:
    if word == "":
        return None, "an empty value"
    if arg.kind is bool:
        if word.lower() in _TRUE | _FALSE:
            return word.lower() in _TRUE, None
        return None, "must be true or false"
    if arg.kind in (int, float):
        try:
            return arg.kind(word), None
        except ValueError:
            kind = "a whole number" if arg.kind is int else "a number"
            return None, f"must be {kind}"
    return word, None


# -- tasks and their results ----------------------------------------------------------------


def task_specs(parent_spec: Mapping[str, Any], tasks: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Each task's own spec: the parent's with the task's arguments (a sweep's) and its seed
    where the parent leaves it to the task (array_task_seeds), and its place in the sweep."""
    info = parent_spec.get("sweep")
    seeds = array_task_seeds(parent_spec, tasks)
    base = {k: v for k, v in parent_spec.items() if k != "sweep"}
    args = base.get("args") or {}
    if not info:
        return {task: {**base, "args": {**args, "seed": seed}} for task, seed in seeds.items()}
    combos = Sweep.from_dict(info).combinations()
    return {
        task: {
            **base,
            "args": {**args, **({"seed": seeds[task]} if task in seeds else {}), **combos[task]},
            "sweep_task": {"sweep_id": info["sweep_id"], "index": task, "params": combos[task]},
        }
        for task in tasks
        if task < len(combos)
    }


def lower_is_better(metric: str) -> bool:
    """Losses, errors and times are best low; throughputs (`images_per_s`, `tflops`), scores
    (accuracy, AUC, F1, precision, recall, IoU, Dice) and GPU utilisation are best high."""
    higher = ("per_s", "/s", "throughput", "flops", "auc", "acc", "f1", "precision", "recall",
              "iou", "dice", "util")  # fmt: skip
    name = metric.lower()
    return not any(word in name for word in higher)


def best_value(values: Sequence[float | None], metric: str) -> float | None:
    found = [v for v in values if v is not None and math.isfinite(v)]
    if not found:
        return None
    return min(found) if lower_is_better(metric) else max(found)


def failed_tasks(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Tasks whose latest attempt ended other than COMPLETED (failed, cancelled, timed out…)."""
    return [
        int(r["task"])
        for r in rows
        if JobState.parse(r["state"]).is_final and r["state"] != JobState.COMPLETED.value
    ]


def sweep_request(
    request: SpecRequest,
    texts: Sequence[str],
    max_parallel: int | None,
    parse: Callable[[SpecRequest, Sequence[str], int | None], Sweep] | None = None,
) -> tuple[SpecRequest, Sweep | None]:
    """`submit --sweep …`: the request made into the sweep's array, and the sweep (`parse`
    reads a program's config-key sweeps; default: a built-in workload's options)."""
    if not texts:
        if max_parallel is not None:
            raise HpcjobError(
                "--max-parallel applies to a sweep.",
                hint="Add --sweep NAME=V1,V2, or use --array 0-9%2 for a plain array.",
                exit_code=EXIT_USAGE,
            )
        return request, None
    if request.array:
        raise HpcjobError(
            "--sweep makes the job array itself; leave out --array.",
            hint="Set how many tasks run at once with --max-parallel N.",
            exit_code=EXIT_USAGE,
        )
    if parse is not None:
        sweep = parse(request, texts, max_parallel)
    else:
        sweep = parse_sweeps(request.workload, texts, max_parallel)
    clash = [name for name in sweep.names if request.args.get(name) is not None]
    if clash:
        flags = ", ".join(
            ("--" + name.replace("_", "-")) if sweep.target == "args" else f"--set {name}"
            for name in clash
        )
        raise HpcjobError(
            f"{flags} is swept and given as a plain option too.",
            hint="Give each argument either as an option or as a --sweep, not both.",
            exit_code=EXIT_USAGE,
        )
    return dataclasses.replace(request, array=sweep.array_spec()), sweep
