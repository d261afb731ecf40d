"""A training run's folder (OUT_DIR), after timm's CheckpointSaver: the loop makes one call per epoch.

open_run_folder refuses a folder holding an earlier run unless told to resume or overwrite it, and reads last.pt to
resume; claim_run_folder locks it against a second train.py; RunFolder saves best.pt, last.pt, metrics.csv and
curves.png all or none. An earlier run's files stay whole until this run's first save, which then removes them. A
save the system refuses ends with the command that goes on from this run's own last.pt, once there is one.
"""
from __future__ import annotations

import contextlib
import csv
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn

from lib.checkpoints import load_checkpoint, save_checkpoint
from lib.common import UserError
from lib.files import all_or_none, atomic_write, check_writable_dir, claim_folder
from lib.plots import plot_curves
from lib.reports import REPORTS

METRICS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "seconds"]
# Besides last.pt, what a run leaves in its folder: its weights and what train.py, test.py and predict.py made of them.
RUN_OUTPUTS = ("best.pt", "metrics.csv", "curves.png", *REPORTS)


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """One row per epoch; a metric not measured (None) is an empty cell."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(history)


def open_run_folder(path: str | Path, *, resume: bool, overwrite: bool) -> dict | None:
    """Check OUT_DIR before any data is read: last.pt's contents when resuming, else None."""
    path = Path(path)
    check_writable_dir(path, f"--out-dir {path}")
    earlier = [name for name in ("best.pt", "last.pt") if (path / name).exists()]
    if earlier and not (resume or overwrite):
        raise UserError(f"{path} already holds {' and '.join(earlier)} of an earlier run: continue it with "
                        "--resume, train into another --out-dir, or add --overwrite to replace it")
    if not resume:
        return None
    resumed = load_checkpoint(path / "last.pt")
    if "optimizer" not in resumed:
        raise UserError(f"{path / 'last.pt'} holds weights only (no optimizer state), so it cannot be resumed")
    return resumed


def claim_run_folder(path: str | Path) -> None:
    """From here on this run writes into the folder, and no other may."""
    claim_folder(Path(path), f"another train.py is writing into {path} right now: let it finish (or stop it), or "
                             "train into another --out-dir")


class RunFolder:
    """What a run saves, and where: the model, optimizer, schedule and loss scale it was built with, and the history
    and best validation accuracy so far (a resumed run's, from its last.pt)."""

    def __init__(self, path: str | Path, resumed: dict | None, model: nn.Module, optimizer, scheduler, scaler, args,
                 resume_command: Callable[[], str]):
        self.path = Path(path)
        self.last_pt = self.path / "last.pt"
        self.resumed = resumed
        self.model, self.optimizer, self.scheduler, self.scaler, self.args = model, optimizer, scheduler, scaler, args
        self.resume_command = resume_command
        self.owns_last_pt = resumed is not None  # else a last.pt here is an earlier run's, until this run saves
        # Checkpoints written before missing metrics were None hold "" in their place.
        self.history: list[dict] = [{key: None if value == "" else value for key, value in row.items()}
                                    for row in (resumed or {}).get("history", [])]
        self.best_val_acc = resumed["best_val_acc"] if resumed else -1.0

    def restore(self) -> tuple[int, int, dict | None]:
        """Resuming, load last.pt into the model, optimizer, schedule and loss scaler: (epoch, step, partial epoch).

        fp16's loss scale goes on from where it was, so that the resumed steps are the ones an uninterrupted run
        takes; a run saved in another precision has none, and fp16 starts from the scaler's initial scale.
        """
        saved = self.resumed
        if saved is None:
            return 0, 0, None
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler.is_enabled() and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_state"])
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
