"""Delete nodes: drop the lowest-scoring patch nodes from the first prompted block on.

A dropped node is excluded from every later k-NN neighbourhood and from pooling (the backbone's
node mask). Scores are computed on the frozen, *unprompted* backbone's output nodes ``[B, N0, D]``
(one extra no-grad forward pass), where features are most semantic:

- ``scorer="learned"``: a small MLP per node; trained through the hard top-k by a straight-through
  estimator (kept nodes are multiplied by ``1 + s - stop_grad(s)``, s the sigmoid score, which is
  exactly 1 in the forward pass), with Gumbel noise on the scores in training mode;
- ``scorer="relevance"`` (no parameters, support-conditioned): a node's score is its largest cosine
  similarity to the episode's class prototypes, so background / off-class nodes go first;
- ``scorer="both"``: the sum.
``block_mask`` > 0 additionally deletes random square blocks of patch nodes in training mode only
(MAE-style masking, an augmentation for tuning / meta-training).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prototypes import class_means

from .base import Prompt, register_prompt

__all__ = ["DeleteNodes", "PrototypeRelevance", "block_masks", "topk_mask"]


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """``scores [B, N]`` -> bool ``[B, N]`` with True at each row's ``keep`` highest scores."""
    idx = scores.topk(keep, dim=1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)


def block_masks(batch: int, grid: tuple, ratio: float, generator: torch.Generator = None) -> torch.Tensor:
    """Random MAE-style block masks: bool ``[batch, h*w]``, False on roughly ``ratio`` of the nodes
    deleted in square blocks (side ~ sqrt(ratio) * grid side); at least one node is kept."""
    h, w = grid
    side_h, side_w = max(1, round(h * math.sqrt(ratio))), max(1, round(w * math.sqrt(ratio)))
    mask = torch.ones(batch, h, w, dtype=torch.bool)
    top = torch.randint(0, h - side_h + 1, (batch,), generator=generator)
    left = torch.randint(0, w - side_w + 1, (batch,), generator=generator)
    for b in range(batch):
        mask[b, top[b]:top[b] + side_h, left[b]:left[b] + side_w] = False
    mask = mask.flatten(1)
    mask[~mask.any(dim=1), 0] = True
    return mask


class PrototypeRelevance:
    """Support-conditioned node relevance for a deletion prompt: a node's largest cosine similarity
    to the episode's class prototypes (the mean of each class's support nodes). Used when the
    prompt's ``conditioned`` is True."""

    _prototypes = None  # [way, D], L2-normalised

    def set_episode(self, support_nodes, support_labels):
        if self.conditioned:
            self._prototypes = F.normalize(class_means(support_nodes.mean(dim=1), support_labels), dim=-1)

    def clear_episode(self):
        self._prototypes = None

    def relevance(self, nodes: torch.Tensor) -> torch.Tensor:
        """``[B, N0, D]`` -> ``[B, N0]``."""
        if self._prototypes is None:
            raise RuntimeError(f"{self.name}: call set_episode(support_nodes, support_labels) before the forward pass")
        return (F.normalize(nodes, dim=-1) @ self._prototypes.T).amax(dim=-1)


@register_prompt("delete")
class DeleteNodes(PrototypeRelevance, Prompt):
    """Keep the ``ceil(keep * N0)`` best-scoring patch nodes from the first prompted block on.

    Args:
        backbone: the frozen ViG. blocks: deletion applies from ``min(blocks)`` on.
        keep: fraction of patch nodes kept, in (0, 1].
        scorer: ``"learned"``, ``"relevance"`` or ``"both"``.
        block_mask: fraction of nodes deleted by random block masks in training mode (0: off).
        gumbel: Gumbel noise scale on the learned scores in training mode.
    """

    def __init__(self, backbone, blocks="all", keep: float = 0.75, scorer: str = "both",
                 block_mask: float = 0.0, gumbel: float = 1.0):
        super().__init__(backbone, blocks)
        if not 0 < keep <= 1:
            raise ValueError(f"delete: keep must be in (0, 1], got {keep}")
        if scorer not in ("learned", "relevance", "both"):
            raise ValueError(f"delete: scorer must be learned, relevance or both, got {scorer!r}")
        if not 0 <= block_mask < 1:
            raise ValueError(f"delete: block_mask must be in [0, 1), got {block_mask}")
        self.keep, self.scorer_kind, self.block_mask, self.gumbel = keep, scorer, block_mask, gumbel
        self.num_keep = max(1, math.ceil(keep * self.num_patch_nodes))
        self.grid = tuple(backbone.grid_size)
        self.conditioned = scorer != "learned"
        self.scorer = (nn.Sequential(nn.LayerNorm(self.dim), nn.Linear(self.dim, 32), nn.GELU(), nn.Linear(32, 1))
                       if scorer != "relevance" else None)
        self._keep_mask = None   # [B, N0] bool for the current forward pass
        self._ste = None         # [B, N0, 1] straight-through factor

    def scores(self, nodes: torch.Tensor) -> torch.Tensor:
        """Unprompted output nodes ``[B, N0, D]`` -> scores ``[B, N0]`` (higher = keep)."""
        s = nodes.new_zeros(nodes.shape[:2])
        if self.scorer is not None:
            s = s + self.scorer(nodes).squeeze(-1)
        if self.conditioned:
            s = s + self.relevance(nodes)
        return s

    def prepare(self, backbone, images: torch.Tensor, node_mask=None) -> None:
        """Score the patch nodes of ``images [B, C, H, W]`` and fix which are kept for the next
        prompted forward pass (used by :meth:`forward_nodes` and by the combined ``graph`` prompt)."""
        with torch.no_grad():
            plain = backbone.forward_features(images, node_mask=node_mask)
        s = self.scores(plain)  # [B, N0]
        noisy = s
        if self.training and self.scorer is not None and self.gumbel > 0:
            u = torch.rand_like(s).clamp_(1e-6, 1 - 1e-6)
            noisy = s - self.gumbel * torch.log(-torch.log(u))
        keep = topk_mask(noisy.detach() if node_mask is None else noisy.detach().masked_fill(~node_mask, -math.inf),
                         self.num_keep)
        if node_mask is not None:
            keep &= node_mask
        if self.training and self.block_mask > 0:
            extra = block_masks(images.shape[0], self.grid, self.block_mask).to(keep.device)
            keep = torch.where((keep & extra).any(dim=1, keepdim=True), keep & extra, keep)
        soft = torch.sigmoid(s)
        self._keep_mask, self._ste = keep, (1.0 + soft - soft.detach()).unsqueeze(-1)

    def release(self) -> None:
        """Forget the state set by :meth:`prepare`."""
        self._keep_mask = self._ste = None

    def forward_nodes(self, backbone, images, node_mask=None):
        self.prepare(backbone, images, node_mask)
        try:
            return super().forward_nodes(backbone, images, node_mask)
        finally:
            self.release()

    def block_hook(self, i, x, node_mask):
        if i != self.blocks[0] or self._keep_mask is None:
            return x, node_mask
        n0 = self.num_patch_nodes
        keep = self._keep_mask
        patch = x[:, :n0] * self._ste if self.scorer is not None else x[:, :n0]
        x = torch.cat([patch, x[:, n0:]], dim=1)
        mask = torch.cat([node_mask[:, :n0] & keep, node_mask[:, n0:]], dim=1)
        return x, mask

    def extra_repr(self):
        return (f"from_block={self.blocks[0]}, keep={self.keep}, scorer={self.scorer_kind!r}, "
                f"block_mask={self.block_mask}")
