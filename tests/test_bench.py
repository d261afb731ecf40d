"""The benchmark scripts run end to end (timings are reported, never asserted); bf16 and int8 keep predictions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import PNG_MAGIC, ROOT, run_script

from lib.device import choose_precision


def test_bench_smoke(slow, mnist_dir):
    # --compile's row with torch.compile switched off: a cold compile costs ~45 s on the CPU, and train.py --compile's
    # test compiles for real; here it is the row and the first step's timing that are checked.
    result = run_script(
        "benchmarks/bench.py",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--batch-size",
        "32",
        "--eval-batch-size",
        "64",
        "--peer-batch-size",
        "32",
        "--profile",
        "--compile",
        "--data-dir",
        str(mnist_dir),
        env={"TORCH_COMPILE_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^torch.compile: first training step \(compiling\) [\d.]+ s$", result.stdout, re.M), result.stdout
    assert re.search(r"^\| ours \+ torch.compile \(reduce-overhead\) \| [\d,]+ \|  \|$", result.stdout, re.M), (
        result.stdout
    )
    assert "our training step (batch 32), 3 steps" in result.stdout and "convolution_backward" in result.stdout
    assert re.search(r"\| peer: PIL DataLoader.* \| [\d,]+ \| [\d,]+ \|", result.stdout)
    assert re.search(r"\| ours: on-device.* \| [\d,]+ \| [\d,]+ \|", result.stdout)
    assert re.search(r"\| ratio ours / peer \| [\d.]+x \| [\d.]+x \|", result.stdout)
    assert re.search(r"\| ours: int8 evaluation.* \|  \| [\d,]+ \|", result.stdout)
    assert re.search(r"\| ratio int8 / peer \| \| [\d.]+x \|", result.stdout)


def test_bf16_and_int8_predictions_agree_with_fp32_on_the_test_set(trained, mnist_dir):
    result = run_script(
        "benchmarks/precision.py",
        "--weights",
        str(trained / "best.pt"),
        "--device",
        "cpu",
        "--limit",
        "1000",
        "--data-dir",
        str(mnist_dir),
    )
    assert result.returncode == 0, result.stderr
    rows = {
        name: (float(accuracy), int(differ))
        for name, accuracy, differ in re.findall(
            r"^\| (fp32|bf16 autocast|fp16 autocast|int8) \| ([\d.]+)% \| \d+ \| [\d.]+ \| (\d+)", result.stdout, re.M
        )
    }
    in_hardware = {f"{p} autocast" for p in ("bf16", "fp16") if not choose_precision(torch.device("cpu"), p).emulated}
    expected = {"fp32", "int8"} | in_hardware
    assert set(rows) == expected, result.stdout
    # A weak 2-epoch model has many close calls: bf16 flips ~0.1% of them, int8 ~1%; a broken quantization flips
    # most (BENCHMARKS.md has the default model's).
    limits = {"fp32": 0, "bf16 autocast": 10, "fp16 autocast": 10, "int8": 30}
    for name, (accuracy, differ) in rows.items():
        assert differ <= limits[name], result.stdout
        assert abs(accuracy - rows["fp32"][0]) <= 1.0, result.stdout


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


def run_gpu_checks(tmp_path, budget: int) -> tuple[subprocess.CompletedProcess, Path]:
    """gpu_checks.sh's own plumbing, with a stand-in interpreter that only says what it was asked to run (bench.py
    taking 3 s); returns the result and LOG_DIR. The runs go to tmp_path/runs."""
    stand_in = tmp_path / "python"
    stand_in.write_text('#!/bin/sh\necho "ran: $*"\n[ "$1" = benchmarks/bench.py ] && sleep 3\nexit 0\n')
    stand_in.chmod(0o755)
    logs = tmp_path / "logs"
    runs = tmp_path / "runs"  # not the repository's runs/, where a real run's logs may be
    result = subprocess.run(
        ["bash", "benchmarks/gpu_checks.sh", str(logs), str(budget), str(runs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(stand_in), "HOME": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result, logs


def test_gpu_checks_runs_each_step_within_its_budget_and_logs_it(slow, tmp_path):
    result, logs = run_gpu_checks(tmp_path, budget=12)
    assert sorted(p.name for p in logs.iterdir()) == [
        "0-machine.log",
        "1-graphed-step.log",
        "2-bench.log",
        "2f-bench-fp16.log",
        "2f-bench-fp32.log",
        "2t-seeds-fp16.log",
        "2t-seeds-fp32.log",
        "3-seeds-default.log",
        "4-seeds-b128-e3.log",
        "5-seeds-batch.log",
        "6-seeds-compile.log",
        "7-seeds-photometric.log",
        "results.md",
    ]
    assert "ran: -m pytest -q -p no:cacheprovider tests/test_model.py" in (logs / "1-graphed-step.log").read_text()
    assert "ran: benchmarks/bench.py --compile" in (logs / "2-bench.log").read_text()
    # bench.py's 3 s leave less than the 10 s a step needs: the rest are skipped, not started and cut off.
    skipped = ["2f-bench-fp16", "2f-bench-fp32", "2t-seeds-fp16", "2t-seeds-fp32", "3-seeds-default", "4-seeds-b128-e3"]
    for name in skipped + ["5-seeds-batch", "6-seeds-compile", "7-seeds-photometric"]:
        assert (logs / f"{name}.log").read_text() == f"=== {name}: skipped, the budget is spent\n"
    results = result.stdout.split("=== results\n")[1]  # printed again at the end, where the last screenful shows them
    assert results.startswith((logs / "0-machine.log").read_text()) and "--- 2-bench" in results, result.stdout
    assert (logs / "results.md").read_text() == "=== results\n" + results


def test_gpu_checks_trains_the_batch_size_and_photometric_seeds_side_by_side_then_gathers_them(slow, tmp_path):
    _, logs = run_gpu_checks(tmp_path, budget=40)
    runs = tmp_path / "runs"
    recipes = {"b256": "--batch-size 256", "b128": "--batch-size 128", "photometric": "--photometric"}
    for name, flags in recipes.items():
        for seed in (0, 1, 2):  # each seed's log is kept in LOG_DIR
            assert (
                logs / f"{name}-parallel-seed{seed}.log"
            ).read_text() == f"ran: benchmarks/seeds.py --seeds {seed} --out-dir {runs}/{name} -- {flags}\n"
    gathered = (logs / "5-seeds-batch.log").read_text()
    for name in ("b256", "b128"):
        assert f"ran: benchmarks/seeds.py --out-dir {runs}/{name} -- {recipes[name]}\n" in gathered
    assert f"ran: benchmarks/seeds.py --seeds 0 1 2 3 4 --out-dir {runs}/default\n" in (
        logs / "3-seeds-default.log"
    ).read_text()
    assert (
        f"ran: benchmarks/seeds.py --out-dir {runs}/b128-e3 -- --batch-size 128 --epochs 3\n"
        in (logs / "4-seeds-b128-e3.log").read_text()
    )  # alone, for its times
    assert not (logs / "b128-e3-parallel-seed0.log").exists()
    for precision in ("fp16", "fp32"):  # timed beside bf16, then trained: the paths older GPUs take
        assert f"ran: benchmarks/bench.py --precision {precision} --steps 30\n" in (
            logs / f"2f-bench-{precision}.log"
        ).read_text()
        assert f"ran: benchmarks/seeds.py --seeds 0 --out-dir {runs}/{precision} -- --precision {precision}\n" in (
            logs / f"2t-seeds-{precision}.log"
        ).read_text()
    assert (
        f"ran: benchmarks/seeds.py --out-dir {runs}/compile -- --compile\n"
        in (logs / "6-seeds-compile.log").read_text()
    )
    assert (
        f"ran: benchmarks/seeds.py --out-dir {runs}/photometric -- --photometric\n"
        in (logs / "7-seeds-photometric.log").read_text()
    )


def test_gpu_checks_keeps_each_recipes_summary_figure_and_per_seed_epochs_in_its_log_dir(slow, tmp_path):
    """LOG_DIR alone is what comes back from a lent GPU: what the runs left in RUNS_DIR is copied there."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        (runs / "default" / f"seed{seed}").mkdir(parents=True)
        (runs / "default" / f"seed{seed}" / "metrics.csv").write_text(f"epoch,test_acc\n1,0.99{seed}\n")
    (runs / "default" / "summary.md").write_text("| seed |\n")
    (runs / "default" / "seeds.png").write_bytes(PNG_MAGIC)
    result, logs = run_gpu_checks(tmp_path, budget=12)
    assert (logs / "default-seed1-metrics.csv").read_text() == "epoch,test_acc\n1,0.991\n"
    assert (logs / "default-seed0-metrics.csv").is_file() and (logs / "default-seeds.png").read_bytes() == PNG_MAGIC
    assert (logs / "default-summary.md").read_text() == "| seed |\n"
    assert "--- seeds, default\n| seed |\n" in (logs / "results.md").read_text()
