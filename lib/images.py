"""Users' own digits: image files read as a viewer shows them, and made to look like MNIST's.

A photo or scan is dark ink on a light, uneven background, any size, anywhere in the frame; MNIST digits are light on
black, fitted into a 20x20 box and centred by mass in 28x28. digit_to_mnist closes that gap so the result goes through
the same data.to_model_size and data.normalize as the training images.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib.common import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".pbm", ".ppm",
                  ".pnm"}
# Found in a folder too, so that each gets its own line saying why it cannot be read instead of being passed over.
UNREADABLE_SUFFIXES = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".pdf": "PDF", ".svg": "SVG"}
MAX_IMAGE_PIXELS = 40_000_000  # a 40-megapixel photo is plenty; beyond that assume a decompression bomb
DEEP_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}  # 16-bit grey, whatever its byte order


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as grayscale float [H, W] in [0, 1], as an image viewer shows it.

    Upright as the camera was held (its EXIF orientation), at its full bit depth (16-bit grey stays 16-bit, not
    clipped to white), transparency flattened onto white paper; the first frame of an animation or page of a TIFF.
    Whatever goes wrong is a UserError naming the file, so that one bad file never stops the others.
    """
    from PIL import Image, UnidentifiedImageError

    kind = UNREADABLE_SUFFIXES.get(Path(path).suffix.lower())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # said once, in our own line
            with Image.open(path) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise UserError(f"{path}: {image.width}x{image.height} pixels is too large (limit "
                                    f"{MAX_IMAGE_PIXELS:,}); resize it first")
                image.seek(0)  # first frame of a GIF, first page of a TIFF
                return _gray(_upright(image))
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        size = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(size.group(1)):,} pixels" if size else "its size"
        raise UserError(f"{path}: {pixels} is too large (limit {MAX_IMAGE_PIXELS:,}); resize it first") from None
    except UnidentifiedImageError:
        if kind:
            raise UserError(f"{path}: {kind} files cannot be read here (Pillow has no {kind} decoder); save it as PNG "
                            "or JPEG") from None
        raise UserError(f"{path}: not an image file PIL can read") from None
    except Exception as error:  # a truncated or corrupt file: OSError, SyntaxError, ValueError, ... from its decoder
        raise UserError(f"{path}: cannot read image ({str(error) or type(error).__name__})") from None


def _upright(image):
    """The image turned as its EXIF orientation says (a phone stores pixels as the sensor saw them); a broken EXIF
    block leaves it as stored, as viewers do."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 (any failure to parse EXIF: show the pixels as stored)
        return image


def _gray(image) -> torch.Tensor:
    """Grayscale [H, W] in [0, 1] at the image's own depth: 16-bit and 32-bit grey scaled by their full range."""
    from PIL import Image

    if image.mode in DEEP_MODES or image.mode in ("I", "F"):
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        full = DEEP_MODES.get(image.mode) or (1.0 if image.mode == "F" and x.max() <= 1 else
                                              255.0 if x.max() <= 255 else 65535.0)
        return (x / full).clamp_(0, 1)
    paper = Image.new("RGBA", image.size, "white")
    gray = Image.alpha_composite(paper, image.convert("RGBA")).convert("L")
    return torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(gray.height, gray.width).float() / 255


def _otsu_threshold(x: torch.Tensor) -> float:
    """The grey level that best separates ink from background (Otsu, 1979), on a 256-bin histogram."""
    histogram = torch.histc(x, bins=256, min=0, max=1).double()
    levels = torch.linspace(0, 1, 256, dtype=torch.float64)
    weight = histogram.cumsum(0)
    mass = (histogram * levels).cumsum(0)
    total, total_mass = weight[-1], mass[-1]
    between = (total_mass * weight / total - mass) ** 2 / (weight * (total - weight)).clamp(min=1e-12)
    return levels[between.argmax()].item()


