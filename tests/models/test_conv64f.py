"""Conv-64F (DN4's network): its 49 / 441 local descriptors, its parameter count, the backbone contract,
and that it trains end to end with the DN4 matcher, as `--backbone conv64f --matcher dn4` runs it."""
import json

import pytest
import timm
import torch

import matchers
import models
from fewshot.model import EpisodicModel
from models import Conv64F


def images(batch, in_chans, size, seed=0):
    return torch.randn(batch, in_chans, size, size, generator=torch.Generator().manual_seed(seed))


def hand_count(in_chans, width=64):
    """Four 3x3 convs without bias (a BatchNorm follows each), four BatchNorms of weight + bias."""
    convs = 9 * in_chans * width + 3 * 9 * width * width
    return convs + 4 * 2 * width


class TestShapes:
    @pytest.mark.parametrize("in_chans, size, side", [(1, 28, 7), (3, 84, 21)])
    def test_the_map_is_the_image_over_four_one_node_per_cell(self, in_chans, size, side):
        model = models.create_backbone("conv64f", in_chans=in_chans, img_size=size).eval()
        with torch.no_grad():
            nodes = model.forward_features(images(2, in_chans, size))
            pooled = model.forward_head(nodes, pre_logits=True)
        assert nodes.shape == (2, side * side, 64) and model.grid_size == (side, side)
        assert pooled.shape == (2, 64) and model.num_features == 64

    def test_nodes_are_the_last_feature_map_row_major(self):
        model = Conv64F().eval()
        x = images(1, 1, 28)
        with torch.no_grad():
            fmap = model.blocks(x)  # [1, 64, 7, 7]
            nodes = model.forward_features(x)
        assert torch.equal(nodes[0, 3 * 7 + 5], fmap[0, :, 3, 5])

    def test_pooling_before_the_last_two_blocks_only(self):
        pools = [any(isinstance(m, torch.nn.MaxPool2d) for m in block) for block in Conv64F().blocks]
        acts = [m for m in Conv64F().modules() if isinstance(m, torch.nn.LeakyReLU)]
        assert pools == [True, True, False, False]
        assert len(acts) == 4 and all(a.negative_slope == 0.2 for a in acts)

    def test_pooled_embedding_is_the_mean_of_the_kept_nodes(self):
        nodes = torch.randn(2, 49, 64, generator=torch.Generator().manual_seed(1))
        mask = torch.ones(2, 49, dtype=torch.bool)
        mask[0, 10:] = False
        pooled = Conv64F().forward_head(nodes, pre_logits=True, node_mask=mask)
        assert torch.allclose(pooled[0], nodes[0, :10].mean(0)) and torch.allclose(pooled[1], nodes[1].mean(0))


class TestParameters:
    @pytest.mark.parametrize("in_chans", [1, 3])
    def test_parameter_count_equals_the_hand_count(self, in_chans):
        model = timm.create_model("conv64f", in_chans=in_chans)
        assert sum(p.numel() for p in model.parameters()) == hand_count(in_chans)
        assert hand_count(1) == 111_680  # 576 + 3 * 36,864 + 4 * 128

    def test_a_classifier_adds_one_linear_layer_over_the_pooled_embedding(self):
        model = timm.create_model("conv64f", num_classes=5).eval()
        assert sum(p.numel() for p in model.parameters()) == hand_count(1) + 64 * 5 + 5
        assert model(images(2, 1, 28)).shape == (2, 5)
        model.reset_classifier(0)
        assert model(images(2, 1, 28)).shape == (2, 64)


class TestContract:
    def test_registered_in_timm_and_listed_as_a_fewshot_backbone(self):
        assert "conv64f" in models.list_backbones()
        model = timm.create_model("conv64f")
        assert isinstance(model, Conv64F) and model.num_classes == 0 and model.num_prefix_tokens == 0
        assert model.pretrained_cfg["architecture"] == "conv64f"

    def test_pretrained_true_raises_a_clear_error(self):
        with pytest.raises(ValueError, match="no pretrained weights exist for 'conv64f'"):
            timm.create_model("conv64f", pretrained=True)

    @pytest.mark.parametrize("kwargs, message", [
        (dict(img_size=3), "at least 4x4"),
        (dict(in_chans=0), "in_chans must be >= 1"),
        (dict(hidden_dim=0), "hidden_dim must be >= 1"),
    ])
    def test_bad_arguments_raise_value_error_naming_the_argument(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            Conv64F(**kwargs)

    def test_reset_classifier_refuses_another_pooling(self):
        with pytest.raises(ValueError, match="global_pool must be None or 'avg', got 'flatten'"):
            Conv64F().reset_classifier(3, global_pool="flatten")


def test_trains_end_to_end_with_the_dn4_matcher():
    """12 Adam steps on one fixed 5-way 2-shot episode: every parameter gets a non-zero gradient and the
    query loss of DN4 over the 49 descriptors falls to under half its start."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = EpisodicModel(timm.create_model("conv64f"), matchers.create("dn4"))
        assert getattr(model.matcher, "input", None) == "nodes"
        g = torch.Generator().manual_seed(0)
        support, query = torch.rand(10, 1, 28, 28, generator=g), torch.rand(10, 1, 28, 28, generator=g)
        query = 0.8 * support + 0.2 * query  # queries resemble their class's support images
        labels = torch.arange(5).repeat_interleave(2)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for step in range(12):
            loss = torch.nn.functional.cross_entropy(model(support, labels, query), labels)
            opt.zero_grad()
            loss.backward()
            if step == 0:
                dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
                assert not dead, f"no gradient reaches {dead}"
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_fewshot_train_backbone_conv64f_matcher_dn4(tmp_path):
    from click.testing import CliRunner
    from fewshot.cli import cli

    r = CliRunner().invoke(cli, ["train", "--backbone", "conv64f", "--matcher", "dn4", "--episodes", "3",
                                 "--eval-episodes", "4", "--val-episodes", "0", "--no-track", "--no-progress",
                                 "--threads", "1", "--run-dir", str(tmp_path / "run"), "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["backbone"] == "conv64f" and result["test_episodes"] == 4
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "backbone: conv64f" in config and "matcher: dn4" in config
    assert sum(v.numel() for k, v in torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"].items()
               if k.startswith("backbone.") and "running" not in k and "num_batches" not in k) == hand_count(1)
