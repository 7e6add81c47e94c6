"""VPT-style free virtual nodes (baseline): M learnable prompt nodes, the same for every episode.

``vpt`` (deep) appends its own M nodes before every prompted block; ``vpt-shallow`` appends M
nodes only before the first prompted block and lets them travel through the later blocks like
patch nodes (as VPT-shallow's tokens go through every layer). They are dropped before pooling.
"""
from __future__ import annotations

import torch
from torch import nn

from .add_nodes import append_nodes
from .base import Prompt, register_prompt

__all__ = ["VPTDeep", "VPTShallow"]


@register_prompt("vpt")
class VPTDeep(Prompt):
    """Deep VPT: ``[len(blocks), M, D]`` free nodes, replaced at every prompted block.

    Args:
        backbone: the frozen ViG. blocks: blocks to prompt. num_nodes: M.
    """

    def __init__(self, backbone, blocks="all", num_nodes: int = 4):
        super().__init__(backbone, blocks)
        if num_nodes < 1:
            raise ValueError(f"{self.name}: num_nodes must be >= 1, got {num_nodes}")
        self.num_nodes = num_nodes
        self.nodes = nn.Parameter(torch.randn(len(self.blocks), num_nodes, self.dim) * 0.02)

    def block_hook(self, i, x, node_mask):
        if i not in self.blocks:
            return x, node_mask
        return append_nodes(x, node_mask, self.nodes[self.blocks.index(i)], self.num_patch_nodes)

    def extra_repr(self):
        return f"blocks={list(self.blocks)}, num_nodes={self.num_nodes}"


@register_prompt("vpt-shallow")
class VPTShallow(Prompt):
    """Shallow VPT: ``[M, D]`` free nodes appended once, before the first prompted block.

    Args:
        backbone: the frozen ViG. blocks: only the first listed block is used (default 0).
        num_nodes: M.
    """

    def __init__(self, backbone, blocks="0", num_nodes: int = 4):
        super().__init__(backbone, blocks)
        if num_nodes < 1:
            raise ValueError(f"vpt-shallow: num_nodes must be >= 1, got {num_nodes}")
        self.blocks = self.blocks[:1]
        self.num_nodes = num_nodes
        self.nodes = nn.Parameter(torch.randn(num_nodes, self.dim) * 0.02)

    def block_hook(self, i, x, node_mask):
        if i != self.blocks[0]:
            return x, node_mask
        return append_nodes(x, node_mask, self.nodes, self.num_patch_nodes)

    def extra_repr(self):
        return f"block={self.blocks[0]}, num_nodes={self.num_nodes}"
