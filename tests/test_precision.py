"""One choice of precision per device (lib.device.choose_precision), fp16's loss scaling, and short runs that learn."""

from __future__ import annotations

import math
import shlex
import signal
import time

import pytest
import torch
import torch.nn as nn
from helpers import assert_same_weights, metric_rows, run_script, start_script, tiny_recipe, wait_for_line

import lib.device
from lib.checkpoints import load_checkpoint
from lib.common import UserError
from lib.device import choose_precision, loss_scaler
from lib.training import LR, MIN_WARMUP_STEPS, WARMUP, short_run_warmup, training_step

# (compute capability, name) -> what auto picks, and words its reason must hold.
CUDA_ROWS = [
    ((9, 0), "NVIDIA H100 80GB HBM3", "bf16", "bf16 tensor cores"),
    ((8, 0), "NVIDIA A100-SXM4-40GB", "bf16", "bf16 tensor cores"),
    ((8, 6), "NVIDIA GeForce RTX 3090", "bf16", "bf16 tensor cores"),
    ((7, 5), "Tesla T4", "fp16", "fp16 + loss scaling: Tesla T4, compute capability 7.5, no bf16 convolutions"),
    ((7, 0), "Tesla V100-SXM2-16GB", "fp16", "no bf16 convolutions"),
    ((6, 0), "Tesla P100-PCIE-16GB", "fp16", "fast fp16, no bf16"),
    ((6, 1), "NVIDIA GeForce GTX 1080", "fp32", "no fast fp16 or bf16"),
    ((5, 2), "NVIDIA GeForce GTX 980", "fp32", "no fast fp16 or bf16"),
]


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of the given capability, as far as choose_precision can tell."""

    def install(capability, name):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(lib.device, "autocast_available", lambda device, precision: True)
        return torch.device("cuda")

    return install


@pytest.mark.parametrize("capability, name, expected, reason", CUDA_ROWS)
def test_auto_on_each_class_of_gpu(fake_gpu, capability, name, expected, reason):
    precision = choose_precision(fake_gpu(capability, name))
    assert precision.name == expected and reason in precision.reason and not precision.emulated, precision


def test_bf16_asked_for_on_a_t4_is_honoured_and_called_emulated(fake_gpu):
    # torch.cuda.is_bf16_supported() says True on a T4 (emulation counts); the capability must decide.
    precision = choose_precision(fake_gpu((7, 5), "Tesla T4"), "bf16")
    assert precision.name == "bf16" and precision.emulated and "emulated" in precision.reason


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_cpu_is_bf16_only_with_bf16_instructions(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(lib.device, "cpu_has_bf16", lambda: has_bf16)
    precision = choose_precision(torch.device("cpu"))
    assert precision.name == expected and not precision.emulated
    assert ("bf16 instructions" in precision.reason) and (("no bf16" in precision.reason) is not has_bf16)


def test_on_a_cpu_without_them_bf16_and_fp16_are_allowed_but_called_slow(monkeypatch):
    monkeypatch.setattr(lib.device, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(lib.device, "_cpu_has_fp16", lambda: False)
    for asked in ("bf16", "fp16"):
        precision = choose_precision(torch.device("cpu"), asked)
        assert precision.name == asked and precision.emulated and "much slower than fp32" in precision.reason
    precision = choose_precision(torch.device("cpu"), "fp32")
    assert precision.name == "fp32" and not precision.emulated and precision.reason.endswith("as asked")


def test_auto_on_apple_mps_is_fp32():
    assert choose_precision(torch.device("mps")).name == "fp32"


def test_a_precision_the_device_cannot_autocast_to_is_one_line(monkeypatch):
    # On a machine without CUDA, torch turns CUDA autocast off with a warning: that is what the check catches.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    if torch.cuda.is_available():
        pytest.skip("CUDA is here, so CUDA autocast is available")
    with pytest.raises(UserError, match=r"--precision fp16 is not available on cuda .*use --precision auto or fp32"):
        choose_precision(torch.device("cuda"), "fp16")
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        choose_precision(torch.device("cpu"), "fp8")


def test_bad_precision_flag_is_one_line_and_no_amp_means_fp32(slow):
    result = run_script("train.py", "--precision", "fp8")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "invalid choice: 'fp8'" in result.stderr and "Traceback" not in result.stderr
    from lib.cli import ArgumentParser, add_shared_flags

    parser = ArgumentParser()
    add_shared_flags(parser, "--precision", "--no-amp")
    assert parser.parse_args([]).precision == "auto" and parser.parse_args(["--no-amp"]).precision == "fp32"


def test_only_fp16_scales_the_loss():
    cpu = torch.device("cpu")
    assert loss_scaler(cpu, "fp16").is_enabled()
    assert not loss_scaler(cpu, "bf16").is_enabled() and not loss_scaler(cpu, "fp32").is_enabled()


def test_an_fp16_step_whose_gradients_overflow_is_skipped_and_the_scale_halved():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # any fp16 gradient times this overflows
    loss, _ = training_step(model, optimizer, scaler, x, y, "fp16")
    assert torch.isfinite(loss) and scaler.get_scale() == 2.0**119
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "a skipped step changed the weights"
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    training_step(model, optimizer, scaler, x, y, "fp16")
    assert scaler.get_scale() == 2.0**8 and not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_step_the_scaler_skipped_is_left_out_of_the_epochs_figures_and_any_other_non_finite_loss_is_kept():
    from train import EpochSums

    logits, labels = torch.eye(10)[:4] * 5, torch.tensor([0, 1, 2, 9])  # 3 of 4 right
    sums = EpochSums(3, torch.device("cpu"))
    sums.record(0, torch.tensor(2.0), logits, labels, skipped_if_nonfinite=True)
    sums.record(1, torch.tensor(float("inf")), logits, labels, skipped_if_nonfinite=True)  # fp16: skipped
    assert sums.mean_loss(2) == 2.0 and sums.totals() == (2.0, 0.75)
    sums.record(2, torch.tensor(float("nan")), logits, labels)  # bf16 or fp32: check_steps must see it
    assert torch.isnan(sums.loss[2])


def test_short_runs_warm_up_no_faster_than_a_fresh_network_takes_it():
    # Every full-data recipe keeps its own schedule: 10 and 3 epochs of 430 steps (CPU), 10 of 108 (GPU).
    for steps in (4300, 1290, 1080, 500):
        assert short_run_warmup(LR, WARMUP, steps) == (LR, WARMUP)
    # train.py's quick run, 2 epochs of 4,000 images at batch 128: 64 steps, which diverged in fp32 at lr 0.1.
    peak, warmup = short_run_warmup(LR, WARMUP, 64)
    assert warmup == 0.5 and peak == pytest.approx(LR * 32 / MIN_WARMUP_STEPS)
    assert short_run_warmup(0.5, WARMUP, 64)[0] == pytest.approx(0.5 * 32 / MIN_WARMUP_STEPS)  # a share of any --lr
    for steps in range(1, 600):  # never faster than LR over MIN_WARMUP_STEPS, never past the asked-for peak
        peak, warmup = short_run_warmup(LR, WARMUP, steps)
        assert peak <= LR and peak / (warmup * steps) <= LR / MIN_WARMUP_STEPS * (1 + 1e-9) and 0 < warmup < 1


# fp16 on a CPU without fp16 hardware is emulated and slow: a handful of small steps.
FP16_TINY = ["--precision", "fp16", "--device", "cpu", *tiny_recipe(subset=32, batch_size=16, val_size=16),
             "--deterministic"]


def steps_seen(scaler: dict) -> int:
    """The steps a GradScaler has taken, from its state: each skipped one halved the scale from 2**16 and restarted
    the count of good ones (the scale grows only after 2,000 of those)."""
    return scaler["_growth_tracker"] + round(math.log2(2.0**16 / scaler["scale"]))


def test_fp16_trains_end_to_end_and_resumes_bitwise_with_the_scalers_state(slow, mnist_dir, tmp_path):
    straight = run_script("train.py", *FP16_TINY, "--out-dir", str(tmp_path / "straight"), "--data-dir", str(mnist_dir))
    assert straight.returncode == 0, straight.stderr
    assert "fp16 + loss scaling: " in straight.stdout.splitlines()[0] and "emulated" in straight.stdout
    assert straight.stderr == "", straight.stderr  # nor torch's warning about the step the scaler skipped
    whole = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert steps_seen(whole["scaler"]) == 2, whole["scaler"]

    process = start_script("train.py", *FP16_TINY, "--out-dir", str(tmp_path / "cut"), "--data-dir", str(mnist_dir))
    wait_for_line(process, "ResNet-18")
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["step"] == 1 and steps_seen(cut["scaler"]) == cut["step"], (cut["step"], cut["scaler"])
    # The command the message gives goes on in fp16: --precision is taken from the command line, as --device is.
    command = shlex.split(stderr.split("continue with: ")[1].splitlines()[0])
    assert command[:3] == ["python", "train.py", "--resume"] and "--precision" in command, stderr
    resumed = run_script("train.py", *command[2:])
    assert resumed.returncode == 0 and "fp16 + loss scaling" in resumed.stdout, resumed.stderr
    # A scaler started afresh would count only the resumed steps.
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["scaler"] == whole["scaler"]
    assert_same_weights(tmp_path / "straight" / "last.pt", tmp_path / "cut" / "last.pt")
    assert metric_rows(tmp_path / "straight") == metric_rows(tmp_path / "cut")
