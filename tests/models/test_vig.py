"""Vision GNN: the timm contract, the graph, node masks, block hooks and registration."""
import pytest
import timm
import torch
import torch.nn.functional as F

import models
from models.vig import VisionGNN, effective_knn

FEWSHOT_BACKBONES = {"vig_ti_224_gelu", "vig_s_224_gelu", "vig_b_224_gelu",
                     "vig_small_28", "vig_small_ln_28", "vig_small_c4_28", "vig_small_c4_nograph_28", "vig_small_84", "test_vig", "conv4", "conv64f", "vig_small_c4_grid_28", "vig_small_c4_self_28",
                     "pvig_ti_224_gelu", "pvig_s_224_gelu", "pvig_m_224_gelu", "pvig_b_224_gelu",
                     "pvig_small_28", "pvig_small_84", "test_pvig"}
# Small enough to run forward and backward in the fast suite, with an input size each accepts.
FAST_MODELS = {"test_vig": (1, 28), "vig_small_28": (1, 28), "vig_small_c4_28": (1, 28), "vig_small_84": (3, 84), "conv4": (1, 28)}
PAPER_PARAMS = {"vig_ti_224_gelu": 7.1e6, "vig_s_224_gelu": 22.7e6, "vig_b_224_gelu": 86.8e6}


def images(batch, in_chans, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_chans, size, size, generator=g)


