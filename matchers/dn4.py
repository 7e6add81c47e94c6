"""DN4's image-to-class measure, trainable end to end.

Li, Wang, Xu, Huo, Gao and Luo, "Revisiting Local Descriptor based Image-to-Class Measure for
Few-shot Learning", CVPR 2019. A query is compared with a *class*, not with single support images
or a prototype: every local descriptor (node) of the query finds its ``k`` most similar
descriptors among all nodes of that class's support images, and the similarities are summed.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .base import Matcher, register_matcher
from .class_topk import ClassTopKSum, class_minor, class_topk_scores
from .patch_metrics import node_cosine, validate_node_episode

__all__ = ["DN4Matcher"]

_CHUNK_ELEMENTS = 1 << 22  # similarity entries per chunk of query images, unequal shots (16 MB in float32)
_GROUP_ELEMENTS = 1 << 20  # node pairs per group of episodes scored together by bank_scorer


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
        temperature: logits are divided by it (its initial value when ``learn_temperature``).
        reduce: ``"sum"`` over query nodes (the paper) or ``"mean"``.
        learn_temperature: train the temperature with the model (a parameter ``log_temperature``,
            its logarithm, so it stays positive), as the learned scale of metric-based few-shot
            methods; off by default (the paper's fixed measure).

    Example:
        >>> m = DN4Matcher(k=3)
        >>> support, labels, query = torch.randn(10, 49, 64), torch.arange(5).repeat(2), torch.randn(8, 49, 64)
        >>> m(support, labels, query).shape
        torch.Size([8, 5])
    """

    input = "nodes"
    accepts = (3,)

    def __init__(self, k: int = 3, temperature: float = 1.0, reduce: str = "sum", learn_temperature: bool = False):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        self.k, self.temperature, self.reduce = k, float(temperature), reduce
        self.learn_temperature = bool(learn_temperature)
        if self.learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(self.temperature)))

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """support ``[S, N, D]``, support_labels ``[S]``, query ``[Q, M, D]`` -> logits ``[Q, way]``."""
        way = validate_node_episode(type(self).__name__, support, support_labels, query)
        counts = torch.bincount(support_labels.long(), minlength=way)
        self._check_k(int(counts.min()) * support.shape[1])
        if bool((counts == counts[0]).all()):  # every class has the same shots: the blocked path
            grouped = support[torch.argsort(support_labels, stable=True)]
            scores = _scores(F.normalize(grouped, dim=-1)[None], F.normalize(query, dim=-1)[None], way, self.k)[0]
        else:
            index = _class_node_index(support_labels, way, support.shape[1])  # [way, L], -1 = padding
            per_chunk = max(1, _CHUNK_ELEMENTS // (query.shape[1] * support.shape[0] * support.shape[1]))
            scores = torch.cat([self._padded_scores(part, support, index) for part in torch.split(query, per_chunk)])
        return self._logits(scores, query.shape[1])

    def bank_scorer(self, nodes: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
        """Scores many episodes drawn from one set of embedded images, as :meth:`forward` would.

        Every image's nodes are normalised once, here; the returned function gathers an episode's
        images by index and scores groups of episodes with batched matrix products.

        Args:
            nodes: ``[n, N, D]`` node features of the images.
        Returns:
            ``score(support [E, way*shot], query [E, Q], way) -> logits [E, Q, way]``: rows of
            ``nodes``, the support grouped by class (label ``i // shot``, as in an ``EpisodeBank``).

        Example:
            >>> score = DN4Matcher(k=3).bank_scorer(torch.randn(30, 49, 64))
            >>> score(torch.arange(10).view(2, 5), torch.arange(10, 30).view(2, 10), 5).shape
            torch.Size([2, 10, 5])
        """
        if nodes.dim() != 3 or not nodes.is_floating_point():
            raise ValueError(f"nodes must be floating-point [n, N, D] node features, got {nodes.dtype} "
                             f"{tuple(nodes.shape)}")
        unit = F.normalize(nodes, dim=-1)

        def score(support: torch.Tensor, query: torch.Tensor, way: int) -> torch.Tensor:
            if support.dim() != 2 or query.dim() != 2 or support.shape[0] != query.shape[0] \
                    or support.shape[1] % way:
                raise ValueError(f"support must be [E, way*shot] and query [E, Q] for the same E episodes, with "
                                 f"way={way} dividing the support count; got {tuple(support.shape)} and "
                                 f"{tuple(query.shape)}")
            self._check_k(support.shape[1] // way * unit.shape[1])
            pairs = support.shape[1] * unit.shape[1] * query.shape[1] * unit.shape[1]
            group = max(1, _GROUP_ELEMENTS // pairs)  # episodes per batched product: bounds the gathered nodes
            scores = [_scores(unit[support[i:i + group]], unit[query[i:i + group]], way, self.k)
                      for i in range(0, support.shape[0], group)]
            return self._logits(torch.cat(scores), unit.shape[1])
        return score

    def _check_k(self, limit: int) -> None:
        if self.k > limit:
            raise ValueError(f"k={self.k} exceeds the {limit} support nodes of the smallest class; use k <= {limit}")

    def _logits(self, scores: torch.Tensor, nodes: int) -> torch.Tensor:
        if self.reduce == "mean":
            scores = scores / nodes
        if self.learn_temperature:
            return scores / self.log_temperature.exp()
        return scores / self.temperature

    def _padded_scores(self, query, support, index):
        """query ``[q, M, D]`` -> image-to-class scores ``[q, way]`` for classes of unequal shots;
        ``index`` ``[way, L]`` flattened support nodes of each class, -1 = padding."""
        sim = node_cosine(query, support)  # [q, M, S*N]
        per_class = sim[..., index.clamp_min(0)].masked_fill(index < 0, float("-inf"))  # [q, M, way, L]
        return per_class.topk(self.k, dim=-1).values.sum(-1).sum(1)  # [q, way]


def _scores(support: torch.Tensor, query: torch.Tensor, way: int, k: int) -> torch.Tensor:
    """Unit node features, support grouped by class in equal shares: support ``[E, way*shot, N, D]``,
    query ``[E, Q, M, D]`` -> image-to-class scores ``[E, Q, way]`` (differentiable when an input needs it)."""
    e, q, m, d = query.shape
    support_nodes, query_nodes = class_minor(support, way), query.reshape(e, q * m, d)
    if torch.is_grad_enabled() and (support.requires_grad or query.requires_grad):
        return ClassTopKSum.apply(support_nodes, query_nodes, way, k, m)
    return class_topk_scores(support_nodes, query_nodes, way, k, m)


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