def box_blur(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """The mean over each kernel x kernel box (odd kernel, edges replicated) of an image [H, W], as a row pass then a
    column pass: 2 * kernel additions a pixel instead of kernel**2 (BENCHMARKS.md, "`predict.py` on many digits and on
    large photos")."""
    if kernel == 1:
        return x
    padded = F.pad(x[None, None], [kernel // 2] * 4, mode="replicate")
    return F.avg_pool2d(F.avg_pool2d(padded, (1, kernel), stride=1), (kernel, 1), stride=1)[0, 0]


def digit_to_mnist(gray: torch.Tensor) -> torch.Tensor:
    """A grayscale digit [H, W] in [0, 1] as MNIST would have it: [28, 28], light on black, centred by mass.

    The ink is fitted into a 20x20 box first, as MNIST's digits were; the steps are in docs/internals.md.
    """
    border = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    x = 1 - gray if border.median() > 0.5 else gray.clone()  # make it light ink on a dark background
    # Find the ink on a copy blurred in proportion to size, so paper texture and sensor noise do not survive the
    # threshold; the digit itself stays sharp (the downscale to 20x20 below averages the noise away anyway).
    # (No wider than the narrow side: a strip a few pixels high would otherwise pad to gigabytes.)
    blurred = box_blur(x, min(max(1, round(max(x.shape) / 100)) * 2 - 1, min(x.shape) // 2 * 2 + 1))
    threshold = _otsu_threshold(blurred)
    mask = blurred > threshold
    # Samples are enough for percentiles (and torch.quantile caps its input size).
    ink = blurred[mask][:: max(1, int(mask.sum()) // 1_000_000)]
    paper = blurred[~mask][:: max(1, int((~mask).sum()) // 1_000_000)]
    brightest = ink.quantile(0.99).item() if ink.numel() else threshold
    if brightest - threshold < 0.1 or paper.numel() == 0:
        raise UserError("no digit found: the image is blank or has too little contrast")
    # Zero at the paper's level plus 3 sigma of its noise (median and MAD), not at a high percentile of what lies
    # below the threshold: the strokes' soft edges lie there too, and cutting into them leaves strokes thinner than
    # MNIST's (tests/test_user_images.py checks the ink kept).
    paper_level = paper.median()
    zero = min((paper_level + 3 * 1.4826 * (paper - paper_level).abs().median()).item(), threshold)
    rows, cols = mask.sum(1).nonzero(), mask.sum(0).nonzero()
    x = ((x - zero) / (brightest - zero)).clamp(0, 1)[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20 / max(x.shape)
    height, width = max(1, round(x.shape[0] * scale)), max(1, round(x.shape[1] * scale))
    x = F.interpolate(x[None, None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    x = x[0, 0].clamp(0, 1)
    canvas = torch.zeros(28, 28)
    top, left = (28 - height) // 2, (28 - width) // 2
    canvas[top : top + height, left : left + width] = x
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    shift_y = round(13.5 - (canvas * ys).sum().item() / canvas.sum().item())
    shift_x = round(13.5 - (canvas * xs).sum().item() / canvas.sum().item())
    # Move the centre of mass to the middle, but never push ink off the canvas.
    shift_y = max(-top, min(shift_y, 28 - top - height))
    shift_x = max(-left, min(shift_x, 28 - left - width))
    return torch.roll(canvas, (shift_y, shift_x), dims=(0, 1))


def find_images(paths: list[str]) -> list[Path]:
    """Files as given, plus the image files inside any folders given, in a stable order.

    In a folder, hidden files (a Mac's ._photo.jpg copies) are passed over, as a viewer passes them; files of a
    format that cannot be read here (HEIC, ...) are kept, so that each is named in its own error line.
    """
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | set(UNREADABLE_SUFFIXES)
                            and not any(part.startswith(".") for part in p.relative_to(path).parts) and p.is_file())
        else:
            found.append(path)
    return found
