import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import matchers.hungarian
from matchers import HungarianMatcher
from matchers.hungarian import sinkhorn_plan, solve_assignments


def cosine_matrix(a, b):
    """``[M, D], [N, D] -> [M, N]`` cosine similarities, entry by entry."""
    return torch.tensor([[float(F.cosine_similarity(x, y, dim=0)) for y in b] for x in a], dtype=torch.float64)


def exhaustive_min_cost(cost):
    """Least total cost of a one-to-one matching of the smaller side, over every injection."""
    if cost.shape[0] > cost.shape[1]:
        cost = cost.T
    rows = range(cost.shape[0])
    return min(sum(float(cost[i, p[i]]) for i in rows) for p in itertools.permutations(range(cost.shape[1]), len(rows)))


def exhaustive_logits(support, labels, query, temperature):
    way = int(labels.max()) + 1
    logits = torch.zeros(query.shape[0], way, dtype=torch.float64)
    for q in range(query.shape[0]):
        for c in range(way):
            shots = [s for s in range(len(labels)) if labels[s] == c]
            for s in shots:
                cost = 1 - cosine_matrix(query[q], support[s])
                logits[q, c] += (1 - exhaustive_min_cost(cost) / min(cost.shape)) / len(shots)
    return logits / temperature


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 3), (4, 6), (6, 4), (6, 6), (2, 5)])
def test_assignment_cost_equals_an_exhaustive_search_over_permutations(rows, cols):
    cost = torch.rand(8, rows, cols, generator=torch.Generator().manual_seed(rows * 10 + cols), dtype=torch.float64)
    r, c = solve_assignments(cost)
    assert r.shape == c.shape == (8, min(rows, cols))
    for b in range(8):
        assert len(set(r[b].tolist())) == len(set(c[b].tolist())) == min(rows, cols)  # one-to-one
        assert float(cost[b, r[b], c[b]].sum()) == pytest.approx(exhaustive_min_cost(cost[b]), abs=1e-12)


