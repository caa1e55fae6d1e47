"""Options more than one command takes, written once: the aliases (`--profile`, `--json`, a run
reference) and the option blocks — dataclasses whose fields become a command's options
(`with_blocks`), so `submit` and `rerun` share the workload and resource options.

No `from __future__ import annotations`: Typer reads these annotations as objects.
"""

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile", "-P", help="Profile to use (see `hpcjob config show`); may come first too."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
RefArg = Annotated[str, typer.Argument(help="A job id, a run id, or `last`.")]
WaitOpt = Annotated[bool, typer.Option("--wait", "-w", help="Wait for the job to end.")]
CurrentCodeOpt = Annotated[
    bool,
    typer.Option("--current-code", help="Run today's workload code, not the run's snapshot."),
]


@dataclasses.dataclass(frozen=True)
class WorkloadArgs:
    """The workloads' own arguments (`[train]`, `[eda]`); None: the workload's default."""

    epochs: Annotated[int | None, typer.Option(help="[train] Epochs (default 3).")] = None
    batch_size: Annotated[int | None, typer.Option(help="[train] Batch size (256).")] = None
    lr: Annotated[float | None, typer.Option(help="[train] Learning rate (1e-3).")] = None
    hidden_units: Annotated[str | None, typer.Option(help="[train] e.g. 512,256.")] = None
    dropout: Annotated[float | None, typer.Option(help="[train] Dropout rate (0.2).")] = None
    seed: Annotated[
        int | None,
        typer.Option(help="[train] Random seed (0; not given, each --array task: its task id)."),
    ] = None
    num_workers: Annotated[
        int | None,
        typer.Option(
            help="[train] Loader workers (default: one less than the allocated cores, at most 8)."
        ),
    ] = None
    weighted_sampling: Annotated[
        bool | None,
        typer.Option("--weighted-sampling/--no-weighted-sampling", help="[train] Balance classes."),
    ] = None
    allow_cpu: Annotated[
        bool | None,
        typer.Option(
            "--allow-cpu/--no-allow-cpu",
            help="[train] Train on the CPU when the GPUs asked for are unusable (default: stop).",
        ),
    ] = None
    keep_checkpoints: Annotated[
        int | None,
        typer.Option(help="[train] Newest epoch checkpoints kept besides last.pt, best.pt (0)."),
    ] = None
    block_size: Annotated[int | None, typer.Option(help="[eda] Images per read (1024).")] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ResourceArgs:
    """What a job asks of the cluster, as submit and rerun both take it."""

    partition: Annotated[str | None, typer.Option("--partition", "-p", help="Slurm partition.")] = (
        None
    )
    time_limit: Annotated[
        str | None, typer.Option("--time", "-t", help="Time limit: MM, HH:MM:SS, D-HH:MM:SS …")
    ] = None
    cpus: Annotated[int | None, typer.Option("--cpus", "-c", help="CPU cores per task.")] = None
    mem: Annotated[str | None, typer.Option(help="Memory per node, e.g. 16G.")] = None
    gpus: Annotated[int | None, typer.Option(help="GPUs (default 1 on gpu partitions).")] = None
    nodes: Annotated[int | None, typer.Option(help="Number of nodes.")] = None
    gpus_per_node: Annotated[
        int | None, typer.Option(help="GPUs on each node (with --nodes; one node: as --gpus).")
    ] = None
    procs_per_node: Annotated[
        int | None,
        typer.Option(help="Processes (ranks) per node (default: the GPUs per node, else 1)."),
    ] = None
    launcher: Annotated[
        str | None,
        typer.Option(help="torchrun, srun or none (default: torchrun with more than 1 process)."),
    ] = None

    def to_dict(self) -> dict[str, Any]:
        """By SpecRequest field name."""
        return {
            "partition": self.partition,
            "time": self.time_limit,
            "cpus_per_task": self.cpus,
            "mem": self.mem,
            "gpus": self.gpus,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "procs_per_node": self.procs_per_node,
            "launcher": self.launcher,
        }


F = TypeVar("F", bound=Callable[..., Any])


def with_blocks(func: F) -> F:
    """Each parameter of `func` annotated with an option block (a dataclass above) becomes that
    block's fields as options; `func` is called with one instance of the block instead."""
    hints = typing.get_type_hints(func, include_extras=True)
    params: list[inspect.Parameter] = []
    blocks: dict[str, tuple[type, list[str]]] = {}
    for param in inspect.signature(func).parameters.values():
        hint = hints.get(param.name, param.annotation)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            fields = typing.get_type_hints(hint, include_extras=True)
            names = [f.name for f in dataclasses.fields(hint)]
            blocks[param.name] = (hint, names)
            params += [
                inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=fields[n]).replace(
                    default=getattr(hint, n)
                )
                for n in names
            ]
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hint))

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        for name, (block, names) in blocks.items():
            kwargs[name] = block(**{n: kwargs.pop(n) for n in names})
        return func(**kwargs)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]
