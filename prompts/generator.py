"""The support-set generator shared by the support-conditioned prompts.

It maps an episode's support set to a fixed number of D-dim vectors in one forward pass:
class prototypes (mean support node feature per class) are mixed by a permutation-invariant
set encoder (mean over classes), and M learned queries read prompt vectors out of the
prototypes by attention. So the output size does not depend on way or shot.
"""
from __future__ import annotations

import torch
from torch import nn

from prototypes import class_means

__all__ = ["SupportGenerator", "PerBlockGenerated"]


class SupportGenerator(nn.Module):
    """Support nodes ``[S, N0, D]`` + labels ``[S]`` -> ``count`` vectors ``[count, out_dim]``.

    ``out = W_o( softmax(q W_k(P)^T / sqrt(h)) W_v(P) + MLP(mean(P)) )`` with P the ``[way, D]``
    prototypes, q the ``[count, h]`` learned queries. ``W_o`` starts at zero, so a freshly built
    generator outputs zeros (a prompt that starts as "no change" where that is the identity).

    Args:
        dim: D of the support features.
        count: number of vectors produced (M prompt nodes, or 1 for a shared feature prompt).
        out_dim: dimension of each vector (default D).
        hidden: width h of the attention / MLP.
    """

    def __init__(self, dim: int, count: int, out_dim: int = None, hidden: int = 64):
        super().__init__()
        out_dim = out_dim or dim
        self.count, self.hidden = count, hidden
        self.queries = nn.Parameter(torch.randn(count, hidden) * hidden ** -0.5)
        self.key = nn.Linear(dim, hidden)
        self.value = nn.Linear(dim, hidden)
        self.context = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, support_nodes: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
        """support_nodes ``[S, N0, D]`` or ``[S, D]``, support_labels ``[S]`` -> ``[count, out_dim]``."""
        pooled = support_nodes.mean(dim=1) if support_nodes.dim() == 3 else support_nodes  # [S, D]
        protos = class_means(pooled, support_labels)  # [way, D]
        attn = torch.softmax(self.queries @ self.key(protos).T / self.hidden ** 0.5, dim=-1)  # [count, way]
        h = attn @ self.value(protos) + self.context(protos.mean(dim=0))  # [count, hidden]
        return self.out(h)


class PerBlockGenerated:
    """Mixin for a prompt with one :class:`SupportGenerator` per prompted block (``self.generators``,
    keyed by ``str(block)``): :meth:`set_episode` runs each generator once per episode and
    :meth:`generated` gives block i's vectors. Put it before the :class:`~prompts.base.Prompt` base."""

    _episode = None

    def set_episode(self, support_nodes, support_labels):
        """support_nodes ``[S, N0, D]`` (read by every block's generator) or ``{block: [S, N0, D]}``,
        support_labels ``[S]``."""
        per_block = support_nodes if isinstance(support_nodes, dict) else dict.fromkeys(self.blocks, support_nodes)
        self._episode = {i: self.generators[str(i)](per_block[i], support_labels) for i in self.blocks}

    def clear_episode(self):
        self._episode = None

    def generated(self, i: int) -> torch.Tensor:
        """Block i's generated vectors ``[count, out_dim]`` of the current episode."""
        if self._episode is None:
            raise RuntimeError(f"{self.name}: call set_episode(support_nodes, support_labels) before the forward pass")
        return self._episode[i]