def seeded_model(name, seed=0, **kwargs):
    """Build a model from a seed without leaving the global RNG changed."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model(name, **kwargs)


def tiny_vig(**kwargs):
    """test_vig in eval mode (BatchNorm uses running statistics, so samples do not interact)."""
    return seeded_model("test_vig", **kwargs).eval()


class TestRegistry:
    def test_import_registers_every_fewshot_backbone_in_timm(self):
        assert set(models.list_backbones()) == FEWSHOT_BACKBONES

    @pytest.mark.parametrize("name", sorted(FEWSHOT_BACKBONES))
    def test_timm_create_model_builds_each_backbone_by_name(self, name):
        with torch.device("meta"):
            model = timm.create_model(name)
        assert model.pretrained_cfg["architecture"] == name
        assert model.num_prefix_tokens == 0

    @pytest.mark.parametrize("name", sorted(n for n in FEWSHOT_BACKBONES if not n.endswith("_224_gelu")))  # no release
    def test_pretrained_true_raises_a_clear_error(self, name):
        with pytest.raises(ValueError, match="no pretrained weights"):
            timm.create_model(name, pretrained=True)

    @pytest.mark.parametrize("name, paper", sorted(PAPER_PARAMS.items()))
    def test_parameter_count_is_within_5_percent_of_the_paper(self, name, paper):
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=1000)
        count = sum(p.numel() for p in model.parameters())
        assert abs(count - paper) / paper < 0.05, f"{name}: {count / 1e6:.2f}M vs paper {paper / 1e6:.1f}M"

    def test_vig_small_28_has_about_0_6_million_parameters_and_49_nodes(self):
        with torch.device("meta"):
            model = timm.create_model("vig_small_28")
        assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 0.7e6
        assert model.grid_size == (7, 7)
        assert model.num_classes == 0


class TestCreateBackbone:
    def test_create_backbone_returns_a_model_without_classifier(self):
        model = models.create_backbone("test_vig")
        assert model.num_classes == 0
        assert model(images(2, 1, 28)).shape == (2, 32)

    def test_create_backbone_passes_img_size_and_in_chans_through(self):
        model = models.create_backbone("vig_small_28", img_size=32, in_chans=3)
        assert model.stem.convs[0].in_channels == 3
        assert model.grid_size == (8, 8)

    def test_unknown_name_raises_value_error_listing_backbones_and_the_closest_name(self):
        with pytest.raises(ValueError) as err:
            models.create_backbone("vig_smal_28")
        message = str(err.value)
        assert "'vig_small_28'?" in message
        for name in FEWSHOT_BACKBONES:
            assert name in message


@pytest.mark.parametrize("name", sorted(FAST_MODELS))
class TestContract:
    def test_forward_features_gives_nodes_and_forward_head_the_pooled_embedding(self, name):
        in_chans, size = FAST_MODELS[name]
        model = seeded_model(name).eval()
        with torch.no_grad():
            nodes = model.forward_features(images(3, in_chans, size))
            pooled = model.forward_head(nodes, pre_logits=True)
        assert nodes.dim() == 3 and nodes.shape[0] == 3
        assert nodes.shape[1] == model.grid_size[0] * model.grid_size[1]
        assert pooled.shape == (3, model.num_features)

    def test_forward_with_classes_returns_logits_and_reset_classifier_changes_them(self, name):
        in_chans, size = FAST_MODELS[name]
        model = seeded_model(name, num_classes=7).eval()
        x = images(2, in_chans, size)
        with torch.no_grad():
            assert model(x).shape == (2, 7)
            model.reset_classifier(3)
            assert model(x).shape == (2, 3)
            model.reset_classifier(0)
            assert model(x).shape == (2, model.num_features)

    def test_backward_gives_every_parameter_a_gradient(self, name):
        in_chans, size = FAST_MODELS[name]
        model = seeded_model(name, num_classes=5).train()
        model(images(4, in_chans, size)).logsumexp(dim=1).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == []

    def test_same_seed_gives_the_same_weights_and_another_seed_different_ones(self, name):
        a, b, c = seeded_model(name, seed=1), seeded_model(name, seed=1), seeded_model(name, seed=2)
        for (key, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
            assert torch.equal(pa, pb), key
        assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))

    def test_no_weight_decay_names_existing_parameters(self, name):
        model = seeded_model(name)
        assert model.no_weight_decay() <= dict(model.named_parameters()).keys()


class TestArchitecture:
    @pytest.mark.parametrize("stride, convs", [(2, 1), (4, 2), (8, 3), (16, 4)])
    def test_stem_has_one_stride_2_conv_per_halving_then_a_stride_1_conv(self, stride, convs):
        with torch.device("meta"):
            model = VisionGNN(img_size=32, in_chans=1, num_classes=0, embed_dim=32, depth=1, stem_stride=stride)
        conv_layers = [m for m in model.stem.convs if isinstance(m, torch.nn.Conv2d)]
        assert [m.stride for m in conv_layers] == [(2, 2)] * convs + [(1, 1)]
        assert conv_layers[0].out_channels == 32 >> (convs - 1)
        assert model.grid_size == (32 // stride, 32 // stride)

    def test_k_grows_from_num_knn_to_twice_it_and_dilation_every_four_blocks(self):
        with torch.device("meta"):
            model = timm.create_model("vig_ti_224_gelu")
        assert model.knn_per_block[0] == 9 and model.knn_per_block[-1] == 18
        assert model.knn_per_block == sorted(model.knn_per_block)
        assert model.dilation_per_block == [1] * 4 + [2] * 4 + [3] * 4
        assert [b.grapher.num_knn for b in model.blocks] == model.knn_per_block

    def test_max_dilation_defaults_to_nodes_over_twice_num_knn(self):
        args = dict(img_size=28, in_chans=1, num_classes=0, embed_dim=32, depth=12, num_knn=9, stem_stride=4)
        with torch.device("meta"):
            default, explicit = VisionGNN(**args), VisionGNN(max_dilation=1, **args)
        assert default.dilation_per_block == [1] * 4 + [2] * 8  # 49 nodes // (2 * 9) = 2
        assert explicit.dilation_per_block == [1] * 12

    @pytest.mark.parametrize("kwargs, message", [
        (dict(stem_stride=6), "power of two"),
        (dict(embed_dim=30), "divisible by 8"),
        (dict(depth=-1), "depth"),
        (dict(num_knn=0), "num_knn"),
        (dict(max_dilation=0), "max_dilation"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
        (dict(act_layer="no_such_act"), "act_layer"),
    ])
    def test_bad_arguments_raise_value_error_naming_the_argument(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            VisionGNN(**kwargs)

    def test_head_is_identity_without_classes_and_pooled_embedding_with_pre_logits(self):
        model = tiny_vig(num_classes=0)
        nodes = model.forward_features(images(2, 1, 28))
        assert torch.equal(model.forward_head(nodes), model.forward_head(nodes, pre_logits=True))
        assert torch.allclose(model.forward_head(nodes, pre_logits=True), nodes.mean(dim=1))


class TestGraph:
    def test_every_node_is_its_own_nearest_neighbour(self):
        model = tiny_vig()
        x = torch.randn(2, 49, 32, generator=torch.Generator().manual_seed(0))
        neighbours = model.blocks[0].grapher.neighbours(x)
        assert neighbours.shape == (2, 49, 4)
        assert torch.equal(neighbours[..., 0], torch.arange(49).expand(2, 49))

    def test_dilation_takes_every_dth_of_the_k_times_d_nearest(self):
        x = torch.randn(2, 49, 16, generator=torch.Generator().manual_seed(0))
        dense = models.knn_graph(x, num_knn=12)
        dilated = models.knn_graph(x, num_knn=4, dilation=3)
        assert torch.equal(dilated, dense[..., ::3])

    def test_a_masked_node_never_appears_in_any_neighbour_list(self):
        model = tiny_vig()
        x = torch.randn(3, 49, 32, generator=torch.Generator().manual_seed(1))
        mask = torch.ones(3, 49, dtype=torch.bool)
        mask[0, [0, 5, 17]] = False
        mask[2, 10:40] = False
        for block in model.blocks:
            neighbours = block.grapher.neighbours(x, mask)
            chosen_masked = ~torch.gather(mask, 1, neighbours.flatten(1))
            assert not chosen_masked.any()

    @pytest.mark.parametrize("num_valid", [1, 3, 7, 10, 20])
    def test_k_times_d_never_exceeds_the_valid_nodes_when_most_nodes_are_masked(self, num_valid):
        x = torch.randn(2, 49, 16, generator=torch.Generator().manual_seed(0))
        mask = torch.zeros(2, 49, dtype=torch.bool)
        mask[:, :num_valid] = True
        neighbours = models.knn_graph(x, num_knn=9, dilation=3, node_mask=mask)
        k, d = effective_knn(9, 3, num_valid)
        assert k * d <= num_valid and neighbours.shape == (2, 49, k)
        assert (neighbours < num_valid).all()
        assert all(len(set(row.tolist())) == k for row in neighbours.flatten(0, 1))

    def test_a_model_runs_when_only_a_few_nodes_are_kept(self):
        model = tiny_vig(num_classes=4)
        mask = torch.zeros(2, 49, dtype=torch.bool)
        mask[:, :2] = True
        with torch.no_grad():
            assert torch.isfinite(model(images(2, 1, 28), node_mask=mask)).all()

    def test_a_mask_that_keeps_no_node_raises_value_error(self):
        model = tiny_vig()
        with pytest.raises(ValueError, match="at least one node"):
            model.forward_features(images(2, 1, 28), node_mask=torch.zeros(2, 49, dtype=torch.bool))

    def test_a_mask_of_the_wrong_shape_raises_value_error(self):
        model = tiny_vig()
        with pytest.raises(ValueError, match=r"\[B, N\]"):
            model.forward_features(images(2, 1, 28), node_mask=torch.ones(2, 48, dtype=torch.bool))


class TestNodeMask:
    def test_changing_a_masked_nodes_features_does_not_change_the_pooled_output(self):
        model = tiny_vig(num_classes=0)
        x = images(2, 1, 28)
        mask = torch.ones(2, 49, dtype=torch.bool)
        mask[:, [3, 20, 41]] = False

        def overwrite(value):
            def hook(i, nodes, node_mask):
                if i == 0:
                    nodes = nodes.clone()
                    nodes[:, [3, 20, 41]] = value
                return nodes, node_mask
            return hook

        with torch.no_grad():
            a = model(x, node_mask=mask, block_hook=overwrite(0.0))
            b = model(x, node_mask=mask, block_hook=overwrite(1e3))
            unmasked = model(x, block_hook=overwrite(1e3))
        assert torch.allclose(a, b, atol=1e-5)
        assert not torch.allclose(a, unmasked, atol=1e-3)

    def test_forward_features_returns_the_mask_in_force_after_the_last_block(self):
        model = tiny_vig()
        mask = torch.ones(2, 49, dtype=torch.bool)
        mask[:, 0] = False
        nodes, out_mask = model.forward_features(images(2, 1, 28), node_mask=mask, return_mask=True)
        assert torch.equal(out_mask, mask)
        assert nodes.shape == (2, 49, 32)

    def test_forward_head_pools_by_masked_mean(self):
        model = tiny_vig()
        nodes = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
        mask = torch.tensor([[True, True, False, False, False], [True] * 5])
        pooled = model.forward_head(nodes, pre_logits=True, node_mask=mask)
        assert torch.allclose(pooled[0], nodes[0, :2].mean(0))
        assert torch.allclose(pooled[1], nodes[1].mean(0))


class TestBlockHook:
    def test_a_hook_that_appends_m_nodes_grows_n_by_m_in_the_following_blocks(self):
        model = tiny_vig(depth=3)
        prompts = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0))
        seen = {}

        def hook(i, x, node_mask):
            seen[i] = (x.shape[1], node_mask.shape[1])
            if i == 1:
                x = torch.cat([x, prompts.expand(x.shape[0], -1, -1)], dim=1)
                node_mask = torch.cat([node_mask, node_mask.new_ones(x.shape[0], 5)], dim=1)
            return x, node_mask

        graph_sizes = []
        handles = [b.grapher.register_forward_pre_hook(lambda m, args: graph_sizes.append(args[0].shape[1]))
                   for b in model.blocks]
        with torch.no_grad():
            nodes, mask = model.forward_features(images(2, 1, 28), block_hook=hook, return_mask=True)
        for h in handles:
            h.remove()
        assert seen == {0: (49, 49), 1: (49, 49), 2: (54, 54)}
        assert graph_sizes == [49, 54, 54]
        assert nodes.shape == (2, 54, 32) and mask.shape == (2, 54)

    def test_the_hook_is_called_before_every_block_with_its_index(self):
        model = tiny_vig()
        calls = []

        def hook(i, x, node_mask):
            calls.append(i)
            return x, node_mask

        model.forward_features(images(1, 1, 28), block_hook=hook)
        assert calls == list(range(len(model.blocks)))

    def test_a_hook_returning_the_wrong_feature_dim_raises_value_error(self):
        model = tiny_vig()
        with pytest.raises(ValueError, match="block_hook"):
            model.forward_features(images(1, 1, 28), block_hook=lambda i, x, m: (x[..., :3], m))

    def test_prompt_nodes_receive_gradients_through_the_graph(self):
        model = tiny_vig(depth=3)
        prompts = torch.zeros(1, 3, 32, requires_grad=True)

        def hook(i, x, node_mask):
            if i == 0:
                x = torch.cat([x, prompts.expand(x.shape[0], -1, -1)], dim=1)
                node_mask = torch.cat([node_mask, node_mask.new_ones(x.shape[0], 3)], dim=1)
            return x, node_mask

        model(images(2, 1, 28), block_hook=hook).sum().backward()
        assert prompts.grad is not None and prompts.grad.abs().sum() > 0


class TestPositionEmbedding:
    def test_input_of_the_configured_size_uses_the_embedding_as_is(self):
        model = tiny_vig()
        x = torch.zeros(1, 32, 7, 7)
        assert torch.equal(model._pos_embed(x), model.pos_embed)

    def test_a_different_input_size_interpolates_the_embedding_bilinearly(self):
        model = tiny_vig()
        resized = model._pos_embed(torch.zeros(1, 32, 14, 14))
        expected = F.interpolate(model.pos_embed, size=(14, 14), mode="bilinear", align_corners=False)
        assert torch.allclose(resized, expected)

    def test_a_larger_image_gives_more_nodes(self):
        model = tiny_vig()
        with torch.no_grad():
            nodes = model.forward_features(images(2, 1, 56))
            pooled = model.forward_head(nodes, pre_logits=True)
        assert nodes.shape == (2, 14 * 14, 32) and pooled.shape == (2, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_imagenet_variants_run_forward_at_224(name):
    model = seeded_model(name).eval()
    with torch.no_grad():
        assert model(images(1, 3, 224)).shape == (1, 1000)


@pytest.mark.parametrize("training", [False, True])
def test_vig_gradients_match_finite_differences(training):
    """Backprop through the whole ViG equals a central finite difference (float64, every node a
    neighbour so the graph cannot change). Guards against torch's BatchNorm2d backward bug on
    strided views (see ``models.layers.ContiguousGrad``)."""
    torch.manual_seed(0)
    m = models.create_backbone("test_vig", img_size=28, in_chans=1).double().train(training)
    for block in m.blocks:
        block.grapher.num_knn, block.grapher.dilation = 10_000, 1
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    d = torch.randn_like(x)

    def f(x):
        return m.forward_head(m.forward_features(x), pre_logits=True).pow(2).sum()

    f(x).backward()
    with torch.no_grad():
        fd = (f(x + 1e-6 * d) - f(x - 1e-6 * d)) / 2e-6
    assert (x.grad * d).sum().item() == pytest.approx(fd.item(), rel=1e-5)


class TestPoolStem:
    """stem_type="pool": Conv-4's conv-BN-act-max-pool blocks, then a conv to D."""

    @pytest.mark.parametrize("size, grid", [(28, (7, 7)), (30, (8, 8)), (21, (6, 6))])
    def test_grid_is_ceil_of_halvings_and_matches_the_output(self, size, grid):
        model = VisionGNN(img_size=size, in_chans=1, num_classes=0, embed_dim=32, depth=1, num_knn=4,
                          stem_stride=4, stem_type="pool").eval()
        assert model.grid_size == grid
        assert model.forward_features(images(2, 1, size)).shape == (2, grid[0] * grid[1], 32)

    def test_each_node_is_the_max_of_its_conv_window(self):
        """Against a plain reference: conv-BN-act, then the maximum over each 2x2 window."""
        from models.vig import PoolStem
        torch.manual_seed(0)
        stem = PoolStem(1, 16, stride=2, width=8).eval()
        x = images(1, 1, 6)
        conv, norm, act = stem.convs[0], stem.convs[1], stem.convs[2]
        a = act(norm(conv(x)))  # [1, 8, 6, 6]
        pooled = torch.stack([torch.stack([a[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2].amax((-2, -1))
                                           for j in range(3)], -1) for i in range(3)], -2)
        expected = stem.convs[5](stem.convs[4](pooled))
        torch.testing.assert_close(stem(x), expected)

    def test_the_no_graph_control_is_the_stem_alone(self):
        """depth 0: nodes = LayerNorm(flattened stem(x) + pos_embed)."""
        model = seeded_model("vig_small_c4_nograph_28").eval()
        assert len(model.blocks) == 0
        x = images(2, 1, 28)
        expected = model.norm((model.stem(x) + model.pos_embed).flatten(2).transpose(1, 2))
        torch.testing.assert_close(model.forward_features(x), expected)

    def test_unknown_stem_type_is_refused_with_the_choices(self):
        with pytest.raises(ValueError, match="stem_type must be one of conv, pool"):
            VisionGNN(img_size=28, in_chans=1, num_classes=0, embed_dim=32, depth=1, stem_type="maxpool")
