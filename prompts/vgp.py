"""VGP (Ai, Liu and Zhou, ICML 2025, "Vision Graph Prompting via Semantic Low-Rank Decomposition").

Written from the paper's description (no code copied). Per prompted Grapher block, with rank r << D:

- SeLo-Graph prompt: M virtual nodes ``V [M, r]`` composed with a low-rank graph prompt
  ``P_g [r, D]``, ``V P_g [M, D]``, join the node set before the k-NN graph is built;
- SeLo-Node prompt: node features projected down to rank r by a learned ``D -> r`` map,
  mapped back up by a learnable ``P_n [r, D]`` and blended in: ``x <- x + a_n (down_n(x) P_n)``;
- SeLo-Edge prompt (inside the Grapher, via ``graph_hook``): neighbours' projected features
  ``h_j`` mapped to rank r by ``down_e``, averaged over each node's neighbourhood, mapped up by
  ``P_e [r, D]`` and blended in: ``h_i <- h_i + a_e mean_{j in N(i)} down_e(h_j) P_e``.
The prompts are fixed per dataset (not generated from the support set). ``P_n`` and ``P_e`` start at
zero, so a fresh VGP changes nothing but the virtual nodes; a_n, a_e are learnable scalars.
"""
from __future__ import annotations

import torch
from torch import nn

from .add_nodes import append_nodes
from .base import Prompt, register_prompt
from .modify_nodes import add_to_patch_nodes

__all__ = ["VGP"]


class _LowRankBlock(nn.Module):
    """One block's VGP parameters (D features, rank r, M virtual nodes)."""

    def __init__(self, dim: int, rank: int, num_nodes: int):
        super().__init__()
        self.virtual = nn.Parameter(torch.randn(num_nodes, rank) * rank ** -0.5)    # [M, r]
        self.graph_prompt = nn.Parameter(torch.randn(rank, dim) * 0.02)             # P_g [r, D]
        self.node_down = nn.Linear(dim, rank)                                       # D -> r
        self.node_prompt = nn.Parameter(torch.zeros(rank, dim))                     # P_n [r, D]
        self.edge_down = nn.Linear(dim, rank)                                       # D -> r
        self.edge_prompt = nn.Parameter(torch.zeros(rank, dim))                     # P_e [r, D]
        self.node_scale = nn.Parameter(torch.ones(()))
        self.edge_scale = nn.Parameter(torch.ones(()))

    def virtual_nodes(self) -> torch.Tensor:
        """``[M, D]`` = V P_g."""
        return self.virtual @ self.graph_prompt

    def node_delta(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, N, D]`` -> ``a_n down_n(x) P_n`` ``[B, N, D]``."""
        return self.node_scale * (self.node_down(x) @ self.node_prompt)

    def edge_delta(self, h: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """h ``[B, N, D]``, neighbours ``[B, N, k]`` -> ``a_e mean_j down_e(h_j) P_e`` ``[B, N, D]``."""
        low = self.edge_down(h)                                            # [B, N, r]
        batch = torch.arange(h.shape[0], device=h.device)[:, None, None]
        agg = low[batch, neighbours].mean(dim=2)                           # [B, N, r]
        return self.edge_scale * (agg @ self.edge_prompt)


@register_prompt("vgp")
class VGP(Prompt):
    """VGP per prompted block: virtual nodes (SeLo-Graph), low-rank node and edge prompts.

    Args:
        backbone: the frozen ViG. blocks: blocks to prompt. num_nodes: M virtual nodes per block.
        rank: r.
    """

    uses_graph_hook = True

    def __init__(self, backbone, blocks="all", num_nodes: int = 4, rank: int = 8):
        super().__init__(backbone, blocks)
        if num_nodes < 0 or rank < 1:
            raise ValueError(f"vgp: num_nodes must be >= 0 and rank >= 1, got {num_nodes} and {rank}")
        self.num_nodes, self.rank = num_nodes, rank
        self.per_block = nn.ModuleList([_LowRankBlock(self.dim, rank, num_nodes) for _ in self.blocks])

    def block_hook(self, i, x, node_mask):
        if i not in self.blocks:
            return x, node_mask
        return self.prompt_block(self.blocks.index(i), x, node_mask)

    def prompt_block(self, j: int, x: torch.Tensor, node_mask: torch.Tensor, shift=0.0, offsets=0.0):
        """VGP's node prompt and virtual nodes for the j-th prompted block: x ``[B, N, D]`` -> ``[B, N0 + M, D]``.

        ``shift`` (``[D]``) is added to every patch node and ``offsets`` (``[M, D]``) to the virtual
        nodes: zero for VGP, generated from the support set by :class:`~prompts.support_vgp.SupportVGP`.
        """
        p, n0 = self.per_block[j], self.num_patch_nodes
        x = add_to_patch_nodes(x, p.node_delta(x[:, :n0]) + shift, n0)
        if self.num_nodes:
            x, node_mask = append_nodes(x, node_mask, p.virtual_nodes() + offsets, n0)
        return x, node_mask

    def graph_hook(self, i, h, neighbours):
        if i not in self.blocks:
            return h
        return h + self.per_block[self.blocks.index(i)].edge_delta(h, neighbours)

    def extra_repr(self):
        return f"blocks={list(self.blocks)}, num_nodes={self.num_nodes}, rank={self.rank}"
