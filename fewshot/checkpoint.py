"""Atomic checkpoint files, loaded with ``torch.load(weights_only=True)``.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the old one: a kill at any moment leaves either the old or the new file whole.
A temporary file left by a killed writer (``.<name>.tmp<pid>``) is removed by the next save.

Test hook: ``FEWSHOT_TEST_SAVE_DELAY=<seconds>`` sleeps inside every write, after the data is in
the temporary file and before it is renamed, so that a test can kill a run mid-write
(tests/reliability/test_kill_resume.py). Unset, it costs nothing.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from models.checkpoints import CheckpointReadError, read_checkpoint

__all__ = ["save_atomic", "load_checkpoint", "CheckpointError"]

_TEST_SAVE_DELAY = os.environ.get("FEWSHOT_TEST_SAVE_DELAY")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never seen half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if _TEST_SAVE_DELAY:
            time.sleep(float(_TEST_SAVE_DELAY))
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
    """Load a checkpoint dict safely (``weights_only=True``: tensors and plain containers only) through
    the project's one reader, :func:`models.checkpoints.read_checkpoint`.

    Raises:
        CheckpointError: one line naming the file: not found, or "not a loadable fewshot checkpoint"
            with what the file is instead (empty, text, truncated, pickled objects, no ``model`` entry).
    """
    try:
        obj = read_checkpoint(path)
    except CheckpointReadError as e:
        if e.kind == "missing":
            raise CheckpointError(f"{e.path}: checkpoint not found") from None
        raise CheckpointError(f"{e.path}: not a loadable fewshot checkpoint ({e.reason})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path}: not a fewshot checkpoint (no 'model' entry)")
    return obj
