"""Render MNIST digits the way a user's photo or scan of handwriting looks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def render_like_a_photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Dark ink on light, noisy grey paper, scaled up 5-10x and placed off-centre on a larger canvas."""
    scale = rng.uniform(5, 10)
    side = round(28 * scale)
    ink = Image.fromarray(255 - digit).resize((side, side), Image.BILINEAR)
    canvas_w, canvas_h = round(side * rng.uniform(1.4, 2.2)), round(side * rng.uniform(1.4, 2.2))
    paper = rng.uniform(185, 235) + rng.normal(0, 8, (canvas_h, canvas_w))
    left, top = rng.integers(0, canvas_w - side + 1), rng.integers(0, canvas_h - side + 1)
    region = paper[top : top + side, left : left + side]
    # Ink darkens the paper in proportion to its strength.
    paper[top : top + side, left : left + side] = region * (np.asarray(ink, dtype=np.float64) / 255)
    return Image.fromarray(paper.clip(0, 255).astype(np.uint8))


def write_rendered(digits: np.ndarray, labels: np.ndarray, folder: Path, seed: int = 0) -> list[Path]:
    """One file per digit, named <index>_label<digit>.<png|jpg>, alternating formats."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (digit, label) in enumerate(zip(digits, labels)):
        path = folder / f"{i:04d}_label{label}.{'jpg' if i % 2 else 'png'}"
        render_like_a_photo(digit, rng).save(path, quality=90)  # quality applies to JPEG; PNG ignores it
        paths.append(path)
    return paths
