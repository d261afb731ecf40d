"""Shared fixtures: the repo root on sys.path, real MNIST from MNIST_DATA_DIR, one small training run, and the two
tiers: every test that trains or starts a process is marked slow here, by the fixtures it uses.

    python -m pytest -m "not slow"    # the fast tier: the tests that train nothing and start no process
    python -m pytest                  # everything, as CI runs it
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# matplotlib's first import in a new environment builds its font cache by running fc-list: done here, before the fast
# tier's tests, which may start no process, first draw a figure.
import matplotlib.font_manager  # noqa: F401
import pytest
from helpers import QUICK_RECIPE, ROOT, run_script, write_quick_mnist

sys.path.insert(0, str(ROOT))

# The fixtures that train a model or start a process. A test that uses one, directly or through another fixture, is
# marked slow; a test that starts a process itself asks for `slow`.
SLOW_FIXTURES = {"slow", "trained", "second_seed", "straight_run", "interrupted_seed", "straight_ddp"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def slow():
    """Asked for by a test that starts a process (a script, torchrun, bash) or trains: it belongs to the slow tier."""


@pytest.fixture(autouse=True)
def fast_tests_start_no_process(request, monkeypatch):
    """Keeps the fast tier fast: a test not marked slow that starts a process fails, saying what to do."""
    if request.node.get_closest_marker("slow"):
        return

    def refuse(*args, **kwargs):
        pytest.fail(f"{request.node.name} starts a process: ask for the `slow` fixture (tests/conftest.py)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def real_mnist() -> Path:
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
def mnist_dir(real_mnist, tmp_path_factory) -> Path:
    """Real MNIST with its test split cut to the first TEST_IMAGES (helpers.write_quick_mnist), for every test but
    those of the data readers themselves."""
    return write_quick_mnist(real_mnist, tmp_path_factory.mktemp("mnist"))


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
