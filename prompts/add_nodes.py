"""Add nodes: M prompt nodes join the node set of the prompted blocks before the k-NN graph.

Patch nodes may then pick prompt nodes as neighbours and exchange messages with them. The nodes
are generated from the episode's support set (:class:`~prompts.generator.SupportGenerator`, one
generator per prompted block), optionally plus M free learnable nodes (``free=True``). Prompt
nodes appended before block i are replaced (not accumulated) at the next prompted block, and
:meth:`Prompt.forward_nodes` drops them before pooling, so the output keeps N0 nodes.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Prompt, register_prompt
from .generator import PerBlockGenerated, SupportGenerator

__all__ = ["AddNodes", "append_nodes"]


def append_nodes(x: torch.Tensor, node_mask: torch.Tensor, nodes: torch.Tensor, keep: int):
    """Keep the first ``keep`` nodes of ``x [B, N, D]`` and append ``nodes [M, D]`` (shared by the
    batch) -> ``(x [B, keep+M, D], mask [B, keep+M])``; appended nodes are never masked."""
    b = x.shape[0]
    x = torch.cat([x[:, :keep], nodes.to(x.dtype).unsqueeze(0).expand(b, -1, -1)], dim=1)
    mask = torch.cat([node_mask[:, :keep], node_mask.new_ones(b, nodes.shape[0])], dim=1)
    return x, mask


@register_prompt("add")
class AddNodes(PerBlockGenerated, Prompt):
    """Support-generated prompt nodes (plus optional free nodes) in the prompted blocks.

    Args:
        backbone: the frozen ViG.
        blocks: blocks to prompt (see :func:`prompts.base.parse_blocks`).
        num_nodes: M generated nodes per prompted block.
        free: also append M free learnable nodes per block (so 2M in all).
        hidden: generator width.
    """

    conditioned = True

    def __init__(self, backbone, blocks="all", num_nodes: int = 4, free: bool = False, hidden: int = 64):
        super().__init__(backbone, blocks)
        if num_nodes < 1:
            raise ValueError(f"add: num_nodes must be >= 1, got {num_nodes}")
        self.num_nodes, self.free = num_nodes, free
        self.generators = nn.ModuleDict({str(i): SupportGenerator(self.dim, num_nodes, hidden=hidden)
                                         for i in self.blocks})
        # generated nodes start at a learned base point (the generator's offset starts at zero)
        self.base = nn.Parameter(torch.randn(len(self.blocks), num_nodes, self.dim) * 0.02)
        self.free_nodes = (nn.Parameter(torch.randn(len(self.blocks), num_nodes, self.dim) * 0.02)
                           if free else None)

    def prompt_nodes(self, i: int) -> torch.Tensor:
        """The ``[M, D]`` (or ``[2M, D]`` with free nodes) prompt nodes of block i."""
        j = self.blocks.index(i)
        nodes = self.base[j] + self.generated(i)
        if self.free_nodes is not None:
            nodes = torch.cat([nodes, self.free_nodes[j]])
        return nodes

    def block_hook(self, i, x, node_mask):
        if i not in self.blocks:
            return x, node_mask
        return append_nodes(x, node_mask, self.prompt_nodes(i), self.num_patch_nodes)

    def extra_repr(self):
        return f"blocks={list(self.blocks)}, num_nodes={self.num_nodes}, free={self.free}"
