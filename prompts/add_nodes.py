"""Add nodes: M prompt nodes join the node set of the prompted blocks before the k-NN graph.

Patch nodes may then pick prompt nodes as neighbours and exchange messages with them. The nodes
are generated from the episode's support set (:class:`~prompts.generator.SupportGenerator`, one
generator per prompted block), optionally plus M free learnable nodes (``free=True``). Prompt
nodes appended before block i are replaced (not accumulated) at the next prompted block, and
:meth:`Prompt.forward_nodes` drops them before pooling, so the output keeps N0 nodes.

Where the nodes sit. Prompt nodes reach the output only through the patch nodes that pick them as
k-NN neighbours (they are dropped before pooling, and the frozen backbone's BatchNorms use running
statistics), so a prompt node no patch node picks gets exactly zero gradient. Each image's prompt
nodes are therefore placed relative to that image's mean kept patch node entering the block (the
learned base and the generated vectors are offsets from it): they start inside the patch nodes'
cloud, where the graph finds them. Placed near the origin instead (small learned vectors, as they
were), they all project onto the direction of ``fc_in``'s bias after the k-NN's L2 normalisation,
and on a random ``test_vig`` no patch node picked one: the prompt never trained.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Prompt, register_prompt
from .generator import PerBlockGenerated, SupportGenerator

__all__ = ["AddNodes", "append_nodes"]


def append_nodes(x: torch.Tensor, node_mask: torch.Tensor, nodes: torch.Tensor, keep: int):
    """Keep the first ``keep`` nodes of ``x [B, N, D]`` and append ``nodes`` (``[M, D]`` shared by the
    batch, or ``[B, M, D]`` per image) -> ``(x [B, keep+M, D], mask [B, keep+M])``; appended nodes are
    never masked."""
    b = x.shape[0]
    nodes = nodes.to(x.dtype)
    x = torch.cat([x[:, :keep], nodes.expand(b, -1, -1) if nodes.dim() == 2 else nodes], dim=1)
    mask = torch.cat([node_mask[:, :keep], node_mask.new_ones(b, nodes.shape[-2])], dim=1)
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
        # generated nodes start at a learned base offset from the image's mean patch node (the generator's
        # output starts at zero)
        self.base = nn.Parameter(torch.randn(len(self.blocks), num_nodes, self.dim) * 0.02)
        self.free_nodes = (nn.Parameter(torch.randn(len(self.blocks), num_nodes, self.dim) * 0.02)
                           if free else None)

    def prompt_nodes(self, i: int) -> torch.Tensor:
        """The ``[M, D]`` (or ``[2M, D]`` with free nodes) prompt nodes of block i, as offsets from each
        image's mean kept patch node (see the module docstring)."""
        j = self.blocks.index(i)
        nodes = self.base[j] + self.generated(i)
        if self.free_nodes is not None:
            nodes = torch.cat([nodes, self.free_nodes[j]])
        return nodes

    def block_hook(self, i, x, node_mask):
        """x ``[B, N, D]``, node_mask ``[B, N]`` -> the patch nodes and, per image, the prompt nodes placed at
        its mean kept patch node plus :meth:`prompt_nodes`: ``([B, N0 + M, D], [B, N0 + M])``."""
        if i not in self.blocks:
            return x, node_mask
        n0 = self.num_patch_nodes
        kept = node_mask[:, :n0].unsqueeze(-1).to(x.dtype)  # [B, N0, 1]
        anchor = (x[:, :n0] * kept).sum(1, keepdim=True) / kept.sum(1, keepdim=True)  # [B, 1, D]
        return append_nodes(x, node_mask, anchor + self.prompt_nodes(i), n0)

    def extra_repr(self):
        return f"blocks={list(self.blocks)}, num_nodes={self.num_nodes}, free={self.free}"
