"""Atomic checkpoint files, loaded with ``torch.load(weights_only=True)``.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the old one: a kill at any moment leaves either the old or the new file whole.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_atomic", "load_checkpoint", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never seen half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict safely (``weights_only=True``: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a loadable fewshot checkpoint ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path}: not a fewshot checkpoint (no 'model' entry)")
    return obj
