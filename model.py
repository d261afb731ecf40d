"""ResNet-18 for 32x32 grayscale digits, its checkpoints, and the one evaluation loop train/test share."""
from __future__ import annotations

import copy
import logging
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse as fuse_conv_bn
from torchvision.models.resnet import BasicBlock, ResNet

from data import INPUT_SIZE, MEAN, NUM_CLASSES, STD, batch_bounds, batches
from utils import UserError, atomic_write, autocast, progress

ARCH = "resnet18-mnist"
FORMAT_VERSION = 1
EVAL_BATCH_SIZE = 1000  # of validation and test passes: in the same batches bf16 rounds alike, so every script predicts alike


def ResNet18(num_classes: int = NUM_CLASSES, in_channels: int = 1) -> ResNet:
    """torchvision's ResNet-18 with a CIFAR-style stem: 3x3 stride-1 conv, no max-pool.

    The ImageNet stem (7x7 stride 2, then max-pool) would shrink a 32x32 digit to 8x8 before the first block.
    (zero_init_residual was tried: it slowed the first epochs several-fold on MNIST, so it stays off.)
    """
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def to_device(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """`model` on `device`, in the memory layout its convolutions run fastest in there.

    channels_last suits cuDNN and oneDNN alike but for one stage: on a CPU, oneDNN runs the last stage's convolutions
    (512 channels at 4x4) faster in NCHW (a training step ~6% faster on the AMD dev CPUs, 2% slower on an Intel one
    with AMX; BENCHMARKS.md), so there layer4 keeps NCHW weights and turns its input NCHW on the way in.
    """
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if channels_last and device.type == "cpu":
        model.layer4.to(memory_format=torch.contiguous_format)
        model.layer4.register_forward_pre_hook(_to_nchw)
    return model


def _to_nchw(module: nn.Module, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    return (inputs[0].contiguous(),)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP or torch.compile wrappers, so saved keys never carry 'module.' prefixes."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path: str | Path, model: nn.Module, **state: Any) -> None:
    """Write the weights plus everything needed to use or resume them, atomically.

    `state` holds tensors, numbers, strings, lists and dicts only, so load_checkpoint can use weights_only=True.
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "arch": ARCH,
        "num_classes": NUM_CLASSES,
        "input_size": INPUT_SIZE,
        "normalization": {"mean": MEAN, "std": STD},
        "model": unwrap(model).state_dict(),
        **state,
    }
    with atomic_write(path) as tmp, open(tmp, "wb") as file:
        try:
            torch.save(payload, file)
        except RuntimeError as error:
            # torch reports a write the system refused (a full disk) as "unexpected pos 704 vs 598"; the OSError it
            # caught says what happened, and atomic_write makes that one line.
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely (no pickled code runs) and check it is one this code can use."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; name the checkpoint in it, e.g. {path / 'best.pt'}")
    if not path.is_file():
        hint = " (train first: python train.py)" if path.name in ("best.pt", "last.pt") else ""
        raise UserError(f"no checkpoint at {path}{hint}")
    unreadable = UserError(f"{path} is not a readable checkpoint (empty, truncated or another kind of file)")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise unreadable
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused:
            raise UserError(f"refusing to load {path}: it would import {refused.group(1)}, which could run code "
                            "(only tensors, numbers, strings, lists and dicts are loaded)") from None
        raise unreadable from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        raise unreadable from None
    _check_compatible(path, checkpoint)
    return checkpoint


def _check_compatible(path: Path, checkpoint: Any) -> None:
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "format_version" not in checkpoint:
        raise UserError(f"{path} is not a checkpoint written by this project's train.py")
    expected = {"format_version": FORMAT_VERSION, "arch": ARCH, "num_classes": NUM_CLASSES, "input_size": INPUT_SIZE}
    for key, want in expected.items():
        if checkpoint.get(key) != want:
            raise UserError(f"{path} has {key} {checkpoint.get(key)!r}, expected {want!r}")


def load_model(path: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """Build the model, load a checkpoint's weights into it, and put it in eval mode on `device` (in to_device's layout)."""
    checkpoint = load_checkpoint(path)
    model = ResNet18()
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{path} does not hold ResNet-18 weights of this shape ({first})") from None
    return to_device(model, device).eval(), checkpoint


def graph_training_step(model: nn.Module, sample: torch.Tensor, amp: bool) -> nn.Module:
    """`model` for training on CUDA batches shaped like `sample`: forward and backward each captured once as a CUDA graph.

    Eager, a step launches hundreds of small kernels one by one from Python and a fast GPU waits on the launches;
    a replay launches them all at once (H100, batch 512: 44-51k images/s eager, 53k replayed). Gradients, parameters
    and batch-norm statistics are `model`'s own, so the graphed and the plain model (or another graph, for batches
    of another shape) can take turns. The capture's warm-up steps would move the batch-norm statistics; they are
    put back, so training is unchanged.
    """
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    # make_graphed_callables refuses autocast's weight cache: cached bf16 copies would not follow the updated weights.
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        graphed = torch.cuda.make_graphed_callables(nn.Sequential(model), (sample,))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])
    return graphed


def compile_training_step(model: nn.Module) -> nn.Module:
    """`model` under torch.compile for training (train.py --compile): batch norm, ReLU and the adds fused into fewer
    kernels, on CUDA replayed as CUDA graphs (mode reduce-overhead), in place of graph_training_step's plain kernels.

    Static shapes: the full batches and an epoch's shorter last one each get their own kernels, compiled at their first
    step; inductor's on-disk cache serves later runs. Parameters and buffers stay `model`'s own.
    """
    if not torch.cuda.is_available():  # inductor's C++ build would warn "No CUDA runtime is found", of no concern here
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(model, mode="reduce-overhead", dynamic=False)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` for inference, each batch norm folded into the convolution before it.

    Same outputs up to rounding, one pass over every activation less (the test set evaluates ~8% faster on 2 CPU cores).
    `model` itself is left as it was (training mode included). A model with no batch norm left (an int8 one from
    quantize_int8) comes back as it is.
    """
    model = unwrap(model)
    if not any(isinstance(module, nn.BatchNorm2d) for module in model.modules()):
        return model
    was_training = model.training
    folded = fuse_conv_bn(model.eval())  # copies first
    model.train(was_training)
    return folded


