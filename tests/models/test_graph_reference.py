"""The ViG graph against brute-force references written from the paper's definitions (Han et al.,
NeurIPS 2022, sec. 3; the max-relative graph convolution of Li et al., DeepGCNs):

- dilated k-NN graph: rank every (kept) node by its Euclidean distance to node i in the L2-normalised
  feature space, keep the k*d nearest, take every d-th of them;
- max-relative aggregation: ``g_i = [x_i, max_{j in N(i)} (x_j - x_i)]`` per channel, then a grouped
  1x1 convolution, BatchNorm and the activation;
- gradients through a whole ViG whose k is smaller than the node count (so the graph is a real
  selection), checked against finite differences at points where the selection provably does not
  change within the step.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import models
from models.vig import MaxRelativeGraphConv, knn_graph


def brute_force_knn(x, k, d, mask=None):
    """Python loops from the definition: ``x [B, N, D]`` -> list over b of lists over i of neighbour ids."""
    B, N, _ = x.shape
    x = x.double()
    valid = [[j for j in range(N) if mask is None or bool(mask[b, j])] for b in range(B)]
    n_valid = min(len(v) for v in valid)
    k = min(k, n_valid)
    d = max(1, min(d, n_valid // k))
    out = []
    for b in range(B):
        unit = [x[b, j] / x[b, j].norm() for j in range(N)]
        rows = []
        for i in range(N):
            dist = sorted((math.dist(unit[i].tolist(), unit[j].tolist()), j) for j in valid[b])
            nearest = [j for _, j in dist[:k * d]]
            rows.append(nearest[::d])
        out.append(rows)
    return out, k, d, valid


def min_gap(x, mask=None):
    """Smallest gap between consecutive sorted distances of any row (how far from a tie the data is)."""
    u = F.normalize(x.double(), dim=-1)
    dist = torch.cdist(u, u)
    if mask is not None:
        dist = dist.masked_fill(~mask[:, None, :], float("inf"))
    s = dist.sort(-1).values
    gaps = (s[..., 1:] - s[..., :-1])
    return float(gaps[torch.isfinite(gaps)].min())


def untied(shape, seed, mask=None):
    """Seeded features whose distance ranking has no near-tie (gaps > 1e-5 >> float32 rounding),
    so the order is the same in float32 and float64: the first such seed from ``seed`` on."""
    while True:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        if min_gap(x, mask) > 1e-5:
            return x
        seed += 1000


@pytest.mark.parametrize("k,d", [(1, 1), (3, 1), (3, 2), (4, 3), (5, 4), (20, 1), (7, 5)])
def test_knn_graph_equals_the_brute_force_dilated_neighbours(k, d):
    x = untied((2, 20, 6), 10 * k + d)
    got = knn_graph(x, k, d)
    ref, k_eff, d_eff, _ = brute_force_knn(x, k, d)
    assert got.shape == (2, 20, k_eff)
    assert got.tolist() == ref
    assert got.dtype == torch.long
    if k * d <= 20:
        assert (k_eff, d_eff) == (k, d)  # nothing clamped when the candidates fit


def test_knn_graph_with_a_mask_equals_the_brute_force_over_kept_nodes_only():
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[0, [1, 4, 9]] = False
    mask[1, 8:] = False           # 8 kept: k*d = 3*3 = 9 does not fit, d is clamped to 2
    mask[2, ::3] = False
    x = untied((3, 16, 5), 3, mask)
    got = knn_graph(x, 3, 3, mask)
    ref, k_eff, d_eff, valid = brute_force_knn(x, 3, 3, mask)
    assert (k_eff, d_eff) == (3, 2)
    # a masked node's own row is computed too (it may still be a query), from kept nodes only
    assert got.tolist() == ref
    for b in range(3):
        assert set(got[b].flatten().tolist()) <= set(valid[b])


def test_knn_graph_is_scale_invariant_and_does_not_track_gradients():
    x = torch.randn(1, 12, 4, generator=torch.Generator().manual_seed(5), requires_grad=True)
    scale = torch.rand(1, 12, 1, generator=torch.Generator().manual_seed(6)) * 10 + 0.1
    assert torch.equal(knn_graph(x, 3, 2), knn_graph(x.detach() * scale, 3, 2))  # cosine geometry
    assert not knn_graph(x, 3).requires_grad


def brute_force_max_relative(conv: MaxRelativeGraphConv, x, neighbours):
    """Loops from the definition, with the module's weights but none of its code paths (eval-mode BN)."""
    B, N, D = x.shape
    w, bias = conv.conv.weight.detach().double()[:, :, 0, 0], conv.conv.bias.detach().double()
    out_dim, per_group_in = w.shape
    groups = 2 * D // per_group_in
    per_group_out = out_dim // groups
    bn = conv.norm
    bn_w, bn_b = bn.weight.detach(), bn.bias.detach()
    out = torch.zeros(B, N, out_dim, dtype=torch.float64)
    for b in range(B):
        for i in range(N):
            xi = x[b, i].double()
            rel = torch.tensor([max(float(x[b, j, c]) - float(xi[c]) for j in neighbours[b, i].tolist())
                                for c in range(D)], dtype=torch.float64)
            g = torch.empty(2 * D, dtype=torch.float64)
            g[0::2], g[1::2] = xi, rel               # channel c of x_i, then its relative max
            for o in range(out_dim):
                grp = o // per_group_out
                y = float(bias[o]) + sum(float(w[o, t]) * float(g[grp * per_group_in + t]) for t in range(per_group_in))
                y = (y - float(bn.running_mean[o])) / math.sqrt(float(bn.running_var[o]) + bn.eps)
                y = y * float(bn_w[o]) + float(bn_b[o])
                out[b, i, o] = 0.5 * y * (1 + math.erf(y / math.sqrt(2)))  # exact GELU
    return out


