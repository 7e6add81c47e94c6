"""Augmented pseudo-queries for support-only losses (test-time tuning and MAML's inner loop).

A 1-shot episode has no labelled image besides the support set, and a support image classified
against its own class prototype is a saturated, uninformative loss. So the support-only losses
score random affine *views* of the support images against the un-augmented support. The views are
drawn from a generator seeded by the support images' bytes (and a run seed), so the same episode
gives the same views: tuning is reproducible and evaluation does not depend on episode order.
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

__all__ = ["augment", "episode_generator"]


def augment(images: torch.Tensor, generator: torch.Generator, views: int = 1) -> torch.Tensor:
    """Random affine views: float ``[B, C, H, W]`` -> ``[views * B, C, H, W]`` (view-major; shift <= 10%,
    rotation <= 10 degrees, scale 0.9-1.1; the border is filled with the image's corner value, the
    background). Random numbers come from the CPU ``generator``; the result is on ``images``' device."""
    x = images.repeat(views, 1, 1, 1)
    b = x.shape[0]
    r = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=generator)  # noqa: E731
    angle, scale = r(-math.pi / 18, math.pi / 18), r(0.9, 1.1)
    tx, ty = r(-0.2, 0.2), r(-0.2, 0.2)  # grid units: the side is 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    bg = x[:, :, :1, :1]
    return F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg


def episode_generator(images: torch.Tensor, seed: int = 0) -> torch.Generator:
    """A CPU generator seeded by a hash of ``images``' bytes and ``seed``."""
    digest = hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).digest()
    return torch.Generator().manual_seed((int.from_bytes(digest[:4], "little") + seed) % (2 ** 31))
