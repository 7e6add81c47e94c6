"""ImageSet: a decoded image collection held as one uint8 tensor.

Every loader in :mod:`episodes` returns an :class:`ImageSet`; the sampler and the engine only
index into it, so sampling an episode never touches PIL or the disk. Images stay uint8 until they
meet a model: :func:`to_input` is the one conversion to the models' input (``ImageSet.as_float``
gives the same pixels in 0..1, for display).

Glossary: N images, C channels, H x W pixels.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .errors import DataError

__all__ = ["ImageSet", "fingerprint_tensors", "to_input"]


def _unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` in 0..255 -> float32 ``[B, C, H, W]`` in 0..1."""
    return images.float().div_(255.0)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """The models' input: uint8 ``[B, C, H, W]`` -> float32 ``[B, C, H, W]`` in -1..1.

    Pixels in 0..1 normalised with mean 0.5 and std 0.5 (``2 * x - 1``), the normalisation every
    backbone in ``models`` declares (Conv-4, and the ViG / pyramid ViG configs of the authors'
    pretrained weights). Float input is taken as already converted and passes through.
    """
    if images.dtype == torch.uint8:
        return _unit(images).mul_(2.0).sub_(1.0)
    return images


def fingerprint_tensors(*tensors: torch.Tensor, extra: str = "") -> str:
    """Short content hash (sha256, 16 hex chars) of tensors' bytes, shapes and an extra string."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    h.update(extra.encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ImageSet:
    """Images of several classes, decoded once.

    Args:
        images: ``[N, C, H, W]`` uint8.
        labels: ``[N]`` int64 class index in ``0..len(class_names)-1``.
        class_names: one readable name per class (``Alphabet/character01``, ``n01532829``, ...).
        name: a label for messages and tracking (``omniglot-minimal/train``).

    Example:
        >>> s = ImageSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 0, 1, 1]), ["a", "b"])
        >>> s.num_classes, s.class_sizes().tolist()
        (2, [2, 2])
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: Sequence[str]
    name: str = "images"
    _by_class: list = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be a uint8 tensor [N, C, H, W], got "
                            f"{getattr(self.images, 'dtype', type(self.images))} {tuple(getattr(self.images, 'shape', ()))}")
        labels = torch.as_tensor(self.labels, dtype=torch.long)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", list(self.class_names))
        if labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.images.shape[0]} images but {labels.numel()} labels")
        n_cls = len(self.class_names)
        if n_cls == 0:
            raise DataError(f"{self.name}: no classes found")
        if labels.numel() and (labels.min() < 0 or labels.max() >= n_cls):
            raise DataError(f"{self.name}: labels must lie in 0..{n_cls - 1}, found {labels.min()}..{labels.max()}")
        sizes = torch.bincount(labels, minlength=n_cls)
        empty = [self.class_names[i] for i in torch.nonzero(sizes == 0).flatten().tolist()]
        if empty:
            raise DataError(f"{self.name}: class {empty[0]!r} has no images"
                            + (f" (and {len(empty) - 1} more empty classes)" if len(empty) > 1 else ""))
        order = torch.argsort(labels, stable=True)
        object.__setattr__(self, "_by_class", list(torch.split(order, sizes.tolist())))

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])

    def class_sizes(self) -> torch.Tensor:
        """``[num_classes]`` number of images per class."""
        return torch.tensor([len(ix) for ix in self._by_class])

    def indices_of(self, cls: int) -> torch.Tensor:
        """``[n_c]`` indices (into ``images``) of class ``cls``, in ascending order."""
        return self._by_class[cls]

    @property
    def fingerprint(self) -> str:
        """Content hash of images, labels and class names: an EpisodeBank is valid only for this value."""
        fp = self.__dict__.get("_fingerprint")
        if fp is None:
            fp = fingerprint_tensors(self.images, self.labels, extra="\n".join(self.class_names))
            self.__dict__["_fingerprint"] = fp
        return fp

    def subset(self, classes: Sequence[int], name: str | None = None) -> "ImageSet":
        """A new ImageSet of the given classes only, relabelled ``0..len(classes)-1`` in that order."""
        classes = list(classes)
        idx = torch.cat([self._by_class[c] for c in classes]) if classes else torch.zeros(0, dtype=torch.long)
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
        return ImageSet(self.images[idx], remap[self.labels[idx]], [self.class_names[c] for c in classes],
                        name=name or self.name)

    def as_float(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """``[n, C, H, W]`` float32 in ``[0, 1]`` for the given indices (all images if None), for
        display; a model takes :func:`to_input` of the uint8 images (the same pixels in -1..1)."""
        return _unit(self.images if idx is None else self.images[idx])

    # ----- on-disk cache -------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the decoded tensors to ``path`` atomically (a ``.pt`` file of plain tensors)."""
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save({"images": self.images, "labels": self.labels, "class_names": list(self.class_names),
                    "name": self.name}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImageSet":
        """Read a cache written by :meth:`save` (``weights_only=True``: no code is unpickled)."""
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            return cls(d["images"], d["labels"], d["class_names"], name=d.get("name", "images"))
        except DataError:
            raise
        except Exception as e:  # corrupt or foreign file
            raise DataError(f"{path}: not a readable fewshot image cache ({e.__class__.__name__}: {e})") from e
