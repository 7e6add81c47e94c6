"""Augmentation of training images, on uint8 batches in torch (no PIL per episode).

Each policy draws independent random parameters per image from a ``torch.Generator`` the caller
seeds (the engine seeds it from ``(seed, episode)``), so an augmented episode is a pure function of
its seed and a resumed run sees the same augmented images as an uninterrupted one.

Policies (``--augment``):
- ``none``: images unchanged.
- ``affine``: a random affine map per image: rotation, shift, isotropic scale and shear (the
  ranges are :class:`AffinePolicy`'s fields); pixels outside the image repeat the border.
- ``elastic``: ``affine`` followed by an elastic distortion (a random displacement field smoothed
  by a Gaussian, Simard et al. 2003), the usual one for handwritten strokes.

Glossary: B images, C channels, H x W pixels.

Example:
    >>> aug = create_augment("affine")
    >>> out = aug(images, torch.Generator().manual_seed(0))   # images: [B, C, H, W] uint8
    >>> out.shape == images.shape and out.dtype == torch.uint8
    True
"""
from __future__ import annotations

import difflib
import math
import zlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["AffinePolicy", "ElasticPolicy", "AUGMENT_POLICIES", "create_augment", "list_augments", "affine_matrices",
           "augmented_copies", "image_seed",
           "elastic_field"]


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64).mul_(high - low).add_(low)


def affine_matrices(n: int, generator: torch.Generator, rotate: float, shift: float, scale: float,
                    shear: float) -> torch.Tensor:
    """``[n, 2, 3]`` float64 sampling matrices for ``F.affine_grid`` (normalised -1..1 coordinates).

    Each output pixel ``p`` reads input ``A p + t`` where the map rotates by an angle uniform in
    ``+-rotate`` degrees, shears by ``+-shear`` degrees, scales by a factor uniform in
    ``[1 - scale, 1 + scale]`` and shifts by ``+-shift`` of the image size.
    """
    angle = torch.deg2rad(_uniform(n, -rotate, rotate, generator))
    sh = torch.deg2rad(_uniform(n, -shear, shear, generator))
    zoom = _uniform(n, 1 - scale, 1 + scale, generator)
    t = _uniform(2 * n, -2 * shift, 2 * shift, generator).view(n, 2)  # normalised coordinates span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)      # [n, 2, 2]
    shear_m = torch.zeros(n, 2, 2, dtype=torch.float64)
    shear_m[:, 0, 0], shear_m[:, 1, 1], shear_m[:, 0, 1] = 1.0, 1.0, torch.tan(sh)
    a = rot @ shear_m / zoom.view(n, 1, 1)  # a larger zoom reads a smaller area: the content grows
    return torch.cat([a, t.unsqueeze(-1)], dim=-1)


def elastic_field(n: int, size: tuple, generator: torch.Generator, alpha: float, sigma: float) -> torch.Tensor:
    """``[n, H, W, 2]`` float32 displacement in normalised coordinates: uniform noise in -1..1
    smoothed by a Gaussian of ``sigma`` pixels, scaled to move pixels by about ``alpha`` pixels."""
    h, w = size
    noise = torch.rand(n, 2, h, w, generator=generator).mul_(2).sub_(1)
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    flat = noise.view(n * 2, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    flat = flat / flat.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-6)  # peak displacement 1 pixel
    disp = flat.view(n, 2, h, w).permute(0, 2, 3, 1)  # [n, H, W, (dx, dy)]
    return disp * alpha * torch.tensor([2.0 / w, 2.0 / h])  # pixels -> normalised units


@dataclass(frozen=True)
class AffinePolicy:
    """Random affine map per image. Angles in degrees, ``shift`` as a fraction of the image size,
    ``scale`` as the largest relative zoom in or out."""

    rotate: float = 10.0
    shift: float = 0.1
    scale: float = 0.1
    shear: float = 10.0

    def grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[B, H, W, 2]`` sampling grid for ``images [B, C, H, W]``."""
        theta = affine_matrices(images.shape[0], generator, self.rotate, self.shift, self.scale, self.shear)
        return F.affine_grid(theta.float(), list(images.shape), align_corners=False)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images ``[B, C, H, W]`` uint8 -> augmented ``[B, C, H, W]`` uint8 (same device)."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"augmentation takes uint8 images [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            return images
        return _resample(images, self.grid(images, generator))


@dataclass(frozen=True)
class ElasticPolicy(AffinePolicy):
    """:class:`AffinePolicy` plus an elastic displacement of about ``alpha`` pixels, smooth over
    ``sigma`` pixels."""

    alpha: float = 1.5
    sigma: float = 3.0

    def grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        field = elastic_field(images.shape[0], tuple(images.shape[-2:]), generator, self.alpha, self.sigma)
        return super().grid(images, generator) + field


def _resample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` read at ``grid [B, H, W, 2]`` (bilinear, border padding), rounded."""
    out = F.grid_sample(images.float(), grid.to(images.device), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


AUGMENT_POLICIES = {"none": None, "affine": AffinePolicy(), "elastic": ElasticPolicy()}


def image_seed(image: torch.Tensor) -> int:
    """A seed read from one image's bytes (CRC-32): the same image gives the same seed wherever it is drawn."""
    return zlib.crc32(image.detach().cpu().contiguous().numpy().tobytes())


def augmented_copies(images: torch.Tensor, copies: int, policy: Optional[AffinePolicy] = None) -> torch.Tensor:
    """``copies`` random affine versions of every image, each image's drawn from a generator seeded by its
    own bytes (:func:`image_seed`), so an image gets the same copies in every episode, batch and order.

    Args:
        images: uint8 ``[B, C, H, W]``.
        copies: ``V >= 1``.
        policy: the maps drawn (default the ``affine`` policy).
    Returns:
        uint8 ``[V * B, C, H, W]``, copy-major: row ``v * B + i`` is copy ``v`` of image ``i``.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"augmented_copies takes uint8 images [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
    policy = policy or AUGMENT_POLICIES["affine"]
    theta = torch.stack([affine_matrices(copies, torch.Generator().manual_seed(image_seed(img)), policy.rotate,
                                         policy.shift, policy.scale, policy.shear) for img in images])  # [B, V, 2, 3]
    repeated = images.repeat(copies, 1, 1, 1)
    grid = F.affine_grid(theta.transpose(0, 1).reshape(-1, 2, 3).float(), list(repeated.shape), align_corners=False)
    return _resample(repeated, grid)
"""Named policies accepted by ``--augment``."""


def list_augments() -> list:
    return list(AUGMENT_POLICIES)


def create_augment(name: str) -> Optional[AffinePolicy]:
    """The policy called ``name`` (``None`` for ``none``); unknown names list the valid ones."""
    if name not in AUGMENT_POLICIES:
        close = difflib.get_close_matches(str(name), list(AUGMENT_POLICIES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown augmentation {name!r}; valid names: {', '.join(AUGMENT_POLICIES)}.{hint}")
    return AUGMENT_POLICIES[name]
