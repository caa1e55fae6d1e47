"""Train the MLP on PCAM: the program behind `hpcjob submit train`.

    python workloads/train.py --data-dir DIR --epochs 3 --output-dir . --resume auto

Prints `First batch OK: …` and one `Epoch N: Train_Loss = …` line per epoch, and emits the same
numbers through the report channel (metrics.jsonl + `HPCJOB_METRIC` lines). Writes loss.png and,
under <output-dir>/checkpoints/, last.pt after every epoch, best.pt (lowest val_loss) and the
--keep-checkpoints newest epoch-NNN.pt (default 0); the `checkpoints` fact says what is kept.

A job that asked for GPUs (--expect-gpus, or $HPCJOB_EXPECT_GPUS from the job script; else
Slurm's variables) that torch cannot use stops before reading any data, with the reason, unless
--allow-cpu is given.

Under `torchrun` (WORLD_SIZE > 1) it trains with DistributedDataParallel, --batch-size being the
global batch; only rank 0 prints and writes (other ranks print only errors); see ddp.py.

Exit status: 0 done; 1 bad input (data, options, checkpoint) or GPUs asked for that torch cannot
use; 2 usage; 65 non-finite loss; 75 stopped by SIGUSR1/SIGTERM after saving a checkpoint (rerun
with `--resume auto`).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import check_gpu
import ddp
import numpy as np
import pcam
import provenance
import torch
from checkpoint import LAST, Checkpoints, rng_state, set_rng_state
from metrics import describe_nonfinite, plot_losses, roc_auc
from model import MLP
from provenance import GpuSampler
from report import QuietReport, Report
from torch import nn

EXIT_ERROR = 1
EXIT_NONFINITE = 65  # EX_DATAERR
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again (with --resume auto)
# Settings that change the numbers: a resumed run must match the checkpoint's.
RESULT_SETTINGS = (
    "batch_size",
    "lr",
    "hidden_units",
    "dropout",
    "seed",
    "weighted_sampling",
    "filter_data",
    "num_workers",
    "train_fingerprint",
)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message says where and what."""


class UserError(RuntimeError):
    """Bad input from the user (options, data, checkpoint): a message, no traceback."""


