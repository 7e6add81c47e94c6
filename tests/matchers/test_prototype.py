import pytest
import torch

import matchers
from matchers import PrototypeMatcher


def brute_force(support, labels, query, metric):
    way = int(labels.max()) + 1
    logits = torch.empty(query.shape[0], way, dtype=torch.float64)
    for c in range(way):
        proto = sum(support[i].double() for i in range(len(labels)) if labels[i] == c) / int((labels == c).sum())
        for q in range(query.shape[0]):
            x = query[q].double()
            if metric == "euclidean":
                logits[q, c] = -((x - proto) ** 2).sum()
            else:
                logits[q, c] = (x @ proto) / (x.norm() * proto.norm())
    return logits


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("way,shot", [(2, 1), (5, 1), (5, 5), (20, 3)])
def test_logits_match_a_brute_force_loop(episode_tensors, metric, way, shot):
    support, labels, query, _ = episode_tensors(way, shot, 4, dim=24, seed=way * shot)
    got = PrototypeMatcher(metric)(support, labels, query)
    assert got.shape == (way * 4, way)
    torch.testing.assert_close(got.double(), brute_force(support, labels, query, metric), rtol=1e-4, atol=1e-4)


def test_node_level_inputs_are_mean_pooled(episode_tensors):
    support, labels, query, _ = episode_tensors(5, 2, 3, nodes=7, dim=8)
    torch.testing.assert_close(PrototypeMatcher()(support, labels, query),
                               PrototypeMatcher()(support.mean(1), labels, query.mean(1)))


def test_support_order_does_not_matter(episode_tensors):
    support, labels, query, _ = episode_tensors(5, 3, 2)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(PrototypeMatcher()(support, labels, query), PrototypeMatcher()(support[perm], labels[perm], query))


def test_temperature_divides_logits(episode_tensors):
    support, labels, query, _ = episode_tensors()
    torch.testing.assert_close(PrototypeMatcher("cosine", 0.1)(support, labels, query),
                               PrototypeMatcher("cosine")(support, labels, query) / 0.1)


def test_queries_equal_to_a_prototype_are_classified_as_its_class(episode_tensors):
    support, labels, _, _ = episode_tensors(5, 1, 1, dim=32)
    assert PrototypeMatcher()(support, labels, support).argmax(1).tolist() == list(range(5))


def test_gradients_reach_the_support_and_query(episode_tensors):
    support, labels, query, qlab = episode_tensors()
    support.requires_grad_(True)
    query.requires_grad_(True)
    torch.nn.functional.cross_entropy(PrototypeMatcher()(support, labels, query), qlab).backward()
    assert support.grad.abs().sum() > 0 and query.grad.abs().sum() > 0


def test_matcher_stores_nothing_between_calls(episode_tensors):
    m = PrototypeMatcher()
    before = dict(vars(m))
    m(*episode_tensors()[:3])
    assert dict(vars(m)).keys() == before.keys()


class TestBadInput:
    def test_mismatched_feature_dims_are_refused(self):
        with pytest.raises(ValueError, match="same rank and feature dim"):
            PrototypeMatcher()(torch.randn(5, 8), torch.arange(5), torch.randn(3, 9))

    def test_labels_out_of_range_are_refused(self):
        with pytest.raises(ValueError, match="0..way-1"):
            PrototypeMatcher()(torch.randn(2, 8), torch.tensor([-1, 0]), torch.randn(3, 8))

    def test_a_class_without_support_is_named(self):
        with pytest.raises(ValueError, match="class 1 has no support"):
            PrototypeMatcher()(torch.randn(3, 8), torch.tensor([0, 2, 2]), torch.randn(3, 8))

    def test_empty_query_is_refused(self):
        with pytest.raises(ValueError, match="query is empty"):
            PrototypeMatcher()(torch.randn(2, 8), torch.arange(2), torch.randn(0, 8))

    def test_label_count_must_match_support(self):
        with pytest.raises(ValueError, match=r"support_labels must be \[4\]"):
            PrototypeMatcher()(torch.randn(4, 8), torch.arange(3), torch.randn(3, 8))

    def test_float_labels_are_refused(self):
        with pytest.raises(TypeError, match="integer"):
            PrototypeMatcher()(torch.randn(2, 8), torch.tensor([0.0, 1.0]), torch.randn(3, 8))

    def test_unknown_metric_is_refused(self):
        with pytest.raises(ValueError, match="metric"):
            PrototypeMatcher("manhattan")


def test_registry_lists_valid_names_and_suggests_the_closest():
    assert matchers.get("prototype") is PrototypeMatcher
    with pytest.raises(ValueError, match=r"valid names: .*prototype.*Did you mean 'prototype'"):
        matchers.get("prototyp")
