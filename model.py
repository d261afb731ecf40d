"""ResNet-18 for 32x32 grayscale digits: torchvision's network with a small-image stem.

Saving and loading it lives in lib/checkpoints.py, training it in lib/training.py, evaluating it in lib/inference.py.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, ResNet

from lib.common import NUM_CLASSES


def ResNet18(num_classes: int = NUM_CLASSES, in_channels: int = 1) -> ResNet:
    """torchvision's ResNet-18 with a CIFAR-style stem: 3x3 stride-1 conv, no max-pool.

    The ImageNet stem (7x7 stride 2, then max-pool) would shrink a 32x32 digit to 8x8 before the first block.
    zero_init_residual stays off: it slowed the first epochs on MNIST.
    """
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def to_device(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """`model` on `device`, in the memory layout its convolutions run fastest in there.

    channels_last suits cuDNN and oneDNN alike but for one stage: on some CPUs oneDNN runs the last stage's
    convolutions (512 channels at 4x4) faster in NCHW (BENCHMARKS.md, "CPU memory layout and allocator"), so there
    layer4 keeps NCHW weights and turns its input NCHW on the way in.
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
