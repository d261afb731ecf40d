"""Train ResNet-18 on MNIST with SGD; save checkpoints, per-epoch metrics and learning curves.

    python train.py                                                # the default recipe on the best device
    python train.py --epochs 2 --subset 4000 --out-dir runs/quick  # a quick run, beside checkpoints/
    python train.py --resume                                       # continue an interrupted run exactly
    torchrun --standalone --nproc_per_node=4 train.py              # DDP on 4 GPUs (or CPU processes)

Where things are: the training step, the optimizer and the learning-rate schedule in lib/training.py; the run folder
(best.pt, last.pt, metrics.csv, curves.png, resuming) in lib/checkpoints.py; evaluation in lib/inference.py.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch

import data
from lib import training
from lib.cli import (
    ArgumentParser,
    add_shared_flags,
    float_between,
    non_negative_int,
    positive_float,
    positive_int,
    progress,
    random_seed,
    run_cli,
)
from lib.common import UserError
from lib.device import choose_precision, keep_freed_memory, loss_scaler, pick_device, synchronize
from lib.distributed import (
    all_reduce_sum,
    any_rank,
    average_batchnorm_statistics,
    leave,
    setup_distributed,
    wrap_for_ddp,
)
from lib.inference import EVAL_BATCH_SIZE, evaluate_split
from lib.runs import RunFolder, claim_run_folder, open_run_folder
from lib.training import (
    StopRequest,
    current_lr,
    default_batch_size,
    one_cycle_schedule,
    sgd,
    short_run_warmup,
    training_step,
)
from model import ResNet18, to_device, unwrap

# Flags that describe where and how to run rather than what to train: --resume keeps these from the command line.
RUNTIME_FLAGS = {"device", "precision", "data_dir", "out_dir", "resume", "cuda_graphs", "compile"}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Train ResNet-18 on MNIST (32x32) with SGD.")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--epochs", type=positive_int, default=10, help="passes over the training images")
    recipe.add_argument("--batch-size", type=positive_int,
                        help="global batch size (default: 512 on a GPU, 128 on a CPU); under torchrun it is split "
                             "across ranks")
    recipe.add_argument("--lr", type=positive_float, default=training.LR,
                        help="peak learning rate of the one-cycle schedule (lower in runs too short to warm up to it: "
                             "lib.training.short_run_warmup)")
    recipe.add_argument("--momentum", type=float_between(0, 1, high_allowed=False), default=training.MOMENTUM,
                        help="Nesterov momentum")
    recipe.add_argument("--weight-decay", type=float_between(0), default=training.WEIGHT_DECAY,
                        help="L2 penalty on the weights")
    recipe.add_argument("--warmup", type=float_between(0, 1, high_allowed=False), default=training.WARMUP,
                        help="fraction of all steps spent raising the learning rate")
    recipe.add_argument("--label-smoothing", type=float_between(0, 1), default=training.LABEL_SMOOTHING,
                        help="share of each target spread over all classes")
    recipe.add_argument("--no-augment", dest="augment", action="store_false",
                        help="turn off random rotation/scale/shift")
    recipe.add_argument("--photometric", action="store_true",
                        help="also vary stroke width and contrast and add noise (robustness to scans and photos; "
                             "off by default)")
    recipe.add_argument("--seed", type=random_seed, default=0,
                        help="seed of the initial weights, the batch order and the augmentation (the validation split "
                             "stays fixed)")
    dataset = parser.add_argument_group("data")
    add_shared_flags(dataset, "--data-dir")
    dataset.add_argument("--val-size", type=non_negative_int, default=5000,
                         help="training images held out to pick best.pt (0: train on all)")
    dataset.add_argument("--subset", type=positive_int,
                         help="train on only the first N training images, for quick runs")
    dataset.add_argument("--test-each-epoch", action="store_true",
                         help="also record test-set accuracy after every epoch, for learning curves; best.pt is still "
                              "chosen on validation")
    run = parser.add_argument_group("running")
    add_shared_flags(run, "--device")
    run.add_argument("--out-dir", default="checkpoints", help="where checkpoints, metrics.csv and curves.png go")
    continue_or_replace = run.add_mutually_exclusive_group()
    continue_or_replace.add_argument("--resume", action="store_true",
                                     help="continue from OUT_DIR/last.pt with its saved settings (recipe flags that "
                                          "differ are refused)")
    continue_or_replace.add_argument("--overwrite", action="store_true",
                                     help="start afresh in an OUT_DIR that holds an earlier run (kept until this run "
                                          "saves its first checkpoint)")
    add_shared_flags(run, "--precision", "--no-amp")
    run.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW memory format")
    run.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                     help="launch each training step's kernels one by one instead of replaying a CUDA graph (CUDA, "
                          "single process)")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the training step (fused batch norm, ReLU and adds; on CUDA replayed as CUDA "
                          "graphs) instead of capturing CUDA graphs of the plain one; single process only")
    run.add_argument("--deterministic", action="store_true", help="bitwise-reproducible runs (slower on GPU)")
    run.add_argument("--sync-bn", action="store_true", help="under torchrun, batch-norm statistics over all ranks")
    run.add_argument("--eval-batch-size", type=positive_int, default=EVAL_BATCH_SIZE,
                     help="batch size of validation and test passes")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def flags_given(argv: list[str] | None = None) -> set[str]:
    """The settings named on the command line, whatever their values: a default typed out is still asked for."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # then only what the command line sets appears in the namespace
    return set(vars(parser.parse_args(argv)))


