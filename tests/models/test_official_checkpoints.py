"""The authors' ViG checkpoints (key layout written out in official_layout.py) load onto ours."""
import importlib.util
import pathlib
import urllib.error

import pytest
import timm
import torch
from torch import nn

import models  # noqa: F401  (registers the backbones)
from models.checkpoints import check_fits, is_official_layout, load_backbone_weights
from models.vig import VisionGNN, checkpoint_filter_fn

_spec = importlib.util.spec_from_file_location("official_layout", pathlib.Path(__file__).with_name("official_layout.py"))
official_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(official_layout)
isotropic_shapes, make_state = official_layout.isotropic_shapes, official_layout.make_state

ISOTROPIC = {"vig_ti_224_gelu": (192, 12), "vig_s_224_gelu": (320, 16), "vig_b_224_gelu": (640, 16)}
RELEASES = {"vig_ti_224_gelu": "vig_ti_74.5.pth", "vig_s_224_gelu": "vig_s_80.6.pth", "vig_b_224_gelu": "vig_b_82.6.pth"}


def tiny_official_vig(**kwargs):
    """An isotropic ViG whose layout matches the authors' code (stride-16 stem), 4x4 nodes."""
    args = dict(img_size=64, embed_dim=32, depth=2, num_knn=4, stem_stride=16, num_classes=10)
    return VisionGNN(**dict(args, **kwargs))


