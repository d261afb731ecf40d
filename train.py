"""Train ResNet-18 on MNIST with SGD; save checkpoints, per-epoch metrics and learning curves.

    python train.py                                                # the default recipe on the best device
    python train.py --epochs 2 --subset 4000 --out-dir runs/quick  # a quick run, beside checkpoints/
    python train.py --resume                                       # continue an interrupted run exactly
    torchrun --standalone --nproc_per_node=4 train.py              # DDP on 4 GPUs (or CPU processes)
"""
from __future__ import annotations

import contextlib
import csv
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
from model import (EVAL_BATCH_SIZE, ResNet18, compile_training_step, evaluate_split, graph_training_step, load_checkpoint,
                   save_checkpoint, to_device, unwrap)
from utils import (ArgumentParser, UserError, all_or_none, atomic_write, autocast, bf16_supported, check_writable_dir, claim_folder,
                   float_between, keep_freed_memory, non_negative_int, pick_device, positive_float, positive_int, progress, pyplot,
                   random_seed, run_cli, save_figure, synchronize)

METRICS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "seconds"]
# Flags that describe where and how to run rather than what to train: --resume keeps these from the command line.
RUNTIME_FLAGS = {"device", "data_dir", "out_dir", "resume", "cuda_graphs", "compile"}
# Besides last.pt, what a run leaves in OUT_DIR: its weights and what train.py, test.py and predict.py made of them.
RUN_OUTPUTS = ("best.pt", "metrics.csv", "curves.png", "test_report.json", "confusion_matrix.png", "robustness.json",
               "robustness.png", "predictions.png", "errors.png")


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(description="Train ResNet-18 on MNIST (32x32) with SGD.")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--epochs", type=positive_int, default=10, help="passes over the training images")
    recipe.add_argument("--batch-size", type=positive_int,
                        help="global batch size (default: 512 on a GPU, 128 on a CPU); under torchrun it is split across ranks")
    recipe.add_argument("--lr", type=positive_float, default=0.1, help="peak learning rate of the one-cycle schedule")
    recipe.add_argument("--momentum", type=float_between(0, 1, high_allowed=False), default=0.9, help="Nesterov momentum")
    recipe.add_argument("--weight-decay", type=float_between(0), default=5e-4, help="L2 penalty on the weights")
    recipe.add_argument("--warmup", type=float_between(0, 1, high_allowed=False), default=0.2, help="fraction of all steps spent raising the learning rate")
    recipe.add_argument("--label-smoothing", type=float_between(0, 1), default=0.1, help="share of each target spread over all classes")
    recipe.add_argument("--no-augment", dest="augment", action="store_false", help="turn off random rotation/scale/shift")
    recipe.add_argument("--photometric", action="store_true",
                        help="also vary stroke width and contrast and add noise (robustness to scans and photos; off by default)")
    recipe.add_argument("--seed", type=random_seed, default=0, help="seed of the initial weights, the batch order and the augmentation (the validation split stays fixed)")
    dataset = parser.add_argument_group("data")
    dataset.add_argument("--data-dir", help="folder containing MNIST/raw (default: $MNIST_DATA_DIR, else ./data; downloaded if missing)")
    dataset.add_argument("--val-size", type=non_negative_int, default=5000, help="training images held out to pick best.pt (0: train on all)")
    dataset.add_argument("--subset", type=positive_int, help="train on only the first N training images, for quick runs")
    dataset.add_argument("--test-each-epoch", action="store_true",
                         help="also record test-set accuracy after every epoch, for learning curves; best.pt is still chosen on validation")
    run = parser.add_argument_group("running")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    run.add_argument("--out-dir", default="checkpoints", help="where checkpoints, metrics.csv and curves.png go")
    continue_or_replace = run.add_mutually_exclusive_group()
    continue_or_replace.add_argument("--resume", action="store_true",
                                     help="continue from OUT_DIR/last.pt with its saved settings (recipe flags that differ are refused)")
    continue_or_replace.add_argument("--overwrite", action="store_true",
                                     help="start afresh in an OUT_DIR that holds an earlier run (kept until this run saves its first checkpoint)")
    run.add_argument("--no-amp", dest="amp", action="store_false", help="train in fp32 instead of bf16 autocast")
    run.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW memory format")
    run.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                     help="launch each training step's kernels one by one instead of replaying a CUDA graph (CUDA, single process)")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the training step (fused batch norm, ReLU and adds; on CUDA replayed as CUDA graphs) "
                          "instead of capturing CUDA graphs of the plain one; single process only")
    run.add_argument("--deterministic", action="store_true", help="bitwise-reproducible runs (slower on GPU)")
    run.add_argument("--sync-bn", action="store_true", help="under torchrun, batch-norm statistics over all ranks")
    run.add_argument("--eval-batch-size", type=positive_int, default=EVAL_BATCH_SIZE, help="batch size of validation and test passes")
    return parser.parse_args(argv)


