"""The corruptions of `test.py --robustness`: the ways a digit gets bent, blurred, thinned or faded on its way in.

Each is deterministic given a generator; the geometric ones warp by data.affine_matrices, as the augmentation does.
"""
from __future__ import annotations

import math

import torch

import data

CORRUPTIONS = {  # name: severities, mild to harsh (units: degrees, shear factor, zoom, pixels, std, sigma, steps, gain)
    "rotation": [15, 30, 45], "shear": [0.2, 0.4, 0.6], "scale": [0.8, 0.65, 0.5], "translation": [3, 5, 7],
    "gaussian noise": [0.1, 0.2, 0.4], "blur": [0.5, 1.0, 1.5], "thicken": [1, 2], "thin": [1, 2],
    "contrast": [0.5, 0.3, 0.15], "inversion": [1],
}


def fixed_affines(n: int, generator: torch.Generator, angle_deg: float = 0, shear: float = 0, zoom: float = 1,
                  shift_px: float = 0) -> torch.Tensor:
    """Affine matrices [n, 2, 3] of one severity: each image rotated or sheared by it one way or the other at random,
    shifted by it in a random direction."""
    sign = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
    direction = torch.rand(n, generator=generator) * 2 * math.pi
    shift = shift_px * 2 / data.INPUT_SIZE
    return data.affine_matrices(sign * math.radians(angle_deg), torch.full((n,), float(zoom)),
                                shift * torch.cos(direction), shift * torch.sin(direction), sign * shear)


def corrupt(x: torch.Tensor, name: str, level: float, generator: torch.Generator) -> torch.Tensor:
    """One corruption of [0, 1] images [N, 1, 32, 32] at one severity."""
    from torchvision.transforms.v2.functional import gaussian_blur

    geometric = {"rotation": "angle_deg", "shear": "shear", "scale": "zoom", "translation": "shift_px"}
    if name in geometric:
        return data.apply_affines(x, fixed_affines(len(x), generator, **{geometric[name]: level}).to(x.device))
    if name == "gaussian noise":
        return (x + level * torch.randn(x.shape, generator=generator).to(x.device)).clamp(0, 1)
    if name == "blur":
        return gaussian_blur(x, kernel_size=[7, 7], sigma=[level, level])
    if name == "thicken":
        return data.thicken(x, int(level))
    if name == "thin":
        return data.thin(x, int(level))
    if name == "contrast":
        return x * level
    if name == "inversion":
        return 1 - x
    raise ValueError(name)
