"""benchmarks/seeds.py: the spread over seeds and the time to a target accuracy are computed right, end to end too."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, TEST_IMAGES, run_script, tiny_recipe

from benchmarks import seeds
from benchmarks.seeds import summarise


def fake_run(folder, test_accs, seconds, val_accs, chosen_epoch, test_acc_of_chosen):
    """A run folder as train.py --test-each-epoch and test.py leave it (only the fields the summary reads)."""
    folder.mkdir()
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "val_acc", "test_acc", "seconds"])
        writer.writeheader()
        for epoch, (test, secs, val) in enumerate(zip(test_accs, seconds, val_accs), start=1):
            writer.writerow({"epoch": epoch, "val_acc": val, "test_acc": test, "seconds": secs})
    (folder / "test_report.json").write_text(json.dumps({"epoch": chosen_epoch, "accuracy": test_acc_of_chosen}))
    return folder


def test_summary_of_two_seeds(tmp_path):
    runs = {
        0: fake_run(tmp_path / "a", [0.990, 0.9956, 0.9970], [2.0, 2.5, 3.0], [0.98, 0.99, 0.995], 3, 0.9970),
        7: fake_run(tmp_path / "b", [0.985, 0.9940, 0.9930], [4.0, 4.0, 4.0], [0.97, 0.992, 0.991], 2, 0.9940),
    }
    text = summarise(runs, {0: 30.3, 7: 41.0}, target=99.5)
    assert "| 0 | 30.3 | 7.5 | 3 | 99.50% | 99.70% | 4.5 (epoch 2) |" in text
    assert "| 7 | 41.0 | 12.0 | 2 | 99.20% | 99.40% | not reached |" in text
    assert "min 99.40%, mean 99.55%, max 99.70%" in text
    assert "| 2 | 99.48% | 99.40% | 99.56% | 6.2 |" in text  # epoch 2: accs 99.56/99.40, cumulative seconds 4.5/8.0


def test_the_figure_draws_each_seeds_test_error_and_stars_its_chosen_epoch(tmp_path, monkeypatch):
    runs = {
        0: fake_run(tmp_path / "a", [0.990, 0.9956, 0.9970], [2.0, 2.5, 3.0], [0.98, 0.99, 0.995], 3, 0.9970),
        7: fake_run(tmp_path / "b", [0.985, 0.9940, 0.9930], [4.0, 4.0, 4.0], [0.97, 0.992, 0.991], 2, 0.9940),
    }
    drawn = {}
    monkeypatch.setattr(seeds, "save_figure", lambda fig, path: drawn.update(fig=fig, path=path))
    seeds.plot_seeds(tmp_path / "seeds.png", runs, target=99.5, ensemble=[0.9970, 0.9975])
    by_epoch, by_seconds, by_size = drawn["fig"].axes
    assert drawn["path"] == tmp_path / "seeds.png"
    for ax, x_of_seed in (
        (by_epoch, {0: [1, 2, 3], 7: [1, 2, 3]}),
        (by_seconds, {0: [2.0, 4.5, 7.5], 7: [4.0, 8.0, 12.0]}),
    ):
        curve_0, star_0, curve_7, star_7, target = ax.get_lines()
        assert list(curve_0.get_xdata()) == x_of_seed[0] and list(curve_7.get_xdata()) == x_of_seed[7]
        assert list(curve_0.get_ydata()) == pytest.approx([1.0, 0.44, 0.30]) and list(
            curve_7.get_ydata()
        ) == pytest.approx([1.5, 0.6, 0.7])
        assert (list(star_0.get_xdata()), list(star_0.get_ydata())) == (
            [x_of_seed[0][2]],
            pytest.approx([0.30]),
        )  # epoch 3
        assert (list(star_7.get_xdata()), list(star_7.get_ydata())) == (
            [x_of_seed[7][1]],
            pytest.approx([0.6]),
        )  # epoch 2
        assert list(target.get_ydata()) == pytest.approx([0.5, 0.5])
    assert [t.get_text() for t in by_epoch.get_legend().get_texts()] == [
        "seed 0: 99.70%",
        "seed 7: 99.40%",
        "99.5% accuracy",
    ]
    ensemble, target = by_size.get_lines()  # test error against the number of seeds in the ensemble
    assert list(ensemble.get_xdata()) == [1, 2] and list(ensemble.get_ydata()) == pytest.approx([0.30, 0.25])
    assert list(target.get_ydata()) == pytest.approx([0.5, 0.5])


def test_flags_it_sets_itself_are_refused_after_the_separator(slow):
    result = run_script("benchmarks/seeds.py", "--", "--epochs", "1", "--seed=3")
    assert result.returncode == 2 and result.stderr.startswith("error: --seed=3 after -- is set by this script"), (
        result.stderr
    )
    assert "Traceback" not in result.stderr


# One seed of a tiny recipe; --no-cuda-graphs is a flag of how to run, which a resumed train.py takes again.
SUBSET, BATCH = 512, 32
STEPS = SUBSET // BATCH
TINY_RECIPE = [*tiny_recipe(subset=SUBSET, batch_size=BATCH), "--no-cuda-graphs"]


@pytest.fixture(scope="module")
def interrupted_seed(tmp_path_factory, mnist_dir) -> dict:
    """seeds.py stopped by Ctrl-C as train.py starts, then the same command run to the end: what each left.

    Ctrl-C in a terminal signals the whole foreground process group: seeds.py must wait while train.py saves.
    """
    out = tmp_path_factory.mktemp("seeds")
    command = ["--seeds", "5", "--device", "cpu", "--data-dir", str(mnist_dir), "--out-dir", str(out), "--",
               *TINY_RECIPE]
    process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks/seeds.py"), *command], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if line.startswith("ResNet-18 ("):  # train.py is about to take its first step
            break
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    stopped = {"returncode": process.returncode, "stderr": stderr,
               "last": torch.load(out / "seed5" / "last.pt", weights_only=True),
               "left": sorted(p.name for p in out.rglob("*"))}
    return {"out": out, "command": command, "stopped": stopped, "finished": run_script("benchmarks/seeds.py", *command)}


def test_ctrl_c_reaches_train_py_which_saves_before_both_stop_and_the_same_command_goes_on(interrupted_seed):
    stopped, out = interrupted_seed["stopped"], interrupted_seed["out"]
    assert stopped["returncode"] == 130, stopped["stderr"]
    assert stopped["stderr"].rstrip().endswith(
        "error: train.py for seed 5 was interrupted; run the same command again to go on from there"
    ), stopped["stderr"]
    assert stopped["last"]["epoch"] == 0 and 1 <= stopped["last"]["step"] < STEPS, stopped["last"]["step"]  # mid-epoch
    assert "test_report.json" not in stopped["left"] and "summary.md" not in stopped["left"]

    result = interrupted_seed["finished"]
    assert result.returncode == 0, result.stderr
    assert f"resuming {out / 'seed5' / 'last.pt'} at epoch 1, step {stopped['last']['step']}/{STEPS}" in result.stdout
    # A flag of how to run (not part of the recipe in last.pt) is passed again: --resume takes those from the command
    # line.
    assert re.search(r"^=== seed 5: .* --resume .*--no-cuda-graphs$", result.stdout, re.M), result.stdout
    assert re.search(r"^\| 5 \| resumed \| [\d.]+ \| 1 \|", (out / "summary.md").read_text(), re.M), result.stdout


def test_one_seed_end_to_end(interrupted_seed):
    out, command, result = interrupted_seed["out"], interrupted_seed["command"], interrupted_seed["finished"]
    assert result.returncode == 0, result.stderr
    run = out / "seed5"
    report = json.loads((run / "test_report.json").read_text())
    assert report["count"] == TEST_IMAGES and report["epoch"] == 1
    test_acc = report["accuracy"]
    summary = (out / "summary.md").read_text()
    assert summary.startswith(f"train.py flags: {' '.join(TINY_RECIPE)}")
    row = re.search(r"^\| 5 \| resumed \| ([\d.]+) \| 1 \| [\d.]+% \| ([\d.]+)% \|", summary, re.M)
    assert row and float(row.group(1)) > 0, summary
    assert float(row.group(2)) == round(100 * test_acc, 2)
    # An ensemble of this one seed, computed in seeds.py, is the model test.py tested: the same accuracy.
    assert f"| 1 | 5 | {100 * test_acc:.2f}% |" in summary
    assert (out / "seeds.png").read_bytes().startswith(b"\x89PNG") and f"and {out / 'seeds.png'}" in result.stdout

    # The same command again finds the seed done: nothing is trained or tested again, the summary is the same.
    trained_at, evaluated_at = (run / "best.pt").stat().st_mtime, (out / "ensembles.json").stat().st_mtime_ns
    again = run_script("benchmarks/seeds.py", *command)
    assert again.returncode == 0, again.stderr
    assert f"=== seed 5: trained and tested earlier, in {run}" in again.stdout
    assert (run / "best.pt").stat().st_mtime == trained_at and (out / "summary.md").read_text() == summary
    assert (out / "ensembles.json").stat().st_mtime_ns == evaluated_at  # the ensembles' accuracies were kept

    # Other train.py flags into the same folder would mix two recipes: refused, and nothing is touched.
    other = [flag if flag != str(SUBSET) else str(2 * SUBSET) for flag in command]
    refused = run_script("benchmarks/seeds.py", *other)
    assert refused.returncode == 2 and refused.stderr == (
        f"error: {run} holds a run of train.py flags {' '.join(TINY_RECIPE)}; choose another --out-dir or remove "
        f"{run}\n"
    ), refused.stderr
    assert (run / "best.pt").stat().st_mtime == trained_at
