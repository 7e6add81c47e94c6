"""Graph prompts: node counts, deletion, gradients, shapes, determinism (tiny test_vig backbone)."""
from __future__ import annotations

import math

import pytest
import torch

import matchers
import models
import prompts
from episodes import to_input
from fewshot.prompting import PromptedModel, freeze
from prompts.delete_nodes import block_masks, topk_mask

WAY, SHOT = 3, 2


@pytest.fixture(scope="module")
def episode():
    g = torch.Generator().manual_seed(1)
    support = torch.randn(WAY * SHOT, 1, 28, 28, generator=g)
    labels = torch.arange(WAY).repeat_interleave(SHOT)
    query = torch.randn(4, 1, 28, 28, generator=g)
    return support, labels, query


def conditioned(prompt, backbone, support, labels):
    with torch.no_grad():
        prompt.set_episode(backbone.forward_features(support), labels)
    return prompt


def test_registry_lists_every_family_and_rejects_unknown_options(backbone):
    assert set(prompts.list_prompts()) >= {"none", "add", "modify", "delete", "graph", "vpt", "vpt-shallow",
                                           "gpf", "gpf-plus", "vgp"}
    with pytest.raises(ValueError, match="takes no option"):
        prompts.create("gpf", backbone, num_nodes=3)
    with pytest.raises(ValueError, match="unknown prompt"):
        prompts.create("nope", backbone)


@pytest.mark.parametrize("spec,expected", [("all", (0, 1)), ("1", (1,)), ("1,0", (0, 1)), ([0], (0,))])
def test_parse_blocks(spec, expected):
    assert prompts.parse_blocks(spec, 2) == expected


def test_parse_blocks_rejects_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        prompts.parse_blocks("0,4", 2)


def test_conv_backbone_is_refused():
    with pytest.raises(ValueError, match="ViG"):
        prompts.create("gpf", models.create_backbone("conv4"))


@pytest.mark.parametrize("name,extra", [("add", 3), ("vpt", 3), ("vgp", 3), ("graph", 3), ("vpt-shallow", 3)])
def test_adding_m_nodes_grows_prompted_blocks_by_m(backbone, episode, name, extra):
    support, labels, _ = episode
    prompt = prompts.create(name, backbone, blocks="1" if name != "vpt-shallow" else "0", num_nodes=extra)
    conditioned(prompt, backbone, support, labels)
    seen = {}
    grapher = backbone.blocks[1].grapher
    handle = grapher.register_forward_pre_hook(lambda mod, args: seen.update(n=args[0].shape[1]))
    try:
        with torch.no_grad():
            nodes, mask = prompt.forward_nodes(backbone, support)
    finally:
        handle.remove()
    n0 = prompt.num_patch_nodes
    assert seen["n"] == n0 + extra
    assert nodes.shape == (WAY * SHOT, n0, backbone.embed_dim)
    assert backbone.forward_head(nodes, pre_logits=True, node_mask=mask).shape == (WAY * SHOT, backbone.embed_dim)


def test_unprompted_blocks_keep_n0_nodes(backbone, episode):
    support, labels, _ = episode
    prompt = conditioned(prompts.create("add", backbone, blocks="1", num_nodes=5), backbone, support, labels)
    sizes = []
    h = backbone.blocks[0].grapher.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[1]))
    try:
        with torch.no_grad():
            prompt.forward_nodes(backbone, support)
    finally:
        h.remove()
    assert sizes == [prompt.num_patch_nodes]


@pytest.mark.parametrize("name", ["delete", "graph"])
def test_deleted_node_is_never_a_neighbour_and_does_not_change_pooling(backbone, episode, name):
    support, labels, _ = episode
    prompt = conditioned(prompts.create(name, backbone, blocks="all", keep=0.5), backbone, support, labels).eval()
    graphs = []

    def capture(i, h, neighbours):
        graphs.append(neighbours)
        return h

    prompt.uses_graph_hook = True
    prompt.graph_hook = capture
    with torch.no_grad():
        nodes, mask = prompt.forward_nodes(backbone, support)
    assert mask is not None and int((~mask).sum()) > 0
    n0 = prompt.num_patch_nodes
    deleted = [set((~mask[b]).nonzero().flatten().tolist()) for b in range(mask.shape[0])]
    assert len(graphs) == len(backbone.blocks)
    for nb in graphs:
        for b in range(nb.shape[0]):
            assert not deleted[b] & set(nb[b].flatten().tolist())
    pooled = backbone.forward_head(nodes, pre_logits=True, node_mask=mask)

    # scramble the deleted nodes' features right after they are deleted: the output must not move
    hook = prompt.block_hook

    def scrambling(i, x, node_mask):
        x, node_mask = hook(i, x, node_mask)
        noise = torch.randn_like(x) * 100
        return torch.where(node_mask.unsqueeze(-1), x, noise), node_mask

    prompt.block_hook = scrambling
    with torch.no_grad():
        nodes2, mask2 = prompt.forward_nodes(backbone, support)
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(backbone.forward_head(nodes2, pre_logits=True, node_mask=mask2), pooled)
    # and the pooled embedding is the mean of the kept patch nodes only
    for b in range(nodes.shape[0]):
        torch.testing.assert_close(pooled[b], nodes[b][mask[b]].mean(0))
    assert nodes.shape[1] == n0