# ---- Resuming: what the command line may change, and the commands printed for the user

def resume_command(args: argparse.Namespace) -> str:
    """The command that continues this run.

    --resume reads the recipe from last.pt but RUNTIME_FLAGS from the command line, so every one of those that is
    not at its default is repeated.
    """
    defaults = vars(parse_args([]))
    command = ["python", "train.py", "--resume"]
    for name in sorted(RUNTIME_FLAGS - {"resume"}):
        if getattr(args, name) != defaults[name]:
            command += flag_words(name, getattr(args, name))
    return shlex.join(command)


def flag_words(name: str, value) -> list[str]:
    """The command-line words that set args.NAME to value.

    A switch is --X where it is off by default (--compile), --no-X where on (--no-cuda-graphs).
    """
    option = name.replace("_", "-")
    if isinstance(value, bool):
        return [f"--{option}"] if value else [f"--no-{option}"]
    return [f"--{option}", str(value)]


def adopt_saved_recipe(args: argparse.Namespace, saved: dict, last_pt: Path, given: set[str]) -> None:
    """A resumed run keeps the recipe saved in last.pt: a one-cycle schedule cannot change course half way.

    A recipe flag `given` on the command line that says otherwise is refused rather than silently ignored, even where
    its value is the default; one that agrees is fine. A setting newer than last.pt was trained at its default.
    """
    defaults = vars(parse_args([]))
    saved = {name: value for name, value in saved.items() if name in defaults}  # flags since removed (--no-amp's amp)
    saved = {**{name: value for name, value in defaults.items() if name not in RUNTIME_FLAGS}, **saved}
    clashes = [name for name in vars(args) if name in given - RUNTIME_FLAGS and getattr(args, name) != saved[name]]
    if clashes:
        asked = shlex.join(sum((flag_words(name, getattr(args, name)) for name in clashes), []))
        kept = ", ".join(f"{name}={saved[name]}" for name in clashes)
        raise UserError(f"{last_pt} resumes with the settings it was saved with, not {asked} (saved: {kept}): leave "
                        f"{'that' if len(clashes) == 1 else 'those'} out, or start a new run (another --out-dir, or "
                        "--overwrite)")
    runtime = {k: v for k, v in vars(args).items() if k in RUNTIME_FLAGS}
    args.__dict__.update({**saved, **runtime})


def test_command(args: argparse.Namespace) -> str:
    """The test.py command for this run's best.pt (test.py writes its report beside the weights)."""
    command = ["python", "test.py"]
    if Path(args.out_dir) != Path(parse_args([]).out_dir):
        command += ["--weights", str(Path(args.out_dir) / "best.pt")]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    return shlex.join(command)


