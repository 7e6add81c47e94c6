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

__all__ = ["SupportGenerator"]


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