@dataclass
class Progress:
    """Where training stands: `batch` batches of `epoch` done (1-based epochs)."""

    epoch: int = 1
    batch: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class StopRequest:
    """Records SIGUSR1/SIGTERM (Slurm's warning before the time limit); acted on between
    batches, where a checkpoint is consistent."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signal_name = signal.Signals(signum).name


def hidden_units(text: str) -> list[int]:
    try:
        units = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        units = []
    if not units or min(units) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 512,256, not {text!r}")
    return units


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train an MLP on PCAM (HDF5).")
    p.add_argument("--data-dir", type=Path, required=True, help="dir with camelyonpatch_* files")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden-units", type=hidden_units, default=[512, 256], help="e.g. 512,256")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument(
        "--weighted-sampling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="class-balanced weighted sampling (--no-weighted-sampling: plain shuffling)",
    )
    p.add_argument(
        "--filter-data",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="drop all-black/all-white images",
    )
    p.add_argument(
        "--preload",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="hold the data in memory",
    )
    p.add_argument("--output-dir", type=Path, default=Path("."))
    p.add_argument("--resume", default="none", help="none, auto (last checkpoint) or a path")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--expect-gpus",
        type=int,
        default=None,
        help="GPUs the job asked for (default: $HPCJOB_EXPECT_GPUS, which the job script sets, "
        "else Slurm's variables)",
    )
    p.add_argument(
        "--allow-cpu",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train on the CPU when the GPUs asked for cannot be used (default: stop, exit 1)",
    )
    p.add_argument(
        "--keep-checkpoints",
        type=int,
        default=0,
        help="epoch checkpoints kept besides last.pt and best.pt (the newest; 0: none)",
    )
    # Tests only: raise SIGUSR1 at self after this many batches, for a deterministic interrupt.
    p.add_argument("--stop-after-batches", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or not 0 <= args.dropout < 1:
        p.error("need epochs ≥ 1, batch size ≥ 1, lr > 0 and 0 ≤ dropout < 1")
    if args.keep_checkpoints < 0:
        p.error("--keep-checkpoints must be at least 0")
    return args


def seed_everything(seed: int) -> None:
    # Deterministic cuBLAS needs this before its first use (it only affects CUDA runs).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA device (try `check_gpu.py`)")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def check_gpus(args: argparse.Namespace, device: torch.device, report: Report) -> None:
    """GPUs asked for (and billed) but not used: stop with the reason, before any data is read —
    or, with --allow-cpu, say so loudly and go on on the CPU. Either way a fact records it."""
    wanted = args.expect_gpus
    if wanted is None and os.environ.get("HPCJOB_EXPECT_GPUS", "").isdigit():
        wanted = int(os.environ["HPCJOB_EXPECT_GPUS"])
    if wanted is None:
        wanted = check_gpu.requested_gpus(os.environ)
    if not wanted or device.type == "cuda":
        return
    plural = "GPU" if wanted == 1 else "GPUs"
    if args.device == "cpu":
        reason = "--device cpu was given"
        message = f"this job asked for {wanted} {plural} but {reason}"
    else:
        reason = "; ".join(check_gpu.missing_reasons(torch, os.environ))
        message = check_gpu.explain_missing(torch, wanted, 0, os.environ)
    report.facts(
        device=str(device),
        gpus_requested=wanted,
        gpu_unused_reason=reason,
        allow_cpu=args.allow_cpu,
    )
    if not args.allow_cpu:
        raise UserError(
            f"{message}. Stopping rather than train on the CPU while the job holds, and is billed "
            f"for, {wanted} {plural}: fix the job's environment (a gpu-check job shows what torch "
            "sees), or give --allow-cpu to train on the CPU anyway"
        )
    print(
        f"WARNING: this job asked for {wanted} {plural} but trains on the CPU (--allow-cpu): "
        f"{reason}. The job is billed for the idle {plural} all the same.",
        file=sys.stderr,
        flush=True,
    )


def data_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data": {
            "data_path": str(args.data_dir),
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
            "weighted_sampling": args.weighted_sampling,
            "preload": args.preload,
            "filter_data": args.filter_data,
            "seed": args.seed,
        }
    }


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = {k: getattr(args, k) for k in RESULT_SETTINGS if k != "train_fingerprint"}
    settings["train_fingerprint"] = pcam.fingerprint(*pcam.split_paths(args.data_dir, "train"))
    return settings


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels → [-1, 1] (the course's Normalize(0.5, 0.5)), on the device: centred
    inputs keep Adam's first steps from silencing every ReLU of the first layer (measured:
    with raw [0, 1] inputs a 64-unit MLP on the course data stayed at AUC 0.5)."""
    return x.mul(2.0).sub_(1.0)


