"""MNIST as in-memory tensors: read once, resize to 32x32 once, then batch and augment on the training device.

Peers push every image through PIL and a DataLoader each epoch; that caps a GPU at a few thousand images/s.
Here a split is one float tensor, each epoch's order and augmentation are derived from (seed, epoch),
so a run can be resumed mid-epoch exactly and every DDP rank can take its share of the same order.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from lib.common import INPUT_SIZE, MEAN, NUM_CLASSES, STD, UserError  # noqa: F401 (data.INPUT_SIZE etc. for users)

SPLIT_SEED = 0  # fixed, so runs with different --seed are validated on the same held-out images

IDX_FILES = {  # split: (images file, labels file), in <root>/MNIST/raw as torchvision.datasets.MNIST keeps them
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {True: 60000, False: 10000}  # MNIST's training and test images
IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803: unsigned bytes, 3 dims; 0x0801: unsigned bytes, 1 dim


def resolve_data_dir(data_dir: str | None) -> Path:
    """--data-dir, else $MNIST_DATA_DIR, else ./data (the folder that holds MNIST/raw)."""
    return Path(data_dir or os.environ.get("MNIST_DATA_DIR") or "data")


def read_idx(path: Path, kind: str) -> torch.Tensor:
    """An MNIST IDX file, raw or gzip-compressed as MNIST is published, as a uint8 tensor; a file that is unreadable,
    truncated or of another kind is named in one line, instead of the opaque error a reader gives."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            content = f.read()
    except PermissionError:
        raise UserError(f"{path} cannot be read: no permission (ask its owner for read access)") from None
    except (OSError, EOFError) as error:  # a folder in its place, a broken .gz
        raise UserError(f"{path} cannot be read ({error})") from None
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(content) < header:
        raise UserError(f"{path} is truncated: only {len(content)} bytes")
    magic = int.from_bytes(content[:4], "big")
    if magic != IDX_MAGIC[kind]:
        raise UserError(f"{path} is not an MNIST {kind} IDX file (magic number {magic}, expected {IDX_MAGIC[kind]})")
    dims = [int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(content) != header + math.prod(dims):
        raise UserError(f"{path} is truncated or padded: {len(content)} bytes, expected {header + math.prod(dims)} for "
                        f"shape {dims}")
    return torch.frombuffer(bytearray(content[header:]), dtype=torch.uint8).view(dims)


def _idx_paths(root: Path, train: bool, with_labels: bool) -> list[Path]:
    """The IDX files a split needs, each raw or else .gz; MNIST is downloaded only where no file of it is there."""
    import torchvision

    raw = root / "MNIST" / "raw"
    names = IDX_FILES[train][: 2 if with_labels else 1]
    if not any((raw / name).exists() or (raw / f"{name}.gz").exists() for both in IDX_FILES.values() for name in both):
        created = [folder for folder in (raw, *raw.parents) if not folder.exists()]  # innermost first
        try:
            torchvision.datasets.MNIST(root, train=train, download=True)
        except Exception as error:  # offline: URLError, timeouts, HTTP errors, a failed checksum
            for folder in created:  # the empty folders the attempt made, so a mistyped --data-dir leaves no trace
                with contextlib.suppress(OSError):  # not empty: a partial download, kept for the user to see
                    folder.rmdir()
            raise UserError(
                f"MNIST not found in {raw} and the download failed ({type(error).__name__}). "
                f"Copy the four raw IDX files (train-images-idx3-ubyte, ...) into {raw}, "
                "or point --data-dir or MNIST_DATA_DIR at the folder that contains MNIST/raw"
            ) from None
    paths = []
    for name in names:
        found = [path for path in (raw / name, raw / f"{name}.gz") if path.exists()]
        if not found:
            raise UserError(f"{raw / name} is missing: copy it (or {name}.gz) beside the other MNIST files, or "
                            "remove them all to download afresh")
        paths.append(found[0])
    return paths


def load_split(data_dir: str | Path | None, train: bool,
               with_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw MNIST as (uint8 images [N, 28, 28], int64 labels [N]); only the images file is read without labels."""
    paths = _idx_paths(resolve_data_dir(data_dir), train, with_labels)
    images = read_idx(paths[0], "images")
    split, other = ("training", "test") if train else ("test", "training")
    if len(images) == SPLIT_SIZES[not train] != SPLIT_SIZES[train]:
        raise UserError(f"{paths[0]} holds {len(images):,} images, as the {other} split's file does: the {split} "
                        f"split's is {IDX_FILES[train][0]}, with {SPLIT_SIZES[train]:,}")
    if not with_labels:
        return images, None
    labels = read_idx(paths[1], "labels").long()
    if len(images) != len(labels):
        raise UserError(f"{paths[0].parent}: {len(images)} images but {len(labels)} labels")
    return images, labels


def to_model_size(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float digits [N, 28, 28] -> float [N, 1, 32, 32] in [0, 1]: the one resize used everywhere."""
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False).clamp_(0, 1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def split_indices(n: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, disjoint (train, validation) split of range(n); the validation part never trains."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[val_size:].sort().values, order[:val_size].sort().values


def load_train_val(
    data_dir: str | Path | None, val_size: int, subset: int | None, device: torch.device
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The training and validation splits, each an (images, labels) pair of 32x32 [0, 1] tensors on `device`."""
    images, labels = load_split(data_dir, train=True)
    if not 0 <= val_size < len(images):
        raise UserError(f"--val-size must be between 0 and {len(images) - 1}, got {val_size}")
    train_idx, val_idx = split_indices(len(images), val_size)
    if subset is not None:
        if not 0 < subset <= len(train_idx):
            raise UserError(f"--subset must be between 1 and {len(train_idx)} (the training images left after the "
                            f"split), got {subset}")
        train_idx = train_idx[:subset]
    resized = to_model_size(images).to(device)
    labels = labels.to(device)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    return (resized[train_idx], labels[train_idx]), (resized[val_idx], labels[val_idx])


def load_test(data_dir: str | Path | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 test images (32x32, [0, 1]) and labels on `device`."""
    images, labels = load_split(data_dir, train=False)
    return to_model_size(images).to(device), labels.to(device)


def affine_matrices(angle: torch.Tensor, zoom: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor,
                    shear: torch.Tensor | None = None) -> torch.Tensor:
    """Affine matrices [n, 2, 3] for grid_sample (output -> input grid) from each image's rotation (radians), zoom,
    shift (grid units: a side spans 2) and shear: what the augmentation and test.py's corruptions both warp by."""
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    top = -sin if shear is None else -sin + shear
    return torch.stack([torch.stack([cos, top, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)


def random_affines(n: int, generator: torch.Generator, rotate: float = 12.0, scale: float = 0.1,
                   translate: float = 0.1) -> torch.Tensor:
    """Per-sample affine matrices [n, 2, 3] for grid_sample: rotation (degrees), zoom and shift (fraction of the side).

    Handwriting varies in slant, size and position, never in mirror image, so there are no flips.
    """
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    shift = u[:, 2:] * translate * 2  # grid coordinates span [-1, 1], i.e. 2 units per side
    return affine_matrices(u[:, 0] * math.radians(rotate), 1 + u[:, 1] * scale, shift[:, 0], shift[:, 1])


def apply_affines(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp a batch [B, 1, H, W] in [0, 1]; zero padding is the MNIST background."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def thicken(x: torch.Tensor, times: int = 1) -> torch.Tensor:
    """Thicker strokes: `times` 3x3 morphological dilations of light ink on black [B, 1, H, W]."""
    for _ in range(times):
        x = F.max_pool2d(x, 3, stride=1, padding=1)
    return x


def thin(x: torch.Tensor, times: int = 1) -> torch.Tensor:
    """Thinner strokes: `times` 3x3 morphological erosions."""
    return -thicken(-x, times)


def vary_ink(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Photometric augmentation for [0, 1] images [B, 1, H, W]: each image independently has, with probability 1/2
    each, its strokes thickened or thinned by one pixel, its contrast lowered (gain 0.25-1) and Gaussian noise added
    (std up to 0.3). The geometric augmentation leaves these alone, and without them `test.py --robustness` finds a
    model near chance under noise of std 0.2 or two erosions."""
    u = torch.rand(len(x), 6, 1, 1, 1, generator=generator, device=x.device)
    stroke = torch.where(u[:, 1] < 0.5, thicken(x), thin(x))
    x = torch.where(u[:, 0] < 0.5, stroke, x)
    x = x * torch.where(u[:, 2] < 0.5, 0.25 + 0.75 * u[:, 3], 1.0)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + noise * torch.where(u[:, 4] < 0.5, 0.3 * u[:, 5], 0.0)).clamp(0, 1)


def batch_bounds(n: int, batch_size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """[start, end) of each global batch; a final sliver smaller than world_size joins the batch before it,
    so every rank always gets at least one sample and all ranks run the same number of steps."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < world_size:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


def batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    photometric: bool = False,
    seed: int = 0,
    epoch: int = 0,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised (images, labels) batches of one epoch; every sample exactly once across all ranks.

    The order and the augmentation depend only on (seed, epoch), not on the device or on earlier epochs,
    which is what makes mid-epoch resume exact: start_step skips the batches already trained on.
    Under DDP each rank takes every world_size-th sample of each global batch. `photometric` adds vary_ink, drawn on
    the device (per-pixel noise for a whole epoch would not fit on the CPU side) from a generator seeded per step
    (and rank) from the epoch's: the same (seed, epoch, step) gives the same batch on the same kind of device.
    """
    n = len(images)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    theta = random_affines(n, generator).to(images.device) if augment else None
    bounds = batch_bounds(n, batch_size, world_size)
    step_seeds = torch.randint(2**62, (len(bounds),), generator=generator).tolist() if photometric else None
    order = order.to(images.device)
    for step, (start, end) in enumerate(bounds[start_step:], start=start_step):
        index = order[start:end][rank::world_size]
        x = images[index]
        if theta is not None:
            x = apply_affines(x, theta[index])
        if step_seeds is not None:
            x = vary_ink(x, torch.Generator(x.device).manual_seed(step_seeds[step] + rank))
        yield normalize(x), labels[index]