def duration(seconds: float) -> str:
    """A rough human duration: '40 s', '12 min', '1 h 5 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


# ---- Setting up: what the epochs work with

@dataclass
class Run:
    """What every epoch of a run works with, set up once by prepare()."""
    args: argparse.Namespace
    folder: RunFolder
    device: torch.device
    rank: int
    world_size: int
    precision: str  # "bf16", "fp16" or "fp32": lib.device.choose_precision
    precision_reason: str
    scaler: torch.amp.GradScaler  # fp16's loss scaling; a pass-through in the other precisions
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor] | None
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    batch_bounds: list[tuple[int, int]]
    graphed: dict[int, torch.nn.Module] = field(default_factory=dict)  # batch size -> the step replayed as CUDA graphs
    stop: StopRequest | None = None  # installed once set up: until then Ctrl-C simply quits

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_how_to_run(args: argparse.Namespace, device: torch.device, world_size: int) -> None:
    """Refuse, before any data is read, what cannot run here."""
    if args.batch_size < world_size:
        raise UserError(f"--batch-size {args.batch_size} is smaller than the {world_size} ranks it is split across")
    if args.compile and world_size > 1:
        raise UserError("--compile runs in a single process; under torchrun leave it out")
    if args.compile and device.type == "cpu":
        # What inductor builds CPU kernels with.
        compiler = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
        if not shutil.which(compiler):
            raise UserError(f"--compile on a CPU needs the C++ compiler {compiler} (set CXX to use another), and it "
                            "was not found")


def seed_everything(args: argparse.Namespace) -> None:
    """The seed of the initial weights; with --deterministic, the kernels that give the same result every time."""
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not args.deterministic
    torch.manual_seed(args.seed)


def prepare(args, resumed: dict | None, device: torch.device, rank: int, world_size: int) -> tuple[Run, tuple]:
    """Load the data, claim the folder, build the model, optimizer and schedule, and restore them when resuming.

    Returns the run and (epoch, step, partial epoch sums) to start from.
    """
    train, val = data.load_train_val(args.data_dir, args.val_size, args.subset, device)
    test = data.load_test(args.data_dir, device) if args.test_each_epoch else None
    if rank == 0:  # the flags and the data are good: from here on this run writes into the folder, and no other may
        claim_run_folder(args.out_dir)
    model = to_device(ResNet18(), device, args.channels_last)
    optimizer = sgd(model, device.type == "cuda", args.lr, args.momentum, args.weight_decay)
    batch_bounds = data.batch_bounds(len(train[0]), args.batch_size, world_size)
    total_steps = args.epochs * len(batch_bounds)
    peak_lr, warmup = short_run_warmup(args.lr, args.warmup, total_steps)
    scheduler = one_cycle_schedule(optimizer, peak_lr, total_steps, warmup)
    precision = choose_precision(device, args.precision)
    scaler = loss_scaler(device, precision.name)
    if scaler.is_enabled():  # a step the scaler skips still counts in the schedule, as in any fp16 run: no warning
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
    folder = RunFolder(args.out_dir, resumed, model, optimizer, scheduler, scaler, args, lambda: resume_command(args))
    start = folder.restore()
    run = Run(args, folder, device, rank, world_size, precision.name, precision.reason, scaler, train, val, test, model,
              optimizer, scheduler, batch_bounds)
    return run, start


def speed_up(run: Run) -> None:
    """On CUDA, the training step replayed as CUDA graphs (one per batch shape) or compiled; under torchrun, DDP."""
    args = run.args
    if args.cuda_graphs and run.device.type == "cuda" and run.world_size == 1 and not args.compile:
        for size in sorted({end - start for start, end in run.batch_bounds}):
            sample = data.normalize(run.train[0][:size])
            run.graphed[size] = training.graph_training_step(run.model, sample, run.precision)
    if args.compile:
        run.model = training.compile_training_step(run.model)
    if run.world_size > 1:
        run.model = wrap_for_ddp(run.model, run.device, args.sync_bn)


def announce(run: Run, resumed_at: tuple[int, int] | None) -> None:
    args = run.args
    params = sum(p.numel() for p in run.model.parameters())
    ranks = f" x{run.world_size} ranks" if run.world_size > 1 else ""
    how = ", ".join(["channels_last" if args.channels_last else "NCHW"] + (["CUDA graphs"] if run.graphed else [])
                    + (["torch.compile"] if args.compile else []))
    print(f"ResNet-18 ({params / 1e6:.2f} M parameters) on {run.device}{ranks}, {how}; {run.precision_reason}; "
          f"{len(run.train[0])} training / {len(run.val[0])} validation images, batch {args.batch_size}, "
          f"{len(run.batch_bounds)} steps per epoch")
    peak, warmup = short_run_warmup(args.lr, args.warmup, run.scheduler.total_steps)
    if (peak, warmup) != (args.lr, args.warmup):
        print(f"a short run: the learning rate warms up over {round(warmup * run.scheduler.total_steps)} steps to "
              f"{peak:.3g} (--lr {args.lr:g}), as fast as a fresh network takes it")
    if resumed_at is not None:
        print(f"resuming {run.folder.last_pt} at epoch {resumed_at[0] + 1}, step {resumed_at[1]}/"
              f"{len(run.batch_bounds)} with its saved settings")


# ---- One epoch: train, check every few steps, validate

class EpochSums:
    """Per-step loss, correct and count of one epoch, kept on the device so that the GPU never waits for Python.

    A mid-epoch last.pt saves them summed over ranks, so that a resumed epoch reports the whole epoch's figures; on
    resuming, rank 0 alone takes them back, so that totals() counts each rank's steps before the stop once.
    """

    def __init__(self, steps: int, device: torch.device, partial: dict | None = None, rank: int = 0):
        self.loss, self.correct, self.count = (torch.zeros(steps, device=device) for _ in range(3))
        if partial is not None and rank == 0:
            for name in ("loss", "correct", "count"):
                getattr(self, name).copy_(partial[name])

    def record(self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
               skipped_if_nonfinite: bool = False) -> None:
        """`skipped_if_nonfinite`: in fp16 a non-finite loss is a step the loss scaler skipped, left out of the sums."""
        loss_sum, correct, count = loss * len(labels), (logits.argmax(1) == labels).sum(), len(labels)
        if skipped_if_nonfinite:
            counted = torch.isfinite(loss)
            loss_sum, correct, count = (torch.where(counted, value, 0) for value in (loss_sum, correct, count))
        self.loss[step], self.correct[step], self.count[step] = loss_sum, correct, count

    def mean_loss(self, steps: int) -> float:
        return (self.loss[:steps].sum() / self.count[:steps].sum()).item()

    def partial(self, seconds: float) -> dict:
        """The sums so far, over all ranks (every rank calls this), for a mid-epoch last.pt."""
        loss, correct, count = all_reduce_sum(self.loss, self.correct, self.count)
        return {"loss": loss.cpu(), "correct": correct.cpu(), "count": count.cpu(), "seconds": seconds}

    def totals(self) -> tuple[float, float]:
        """(loss, accuracy) of the epoch so far, over all ranks."""
        loss, correct, count = all_reduce_sum(self.loss.sum(), self.correct.sum(), self.count.sum())
        return loss.item() / count.item(), correct.item() / count.item()


def train_one_epoch(run: Run, epoch: int, first_step: int, sums: EpochSums) -> int | None:
    """Train on the epoch's batches from `first_step` on; returns the steps done if asked to stop, else None."""
    args, steps = run.args, len(run.batch_bounds)
    run.model.train()
    bar = progress(total=steps, initial=first_step, desc=f"epoch {epoch + 1}/{args.epochs}", unit="step",
                   show=run.is_main)
    batches = data.batches(*run.train, args.batch_size, shuffle=True, augment=args.augment,
                           photometric=args.photometric, seed=args.seed, epoch=epoch, start_step=first_step,
                           rank=run.rank, world_size=run.world_size)
    check_every = 1 if run.device.type == "cpu" else 20  # reading a GPU value stalls its queue; a CPU's costs nothing
    checked = first_step
    for step, (x, y) in enumerate(batches, start=first_step):
        loss, logits = training_step(run.graphed.get(len(y), run.model), run.optimizer, run.scaler, x, y,
                                     run.precision, args.label_smoothing)
        run.scheduler.step()
        sums.record(step, loss, logits, y, skipped_if_nonfinite=run.scaler.is_enabled())
        bar.update()
        if (step + 1) % check_every and step + 1 < steps:
            continue
        stop_now = check_steps(run, epoch, sums, checked, step + 1)
        checked = step + 1
        bar.set_postfix(loss=f"{sums.mean_loss(step + 1):.4f}")
        if stop_now:
            bar.close()
            return step + 1
    bar.close()
    return None


