"""Class prototypes: per-class means of support features and the squared distances to them.

The prototype maths of Prototypical Networks (Snell, Swersky and Zemel, NeurIPS 2017), kept in one
place for two ground-floor packages: ``matchers.prototype`` scores queries with it, and ``prompts``
builds its support-conditioned prompts (and the default scorer of its meta-learning functions)
from it. Like ``registry.py`` it imports nothing of the project, so both may use it without
importing each other.

Glossary: S support items, Q queries, way classes, D feature dim.

Example:
    >>> support, labels = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 0, 1])
    >>> class_means(support, labels).tolist()
    [[1.0, 0.0], [0.0, 4.0]]
    >>> prototype_logits(support, labels, torch.tensor([[1.0, 1.0]])).tolist()
    [[-1.0, -10.0]]
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["class_means", "squared_distances", "prototype_logits"]


def class_means(features: torch.Tensor, labels: torch.Tensor, way: Optional[int] = None) -> torch.Tensor:
    """Per-class mean of ``features: [S, ...]`` by ``labels: [S]`` in ``0..way-1`` -> ``[way, ...]``
    (one scatter, no loop; ``way`` defaults to ``labels.max() + 1``; a class with no item gets zeros)."""
    way = int(labels.max()) + 1 if way is None else way
    flat = features.reshape(features.shape[0], -1)
    sums = flat.new_zeros(way, flat.shape[1]).index_add_(0, labels, flat)
    counts = torch.bincount(labels, minlength=way).clamp_min(1).to(flat.dtype).unsqueeze(1)
    return (sums / counts).reshape(way, *features.shape[1:])


def squared_distances(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``||q - p||^2`` of query ``[Q, D]`` to prototypes ``[way, D]`` -> ``[Q, way]``, written out as
    ``||q||^2 - 2 q.p + ||p||^2``: no ``[Q, way, D]`` intermediate, and twice differentiable (MAML's
    second-order term needs the double backward that ``torch.cdist`` lacks)."""
    return query.pow(2).sum(-1, keepdim=True) - 2 * query @ prototypes.T + prototypes.pow(2).sum(-1)


def prototype_logits(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """ProtoNet's logits: support ``[S, D]``, support_labels ``[S]``, query ``[Q, D]`` -> the negative
    squared Euclidean distance of each query to each class mean, ``[Q, way]`` (what
    ``matchers.PrototypeMatcher()`` computes, without its input checks)."""
    return -squared_distances(query, class_means(support, support_labels))
