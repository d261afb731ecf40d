"""Data: 32x32 resize, normalisation, the split, the batch order and the augmentation."""

from __future__ import annotations

import math

import pytest
import torch

import data
from lib.common import UserError


def test_resize_gives_32x32_in_unit_range():
    digits = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    x = data.to_model_size(digits)
    assert x.shape == (5, 1, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    flat = data.to_model_size(torch.full((1, 28, 28), 255, dtype=torch.uint8))
    assert torch.allclose(flat, torch.ones_like(flat))


def test_normalisation_constants_are_the_training_set_statistics(real_mnist):
    raw, _ = data.load_split(real_mnist, train=True)
    pixels = raw.float() / 255
    assert abs(pixels.mean().item() - data.MEAN) < 1e-4 and abs(pixels.std().item() - data.STD) < 1e-4
    (images, labels), _ = data.load_train_val(real_mnist, 0, None, torch.device("cpu"))
    assert images.shape == (60000, 1, 32, 32)
    assert torch.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    x = data.normalize(images)
    # Bilinear upsampling to 32x32 keeps the mean and smooths the spread a little (std 0.94).
    assert abs(x.mean().item()) < 0.01 and 0.9 < x.std().item() < 1.0


def test_validation_split_is_seeded_disjoint_and_sized():
    train, val = data.split_indices(60000, 5000)
    assert len(val) == 5000 and len(train) == 55000
    assert len(set(train.tolist()) | set(val.tolist())) == 60000
    again_train, again_val = data.split_indices(60000, 5000)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_sample_once_per_epoch_across_ranks(world_size):
    n, batch_size = 1001, 64
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    labels = torch.arange(n)
    seen, steps = [], set()
    for rank in range(world_size):
        rank_batches = list(
            data.batches(images, labels, batch_size, shuffle=True, seed=1, epoch=2, rank=rank, world_size=world_size)
        )
        steps.add(len(rank_batches))
        seen += [int(y) for _, ys in rank_batches for y in ys]
    assert sorted(seen) == list(range(n))
    assert steps == {math.ceil(n / batch_size)}  # every rank runs the same number of steps


def test_order_depends_on_seed_and_epoch_only_and_start_step_skips():
    labels = torch.arange(300)
    images = torch.zeros(300, 1, 4, 4)

    def order(**kw):
        return torch.cat([y for _, y in data.batches(images, labels, 50, shuffle=True, **kw)]).tolist()

    assert order(seed=0, epoch=0) == order(seed=0, epoch=0)
    assert order(seed=0, epoch=0) != order(seed=0, epoch=1) != order(seed=1, epoch=1)
    assert order(seed=0, epoch=1, start_step=2) == order(seed=0, epoch=1)[100:]


def test_augmentation_keeps_shape_labels_and_background_but_moves_ink(real_mnist):
    (images, labels), _ = data.load_train_val(real_mnist, 0, 256, torch.device("cpu"))
    ((plain, plain_y),) = list(data.batches(images, labels, 256))
    ((augmented, augmented_y),) = list(data.batches(images, labels, 256, augment=True))
    assert augmented.shape == plain.shape and torch.equal(augmented_y, plain_y)
    assert (augmented - plain).abs().mean() > 0.05
    background = data.normalize(torch.tensor(0.0))
    assert torch.isclose(augmented[:, :, 0, 0], background).float().mean() > 0.95  # corners stay background
    identity = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]]).expand(256, 2, 3)
    assert torch.allclose(data.apply_affines(images, identity), images, atol=1e-5)


def test_augmentation_never_flips():
    theta = data.random_affines(10000, torch.Generator().manual_seed(0))
    determinant = theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0]
    assert (determinant > 0).all()


def test_offline_without_data_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    # Route the download to a closed local port: the real download path runs, fails at once, and never leaves the
    # machine.
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    with pytest.raises(UserError) as error:
        data.load_split(tmp_path / "nowhere" / "data", train=True)
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "data" / "MNIST" / "raw") in message
    assert "--data-dir" in message and "MNIST_DATA_DIR" in message
    assert list(tmp_path.iterdir()) == []  # the folders the failed download made are gone: a typo leaves no trace


def test_photometric_augmentation_varies_ink_on_about_half_the_images_each_way_and_resumes_exactly(real_mnist):
    images, labels = data.load_test(real_mnist, torch.device("cpu"))
    images, labels = images[:2048], labels[:2048]
    varied = data.vary_ink(images, torch.Generator().manual_seed(0))
    assert varied.shape == images.shape and 0 <= varied.min() and varied.max() <= 1
    noisy = (varied[:, 0, :3, :3] > 0).flatten(1).any(1)  # MNIST's corners are black; only noise lights them
    dimmer = varied.amax((1, 2, 3)) < 0.9 * images.amax((1, 2, 3))
    ink_area = lambda x: (x > 0.5).sum((1, 2, 3)).float()  # noqa: E731
    restroked = (ink_area(varied) - ink_area(images)).abs() > 0.15 * ink_area(images)
    # Independent coin flips: 1/2 noisy; 1/4 dimmed but not noisy; 1/8 only restroked (a one-pixel change shows in
    # most of those); 1/8 left as they were.
    assert 0.42 < noisy.float().mean() < 0.58
    assert 0.19 < (dimmer & ~noisy).float().mean() < 0.31
    assert 0.05 < (restroked & ~noisy & ~dimmer).float().mean() < 0.13
    assert 0.08 < (varied == images).all((1, 2, 3)).float().mean() < 0.18

    def epoch(**kw):
        return torch.cat(
            [
                x
                for x, _ in data.batches(
                    images, labels, 512, shuffle=True, augment=True, photometric=True, seed=1, **kw
                )
            ]
        )

    assert torch.equal(epoch(epoch=3), epoch(epoch=3))
    assert torch.equal(epoch(epoch=3, start_step=2), epoch(epoch=3)[1024:])
    assert not torch.equal(epoch(epoch=3), epoch(epoch=4))
    assert (
        len(list(data.batches(images, labels, 512, photometric=True, seed=2**32 - 1, epoch=99))) == 4
    )  # --seed's largest


