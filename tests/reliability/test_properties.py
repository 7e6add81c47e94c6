"""Property-based tests (hypothesis) of the episode sampler and the matchers: any valid episode
size gives a well-formed episode / logits; any invalid one gives the documented error."""
import re

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import matchers
from episodes import DataError, EpisodeSampler, ImageSet

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def image_set(sizes):
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(sizes)])
    images = torch.arange(labels.numel()).remainder(251).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    return ImageSet(images.contiguous(), labels, [f"class{c}" for c in range(len(sizes))], name="prop")


class_sizes = st.lists(st.integers(1, 12), min_size=2, max_size=12)


@st.composite
def valid_sizes(draw):
    """(class sizes, way, shot, query) such that every class holds shot+query images and way fits."""
    shot, query = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    sizes = draw(st.lists(st.integers(shot + query, shot + query + 8), min_size=2, max_size=12))
    return sizes, draw(st.integers(2, len(sizes))), shot, query


@SETTINGS
@given(case=valid_sizes(), seed=st.integers(0, 2**31), index=st.integers(0, 10**6))
def test_any_valid_sizes_give_a_well_formed_episode(case, seed, index):
    sizes, way, shot, query = case
    images = image_set(sizes)
    sampler = EpisodeSampler(images, way, shot, query, seed=seed)
    ep = sampler[index]
    assert ep.classes.shape == (way,) and ep.classes.unique().numel() == way
    assert ep.support.shape == (way * shot,) and ep.query.shape == (way * query,)
    picked = torch.cat([ep.support, ep.query])
    assert picked.unique().numel() == picked.numel()  # no image twice, support and query disjoint
    assert ((picked >= 0) & (picked < len(images))).all()
    assert torch.equal(images.labels[ep.support], ep.classes[ep.support_labels])
    assert torch.equal(images.labels[ep.query], ep.classes[ep.query_labels])
    again = sampler[index]  # pure in (seed, index)
    assert all(torch.equal(getattr(ep, f), getattr(again, f)) for f in ("classes", "support", "query"))


@SETTINGS
@given(sizes=class_sizes, way=st.integers(2, 15), shot=st.integers(1, 8), query=st.integers(1, 8))
def test_any_size_that_does_not_fit_the_data_gives_the_documented_error(sizes, way, shot, query):
    assume(way > len(sizes) or min(sizes) < shot + query)
    with pytest.raises(DataError) as err:
        EpisodeSampler(image_set(sizes), way, shot, query, seed=0)
    msg = str(err.value)
    if way > len(sizes):  # checked first
        assert msg.startswith(f"prop: way={way} needs {way} classes but the set has only {len(sizes)};")
    else:
        small = [c for c, n in enumerate(sizes) if n < shot + query]
        assert msg.startswith(f"prop: class 'class{small[0]}' has {sizes[small[0]]} images, fewer than "
                              f"shot+query = {shot}+{query} = {shot + query}")
        assert (f"({len(small)} classes in all)" in msg) == (len(small) > 1)


@SETTINGS
@given(name=st.sampled_from(["way", "shot", "query"]), value=st.one_of(st.integers(-5, 0), st.just(1),
                                                                      st.floats(0.5, 5), st.booleans()))
def test_non_integer_or_too_small_sizes_give_the_documented_error(name, value):
    kw = {"way": 2, "shot": 1, "query": 1, name: value}
    lo = 2 if name == "way" else 1
    assume(not (isinstance(value, int) and not isinstance(value, bool) and value >= lo))
    with pytest.raises(ValueError, match=rf"^{name} must be an integer >= {lo}, got {re.escape(repr(value))}$"):
        EpisodeSampler(image_set([4, 4]), **kw)


def episode(way, shot, n_query, nodes, dim, seed):
    g = torch.Generator().manual_seed(seed)
    tail = (dim,) if nodes is None else (nodes, dim)
    support = torch.randn(way * shot, *tail, generator=g)
    query = torch.randn(n_query, *tail, generator=g)
    return support, torch.arange(way).repeat_interleave(shot), query


MATCHERS = matchers.list_matchers()


@SETTINGS
@given(name=st.sampled_from(MATCHERS), way=st.integers(2, 6), shot=st.integers(1, 4), n_query=st.integers(1, 9),
       nodes=st.integers(1, 5), pooled=st.booleans(), dim=st.integers(1, 8), seed=st.integers(0, 1000),
       perm=st.randoms(use_true_random=False))
def test_any_valid_episode_gives_finite_logits_of_query_by_way(name, way, shot, n_query, nodes, pooled, dim, seed, perm):
    m = matchers.create(name)
    if pooled and 2 in m.accepts:
        nodes = None
    if name == "dn4":  # DN4 documents k <= the support nodes of a class; fewer is the documented error
        assume(shot * nodes >= m.k)
    support, labels, query = episode(way, shot, n_query, nodes, dim, seed)
    order = list(range(len(labels)))
    perm.shuffle(order)  # support items in any order
    relabel = list(range(way))
    perm.shuffle(relabel)  # and classes under any names: class c is called relabel[c]
    with torch.no_grad():
        reference = m(support, labels, query)
        shuffled = m(support[order], labels[order], query)
        renamed = m(support, torch.tensor(relabel)[labels], query)
    assert reference.shape == (n_query, way) and torch.isfinite(reference).all()
    assert reference.dtype == query.dtype
    # a support set is a set: its order never changes a logit (up to float summation order) ...
    if not (name == "patch_voting" and dim == 1):  # 1-d cosines are all +-1: tied neighbours, any pick is valid
        torch.testing.assert_close(shuffled, reference, rtol=1e-5, atol=1e-5)
        # ... and renaming the classes permutes the logit columns the same way
        torch.testing.assert_close(renamed[:, relabel], reference, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(name=st.sampled_from(MATCHERS), way=st.integers(3, 6), shot=st.integers(1, 3), dim=st.integers(2, 6),
       missing=st.integers(0, 1), fault=st.sampled_from(["missing_class", "negative", "dim", "labels_length",
                                                          "float_labels", "empty_query"]))
def test_any_malformed_episode_gives_the_documented_error(name, way, shot, dim, missing, fault):
    m = matchers.create(name)
    support, labels, query = episode(way, shot, 4, 3, dim, 0)
    if fault == "missing_class":  # a class 0..way-2 with no support item
        labels = labels.clone()
        labels[labels == missing] = way - 1
        error, pattern = ValueError, rf"support_labels must cover every class 0\.\.{way - 1}; class {missing} has no support"
    elif fault == "negative":
        labels = labels - 1
        error, pattern = ValueError, r"support_labels must lie in 0\.\.way-1, found -1"
    elif fault == "dim":
        query = query[..., :-1]
        error, pattern = ValueError, r"must have the same rank and feature dim"
    elif fault == "labels_length":
        labels = labels[:-1]
        error, pattern = ValueError, rf"support_labels must be \[{way * shot}\] \(one per support item\)"
    elif fault == "float_labels":
        labels = labels.float()
        error, pattern = TypeError, r"support_labels must be an integer tensor"
    else:
        query = query[:0]
        error, pattern = ValueError, r"query is empty"
    with pytest.raises(error, match=pattern):
        m(support, labels, query)