def test_max_relative_graph_conv_equals_the_brute_force_definition():
    torch.manual_seed(0)
    conv = MaxRelativeGraphConv(dim=6, out_dim=12, groups=4).eval()
    with torch.no_grad():  # non-trivial BatchNorm state and affine
        conv.norm.running_mean.normal_()
        conv.norm.running_var.uniform_(0.5, 2.0)
        conv.norm.weight.normal_()
        conv.norm.bias.normal_()
        conv.conv.bias.normal_()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 6, generator=g)
    neighbours = torch.randint(0, 9, (2, 9, 3), generator=g)  # any graph, repeats allowed
    with torch.no_grad():
        got = conv(x, neighbours)
    assert got.shape == (2, 9, 12)
    torch.testing.assert_close(got.double(), brute_force_max_relative(conv, x, neighbours), rtol=1e-5, atol=1e-5)


def test_a_node_whose_only_neighbour_is_itself_gets_zero_relative_features():
    torch.manual_seed(0)
    conv = MaxRelativeGraphConv(dim=4, out_dim=8, groups=2).eval()
    x = torch.randn(1, 5, 4)
    own = torch.arange(5).view(1, 5, 1)
    with torch.no_grad():
        got = conv(x, own)
        zero_rel = torch.stack([x, torch.zeros_like(x)], -1).flatten(2)     # [x_i, 0] interleaved
        ref = conv.act(conv.norm(conv.conv(zero_rel)))
    torch.testing.assert_close(got, ref)


def _graphs_of(model, x):
    graphs = []

    def capture(i, h, neighbours):
        graphs.append(neighbours.clone())
        return h
    return model.forward_features(x, graph_hook=capture), graphs


@pytest.mark.parametrize("training", [False, True])
def test_vig_gradient_with_real_neighbour_selection_matches_finite_differences(training):
    """test_vig has 49 nodes and k = 4 / 8: neighbours are a selection. Block 1 also gets dilation 2.
    The finite-difference step must not change any graph: checked, not assumed."""
    torch.manual_seed(0)
    m = models.create_backbone("test_vig").double().train(training)
    m.blocks[1].grapher.dilation = 2
    assert [b.grapher.num_knn for b in m.blocks] == [4, 8]
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    direction = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def f(inp):
        nodes, graphs = _graphs_of(m, inp)
        return m.forward_head(nodes, pre_logits=True).pow(2).sum(), graphs

    value, graphs = f(x)
    assert [g.shape[-1] for g in graphs] == [4, 8] and all(g.shape[1] == 49 for g in graphs)
    value.backward()
    eps = 1e-6
    with torch.no_grad():
        plus, g_plus = f(x + eps * direction)
        minus, g_minus = f(x - eps * direction)
    for a, b, c in zip(graphs, g_plus, g_minus):  # the step stays inside one selection
        assert torch.equal(a, b) and torch.equal(a, c)
    fd = (plus - minus) / (2 * eps)
    assert (x.grad * direction).sum().item() == pytest.approx(fd.item(), rel=1e-5)


def test_grapher_passes_gradcheck_with_k_smaller_than_the_node_count():
    """Element-wise gradcheck of one Grapher (k = 3 of 12 nodes, dilation 2) in training mode."""
    torch.manual_seed(0)
    grapher = models.Grapher(dim=8, num_knn=3, dilation=2).double().train()
    x = torch.randn(2, 12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    # a step that changed the graph would make the numerical gradient jump and fail the check
    assert torch.autograd.gradcheck(lambda t: grapher(t), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
