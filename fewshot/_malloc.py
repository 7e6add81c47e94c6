"""glibc malloc settings for training processes, set in-process at start-up.

A training step allocates the same large activation tensors every step. With glibc's defaults,
blocks above the (dynamic) mmap threshold are fresh ``mmap`` pages each time and the top of the
heap is given back to the OS after every step, so every step page-faults its activations in
again and the kernel zero-fills them: on a Conv-4 ProtoNet step that was about a third of the
step's time (``benchmarks/results/train_throughput.json``: ~20,000 minor faults per 5-way 1-shot
step). :func:`tune_malloc` does in the process what ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` do from the environment: blocks up to ``mmap_threshold`` come from the
heap and freed memory stays in the process for the next step.

The cost is that a process keeps its peak heap until it exits (the memory is reused, not
returned), which is what a training or evaluation command wants. Set ``FEWSHOT_MALLOC=default``
to keep glibc's own behaviour. Off glibc (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["tune_malloc", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 32 << 20
"""Blocks below this many bytes are served from the heap (glibc's upper limit for the setting on
64-bit systems: 32 MiB)."""
TRIM_THRESHOLD = (1 << 31) - 1
"""Free memory at the top of the heap is returned to the OS only above this many bytes (mallopt
takes an int: 2 GiB - 1)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_done = False


def tune_malloc() -> bool:
    """Apply the settings once per process; True when glibc accepted them (False off glibc, when
    ``FEWSHOT_MALLOC=default``, or when ``mallopt`` refused)."""
    global _done
    if _done:
        return True
    if os.environ.get("FEWSHOT_MALLOC", "").lower() == "default" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
