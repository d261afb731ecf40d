"""The architecture is ResNet-18 with a CIFAR-style stem, and its checkpoints round-trip."""
from __future__ import annotations

import torch
import torchvision

from model import ResNet18, load_checkpoint, load_model, save_checkpoint


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
