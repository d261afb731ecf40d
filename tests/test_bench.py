"""The benchmark scripts run end to end (timings are reported, never asserted) and bf16 keeps predictions."""
from __future__ import annotations

import re

import pytest
import torch

from conftest import run_script
from utils import bf16_supported


def test_bench_smoke(mnist_dir):
    result = run_script("benchmarks/bench.py", "--device", "cpu", "--steps", "1", "--warmup", "1", "--batch-size", "32",
                        "--eval-batch-size", "64", "--peer-batch-size", "32", "--profile", "--data-dir", str(mnist_dir))
    assert result.returncode == 0, result.stderr
    assert "our training step (batch 32), 3 steps" in result.stdout and "convolution_backward" in result.stdout
    assert re.search(r"\| peer: PIL DataLoader.* \| [\d,]+ \| [\d,]+ \|", result.stdout)
    assert re.search(r"\| ours: on-device.* \| [\d,]+ \| [\d,]+ \|", result.stdout)
    assert re.search(r"\| ratio ours / peer \| [\d.]+x \| [\d.]+x \|", result.stdout)


def test_bf16_and_fp32_predictions_agree_on_the_test_set(trained, mnist_dir):
    if not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 in hardware, so everything already runs in fp32")
    result = run_script("benchmarks/precision.py", "--weights", str(trained / "best.pt"), "--device", "cpu", "--limit", "2000",
                        "--data-dir", str(mnist_dir))
    assert result.returncode == 0, result.stderr
    match = re.search(r"predictions that differ: (\d+) of 2000", result.stdout)
    assert match, result.stdout
    assert int(match.group(1)) <= 20, result.stdout  # 1%, for a weak 2-epoch model with many close calls
    accuracies = [float(a) for a in re.findall(r"\| (?:fp32|bf16 autocast) \| ([\d.]+)% \|", result.stdout)]
    assert len(accuracies) == 2 and abs(accuracies[0] - accuracies[1]) <= 1.0, result.stdout


def test_the_flop_counts_behind_the_ceiling_column_are_the_models():
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.bench import FORWARD_GFLOP, TRAIN_GFLOP
    from model import ResNet18

    model = ResNet18()
    with FlopCounterMode(display=False) as forward:
        model.eval()(torch.randn(1, 1, 32, 32))
    with FlopCounterMode(display=False) as training:
        model.train()(torch.randn(2, 1, 32, 32)).sum().backward()
    assert forward.get_total_flops() / 1e9 == pytest.approx(FORWARD_GFLOP, rel=0.01)
    assert training.get_total_flops() / 2e9 == pytest.approx(TRAIN_GFLOP, rel=0.01)
