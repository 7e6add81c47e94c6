"""Labelled splits for many-shot transfer (``fewshot transfer``): one class set, train / val / test images.

Unlike the episodic splits (:class:`~episodes.catalog.Splits`, class-disjoint), a transfer task has
*one* set of classes; every split holds images of those classes. Three sources:

- **VTAB-1k file lists** (:func:`load_vtab`): a folder holding ``train800.txt``, ``val200.txt``,
  ``train800val200.txt`` and ``test.txt``, one ``relative/path label`` a line (paths relative to
  the folder, labels ``0..C-1``), as the visual-prompt repositories ship them. Protocol ``final``
  trains on ``train800val200.txt`` and tests on ``test.txt``; ``tune`` trains on ``train800.txt``,
  selects on ``val200.txt`` and tests on ``test.txt``.
- **class folders** (:func:`load_class_folders`): ``root/train/<class>/``, ``root/test/<class>/`` and
  optionally ``root/val/<class>/``; the classes are train's folders.
- **an episodic dataset's test classes** (:func:`split_per_class`): each class's images split,
  seeded, into ``train_per_class`` training, ``val_per_class`` validation and the rest test images.

Every bad input is one :class:`~episodes.errors.DataError` naming the file and line (or folder):
a missing image, a label outside the class range, a class in val / test with no training image.

Glossary: N images, C channels, S pixels per side, K classes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence, Tuple

import torch

from .decode import decode_images
from .errors import DataError
from .folder import read_class_folders
from .imageset import ImageSet, fingerprint_tensors
from .sampler import episode_seed

__all__ = ["LabelledImages", "TransferSplits", "VTAB_LISTS", "VTAB_PROTOCOLS", "ListEntry", "read_file_list",
           "load_vtab", "load_class_folders", "split_per_class"]

VTAB_LISTS = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")
VTAB_PROTOCOLS = {"final": ("train800val200.txt", None, "test.txt"), "tune": ("train800.txt", "val200.txt", "test.txt")}
"""Protocol -> (train list, validation list or None, test list)."""


@dataclass(frozen=True)
class LabelledImages:
    """Images of (some of) K classes, decoded once; unlike :class:`ImageSet` a class may have no image.

    Args:
        images: ``[N, C, S, S]`` uint8.
        labels: ``[N]`` int64 in ``0..K-1``.
        num_classes: K.
        name: for messages (``vtab:/data/cifar/test.txt``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str = "images"

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be uint8 [N, C, S, S], got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        labels = torch.as_tensor(self.labels, dtype=torch.long)
        object.__setattr__(self, "labels", labels)
        if labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.images.shape[0]} images but {labels.numel()} labels")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise DataError(f"{self.name}: labels must lie in 0..{self.num_classes - 1}, found "
                            f"{int(labels.min())}..{int(labels.max())}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def fingerprint(self) -> str:
        """Content hash of images and labels: two runs scored on the same test set share it."""
        return fingerprint_tensors(self.images, self.labels, extra=str(self.num_classes))


