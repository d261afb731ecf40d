"""The architecture is ResNet-18 with a CIFAR-style stem, its checkpoints round-trip, bf16 only where it is native."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
import torchvision

from lib.checkpoints import load_checkpoint, load_model, save_checkpoint
from lib.device import autocast, choose_precision, cpu_has_bf16
from lib.inference import fold_batchnorm
from lib.training import graph_training_step
from model import ResNet18, to_device


def test_output_shape_and_parameter_count():
    model = ResNet18().eval()
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)
    # torchvision's resnet18 with 10 classes has 11,181,642; our stem is 64x1x3x3 (576) instead of 64x3x7x7 (9,408).
    assert sum(p.numel() for p in model.parameters()) == 11_181_642 - 9_408 + 576


def test_stem_is_3x3_stride_1_on_one_channel_without_max_pool():
    model = ResNet18()
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    # Without down-sampling in the stem the first block sees the full 32x32 image.
    features = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
    assert features(torch.randn(1, 1, 32, 32)).shape == (1, 64, 32, 32)


def test_structure_matches_torchvision_resnet18_apart_from_the_stem():
    ours = {name: p.shape for name, p in ResNet18().state_dict().items()}
    reference = {name: p.shape for name, p in torchvision.models.resnet18(num_classes=10).state_dict().items()}
    assert ours.keys() == reference.keys()
    differing = {name for name in ours if ours[name] != reference[name]}
    assert differing == {"conv1.weight"}


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU (CI has none; run this where there is one)"
)
def test_a_graphed_training_step_computes_the_gradients_of_the_plain_model():
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = ResNet18().to(device, memory_format=torch.channels_last)
    x, y = torch.randn(64, 1, 32, 32, device=device), torch.randint(0, 10, (64,), device=device)
    statistics = {name: buffer.clone() for name, buffer in model.named_buffers()}
    graphed = graph_training_step(model, x.clone(), precision="fp32")
    assert all(
        torch.equal(buffer, statistics[name]) for name, buffer in model.named_buffers()
    )  # capture left them as they were
    gradients = []
    for forward in (model, graphed):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (gradients[0] - gradients[1]).norm() / gradients[0].norm() < 1e-3


def test_folding_batch_norm_keeps_the_outputs_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = ResNet18()
    with torch.no_grad():  # running statistics and affine parameters far from their initial 0/1, as after training
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            for tensor, low, high in (
                (bn.running_mean, -0.5, 0.5),
                (bn.running_var, 0.5, 2.0),
                (bn.weight, 0.5, 1.5),
                (bn.bias, -0.2, 0.2),
            ):
                tensor.uniform_(low, high)
    images = torch.randn(8, 1, 32, 32)
    folded = fold_batchnorm(model)
    assert model.training, "folding must not switch the training model to eval mode"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        expected = model.eval()(images)
        torch.testing.assert_close(folded(images), expected, rtol=1e-4, atol=1e-4)
        assert expected.std() > 0.1  # the comparison is not between two near-zero outputs


def test_the_cpu_layout_keeps_the_last_stage_nchw_and_computes_what_channels_last_does():
    torch.manual_seed(0)
    plain = ResNet18().to(memory_format=torch.channels_last)
    laid_out = to_device(ResNet18(), torch.device("cpu"))
    laid_out.load_state_dict(plain.state_dict())
    assert laid_out.layer4[0].conv1.weight.is_contiguous() and not plain.layer4[0].conv1.weight.is_contiguous()
    assert laid_out.layer3[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    seen = {}
    laid_out.layer4[0].conv1.register_forward_hook(
        lambda module, inputs, output: seen.update(nchw=inputs[0].is_contiguous())
    )
    images, labels = torch.randn(8, 1, 32, 32).to(memory_format=torch.channels_last), torch.randint(0, 10, (8,))
    gradients = []
    for model in (plain, laid_out):
        model.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert seen["nchw"], "layer4's convolutions must receive NCHW input, or oneDNN runs them channels_last after all"
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the inference copy keeps the layout: the conversion is traced into its graph
        torch.testing.assert_close(fold_batchnorm(laid_out)(images), plain.eval()(images), rtol=1e-4, atol=1e-4)


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path):
    model = ResNet18()
    save_checkpoint(tmp_path / "w.pt", model, epoch=3, metrics={"val_acc": 0.5}, args={"lr": 0.1})
    checkpoint = load_checkpoint(tmp_path / "w.pt")
    assert checkpoint["epoch"] == 3 and checkpoint["args"] == {"lr": 0.1}
    assert checkpoint["normalization"] == {"mean": 0.1307, "std": 0.3081} and checkpoint["input_size"] == 32
    loaded, _ = load_model(tmp_path / "w.pt", torch.device("cpu"))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert not loaded.training


def test_checkpoint_of_a_ddp_or_compiled_model_has_plain_keys(tmp_path):
    wrapped = torch.nn.Module()
    wrapped.module = ResNet18()  # what DistributedDataParallel looks like from outside
    save_checkpoint(tmp_path / "w.pt", wrapped)
    assert all(not key.startswith("module.") for key in load_checkpoint(tmp_path / "w.pt")["model"])


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)]
)
def test_cpu_bf16_only_where_the_cpu_has_it_in_hardware(monkeypatch, avx512_bf16, amx, expected):
    # Plain AVX512 makes oneDNN report bf16 "supported" (emulated, no faster than fp32): that must not count.
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)  # torch < 2.5: none
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cpu = torch.device("cpu")
    assert cpu_has_bf16() is expected
    with autocast(cpu, choose_precision(cpu).name):
        assert torch.is_autocast_enabled("cpu") is expected
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