def check_first_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse to train on a batch that is malformed, rather than learn from it silently."""
    problems = []
    if x.dtype != torch.float32 or x.ndim != 4:
        problems.append(f"x should be float32 (B, C, H, W), is {x.dtype} {tuple(x.shape)}")
    elif not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        problems.append("x should be finite and within [0, 1]")
    if y.dtype != torch.int64 or y.ndim != 1 or len(y) != len(x):
        problems.append(f"y should be int64 (B,), is {y.dtype} {tuple(y.shape)}")
    if problems:
        raise UserError("first batch is wrong: " + "; ".join(problems))
    print(f"First batch OK: x={tuple(x.shape)} y={tuple(y.shape)}", flush=True)


class Trainer:
    """One training run: model, optimiser, loaders, progress, and what it writes."""

    def __init__(
        self,
        args: argparse.Namespace,
        report: Report,
        device: torch.device,
        dist: ddp.Dist | None = None,
    ) -> None:
        self.args, self.report, self.device = args, report, device
        self.dist = dist or ddp.Dist()
        self.train_loader, self.val_loader = pcam.get_dataloaders(data_config(args))
        sampler, train_set, val_set = (
            self.train_loader.batch_sampler,
            self.train_loader.dataset,
            self.val_loader.dataset,
        )
        assert isinstance(sampler, pcam.BlockBatchSampler)  # resuming mid-epoch relies on it
        assert isinstance(train_set, pcam.PCAMDataset) and isinstance(val_set, pcam.PCAMDataset)
        self.sampler, self.train_set, self.val_set = sampler, train_set, val_set
        for batches in (sampler, self.val_loader.batch_sampler):
            assert isinstance(batches, pcam.BlockBatchSampler)
            batches.shard(self.dist.rank, self.dist.world)
        # `model` is what is saved and evaluated; `net` (DDP-wrapped under torchrun) trains.
        self.model = MLP((3, 96, 96), args.hidden_units, 2, args.dropout).to(self.device)
        self.net = self.dist.wrap(self.model, self.device)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.loss_fn = nn.CrossEntropyLoss()
        self.sum_loss = nn.CrossEntropyLoss(reduction="sum")
        self.progress = Progress()
        self.checkpoints = Checkpoints(args.output_dir / "checkpoints", args.keep_checkpoints)
        self.settings = run_settings(args)
        self.stop = StopRequest()
        self.batches_run = 0  # in this process, for --stop-after-batches
        self.first_batch_checked = False

    def resume(self, choice: str) -> Path | None:
        path = self.checkpoints.find(choice)
        if path is None:
            return None
        state = self.checkpoints.load(path)
        differ = [k for k in RESULT_SETTINGS if state["settings"].get(k) != self.settings[k]]
        if differ:
            raise UserError(
                f"checkpoint {path} was made with other settings ({', '.join(differ)}"
                "); use --resume none or the original options"
            )
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.progress = Progress(**state["progress"])
        if not self.dist.main:  # rank 0 carries the saved sums; the others add their own
            self.progress.loss_sum, self.progress.seen = 0.0, 0
        set_rng_state(state["rng"])  # last: building the model above drew from the RNG
        return path

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng_state(),
            "settings": self.settings,
            "torch": str(torch.__version__),
        }

    def save_epoch(self, epoch: int) -> None:
        """The checkpoints after a finished epoch (best.pt by val_loss), reported as a fact."""
        history = self.progress.history
        losses = [h["val_loss"] for h in history]
        best = Checkpoints.is_best(losses[-1], losses[:-1])
        self.checkpoints.save_epoch(self.state(), epoch, best)
        self.report.facts(checkpoints=self.checkpoint_summary())

    def checkpoint_summary(self) -> dict[str, Any]:
        finite = [h for h in self.progress.history if math.isfinite(h["val_loss"])]
        best = min(finite, key=lambda h: h["val_loss"]) if finite else None
        return self.checkpoints.summary(
            len(self.progress.history), int(best["epoch"]) if best else None
        )

    def train_epoch(self, epoch: int) -> bool:
        """Train the rest of `epoch`; False when a stop signal arrived (checkpoint saved)."""
        self.model.train()
        self.sampler.set_epoch(epoch, start_batch=self.progress.batch)
        for x, y in self.train_loader:
            # All ranks agree here, between batches, on the batch and on stopping.
            rows, stop = self.dist.agree(len(y), self.stop.signal_name, self.device)
            if stop is not None:
                self.stop.signal_name = stop
                return False
            if not self.first_batch_checked:
                check_first_batch(x, y)
                self.first_batch_checked = True
            self.step(epoch, x, y, rows)
        return True

    def stopping(self) -> bool:
        """Whether any rank got a stop signal (all ranks ask at the same point)."""
        _, stop = self.dist.agree(0, self.stop.signal_name, self.device)
        self.stop.signal_name = stop
        return stop is not None

    def sync_progress(self) -> None:
        """The epoch's loss sum and images seen, summed over the ranks (before they are used)."""
        p = self.progress
        p.loss_sum, seen = self.dist.sum([p.loss_sum, float(p.seen)], self.device)
        p.seen = int(seen)

    def step(self, epoch: int, x: torch.Tensor, y: torch.Tensor, rows: int) -> None:
        """Train on one batch; `rows`: the global batch size (len(y) in a single process)."""
        x = normalise(x.to(self.device, non_blocking=True))
        y = y.to(self.device, non_blocking=True)
        self.optimiser.zero_grad(set_to_none=True)
        logits = self.net(x)
        if self.dist.active:  # DDP averages over ranks: this makes it the global batch's mean
            loss = self.sum_loss(logits, y) * (self.dist.world / rows)
        else:
            loss = self.loss_fn(logits, y)
        batch = self.progress.batch + 1
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                describe_nonfinite(epoch, batch, loss, x, logits, self.model, self.args.lr)
            )
        loss.backward()
        self.optimiser.step()
        self.progress.batch = batch
        # The slice's summed loss (`loss` is scaled under DDP, see above).
        share = rows / self.dist.world if self.dist.active else len(y)
        self.progress.loss_sum += loss.item() * share
        self.progress.seen += len(y)
        self.batches_run += 1
        # The last rank signals itself: the others learn of it from the next agreement.
        last = self.dist.rank == self.dist.world - 1
        if self.batches_run == self.args.stop_after_batches and last:
            os.kill(os.getpid(), signal.SIGUSR1)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        loss_sum, labels, scores = 0.0, [], []
        for x, y in self.val_loader:
            if not len(y):  # this rank's slice of a last batch smaller than the world
                continue
            x = normalise(x.to(self.device, non_blocking=True))
            y = y.to(self.device, non_blocking=True)
            logits = self.model(x)
            loss_sum += self.loss_fn(logits, y).item() * len(y)
            scores.append(torch.softmax(logits, dim=1)[:, 1].cpu())
            labels.append(y.cpu())
        # A rank may have nothing to evaluate (a validation set smaller than the world).
        y_local = torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64)
        s_local = torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32)
        local = (loss_sum, y_local, s_local)
        parts = self.dist.gather(local)  # each rank evaluated its slice of each batch
        y_all = np.concatenate([part[1] for part in parts])
        s_all = np.concatenate([part[2] for part in parts])
        return {
            "val_loss": sum(part[0] for part in parts) / len(y_all),
            "val_acc": float(np.mean((s_all >= 0.5) == y_all)),
            "val_auc": roc_auc(y_all, s_all),
        }