class TestIsotropicKeyMapping:
    @pytest.mark.parametrize("name", sorted(ISOTROPIC))
    def test_every_official_key_maps_to_exactly_one_of_ours_with_the_same_shape(self, name):
        dim, depth = ISOTROPIC[name]
        official = make_state(isotropic_shapes(dim, depth), device="meta")
        with torch.device("meta"):
            model = timm.create_model(name, final_norm=False)
        mapped = checkpoint_filter_fn(dict(official), model)
        assert len(mapped) == len(official)  # one-to-one: nothing merged, nothing dropped
        assert check_fits(mapped, model) == ([], [], [])  # nothing left unloaded, every shape equal

    def test_with_our_final_batchnorm_only_its_five_entries_are_added(self):
        dim, depth = ISOTROPIC["vig_ti_224_gelu"]
        official = make_state(isotropic_shapes(dim, depth), device="meta")
        with torch.device("meta"):
            model = timm.create_model("vig_ti_224_gelu")
        mapped = checkpoint_filter_fn(dict(official), model)
        assert sorted(set(mapped) - set(model.state_dict()) | set(model.state_dict()) - set(mapped)) == []
        assert len(mapped) == len(official) + 5 and all(k in mapped for k in ("norm.weight", "norm.running_var"))

    def test_values_land_in_the_right_modules(self):
        official = make_state(isotropic_shapes(32, 2, num_classes=10, grid=4))
        model = tiny_official_vig()
        model.load_state_dict(checkpoint_filter_fn(dict(official), model))
        g = model.blocks[1].grapher
        assert torch.equal(g.graph_conv.conv.weight, official["backbone.1.0.graph_conv.gconv.nn.0.weight"])
        assert torch.equal(g.graph_conv.norm.running_var, official["backbone.1.0.graph_conv.gconv.nn.1.running_var"])
        assert torch.equal(g.fc_in[0].weight, official["backbone.1.0.fc1.0.weight"])
        assert torch.equal(g.fc_out[1].bias, official["backbone.1.0.fc2.1.bias"])
        assert torch.equal(model.blocks[0].ffn.fc2[0].weight, official["backbone.0.1.fc2.0.weight"])
        assert torch.equal(model.stem.convs[12].weight, official["stem.convs.12.weight"])
        assert torch.equal(model.head.pre_fc.weight, official["prediction.0.weight"].flatten(1))
        assert torch.equal(model.head.norm.running_mean, official["prediction.1.running_mean"])
        assert torch.equal(model.head.fc.weight, official["prediction.4.weight"].flatten(1))

    def test_head_is_dropped_for_a_model_without_classifier(self):
        official = make_state(isotropic_shapes(32, 2, num_classes=10, grid=4))
        model = tiny_official_vig(num_classes=0)
        mapped = checkpoint_filter_fn(dict(official), model)
        assert not any(k.startswith(("head.", "prediction.")) for k in mapped)
        assert check_fits(mapped, model) == ([], [], [])

    def test_our_own_layout_passes_through_unchanged(self):
        model = tiny_official_vig()
        own = model.state_dict()
        assert not is_official_layout(own)
        assert checkpoint_filter_fn({f"backbone.{k}": v for k, v in own.items()}, model).keys() == own.keys()

    def test_k_and_dilation_per_block_follow_the_authors_schedule(self):
        # theirs: k = int(linspace(k, 2k, depth)), dilation = min(i // 4 + 1, 196 // max k)
        for name, (_, depth) in ISOTROPIC.items():
            with torch.device("meta"):
                model = timm.create_model(name)
            assert model.knn_per_block == [int(v) for v in torch.linspace(9, 18, depth)]
            assert model.dilation_per_block == [min(i // 4 + 1, 196 // 18) for i in range(depth)]


class TestFinalNorm:
    def test_loaded_final_batchnorm_is_an_identity_in_eval_mode(self):
        official = make_state(isotropic_shapes(32, 2, num_classes=10, grid=4))
        with_norm, without = tiny_official_vig(), tiny_official_vig(final_norm=False)
        with_norm.load_state_dict(checkpoint_filter_fn(dict(official), with_norm))
        without.load_state_dict(checkpoint_filter_fn(dict(official), without))
        assert isinstance(without.norm, nn.Identity)
        x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = with_norm.eval()(x), without.eval()(x)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a, tiny_official_vig().eval()(x))  # the weights did change the output


class TestTimmPretrained:
    def test_pretrained_cfg_carries_the_release_url_and_their_normalisation(self):
        for name, file in RELEASES.items():
            cfg = timm.models.get_pretrained_cfg(name)
            assert cfg.url == "https://github.com/huawei-noah/Efficient-AI-Backbones/releases/download/vig/" + file
            assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5)

    def test_create_model_loads_their_file_without_our_final_norm(self, tmp_path):
        dim, depth = ISOTROPIC["vig_ti_224_gelu"]
        official = make_state(isotropic_shapes(dim, depth))
        path = tmp_path / "vig_ti_74.5.pth"
        torch.save(official, path)
        model = timm.create_model("vig_ti_224_gelu", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        assert isinstance(model.norm, nn.Identity)
        assert torch.equal(model.blocks[11].ffn.fc1[0].weight, official["backbone.11.1.fc1.0.weight"])
        assert torch.equal(model.pos_embed, official["pos_embed"])

    def test_a_wrapped_and_ddp_prefixed_file_loads_too(self, tmp_path):
        dim, depth = ISOTROPIC["vig_ti_224_gelu"]
        official = make_state(isotropic_shapes(dim, depth))
        path = tmp_path / "ckpt.pth.tar"
        torch.save({"state_dict": {f"module.{k}": v for k, v in official.items()}, "epoch": 299}, path)
        model = timm.create_model("vig_ti_224_gelu", pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=dict(file=str(path)))
        assert torch.equal(model.stem.convs[0].weight, official["stem.convs.0.weight"])

    @pytest.mark.parametrize("name", sorted(RELEASES))
    def test_without_network_or_file_the_error_names_the_file_and_how_to_pass_it(self, name, monkeypatch):
        def offline(*args, **kwargs):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

        monkeypatch.setattr("timm.models._builder.load_state_dict_from_url", offline)
        with torch.device("meta"), pytest.raises(RuntimeError) as err:
            timm.create_model(name, pretrained=True)
        msg = str(err.value)
        assert "\n" not in msg and RELEASES[name] in msg and "pretrained_cfg_overlay=dict(file=" in msg
        assert "--backbone-from" in msg

    def test_a_missing_file_is_one_clear_line(self, tmp_path):
        with pytest.raises(ValueError, match="no such file") as err:
            timm.create_model("vig_ti_224_gelu", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "nope.pth")))
        assert "\n" not in str(err.value)


class TestLoadBackboneWeights:
    def test_official_file_into_a_backbone_with_final_norm_reports_official(self, tmp_path, caplog):
        official = make_state(isotropic_shapes(32, 2, num_classes=10, grid=4))
        torch.save(official, tmp_path / "theirs.pth")
        model = tiny_official_vig(num_classes=0)
        with caplog.at_level("INFO", logger="models.checkpoints"):
            assert load_backbone_weights(model, tmp_path / "theirs.pth") == "official"
        assert "official layout" in caplog.text
        assert torch.equal(model.blocks[0].grapher.fc_in[0].weight, official["backbone.0.0.fc1.0.weight"])

    def test_an_rgb_file_loads_into_a_grayscale_backbone_by_summing_the_first_conv(self, tmp_path):
        official = make_state(isotropic_shapes(32, 2, num_classes=10, grid=4))
        torch.save(official, tmp_path / "theirs.pth")
        model = tiny_official_vig(num_classes=0, in_chans=1)
        load_backbone_weights(model, tmp_path / "theirs.pth")
        torch.testing.assert_close(model.stem.convs[0].weight, official["stem.convs.0.weight"].sum(1, keepdim=True))
