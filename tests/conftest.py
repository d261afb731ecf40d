"""Shared fixtures: the repo root on sys.path, real MNIST from MNIST_DATA_DIR, and one small training run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # how every PNG file starts
sys.path.insert(0, str(ROOT))

# A recipe that learns in a minute or two on 2 CPU cores: ~90% validation accuracy after 2 epochs of 2,000 images.
# Its 64 steps take the default --lr 0.1, which diverged in fp32 before short runs warmed up more slowly.
QUICK_RECIPE = ["--epochs", "2", "--subset", "2000", "--val-size", "1000", "--batch-size", "64"]


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts the way a user would, from the repo root."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Real MNIST where train.py looks: $MNIST_DATA_DIR, else ./data in the repository.

    In CI its absence is a failure, not a skip, so the end-to-end tests always run there.
    """
    folder = Path(os.environ.get("MNIST_DATA_DIR") or ROOT / "data")
    if (folder / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        return folder.resolve()
    message = (f"real MNIST not found in {folder}/MNIST/raw: run `python train.py` once to download it to ./data, "
               "or set MNIST_DATA_DIR to a folder holding MNIST/raw with the four IDX files")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mnist_dir) -> Path:
    """Train once on a small subset, in fp32 on every CPU (a short recipe must learn in every precision); several
    tests read the checkpoints it writes."""
    out = tmp_path_factory.mktemp("trained")
    result = run_script(
        "train.py", *QUICK_RECIPE, "--precision", "fp32", "--test-each-epoch", "--out-dir", str(out), "--data-dir",
        str(mnist_dir)
    )
    assert result.returncode == 0, result.stderr
    (out / "train_stdout.txt").write_text(result.stdout)
    return out
