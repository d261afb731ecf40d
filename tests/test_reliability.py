"""Nothing lost, nothing unsafe: interruption, exact resume, atomic writes, safe loading, non-finite loss."""

from __future__ import annotations

import csv
import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import (
    ROOT,
    assert_same_weights,
    first_epoch_seconds,
    metric_rows,
    run_script,
    start_script,
    tiny_recipe,
    wait_for_line,
)

import lib.checkpoints as checkpoints_module
from lib.checkpoints import load_checkpoint, save_checkpoint
from lib.common import UserError
from lib.files import all_or_none, claim_folder, write_json
from lib.reports import REPORTS
from model import ResNet18

# Tiny and deterministic: 8 steps per epoch, a second or two each on 2 CPU cores. Every random part is on (shuffle,
# geometric and photometric augmentation), so the exact-resume tests cover each one's random numbers.
TINY = [
    *tiny_recipe(subset=256, batch_size=32, epochs=2, val_size=128),
    "--lr",
    "0.05",
    "--deterministic",
    "--photometric",
]


def start_training(out_dir, mnist_dir, *extra) -> subprocess.Popen:
    return start_script("train.py", *TINY, "--out-dir", str(out_dir), "--data-dir", str(mnist_dir), *extra)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("straight")
    result = run_script("train.py", *TINY, "--out-dir", str(out), "--data-dir", str(mnist_dir))
    assert result.returncode == 0, result.stderr
    return out


def test_deterministic_runs_are_bitwise_identical(straight_run, mnist_dir, tmp_path):
    result = run_script("train.py", *TINY, "--out-dir", str(tmp_path), "--data-dir", str(mnist_dir))
    assert result.returncode == 0, result.stderr
    assert_same_weights(straight_run / "last.pt", tmp_path / "last.pt")
    assert metric_rows(straight_run) == metric_rows(tmp_path)


def test_sigkill_after_an_epoch_then_resume_equals_an_uninterrupted_run(straight_run, mnist_dir, tmp_path):
    process = start_training(tmp_path, mnist_dir)
    wait_for_line(process, "epoch   1/2")  # printed after last.pt of epoch 1 is on disk
    process.kill()
    process.wait()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    result = run_script("train.py", "--resume", "--out-dir", str(tmp_path), "--data-dir", str(mnist_dir))
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert_same_weights(straight_run / "last.pt", tmp_path / "last.pt")
    assert_same_weights(straight_run / "best.pt", tmp_path / "best.pt")
    assert metric_rows(straight_run) == metric_rows(tmp_path)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_epoch_saves_and_resume_equals_an_uninterrupted_run(straight_run, mnist_dir, tmp_path, signum):
    process = start_training(tmp_path, mnist_dir, "--device", "cpu")
    wait_for_line(process, "ResNet-18")  # data loaded, training starts now
    time.sleep(first_epoch_seconds(straight_run) / 2)  # mid-way through the first epoch
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    saved = load_checkpoint(tmp_path / "last.pt")
    assert (saved["epoch"], saved["step"]) != (2, 0), "the run finished before the signal arrived"
    if saved["partial"] is not None:  # stopped mid-epoch: that epoch's time in metrics.csv must include the part before
        saved["partial"]["seconds"] = 1000.0  # a mark no tiny run reaches by itself
        torch.save(saved, tmp_path / "last.pt")
    # The command the message suggests must be the one that resumes this run (its --out-dir, --data-dir and --device
    # included).
    command = shlex.split(stderr.split("continue with: ")[1].splitlines()[0])
    assert command[:3] == ["python", "train.py", "--resume"] and "--device" in command, stderr
    result = run_script("train.py", *command[2:])
    assert result.returncode == 0, result.stderr
    assert_same_weights(straight_run / "last.pt", tmp_path / "last.pt")
    assert metric_rows(straight_run) == metric_rows(tmp_path)
    if saved["partial"] is not None:
        resumed_epoch = list(csv.DictReader(open(tmp_path / "metrics.csv")))[saved["epoch"]]
        assert float(resumed_epoch["seconds"]) > 1000.0, resumed_epoch


def copy_an_earlier_run_with_its_reports(run_dir, out_dir):
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png"):
        (out_dir / name).write_bytes((run_dir / name).read_bytes())
    # What test.py, test.py --robustness, predict.py and predict.py --errors wrote of its weights:
    for name in REPORTS:
        (out_dir / name).write_text("of the earlier weights")


