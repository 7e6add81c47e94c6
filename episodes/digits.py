"""scikit-learn's bundled handwritten digits (the UCI optical-recognition set: 1797 images of
8x8 pixels, values 0..16), as a small offline toy dataset: nothing is downloaded.

This is a toy for smoke tests and examples, not a benchmark: there are only ten classes, so
the split is by class for train (digits 0-4) but **by image** between val and test, which
share the classes 5-9: val holds the first half of each of those classes' images (in
scikit-learn's order), test the second half. Train is class-disjoint from val and test.

Values 0..16 count ink, so strokes are already bright: they are scaled to 0..255 and resized
(bilinear, from 8x8) to ``img_size``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .catalog import Splits, register_dataset
from .imageset import ImageSet

__all__ = ["TRAIN_DIGITS", "EVAL_DIGITS", "digits_tensor", "load_digits"]

TRAIN_DIGITS = (0, 1, 2, 3, 4)
EVAL_DIGITS = (5, 6, 7, 8, 9)


def digits_tensor(img_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """All of scikit-learn's digits as images.

    Returns:
        ``images [1797, 1, S, S]`` uint8 (strokes bright) and ``targets [1797]`` int64 digit.
    """
    from sklearn.datasets import load_digits as sk_load_digits  # lazy: sklearn is slow to import

    data = sk_load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    if img_size != x.shape[-1]:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = x.round_().clamp_(0, 255).to(torch.uint8)
    return images, torch.as_tensor(data.target, dtype=torch.long)


def _subset(images: torch.Tensor, targets: torch.Tensor, digits: Sequence[int], half: Optional[int],
            name: str) -> ImageSet:
    """Images of ``digits`` (class ``i`` = ``digits[i]``); ``half`` 0/1 keeps that half of each class."""
    keep, labels = [], []
    for i, d in enumerate(digits):
        idx = torch.nonzero(targets == d).flatten()
        if half is not None:
            mid = idx.numel() // 2
            idx = idx[:mid] if half == 0 else idx[mid:]
        keep.append(idx)
        labels.append(torch.full((idx.numel(),), i, dtype=torch.long))
    keep_t = torch.cat(keep)
    return ImageSet(images[keep_t], torch.cat(labels), [f"digit{d}" for d in digits], name=name)


@register_dataset("digits", needs_root=False, default_img_size=28, in_chans=1,
                  description="scikit-learn's 8x8 digits (toy, offline): train 0-4, val/test 5-9 split by image")
def load_digits(root: Optional[Path], img_size: int) -> Splits:
    """Load the digits toy dataset (``root`` is not used; see the module docstring for the split).

    Returns:
        :class:`Splits` of uint8 ``[N, 1, img_size, img_size]`` image sets: train 5 classes
        (~900 images), val and test the same 5 classes (~450 images each).
    """
    images, targets = digits_tensor(img_size)
    return Splits(_subset(images, targets, TRAIN_DIGITS, None, "digits/train"),
                  _subset(images, targets, EVAL_DIGITS, 0, "digits/val"),
                  _subset(images, targets, EVAL_DIGITS, 1, "digits/test"))
