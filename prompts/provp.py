"""ProVP (Xu et al., 2023, "Progressive Visual Prompt Learning with Contrastive Feature Re-formation",
arXiv 2304.08386, IJCV 2024) on the ViG's patch graph.

Written from the paper, read against the authors' release (github.com/MCG-NJU/ProVP); no code copied.
Both parts, per prompted block i (j-th of the prompted blocks), with M prompt nodes ``[M, D]``:

- Progressive prompts. As in VPT-deep, M prompt nodes join the node set before block i's k-NN graph
  is built, replacing the ones there. Here they are ``P_j + alpha * O_{j-1}``: block i's own learned
  ``P_j [M, D]`` plus ``alpha`` times the prompt nodes that came *out of* the block before i
  (``O_{j-1} [B, M, D]``, the previous prompted block's prompt nodes after they went through the graph
  convolutions with that image's patch nodes). So prompts of different depths interact and an
  image's information travels down through the prompt nodes: from the second prompted block on the
  prompt nodes differ from image to image. The first prompted block gets ``P_0`` alone.
  ``alpha = 0`` is VPT-deep exactly (same parameters, same initialisation). The authors' release
  writes the mix as ``alpha O + (1 - alpha) P`` with ``alpha = 0.01``: the same family, ``P``
  scaled by ``1 - alpha``.
- Contrastive feature re-formation (``ref_weight > 0``, "ProVP-Ref"). Every forward pass with
  gradient also runs the frozen backbone *without* the prompt on the same images (no gradient) and
  keeps ``ref_weight * L_ref`` for :meth:`ProVP.regulariser`, the hook through which the engine adds
  a prompt's extra loss term (episodic training, test-time tuning's support loss, ``fewshot
  transfer``). ``L_ref`` is InfoNCE over the batch (:func:`reformation_loss`): each image's prompted
  pooled feature is pulled to the frozen backbone's feature of the same image and pushed from the
  frozen features of the batch's other images, cosine similarities over ``temperature``. It holds
  the prompted features near the frozen feature distribution, against the drift that makes
  prompted models generalise worse to unseen classes. The defaults (weight 1, temperature 1:
  plain cosine logits) are the authors' release's.

``provp`` is the progressive prompt alone (``ref_weight = 0``); ``provp-ref`` is the same class with
the re-formation on (``ref_weight = 1``).

Glossary: B images, N0 patch nodes, M prompt nodes per block, D feature dim.

Example:
    >>> prompt = prompts.create("provp-ref", backbone, num_nodes=4, alpha=0.1)
    >>> pooled = prompt.embed(backbone, images)                      # [B, D]
    >>> loss = task_loss(pooled) + prompt.regulariser()              # ref_weight * L_ref of that pass
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import Prompt, register_prompt

__all__ = ["ProVP", "ProVPRef", "reformation_loss"]


def reformation_loss(prompted: torch.Tensor, frozen: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Contrastive feature re-formation: InfoNCE of prompted features against frozen ones.

    ``-1/B sum_b log softmax_c(cos(prompted_b, frozen_c) / temperature)[b]``: image b's prompted feature
    is scored against every frozen feature of the batch, its own being the positive.

    Args:
        prompted: ``[B, D]`` pooled features with the prompt.
        frozen: ``[B, D]`` the frozen backbone's pooled features of the same images, same order.
        temperature: > 0.

    Returns:
        a scalar (float32 or float64, as the inputs; 0 for a batch of one image, which has no negative).
    """
    if prompted.shape != frozen.shape or prompted.dim() != 2:
        raise ValueError(f"reformation_loss: prompted and frozen features must both be [B, D], got "
                         f"{tuple(prompted.shape)} and {tuple(frozen.shape)}")
    dtype = torch.float64 if prompted.dtype == torch.float64 else torch.float32
    p = F.normalize(prompted.to(dtype), dim=-1)
    f = F.normalize(frozen.to(dtype), dim=-1)
    logits = p @ f.T / temperature                                        # [B, B]
    return F.cross_entropy(logits, torch.arange(p.shape[0], device=p.device))


