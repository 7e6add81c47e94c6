import pytest
import torch
import torch.nn.functional as F

from matchers import KNNMatcher
from matchers.knn import faiss_search


def reference_neighbours(support, query, k, metric):
    """``torch.cdist`` + ``topk``: neighbour distances (Euclidean or ``1 - cos``) and indices, nearest first."""
    support, query = support.double(), query.double()
    if metric == "cosine":
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    dist, idx = torch.cdist(query, support).topk(k, dim=1, largest=False)
    return (dist ** 2 / 2 if metric == "cosine" else dist), idx  # |a - b|^2 = 2 - 2 cos for unit vectors


def reference_logits(dist, idx, labels, way, weighted):
    """Votes and the documented tie bonus, one neighbour at a time."""
    n, k = idx.shape
    logits = torch.zeros(n, way, dtype=torch.float64)
    for row in range(n):
        seen = set()
        for rank in range(k):
            c = int(labels[idx[row, rank]])
            logits[row, c] += 1 / (1 + float(dist[row, rank])) if weighted else 1.0
            if c not in seen:  # the nearest neighbour of class c
                seen.add(c)
                logits[row, c] += (1e-4 if weighted else 0.5) * (k - rank) / k
    return logits


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_faiss_neighbours_equal_cdist_topk(metric, k):
    g = torch.Generator().manual_seed(k)
    support, query = torch.randn(40, 16, generator=g), torch.randn(30, 16, generator=g)
    dist, idx = faiss_search(support, query, k, metric)
    want_dist, want_idx = reference_neighbours(support, query, k, metric)
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(dist.double(), want_dist, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("level", ["pooled", "nodes"])
@pytest.mark.parametrize("way,shot,k", [(5, 1, 1), (5, 5, 5), (3, 4, 7)])
def test_votes_match_a_cdist_topk_reference(episode_tensors, weighted, metric, level, way, shot, k):
    support, labels, query, _ = episode_tensors(way, shot, 3, nodes=4, dim=12, seed=way * shot + k)
    got = KNNMatcher(k, metric, weighted, level)(support, labels, query)
    if level == "nodes":
        flat_labels = labels.repeat_interleave(4)
        dist, idx = reference_neighbours(support.flatten(0, 1), query.flatten(0, 1), k, metric)
        want = reference_logits(dist, idx, flat_labels, way, weighted).view(query.shape[0], 4, way).mean(1)
    else:
        dist, idx = reference_neighbours(support.mean(1), query.mean(1), k, metric)
        want = reference_logits(dist, idx, labels, way, weighted)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


class TestTieRule:
    # query at the origin; support on a line at the given distances, with the given classes
    @staticmethod
    def episode(distances, labels):
        support = torch.tensor([[float(d), 0.0] for d in distances])
        return support, torch.tensor(labels), torch.zeros(1, 2)

    @pytest.mark.parametrize("labels,winner", [([0, 1, 1, 0], 0), ([1, 0, 0, 1], 1)])
    def test_equal_counts_go_to_the_class_of_the_nearest_neighbour(self, labels, winner):
        support, labels, query = self.episode([1, 2, 3, 4], labels)
        logits = KNNMatcher(k=4)(support, labels, query)
        assert logits[0].floor().tolist() == [2.0, 2.0] and logits.argmax(1).item() == winner

    def test_equal_weighted_votes_go_to_the_class_of_the_nearest_neighbour(self):
        # class 1: one neighbour at distance 1 (weight 1/2); class 0: two at distance 3 (1/4 + 1/4)
        support, labels, query = self.episode([3, 1, 3], [0, 1, 0])
        assert KNNMatcher(k=3, weighted=True)(support, labels, query).argmax(1).item() == 1
        assert KNNMatcher(k=3, weighted=False)(support, labels, query).argmax(1).item() == 0  # 2 votes beat 1

    @pytest.mark.parametrize("labels,winner", [([0, 1], 0), ([1, 0], 1)])
    def test_equal_distances_go_to_the_class_of_the_lower_support_index(self, labels, winner):
        support, labels, query = torch.tensor([[0.0, 1.0], [0.0, -1.0]]), torch.tensor(labels), torch.zeros(1, 2)
        assert KNNMatcher(k=2)(support, labels, query).argmax(1).item() == winner

    def test_the_bonus_never_overturns_a_majority(self):
        support, labels, query = self.episode([1, 2, 3], [0, 1, 1])
        assert KNNMatcher(k=3)(support, labels, query).argmax(1).item() == 1


def test_k_is_clamped_to_the_number_of_support_vectors(episode_tensors):
    support, labels, query, _ = episode_tensors(5, 1, 3)
    torch.testing.assert_close(KNNMatcher(k=50)(support, labels, query), KNNMatcher(k=5)(support, labels, query))


def test_node_inputs_at_pooled_level_are_mean_pooled_first(episode_tensors):
    support, labels, query, _ = episode_tensors(5, 2, 3, nodes=6)
    torch.testing.assert_close(KNNMatcher()(support, labels, query),
                               KNNMatcher()(support.mean(1), labels, query.mean(1)))


def test_euclidean_is_an_alias_of_l2(episode_tensors):
    episode = episode_tensors(5, 3, 2)[:3]
    torch.testing.assert_close(KNNMatcher(metric="euclidean")(*episode), KNNMatcher(metric="l2")(*episode))


def test_votes_carry_no_gradient_without_grad_mode_and_keep_the_input_dtype(episode_tensors):
    support, labels, query, _ = episode_tensors(5, 2, 3)
    support, query = support.double().requires_grad_(True), query.double().requires_grad_(True)
    with torch.no_grad():
        logits = KNNMatcher()(support, labels, query)
    assert not logits.requires_grad and logits.dtype == torch.float64
    torch.testing.assert_close(logits, KNNMatcher()(support.detach(), labels, query.detach()))  # the votes


def reference_surrogate(support, labels, query, way, surrogate, metric, temperature):
    """One query and one class at a time, in float64: log of the summed exp-similarities of the class's
    support vectors (soft neighbours), or the similarity to the class mean (prototype)."""
    support, query = support.double(), query.double()
    if metric == "cosine":
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    sim = (lambda a, b: float(a @ b)) if metric == "cosine" else (lambda a, b: -float(((a - b) ** 2).sum()))
    out = torch.zeros(query.shape[0], way, dtype=torch.float64)
    for q in range(query.shape[0]):
        for c in range(way):
            members = support[labels == c]
            if surrogate == "prototype":
                out[q, c] = sim(query[q], members.mean(0)) / temperature
            else:
                out[q, c] = torch.tensor([sim(query[q], s) / temperature for s in members]).exp().sum().log()
    return out


class TestSurrogate:
    """When a gradient is asked for, the logits are the surrogate's, and the gradient reaches the features."""

    @pytest.mark.parametrize("surrogate", ["soft_neighbours", "prototype"])
    @pytest.mark.parametrize("metric,temperature", [("l2", 4.0), ("cosine", 0.1)])
    @pytest.mark.parametrize("level", ["pooled", "nodes"])
    def test_logits_equal_a_loop_reference_and_the_gradient_reaches_both_sides(
            self, episode_tensors, surrogate, metric, temperature, level):
        support, labels, query, query_labels = episode_tensors(4, 3, 2, nodes=3, dim=6, seed=7)
        support, query = support.requires_grad_(True), query.requires_grad_(True)
        m = KNNMatcher(k=3, metric=metric, level=level, surrogate=surrogate, temperature=temperature)
        logits = m(support, labels, query)
        if level == "nodes":
            want = reference_surrogate(support.detach().flatten(0, 1), labels.repeat_interleave(3),
                                       query.detach().flatten(0, 1), 4, surrogate, metric, temperature)
            want = want.view(query.shape[0], 3, 4).mean(1)
        else:
            want = reference_surrogate(support.detach().mean(1), labels, query.detach().mean(1), 4, surrogate, metric,
                                       temperature)
        torch.testing.assert_close(logits.double(), want, rtol=1e-4, atol=1e-4)
        F.cross_entropy(logits, query_labels).backward()
        assert support.grad.abs().sum() > 0 and query.grad.abs().sum() > 0
        assert torch.isfinite(support.grad).all() and torch.isfinite(query.grad).all()

    def test_soft_neighbours_at_a_low_temperature_decide_as_the_nearest_neighbour(self, episode_tensors):
        support, labels, query, _ = episode_tensors(5, 3, 4, dim=8, seed=3)
        with torch.no_grad():
            one_nn = KNNMatcher(k=1)(support, labels, query).argmax(1)
        soft = KNNMatcher(k=1, temperature=1e-3)(support, labels, query.clone().requires_grad_(True)).argmax(1)
        assert torch.equal(soft, one_nn)

    def test_the_prototype_surrogate_is_the_prototype_matcher(self, episode_tensors):
        from matchers import PrototypeMatcher

        support, labels, query, _ = episode_tensors(5, 2, 3, seed=1)
        query = query.requires_grad_(True)
        torch.testing.assert_close(KNNMatcher(surrogate="prototype", temperature=2.0)(support, labels, query),
                                   PrototypeMatcher(temperature=2.0)(support, labels, query))

    def test_the_run_is_told_what_trains(self):
        text = KNNMatcher(k=3, surrogate="prototype", metric="cosine", temperature=0.1).gradient_surrogate
        assert text.startswith("cross-entropy of prototype logits (class means), cosine similarity / temperature 0.1")
        assert "surrogate of knn (k=3)" in text and "validation and test score with the k-NN votes" in text
        assert "soft-neighbour (NCA)" in KNNMatcher().gradient_surrogate


def test_importing_faiss_holds_its_loader_at_warning_and_restores_the_level():
    import logging

    from matchers.knn import import_faiss

    loader = logging.getLogger("faiss.loader")
    loader.setLevel(logging.DEBUG)
    try:
        assert import_faiss().IndexFlatL2 is not None
        assert loader.level == logging.DEBUG
    finally:
        loader.setLevel(logging.NOTSET)


def test_queries_equal_to_a_support_vector_get_its_class(episode_tensors):
    support, labels, _, _ = episode_tensors(5, 3, 1, dim=32)
    assert KNNMatcher(k=1)(support, labels, support).argmax(1).tolist() == labels.tolist()


@pytest.mark.parametrize("level,expected", [("pooled", "pooled"), ("nodes", "nodes")])
def test_the_engine_is_told_which_features_to_pass(level, expected):
    assert KNNMatcher(level=level).input == expected


class TestOptions:
    @pytest.mark.parametrize("kwargs,name", [({"k": 0}, "k"), ({"k": True}, "k"), ({"metric": "manhattan"}, "metric"),
                                             ({"weighted": 1}, "weighted"), ({"level": "patches"}, "level"),
                                             ({"surrogate": "nca"}, "surrogate"), ({"temperature": 0}, "temperature"),
                                             ({"temperature": True}, "temperature")])
    def test_invalid_options_are_refused_naming_the_option(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            KNNMatcher(**kwargs)

    def test_node_level_needs_node_features(self):
        with pytest.raises(ValueError, match="needs node-level features"):
            KNNMatcher(level="nodes")(torch.zeros(5, 8), torch.arange(5), torch.zeros(3, 8))
