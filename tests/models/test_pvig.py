"""Pyramid ViG: registry, parameter counts, the relative position term, the authors' layout, hooks and masks."""
import importlib.util
import math
import pathlib

import pytest
import timm
import torch
from torch import nn

import models
from models.checkpoints import check_fits
from models.pvig import PyramidVisionGNN, checkpoint_filter_fn, knn_to_keys, relative_position
from models.vig import knn_graph

_spec = importlib.util.spec_from_file_location("official_layout", pathlib.Path(__file__).with_name("official_layout.py"))
official_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(official_layout)

SIZES = {"pvig_ti_224_gelu": ((48, 96, 240, 384), (2, 2, 6, 2)), "pvig_s_224_gelu": ((80, 160, 400, 640), (2, 2, 6, 2)),
         "pvig_m_224_gelu": ((96, 192, 384, 768), (2, 2, 16, 2)),
         "pvig_b_224_gelu": ((128, 256, 512, 1024), (2, 2, 18, 2))}
PAPER_PARAMS = {"pvig_ti_224_gelu": 10.7e6, "pvig_s_224_gelu": 27.3e6, "pvig_m_224_gelu": 51.7e6,
                "pvig_b_224_gelu": 92.6e6}
SMALL = {"test_pvig": (1, 28), "pvig_small_28": (1, 28), "pvig_small_84": (3, 84)}


def meta_model(name, **kw):
    with torch.device("meta"):
        return timm.create_model(name, **kw)


def tiny(**kw):
    """A pyramid ViG with the authors' stem (stride 4): grids 8x8 (r 2) -> 4x4."""
    args = dict(img_size=32, channels=(16, 32), depths=(1, 2), reduce_ratios=(2, 1), num_knn=4, num_classes=10)
    torch.manual_seed(0)
    return PyramidVisionGNN(**dict(args, **kw))


class TestRegistry:
    def test_every_size_is_a_fewshot_backbone(self):
        assert set(SIZES) | set(SMALL) <= set(models.list_backbones())

    @pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
    def test_trainable_parameter_count_is_the_papers(self, name):
        """One rule for every size: the trainable parameters (the fixed relative-position terms, a
        ``requires_grad=False`` Parameter in the authors' ``Grapher``, a buffer here, are not counted).

        The paper does not say how it counts. Its Ti, S and B figures are the trainable counts (within
        0.5 %); counting the relative-position terms too would put Ti 16.7 %, S 6.3 % and B 2.8 % over.
        Its M figure (51.7M) is the exception: it is the trainable count *plus* those terms (49.53M +
        2.16M, 51.68M); by the rule used for the other three sizes M is 4.2 % under the paper, so M is
        held to that gap (4.5 %), not to 1 %: the paper counted M differently, not our M that differs.
        """
        model = meta_model(name, final_norm=False)
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        tolerance = 0.045 if name == "pvig_m_224_gelu" else 0.01
        assert abs(count - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < tolerance, count

    def test_the_papers_m_figure_is_the_trainable_count_plus_the_relative_position_terms(self):
        model = meta_model("pvig_m_224_gelu", final_norm=False)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        fixed = sum(b.numel() for n, b in model.named_buffers() if n.endswith("relative_pos"))
        assert abs(trainable + fixed - PAPER_PARAMS["pvig_m_224_gelu"]) / PAPER_PARAMS["pvig_m_224_gelu"] < 0.01
        assert (PAPER_PARAMS["pvig_m_224_gelu"] - trainable) / PAPER_PARAMS["pvig_m_224_gelu"] > 0.04

    def test_pretrained_cfg_points_to_the_release(self):
        cfg = timm.models.get_pretrained_cfg("pvig_ti_224_gelu")
        assert cfg.url.endswith("/releases/download/pyramid-vig/pvig_ti_78.5.pth.tar") and cfg.mean == (0.5,) * 3


class TestRelativePosition:
    def test_equals_2_p_pt_over_d_of_the_sine_cosine_embedding(self):
        dim, side = 16, 5
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
        ys, xs = torch.meshgrid(torch.arange(side.__float__()), torch.arange(float(side)), indexing="ij")
        feats = []
        for pos in (xs.flatten().double(), ys.flatten().double()):
            out = pos[:, None] * omega
            feats += [out.sin(), out.cos()]
        p = torch.cat(feats, dim=1)  # [25, dim]
        torch.testing.assert_close(relative_position(dim, (side, side)), (2 * p @ p.T / dim).float())

    def test_is_one_on_the_diagonal_and_shrinks_with_distance(self):
        rel = relative_position(32, (6, 6))
        torch.testing.assert_close(rel.diagonal(), torch.ones(36))
        assert rel[0, 1] > rel[0, 2] > rel[0, 3]

    def test_reduced_keys_resize_it(self):
        assert relative_position(32, (8, 8), (2, 2)).shape == (64, 4)


class TestKnnToKeys:
    def test_with_the_nodes_as_keys_and_no_bias_it_is_knn_graph(self):
        x = torch.randn(2, 20, 8, generator=torch.Generator().manual_seed(0))
        assert torch.equal(knn_to_keys(x, x, 4, 2), knn_graph(x, 4, 2))

    def test_bias_and_mask_change_the_choice(self):
        x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(1))
        bias = torch.zeros(6, 6)
        bias[:, 3] = -10.0  # key 3 becomes the nearest of every node
        assert (knn_to_keys(x, x, 1, 1, bias=bias) == 3).all()
        mask = torch.ones(1, 6, dtype=torch.bool)
        mask[0, 3] = False
        assert not (knn_to_keys(x, x, 2, 1, key_mask=mask, bias=bias) == 3).any()


