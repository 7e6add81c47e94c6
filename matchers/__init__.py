"""Matchers score query images against an episode's support set.

Every matcher is called as ``m(support, support_labels, query) -> logits`` with
``support: [S, D]`` or ``[S, N, D]``, ``support_labels: [S]`` in ``0..way-1`` and
``query: [Q, D]`` or ``[Q, N, D]``; it returns raw logits ``[Q, way]`` and stores nothing.

Glossary: S = way*shot support items, Q query items, N nodes (patches) per image, D feature dim.

Example:
    >>> from matchers import PrototypeMatcher
    >>> logits = PrototypeMatcher(metric="cosine")(support, support_labels, query)
"""
from .base import Matcher, create, get, list_matchers, register_matcher, validate_episode
from .dn4 import DN4Matcher
from .hungarian import HungarianMatcher
from .knn import KNNMatcher
from .patch_voting import PatchVotingMatcher
from .prototype import PrototypeMatcher

__all__ = ["DN4Matcher", "HungarianMatcher", "KNNMatcher", "Matcher", "PatchVotingMatcher", "PrototypeMatcher", "create", "get",
           "list_matchers", "register_matcher", "validate_episode"]