def test_an_overwrite_stopped_in_its_first_epoch_leaves_no_earlier_best_pt(straight_run, mnist_dir, tmp_path):
    copy_an_earlier_run_with_its_reports(straight_run, tmp_path)
    process = start_training(tmp_path, mnist_dir, "--device", "cpu", "--overwrite")
    wait_for_line(process, "ResNet-18")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0  # this run's, mid-epoch 1
    # Nothing of the earlier run is left for test.py to pick up as if this run had written it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_an_overwrite_run_leaves_no_report_of_the_earlier_weights(straight_run, mnist_dir, tmp_path):
    copy_an_earlier_run_with_its_reports(straight_run, tmp_path)
    result = run_script(
        "train.py", *TINY, "--epochs", "1", "--overwrite", "--out-dir", str(tmp_path), "--data-dir", str(mnist_dir)
    )
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1  # this run's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "curves.png", "last.pt", "metrics.csv"]


def test_a_write_that_fails_half_way_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    good = ResNet18()
    save_checkpoint(tmp_path / "best.pt", good, epoch=1)
    before = (tmp_path / "best.pt").read_bytes()

    def save_half_then_fail(obj, file, *args, **kwargs):
        file.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoints_module.torch, "save", save_half_then_fail)
    with pytest.raises(UserError) as failed:
        save_checkpoint(tmp_path / "best.pt", ResNet18(), epoch=2)
    assert (
        str(failed.value)
        == f"could not write {tmp_path / 'best.pt'}: No space left on device (the earlier best.pt is kept whole)"
    )
    assert failed.value.exit_code == 1
    assert (tmp_path / "best.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no temporary file left behind


def test_files_written_all_or_none_land_together_or_not_at_all(tmp_path):
    (tmp_path / "report.json").write_text("of the earlier weights")
    with pytest.raises(UserError) as failed, all_or_none() as stage:
        write_json(stage(tmp_path / "report.json"), {"accuracy": 0.99})
        with open(stage(tmp_path / "figure.png"), "wb"):  # the disk fills up as the second file is written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert (
        str(failed.value) == f"could not write {tmp_path / 'figure.png'}: No space left on device"
    )  # the file that failed
    assert (tmp_path / "report.json").read_text() == "of the earlier weights"  # not a new report beside no figure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left behind

    with all_or_none() as stage:
        write_json(stage(tmp_path / "report.json"), {"accuracy": 0.99})
        stage(tmp_path / "figure.png").write_bytes(b"figure")
    assert json.loads((tmp_path / "report.json").read_text()) == {"accuracy": 0.99}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png", "report.json"]


def test_written_files_get_the_permissions_of_any_file_the_user_creates(tmp_path):
    # tempfile.mkstemp, where atomic writes start, makes files only their owner may read (0600) whatever the umask.
    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
        previous = os.umask(umask)
        try:
            save_checkpoint(tmp_path / "best.pt", ResNet18())
        finally:
            os.umask(previous)
        assert (tmp_path / "best.pt").stat().st_mode & 0o777 == mode


def train_where_files_stop_at(megabytes: int, *arguments: str) -> subprocess.CompletedProcess:
    """train.py with these arguments, where the system refuses to grow any file past the size (EFBIG; CPython ignores
    the SIGXFSZ that comes with it), as a full disk would refuse, for checkpoints larger than that and not smaller."""
    import resource  # Unix only

    limit = megabytes * 2**20
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )


def test_a_save_the_system_refuses_is_one_line_and_the_run_goes_on_from_its_last_good_checkpoint(
    straight_run, mnist_dir, tmp_path
):
    # best.pt (45 MB, the weights) fits under the limit, last.pt (89 MB, with the optimizer's momentum) does not.
    fresh = train_where_files_stop_at(60, *TINY, "--out-dir", str(tmp_path), "--data-dir", str(mnist_dir))
    assert fresh.returncode == 1, fresh.stderr
    # No last.pt of this run to go on from, so no command to do it.
    assert fresh.stderr == f"error: could not write {tmp_path / 'last.pt'}: File too large\n"
    # An epoch's files land together or not at all (best.pt had been written), and no temporary file is left behind.
    assert list(tmp_path.iterdir()) == []

    process = start_training(tmp_path, mnist_dir, "--overwrite")
    wait_for_line(process, "epoch   1/2")  # printed after last.pt of epoch 1 is on disk
    process.kill()
    process.wait()
    epoch_1 = (tmp_path / "last.pt").read_bytes()
    resumed = train_where_files_stop_at(60, "--resume", "--out-dir", str(tmp_path), "--data-dir", str(mnist_dir))
    assert resumed.returncode == 1, resumed.stderr
    assert resumed.stderr == (
        f"error: could not write {tmp_path / 'last.pt'}: File too large (the earlier last.pt is kept whole); "
        f"the run can go on from {tmp_path / 'last.pt'} with: "
        f"{shlex.join(['python', 'train.py', '--resume', '--data-dir', str(mnist_dir), '--out-dir', str(tmp_path)])}\n"
    )
    assert (tmp_path / "last.pt").read_bytes() == epoch_1

    # The command it gives, once the file can be written, ends the run as if nothing had happened.
    result = run_script("train.py", *shlex.split(resumed.stderr.split("with: ")[1])[2:])
    assert result.returncode == 0, result.stderr
    assert_same_weights(straight_run / "last.pt", tmp_path / "last.pt")
    assert_same_weights(straight_run / "best.pt", tmp_path / "best.pt")
    assert metric_rows(straight_run) == metric_rows(tmp_path)