def default_batch_size(device: torch.device) -> int:
    """512 fills a GPU. A CPU trains as fast at 128 as at 512 (freed memory kept, see utils.keep_freed_memory), and
    128's four times as many steps get further in the first epochs (98.4% vs 97.5% validation after one)."""
    return 128 if device.type == "cpu" else 512


def one_cycle_schedule(optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int,
                       warmup: float) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle schedule: a cosine rise to peak_lr over the warmup fraction of the steps, then a cosine fall."""
    # OneCycleLR divides by zero when the warm-up is exactly one step (0.2 of 5 steps; pytorch/pytorch#180187).
    # A hair less schedules as that limit does: the peak from the first step.
    if warmup * total_steps == 1:
        warmup *= 1 - 1e-6
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=total_steps, pct_start=warmup,
                                               cycle_momentum=False)


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world_size, device): under torchrun join the process group, otherwise a single process."""
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def all_reduce_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sum tensors over DDP ranks (a no-op in a single process)."""
    if not dist.is_initialized():
        return list(values)
    stacked = torch.stack([v.float() for v in values])
    dist.all_reduce(stacked)
    return list(stacked)


def average_batchnorm_statistics(model: torch.nn.Module, world_size: int) -> None:
    """Each rank's running BN statistics saw only its shard; average them so every rank holds the same model."""
    if world_size == 1:
        return
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world_size)


def install_stop_handlers() -> dict:
    """Ctrl-C or SIGTERM asks training to stop after the current step and save; a second Ctrl-C quits at once.

    A SIGTERM right after Ctrl-C (torchrun forwards one) does not count as the second press.
    """
    state = {"signal": None}

    def handler(signum, frame):
        if state["signal"] is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        state["signal"] = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step to save (Ctrl-C again quits at once)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return state


def resume_command(args) -> str:
    """The command that continues this run: --resume reads the recipe from last.pt but RUNTIME_FLAGS from the command
    line, so every one of those that is not at its default is repeated."""
    defaults = vars(parse_args([]))
    command = ["python", "train.py", "--resume"]
    for name in sorted(RUNTIME_FLAGS - {"resume"}):
        if getattr(args, name) != defaults[name]:
            command += flag_words(name, getattr(args, name))
    return shlex.join(command)


def flag_words(name: str, value) -> list[str]:
    """The command-line words that set args.NAME to value: a switch is --X where it is off by default (--compile),
    --no-X where on (--no-cuda-graphs)."""
    option = name.replace("_", "-")
    return ([f"--{option}"] if value else [f"--no-{option}"]) if isinstance(value, bool) else [f"--{option}", str(value)]


def check_resumed_recipe(args, saved: dict, last_pt: Path) -> None:
    """A resumed run keeps the recipe saved in last.pt (a one-cycle schedule cannot change course half way), so a
    recipe flag on the command line that says otherwise is refused rather than silently ignored."""
    defaults = vars(parse_args([]))
    clashes = [name for name, value in vars(args).items()
               if name not in RUNTIME_FLAGS and name in saved and value != defaults[name] and value != saved[name]]
    if clashes:
        given = shlex.join(sum((flag_words(name, getattr(args, name)) for name in clashes), []))
        kept = ", ".join(f"{name}={saved[name]}" for name in clashes)
        raise UserError(f"{last_pt} resumes with the settings it was saved with, not {given} (saved: {kept}): leave "
                        f"{'that' if len(clashes) == 1 else 'those'} out, or start a new run (another --out-dir, or --overwrite)")


@contextlib.contextmanager
def resume_hint(args, resumable: bool):
    """A save the system refuses (a full disk) leaves the earlier files whole; where they include this run's own
    last.pt, the error ends with the command that goes on from it."""
    try:
        yield
    except UserError as error:
        if not resumable:
            raise
        raise UserError(f"{error}; the run can go on from {Path(args.out_dir) / 'last.pt'} with: {resume_command(args)}",
                        error.exit_code) from None


def test_command(args) -> str:
    """The test.py command for this run's best.pt (test.py writes its report beside the weights)."""
    command = ["python", "test.py"]
    if Path(args.out_dir) != Path(parse_args([]).out_dir):
        command += ["--weights", str(Path(args.out_dir) / "best.pt")]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    return shlex.join(command)


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(history)