# ---- Data folders as people copy them: any subset of the four files, raw or .gz, the wrong split, no permission

FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
NEEDS = {  # what reads which files: test.py and predict.py, train.py, test.py --int8's calibration
    "test split": (dict(train=False), FILES[2:]),
    "training split": (dict(train=True), FILES[:2]),
    "training images alone": (dict(train=True, with_labels=False), FILES[:1]),
}


def data_folder(root, real_mnist, files: dict[str, str]):
    """root/MNIST/raw holding {name: the real file it links to}."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, real in files.items():
        (raw / name).symlink_to(real_mnist / "MNIST" / "raw" / real)
    return root


@pytest.mark.parametrize("present", range(1, 16), ids=lambda mask: "+".join(f"{n.split('-')[0]}-{n.split('-')[1]}"
                                                                               for i, n in enumerate(FILES)
                                                                               if mask >> i & 1))
@pytest.mark.parametrize("need", list(NEEDS))
def test_each_reader_needs_only_its_files_and_names_the_first_one_missing(tmp_path, real_mnist, monkeypatch, present,
                                                                           need):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *a, **k: pytest.fail("downloaded with files present"))
    root = data_folder(tmp_path, real_mnist, {name: name for i, name in enumerate(FILES) if present >> i & 1})
    arguments, needed = NEEDS[need]
    missing = [name for name in needed if not present >> FILES.index(name) & 1]
    if missing:
        with pytest.raises(UserError, match=f"^{root / 'MNIST' / 'raw' / missing[0]} is missing: copy it "
                                            rf"\(or {missing[0]}.gz\) beside the other MNIST files"):
            data.load_split(root, **arguments)
    else:
        images, labels = data.load_split(root, **arguments)
        assert len(images) == (60000 if arguments["train"] else 10000)
        assert (labels is None) == (len(needed) == 1)


@pytest.fixture(scope="module")
def gzipped(tmp_path_factory, real_mnist):
    """The test split's two files gzip-compressed, as MNIST's site publishes them."""
    import gzip

    folder = tmp_path_factory.mktemp("gz")
    for name in FILES[2:]:
        (folder / f"{name}.gz").write_bytes(gzip.compress((real_mnist / "MNIST" / "raw" / name).read_bytes(), 1))
    return folder


@pytest.mark.parametrize("beside_raw", [False, True], ids=["gz-instead-of-raw", "gz-beside-raw"])
def test_gzipped_files_are_read_as_they_are_published(tmp_path, real_mnist, gzipped, beside_raw):
    root = data_folder(tmp_path, real_mnist, {name: name for name in FILES[2:]} if beside_raw else {})
    for name in FILES[2:]:
        (root / "MNIST" / "raw" / f"{name}.gz").symlink_to(gzipped / f"{name}.gz")
    images, labels = data.load_split(root, train=False)
    expected_images, expected_labels = data.load_split(real_mnist, train=False)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_a_broken_gz_file_is_named(tmp_path, real_mnist, gzipped):
    root = data_folder(tmp_path, real_mnist, {FILES[3]: FILES[3]})
    broken = root / "MNIST" / "raw" / f"{FILES[2]}.gz"
    broken.write_bytes((gzipped / f"{FILES[2]}.gz").read_bytes()[:5000])
    with pytest.raises(UserError, match=f"^{broken} cannot be read \\(Compressed file ended"):
        data.load_split(root, train=False)


@pytest.mark.parametrize("train", [True, False], ids=["test-files-as-training", "training-files-as-test"])
def test_files_of_the_other_split_are_refused_naming_the_right_one(tmp_path, real_mnist, train):
    swapped = dict(zip(FILES, FILES[2:] + FILES[:2]))  # each name holding the other split's file
    root = data_folder(tmp_path, real_mnist, swapped)
    expected = ("holds 10,000 images, as the test split's file does: the training split's is "
                "train-images-idx3-ubyte, with 60,000") if train else (
                "holds 60,000 images, as the training split's file does: the test split's is t10k-images-idx3-ubyte, "
                "with 10,000")
    with pytest.raises(UserError, match=f"^{root / 'MNIST' / 'raw' / FILES[0 if train else 2]} {expected}$"):
        data.load_split(root, train=train)


def test_a_file_without_read_permission_is_named(tmp_path, real_mnist, monkeypatch):
    # CI runs as root, whom no file mode stops, so the refusal the system gives anyone else is made here.
    root = data_folder(tmp_path, real_mnist, {name: name for name in FILES})
    locked = root / "MNIST" / "raw" / FILES[2]

    def refuse(path, *args, **kwargs):
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(data, "open", refuse, raising=False)
    with pytest.raises(UserError, match=f"^{locked} cannot be read: no permission"):
        data.load_split(root, train=False)
