"""torch.distributed helpers for runs launched by ``torchrun`` (gloo on CPU, NCCL on CUDA).

Everything is a no-op in a single process (``WORLD_SIZE`` unset or 1): :func:`setup` returns
``(0, 1)``, :func:`shard` gives the whole range and :func:`gather_in_order` returns its input.
"""
from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

__all__ = ["setup", "rank", "world_size", "is_main", "shard", "gather_in_order"]


def setup(threads: int = 1) -> tuple:
    """Join the process group described by torchrun's env vars when ``WORLD_SIZE > 1``.

    Sets ``threads`` torch threads per rank (ranks share the machine's cores) and, on CUDA, the
    device ``LOCAL_RANK``. Returns ``(rank, world_size)``; idempotent.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        if threads:
            torch.set_num_threads(threads)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        atexit.register(_teardown)
    return dist.get_rank(), dist.get_world_size()


def _teardown() -> None:
    """Leave the process group before the interpreter exits. A gloo rank that exits with its group still
    up can abort in the C++ destructors ("terminate called without an active exception", SIGABRT) and
    torchrun then fails the whole command, although every rank finished its work."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def shard(n: int) -> range:
    """This rank's contiguous share of ``range(n)``; shares differ in size by at most one."""
    w, r = world_size(), rank()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def gather_in_order(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's ``local`` ``[len(shard(n))]`` (CPU) into ``[n]`` in index order."""
    w = world_size()
    if w == 1:
        return local
    size = -(-n // w)
    padded = torch.zeros(size, dtype=local.dtype)
    padded[:local.numel()] = local
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty(size, dtype=local.dtype, device=device) for _ in range(w)]
    dist.all_gather(parts, padded.to(device))
    base, extra = divmod(n, w)
    return torch.cat([p[:base + (1 if r < extra else 0)].cpu() for r, p in enumerate(parts)])