def plot_curves(path: Path, history: list[dict]) -> None:
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train", "train (augmented, label-smoothed)"), ("val", "validation"), ("test", "test (not used to choose)")):
        if any(row.get(f"{key}_loss", "") != "" for row in history):
            ax_loss.plot(epochs, [row[f"{key}_loss"] for row in history], "o-", label=label)
            ax_acc.plot(epochs, [100 * row[f"{key}_acc"] for row in history], "o-", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs, not 1.2, 1.4, ...
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def duration(seconds: float) -> str:
    """A rough human duration: '40 s', '12 min', '1 h 5 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def remove_earlier_outputs(out_dir: Path, just_written: tuple[str, ...] = ()) -> None:
    """Called right after a run's first save, so a new run (an --overwrite one, or one into a folder that held only
    reports) leaves no earlier weights or reports beside its own for test.py or a reader to take for this run's;
    until that save is on disk, the earlier run stays whole."""
    for name in set(RUN_OUTPUTS) - set(just_written):
        (out_dir / name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> torch.nn.Module | None:
    """Train as the command line says; returns the trained model (None if a finished run was resumed)."""
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    check_writable_dir(out_dir, f"--out-dir {out_dir}")
    device = pick_device(args.device)
    keep_freed_memory()
    checkpoint = None
    earlier = [name for name in ("best.pt", "last.pt") if (out_dir / name).exists()]
    if earlier and not (args.resume or args.overwrite):
        raise UserError(f"{out_dir} already holds {' and '.join(earlier)} of an earlier run: continue it with --resume, "
                        "train into another --out-dir, or add --overwrite to replace it")
    if args.resume:
        checkpoint = load_checkpoint(out_dir / "last.pt")
        if "optimizer" not in checkpoint:
            raise UserError(f"{out_dir / 'last.pt'} holds weights only (no optimizer state), so it cannot be resumed")
        check_resumed_recipe(args, checkpoint["args"], out_dir / "last.pt")
        runtime = {k: v for k, v in vars(args).items() if k in RUNTIME_FLAGS}
        args.__dict__.update({**checkpoint["args"], **runtime})
    args.batch_size = args.batch_size or default_batch_size(device)
    rank, world_size, device = setup_distributed(device)
    is_main = rank == 0
    if args.batch_size < world_size:
        raise UserError(f"--batch-size {args.batch_size} is smaller than the {world_size} ranks it is split across")
    if args.compile and world_size > 1:
        raise UserError("--compile runs in a single process; under torchrun leave it out")
    if args.compile and device.type == "cpu":
        compiler = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")  # what inductor builds CPU kernels with
        if not shutil.which(compiler):
            raise UserError(f"--compile on a CPU needs the C++ compiler {compiler} (set CXX to use another), and it was not found")

    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not args.deterministic
    torch.manual_seed(args.seed)

    (train_x, train_y), (val_x, val_y) = data.load_train_val(args.data_dir, args.val_size, args.subset, device)
    test_x, test_y = data.load_test(args.data_dir, device) if args.test_each_epoch else (None, None)
    if is_main:  # the flags and the data are good: from here on this run writes into OUT_DIR, and no other may
        claim_folder(out_dir, f"another train.py is writing into {out_dir} right now: let it finish (or stop it), "
                              "or train into another --out-dir")
    model = to_device(ResNet18(), device, args.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=args.momentum > 0,
                                weight_decay=args.weight_decay, fused=device.type == "cuda")  # one kernel for all parameters
    batch_bounds = data.batch_bounds(len(train_x), args.batch_size, world_size)
    steps_per_epoch = len(batch_bounds)
    scheduler = one_cycle_schedule(optimizer, args.lr, args.epochs * steps_per_epoch, args.warmup)
    start_epoch, start_step, history, best_val_acc, partial = 0, 0, [], -1.0, None
    has_own_last_pt = checkpoint is not None  # else a last.pt in out_dir is an earlier run's, until this one saves
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng_state"])
        start_epoch, start_step = checkpoint["epoch"], checkpoint["step"]
        history, best_val_acc, partial = checkpoint["history"], checkpoint["best_val_acc"], checkpoint.get("partial")
        if start_epoch >= args.epochs:
            print(f"{out_dir / 'last.pt'} already finished all {args.epochs} epochs; nothing to resume")
            return None
    amp = args.amp and bf16_supported(device)
    graphed = {}  # batch size -> the training step captured as CUDA graphs: full batches and an epoch's shorter last one
    if args.cuda_graphs and device.type == "cuda" and world_size == 1 and not args.compile:
        for size in sorted({end - start for start, end in batch_bounds}):
            graphed[size] = graph_training_step(model, data.normalize(train_x[:size]), amp)
    if args.compile:
        model = compile_training_step(model)
    if world_size > 1:
        if args.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sync_every = 1 if device.type == "cpu" else 20  # reading a GPU value stalls its queue; on CPU it costs nothing
    stop = install_stop_handlers()

    def loss_and_accuracy(images: torch.Tensor, labels: torch.Tensor, split: str) -> tuple[float, float]:
        """Over all ranks: each evaluates its share and the sums are added up."""
        result = evaluate_split(unwrap(model), images, labels, args.eval_batch_size, amp, desc=split, rank=rank,
                                world_size=world_size, show=is_main)
        loss_sum, correct, count = all_reduce_sum(result["loss_sum"], result["correct"], torch.tensor(result["count"], device=device))
        return loss_sum.item() / count.item(), correct.item() / count.item()

    def state(epoch: int, step: int, partial: dict | None) -> dict:
        return dict(
            epoch=epoch, step=step, partial=partial, history=history, best_val_acc=best_val_acc, args=vars(args),
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng_state=torch.get_rng_state(),
        )

    if is_main:
        params = sum(p.numel() for p in model.parameters())
        print(f"ResNet-18 ({params / 1e6:.2f} M parameters) on {device}{f' x{world_size} ranks' if world_size > 1 else ''}, "
              f"{'bf16 autocast' if amp else 'fp32'}, {'channels_last' if args.channels_last else 'NCHW'}{', CUDA graphs' if graphed else ''}{', torch.compile' if args.compile else ''}; "
              f"{len(train_x)} training / {len(val_x)} validation images, batch {args.batch_size}, {steps_per_epoch} steps per epoch")
        if checkpoint is not None:
            print(f"resuming {out_dir / 'last.pt'} at epoch {start_epoch + 1}, step {start_step}/{steps_per_epoch} with its saved settings")

    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        model.train()
        # Per-step sums stay on the device and are read only every sync_every steps, so the GPU never waits for Python.
        step_loss = torch.zeros(steps_per_epoch, device=device)
        step_correct = torch.zeros(steps_per_epoch, device=device)
        step_count = torch.zeros(steps_per_epoch, device=device)
        if partial is not None:
            for name, tensor in (("loss", step_loss), ("correct", step_correct), ("count", step_count)):
                tensor.copy_(partial[name])
            started -= partial.get("seconds", 0.0)  # so metrics.csv times the whole epoch, not just its resumed part
        checked = first_step = start_step if epoch == start_epoch else 0
        bar = progress(total=steps_per_epoch, initial=first_step, desc=f"epoch {epoch + 1}/{args.epochs}", unit="step", show=is_main)
        train_batches = data.batches(train_x, train_y, args.batch_size, shuffle=True, augment=args.augment,
                                     photometric=args.photometric, seed=args.seed,
                                     epoch=epoch, start_step=first_step, rank=rank, world_size=world_size)
        for step, (x, y) in enumerate(train_batches, start=first_step):
            with autocast(device, amp):
                logits = graphed.get(len(y), model)(x)
                loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step_loss[step] = loss.detach() * len(y)
            step_correct[step] = (logits.argmax(1) == y).sum()
            step_count[step] = len(y)
            bar.update()
            if (step + 1) % sync_every and step + 1 < steps_per_epoch:
                continue
            bad = (~torch.isfinite(step_loss[checked : step + 1])).nonzero()
            flags = torch.tensor([float(len(bad) > 0), float(stop["signal"] is not None)], device=device)
            if world_size > 1:
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            if flags[0]:
                where = f"step {checked + bad[0].item() + 1}" if len(bad) else f"a step in {checked + 1}-{step + 1} on another rank"
                kept = f"{out_dir / 'last.pt'} is untouched" if (out_dir / "last.pt").exists() else "no checkpoint was written"
                raise UserError(f"the loss became non-finite at epoch {epoch + 1}, {where}; stopped without saving: {kept}. "
                                f"Try a lower --lr (now {args.lr})", exit_code=1)
            checked = step + 1
            bar.set_postfix(loss=f"{(step_loss[: step + 1].sum() / step_count[: step + 1].sum()).item():.4f}")
            if flags[1]:
                bar.close()
                if is_main:
                    partial = {"loss": step_loss.cpu(), "correct": step_correct.cpu(), "count": step_count.cpu(),
                               "seconds": time.perf_counter() - started}
                    with resume_hint(args, has_own_last_pt):
                        save_checkpoint(out_dir / "last.pt", model, **state(epoch, step + 1, partial))
                    if not history:  # this run's first save
                        remove_earlier_outputs(out_dir)
                    print(f"saved {out_dir / 'last.pt'} at epoch {epoch + 1}, step {step + 1}/{steps_per_epoch}; "
                          f"continue with: {resume_command(args)}", file=sys.stderr)
                signum = stop["signal"] or signal.SIGTERM
                raise UserError(f"interrupted by {signal.Signals(signum).name}", exit_code=128 + signum)
        bar.close()
        partial = None
        train_loss, train_correct, train_count = all_reduce_sum(step_loss.sum(), step_correct.sum(), step_count.sum())
        average_batchnorm_statistics(model, world_size)

        # The lr the next step would take; past the last step OneCycleLR extrapolates its cosine back up (0.0146 after a
        # 5-step run), so there the schedule's own floor, which the last step took.
        lr = scheduler.get_last_lr()[0] if scheduler.last_epoch < scheduler.total_steps else optimizer.param_groups[0]["min_lr"]
        row = {"epoch": epoch + 1, "train_loss": train_loss.item() / train_count.item(), "train_acc": train_correct.item() / train_count.item(),
               "val_loss": "", "val_acc": "", "test_loss": "", "test_acc": "", "lr": lr}
        if len(val_x):
            row["val_loss"], row["val_acc"] = loss_and_accuracy(val_x, val_y, "validation")
        synchronize(device)
        row["seconds"] = round(time.perf_counter() - started, 3)  # training and validation; the test pass is extra
        if args.test_each_epoch:
            row["test_loss"], row["test_acc"] = loss_and_accuracy(test_x, test_y, "test")
        history.append(row)

        if is_main:
            # With no validation split there is nothing to choose on: best.pt is simply the latest epoch. Ties go to the
            # later epoch: 5,000 images resolve 0.02%, so late epochs often tie, and the later one has trained longer.
            improved = row["val_acc"] == "" or row["val_acc"] >= best_val_acc
            if improved:
                best_val_acc = row["val_acc"] if row["val_acc"] != "" else best_val_acc
            # All or none: a refused write (a full disk) must not leave this epoch's best.pt beside the last.pt and
            # metrics.csv of an earlier epoch, or, on a run's first save, of the earlier run it is replacing.
            with resume_hint(args, has_own_last_pt), all_or_none() as stage:
                if improved:
                    save_checkpoint(stage(out_dir / "best.pt"), model, epoch=epoch + 1, metrics=row, args=vars(args))
                save_checkpoint(stage(out_dir / "last.pt"), model, **state(epoch + 1, 0, None))
                write_metrics_csv(stage(out_dir / "metrics.csv"), history)
                plot_curves(stage(out_dir / "curves.png"), history)
            has_own_last_pt = True
            if len(history) == 1:  # this run's first save (its first epoch always improves on best_val_acc = -1)
                remove_earlier_outputs(out_dir, just_written=("best.pt", "metrics.csv", "curves.png"))
            val_text = f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%{' *' if improved else ''}" if row["val_acc"] != "" else "no validation"
            if row["test_acc"] != "":
                val_text += f"  test acc {100 * row['test_acc']:.2f}%"
            epochs_left = args.epochs - (epoch + 1)
            # In a log, where no progress bar is drawn, this line is all there is to go by (a CPU epoch takes minutes).
            # Timed by the latest epoch: the first one's also holds warm-up (compiling, with --compile).
            to_go = f", about {duration(epochs_left * row['seconds'])} to go" if epochs_left else ""
            print(f"epoch {epoch + 1:>3}/{args.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
                  f"{val_text}  lr {row['lr']:.4f}  {row['seconds']:.1f}s{to_go}", flush=True)
        if stop["signal"] is not None:  # arrived during validation: the epoch is complete and saved
            signum = stop["signal"]
            if is_main:
                print(f"saved {out_dir / 'last.pt'} after epoch {epoch + 1}; continue with: {resume_command(args)}", file=sys.stderr)
            raise UserError(f"interrupted by {signal.Signals(signum).name}", exit_code=128 + signum)

    if is_main:
        total = sum(row["seconds"] for row in history)
        best = f"best validation accuracy {100 * best_val_acc:.2f}%" if best_val_acc >= 0 else "no validation split"
        print(f"done in {total:.1f}s of training: {best}; weights in {out_dir / 'best.pt'}. Next: {test_command(args)}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return unwrap(model)


if __name__ == "__main__":
    run_cli(main)
