"""DDP under torchrun: two CPU processes with gloo train one model, and rank 0 alone writes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, first_epoch_seconds, metric_rows, run_script, tiny_recipe, wait_for_line, weights

RECIPE = [*tiny_recipe(subset=256), "--lr", "0.05", "--device", "cpu"]  # 4 steps of 64, 32 images a rank


def torchrun(script: str, *args: str) -> list[str]:
    """The command that runs `script` in two CPU processes under torchrun, one thread each."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / script),
            *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def straight_ddp(tmp_path_factory, mnist_dir):
    """One epoch of the tiny recipe on 2 ranks, run straight through; each rank's final weights saved beside."""
    out, weights = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("ranks")
    result = subprocess.run(torchrun("tests/ddp_worker.py", str(weights), *RECIPE, "--out-dir", str(out),
                                     "--data-dir", str(mnist_dir)),
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, weights, result


def test_torchrun_two_processes_agree_and_only_rank_0_writes(straight_ddp, mnist_dir, tmp_path):
    out, ranks, result = straight_ddp
    rank0, rank1 = (torch.load(ranks / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in rank0:  # parameters through DDP's all-reduce, BN statistics through our averaging
        assert torch.equal(rank0[name], rank1[name]), name
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "curves.png", "last.pt", "metrics.csv"]
    assert result.stdout.count("ResNet-18 (") == 1 and result.stdout.count("epoch   1/1") == 1  # rank 0 alone prints
    assert "x2 ranks" in result.stdout
    saved = torch.load(out / "last.pt", weights_only=True)["model"]
    assert not any(key.startswith("module.") for key in saved)
    assert all(torch.equal(saved[name], rank0[name]) for name in saved)

    # The scripts take the checkpoint as they take one of a single process (predict.py: a few digits, not 10,000).
    predicted = run_script("predict.py", "--weights", str(out / "best.pt"), "--num", "4", "--json", "--out",
                           str(tmp_path / "p.png"), "--data-dir", str(mnist_dir), "--device", "cpu")
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)) == 4


def test_a_run_stopped_mid_epoch_under_torchrun_resumes_to_the_figures_and_weights_of_one_run_straight(
        straight_ddp, mnist_dir, tmp_path):
    """Ctrl-C (the whole process group, as a terminal sends it) at the first steps, then --resume under torchrun.

    The resumed epoch's training loss and accuracy count each rank's steps before the stop once: last.pt holds their
    sums over both ranks, not rank 0's alone.
    """
    common = [*RECIPE, "--out-dir", str(tmp_path), "--data-dir", str(mnist_dir)]
    process = subprocess.Popen(torchrun("train.py", *common), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    wait_for_line(process, "ResNet-18")
    # Rank 0 prints first; a rank that has not yet taken its Ctrl-C handler would simply quit. A quarter of the
    # straight run's epoch later both are training.
    time.sleep(first_epoch_seconds(straight_ddp[0]) / 4)
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=120)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 0 and 0 < saved["step"] < 4, (saved["epoch"], saved["step"])
    assert saved["partial"]["count"][: saved["step"]].tolist() == [64.0] * saved["step"]  # both ranks' 32 a step
    resumed = subprocess.run(torchrun("train.py", "--resume", "--device", "cpu", "--out-dir", str(tmp_path),
                                      "--data-dir", str(mnist_dir)),
                             cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight, again = (metric_rows(folder)[0] for folder in (straight_ddp[0], tmp_path))
    for column in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert float(again[column]) == pytest.approx(float(straight[column]), rel=1e-5), column
    expected, got = (weights(folder / "last.pt") for folder in (straight_ddp[0], tmp_path))
    for name in expected:  # the parameters exactly; the averaged batch-norm statistics up to rounding
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