def start_facts(trainer: Trainer, args: argparse.Namespace) -> dict[str, Any]:
    train, val = trainer.train_set, trainer.val_set
    gpu = torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else None
    return {
        "seed": args.seed,
        "device": str(trainer.device),
        "gpu_name": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "train_images": len(train),
        "val_images": len(val),
        "train_positive_fraction": float(train.labels.mean()),
        "val_positive_fraction": float(val.labels.mean()),
        "x_dtype": str(train.dtype),
        "data_fingerprint": trainer.settings["train_fingerprint"],
        "batch_size": args.batch_size,
        "lr": args.lr,
        "hidden_units": args.hidden_units,
        "dropout": args.dropout,
        "num_workers": args.num_workers,
        "weighted_sampling": args.weighted_sampling,
        "epochs": args.epochs,
    }


def finish_epoch(
    trainer: Trainer, epoch: int, seconds: float, images: int, gpu: GpuSampler | None = None
) -> None:
    """Validate, print and emit the epoch's numbers (with GPU utilisation on CUDA), checkpoint,
    plot."""
    p = trainer.progress
    numbers = {"train_loss": p.loss_sum / max(p.seen, 1), **trainer.evaluate()}
    print(
        f"Epoch {epoch}: Train_Loss = {numbers['train_loss']:.4f}, "
        f"Val_Loss = {numbers['val_loss']:.4f}, Val_Acc = {numbers['val_acc']:.4f}, "
        f"Val_AUC = {numbers['val_auc']:.4f}",
        flush=True,
    )
    trainer.report.metric(
        epoch,
        **numbers,
        images_per_s=images / max(seconds, 1e-9),
        epoch_seconds=seconds,
        **trainer.dist.gpu_numbers(
            gpu.epoch_numbers() if gpu else {}, trainer.device.type == "cuda"
        ),
    )
    p.history.append({"epoch": epoch, **numbers})
    p.epoch, p.batch, p.loss_sum, p.seen = epoch + 1, 0, 0.0, 0
    if trainer.dist.main:
        trainer.save_epoch(epoch)
        plot_losses(p.history, trainer.args.output_dir / "loss.png")