def quantize_int8(model: nn.Module, calibration_images: Iterable[torch.Tensor]) -> nn.Module:
    """An int8 copy of `model` for inference on the CPU (post-training static quantization, torch.ao's FX flow).

    Each batch norm is folded, each convolution fused with its ReLU and each residual add with its ReLU; weights
    become int8 per output channel, activations uint8 over the ranges seen on `calibration_images` (normalised
    batches, never test images). Integer dot products (AVX512-VNNI on the dev CPU) do twice the work of bf16 ones.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = copy.deepcopy(unwrap(model)).cpu().eval()
    qconfig = get_default_qconfig_mapping(torch.backends.quantized.engine)  # x86 (fbgemm + oneDNN), qnnpack on Arm
    example = torch.zeros(1, 1, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, whose int8 convolutions need torch.compile.
        warnings.simplefilter("ignore")
        observed = prepare_fx(model, qconfig, (example,))
        with torch.no_grad():
            for images in calibration_images:
                observed(images.cpu())
        return convert_fx(observed)


def evaluate_split(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
                   amp: bool = True, *, desc: str, rank: int = 0, world_size: int = 1, show: bool = True) -> dict:
    """evaluate() over a whole split held as tensors, in batches, with a progress bar (on a terminal) named `desc`.

    Under DDP each rank evaluates its share of every batch; the sums it returns are that share's.
    """
    steps = len(batch_bounds(len(images), batch_size, world_size))
    split_batches = batches(images, labels, batch_size, rank=rank, world_size=world_size)
    return evaluate(model, progress(split_batches, total=steps, desc=desc, unit="batch", show=show), amp)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], amp: bool = True) -> dict:
    """Loss, accuracy and logits of `model` over `batches`, in eval mode with batch norm folded (`model` is unchanged).

    Returns sums as well as means so DDP ranks can add theirs up. The loss is plain cross-entropy
    (no label smoothing), so it is comparable across recipes.
    """
    inference_model = fold_batchnorm(model)
    parameter = next(inference_model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")  # int8 models keep no parameters
    all_logits, all_labels = [], []
    for x, y in batches:
        with autocast(device, amp):
            all_logits.append(inference_model(x).float())
        all_labels.append(y)
    logits = torch.cat(all_logits) if all_logits else torch.empty(0, NUM_CLASSES, device=device)
    labels = torch.cat(all_labels) if all_labels else torch.empty(0, dtype=torch.long, device=device)
    loss_sum = F.cross_entropy(logits, labels, reduction="sum")
    correct = (logits.argmax(1) == labels).sum()
    count = len(labels)
    return {
        "loss_sum": loss_sum,
        "correct": correct,
        "count": count,
        "loss": loss_sum.item() / max(count, 1),
        "accuracy": correct.item() / max(count, 1),
        "logits": logits,
        "labels": labels,
    }