@dataclass(frozen=True)
class TransferSplits:
    """The labelled splits of one transfer task.

    Args:
        train / val / test: :class:`LabelledImages` (``val`` None when the source has none).
        class_names: K readable class names.
        source: where the data came from, for messages and tracking.
    """

    train: LabelledImages
    val: Optional[LabelledImages]
    test: LabelledImages
    class_names: Sequence[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple:
        """``(C, S, S)``."""
        return tuple(self.train.images.shape[1:])

    def describe(self) -> str:
        parts = [f"{s} {len(getattr(self, s))}" for s in ("train", "val", "test") if getattr(self, s) is not None]
        return f"{self.source}: {self.num_classes} classes, images {', '.join(parts)}, image {self.image_shape}"


# ----- VTAB-1k file lists -----------------------------------------------------------------------
@dataclass(frozen=True)
class ListEntry:
    """One line of a file list: the image path (relative to the list's folder), its label, the line number."""

    path: str
    label: int
    line: int


def read_file_list(path: str | os.PathLike) -> List[ListEntry]:
    """Parse a ``relative/path label`` file list (blank lines skipped; a path may contain spaces).

    Raises:
        DataError: ``<file>:<line>: ...`` for a line without a label, a label that is not a
            non-negative integer, or a path that is absolute or leaves the folder (``..``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file list not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read file list ({e.__class__.__name__}: {e})") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected 'relative/path label', got {line!r}")
        rel, label = parts
        if not label.isdigit():
            raise DataError(f"{path}:{number}: label {label!r} is not a non-negative integer; "
                            f"expected 'relative/path label'")
        norm = rel.replace("\\", "/")
        if norm.startswith("/") or ".." in PurePosixPath(norm).parts or (len(norm) > 1 and norm[1] == ":"):
            raise DataError(f"{path}:{number}: image path {rel!r} must be relative to {path.parent} "
                            f"(no absolute path, no '..')")
        entries.append(ListEntry(norm, int(label), number))
    if not entries:
        raise DataError(f"{path}: the file list is empty; expected 'relative/path label' lines")
    return entries


def _decode_list(list_path: Path, entries: Sequence[ListEntry], img_size: int, channels: int) -> torch.Tensor:
    root = list_path.parent
    for e in entries:
        if not (root / e.path).is_file():
            raise DataError(f"{list_path}:{e.line}: image {root / e.path} not found")
    items = [(f"{list_path}:{e.line}: {root / e.path}", root / e.path) for e in entries]
    return decode_images(items, img_size, channels)


def load_vtab(root: str | os.PathLike, protocol: str = "final", img_size: int = 224, channels: int = 3
              ) -> TransferSplits:
    """A VTAB-1k task folder (see the module docstring) as :class:`TransferSplits`.

    The classes are ``0..K-1`` with K = 1 + the largest training label. A validation or test label
    above it is *outside the class range*; one below it with no training image is a *class missing
    from train*; both are errors naming the file and line.
    """
    root = Path(root)
    if protocol not in VTAB_PROTOCOLS:
        raise ValueError(f"VTAB protocol must be one of {', '.join(VTAB_PROTOCOLS)}, got {protocol!r}")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; a VTAB-1k task folder holds {', '.join(VTAB_LISTS)}")
    names = VTAB_PROTOCOLS[protocol]
    for name in names:
        if name is not None and not (root / name).is_file():
            raise DataError(f"{root}: no {name} (protocol {protocol!r} reads {', '.join(n for n in names if n)}; "
                            f"a VTAB-1k task folder holds {', '.join(VTAB_LISTS)})")
    lists = {name: read_file_list(root / name) for name in names if name is not None}
    train_name = names[0]
    train_labels = {e.label for e in lists[train_name]}
    num_classes = max(train_labels) + 1
    for name in names[1:]:
        if name is None:
            continue
        for e in lists[name]:
            if e.label >= num_classes:
                raise DataError(f"{root / name}:{e.line}: label {e.label} is outside the class range "
                                f"0..{num_classes - 1} of {root / train_name}")
            if e.label not in train_labels:
                raise DataError(f"{root / name}:{e.line}: class {e.label} has no training image in "
                                f"{root / train_name}; every class of {name} must be in the training list")
    parts = {}
    for name, entries in lists.items():
        images = _decode_list(root / name, entries, img_size, channels)
        parts[name] = LabelledImages(images, torch.tensor([e.label for e in entries]), num_classes,
                                     name=f"vtab:{root / name}")
    val = parts[names[1]] if names[1] is not None else None
    return TransferSplits(parts[train_name], val, parts[names[2]], [str(c) for c in range(num_classes)],
                          source=f"vtab {root} ({protocol})")


# ----- class folders ----------------------------------------------------------------------------
def load_class_folders(root: str | os.PathLike, img_size: int = 224, channels: int = 3) -> TransferSplits:
    """``root/{train,test}/<class>/`` (and optionally ``root/val/<class>/``) as :class:`TransferSplits`.

    The classes are the folders of ``train/``, sorted; a ``val/`` or ``test/`` class folder with no
    namesake in ``train/`` is a :class:`DataError` naming it.
    """
    root = Path(root)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root}: no {split}/ folder; class folders for transfer are "
                            f"root/train/<class>/, root/test/<class>/ and optionally root/val/<class>/")
    splits = {s: read_class_folders(root / s) for s in ("train", "val", "test") if (root / s).is_dir()}
    classes = list(splits["train"])
    index = {c: i for i, c in enumerate(classes)}
    parts = {}
    for split, folders in splits.items():
        for name in folders:
            if name not in index:
                raise DataError(f"{root / split / name}: class {name!r} has no folder in {root / 'train'}; "
                                f"every class of {split}/ must also be in train/")
        items = [(str(f), f) for name in folders for f in folders[name]]
        labels = [index[name] for name in folders for _ in folders[name]]
        parts[split] = LabelledImages(decode_images(items, img_size, channels), torch.tensor(labels), len(classes),
                                      name=f"folders:{root / split}")
    return TransferSplits(parts["train"], parts.get("val"), parts["test"], classes, source=f"class folders {root}")


# ----- an episodic dataset's test classes -------------------------------------------------------
def split_per_class(images: ImageSet, train_per_class: int, val_per_class: int = 0, seed: int = 0,
                    source: Optional[str] = None) -> TransferSplits:
    """Split every class of ``images`` (e.g. an episodic dataset's test split) into train / val / test.

    Class c's images are shuffled by a generator seeded from ``(seed, c)``; the first
    ``train_per_class`` go to train, the next ``val_per_class`` to val (None when 0), the rest to test.

    Raises:
        DataError: naming the first class with too few images to leave one for test.
    """
    if train_per_class < 1:
        raise ValueError(f"--train-per-class must be >= 1, got {train_per_class}")
    if val_per_class < 0:
        raise ValueError(f"--val-per-class must be >= 0, got {val_per_class}")
    need = train_per_class + val_per_class
    chosen: Tuple[list, list, list] = ([], [], [])
    for c in range(images.num_classes):
        idx = images.indices_of(c)
        if idx.numel() <= need:
            raise DataError(f"{images.name}: class {images.class_names[c]!r} has {idx.numel()} images; "
                            f"--train-per-class {train_per_class} and --val-per-class {val_per_class} leave none "
                            f"to test (lower them)")
        perm = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(episode_seed(seed, c)))]
        for part, sel in zip(chosen, (perm[:train_per_class], perm[train_per_class:need], perm[need:])):
            part.append(sel)

    def make(parts, split):
        idx = torch.cat(parts)
        return LabelledImages(images.images[idx], images.labels[idx], images.num_classes,
                              name=f"{images.name}[{split}]")

    val = make(chosen[1], "val") if val_per_class else None
    return TransferSplits(make(chosen[0], "train"), val, make(chosen[2], "test"), list(images.class_names),
                          source=source or f"{images.name}, {train_per_class} train / {val_per_class} val per class "
                                           f"(seed {seed})")
