"""Any class-per-folder image tree (the layout of torchvision's ``ImageFolder``).

Two layouts of ``root``:

- ``root/{train,val,test}/<class>/<images>``: the splits are given; a class may appear in one
  split only.
- ``root/<class>/<images>``: the classes, sorted by name, are shuffled with a fixed seed (0) and
  split 60 / 20 / 20 % into train / val / test (each split at least one class, so at least
  three classes are needed).

A class folder's images are all files below it (subfolders included) with a suffix in
:data:`~episodes.decode.IMAGE_SUFFIXES` (case-insensitive); other files and hidden entries are
ignored. Images are read as RGB and resized to ``img_size``.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from .catalog import Splits, register_dataset
from .decode import IMAGE_SUFFIXES, decode_images, list_image_files
from .errors import DataError
from .imageset import ImageSet

__all__ = ["SPLIT_NAMES", "SPLIT_FRACTIONS", "read_class_folders", "split_classes", "load_folder"]

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SEED = 0

ClassFiles = Dict[str, List[Path]]  # class name -> image files


def read_class_folders(folder: Path) -> ClassFiles:
    """The classes of a class-per-folder tree: ``{class_name: [image files, sorted]}``, sorted by name.

    An empty class folder, a symlink loop or a broken link raises :class:`DataError` naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected <class>/<images> folders inside")
    classes: ClassFiles = {}
    stray = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and not entry.exists():
            raise DataError(f"{entry}: broken or looping symlink; fix or remove the link")
        if entry.is_dir():
            files = list_image_files(entry)
            if not files:
                raise DataError(f"{entry}: empty class folder (no {' '.join(IMAGE_SUFFIXES)} files); "
                                f"remove it or add its images")
            classes[entry.name] = files
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            stray.append(entry.name)
    if stray:
        log.warning("%s: %d image files outside class folders are not used (%s, ...)", folder, len(stray), stray[0])
    if not classes:
        raise DataError(f"{folder}: no class folders; expected {folder}/<class>/<images>")
    return classes


def split_classes(names: Sequence[str], fractions: Sequence[float] = SPLIT_FRACTIONS,
                  seed: int = SEED) -> Tuple[List[str], List[str], List[str]]:
    """Split class names into train / val / test with a fixed seed, each split non-empty.

    Returns:
        three sorted lists; val and test get ``round(fraction * n)`` classes (at least one each).
    """
    names = sorted(names)
    if len(names) < 3:
        raise DataError(f"a class-per-folder tree needs at least 3 classes to split into train/val/test, "
                        f"found {len(names)}: {names}; add classes or give train/, val/ and test/ folders")
    random.Random(seed).shuffle(names)
    n_val = max(1, round(fractions[1] * len(names)))
    n_test = max(1, round(fractions[2] * len(names)))
    n_train = len(names) - n_val - n_test
    if n_train < 1:  # only for unusual fractions
        raise DataError(f"split fractions {tuple(fractions)} leave no training class out of {len(names)}")
    return (sorted(names[:n_train]), sorted(names[n_train:n_train + n_val]), sorted(names[n_train + n_val:]))


def _build_set(classes: ClassFiles, names: Sequence[str], img_size: int, split: str) -> ImageSet:
    items = [(str(f), f) for c in names for f in classes[c]]
    labels = torch.cat([torch.full((len(classes[c]),), i, dtype=torch.long) for i, c in enumerate(names)])
    return ImageSet(decode_images(items, img_size, channels=3), labels, list(names), name=f"folder/{split}")


def _given_splits(root: Path, img_size: int) -> Splits:
    per_split = {s: read_class_folders(root / s) for s in SPLIT_NAMES}
    owner: Dict[str, str] = {}
    for split in SPLIT_NAMES:
        for name in per_split[split]:
            if name in owner:
                raise DataError(f"{root / split / name}: class {name!r} is also in {root / owner[name] / name}; "
                                f"train/val/test must have different classes")
            owner[name] = split
    return Splits(*[_build_set(per_split[s], list(per_split[s]), img_size, s) for s in SPLIT_NAMES])


@register_dataset("folder", needs_root=True, default_img_size=84, in_chans=3,
                  description="class-per-folder images: root/{train,val,test}/<class>/ or root/<class>/ "
                              "(split 60/20/20 by class, seed 0)")
def load_folder(root: Path, img_size: int) -> Splits:
    """Load a class-per-folder tree (see the module docstring for the two layouts).

    Returns:
        :class:`Splits` of uint8 ``[N, 3, img_size, img_size]`` image sets, classes named by folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected root/<class>/<images> or root/{{train,val,test}}/<class>/")
    present = [s for s in SPLIT_NAMES if (root / s).is_dir()]
    if len(present) == len(SPLIT_NAMES):
        return _given_splits(root, img_size)
    if present:
        absent = [s for s in SPLIT_NAMES if s not in present]
        raise DataError(f"{root}: found split folder(s) {', '.join(present)}/ but not {', '.join(absent)}/; "
                        f"give all of train/, val/ and test/, or one folder per class with no split folders")
    classes = read_class_folders(root)
    parts = split_classes(list(classes))
    log.info("folder %s: %d/%d/%d train/val/test classes (seed %d)", root, *map(len, parts), SEED)
    return Splits(*[_build_set(classes, p, img_size, s) for p, s in zip(parts, SPLIT_NAMES)])
