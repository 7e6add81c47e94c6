"""What every matcher shares: the episode validator and the name registry.

A matcher is a pure function object ``m(support, support_labels, query) -> logits``:
nothing about the support set is stored on the module between calls.

Glossary: S support items (way*shot), Q query items, N nodes per image, D feature dim.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import nn

from registry import Option, Registry, class_options

__all__ = ["Matcher", "validate_episode", "register_matcher", "get", "create", "list_matchers", "options"]


class Matcher(nn.Module):
    """Base class: subclasses implement ``forward(support, support_labels, query) -> [Q, way]``.

    ``accepts`` lists the input ranks a matcher takes: 2 for pooled ``[n, D]``,
    3 for node-level ``[n, N, D]``.
    """

    accepts: Tuple[int, ...] = (2, 3)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "training")


def validate_episode(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                     accepts: Tuple[int, ...] = (2, 3)) -> int:
    """Check an episode's tensors and return ``way``.

    Args:
        support: ``[S, D]`` or ``[S, N, D]`` float.
        support_labels: ``[S]`` integer labels in ``0..way-1``, every class present.
        query: same rank and trailing dim as ``support``: ``[Q, D]`` or ``[Q, N', D]``.
    Raises:
        ValueError / TypeError naming the argument and what must hold.
    """
    for name, t in (("support", support), ("query", query)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t))}")
        if t.dim() not in accepts:
            shapes = " or ".join({2: "[n, dim]", 3: "[n, nodes, dim]"}[r] for r in accepts)
            raise ValueError(f"{name} must be {shapes}, got shape {tuple(t.shape)}")
    if support.dim() != query.dim() or support.shape[-1] != query.shape[-1]:
        raise ValueError(f"support {tuple(support.shape)} and query {tuple(query.shape)} must have the same rank "
                         "and feature dim")
    if query.shape[0] == 0:
        raise ValueError("query is empty: an episode needs at least one query")
    if not isinstance(support_labels, torch.Tensor) or support_labels.dtype.is_floating_point \
            or support_labels.dtype == torch.bool:
        raise TypeError(f"support_labels must be an integer tensor, got {getattr(support_labels, 'dtype', type(support_labels))}")
    if support_labels.shape != (support.shape[0],):
        raise ValueError(f"support_labels must be [{support.shape[0]}] (one per support item), "
                         f"got {tuple(support_labels.shape)}")
    if support.shape[0] == 0:
        raise ValueError("support is empty")
    lo, hi = int(support_labels.min()), int(support_labels.max())
    if lo < 0:
        raise ValueError(f"support_labels must lie in 0..way-1, found {lo}")
    way = hi + 1
    counts = torch.bincount(support_labels.long(), minlength=way)
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        raise ValueError(f"support_labels must cover every class 0..{way - 1}; class {missing[0]} has no support")
    return way


_REGISTRY: Registry = Registry("matcher")


def register_matcher(name: str):
    """Class decorator: make the matcher available as ``matchers.get(name)`` and ``--matcher name``;
    its constructor's keyword arguments become ``--matcher-opt NAME=VALUE`` options (a duplicate
    name is a ``ValueError``)."""
    return _REGISTRY.register(name, attribute="registry_name")


def list_matchers() -> list:
    """Registered matcher names (``--matcher``), sorted."""
    return _REGISTRY.names()


def get(name: str) -> Callable[..., Matcher]:
    """The matcher class registered as ``name``; unknown names list the valid ones and the closest."""
    return _REGISTRY.get(name)


def options(name: str) -> Dict[str, Option]:
    """The options of matcher ``name`` (its constructor's keyword arguments), in signature order."""
    return class_options(get(name))


def create(name: str, **kwargs) -> Matcher:
    """``get(name)(**kwargs)``."""
    return get(name)(**kwargs)