def interrupted(trainer: Trainer) -> int:
    trainer.sync_progress()
    path = trainer.checkpoints.directory / LAST
    if trainer.dist.main:
        path = trainer.checkpoints.save(trainer.state())
    trainer.dist.barrier()  # no rank exits (torchrun would end the others) before it is saved
    p = trainer.progress
    print(
        f"Received {trainer.stop.signal_name}: saved {path} (epoch {p.epoch}, "
        f"{p.batch} batches done); continue with --resume auto",
        flush=True,
    )
    trainer.report.facts(
        interrupted_by=trainer.stop.signal_name,
        checkpoint=str(path),
        stopped_epoch=p.epoch,
        stopped_batch=p.batch,
    )
    return EXIT_INTERRUPTED


def train(args: argparse.Namespace, dist: ddp.Dist) -> int:
    dist.check_batch_size(args.batch_size)
    report = Report(args.output_dir) if dist.main else QuietReport(args.output_dir)
    device = pick_device(args.device)
    # Before the GPU check: a job stopped for want of its GPUs still says what torch it had.
    if dist.main:
        provenance.write(args.output_dir, args.data_dir, args.seed)
    check_gpus(args, device, report)
    device = dist.start(device)
    trainer: Trainer | None = None
    try:
        seed_everything(args.seed)
        trainer = Trainer(args, report, device, dist)
        gpu = GpuSampler.for_device(trainer.device)  # None on CPU: nothing is recorded
        placement = dist.gpu_placement(trainer.device.type == "cuda")  # each rank's GPU
        if placement:
            report.facts(gpu_ranks=placement)
        try:
            status = train_epochs(trainer, args, report, gpu)
            dist.barrier()  # every rank done (and rank 0's files written) before the group ends
            return status
        finally:
            if gpu is not None:
                gpu.stop()
                if gpu.summary():
                    report.facts(**gpu.summary())
    finally:
        # The DDP model goes before its process group: left to the end of the interpreter, gloo
        # sometimes aborted there ("terminate called without an active exception").
        del trainer
        gc.collect()
        dist.stop()


def train_epochs(
    trainer: Trainer, args: argparse.Namespace, report: Report, gpu: GpuSampler | None
) -> int:
    resumed = trainer.resume(args.resume)
    report.facts(**start_facts(trainer, args), resumed_from=str(resumed) if resumed else None)
    if resumed:
        print(
            f"Resumed from {resumed}: epoch {trainer.progress.epoch}, "
            f"{trainer.progress.batch} batches done",
            flush=True,
        )
    for epoch in range(trainer.progress.epoch, args.epochs + 1):
        started, before = time.perf_counter(), trainer.progress.seen
        if not trainer.train_epoch(epoch):
            return interrupted(trainer)
        seconds = time.perf_counter() - started
        trainer.sync_progress()  # rank 0's `before` is the resumed total, the others' 0
        finish_epoch(trainer, epoch, seconds, trainer.progress.seen - before, gpu)
        if trainer.stopping():
            return interrupted(trainer)
    kept = trainer.checkpoint_summary()
    print(
        f"Done: {args.epochs} epochs; checkpoints in {trainer.checkpoints.directory}: "
        f"{', '.join(kept['kept'])} (best: epoch {kept['best_epoch']}); kept: {kept['policy']}",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # batch jobs buffer stdout otherwise
    args = parse_args(argv)
    try:
        dist = ddp.Dist.from_env()
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    # Under torchrun only rank 0 speaks; the others print errors only, naming their rank. (An
    # error on one rank exits non-zero, and torchrun then ends the other ranks.)
    who = f"rank {dist.rank}: " if dist.active else ""
    if not dist.main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 — for the life of the process
    try:
        return train(args, dist)
    except NonFiniteLoss as exc:
        print(f"Error: {who}{exc}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"Error: {who}{exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR


if __name__ == "__main__":
    status = main()
    # Done: a warning that comes now must not kill us. Python's shutdown resets the signals it
    # handles to their defaults (USR1's kills), but leaves ignored ones ignored.
    for stop_signal in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(stop_signal, signal.SIG_IGN)
    sys.exit(status)