def test_delete_keeps_exactly_ceil_keep_n0(backbone, episode):
    support, labels, _ = episode
    prompt = conditioned(prompts.create("delete", backbone, keep=0.3), backbone, support, labels).eval()
    with torch.no_grad():
        _, mask = prompt.forward_nodes(backbone, support)
    assert mask.sum(1).tolist() == [15] * support.shape[0]  # ceil(0.3 * 49)


def test_topk_mask_and_block_masks():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    assert topk_mask(scores, 2).tolist() == [[False, True, True, False]]
    m = block_masks(4, (7, 7), 0.25, torch.Generator().manual_seed(0))
    assert m.shape == (4, 49) and bool(m.any(1).all()) and int((~m).sum(1).min()) == 16  # 4x4 blocks


VGP_VIRTUAL_NODES_UNSEEN = pytest.mark.xfail(strict=True, reason=(
    "VGP's virtual nodes (V P_g, 0.02-scaled) sit near the origin, where no patch node of this random test_vig "
    "picks them as a neighbour: vgp's per_block.1.virtual / .graph_prompt and svgp's per_block.*.virtual / "
    ".graph_prompt get exactly zero gradient (the placement add had before its nodes were anchored at the "
    "image's mean patch node). VGP places them as free parameters, as the paper does; on the shipped backbones "
    "the graph picks them and they train (test_vgp_virtual_nodes_train_on_the_shipped_backbones)"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=VGP_VIRTUAL_NODES_UNSEEN) if n in ("vgp", "svgp") else n
                                  for n in prompts.list_prompts() if n != "none"])
