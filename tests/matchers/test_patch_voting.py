import math

import pytest
import torch

import matchers.patch_voting
from matchers import PatchVotingMatcher


def loop_reference(support, labels, query, k, temperature, discriminative, smoothing=1e-3):
    """The documented rule, one query node and one support node at a time, in float64."""
    way = int(labels.max()) + 1
    nodes = [(support[s, n].double(), int(labels[s])) for s in range(support.shape[0]) for n in range(support.shape[1])]
    logits = []
    for q in range(query.shape[0]):
        shares, total = [0.0] * way, 0.0
        for m in range(query.shape[1]):
            x = query[q, m].double()
            sims = [(float(x @ v / (x.norm() * v.norm())), c) for v, c in nodes]
            top = sorted(sims, key=lambda t: -t[0])[:k]
            z = sum(math.exp(s / temperature) for s, _ in top)
            vote = [0.0] * way
            for s, c in top:
                vote[c] += math.exp(s / temperature) / z
            weight = 1.0
            if discriminative and way > 1:
                best = sorted((max(s for s, c2 in sims if c2 == c) for c in range(way)), reverse=True)
                weight = best[0] - best[1]
            shares = [sh + weight * v for sh, v in zip(shares, vote)]
            total += weight
        logits.append([math.log((sh / total + smoothing) / (1 + way * smoothing)) for sh in shares])
    return torch.tensor(logits, dtype=torch.float64)


@pytest.mark.parametrize("discriminative", [False, True])
@pytest.mark.parametrize("k,temperature", [(1, 0.1), (3, 0.1), (5, 1.0), (1000, 0.5)])
@pytest.mark.parametrize("way,shot,query_nodes,support_nodes", [(2, 1, 3, 4), (3, 2, 5, 5), (4, 1, 1, 6)])
def test_logits_match_a_python_loop_over_query_and_support_nodes(episode_tensors, discriminative, k, temperature,
                                                                 way, shot, query_nodes, support_nodes):
    support, labels, _, _ = episode_tensors(way, shot, 1, nodes=support_nodes, dim=8, seed=way + k)
    query = torch.randn(5, query_nodes, 8, generator=torch.Generator().manual_seed(k))
    got = PatchVotingMatcher(k, temperature, discriminative)(support, labels, query)
    want = loop_reference(support, labels, query, k, temperature, discriminative)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("discriminative", [False, True])
def test_chunked_queries_give_the_same_logits_as_one_chunk(episode_tensors, monkeypatch, discriminative):
    support, labels, query, _ = episode_tensors(3, 2, 4, nodes=5, dim=8)
    whole = PatchVotingMatcher(discriminative=discriminative)(support, labels, query)
    monkeypatch.setattr(matchers.patch_voting, "_CHUNK_ELEMENTS", 1)  # one query image per chunk
    torch.testing.assert_close(PatchVotingMatcher(discriminative=discriminative)(support, labels, query), whole)


def test_exp_logits_are_smoothed_vote_shares_summing_to_one(episode_tensors):
    support, labels, query, _ = episode_tensors(5, 2, 3, nodes=6)
    probs = PatchVotingMatcher()(support, labels, query).exp()
    torch.testing.assert_close(probs.sum(1), torch.ones(15))


@pytest.mark.parametrize("discriminative", [False, True])
def test_a_noisy_shuffled_copy_of_a_support_image_gets_its_class(discriminative):
    g = torch.Generator().manual_seed(1)
    support, labels = torch.randn(10, 16, 32, generator=g), torch.arange(5).repeat(2)
    query = support[:, torch.randperm(16, generator=g)] + 0.1 * torch.randn(10, 16, 32, generator=g)
    logits = PatchVotingMatcher(discriminative=discriminative)(support, labels, query)
    assert logits.argmax(1).tolist() == labels.tolist()


def test_discriminative_weighting_ignores_nodes_shared_by_two_classes():
    # query node 0 is equally close to both classes, node 1 only to class 1: only node 1 counts
    support = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
    labels, query = torch.tensor([0, 1, 1]), torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    probs = PatchVotingMatcher(k=1, discriminative=True, smoothing=1e-6)(support, labels, query).exp()
    assert probs[0, 1] > 0.999


@pytest.mark.parametrize("discriminative", [False, True])
def test_gradients_reach_the_support_and_query(episode_tensors, discriminative):
    support, labels, query, qlab = episode_tensors(5, 2, 3, nodes=6)
    support.requires_grad_(True)
    query.requires_grad_(True)
    logits = PatchVotingMatcher(discriminative=discriminative)(support, labels, query)
    torch.nn.functional.cross_entropy(logits, qlab).backward()
    assert support.grad.abs().sum() > 0 and query.grad.abs().sum() > 0


class TestOptions:
    @pytest.mark.parametrize("kwargs,name", [({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"temperature": 0}, "temperature"),
                                             ({"discriminative": "yes"}, "discriminative"),
                                             ({"smoothing": 0.0}, "smoothing")])
    def test_invalid_options_are_refused_naming_the_option(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            PatchVotingMatcher(**kwargs)

    def test_pooled_features_are_refused_saying_node_level_features_are_needed(self):
        with pytest.raises(ValueError, match="needs node-level features"):
            PatchVotingMatcher()(torch.zeros(5, 8), torch.arange(5), torch.zeros(3, 8))

    def test_images_without_nodes_are_refused(self):
        with pytest.raises(ValueError, match="no nodes"):
            PatchVotingMatcher()(torch.zeros(5, 4, 8), torch.arange(5), torch.zeros(3, 0, 8))
