"""Checkpoint files (written atomically, loaded without running pickled code) and RunFolder, a training run's folder."""
from __future__ import annotations

import contextlib
import csv
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from lib.common import INPUT_SIZE, MEAN, NUM_CLASSES, STD, UserError
from lib.files import all_or_none, atomic_write, check_writable_dir, claim_folder
from lib.plots import plot_curves
from model import ResNet18, to_device, unwrap

ARCH = "resnet18-mnist"
FORMAT_VERSION = 1
METRICS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "seconds"]
# Besides last.pt, what a run leaves in its folder: its weights and what train.py, test.py and predict.py made of them.
RUN_OUTPUTS = ("best.pt", "metrics.csv", "curves.png", "test_report.json", "confusion_matrix.png", "robustness.json",
               "robustness.png", "predictions.png", "errors.png")


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
    """The model of a checkpoint, in eval mode on `device` (in to_device's layout), and the checkpoint."""
    checkpoint = load_checkpoint(path)
    model = ResNet18()
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{path} does not hold ResNet-18 weights of this shape ({first})") from None
    return to_device(model, device).eval(), checkpoint


def weights_folder(paths: list[str]) -> Path:
    """Where reports of these checkpoints go: beside one, or in the folder several share (runs/ for runs/seed*/)."""
    if len(paths) == 1:
        return Path(paths[0]).parent
    return Path(os.path.commonpath([str(Path(path).parent.absolute()) for path in paths]))


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """One row per epoch; a metric not measured (None) is an empty cell."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(history)


class RunFolder:
    """One training run's folder (OUT_DIR), after timm's CheckpointSaver: the loop makes one call per epoch.

    It refuses a folder holding an earlier run unless told to resume or overwrite it, loads last.pt to resume,
    locks the folder against a second train.py, and saves best.pt, last.pt, metrics.csv and curves.png all or none.
    An earlier run's files stay whole until this run's first save, which then removes them. A save the system
    refuses ends with the command that goes on from this run's own last.pt, once there is one.
    """

    def __init__(self, path: str | Path, *, resume: bool, overwrite: bool, resume_command: Callable[[], str]):
        self.path = Path(path)
        self.last_pt = self.path / "last.pt"
        self.resume_command = resume_command
        check_writable_dir(self.path, f"--out-dir {self.path}")
        earlier = [name for name in ("best.pt", "last.pt") if (self.path / name).exists()]
        if earlier and not (resume or overwrite):
            raise UserError(f"{self.path} already holds {' and '.join(earlier)} of an earlier run: continue it with "
                            "--resume, train into another --out-dir, or add --overwrite to replace it")
        self.resumed = load_checkpoint(self.last_pt) if resume else None
        if self.resumed is not None and "optimizer" not in self.resumed:
            raise UserError(f"{self.last_pt} holds weights only (no optimizer state), so it cannot be resumed")
        self.owns_last_pt = resume  # else a last.pt here is an earlier run's, until this run saves
        self.history: list[dict] = []
        self.best_val_acc = -1.0

    def claim(self) -> None:
        """From here on this run writes into the folder, and no other may."""
        claim_folder(self.path, f"another train.py is writing into {self.path} right now: let it finish (or stop it), "
                                "or train into another --out-dir")

    def restore(self, model: nn.Module, optimizer, scheduler, scaler, args) -> tuple[int, int, dict | None]:
        """Remember what last.pt saves and, resuming, load it back: (epoch, step, partial epoch) to go on from.

        fp16's loss scale goes on from where it was, so that the resumed steps are the ones an uninterrupted run
        takes; a run saved in another precision has none, and fp16 starts from the scaler's initial scale.
        """
        self.model, self.optimizer, self.scheduler, self.scaler, self.args = model, optimizer, scheduler, scaler, args
        saved = self.resumed
        if saved is None:
            return 0, 0, None
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler.is_enabled() and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_state"])
        # Checkpoints written before missing metrics were None hold "" in their place.
        self.history = [{key: None if value == "" else value for key, value in row.items()} for row in saved["history"]]
        self.best_val_acc = saved["best_val_acc"]
        return saved["epoch"], saved["step"], saved.get("partial")

    def save_epoch(self, row: dict) -> bool:
        """Record a finished epoch and save its files, all or none; returns whether best.pt was updated."""
        self.history.append(row)
        # With no validation split there is nothing to choose on: best.pt is simply the latest epoch. Ties go to the
        # later epoch: 5,000 validation images often tie late in training, and the later epoch has trained longer.
        improved = row["val_acc"] is None or row["val_acc"] >= self.best_val_acc
        if improved and row["val_acc"] is not None:
            self.best_val_acc = row["val_acc"]
        # All or none: a refused write (a full disk) must not leave this epoch's best.pt beside the last.pt and
        # metrics.csv of an earlier epoch, or, on a run's first save, of the earlier run it is replacing.
        with self._resume_hint(), all_or_none() as stage:
            if improved:
                save_checkpoint(stage(self.path / "best.pt"), self.model, epoch=row["epoch"], metrics=row,
                                args=vars(self.args))
            save_checkpoint(stage(self.last_pt), self.model, **self._state(row["epoch"], 0, None))
            write_metrics_csv(stage(self.path / "metrics.csv"), self.history)
            plot_curves(stage(self.path / "curves.png"), self.history)
        self._saved(just_written=("best.pt", "metrics.csv", "curves.png"))
        return improved

    def save_mid_epoch(self, epoch: int, step: int, partial: dict) -> None:
        """Save last.pt in the middle of an epoch (0-based `epoch`, `step` steps done), to resume exactly there."""
        with self._resume_hint():
            save_checkpoint(self.last_pt, self.model, **self._state(epoch, step, partial))
        self._saved()

    def _state(self, epoch: int, step: int, partial: dict | None) -> dict:
        return dict(epoch=epoch, step=step, partial=partial, history=self.history, best_val_acc=self.best_val_acc,
                    args=vars(self.args), optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict(), rng_state=torch.get_rng_state())

    def _saved(self, just_written: tuple[str, ...] = ()) -> None:
        """After this run's first save, no earlier weights or reports are left beside its own for test.py or a
        reader to take for this run's."""
        if not self.owns_last_pt:
            for name in set(RUN_OUTPUTS) - set(just_written):
                (self.path / name).unlink(missing_ok=True)
        self.owns_last_pt = True

    @contextlib.contextmanager
    def _resume_hint(self) -> Iterator[None]:
        try:
            yield
        except UserError as error:
            if not self.owns_last_pt:
                raise
            raise UserError(f"{error}; the run can go on from {self.last_pt} with: {self.resume_command()}",
                            error.exit_code) from None
