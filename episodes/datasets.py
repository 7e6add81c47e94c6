"""Loading a registered dataset: :func:`load_splits`, with an optional decoded cache.

Importing this module imports every loader module, which registers its loader in
:mod:`episodes.catalog`; :func:`load_splits` looks it up, checks the root and, when asked, keeps a
decoded cache next to the data (keyed by a hash of the source files' names, sizes and
modification times, so a changed file invalidates it).
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
from pathlib import Path
from typing import Optional

from . import digits, folder, glyphs, miniimagenet, omniglot  # noqa: F401  (register the loaders)
from .catalog import Splits, dataset_info
from .errors import DataError
from .imageset import ImageSet

__all__ = ["load_splits"]

log = logging.getLogger(__name__)


def _source_key(root: Path) -> str:
    """Hash of the names, sizes and mtimes of every file under ``root`` (or of ``root`` itself)."""
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".fewshot-cache"))
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root) if p != root else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_splits(name: str, root: Optional[str | os.PathLike] = None, img_size: Optional[int] = None,
                cache: bool = False, **options) -> Splits:
    """Load dataset ``name`` as class-disjoint train/val/test splits.

    Args:
        name: a registered dataset (:func:`list_datasets`).
        root: file or folder the loader reads; needed unless the dataset is generated.
        img_size: images are resized to ``img_size x img_size`` (default: the dataset's own).
        cache: keep the decoded tensors in ``.fewshot-cache-<hash>-<size>.pt`` next to the data
            and reuse them while the source files are unchanged.
        **options: keyword arguments of the dataset's loader (e.g. omniglot's ``val_per_alphabet``);
            None means the loader's default and is not passed. A loader without the option refuses it.
    """
    info = dataset_info(name)
    options = {k: v for k, v in options.items() if v is not None}
    takes = inspect.signature(info.loader).parameters
    for option in options:
        if option not in takes:
            raise DataError(f"dataset {name!r} has no option --{option.replace('_', '-')} "
                            f"(its loader takes: {', '.join(list(takes)[2:]) or 'none'})")
    img_size = int(img_size or info.default_img_size)
    if img_size < 8:
        raise ValueError(f"img_size must be at least 8, got {img_size}")
    if info.needs_root:
        if root is None:
            raise DataError(f"dataset {name!r} reads files: give their location with --data-root")
        root = Path(root).expanduser()
        if not root.exists():
            raise DataError(f"{root}: no such file or directory (data root of dataset {name!r})")
    elif root is not None:
        log.info("dataset %s is generated; data root %s is not used", name, root)
        root = None
    cache_path = None
    if cache and root is not None:
        folder = root if root.is_dir() else root.parent
        opts = "".join(f"-{k}{v}" for k, v in sorted(options.items()))
        cache_path = folder / f".fewshot-cache-{name}-{_source_key(root)}-{img_size}{opts}.pt"
        if cache_path.exists():
            try:
                parts = [ImageSet.load(cache_path.with_suffix(f".{s}.pt")) for s in ("train", "val", "test")]
                return Splits(*parts)
            except (DataError, FileNotFoundError) as e:
                log.warning("ignoring unreadable cache %s: %s", cache_path, e)
    splits = info.loader(root, img_size, **options)
    if cache_path is not None:
        try:
            for s in ("train", "val", "test"):
                splits[s].save(cache_path.with_suffix(f".{s}.pt"))
            cache_path.touch()
        except OSError as e:  # read-only data folder: caching is an optimisation only
            log.warning("could not write cache next to %s: %s", root, e)
    return splits