class TestOfficialLayout:
    @pytest.mark.parametrize("name", sorted(SIZES))
    def test_every_official_key_maps_to_exactly_one_of_ours_with_the_same_shape(self, name):
        channels, blocks = SIZES[name]
        official = official_layout.make_state(official_layout.pyramid_shapes(channels, blocks), device="meta")
        model = meta_model(name, final_norm=False)
        mapped = checkpoint_filter_fn(dict(official), model)
        assert len(mapped) == len(official) and check_fits(mapped, model) == ([], [], [])
        with_norm = meta_model(name)
        assert check_fits(checkpoint_filter_fn(dict(official), with_norm), with_norm) == ([], [], [])

    def test_values_land_in_the_right_stage_and_block(self):
        shapes = official_layout.pyramid_shapes((16, 32), (1, 2), num_classes=10, img_size=32, reduce_ratios=(2, 1))
        official = official_layout.make_state(shapes)
        model = tiny()
        model.load_state_dict(checkpoint_filter_fn(dict(official), model))
        # backbone.0: stage 0 block 0; backbone.1: stage 1 downsample; backbone.2, .3: stage 1 blocks 0, 1
        assert torch.equal(model.stages[1].downsample[0].weight, official["backbone.1.conv.0.weight"])
        assert torch.equal(model.stages[1].blocks[1].ffn.fc1[0].weight, official["backbone.3.1.fc1.0.weight"])
        assert torch.equal(model.stages[0].blocks[0].grapher.relative_pos, official["backbone.0.0.relative_pos"])
        assert torch.equal(model.stages[1].blocks[0].grapher.graph_conv.conv.bias,
                           official["backbone.2.0.graph_conv.gconv.nn.0.bias"])

    @pytest.mark.slow
    def test_create_model_loads_their_pvig_ti_file(self, tmp_path):
        channels, blocks = SIZES["pvig_ti_224_gelu"]
        official = official_layout.make_state(official_layout.pyramid_shapes(channels, blocks))
        torch.save({"state_dict": official}, tmp_path / "pvig_ti_78.5.pth.tar")
        model = timm.create_model("pvig_ti_224_gelu", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / "pvig_ti_78.5.pth.tar")))
        assert isinstance(model.norm, nn.Identity)
        assert torch.equal(model.stages[3].blocks[1].grapher.fc_out[0].weight, official["backbone.14.0.fc2.0.weight"])


class TestContract:
    @pytest.mark.parametrize("name", sorted(SMALL))
    def test_forward_backward_reaches_every_parameter(self, name):
        in_chans, size = SMALL[name]
        torch.manual_seed(0)
        model = timm.create_model(name)
        x = torch.randn(3, in_chans, size, size)
        nodes = model.forward_features(x)
        emb = model.forward_head(nodes, pre_logits=True)
        assert emb.shape == (3, model.num_features)
        emb.square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    def test_other_input_sizes_resize_the_position_terms(self):
        model = tiny().eval()
        assert model(torch.randn(2, 3, 48, 48)).shape == (2, 10)

    def test_block_hook_runs_before_every_block_and_prompt_nodes_end_with_their_stage(self):
        model = tiny(num_classes=0).eval()
        seen = []

        def hook(i, x, mask):
            seen.append((i, x.shape[1]))
            if i == 0:  # two prompt nodes in stage 0
                x = torch.cat([x, x.new_zeros(x.shape[0], 2, x.shape[2])], dim=1)
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 2)], dim=1)
            return x, mask

        nodes, mask = model.forward_features(torch.randn(2, 3, 32, 32), block_hook=hook, return_mask=True)
        assert seen == [(0, 64), (1, 16), (2, 16)]
        assert nodes.shape == (2, 16, 32) and mask.shape == (2, 16)

    def test_a_deleted_node_is_never_read_within_its_stage(self):
        model = tiny(channels=(16,), depths=(2,), reduce_ratios=(2,), num_classes=0).eval()
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        mask = torch.ones(2, 64, dtype=torch.bool)
        mask[:, 5] = False

        def poison(value):
            def hook(i, nodes, m):
                nodes = nodes.clone()
                if i == 0:
                    nodes[:, 5] = value
                return nodes, m
            return hook

        with torch.no_grad():
            a = model.forward_features(x, mask, block_hook=poison(0.0))
            b = model.forward_features(x, mask, block_hook=poison(1e3))
        keep = torch.arange(64) != 5
        torch.testing.assert_close(a[:, keep], b[:, keep])
        assert not torch.allclose(a[:, 5], b[:, 5])

    def test_a_mask_follows_the_grid_through_downsampling(self):
        model = tiny(num_classes=0).eval()
        mask = torch.ones(1, 64, dtype=torch.bool)
        mask[0, [0, 1, 8, 9]] = False  # the whole top-left 2x2 cell
        _, out = model.forward_features(torch.randn(1, 3, 32, 32), mask, return_mask=True)
        assert out.shape == (1, 16) and not out[0, 0] and out[0, 1:].all()
