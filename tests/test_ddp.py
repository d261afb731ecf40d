"""DDP under torchrun: two CPU processes with gloo train one model, and rank 0 alone writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from helpers import ROOT, run_script, tiny_recipe


def test_torchrun_two_processes_agree_and_only_rank_0_writes(slow, mnist_dir, tmp_path):
    out, weights = tmp_path / "out", tmp_path / "ranks"
    weights.mkdir()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "tests" / "ddp_worker.py"),
        str(weights),
        *tiny_recipe(subset=512),
        "--lr",
        "0.05",
        "--out-dir",
        str(out),
        "--data-dir",
        str(mnist_dir),
    ]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    rank0, rank1 = (torch.load(weights / f"rank{r}.pt", weights_only=True) for r in (0, 1))
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
