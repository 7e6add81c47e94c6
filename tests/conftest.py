"""Shared fixtures: the real data in ../shared/data and seeded synthetic episodes."""
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__import__("os").environ.get("FEWSHOT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (override with FEWSHOT_SHARED_DATA)."""
    if not (SHARED_DATA / "omniglot").is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}: the repository expects ../shared/data beside it")
    return SHARED_DATA


@pytest.fixture
def episode_tensors():
    """A factory of seeded random episodes: ``make(way, shot, query, nodes=None, dim=16, seed=0)``.

    Returns ``support [way*shot(, nodes), dim]``, ``support_labels [way*shot]``,
    ``query [way*query(, nodes), dim]``, ``query_labels [way*query]``.
    """

    def make(way=5, shot=1, query=3, nodes=None, dim=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        tail = (dim,) if nodes is None else (nodes, dim)
        support = torch.randn(way * shot, *tail, generator=g)
        query_t = torch.randn(way * query, *tail, generator=g)
        support_labels = torch.arange(way).repeat_interleave(shot)
        query_labels = torch.arange(way).repeat_interleave(query)
        return support, support_labels, query_t, query_labels

    return make
