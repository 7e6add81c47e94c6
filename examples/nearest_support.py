"""A matcher written in one file: each class scores a query by its most similar support image.

The nearest-neighbour rule (Cover and Hart, IEEE Trans. Information Theory 1967, "Nearest neighbor
pattern classification") applied per class, with cosine similarity, so that it stays
differentiable and can be trained with cross-entropy (unlike ``matchers.KNNMatcher``'s votes).
With one shot it is the cosine prototype matcher; with several, ``reduce="max"`` lets a query
match the one support image it resembles most instead of their mean.

Everything a matcher needs is in this file: subclass :class:`matchers.Matcher`, register it
with ``@register_matcher(name)``, take its options as typed keyword arguments of ``__init__``
(validated there: the CLI also checks command-line values against these type hints), and implement ``forward(support, support_labels, query) -> logits [Q, way]``
without storing anything on ``self``.

Use it from Python (the import registers it)::

    import sys; sys.path.insert(0, "examples")
    from nearest_support import NearestSupportMatcher
    logits = NearestSupportMatcher(temperature=0.05)(support, support_labels, query)

and from the command line: this file runs the ``fewshot`` CLI once the matcher is registered::

    python examples/nearest_support.py train --matcher nearest_support --episodes 100 --no-track
    python examples/nearest_support.py eval --run-dir runs/<that run> --matcher nearest_support

Glossary: S = way*shot support items, Q query items, N nodes per image, D feature dim.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from matchers import Matcher, register_matcher, validate_episode

__all__ = ["NearestSupportMatcher"]


@register_matcher("nearest_support")
class NearestSupportMatcher(Matcher):
    """Class score = the highest (or mean) cosine similarity between the query and the class's support items.

    Node-level inputs ``[n, N, D]`` are mean-pooled over nodes first.

    Args:
        temperature: logits = class score / temperature (cosine scores lie in [-1, 1]).
        reduce: how a class's shots are combined: ``"max"`` (the nearest support item) or ``"mean"``.

    Example:
        >>> m = NearestSupportMatcher(temperature=0.1)
        >>> support, labels, query = torch.randn(10, 64), torch.arange(5).repeat(2), torch.randn(15, 64)
        >>> m(support, labels, query).shape
        torch.Size([15, 5])
    """

    input = "pooled"  # the engine hands over pooled embeddings [n, D] ("nodes": [n, N, D])

    def __init__(self, temperature: float = 0.1, reduce: Literal["max", "mean"] = "max"):
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
        self.temperature, self.reduce = float(temperature), reduce

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """support ``[S, D]`` or ``[S, N, D]``, support_labels ``[S]``, query ``[Q, D]`` or ``[Q, N, D]``
        -> logits ``[Q, way]``."""
        way = validate_episode(support, support_labels, query)
        if support.dim() == 3:
            support, query = support.mean(1), query.mean(1)
        sim = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).T  # [Q, S]
        index = support_labels.long().expand_as(sim)
        scores = sim.new_zeros(sim.shape[0], way).scatter_reduce(  # [Q, way], one op over all classes
            1, index, sim, reduce="amax" if self.reduce == "max" else "mean", include_self=False)
        return scores / self.temperature


if __name__ == "__main__":  # the fewshot CLI, with this matcher registered
    from fewshot.cli import main

    main()