def check_steps(run: Run, epoch: int, sums: EpochSums, first: int, end: int) -> bool:
    """After steps first..end-1: stop without saving on a non-finite loss; return whether a stop was asked for.

    All ranks agree on both, so that they stop together. In fp16 a non-finite loss only makes the loss scaler skip
    that step and halve its scale, leaving the weights as they were; the run fails only once the scale has fallen
    below 1, where the unscaled gradients overflow too and no scale can rescue the step.
    """
    if run.scaler.is_enabled():
        bad = torch.tensor([[end - 1 - first]]) if run.scaler.get_scale() < 1 else torch.empty(0, 1, dtype=torch.long)
    else:
        bad = (~torch.isfinite(sums.loss[first:end])).nonzero()
    flags = any_rank(torch.tensor([float(len(bad) > 0), float(run.stop.signum is not None)], device=run.device))
    if flags[0]:
        where = f"step {first + bad[0].item() + 1}" if len(bad) else f"a step in {first + 1}-{end} on another rank"
        last_pt = run.folder.last_pt
        kept = f"{last_pt} is untouched" if last_pt.exists() else "no checkpoint was written"
        fp16 = run.scaler.is_enabled()
        hint = f"a lower --lr (now {run.args.lr})" + (" or --precision fp32" if fp16 else "")
        raise UserError(f"the loss became non-finite at epoch {epoch + 1}, {where}{' under fp16 loss scaling' * fp16}; "
                        f"stopped without saving: {kept}. Try {hint}", exit_code=1)
    return bool(flags[1])


