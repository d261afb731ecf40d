"""End to end on real MNIST: train.py learns and saves, test.py reports the right number, predict.py draws."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import platform
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import PNG_MAGIC, ROOT, TEST_IMAGES, run_script, tiny_recipe

from lib.corruptions import CORRUPTIONS
from lib.training import LR, WARMUP, short_run_warmup
from model import ResNet18


@pytest.mark.parametrize("script", ["train.py", "test.py", "predict.py"])
def test_every_script_has_help(slow, script):
    result = run_script(script, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout and "--device" in result.stdout
    # a switch's or an unset option's default would mislead ("--no-amp ... (default: True)")
    assert not re.search(r"\(default: (True|False|None)\)", result.stdout), result.stdout


@pytest.mark.parametrize("buffered", [True, False], ids=["stdout-buffered", "stdout-unbuffered"])
def test_a_reader_that_stops_early_ends_the_script_quietly(slow, mnist_dir, tmp_path, buffered):
    """`python train.py | head -1`: once head has gone, no BrokenPipeError traceback, just exit code 1."""
    env = {**os.environ, "PYTHONUNBUFFERED": "" if buffered else "1"}
    args = [
        *tiny_recipe(subset=64, batch_size=None, val_size=64),
        "--out-dir",
        str(tmp_path),
        "--data-dir",
        str(mnist_dir),
    ]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # the reader is gone before the first line is written
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 1 and stderr == "", stderr


def test_the_default_batch_on_a_cpu_is_128_and_is_saved_for_resume(slow, mnist_dir, tmp_path):
    result = run_script(
        "train.py",
        "--device",
        "cpu",
        *tiny_recipe(batch_size=None),
        "--out-dir",
        str(tmp_path),
        "--data-dir",
        str(mnist_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "batch 128, 2 steps per epoch" in result.stdout
    assert torch.load(tmp_path / "last.pt", weights_only=True)["args"]["batch_size"] == 128


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="a setting of glibc's malloc; elsewhere keep_freed_memory does nothing"
)
def test_memory_a_batch_frees_is_reused_without_being_faulted_in_again(slow):
    # What train.py and test.py do first. Without it every batch maps its large activations afresh (fp32 here, 67 MB
    # for the first stage) and faults them in page by page; with it the third batch reuses the first two's memory.
    code = """if True:
        import resource, sys, torch, model, lib.device
        if sys.argv[1] == "keep":
            lib.device.keep_freed_memory()
        net, images = model.ResNet18().eval(), torch.randn(256, 1, 32, 32)
        with torch.no_grad():
            for _ in range(2):
                net(images)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            net(images)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"""
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", code, mode], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout
        )
        for mode in ("default", "keep")
    }
    assert faults["keep"] * 4 < faults["default"], faults  # seen: 0 against 533,000


def test_a_compiled_run_takes_the_steps_an_eager_one_takes_and_saves_plain_weights(slow, mnist_dir, tmp_path):
    """--compile changes how a step runs, not what it computes: in fp32 the same two steps, up to rounding."""
    args = [
        "--device",
        "cpu",
        "--no-amp",
        *tiny_recipe(batch_size=128),
        "--data-dir",
        str(mnist_dir),
    ]
    eager = run_script("train.py", *args, "--out-dir", str(tmp_path / "eager"))
    compiled = run_script("train.py", *args, "--compile", "--out-dir", str(tmp_path / "compiled"))
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    assert "torch.compile" in compiled.stdout.splitlines()[0] and "torch.compile" not in eager.stdout
    assert compiled.stderr == ""  # compiling cold, inductor's C++ build warned "No CUDA runtime is found" on a CPU
    weights = [torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("eager", "compiled")]
    assert weights[0].keys() == weights[1].keys()  # no "_orig_mod." prefixes: test.py and --resume load it as any other
    # The weights themselves are compared through the losses: at initialisation fp32 gradients of the early layers are
    # only ~0.3-0.7% from float64 ones (eager and compiled alike, measured), so two short runs differ that much there.
    # Validation runs eagerly on the saved weights and batch-norm statistics: a lost update would show there.
    rows = [list(csv.DictReader(open(tmp_path / run / "metrics.csv")))[0] for run in ("eager", "compiled")]
    for column in ("train_loss", "val_loss"):
        assert float(rows[1][column]) == pytest.approx(float(rows[0][column]), rel=1e-4), (column, rows)


def test_the_resume_command_repeats_the_runtime_flags_given(tmp_path):
    from train import parse_args, resume_command

    args = parse_args(
        ["--compile", "--no-cuda-graphs", "--device", "cpu", "--out-dir", str(tmp_path / "a run"), "--epochs", "3"]
    )
    # The recipe (--epochs) comes from last.pt; how and where to run from the command line, so it is repeated.
    assert shlex.split(resume_command(args)) == [
        "python",
        "train.py",
        "--resume",
        "--compile",
        "--no-cuda-graphs",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path / "a run"),
    ]


def test_progress_bars_show_on_a_terminal_and_stay_out_of_logs(slow, mnist_dir, tmp_path):
    """The epoch's steps and the validation pass get bars with ETA when stderr is a terminal; a log gets none."""
    args = [
        *tiny_recipe(subset=128, val_size=64),
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path),
        "--data-dir",
        str(mnist_dir),
    ]
    controller, terminal = pty.openpty()
    fcntl.ioctl(
        terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0)
    )  # rows, columns: tqdm draws nothing in 0 columns
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=terminal
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the process has closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert process.wait(timeout=300) == 0
    text = shown.decode(errors="replace")
    assert re.search(r"epoch 1/1: +\d+%\|.*\| \d/2 \[.*step/s", text), text
    assert re.search(r"validation: +\d+%\|.*\| \d/1 \[", text), text
    logged = run_script("train.py", *args, "--overwrite")  # the same folder again: the run above is replaced
    assert logged.returncode == 0 and "%|" not in logged.stderr, logged.stderr


