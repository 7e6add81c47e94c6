"""DN4's image-to-class measure, trainable end to end.

Li, Wang, Xu, Huo, Gao and Luo, "Revisiting Local Descriptor based Image-to-Class Measure for
Few-shot Learning", CVPR 2019. A query is compared with a *class*, not with single support images
or a prototype: every local descriptor (node) of the query finds its ``k`` most similar
descriptors among all nodes of that class's support images, and the similarities are summed.
"""
from __future__ import annotations

import torch

from .base import Matcher, register_matcher
from .patch_metrics import node_cosine, validate_node_episode

__all__ = ["DN4Matcher"]

_CHUNK_ELEMENTS = 1 << 22  # similarity entries per chunk of query images (16 MB in float32)


@register_matcher("dn4")
class DN4Matcher(Matcher):
    """Image-to-class k-nearest-node measure (DN4).

    With ``s[m, j]`` the cosine similarity of query node ``m`` to support node ``j`` and
    ``top_k`` the ``k`` largest over the nodes ``j`` of all class-``c`` support images:

        ``score[c] = sum over query nodes m of sum of top_k_j(s[m, j] for j in class c)``

    ``reduce="mean"`` (not the paper's default ``"sum"``) divides by the number of query nodes (the same ranking, logits on a scale
    that does not grow with the node count); logits are ``score / temperature``. Unlike patch
    voting, classes never compete for a node's neighbours, and the measure is differentiable in
    the similarities it selects.

    Args:
        k: neighbours per query node within each class (DN4 uses 3); at most the smallest class's
            node count ``shot*N``.
        temperature: logits are divided by it.
        reduce: ``"sum"`` over query nodes (the paper) or ``"mean"``.

    Example:
        >>> m = DN4Matcher(k=3)
        >>> support, labels, query = torch.randn(10, 49, 64), torch.arange(5).repeat(2), torch.randn(8, 49, 64)
        >>> m(support, labels, query).shape
        torch.Size([8, 5])
    """

    input = "nodes"
    accepts = (3,)

    def __init__(self, k: int = 3, temperature: float = 1.0, reduce: str = "sum"):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        self.k, self.temperature, self.reduce = k, float(temperature), reduce

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """support ``[S, N, D]``, support_labels ``[S]``, query ``[Q, M, D]`` -> logits ``[Q, way]``."""
        way = validate_node_episode(type(self).__name__, support, support_labels, query)
        counts = torch.bincount(support_labels.long(), minlength=way)
        if self.k > int(counts.min()) * support.shape[1]:
            limit = int(counts.min()) * support.shape[1]
            raise ValueError(f"k={self.k} exceeds the {limit} support nodes of the smallest class; use k <= {limit}")
        if bool((counts == counts[0]).all()):  # every class has the same shots: group them, no gather needed
            support = support[torch.argsort(support_labels, stable=True)]
            index = None
        else:
            index = _class_node_index(support_labels, way, support.shape[1])  # [way, L], -1 = padding
        per_chunk = max(1, _CHUNK_ELEMENTS // (query.shape[1] * support.shape[0] * support.shape[1]))
        scores = torch.cat([self._scores(part, support, index, way) for part in torch.split(query, per_chunk)])
        if self.reduce == "mean":
            scores = scores / query.shape[1]
        return scores / self.temperature

    def _scores(self, query, support, index, way):
        """query ``[q, M, D]`` -> image-to-class scores ``[q, way]``; ``index`` None when ``support`` is grouped
        by class in equal shares."""
        sim = node_cosine(query, support)  # [q, M, S*N]
        if index is None:
            per_class = sim.unflatten(-1, (way, -1))  # [q, M, way, shot*N], a view
        else:
            per_class = sim[..., index.clamp_min(0)].masked_fill(index < 0, float("-inf"))  # [q, M, way, L]
        return per_class.topk(self.k, dim=-1).values.sum(-1).sum(1)  # [q, way]


def _class_node_index(support_labels: torch.Tensor, way: int, nodes: int) -> torch.Tensor:
    """``[way, L]`` flattened support-node indices of each class (``L`` = the largest class's
    ``shots * nodes``), padded with -1 where a class has fewer shots."""
    labels = support_labels.long()
    counts = torch.bincount(labels, minlength=way)
    order = torch.argsort(labels, stable=True)  # support images grouped by class
    rank = torch.arange(len(labels), device=labels.device) - (torch.cumsum(counts, 0) - counts)[labels[order]]
    image_index = torch.full((way, int(counts.max())), -1, dtype=torch.long, device=labels.device)
    image_index[labels[order], rank] = order  # [way, max shots]
    node = torch.arange(nodes, device=labels.device)
    flat = image_index.unsqueeze(-1) * nodes + node  # [way, shots, N]
    flat = torch.where(image_index.unsqueeze(-1) >= 0, flat, torch.full_like(flat, -1))
    return flat.flatten(1)
