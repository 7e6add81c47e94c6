"""The dataset catalog: :class:`Splits`, the registry entries and their lookup.

A loader is a plain function ``loader(root, img_size) -> Splits`` in its own module, registered with
:func:`register_dataset`; :mod:`episodes.datasets` imports every loader module (which registers it)
and loads the splits. The loaders import this module, never :mod:`episodes.datasets`, so the
import graph has no loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from registry import Registry

from .imageset import ImageSet

__all__ = ["Splits", "DatasetInfo", "register_dataset", "list_datasets", "dataset_info"]


@dataclass(frozen=True)
class Splits:
    """Class-disjoint train / val / test image sets of one dataset."""

    train: ImageSet
    val: ImageSet
    test: ImageSet

    def __getitem__(self, split: str) -> ImageSet:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be one of train, val, test; got {split!r}")
        return getattr(self, split)

    def describe(self) -> str:
        lines = []
        for s in ("train", "val", "test"):
            d = self[s]
            sizes = d.class_sizes()
            lines.append(f"{s:5s}: {d.num_classes:4d} classes, {len(d):6d} images "
                         f"({int(sizes.min())}-{int(sizes.max())} per class), image {d.image_shape}")
        return "\n".join(lines)


@dataclass(frozen=True)
class DatasetInfo:
    """Registry entry: the loader and what it needs."""

    name: str
    loader: Callable[..., Splits]
    needs_root: bool
    default_img_size: int
    in_chans: int
    description: str


_REGISTRY: Registry = Registry("dataset")


def register_dataset(name: str, *, needs_root: bool, default_img_size: int, in_chans: int, description: str):
    """Decorator: register ``loader(root, img_size) -> Splits`` under ``name`` (a duplicate name is an error)."""

    def deco(fn):
        _REGISTRY.add(name, DatasetInfo(name, fn, needs_root, default_img_size, in_chans, description))
        return fn

    return deco


def list_datasets() -> list:
    """Registered dataset names (``--dataset``), sorted."""
    return _REGISTRY.names()


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of dataset ``name``; unknown names list the valid ones and the closest."""
    return _REGISTRY.get(name)