def test_train_learns_and_writes_checkpoints_metrics_and_curves(trained, mnist_dir):
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png"):
        assert (trained / name).is_file(), name
    assert (trained / "curves.png").read_bytes()[:8] == PNG_MAGIC
    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "lr",
        "seconds",
    }
    assert float(rows[-1]["val_acc"]) > 0.8 and float(rows[-1]["test_acc"]) > 0.8, rows  # chance is 0.1
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # Epoch 1 ends just past the peak of the short run's 32-step warm-up; training ends at OneCycleLR's floor (peak /
    # 25 / 1e4), not past it.
    peak, _ = short_run_warmup(LR, WARMUP, 64)
    assert 0.99 * peak < float(rows[0]["lr"]) < peak and float(rows[-1]["lr"]) == pytest.approx(peak / 25 / 1e4)
    last = torch.load(trained / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["step"] == 0 and "optimizer" in last and "scheduler" in last
    best = torch.load(trained / "best.pt", weights_only=True)
    assert best["metrics"]["val_acc"] == max(float(r["val_acc"]) for r in rows)
    stdout = (trained / "train_stdout.txt").read_text()
    epoch_lines = re.findall(r"^epoch +\d+/2 .*$", stdout, re.M)
    assert len(epoch_lines) == 2
    # In a log, where no progress bar is drawn, the epoch line says how long the rest will take: one more such epoch.
    seconds, to_go = re.search(r" ([\d.]+)s, about (\d+ s|\d+ min) to go$", epoch_lines[0]).groups()
    assert abs(int(to_go.split()[0]) * (60 if to_go.endswith("min") else 1) - float(seconds)) <= 30, epoch_lines[0]
    assert "to go" not in epoch_lines[1]
    # The command it suggests next tests these weights, not checkpoints/best.pt, and reads MNIST where training did.
    suggested = shlex.split(re.search(r"Next: (.+)$", stdout, re.M).group(1))
    assert suggested == ["python", "test.py", "--weights", str(trained / "best.pt"), "--data-dir", str(mnist_dir)]


def independent_test_accuracy(weights, mnist_dir) -> int:
    """Correct test predictions computed without test.py's code path: torchvision's dataset, our model class, fp32.

    fp32 on both sides, because in bf16 test.py's folded batch norm rounds differently from this unfolded model
    and a weak test-suite model has enough close calls for a few predictions to flip (9,132 vs 9,137 correct, seen).
    """
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    model = ResNet18()
    model.load_state_dict(checkpoint["model"])
    model = model.to(memory_format=torch.channels_last).eval()
    dataset = torchvision.datasets.MNIST(mnist_dir, train=False)
    x = F.interpolate(dataset.data.float().div(255).unsqueeze(1), size=32, mode="bilinear", align_corners=False).clamp(
        0, 1
    )
    x = (x - checkpoint["normalization"]["mean"]) / checkpoint["normalization"]["std"]
    # Small batches: this process keeps glibc's default of unmapping large freed blocks (test.py does not), so each
    # batch of 1,000 faults its activations back in: 84 s per 10,000 images against 57 s in batches of 100 (dev CPU).
    batch, correct = 100, 0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            correct += (
                (model(x[start : start + batch]).argmax(1) == dataset.targets[start : start + batch]).sum().item()
            )
    return correct


@pytest.fixture(scope="module")
def tested_beside(trained, mnist_dir, tmp_path_factory):
    """test.py run as a user runs it, with no --out-dir, on a copy of the quick model's best.pt, robustness included;
    in fp32, as train.py's test passes of the quick model were.

    One run serves three tests: a pass over the test images is the slowest part of each.
    """
    folder = tmp_path_factory.mktemp("tested")
    weights = folder / "best.pt"
    weights.write_bytes((trained / "best.pt").read_bytes())
    result = run_script("test.py", "--weights", str(weights), "--robustness", "--robustness-images", "20",
                        "--data-dir", str(mnist_dir), "--device", "cpu", "--no-amp")
    assert result.returncode == 0, result.stderr
    return weights, result


def test_test_py_accuracy_equals_an_independent_computation(tested_beside, mnist_dir):
    weights, result = tested_beside
    match = re.search(rf"test accuracy: ([\d.]+)% \((\d+)/{TEST_IMAGES}", result.stdout)
    assert match, result.stdout
    assert "(fp32)" in result.stdout  # --no-amp
    assert int(match.group(2)) == independent_test_accuracy(weights, mnist_dir)
    report = json.loads((weights.parent / "test_report.json").read_text())
    assert round(100 * report["accuracy"], 2) == float(match.group(1))
    assert sum(map(sum, report["confusion_matrix"])) == TEST_IMAGES
    assert sum(report["confusion_matrix"][i][i] for i in range(10)) == int(match.group(2))
    labels = torchvision.datasets.MNIST(mnist_dir, train=False).targets
    assert [c["support"] for c in report["per_class"]] == torch.bincount(labels, minlength=10).tolist()


def test_per_epoch_test_accuracy_is_what_test_py_reports_for_that_epoch(trained, tested_beside):
    weights, result = tested_beside
    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    best_epoch = torch.load(trained / "best.pt", weights_only=True)["epoch"]
    correct = int(re.search(rf"test accuracy: [\d.]+% \((\d+)/{TEST_IMAGES}", result.stdout).group(1))
    assert round(TEST_IMAGES * float(rows[best_epoch - 1]["test_acc"])) == correct
    # With no --out-dir the report lies beside the weights it is about.
    assert json.loads((weights.parent / "test_report.json").read_text())["weights"] == str(weights)
    assert (weights.parent / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC
    # best.pt is the epoch with the highest validation accuracy, the later one on a tie.
    assert best_epoch == max(range(1, len(rows) + 1), key=lambda epoch: (float(rows[epoch - 1]["val_acc"]), epoch))
    assert f"test acc {100 * float(rows[-1]['test_acc']):.2f}%" in (trained / "train_stdout.txt").read_text()


def test_robustness_report_writes_table_json_and_chart(tested_beside):
    weights, result = tested_beside
    report = json.loads((weights.parent / "robustness.json").read_text())
    assert set(report["corruptions"]) == set(CORRUPTIONS) and report["images"] == 20
    for name in CORRUPTIONS:
        assert name in result.stdout
    # A model trained on light-on-dark digits should fail on inverted ones and survive mild rotation.
    assert report["corruptions"]["inversion"][0]["accuracy"] < 0.5 * report["clean"]
    assert report["corruptions"]["rotation"][0]["accuracy"] > 0.5 * report["clean"]
    assert (weights.parent / "robustness.png").read_bytes()[:8] == PNG_MAGIC


def test_test_py_int8_is_reported_as_such_and_lands_near_the_accuracy_train_py_recorded(trained, mnist_dir, tmp_path):
    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    best_epoch = torch.load(trained / "best.pt", weights_only=True)["epoch"]
    result = run_script(
        "test.py",
        "--weights",
        str(trained / "best.pt"),
        "--out-dir",
        str(tmp_path),
        "--data-dir",
        str(mnist_dir),
        "--device",
        "cpu",
        "--int8",
    )
    assert result.returncode == 0, result.stderr
    assert "quantized to int8" in result.stdout and "(int8)" in result.stdout, result.stdout
    correct = int(re.search(rf"test accuracy: [\d.]+% \((\d+)/{TEST_IMAGES}", result.stdout).group(1))
    recorded = round(TEST_IMAGES * float(rows[best_epoch - 1]["test_acc"]))
    assert abs(correct - recorded) <= TEST_IMAGES // 100, result.stdout  # 1 point
    assert json.loads((tmp_path / "test_report.json").read_text())["precision"] == "int8"


def test_predict_py_draws_a_grid_and_says_when_it_cannot_show_it(trained, mnist_dir, tmp_path):
    weights, out = (
        tmp_path / "best.pt",
        tmp_path / "predictions.png",
    )  # with no --out the figure lies beside the weights
    weights.write_bytes((trained / "best.pt").read_bytes())
    # No display (a server, CI): matplotlib falls back to its file-only backend, as MPLBACKEND=agg forces here.
    result = run_script(
        "predict.py",
        "--weights",
        str(weights),
        "--num",
        "9",
        "--data-dir",
        str(mnist_dir),
        "--show",
        env={"MPLBACKEND": "agg"},
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert re.search(r"9 test digits, \d+ predicted correctly", result.stdout)
    assert (
        result.stderr == f"note: no display to open a window on (matplotlib backend agg); the figure is in {out}\n"
    ), result.stderr


def test_predict_py_errors_lists_the_mistakes_test_py_counts_most_confident_first(trained, mnist_dir, tmp_path):
    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    best_epoch = torch.load(trained / "best.pt", weights_only=True)["epoch"]
    weights = tmp_path / "best.pt"
    weights.write_bytes((trained / "best.pt").read_bytes())
    result = run_script(
        "predict.py",
        "--weights",
        str(weights),
        "--errors",
        "--num",
        "12",
        "--json",
        "--data-dir",
        str(mnist_dir),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    # As many mistakes as train.py's test pass of that epoch counted (the same evaluate, batches and precision).
    count = int(re.search(rf"^(\d+) of {TEST_IMAGES:,} test digits predicted wrongly", result.stderr, re.M).group(1))
    assert count == round(TEST_IMAGES * (1 - float(rows[best_epoch - 1]["test_acc"]))), result.stderr
    listed = json.loads(result.stdout)  # --json: stdout holds the records alone
    assert len(listed) == 12 < count
    targets = torchvision.datasets.MNIST(mnist_dir, train=False).targets
    for record in listed:
        assert targets[record["test_index"]] == record["label"] != record["prediction"] == record["top3"][0]["digit"]
    confidences = [record["confidence"] for record in listed]
    assert confidences == sorted(confidences, reverse=True)
    assert (tmp_path / "errors.png").read_bytes()[:8] == PNG_MAGIC  # beside the weights, not over predictions.png
    assert not (tmp_path / "predictions.png").exists()


def test_predict_py_json_gives_each_sampled_digit_its_index_label_and_top_3(trained, mnist_dir, tmp_path):
    result = run_script(
        "predict.py",
        "--weights",
        str(trained / "best.pt"),
        "--num",
        "5",
        "--json",
        "--out",
        str(tmp_path / "p.png"),
        "--data-dir",
        str(mnist_dir),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    targets = torchvision.datasets.MNIST(mnist_dir, train=False).targets
    assert len(records) == len({r["test_index"] for r in records}) == 5
    for record in records:
        assert targets[record["test_index"]] == record["label"]
        probabilities = [top["probability"] for top in record["top3"]]
        assert record["prediction"] == record["top3"][0]["digit"] and record["confidence"] == probabilities[0]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    right = sum(r["label"] == r["prediction"] for r in records)
    assert f"5 test digits, {right} predicted correctly" in result.stderr


def test_predict_py_draws_at_most_256_digits_and_lists_them_all(trained, mnist_dir, tmp_path, monkeypatch, capsys):
    # --num goes up to the whole test set, which in one figure was minutes of matplotlib and gigabytes of memory.
    import matplotlib.pyplot as plt

    import predict

    figures = []

    def keep(fig, path, close=True):
        figures.append((sum(bool(ax.images) for ax in fig.axes), fig._suptitle.get_text()))
        plt.close(fig)

    monkeypatch.setattr(predict, "save_figure", keep)
    out = tmp_path / "p.png"
    predict.main(
        [
            "--weights",
            str(trained / "best.pt"),
            "--num",
            "300",
            "--json",
            "--out",
            str(out),
            "--data-dir",
            str(mnist_dir),
            "--device",
            "cpu",
        ]
    )
    printed = capsys.readouterr()
    assert len(json.loads(printed.out)) == 300
    assert figures == [(256, "predicted (confidence); the first 256 of 300")]
    assert re.search(
        rf"^300 test digits, \d+ predicted correctly; figure saved to {re.escape(str(out))} \(the first 256 drawn\)$",
        printed.err,
        re.M,
    ), printed.err