def test_frozen_backbone_gets_no_gradient_and_every_prompt_parameter_does(backbone, episode, name):
    support, labels, query = episode
    torch.manual_seed(0)  # the prompt's initial values decide which nodes the graph picks
    prompt = prompts.create(name, backbone, **({"clusters": 1} if name == "damvp" else {}))
    if name == "damvp":  # one cluster: every image routes to it, so every parameter is on the path
        prompt.fit_clusters(backbone, to_input(torch.cat([support, query])))
    model = PromptedModel(backbone, prompt, matchers.create("prototype")).train()
    # nudge zero-initialised outputs so every parameter is on a path with non-zero upstream
    with torch.no_grad():
        for p in prompt.parameters():
            if p.abs().sum() == 0:
                p.add_(0.01)
    logits = model(support, labels, query)
    (logits.logsumexp(-1).sum() + logits[:, 0].sum()).backward()
    assert all(p.grad is None for p in backbone.parameters())
    missing = [n for n, p in prompt.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing  # a zero gradient is no gradient: such a parameter never trains
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(p.numel() for p in prompt.parameters())


@pytest.mark.parametrize("weights", ["vig_small_c4_28.glyphs", "vig_small_c4_28.omniglot_minimal"])
@pytest.mark.parametrize("name", ["vgp", "svgp"])
def test_vgp_virtual_nodes_train_on_the_shipped_backbones(weights, name):
    """What the xfail above leaves open, on trained weights: on one glyphs episode through the shipped
    backbones, every block's virtual nodes ``V`` and graph prompt ``P_g`` get a non-zero gradient (the
    patch nodes pick them). (The results tables' own vig_small_28 sources are not shipped, so not checked here.)"""
    import timm

    from episodes import EpisodeSampler, load_splits

    test = load_splits("glyphs").test
    ep = EpisodeSampler(test, 5, 1, 3, seed=0)[0]
    backbone = timm.create_model(weights, pretrained=True).eval()
    freeze(backbone)
    torch.manual_seed(0)
    prompt = prompts.create(name, backbone)
    model = PromptedModel(backbone, prompt, matchers.create("prototype")).train()
    logits = model(to_input(test.images[ep.support]), ep.support_labels, to_input(test.images[ep.query]))
    torch.nn.functional.cross_entropy(logits, ep.query_labels).backward()
    graph = {n: p.grad for n, p in prompt.named_parameters() if n.endswith((".virtual", ".graph_prompt"))}
    assert len(graph) == 2 * len(prompt.blocks)
    dead = [n for n, g in graph.items() if g is None or not g.abs().sum() > 0]
    assert not dead, dead


def test_gpf_adds_the_same_vector_to_every_patch_node(backbone, episode):
    support, _, _ = episode
    prompt = prompts.create("gpf", backbone, blocks="0")
    with torch.no_grad():
        prompt.vectors.fill_(0.5)
    x = torch.randn(2, 49, backbone.embed_dim)
    y, _ = prompt.block_hook(0, x, torch.ones(2, 49, dtype=torch.bool))
    torch.testing.assert_close(y, x + 0.5)
    y, _ = prompt.block_hook(1, x, torch.ones(2, 49, dtype=torch.bool))
    assert y is x


def linear_loop(weight, bias, v):
    """``weight @ v + bias`` written out: [out, in], [out], [in] -> list of floats."""
    return [float(bias[o]) + sum(float(weight[o, t]) * float(v[t]) for t in range(len(v))) for o in range(weight.shape[0])]


def test_gpf_plus_is_attention_over_the_basis(backbone):
    """GPF-plus (Fang et al., NeurIPS 2023, eq. 6): node i gets ``p_i = sum_j alpha_ij p_j`` with
    ``alpha_ij = exp(a_j . x_i + b_j) / sum_l exp(a_l . x_i + b_l)`` over K basis vectors p_j; only the
    N0 patch nodes are prompted, nodes appended after them and unprompted blocks are left alone."""
    torch.manual_seed(0)
    prompt = prompts.create("gpf-plus", backbone, blocks="1", basis_size=3)
    with torch.no_grad():
        prompt.basis.normal_()
    basis = prompt.basis.detach()[0]                             # [K, D]
    a, b = prompt.attn[0].weight.detach(), prompt.attn[0].bias.detach()
    d, n0 = backbone.embed_dim, 49
    x = torch.randn(2, n0 + 2, d, generator=torch.Generator().manual_seed(7))   # two appended nodes
    mask = torch.ones(2, n0 + 2, dtype=torch.bool)
    with torch.no_grad():
        y, m = prompt.block_hook(1, x, mask)
        untouched, _ = prompt.block_hook(0, x, mask)
    ref = x.clone().double()
    for bi in range(2):
        for i in range(n0):
            scores = linear_loop(a, b, x[bi, i])
            top = max(scores)
            e = [math.exp(sc - top) for sc in scores]
            alpha = [v / sum(e) for v in e]
            for c in range(d):
                ref[bi, i, c] += sum(alpha[j] * float(basis[j, c]) for j in range(3))
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(y[:, n0:], x[:, n0:]) and torch.equal(m, mask)
    assert torch.equal(untouched, x)


def test_vgp_low_rank_shapes_and_prompts_against_loops(backbone):
    """VGP (Ai, Liu and Zhou, ICML 2025), per prompted block, written out entry by entry:
    SeLo-Node ``x_i <- x_i + a_n sum_r (W_n x_i + b_n)_r P_n[r]``; SeLo-Graph virtual nodes ``V P_g``
    appended after the patch nodes; SeLo-Edge ``h_i <- h_i + a_e sum_r mean_{j in N(i)} (W_e h_j + b_e)_r P_e[r]``."""
    torch.manual_seed(0)
    prompt = prompts.create("vgp", backbone, blocks="0", num_nodes=2, rank=3)
    p = prompt.per_block[0]
    d, r = backbone.embed_dim, 3
    assert p.virtual.shape == (2, r) and p.graph_prompt.shape == (r, d)
    assert p.node_prompt.shape == (r, d) and p.edge_prompt.shape == (r, d)
    assert p.node_down.weight.shape == (r, d) and p.edge_down.weight.shape == (r, d)
    with torch.no_grad():
        p.edge_prompt.normal_()
        p.node_prompt.normal_()
        p.node_scale.fill_(0.7)
        p.edge_scale.fill_(1.3)
    det = {k: v.detach() for k, v in p.named_parameters()}
    # edge prompt
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 5, d, generator=g)
    nb = torch.randint(0, 5, (2, 5, 3), generator=g)
    with torch.no_grad():
        out = prompt.graph_hook(0, h, nb)
    ref = h.clone().double()
    for b in range(2):
        for i in range(5):
            lows = [linear_loop(det["edge_down.weight"], det["edge_down.bias"], h[b, j]) for j in nb[b, i].tolist()]
            mean = [sum(low[t] for low in lows) / len(lows) for t in range(r)]
            for c in range(d):
                ref[b, i, c] += 1.3 * sum(mean[t] * float(det["edge_prompt"][t, c]) for t in range(r))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # node prompt and virtual nodes
    x = torch.randn(2, 49, d, generator=g)
    with torch.no_grad():
        y, m = prompt.block_hook(0, x, torch.ones(2, 49, dtype=torch.bool))
    assert y.shape == (2, 51, d) and m.shape == (2, 51) and bool(m.all())
    ref = x.clone().double()
    for b in range(2):
        for i in range(49):
            low = linear_loop(det["node_down.weight"], det["node_down.bias"], x[b, i])
            for c in range(d):
                ref[b, i, c] += 0.7 * sum(low[t] * float(det["node_prompt"][t, c]) for t in range(r))
    torch.testing.assert_close(y[:, :49].double(), ref, rtol=1e-5, atol=1e-5)
    virtual = torch.tensor([[sum(float(det["virtual"][mi, t]) * float(det["graph_prompt"][t, c]) for t in range(r))
                             for c in range(d)] for mi in range(2)], dtype=torch.float64)
    for b in range(2):
        torch.testing.assert_close(y[b, 49:].double(), virtual, rtol=1e-5, atol=1e-6)
    # a block that is not prompted is left alone
    with torch.no_grad():
        same, _ = prompt.block_hook(1, x, torch.ones(2, 49, dtype=torch.bool))
        assert torch.equal(prompt.graph_hook(1, h, nb), h)
    assert torch.equal(same, x)


