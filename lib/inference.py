"""Inference: trained models loaded for it (one, or an ensemble), and the one path every script predicts and
evaluates by."""
from __future__ import annotations

import math
import time
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from lib.checkpoints import load_model
from lib.cli import progress
from lib.common import UserError
from lib.device import autocast
from lib.fast_copies import fold_batchnorm, quantize_int8

EVAL_BATCH_SIZE = 1000  # of validation and test passes: in the same batches bf16 rounds alike, so every script agrees
CALIBRATION_IMAGES = 256  # training images whose activation ranges set the int8 scales (more did no better)


class Ensemble(nn.Module):
    """Several trained models as one: the mean of their softmax probabilities.

    Its output is the log of that mean, so that whatever takes a model's logits (argmax, softmax, cross-entropy)
    gets the ensemble's prediction, probabilities and loss from it, by the same code as for one model.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    @staticmethod
    def combine(logits: list[torch.Tensor]) -> torch.Tensor:
        """The ensemble's output from its members' logits: the log of their mean softmax probabilities.

        Computed as logsumexp of log-softmaxes minus log n: the log of a mean of softmaxes is -inf wherever every
        member's probability underflows, which confident members reach.
        """
        log_probabilities = torch.stack([member_logits.float().log_softmax(1) for member_logits in logits])
        return torch.logsumexp(log_probabilities, 0) - math.log(len(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine([member(x) for member in self.members])


def load_models(paths: list[str], device: torch.device) -> tuple[nn.Module, list[dict]]:
    """The model of one checkpoint, or the Ensemble of several, ready for inference; and the checkpoints.

    Each model's batch norm is folded here, once, not on each call of predict_logits (a robustness report makes 27).
    Each is checked as load_model checks one, so a bad member is refused in one line that names it.
    """
    loaded = [load_model(path, device) for path in paths]
    models, checkpoints = [fold_batchnorm(model) for model, _ in loaded], [checkpoint for _, checkpoint in loaded]
    return (models[0] if len(models) == 1 else Ensemble(models).eval()), checkpoints


def int8_model(model: nn.Module, data_dir: str | None, batch_size: int, device: torch.device) -> nn.Module:
    """quantize_int8 calibrated on the first CALIBRATION_IMAGES training images, for test.py --int8.

    An ensemble gets each member quantized.
    """
    if device.type != "cpu":
        raise UserError(f"--int8 runs on the CPU only (PyTorch's quantized kernels are CPU kernels), not {device}: "
                        "add --device cpu")
    started = time.perf_counter()
    train_images, _ = data.load_split(data_dir, train=True, with_labels=False)  # the labels file is not needed
    calibration = data.normalize(data.to_model_size(train_images[:CALIBRATION_IMAGES]))
    batches = calibration.split(batch_size)
    if isinstance(model, Ensemble):
        quantized = Ensemble([quantize_int8(member, batches) for member in model.members])
    else:
        quantized = quantize_int8(model, batches)
    print(f"quantized to int8 in {time.perf_counter() - started:.1f}s "
          f"(activation ranges from {len(calibration)} training images)")
    return quantized


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Iterable[torch.Tensor], precision: str = "fp32") -> torch.Tensor:
    """fp32 logits [N, 10] of `model` over batches of normalised images, by its batch-norm-folded copy.

    Every prediction in this project comes from here: test.py's accuracy, predict.py's digits, the benchmark's
    evaluation. `model` is unchanged; one already folded (load_models') is used as it is.
    """
    inference_model = fold_batchnorm(model)
    parameter = next(inference_model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")  # int8 models keep no parameters
    logits = []
    for x in batches:
        with autocast(device, precision):
            logits.append(inference_model(x).float())
    return torch.cat(logits) if logits else torch.empty(0, data.NUM_CLASSES, device=device)


def probabilities(model: nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
    """Softmax probabilities [N, 10] on the CPU for [0, 1] images [N, 1, 32, 32], in test.py's batches."""
    device = next(model.parameters()).device
    batches = (data.normalize(batch.to(device)) for batch in images.split(EVAL_BATCH_SIZE))
    return predict_logits(model, batches, precision).softmax(1).cpu()


def prediction_records(probabilities: torch.Tensor, members: int = 1) -> list[dict]:
    """Each row of probabilities [N, 10] as {"prediction", "confidence", "top3"}: what --json prints per digit.

    An ensemble's records also say how many models voted ("members").
    """
    top_p, top_k = probabilities.topk(3, dim=1)
    voted = {"members": members} if members > 1 else {}
    return [{"prediction": int(k[0]), "confidence": float(p[0]),
             "top3": [{"digit": int(d), "probability": float(q)} for d, q in zip(k, p)], **voted}
            for k, p in zip(top_k, top_p)]


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], precision: str = "fp32") -> dict:
    """Loss, accuracy and logits of `model` over (images, labels) batches, by predict_logits.

    Returns sums as well as means so DDP ranks can add theirs up. The loss is plain cross-entropy
    (no label smoothing), so it is comparable across recipes.
    """
    labels = []

    def images() -> Iterable[torch.Tensor]:
        for x, y in batches:
            labels.append(y)
            yield x

    logits = predict_logits(model, images(), precision)
    return score(logits, torch.cat(labels) if labels else torch.empty(0, dtype=torch.long, device=logits.device))


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """evaluate()'s result for logits already computed: test.py scores an ensemble from its members' logits."""
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


def evaluate_split(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
                   precision: str = "fp32", *, desc: str, rank: int = 0, world_size: int = 1,
                   show: bool = True) -> dict:
    """evaluate() over a whole split held as tensors, in batches, with a progress bar (on a terminal) named `desc`.

    Under DDP each rank evaluates its share of every batch; the sums it returns are that share's.
    """
    steps = len(data.batch_bounds(len(images), batch_size, world_size))
    split_batches = data.batches(images, labels, batch_size, rank=rank, world_size=world_size)
    return evaluate(model, progress(split_batches, total=steps, desc=desc, unit="batch", show=show), precision)


def evaluate_members(members: list[nn.Module], images: torch.Tensor, labels: torch.Tensor, names: list[str],
                     batch_size: int = EVAL_BATCH_SIZE, precision: str = "fp32") -> list[dict]:
    """evaluate_split of each member of an ensemble, once each: an ensemble's result is then Ensemble.combine of
    their logits (and score), never a second pass of every member."""
    return [evaluate_split(member, images, labels, batch_size, precision, desc=f"test {name}")
            for member, name in zip(members, names)]
