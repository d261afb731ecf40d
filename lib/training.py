"""How the model trains: the optimizer, the learning-rate schedule, the training step, and its faster forms on a GPU.

train.py and benchmarks/bench.py both train through these, so that the benchmark times what trains.
"""
from __future__ import annotations

import logging
import signal
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.device import DTYPES, autocast

# The default recipe, which train.py's flags start from and bench.py times.
LR, MOMENTUM, WEIGHT_DECAY, LABEL_SMOOTHING, WARMUP = 0.1, 0.9, 5e-4, 0.1, 0.2
# A fresh network blows up if the learning rate reaches its peak in fewer steps than this (docs/internals.md, "Short
# runs").
MIN_WARMUP_STEPS = 100


def default_batch_size(device: torch.device) -> int:
    """512 fills a GPU. A CPU trains as fast at 128 (freed memory kept, see lib.device.keep_freed_memory), and 128's
    four times as many steps get further in the first epochs (BENCHMARKS.md, "Recipes tried")."""
    return 128 if device.type == "cpu" else 512


def sgd(model: nn.Module, fused: bool, lr: float = LR, momentum: float = MOMENTUM,
        weight_decay: float = WEIGHT_DECAY) -> torch.optim.SGD:
    """SGD with Nesterov momentum; `fused` (CUDA only) updates all parameters in one kernel."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
                           weight_decay=weight_decay, fused=fused)


def one_cycle_schedule(optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int,
                       warmup: float) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle schedule: a cosine rise to peak_lr over the warmup fraction of the steps, then a fall."""
    # OneCycleLR divides by zero when the warm-up is exactly one step (0.2 of 5 steps; pytorch/pytorch#180187).
    # A hair less schedules as that limit does: the peak from the first step.
    if warmup * total_steps == 1:
        warmup *= 1 - 1e-6
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=total_steps, pct_start=warmup,
                                               cycle_momentum=False)


def short_run_warmup(lr: float, warmup: float, total_steps: int) -> tuple[float, float]:
    """(peak lr, warm-up fraction) for a run of `total_steps`: the recipe's own, unless the run is too short for it.

    The learning rate never climbs faster than from 0 to `lr` in MIN_WARMUP_STEPS steps: a short run warms up for
    min(MIN_WARMUP_STEPS, half its steps) at least, and peaks at the share of `lr` that pace reaches. Runs whose
    warm-up already takes MIN_WARMUP_STEPS steps (every full-data recipe) keep exactly the schedule they ask for.
    """
    warmup_steps = max(warmup * total_steps, min(MIN_WARMUP_STEPS, total_steps / 2))
    return lr * min(1.0, warmup_steps / MIN_WARMUP_STEPS), warmup_steps / total_steps


def current_lr(scheduler: torch.optim.lr_scheduler.OneCycleLR) -> float:
    """The learning rate the next step would take; after the last step, the floor that step took.

    Past its last step OneCycleLR extrapolates its cosine back up, which no step ever uses.
    """
    if scheduler.last_epoch < scheduler.total_steps:
        return scheduler.get_last_lr()[0]
    return scheduler.optimizer.param_groups[0]["min_lr"]


def training_step(forward: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, x: torch.Tensor,
                  y: torch.Tensor, precision: str, label_smoothing: float = LABEL_SMOOTHING
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch: (loss, logits), both detached and left on the device.

    `forward` is the model itself or a faster form of it (graph_training_step, compile_training_step) that shares its
    parameters, so `optimizer` steps the model either way. In fp16 `scaler` scales the loss so that small gradients
    do not underflow, and skips the step (halving its scale) where they overflowed; elsewhere it passes through.
    """
    with autocast(x.device, precision):
        logits = forward(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def graph_training_step(model: nn.Module, sample: torch.Tensor, precision: str) -> nn.Module:
    """`model` for training on CUDA batches shaped like `sample`: forward and backward each captured as a CUDA graph.

    Eager, a step launches hundreds of small kernels one by one from Python and a fast GPU waits on the launches;
    a replay launches them all at once (BENCHMARKS.md, "Throughput"). Gradients, parameters and batch-norm
    statistics are `model`'s own, so the graphed and the plain model (or another graph, for batches of another
    shape) can take turns. The capture's warm-up steps would move the batch-norm statistics; they are put back.
    In fp16 the loss scaler works outside the graphs: the scaled gradient of the loss is the backward graph's input,
    and unscaling, the overflow check and the skipped step happen in scaler.step, after the replay.
    """
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    # make_graphed_callables refuses autocast's weight cache: cached low-precision copies would not follow the
    # updated weights.
    with torch.autocast("cuda", dtype=DTYPES.get(precision, torch.bfloat16), enabled=precision != "fp32",
                        cache_enabled=False):
        graphed = torch.cuda.make_graphed_callables(nn.Sequential(model), (sample,))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])
    return graphed


def compile_training_step(model: nn.Module) -> nn.Module:
    """`model` under torch.compile for training (train.py --compile), in place of graph_training_step's plain kernels.

    Batch norm, ReLU and the adds are fused into fewer kernels, on CUDA replayed as CUDA graphs (mode
    reduce-overhead). Static shapes: the full batches and an epoch's shorter last one each get their own kernels,
    compiled at their first step; inductor's on-disk cache serves later runs. Parameters stay `model`'s own.
    """
    if not torch.cuda.is_available():  # inductor's C++ build would warn "No CUDA runtime is found", of no concern here
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(model, mode="reduce-overhead", dynamic=False)


class StopRequest:
    """Ctrl-C or SIGTERM asks training to stop after the current step and save; a second Ctrl-C quits at once.

    A SIGTERM right after Ctrl-C (torchrun forwards one) does not count as the second press.
    """

    def __init__(self):
        self.signum: int | None = None
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step to save (Ctrl-C again quits at once)",
              file=sys.stderr, flush=True)