def test_fresh_zero_initialised_prompts_change_nothing(backbone, episode):
    support, labels, _ = episode
    with torch.no_grad():
        plain = backbone.forward_head(backbone.forward_features(support), pre_logits=True)
        for name in ("gpf", "gpf-plus", "modify"):
            prompt = conditioned(prompts.create(name, backbone), backbone, support, labels)
            nodes, mask = prompt.forward_nodes(backbone, support)
            torch.testing.assert_close(backbone.forward_head(nodes, pre_logits=True, node_mask=mask), plain)


def test_support_generated_prompt_depends_on_the_support_set(backbone, episode, add_prompt):
    support, labels, _ = episode
    a = conditioned(add_prompt, backbone, support, labels).prompt_nodes(0).clone()
    b = conditioned(add_prompt, backbone, support.flip(-1), labels).prompt_nodes(0)
    assert a.shape == (4, backbone.embed_dim) and not torch.allclose(a, b)


@pytest.mark.parametrize("name,adapt", [("add", "amortised"), ("vgp", "tune"), ("none", "full"), ("none", "linear")])
def test_same_seed_same_prompt_same_accuracy(episode, name, adapt):
    support, labels, query = episode
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        bb = freeze(models.create_backbone("test_vig")).eval()
        model = PromptedModel(bb, prompts.create(name, bb), matchers.create("prototype"), adapt=adapt,
                              adapt_steps=2, seed=5).eval()
        with torch.inference_mode():
            outs.append(model(support, labels, query))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_tuning_does_not_change_the_stored_prompt_or_backbone(backbone, episode):
    support, labels, query = episode
    prompt = prompts.create("vgp", backbone)
    before = {k: v.clone() for k, v in prompt.state_dict().items()}
    bb_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    for adapt in ("tune", "full"):
        model = PromptedModel(backbone, prompt if adapt == "tune" else prompts.create("none", backbone),
                              matchers.create("prototype"), adapt=adapt, adapt_steps=2).eval()
        with torch.inference_mode():
            model(support, labels, query)
    assert all(torch.equal(before[k], v) for k, v in prompt.state_dict().items())
    assert all(torch.equal(bb_before[k], v) for k, v in backbone.state_dict().items())


@pytest.mark.parametrize("name", ["conv4", "test_pvig"])
def test_none_runs_any_backbone_and_graph_prompts_refuse_one_without_graph_blocks(name):
    """``none`` is the frozen backbone itself; a graph prompt names the ViGs it needs and ``--prompt none``."""
    torch.manual_seed(0)
    bb = freeze(models.create_backbone(name)).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(prompts.create("none", bb).embed(bb, x),
                                   bb.forward_head(bb.forward_features(x), pre_logits=True))
    with pytest.raises(ValueError, match=r"isotropic ViG backbone; .* --prompt none"):
        prompts.create("vgp", bb)
