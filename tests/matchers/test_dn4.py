"""DN4's image-to-class measure against a loop written from the paper's definition."""
import pytest
import torch

import matchers
from matchers import DN4Matcher


def dn4_reference(support, labels, query, k):
    """score[q, c] = sum over query nodes m of the sum of the k largest cos(query[q, m], x)
    over the nodes x of every class-c support image; loops only."""
    way = int(labels.max()) + 1
    out = torch.zeros(query.shape[0], way, dtype=torch.float64)
    for q in range(query.shape[0]):
        for c in range(way):
            nodes = torch.cat([support[s] for s in range(len(labels)) if int(labels[s]) == c])  # [shot*N, D]
            for m in range(query.shape[1]):
                sims = sorted((float(torch.nn.functional.cosine_similarity(query[q, m], x, dim=0, eps=1e-8))
                               for x in nodes), reverse=True)
                out[q, c] += sum(sims[:k])
    return out


def episode(way=3, shot=2, nodes=5, dim=8, query=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(way * shot, nodes, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(way).repeat(shot)[torch.randperm(way * shot, generator=g)]  # shuffled order
    return support, labels, torch.randn(query, nodes + 2, dim, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_sum_matches_the_loop_reference(k):
    support, labels, query = episode()
    assert torch.allclose(DN4Matcher(k=k)(support, labels, query), dn4_reference(support, labels, query, k), atol=1e-9)


def test_mean_and_temperature_rescale_the_sum():
    support, labels, query = episode()
    ref = dn4_reference(support, labels, query, 3)
    got = DN4Matcher(k=3, reduce="mean", temperature=0.5)(support, labels, query)
    assert torch.allclose(got, ref / query.shape[1] / 0.5, atol=1e-9)


def test_classes_with_different_shot_counts():
    support, _, query = episode(way=3, shot=2)
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    assert torch.allclose(DN4Matcher(k=4)(support, labels, query), dn4_reference(support, labels, query, 4), atol=1e-9)


def test_k_larger_than_a_class_is_refused_with_the_limit():
    support, labels, query = episode(shot=1, nodes=5)
    with pytest.raises(ValueError, match="use k <= 5"):
        DN4Matcher(k=6)(support, labels, query)


def test_pooled_features_are_refused():
    with pytest.raises(ValueError, match="nodes"):
        DN4Matcher()(torch.randn(3, 8), torch.arange(3), torch.randn(2, 8))


@pytest.mark.parametrize("bad", [dict(k=0), dict(k=2.5), dict(temperature=0), dict(reduce="max")])
def test_bad_options(bad):
    with pytest.raises(ValueError):
        DN4Matcher(**bad)


def test_gradients_reach_support_and_query():
    support, labels, query = (t.float() if t.is_floating_point() else t for t in episode())
    support.requires_grad_(True)
    query.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(DN4Matcher()(support, labels, query), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert support.grad.abs().sum() > 0 and query.grad.abs().sum() > 0


def test_registered_and_reads_nodes():
    assert matchers.get("dn4") is DN4Matcher and DN4Matcher.input == "nodes"


def test_chunking_does_not_change_scores(monkeypatch):
    import matchers.dn4 as dn4
    support, labels, query = episode(query=7)
    full = DN4Matcher()(support, labels, query)
    monkeypatch.setattr(dn4, "_CHUNK_ELEMENTS", 1)
    assert torch.allclose(DN4Matcher()(support, labels, query), full, rtol=1e-12, atol=1e-12)
