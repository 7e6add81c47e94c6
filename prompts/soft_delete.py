"""Soft node deletion: a learned keep probability per patch node, held to a sparsity target.

``delete`` keeps a fixed fraction of nodes and learns its scores through a straight-through
estimator; on omniglot-minimal that fixed cut cost 7.6 / 13 points. Here nothing is cut during
training. Every patch node gets a keep probability ``p = sigmoid(score)``, the score read from
the frozen, *unprompted* backbone's output nodes ``[B, N0, D]`` (a small MLP, plus the node's
largest cosine similarity to the episode's class prototypes with ``relevance=True``). From the
first prompted block on:

- the patch node's features are multiplied by ``p`` (a down-weighted node moves its neighbours less);
- the embedding is the ``p``-weighted mean of the output patch nodes instead of the plain mean;
- the loss gains ``sparsity * (mean p - keep)^2`` (:meth:`SoftDeleteNodes.regulariser`), so the
  average keep probability is pulled to ``keep`` while the scorer decides *which* nodes lose weight;
- in eval mode with ``hard=True``, nodes with ``p < 0.5`` are deleted as ``delete`` deletes them
  (never a neighbour, not pooled; a row keeps at least its most probable node).

The scorer starts at ``p = sigmoid(3) = 0.95`` for every node (zero weights in its last layer), so
an untrained prompt is nearly the identity.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Prompt, register_prompt
from .delete_nodes import PrototypeRelevance

__all__ = ["SoftDeleteNodes"]

_START_LOGIT = 3.0


@register_prompt("soft-delete")
class SoftDeleteNodes(PrototypeRelevance, Prompt):
    """Learned soft keep probabilities ``p [B, N0]`` on the patch nodes, with a sparsity target.

    Args:
        backbone: the frozen ViG. blocks: the soft mask applies from ``min(blocks)`` on.
        keep: target mean keep probability, in (0, 1].
        sparsity: weight of ``(mean p - keep)^2`` in the loss (0: no target).
        relevance: add each node's largest cosine similarity to the class prototypes to its score
            (support-conditioned).
        hard: in eval mode, delete the nodes with ``p < 0.5``.
    """

    def __init__(self, backbone, blocks="all", keep: float = 0.5, sparsity: float = 1.0, relevance: bool = False,
                 hard: bool = True):
        super().__init__(backbone, blocks)
        if not 0 < keep <= 1:
            raise ValueError(f"soft-delete: keep must be in (0, 1], got {keep}")
        if not sparsity >= 0:
            raise ValueError(f"soft-delete: sparsity must be >= 0, got {sparsity}")
        self.keep, self.sparsity, self.hard = float(keep), float(sparsity), bool(hard)
        self.conditioned = bool(relevance)
        self.scorer = nn.Sequential(nn.LayerNorm(self.dim), nn.Linear(self.dim, 32), nn.GELU(), nn.Linear(32, 1))
        nn.init.zeros_(self.scorer[-1].weight)
        nn.init.constant_(self.scorer[-1].bias, _START_LOGIT)
        self._p = None      # [B, N0] keep probabilities of the current forward pass
        self._last_p = None  # the last pass's, for the regulariser

    def keep_probability(self, nodes: torch.Tensor) -> torch.Tensor:
        """Unprompted output nodes ``[B, N0, D]`` -> keep probabilities ``[B, N0]``."""
        s = self.scorer(nodes).squeeze(-1)
        if self.conditioned:
            s = s + self.relevance(nodes)
        return torch.sigmoid(s)

    def forward_nodes(self, backbone, images, node_mask=None):
        with torch.no_grad():
            plain = backbone.forward_features(images, node_mask=node_mask)
        p = self.keep_probability(plain)
        if node_mask is not None:
            p = p * node_mask
        self._p = self._last_p = p
        if not self.training and self.hard:
            kept = p >= 0.5
            best = torch.zeros_like(kept).scatter_(1, p.argmax(dim=1, keepdim=True), True)
            kept = torch.where(kept.any(dim=1, keepdim=True), kept, best)
            node_mask = kept if node_mask is None else node_mask & kept
        try:
            return super().forward_nodes(backbone, images, node_mask)
        finally:
            self._p = None

    def block_hook(self, i, x, node_mask):
        if i != self.blocks[0] or self._p is None:
            return x, node_mask
        n0 = self.num_patch_nodes
        return torch.cat([x[:, :n0] * self._p.unsqueeze(-1).to(x.dtype), x[:, n0:]], dim=1), node_mask

    def embed(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``p``-weighted mean of the output patch nodes (over the kept ones in hard eval mode) -> ``[B, D]``."""
        nodes, mask = self.forward_nodes(backbone, images)
        w = self._last_p if mask is None else self._last_p * mask
        pooled = (nodes.float() * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-6)
        return backbone.forward_head(pooled.unsqueeze(1), pre_logits=True).float()

    def regulariser(self) -> torch.Tensor:
        """``sparsity * (mean p - keep)^2`` over the last forward pass's patch nodes (0 before any)."""
        if self._last_p is None or self.sparsity == 0:
            return torch.zeros(())
        return self.sparsity * (self._last_p.mean() - self.keep) ** 2

    def extra_repr(self) -> str:
        return f"blocks={list(self.blocks)}, keep={self.keep}, sparsity={self.sparsity}, hard={self.hard}"