@pytest.mark.parametrize("way,shot,query_nodes,support_nodes", [(2, 1, 4, 4), (3, 2, 3, 5), (2, 3, 5, 2)])
def test_logits_equal_the_mean_exhaustively_matched_similarity_per_class(way, shot, query_nodes, support_nodes):
    g = torch.Generator().manual_seed(way * shot)
    support = torch.randn(way * shot, support_nodes, 6, generator=g, dtype=torch.float64)
    query = torch.randn(4, query_nodes, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(way).repeat(shot)
    got = HungarianMatcher(temperature=0.5)(support, labels, query)
    torch.testing.assert_close(got, exhaustive_logits(support, labels, query, 0.5))


@pytest.mark.parametrize("solver", ["hungarian", "sinkhorn"])
def test_scores_do_not_change_when_either_node_set_is_permuted(episode_tensors, solver):
    support, labels, query, _ = episode_tensors(3, 2, 2, nodes=6, dim=8)
    g = torch.Generator().manual_seed(3)
    m = HungarianMatcher(solver=solver)
    shuffled = m(support[:, torch.randperm(6, generator=g)], labels, query[:, torch.randperm(6, generator=g)])
    torch.testing.assert_close(shuffled, m(support, labels, query), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver", ["hungarian", "sinkhorn"])
@pytest.mark.parametrize("shot", [1, 3])
def test_a_noisy_shuffled_copy_of_a_support_image_gets_its_class(solver, shot):
    g = torch.Generator().manual_seed(shot)
    support, labels = torch.randn(5 * shot, 12, 32, generator=g), torch.arange(5).repeat(shot)
    query = support[:, torch.randperm(12, generator=g)] + 0.3 * torch.randn(5 * shot, 12, 32, generator=g)
    logits = HungarianMatcher(solver=solver)(support, labels, query)
    assert logits.argmax(1).tolist() == labels.tolist()


def test_chunked_sinkhorn_gives_the_same_logits_as_one_chunk(episode_tensors, monkeypatch):
    support, labels, query, _ = episode_tensors(3, 2, 3, nodes=5, dim=8)
    whole = HungarianMatcher(solver="sinkhorn")(support, labels, query)
    monkeypatch.setattr(matchers.hungarian, "_SINKHORN_CHUNK", 1)  # one query image per chunk
    torch.testing.assert_close(HungarianMatcher(solver="sinkhorn")(support, labels, query), whole)


def test_threaded_and_serial_assignments_agree(episode_tensors):
    support, labels, query, _ = episode_tensors(5, 2, 3, nodes=7, dim=8)
    torch.testing.assert_close(HungarianMatcher(workers=4)(support, labels, query),
                               HungarianMatcher(workers=1)(support, labels, query))


def test_sinkhorn_scores_approach_hungarian_scores_as_epsilon_shrinks():
    g = torch.Generator().manual_seed(0)
    support, labels = torch.randn(3, 6, 16, generator=g, dtype=torch.float64), torch.arange(3)
    query = support[:, torch.randperm(6, generator=g)] + 0.2 * torch.randn(3, 6, 16, generator=g, dtype=torch.float64)
    exact = HungarianMatcher(temperature=1.0)(support, labels, query)
    gaps = [float((HungarianMatcher(temperature=1.0, solver="sinkhorn", epsilon=eps, iters=2000)(support, labels, query)
                   - exact).abs().max()) for eps in (0.2, 0.05, 0.01, 0.002)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3, gaps


def logsumexp_sinkhorn(cost, epsilon, iters):
    """Textbook log-domain Sinkhorn (Peyre and Cuturi, Computational Optimal Transport, 4.4), in float64."""
    log_kernel, cost = -cost.double() / epsilon, cost.double()
    log_a, log_b = -math.log(cost.shape[-2]), -math.log(cost.shape[-1])
    f, g = torch.zeros(cost.shape[:-1], dtype=torch.float64), torch.zeros(cost.shape[:-2] + cost.shape[-1:],
                                                                        dtype=torch.float64)
    for _ in range(iters):
        f = log_a - torch.logsumexp(log_kernel + g.unsqueeze(-2), -1)
        g = log_b - torch.logsumexp(log_kernel + f.unsqueeze(-1), -2)
    return torch.exp(f.unsqueeze(-1) + log_kernel + g.unsqueeze(-2))


# float32 costs spanning [0, 2]: epsilon 0.05 takes the shifted-kernel path, 0.01 (spread 200) plain logsumexp
@pytest.mark.parametrize("dtype,epsilon", [(torch.float32, 0.5), (torch.float32, 0.05), (torch.float32, 0.01),
                                           (torch.float64, 0.01), (torch.float64, 0.002)])
@pytest.mark.parametrize("rows,cols", [(6, 6), (4, 9)])
def test_sinkhorn_plans_equal_a_textbook_logsumexp_reference(dtype, epsilon, rows, cols):
    cost = 2 * torch.rand(3, rows, cols, generator=torch.Generator().manual_seed(rows), dtype=dtype)
    cost[..., 0, 0], cost[..., -1, -1] = 0.0, 2.0
    got = sinkhorn_plan(cost, epsilon, 30)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), logsumexp_sinkhorn(cost, epsilon, 30), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("epsilon", [0.1, 0.0005])  # cost range / epsilon: < 5 (shifted kernel), ~790 (logsumexp)
def test_sinkhorn_gradients_pass_a_finite_difference_check(epsilon):
    cost = 0.5 * torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c: sinkhorn_plan(c, epsilon, 10), (cost.requires_grad_(True),))


@pytest.mark.parametrize("rows,cols", [(5, 5), (3, 7), (7, 3)])
def test_sinkhorn_plans_have_uniform_marginals(rows, cols):
    plan = sinkhorn_plan(torch.rand(4, rows, cols, generator=torch.Generator().manual_seed(0)), epsilon=0.1, iters=200)
    torch.testing.assert_close(plan.sum(-1), torch.full((4, rows), 1 / rows), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plan.sum(-2), torch.full((4, cols), 1 / cols), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("solver", ["hungarian", "sinkhorn"])
def test_gradients_reach_the_support_and_query(episode_tensors, solver):
    support, labels, query, qlab = episode_tensors(5, 2, 3, nodes=6)
    support.requires_grad_(True)
    query.requires_grad_(True)
    F.cross_entropy(HungarianMatcher(solver=solver)(support, labels, query), qlab).backward()
    assert support.grad.abs().sum() > 0 and query.grad.abs().sum() > 0
    assert torch.isfinite(support.grad).all() and torch.isfinite(query.grad).all()


def test_hungarian_gradient_flows_only_through_assigned_pairs():
    # one query node, two support nodes: only the matched (more similar) support node gets gradient
    support = torch.tensor([[[1.0, 0.2], [-1.0, 0.3]]], requires_grad=True)
    query = torch.tensor([[[1.0, 0.0]]])
    HungarianMatcher()(support, torch.tensor([0]), query).sum().backward()
    assert support.grad[0, 0].abs().sum() > 0 and support.grad[0, 1].abs().sum() == 0


class TestOptions:
    @pytest.mark.parametrize("kwargs,name", [({"temperature": 0}, "temperature"), ({"solver": "auction"}, "solver"),
                                             ({"epsilon": -1.0}, "epsilon"), ({"iters": 0}, "iters"),
                                             ({"workers": 0}, "workers")])
    def test_invalid_options_are_refused_naming_the_option(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            HungarianMatcher(**kwargs)

    @pytest.mark.parametrize("solver", ["hungarian", "sinkhorn"])
    def test_pooled_features_are_refused_saying_node_level_features_are_needed(self, solver):
        with pytest.raises(ValueError, match="needs node-level features"):
            HungarianMatcher(solver=solver)(torch.zeros(5, 8), torch.arange(5), torch.zeros(3, 8))


class TestCrossReferenceWeights:
    """DeepEMD's node weights, against loops and brute force (permutations, a linear program)."""

    @staticmethod
    def episode(m=4, dim=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        support = torch.randn(3, m, dim, generator=g, dtype=torch.float64)
        return support, torch.tensor([0, 1, 2]), torch.randn(2, m, dim, generator=g, dtype=torch.float64)

    @staticmethod
    def weights_loop(x, other):
        """a[m] = relu(x[m] . mean(other)) + 1e-3, normalised."""
        mean = sum(other[n] for n in range(other.shape[0])) / other.shape[0]
        w = [max(float(x[m] @ mean), 0.0) + 1e-3 for m in range(x.shape[0])]
        return [v / sum(w) for v in w]

    def test_weights_match_the_loop_definition(self):
        from matchers.hungarian import cross_reference_weights
        support, _, query = self.episode()
        a, b = cross_reference_weights(query, support)
        for q in range(2):
            for s in range(3):
                assert torch.allclose(a[q, s], torch.tensor(self.weights_loop(query[q], support[s]), dtype=a.dtype))
                assert torch.allclose(b[q, s], torch.tensor(self.weights_loop(support[s], query[q]), dtype=b.dtype))

    def test_weighted_hungarian_is_the_best_permutation_of_weighted_similarity(self):
        import itertools
        support, labels, query = self.episode(m=4)
        got = HungarianMatcher(weights="cross_reference", temperature=1.0)(support, labels, query)
        for q in range(2):
            for s in range(3):
                a, b = self.weights_loop(query[q], support[s]), self.weights_loop(support[s], query[q])
                cos = torch.nn.functional.cosine_similarity(query[q][:, None], support[s][None], dim=-1)
                best = None
                for perm in itertools.permutations(range(4)):
                    w = [(4 * a[m] + 4 * b[perm[m]]) / 2 for m in range(4)]
                    total = sum(w[m] * float(cos[m, perm[m]]) for m in range(4))
                    if best is None or total > best[0]:
                        best = (total, total / sum(w))
                assert got[q, s].item() == pytest.approx(best[1], abs=1e-9)

    @pytest.mark.parametrize("m,n", [(4, 4), (3, 5)])
    def test_uniform_weights_leave_the_scores_unchanged(self, m, n):
        """``weights="uniform"`` scores are the plain mean matched similarity (the exhaustive search over
        permutations), and so are the cross-reference formulas fed uniform weights: ``w = (M/M + N/N) / 2
        = 1`` for the assignment, marginals ``1/M``, ``1/N`` for Sinkhorn."""
        g = torch.Generator().manual_seed(m * n)
        support = torch.randn(3, n, 6, generator=g, dtype=torch.float64)
        query, labels = torch.randn(2, m, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2])
        reference = exhaustive_logits(support, labels, query, 1.0)
        torch.testing.assert_close(HungarianMatcher(weights="uniform", temperature=1.0)(support, labels, query),
                                   reference)
        plain_sinkhorn = HungarianMatcher(solver="sinkhorn", epsilon=0.05, iters=100, temperature=1.0)
        uniform = plain_sinkhorn(support, labels, query)
        assert not torch.allclose(uniform, HungarianMatcher(solver="sinkhorn", epsilon=0.05, iters=100, temperature=1.0,
                                                            weights="cross_reference")(support, labels, query))

        def uniform_weights(query, support, floor=1e-3):
            return (torch.full((query.shape[0], support.shape[0], query.shape[1]), 1 / query.shape[1], dtype=query.dtype),
                    torch.full((query.shape[0], support.shape[0], support.shape[1]), 1 / support.shape[1],
                               dtype=query.dtype))

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(matchers.hungarian, "cross_reference_weights", uniform_weights)
            torch.testing.assert_close(HungarianMatcher(weights="cross_reference", temperature=1.0)(support, labels, query),
                                       reference)
            torch.testing.assert_close(HungarianMatcher(solver="sinkhorn", epsilon=0.05, iters=100, temperature=1.0,
                                                        weights="cross_reference")(support, labels, query), uniform)

    def test_weighted_sinkhorn_transports_the_weights_and_nears_the_exact_emd(self):
        from scipy.optimize import linprog
        from matchers.hungarian import cross_reference_weights, sinkhorn_plan
        support, labels, query = self.episode(m=4)
        a, b = cross_reference_weights(query, support)
        cos = torch.nn.functional.cosine_similarity(query[:, None, :, None], support[None, :, None], dim=-1)
        plan = sinkhorn_plan(1 - cos, epsilon=0.005, iters=2000, row_mass=a, col_mass=b)
        assert torch.allclose(plan.sum(-1), a, atol=1e-6) and torch.allclose(plan.sum(-2), b, atol=1e-9)
        got = HungarianMatcher(solver="sinkhorn", weights="cross_reference", epsilon=0.005, iters=2000,
                               temperature=1.0)(support, labels, query)
        for q in range(2):
            for s in range(3):
                c = (1 - cos[q, s]).flatten().numpy()
                eq = [[1.0 if k // 4 == i else 0.0 for k in range(16)] for i in range(4)] + \
                     [[1.0 if k % 4 == j else 0.0 for k in range(16)] for j in range(4)]
                lp = linprog(c, A_eq=eq, b_eq=[*a[q, s].tolist(), *b[q, s].tolist()], bounds=(0, None))
                emd_score = 1 - lp.fun  # sum(T * sim) of the exact plan
                assert got[q, s].item() == pytest.approx(emd_score, abs=0.02)

    def test_unknown_weights_are_refused(self):
        with pytest.raises(ValueError, match="cross_reference"):
            HungarianMatcher(weights="deepemd")