def loss_and_accuracy(run: Run, split: tuple[torch.Tensor, torch.Tensor], name: str) -> tuple[float, float]:
    """Over all ranks: each evaluates its share and the sums are added up."""
    result = evaluate_split(unwrap(run.model), *split, run.args.eval_batch_size, run.precision, desc=name,
                            rank=run.rank, world_size=run.world_size, show=run.is_main)
    count = torch.tensor(result["count"], device=run.device)
    loss_sum, correct, count = all_reduce_sum(result["loss_sum"], result["correct"], count)
    return loss_sum.item() / count.item(), correct.item() / count.item()


def end_epoch(run: Run, epoch: int, sums: EpochSums, started: float) -> dict:
    """The epoch's row of metrics.csv: its training figures, then the validation (and test) pass; None if not run."""
    train_loss, train_acc = sums.totals()
    average_batchnorm_statistics(run.model, run.world_size)
    row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": None, "val_acc": None,
           "test_loss": None, "test_acc": None, "lr": current_lr(run.scheduler)}
    if len(run.val[0]):
        row["val_loss"], row["val_acc"] = loss_and_accuracy(run, run.val, "validation")
    synchronize(run.device)
    row["seconds"] = round(time.perf_counter() - started, 3)  # training and validation; the test pass is extra
    if run.test is not None:
        row["test_loss"], row["test_acc"] = loss_and_accuracy(run, run.test, "test")
    return row