@register_prompt("provp")
class ProVP(Prompt):
    """Progressive prompt nodes per prompted block, optionally with contrastive feature re-formation.

    Args:
        backbone: the frozen ViG.
        blocks: blocks to prompt, 'all' or indices such as 0,2 (each gets M prompt nodes).
        num_nodes: M prompt nodes per prompted block.
        alpha: weight of the previous block's output prompt nodes in the next block's prompt nodes
            (0: VPT-deep).
        ref_weight: weight of the contrastive feature re-formation loss (0: off).
        temperature: temperature of the re-formation loss's cosine logits.
    """

    def __init__(self, backbone, blocks="all", num_nodes: int = 4, alpha: float = 0.1, ref_weight: float = 0.0,
                 temperature: float = 1.0):
        super().__init__(backbone, blocks)
        checks = [(num_nodes >= 1, f"num_nodes must be >= 1, got {num_nodes}"),
                  (math.isfinite(alpha) and alpha >= 0, f"alpha must be a finite number >= 0, got {alpha}"),
                  (math.isfinite(ref_weight) and ref_weight >= 0,
                   f"ref_weight must be a finite number >= 0 (0: no re-formation loss), got {ref_weight}"),
                  (math.isfinite(temperature) and temperature > 0, f"temperature must be > 0, got {temperature}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{self.name}: {message}")
        self.num_nodes, self.alpha = int(num_nodes), float(alpha)
        self.ref_weight, self.temperature = float(ref_weight), float(temperature)
        # as VPT-deep's (same shape, same draw), so alpha = 0 is VPT-deep exactly
        self.nodes = nn.Parameter(torch.randn(len(self.blocks), num_nodes, self.dim) * 0.02)
        self._ref_loss: Optional[torch.Tensor] = None

    def prompt_nodes(self, j: int, previous: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """The prompt nodes ``[B, M, D]`` entering the j-th prompted block: ``P_j + alpha * previous``
        (``previous``: the ``[B, M, D]`` prompt nodes out of the block before, None at the first)."""
        nodes = self.nodes[j].unsqueeze(0).expand(batch, -1, -1)
        if previous is None or self.alpha == 0:
            return nodes
        return nodes.to(previous.dtype) + self.alpha * previous

    def block_hook(self, i, x, node_mask):
        if i not in self.blocks:
            return x, node_mask
        j, n0, m, b = self.blocks.index(i), self.num_patch_nodes, self.num_nodes, x.shape[0]
        previous = x[:, n0:n0 + m] if j > 0 else None  # appended before the last prompted block, carried since
        if previous is not None and previous.shape[1] != m:
            raise RuntimeError(f"{self.name}: block {i} received {x.shape[1] - n0} nodes after the {n0} patch nodes, "
                               f"expected the {m} prompt nodes of block {self.blocks[j - 1]}")
        nodes = self.prompt_nodes(j, previous, b).to(x.dtype)
        x = torch.cat([x[:, :n0], nodes], dim=1)
        mask = torch.cat([node_mask[:, :n0], node_mask.new_ones(b, m)], dim=1)
        return x, mask

    def forward_nodes(self, backbone, images, node_mask=None):
        """The prompted pass (:meth:`Prompt.forward_nodes`); with ``ref_weight > 0`` and gradient enabled,
        also the frozen backbone's unprompted pass on the same images (no gradient) and the
        re-formation loss of the two pooled features, kept for :meth:`regulariser`."""
        nodes, mask = super().forward_nodes(backbone, images, node_mask)
        self._ref_loss = None
        if self.ref_weight > 0 and torch.is_grad_enabled():
            with torch.no_grad():
                frozen = backbone.forward_head(backbone.forward_features(images, node_mask=node_mask), pre_logits=True,
                                               node_mask=node_mask)
            prompted = backbone.forward_head(nodes, pre_logits=True, node_mask=mask)
            self._ref_loss = reformation_loss(prompted, frozen, self.temperature)
        return nodes, mask

    def regulariser(self) -> torch.Tensor:
        """``ref_weight * L_ref`` of the last forward pass (0 when ``ref_weight`` is 0 or that pass ran
        without gradient)."""
        if self._ref_loss is None:
            return torch.zeros(())
        return self.ref_weight * self._ref_loss

    def extra_repr(self):
        return (f"blocks={list(self.blocks)}, num_nodes={self.num_nodes}, alpha={self.alpha}, "
                f"ref_weight={self.ref_weight}, temperature={self.temperature}")


@register_prompt("provp-ref")
class ProVPRef(ProVP):
    """ProVP-Ref: ProVP with the contrastive feature re-formation on (ref_weight 1), as :class:`ProVP` otherwise.

    Args:
        backbone: the frozen ViG.
        blocks: blocks to prompt, 'all' or indices such as 0,2 (each gets M prompt nodes).
        num_nodes: M prompt nodes per prompted block.
        alpha: weight of the previous block's output prompt nodes in the next block's prompt nodes
            (0: VPT-deep).
        ref_weight: weight of the contrastive feature re-formation loss (0: off).
        temperature: temperature of the re-formation loss's cosine logits.
    """

    def __init__(self, backbone, blocks="all", num_nodes: int = 4, alpha: float = 0.1, ref_weight: float = 1.0,
                 temperature: float = 1.0):
        super().__init__(backbone, blocks, num_nodes, alpha, ref_weight, temperature)
