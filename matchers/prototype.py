"""Prototype matcher (Snell, Swersky and Zemel, NeurIPS 2017, "Prototypical Networks for Few-shot Learning").

Each class is represented by the mean of its support embeddings; a query scores each class by
the negative squared Euclidean distance (or the cosine similarity) to its prototype.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from prototypes import class_means, squared_distances

from .base import Matcher, register_matcher, validate_episode

__all__ = ["PrototypeMatcher"]


@register_matcher("prototype")
class PrototypeMatcher(Matcher):
    """Score queries against class prototypes.

    Node-level inputs ``[n, N, D]`` are mean-pooled over nodes first.

    Args:
        metric: ``"euclidean"`` (logits = -squared distance) or ``"cosine"``.
        temperature: logits are divided by it (cosine similarities are in [-1, 1], so a
            temperature around 0.1 gives a usable softmax for training).

    Example:
        >>> m = PrototypeMatcher()
        >>> support, labels, query = torch.randn(5, 64), torch.arange(5), torch.randn(75, 64)
        >>> m(support, labels, query).shape
        torch.Size([75, 5])
    """

    def __init__(self, metric: Literal["euclidean", "cosine"] = "euclidean", temperature: float = 1.0):
        super().__init__()
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.metric, self.temperature = metric, float(temperature)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """support ``[S, D]`` or ``[S, N, D]``, support_labels ``[S]``, query ``[Q, D]`` or ``[Q, N, D]`` -> logits ``[Q, way]``."""
        way = validate_episode(support, support_labels, query)
        if support.dim() == 3:
            support, query = support.mean(1), query.mean(1)
        prototypes = class_means(support, support_labels.long(), way)  # [way, D]
        if self.metric == "cosine":
            logits = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).T
        else:
            logits = -squared_distances(query, prototypes)
        return logits / self.temperature
