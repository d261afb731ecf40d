"""benchmarks/bench.py runs end to end and prints its table (timings are reported, never asserted)."""
from __future__ import annotations

import re

from conftest import run_script


def test_bench_smoke(mnist_dir):
    result = run_script("benchmarks/bench.py", "--device", "cpu", "--steps", "1", "--warmup", "1", "--batch-size", "32",
                        "--eval-batch-size", "64", "--peer-batch-size", "32", "--data-dir", str(mnist_dir))
    assert result.returncode == 0, result.stderr
    assert re.search(r"\| peer: PIL DataLoader.* \| [\d,]+ \| [\d,]+ \|", result.stdout)
    assert re.search(r"\| ours: on-device.* \| [\d,]+ \| [\d,]+ \|", result.stdout)
    assert re.search(r"\| ratio ours / peer \| [\d.]+x \| [\d.]+x \|", result.stdout)
