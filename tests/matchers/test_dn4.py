"""DN4's image-to-class measure against a loop written from the paper's definition."""
import math

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


def test_blocks_of_one_query_image_do_not_change_scores(monkeypatch):
    import matchers.class_topk as class_topk
    support, labels, query = episode(query=7)
    full = DN4Matcher()(support, labels, query)
    monkeypatch.setattr(class_topk, "_BLOCK_ELEMENTS", 1)
    assert torch.allclose(DN4Matcher()(support, labels, query), full, rtol=1e-12, atol=1e-12)


def test_chunking_of_unequal_shots_does_not_change_scores(monkeypatch):
    import matchers.dn4 as dn4
    support, _, query = episode(way=3, shot=2, query=7)
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    full = DN4Matcher()(support, labels, query)
    monkeypatch.setattr(dn4, "_CHUNK_ELEMENTS", 1)
    assert torch.allclose(DN4Matcher()(support, labels, query), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows,k", [(r, k) for r in (1, 2, 3, 4, 5, 7, 8, 9, 16, 49, 245) for k in (1, 2, 3, 4, 5, 9)
                                    if k <= r])
def test_top_k_set_holds_the_k_largest_values_of_every_column(rows, k):
    from matchers.class_topk import top_k_set
    g = torch.Generator().manual_seed(rows * 10 + k)
    for x in (torch.randn(2, rows, 6, generator=g, dtype=torch.float64),
              torch.randint(0, 3, (2, rows, 6), generator=g).double()):  # many ties
        expected = x.topk(k, dim=1).values  # sorted
        got = top_k_set(x.clone(), k).sort(dim=1, descending=True).values
        assert torch.equal(got, expected)
        kept = x.clone()
        got = top_k_set(kept, k, out=torch.empty_like(x)).sort(dim=1, descending=True).values
        assert torch.equal(got, expected) and torch.equal(kept, x)  # with out=, x is left as it was


def topk_autograd_reference(support, labels, query, k):
    """DN4 through torch.topk per class, autograd for the gradient."""
    way = int(labels.max()) + 1
    q = torch.nn.functional.normalize(query, dim=-1)
    s = torch.nn.functional.normalize(support, dim=-1)
    cols = [torch.cat([s[i] for i in range(len(labels)) if int(labels[i]) == c]) for c in range(way)]
    return torch.stack([(q @ nodes.T).topk(k, dim=-1).values.sum(-1).sum(-1) for nodes in cols], dim=-1)


@pytest.mark.parametrize("way,shot,k", [(3, 2, 3), (5, 1, 1), (4, 3, 4), (2, 5, 2)])
def test_gradients_match_topk_through_autograd(way, shot, k):
    support, labels, query = episode(way=way, shot=shot, query=5, seed=way + k)
    grads = []
    for fn in (lambda s, q: DN4Matcher(k=k)(s, labels, q), lambda s, q: topk_autograd_reference(s, labels, q, k)):
        s, q = support.clone().requires_grad_(), query.clone().requires_grad_()
        out = fn(s, q)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append((out.detach(), s.grad, q.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_values_tied_at_the_kth_place_share_its_gradient():
    support, labels, query = episode(way=2, shot=1, nodes=4, query=1)
    support[0, 1:] = support[0, 0]  # class 0: four identical nodes, of which k=2 are selected
    ours_s, ours_q = support.clone().requires_grad_(), query.clone().requires_grad_()
    DN4Matcher(k=2)(ours_s, labels, ours_q)[0, 0].backward()
    ref_s, ref_q = support.clone().requires_grad_(), query.clone().requires_grad_()
    topk_autograd_reference(ref_s, labels, ref_q, 2)[0, 0].backward()
    share = ours_s.grad[0]  # each of the four gets half of what topk gives to each of the two it picks
    assert torch.allclose(share, share[0].expand_as(share))
    assert torch.allclose(share.sum(0), ref_s.grad[0].sum(0))
    assert torch.allclose(ours_q.grad, ref_q.grad)


def test_gradcheck_in_float64():
    support, labels, query = episode(way=3, shot=2, nodes=4, dim=5, query=3)
    fn = lambda s, q: DN4Matcher(k=3)(s, labels, q)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (support.requires_grad_(), query.requires_grad_()))


def test_bank_scorer_gives_each_episode_the_logits_of_forward():
    g = torch.Generator().manual_seed(3)
    nodes = torch.randn(40, 5, 8, generator=g, dtype=torch.float64)
    support = torch.stack([torch.randperm(40, generator=g)[:6] for _ in range(4)])  # 3-way 2-shot, grouped by class
    query = torch.stack([torch.randperm(40, generator=g)[:9] for _ in range(4)])
    matcher = DN4Matcher(k=3, reduce="mean", temperature=0.5)
    got = matcher.bank_scorer(nodes)(support, query, 3)
    labels = torch.arange(3).repeat_interleave(2)
    for e in range(4):
        ref = dn4_reference(nodes[support[e]], labels, nodes[query[e]], 3) / 5 / 0.5
        assert torch.allclose(got[e], ref, atol=1e-9)
        assert torch.allclose(got[e], matcher(nodes[support[e]], labels, nodes[query[e]]), rtol=1e-12, atol=1e-12)


def test_bank_scorer_refuses_mismatched_indices_with_the_shapes():
    score = DN4Matcher().bank_scorer(torch.randn(10, 5, 4))
    with pytest.raises(ValueError, match=r"support must be \[E, way\*shot\] and query \[E, Q\].*\(2, 6\) and \(3, 4\)"):
        score(torch.zeros(2, 6, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="use k <= 5"):
        DN4Matcher(k=6).bank_scorer(torch.randn(10, 5, 4))(torch.zeros(1, 3, dtype=torch.long),
                                                           torch.zeros(1, 2, dtype=torch.long), 3)


def test_learned_temperature_starts_at_the_given_one_and_gets_the_analytic_gradient():
    support, labels, query = episode()
    ref = dn4_reference(support, labels, query, 3)
    matcher = DN4Matcher(k=3, temperature=0.5, learn_temperature=True).double()
    logits = matcher(support, labels, query)
    assert torch.allclose(logits, ref / 0.5, atol=1e-9)
    logits.sum().backward()  # d/d(log t) of s / exp(log t) is -s / t
    assert torch.allclose(matcher.log_temperature.grad, -(ref / 0.5).sum(), atol=1e-9)
    with torch.no_grad():
        matcher.log_temperature.fill_(math.log(4.0))
    assert torch.allclose(matcher(support, labels, query), ref / 4.0, atol=1e-9)
    # the bank scorer divides by the learned value too (its images share one node count; support grouped by class)
    query = query[:, :support.shape[1]]
    nodes, order = torch.cat([support, query]), torch.argsort(labels, stable=True)
    got = matcher.bank_scorer(nodes)(order[None], len(support) + torch.arange(len(query))[None], 3)
    assert torch.allclose(got[0], dn4_reference(support, labels, query, 3) / 4.0, atol=1e-9)


def test_a_fixed_temperature_adds_no_parameter():
    assert list(DN4Matcher(temperature=0.5).state_dict()) == []
    assert list(DN4Matcher(learn_temperature=True).state_dict()) == ["log_temperature"]
