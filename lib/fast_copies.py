"""Faster copies of a trained model for inference: batch norm folded into the convolutions, and int8.

Both give the model's predictions up to rounding; lib.inference decides when each is used.
"""
from __future__ import annotations

import copy
import warnings
from typing import Iterable

import torch
import torch.nn as nn
from torch.fx.experimental.optimization import fuse as fuse_conv_bn

from lib.common import INPUT_SIZE
from model import unwrap


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` for inference, each batch norm folded into the convolution before it.

    Same outputs up to rounding, one pass over every activation less. `model` itself is left as it was (training
    mode included). A model with no batch norm left (an int8 one from quantize_int8) comes back as it is.
    """
    model = unwrap(model)
    if not any(isinstance(module, nn.BatchNorm2d) for module in model.modules()):
        return model
    was_training = model.training
    folded = fuse_conv_bn(model.eval())  # copies first
    model.train(was_training)
    return folded


def quantize_int8(model: nn.Module, calibration_images: Iterable[torch.Tensor]) -> nn.Module:
    """An int8 copy of `model` for inference on the CPU: post-training static quantization, torch.ao's FX flow.

    Each batch norm is folded, each convolution fused with its ReLU and each residual add with its ReLU; weights
    become int8 per output channel, activations uint8 over the ranges seen on `calibration_images` (normalised
    batches, never test images). Integer dot products (AVX512-VNNI) do twice the work of bf16 ones.
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