def epoch_line(row: dict, improved: bool, epochs: int) -> str:
    """The line each epoch prints: in a log, where no progress bar is drawn, it is all there is to go by."""
    if row["val_acc"] is None:
        scores = "no validation"
    else:
        scores = f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%{' *' if improved else ''}"
    if row["test_acc"] is not None:
        scores += f"  test acc {100 * row['test_acc']:.2f}%"
    epochs_left = epochs - row["epoch"]
    # Timed by the latest epoch: the first one's also holds warm-up (compiling, with --compile).
    to_go = f", about {duration(epochs_left * row['seconds'])} to go" if epochs_left else ""
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
            f"{scores}  lr {row['lr']:.4f}  {row['seconds']:.1f}s{to_go}")


def stop(run: Run, epoch: int, steps_done: int | None = None, partial: dict | None = None) -> NoReturn:
    """The one way a run ends on Ctrl-C or SIGTERM: save last.pt where it stands, say how to go on, exit 128 + N.

    Mid-epoch (`partial` given) last.pt is saved here; after an epoch it was saved with the epoch.
    """
    if partial is not None:
        average_batchnorm_statistics(run.model, run.world_size)  # every rank: last.pt holds what all ranks saw
    if run.is_main:
        if partial is not None:
            run.folder.save_mid_epoch(epoch, steps_done, partial)
            where = f"at epoch {epoch + 1}, step {steps_done}/{len(run.batch_bounds)}"
        else:
            where = f"after epoch {epoch + 1}"
        print(f"saved {run.folder.last_pt} {where}; continue with: {resume_command(run.args)}", file=sys.stderr)
    signum = run.stop.signum or signal.SIGTERM
    raise UserError(f"interrupted by {signal.Signals(signum).name}", exit_code=128 + signum)


# ---- The run

def main(argv: list[str] | None = None) -> torch.nn.Module | None:
    """Train as the command line says; returns the trained model (None if a finished run was resumed)."""
    args = parse_args(argv)
    resumed = open_run_folder(args.out_dir, resume=args.resume, overwrite=args.overwrite)
    device = pick_device(args.device)
    keep_freed_memory()
    if resumed is not None:
        adopt_saved_recipe(args, resumed["args"], Path(args.out_dir) / "last.pt", flags_given(argv))
    args.batch_size = args.batch_size or default_batch_size(device)
    rank, world_size, device = setup_distributed(device)
    check_how_to_run(args, device, world_size)
    seed_everything(args)
    run, (start_epoch, start_step, partial) = prepare(args, resumed, device, rank, world_size)
    folder = run.folder
    if start_epoch >= args.epochs:
        print(f"{folder.last_pt} already finished all {args.epochs} epochs; nothing to resume")
        return None
    speed_up(run)
    run.stop = StopRequest()
    if run.is_main:
        announce(run, (start_epoch, start_step) if resumed is not None else None)

    for epoch in range(start_epoch, args.epochs):
        # A resumed epoch's time counts its part before the interruption too.
        started = time.perf_counter() - (partial or {}).get("seconds", 0.0)
        sums = EpochSums(len(run.batch_bounds), device, partial, rank)
        steps_done = train_one_epoch(run, epoch, start_step if epoch == start_epoch else 0, sums)
        if steps_done is not None:
            stop(run, epoch, steps_done, sums.partial(time.perf_counter() - started))
        row = end_epoch(run, epoch, sums, started)
        if run.is_main:
            improved = folder.save_epoch(row)
            print(epoch_line(row, improved, args.epochs), flush=True)
        if run.stop.signum is not None:  # arrived during validation: the epoch is complete and saved
            stop(run, epoch)
        partial = None

    if run.is_main:
        total = sum(row["seconds"] for row in folder.history)
        best = (f"best validation accuracy {100 * folder.best_val_acc:.2f}%" if folder.best_val_acc >= 0
                else "no validation split")
        print(f"done in {total:.1f}s of training: {best}; weights in {folder.path / 'best.pt'}. "
              f"Next: {test_command(args)}")
    leave()
    return unwrap(run.model)


if __name__ == "__main__":
    run_cli(main)
