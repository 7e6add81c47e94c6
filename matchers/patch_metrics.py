"""Patch (node) level helpers shared by the node-level matchers.

Glossary: S support images, Q query images, N nodes per support image, M nodes per query image
(``N'`` in the package docstring), D feature dim, way classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import validate_episode

__all__ = ["validate_node_episode", "node_cosine", "pair_cosine", "shot_mean", "node_labels"]


def validate_node_episode(matcher: str, support: torch.Tensor, support_labels: torch.Tensor,
                          query: torch.Tensor) -> int:
    """:func:`validate_episode` for matchers that need node-level ``[n, nodes, dim]`` features; returns ``way``.

    Pooled ``[n, dim]`` inputs are refused with a message saying why (and what to use instead),
    as are images with no nodes.
    """
    for name, t in (("support", support), ("query", query)):
        if isinstance(t, torch.Tensor) and t.dim() == 2:
            raise ValueError(f"{matcher} needs node-level features: {name} must be [n, nodes, dim], got pooled "
                             f"shape {tuple(t.shape)}. Pass the backbone's node features (the engine does so "
                             "when matcher.input == 'nodes'), or use a pooled matcher such as 'prototype' or 'knn'.")
    way = validate_episode(support, support_labels, query, accepts=(3,))
    for name, t in (("support", support), ("query", query)):
        if t.shape[1] == 0:
            raise ValueError(f"{name} has no nodes (shape {tuple(t.shape)}): every image needs at least one node")
    return way


def node_cosine(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query node with every support node, flattened over images.

    Args:
        query: ``[Q, M, D]``; support: ``[S, N, D]``.
    Returns:
        ``[Q, M, S*N]``: entry ``[q, m, s*N + n]`` is ``cos(query[q, m], support[s, n])``.
    """
    q = F.normalize(query, dim=-1)
    s = F.normalize(support, dim=-1).reshape(-1, support.shape[-1])
    return q @ s.T


def pair_cosine(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Node-to-node cosine similarities for every (query image, support image) pair in one batched op.

    Args:
        query: ``[Q, M, D]``; support: ``[S, N, D]``.
    Returns:
        ``[Q, S, M, N]``, possibly a strided view of one ``[Q*M, S*N]`` matrix product.
    """
    return torch.einsum("qmd,snd->qsmn", F.normalize(query, dim=-1), F.normalize(support, dim=-1))


def shot_mean(scores: torch.Tensor, support_labels: torch.Tensor, way: int) -> torch.Tensor:
    """Mean of per-support-image scores ``[Q, S]`` over each class's shots -> ``[Q, way]`` (one scatter)."""
    labels = support_labels.long()
    sums = scores.new_zeros(scores.shape[0], way).index_add_(1, labels, scores)
    return sums / torch.bincount(labels, minlength=way).to(scores.dtype)


def node_labels(support_labels: torch.Tensor, nodes: int) -> torch.Tensor:
    """Labels of the flattened support nodes: ``[S]`` -> ``[S*nodes]`` (node ``s*nodes + n`` has label ``s``'s)."""
    return support_labels.long().repeat_interleave(nodes)
