"""Modify nodes: feature prompts added to the patch node features of the prompted blocks.

- ``gpf`` (GPF, Fang et al. 2023): one learnable vector p per block, ``x_n <- x_n + p``.
- ``gpf-plus``: a learnable basis ``P [K, D]`` per block and attention weights per node,
  ``x_n <- x_n + softmax(x_n A)^T P`` with ``A [D, K]``.
- ``modify`` (ours, support-conditioned): GPF-plus whose basis is generated from the episode's
  support set, ``P = P_0 + G(support)`` (:class:`~prompts.generator.SupportGenerator`), plus a
  generated shared vector.
Only the first N0 (patch) nodes are changed; prompt nodes appended by other prompts are left alone.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Prompt, register_prompt
from .generator import PerBlockGenerated, SupportGenerator

__all__ = ["GPF", "GPFPlus", "SupportGPF", "add_to_patch_nodes"]


def add_to_patch_nodes(x: torch.Tensor, delta: torch.Tensor, n0: int) -> torch.Tensor:
    """``x [B, N, D]`` + ``delta`` (``[D]`` or ``[B, n0, D]``) on the first ``n0`` nodes only."""
    if x.shape[1] == n0:
        return x + delta
    return torch.cat([x[:, :n0] + delta, x[:, n0:]], dim=1)


@register_prompt("gpf")
class GPF(Prompt):
    """GPF: ``[len(blocks), D]`` shared feature prompts (zero-initialised).

    Args:
        backbone: the frozen ViG. blocks: blocks to prompt.
    """

    def __init__(self, backbone, blocks="all"):
        super().__init__(backbone, blocks)
        self.vectors = nn.Parameter(torch.zeros(len(self.blocks), self.dim))

    def block_hook(self, i, x, node_mask):
        if i not in self.blocks:
            return x, node_mask
        return add_to_patch_nodes(x, self.vectors[self.blocks.index(i)], self.num_patch_nodes), node_mask


def basis_prompt(x: torch.Tensor, attn: nn.Linear, basis: torch.Tensor) -> torch.Tensor:
    """Per-node prompt ``softmax(attn(x)) @ basis``: x ``[B, N, D]``, basis ``[K, D]`` -> ``[B, N, D]``."""
    return torch.softmax(attn(x), dim=-1) @ basis


@register_prompt("gpf-plus")
class GPFPlus(Prompt):
    """GPF-plus: per block a basis ``[K, D]`` (zero-initialised) and a ``D -> K`` attention.

    Args:
        backbone: the frozen ViG. blocks: blocks to prompt. basis_size: K.
    """

    def __init__(self, backbone, blocks="all", basis_size: int = 4):
        super().__init__(backbone, blocks)
        if basis_size < 1:
            raise ValueError(f"{self.name}: basis_size must be >= 1, got {basis_size}")
        self.basis_size = basis_size
        self.basis = nn.Parameter(torch.zeros(len(self.blocks), basis_size, self.dim))
        self.attn = nn.ModuleList([nn.Linear(self.dim, basis_size) for _ in self.blocks])

    def _basis(self, j: int) -> torch.Tensor:
        return self.basis[j]

    def block_hook(self, i, x, node_mask):
        if i not in self.blocks:
            return x, node_mask
        j, n0 = self.blocks.index(i), self.num_patch_nodes
        delta = basis_prompt(x[:, :n0], self.attn[j], self._basis(j))
        return add_to_patch_nodes(x, delta, n0), node_mask


@register_prompt("modify")
class SupportGPF(PerBlockGenerated, GPFPlus):
    """Support-conditioned GPF-plus: basis ``P_0 + G(support)`` and a generated shared vector.

    Args:
        backbone: the frozen ViG. blocks: blocks to prompt. basis_size: K. hidden: generator width.
    """

    conditioned = True

    def __init__(self, backbone, blocks="all", basis_size: int = 4, hidden: int = 64):
        super().__init__(backbone, blocks, basis_size)
        # one generator per block emits K basis offsets + 1 shared vector
        self.generators = nn.ModuleDict({str(i): SupportGenerator(self.dim, basis_size + 1, hidden=hidden)
                                         for i in self.blocks})

    def block_hook(self, i, x, node_mask):
        if i not in self.blocks:
            return x, node_mask
        j, n0 = self.blocks.index(i), self.num_patch_nodes
        gen = self.generated(i)  # [K + 1, D]
        delta = basis_prompt(x[:, :n0], self.attn[j], self.basis[j] + gen[:-1]) + gen[-1]
        return add_to_patch_nodes(x, delta, n0), node_mask
