"""Graph controls at equal parameters (models/graph_controls.py): the ViG's blocks and weights with the k-NN
neighbourhood replaced by the fixed 3x3 grid window or by the node alone."""
import pytest
import timm
import torch
import yaml

import models
from models.graph_controls import FixedGrapher, FixedGraphVisionGNN, grid_neighbours, self_neighbours
from models.vig import _SMALL_C4_28, Grapher

CONTROLS = ("vig_small_c4_grid_28", "vig_small_c4_self_28")


def seeded(name, seed=0, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model(name, **kwargs)


def window(node, h, w):
    """Brute force: the grid nodes within one row and one column of ``node``."""
    r, c = divmod(node, w)
    return {rr * w + cc for rr in range(r - 1, r + 2) for cc in range(c - 1, c + 2) if 0 <= rr < h and 0 <= cc < w}


class TestGridNeighbours:
    def test_an_interior_node_reads_its_8_neighbours_and_itself(self):
        nb = grid_neighbours((7, 7), 49)[0]
        assert nb.shape == (49, 9) and nb[24, 0] == 24
        assert set(nb[24].tolist()) == {16, 17, 18, 23, 24, 25, 30, 31, 32}
        assert len(set(nb[24].tolist())) == 9

    @pytest.mark.parametrize("grid", [(7, 7), (3, 5), (1, 4)])
    def test_every_node_reads_its_3x3_window_as_a_brute_force_lists_it(self, grid):
        h, w = grid
        nb = grid_neighbours(grid, h * w)[0]
        for node in range(h * w):
            assert set(nb[node].tolist()) == window(node, h, w) and nb[node, 0] == node

    def test_prompt_nodes_past_the_grid_read_only_themselves(self):
        nb = grid_neighbours((3, 3), 11, batch=2)
        assert nb.shape == (2, 11, 9)
        assert nb[:, 9:].eq(torch.tensor([9, 10]).view(1, 2, 1)).all()
        assert not (nb[:, :9] >= 9).any()  # and no grid node reads them

    def test_a_deleted_neighbour_is_replaced_by_the_node_itself(self):
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[0, 4] = False  # the centre of a 3x3 grid
        nb = grid_neighbours((3, 3), 9, node_mask=mask)
        assert 4 not in nb[0, [0, 1, 2, 3, 5, 6, 7, 8]].flatten().tolist()
        assert set(nb[0, 0].tolist()) == {0, 1, 3} and set(nb[1, 0].tolist()) == {0, 1, 3, 4}

    def test_too_few_nodes_for_the_grid_is_refused(self):
        with pytest.raises(ValueError, match="a 7x7 node grid needs at least 49 nodes, got 40"):
            grid_neighbours((7, 7), 40)

    def test_self_neighbours_are_the_nodes_themselves(self):
        assert torch.equal(self_neighbours(5, batch=2), torch.arange(5).view(1, 5, 1).expand(2, -1, -1))


def layer_grapher(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        from timm.layers import LayerNorm
        return Grapher(16, num_knn=4, norm_layer=LayerNorm).eval()


class TestFixedGrapher:
    def test_self_only_is_the_graph_convolution_of_each_node_with_a_zero_relative_half(self):
        plain = layer_grapher()
        control = FixedGrapher(layer_grapher(), "self").eval()
        x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
        h = plain.fc_in(x)
        conv = plain.graph_conv
        mixed = torch.stack([h, torch.zeros_like(h)], dim=-1).flatten(2)  # [x_i, max_j (x_j - x_i) = 0]
        expected = x + plain.fc_out(conv.act(conv.norm(conv.conv(mixed))))
        assert torch.allclose(control(x), expected, atol=1e-6)

    @pytest.mark.parametrize("neighbourhood, node, moved, changes", [
        ("self", 4, 0, False), ("self", 4, 4, True),
        ("grid", 0, 8, False), ("grid", 0, 4, True), ("grid", 4, 8, True),
    ])
    def test_a_node_hears_only_its_neighbourhood(self, neighbourhood, node, moved, changes):
        control = FixedGrapher(layer_grapher(), neighbourhood).eval()
        control.grid = (3, 3)
        x = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(2))
        y = x.clone()
        y[0, moved] += 5.0
        with torch.no_grad():
            differs = not torch.allclose(control(x)[0, node], control(y)[0, node], atol=1e-6)
        assert differs == changes

    def test_knn_is_the_vig_itself(self):
        x = torch.randn(2, 49, 16, generator=torch.Generator().manual_seed(3))
        plain = layer_grapher()
        assert torch.equal(FixedGrapher(layer_grapher(), "knn").eval()(x), plain(x))

    def test_a_grid_grapher_outside_a_model_says_what_it_needs(self):
        with pytest.raises(ValueError, match="a grid neighbourhood needs the node grid"):
            FixedGrapher(layer_grapher(), "grid")(torch.randn(1, 9, 16))

    def test_an_unknown_neighbourhood_lists_the_valid_ones(self):
        with pytest.raises(ValueError, match="neighbourhood must be one of knn, grid, self, got 'ring'"):
            FixedGrapher(layer_grapher(), "ring")


class TestControls:
    @pytest.mark.parametrize("name", CONTROLS)
    def test_state_dict_keys_shapes_and_initial_weights_are_the_vigs(self, name):
        vig, control = seeded("vig_small_c4_28"), seeded(name)
        a, b = vig.state_dict(), control.state_dict()
        assert list(a) == list(b)
        assert all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
        assert sum(p.numel() for p in control.parameters()) == sum(p.numel() for p in vig.parameters())

    @pytest.mark.parametrize("name, neighbourhood", list(zip(CONTROLS, ("grid", "self"))))
    def test_registered_with_their_neighbourhood_in_every_block(self, name, neighbourhood):
        assert name in models.list_backbones()
        model = timm.create_model(name)
        assert isinstance(model, FixedGraphVisionGNN) and model.pretrained_cfg["architecture"] == name
        assert [b.grapher.neighbourhood for b in model.blocks] == [neighbourhood] * 4
        with pytest.raises(ValueError, match=f"no pretrained weights exist for '{name}'"):
            timm.create_model(name, pretrained=True)

    def test_the_grid_control_reads_the_grid_of_each_input_size(self):
        model = seeded("vig_small_c4_grid_28").eval()
        with torch.no_grad():
            assert model.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 49, 96)
            assert model.blocks[0].grapher.grid == (7, 7)
            assert model.forward_features(torch.randn(2, 1, 20, 20)).shape == (2, 25, 96)
            assert model.blocks[0].grapher.grid == (5, 5)

    def test_the_vigs_weights_load_and_a_knn_control_computes_the_vig(self):
        vig = seeded("vig_small_c4_28", seed=1).eval()
        knn = FixedGraphVisionGNN("knn", **_SMALL_C4_28).eval()
        knn.load_state_dict(vig.state_dict())
        grid = seeded("vig_small_c4_grid_28").eval()
        grid.load_state_dict(vig.state_dict())
        x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            assert torch.equal(knn.forward_features(x), vig.forward_features(x))
            assert not torch.allclose(grid.forward_features(x), vig.forward_features(x), atol=1e-4)

    @pytest.mark.parametrize("name", CONTROLS)
    def test_trains_every_parameter_gets_a_gradient(self, name):
        model = seeded(name, num_classes=4)
        images, labels = torch.randn(8, 1, 28, 28), torch.arange(4).repeat(2)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for step in range(8):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            if step == 0:
                dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
                assert not dead, f"no gradient reaches {dead[:5]}"
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]

    def test_every_backbone_of_the_validation_plan_is_registered(self):
        from pathlib import Path
        plan = yaml.safe_load((Path(__file__).resolve().parents[2] / "benchmarks" / "configs" /
                               "omniglot-minimal-validation.yaml").read_text())
        named = {s["options"]["backbone"] for s in plan["steps"] if "backbone" in s.get("options", {})}
        assert {"vig_small_c4_28", "conv64f", "conv4", *CONTROLS} == named
        assert named <= set(models.list_backbones())


@pytest.mark.slow
@pytest.mark.parametrize("name", CONTROLS)
def test_fewshot_train_runs_a_control_with_dn4(tmp_path, name):
    import json
    from click.testing import CliRunner
    from fewshot.cli import cli

    r = CliRunner().invoke(cli, ["train", "--backbone", name, "--matcher", "dn4", "--episodes", "2", "--eval-episodes",
                                 "3", "--val-episodes", "0", "--no-track", "--no-progress", "--threads", "1",
                                 "--run-dir", str(tmp_path / "run"), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["backbone"] == name
