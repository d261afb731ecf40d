"""What several test files share: the repository's root, running a script as a user would, comparing runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # how every PNG file starts
TEST_IMAGES = 1000  # the test split the tests' `mnist_dir` holds: its first 1,000 images (write_quick_mnist)

# A recipe that learns in a minute or two on 2 CPU cores: ~90% validation accuracy after 2 epochs of 2,000 images.
# Its 64 steps take the default --lr 0.1, which diverged in fp32 before short runs warmed up more slowly.
QUICK_RECIPE = ["--epochs", "2", "--subset", "2000", "--val-size", "1000", "--batch-size", "64"]


def tiny_recipe(subset: int = 256, batch_size: int | None = 64, epochs: int = 1, val_size: int = 256) -> list[str]:
    """train.py flags for a run of a few steps, for tests of what a run does rather than of what it learns."""
    batch = ["--batch-size", str(batch_size)] if batch_size else []  # None: train.py's default batch for the device
    return ["--epochs", str(epochs), "--subset", str(subset), "--val-size", str(val_size), *batch]


def write_quick_mnist(real: str | Path, root: str | Path) -> Path:
    """A data folder of real MNIST with its test split cut to the first TEST_IMAGES, for the tests and CI's smoke run:
    on a CPU without bf16, passes over the whole test split took more of the suite's time than its training did.

    The training files are linked, not copied; the test files are IDX files as MNIST publishes them.
    """
    import data  # the repository's, on the path where this runs: in the tests by conftest, in CI from the root

    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in data.IDX_FILES[True]:
        (raw / name).symlink_to(Path(real).resolve() / "MNIST" / "raw" / name)
    images, labels = data.load_split(real, train=False)
    for name, kind, tensor in zip(data.IDX_FILES[False], ("images", "labels"), (images, labels)):
        kept = tensor[:TEST_IMAGES].to(torch.uint8)
        header = b"".join(n.to_bytes(4, "big") for n in (data.IDX_MAGIC[kind], *kept.shape))
        (raw / name).write_bytes(header + kept.numpy().tobytes())
    return Path(root)


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


def start_script(script: str, *args: str) -> subprocess.Popen:
    """A script started in the background, its output read line by line (wait_for_line) while it runs."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for_line(process: subprocess.Popen, prefix: str) -> str:
    for line in process.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"training ended before printing {prefix!r}: {process.stderr.read()}")


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def first_epoch_seconds(out_dir) -> float:
    """How long a run's first epoch took here: tests that signal a run mid-epoch wait a share of it."""
    return float(next(csv.DictReader(open(out_dir / "metrics.csv")))["seconds"])


def metric_rows(out_dir) -> list[dict]:
    """metrics.csv without the wall-clock column, which no two runs share."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(open(out_dir / "metrics.csv"))]


if __name__ == "__main__":  # python tests/helpers.py REAL QUICK: the data CI's smoke run of the scripts reads
    sys.path.insert(0, str(ROOT))
    write_quick_mnist(*sys.argv[1:3])
