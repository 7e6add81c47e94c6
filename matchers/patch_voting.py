"""Patch voting matcher: every query node votes for the classes of its nearest support nodes.

The image-to-class measure of DN4 (Li, Wang, Xu, Huo, Gao and Luo, CVPR 2019, "Revisiting Local
Descriptor based Image-to-Class Measure for Few-shot Learning") lets every local descriptor of a
query find its k nearest descriptors among a class's support descriptors. Here the search runs
over all support nodes of the episode at once and the neighbours cast soft class votes, so
patches that look like several classes spread their vote; ``discriminative=True`` further
down-weights patches whose best class barely beats the second best.
"""
from __future__ import annotations

import torch

from .base import Matcher, register_matcher
from .patch_metrics import node_cosine, node_labels, validate_node_episode

__all__ = ["PatchVotingMatcher"]

_CHUNK_ELEMENTS = 1 << 22  # similarity entries per chunk of query images (16 MB in float32)


@register_matcher("patch_voting")
class PatchVotingMatcher(Matcher):
    """Soft k-nearest-node voting over all support nodes of the episode.

    For query node ``m`` with cosine similarities ``s[m, j]`` to every support node ``j`` (all
    ``S*N`` of them), ``K(m)`` its ``k`` most similar support nodes and ``y[j]`` their classes:

    - vote: ``v[m, c] = sum over j in K(m) with y[j] = c of softmax_{j in K(m)}(s[m, j] / temperature)``
      (each node's votes sum to 1);
    - node weight: ``a[m] = 1``, or with ``discriminative=True`` the margin
      ``a[m] = g[m, c1] - g[m, c2]`` between the best and second-best class similarity, where
      ``g[m, c] = max over class-c support nodes j of s[m, j]`` (``a[m] = 1`` when way is 1). A
      patch as close to two classes gets ~0 weight, one close to a single class a large one;
    - vote share: ``p[c] = sum_m a[m] v[m, c] / sum_m a[m]`` (the mean over the query's nodes when
      all ``a[m] = 1``; ``p = 0``, hence equal logits, when every margin is 0);
    - logits: ``log((p[c] + smoothing) / (1 + way * smoothing))``, a log-probability.

    The votes are soft (softmax over the neighbours' similarities; the neighbour set is held
    fixed), so the logits are differentiable with respect to support and query features and the
    matcher can be trained with cross-entropy.

    Args:
        k: neighbours per query node (clamped to the number of support nodes ``S*N``).
        temperature: softmax temperature of the vote weights over the ``k`` neighbours.
        discriminative: weight each query node by its class margin (see above).
        smoothing: added to every vote share before the log, so a class with no vote has a
            finite logit; must be > 0.

    Example:
        >>> m = PatchVotingMatcher(k=3, discriminative=True)
        >>> support, labels, query = torch.randn(5, 49, 64), torch.arange(5), torch.randn(10, 49, 64)
        >>> m(support, labels, query).shape
        torch.Size([10, 5])
    """

    input = "nodes"
    accepts = (3,)

    def __init__(self, k: int = 5, temperature: float = 0.1, discriminative: bool = False,
                 smoothing: float = 1e-3):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not isinstance(discriminative, bool):
            raise ValueError(f"discriminative must be True or False, got {discriminative!r}")
        if not smoothing > 0:
            raise ValueError(f"smoothing must be > 0, got {smoothing!r}")
        self.k, self.temperature = k, float(temperature)
        self.discriminative, self.smoothing = discriminative, float(smoothing)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """support ``[S, N, D]``, support_labels ``[S]``, query ``[Q, M, D]`` -> logits ``[Q, way]``."""
        way = validate_node_episode(type(self).__name__, support, support_labels, query)
        labels = node_labels(support_labels, support.shape[1])  # [S*N]
        per_chunk = max(1, _CHUNK_ELEMENTS // (query.shape[1] * labels.numel()))
        shares = [self._vote_share(part, support, support_labels, labels, way)
                  for part in torch.split(query, per_chunk)]  # chunks of query images bound the memory
        share = torch.cat(shares)  # [Q, way], rows sum to 1 (or 0 when every node weight is 0)
        return torch.log((share + self.smoothing) / (1 + way * self.smoothing))

    def _vote_share(self, query, support, support_labels, labels, way):
        """query ``[q, M, D]`` -> vote share ``[q, way]``."""
        sim = node_cosine(query, support)  # [q, M, S*N]
        top, idx = sim.topk(min(self.k, labels.numel()), dim=-1)  # [q, M, k]
        weights = torch.softmax(top / self.temperature, dim=-1)
        votes = sim.new_zeros(*idx.shape[:2], way).scatter_add_(-1, labels[idx], weights)  # [q, M, way]
        if not self.discriminative or way == 1:
            return votes.mean(1)
        image_best = sim.unflatten(-1, (support.shape[0], -1)).max(-1).values  # [q, M, S]
        index = support_labels.long().expand_as(image_best)
        class_best = image_best.new_full((*image_best.shape[:2], way), -2.0).scatter_reduce(
            -1, index, image_best, reduce="amax", include_self=False)  # [q, M, way]
        best_two = class_best.topk(2, dim=-1).values
        margin = (best_two[..., 0] - best_two[..., 1]).unsqueeze(-1)  # [q, M, 1]
        return (margin * votes).sum(1) / margin.sum(1).clamp_min(torch.finfo(sim.dtype).tiny)