def test_an_overwrite_whose_first_save_is_refused_leaves_the_earlier_run_whole(straight_run, mnist_dir, tmp_path):
    copy_an_earlier_run_with_its_reports(straight_run, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # best.pt fits under the limit, last.pt does not.
    result = train_where_files_stop_at(
        60, *TINY, "--overwrite", "--out-dir", str(tmp_path), "--data-dir", str(mnist_dir)
    )
    assert result.returncode == 1, result.stderr
    assert (
        result.stderr
        == f"error: could not write {tmp_path / 'last.pt'}: File too large (the earlier last.pt is kept whole)\n"
    )
    # Not this run's best.pt beside the earlier run's last.pt, metrics.csv and reports: the earlier run, all of it.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    assert [name for name, content in before.items() if (tmp_path / name).read_bytes() != content] == []


class WritesMarker:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format_version": 1, "model": {}, "payload": WritesMarker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refusing to load .*evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("arch", "resnet34-mnist", "arch 'resnet34-mnist', expected 'resnet18-mnist'"),
        ("num_classes", 100, "num_classes 100, expected 10"),
        ("input_size", 28, "input_size 28, expected 32"),
        ("format_version", 99, "format_version 99, expected 1"),
        ("normalization", {"mean": 0.5, "std": 0.5}, r"normalised with \{'mean': 0.5, 'std': 0.5\}, and this code "
                                                      r"normalises with mean 0.1307 and std 0.3081"),
    ],
)
def test_an_incompatible_checkpoint_says_what_it_is_and_what_was_expected(tmp_path, field, value, expected):
    checkpoint = {
        "format_version": 1,
        "arch": "resnet18-mnist",
        "num_classes": 10,
        "input_size": 32,
        "model": ResNet18().state_dict(),
    }
    checkpoint[field] = value
    torch.save(checkpoint, tmp_path / "other.pt")
    with pytest.raises(UserError, match=expected):
        load_checkpoint(tmp_path / "other.pt")


def test_weights_of_another_shape_are_refused_with_one_line(tmp_path):
    save_checkpoint(tmp_path / "w.pt", ResNet18(num_classes=100))
    with pytest.raises(UserError, match="does not hold ResNet-18 weights of this shape"):
        checkpoints_module.load_model(tmp_path / "w.pt", torch.device("cpu"))


def test_a_second_run_into_the_folder_a_run_is_training_into_is_refused(slow, mnist_dir, tmp_path):
    first = start_training(tmp_path, mnist_dir, "--epochs", "50")  # still training when the second starts
    try:
        wait_for_line(first, "ResNet-18")
        second = run_script("train.py", *TINY, "--out-dir", str(tmp_path), "--data-dir", str(mnist_dir))
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr
    assert second.stderr == (
        f"error: another train.py is writing into {tmp_path} right now: let it finish (or stop it), "
        "or train into another --out-dir\n"
    )
    claim_folder(tmp_path, "still claimed")  # the claim went with the killed process: nothing stale is left to clear


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(straight_run, mnist_dir, tmp_path):
    good = (straight_run / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(good)
    result = run_script(
        "train.py", *TINY, "--lr", "1e9", "--overwrite", "--out-dir", str(tmp_path), "--data-dir", str(mnist_dir)
    )
    assert result.returncode == 1
    assert "non-finite at epoch 1, step" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "last.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_the_schedule_rises_then_falls_for_any_number_of_steps():
    from lib.training import one_cycle_schedule

    # torch's OneCycleLR alone divides by zero where the warm-up is exactly one step: (5, 0.2), (4, 0.25), (2, 0.5).
    for total_steps in range(1, 21):
        for warmup in (0.0, 0.1, 0.2, 0.25, 0.5, 0.9):
            optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
            scheduler = one_cycle_schedule(optimizer, 0.1, total_steps, warmup)
            lrs = []
            for _ in range(total_steps):
                lrs.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
            top = lrs.index(max(lrs))
            assert 0 < min(lrs) and max(lrs) <= 0.1 * (1 + 1e-9), (total_steps, warmup, lrs)
            assert lrs[: top + 1] == sorted(lrs[: top + 1]) and lrs[top:] == sorted(lrs[top:], reverse=True), (
                total_steps,
                warmup,
                lrs,
            )
            if warmup * total_steps >= 2:  # a warm-up of two steps or more starts at OneCycleLR's peak / 25
                assert lrs[0] == pytest.approx(0.1 / 25)
            if warmup * total_steps == 1:  # one step: the limit of a shorter warm-up, the peak at once
                assert lrs[0] == pytest.approx(0.1)
