"""The checkpoint file: written atomically, loaded without running pickled code, checked before it is used.

A training run's folder, which writes these files, is lib.runs'.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lib.common import INPUT_SIZE, MEAN, NUM_CLASSES, STD, UserError
from lib.files import atomic_write
from model import ResNet18, to_device, unwrap

ARCH = "resnet18-mnist"
FORMAT_VERSION = 1


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
    # Inputs scaled otherwise than the weights were trained on would give confident, wrong predictions.
    saved = checkpoint.get("normalization", {"mean": MEAN, "std": STD})
    if saved != {"mean": MEAN, "std": STD}:
        raise UserError(f"{path} was trained on inputs normalised with {saved}, and this code normalises with mean "
                        f"{MEAN} and std {STD}: its predictions here would be wrong")


def load_model(path: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The model of a checkpoint, in eval mode on `device` (in to_device's layout), and the checkpoint."""
    checkpoint = load_checkpoint(path)
    model = ResNet18()
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{path} does not hold ResNet-18 weights of this shape ({first})") from None
    return to_device(model, device).eval(), checkpoint
