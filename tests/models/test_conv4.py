"""Conv-4: the standard few-shot embedding sizes and the shared backbone contract."""
import pytest
import timm
import torch

import models
from models import Conv4


def images(batch, in_chans, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_chans, size, size, generator=g)


class TestEmbeddingSize:
    @pytest.mark.parametrize("in_chans, size, nodes, embedding", [(1, 28, 1, 64), (3, 84, 25, 1600)])
    def test_flatten_gives_the_standard_protonet_embedding(self, in_chans, size, nodes, embedding):
        model = models.create_backbone("conv4", in_chans=in_chans, img_size=size).eval()
        with torch.no_grad():
            features = model.forward_features(images(2, in_chans, size))
            pooled = model.forward_head(features, pre_logits=True)
        assert features.shape == (2, nodes, 64)
        assert pooled.shape == (2, embedding) and model.num_features == embedding

    def test_avg_pool_gives_one_value_per_channel(self):
        model = Conv4(in_chans=3, img_size=84, pool="avg").eval()
        with torch.no_grad():
            pooled = model(images(2, 3, 84))
        assert pooled.shape == (2, 64) and model.num_features == 64

    def test_hidden_dim_sets_the_node_features(self):
        model = Conv4(hidden_dim=32, img_size=84, in_chans=3)
        assert model.forward_features(images(1, 3, 84)).shape == (1, 25, 32)
        assert model.num_features == 800


class TestNodeMask:
    def test_avg_pool_averages_only_the_kept_nodes(self):
        model = Conv4(in_chans=3, img_size=84, pool="avg").eval()
        nodes = torch.randn(2, 25, 64, generator=torch.Generator().manual_seed(0))
        mask = torch.ones(2, 25, dtype=torch.bool)
        mask[0, 5:] = False
        pooled = model.forward_head(nodes, pre_logits=True, node_mask=mask)
        assert torch.allclose(pooled[0], nodes[0, :5].mean(0))
        assert torch.allclose(pooled[1], nodes[1].mean(0))

    def test_flatten_with_a_node_mask_raises_value_error(self):
        model = Conv4()
        nodes = model.forward_features(images(1, 1, 28))
        with pytest.raises(ValueError, match="pool='avg'"):
            model.forward_head(nodes, node_mask=torch.ones(1, 1, dtype=torch.bool))


class TestContract:
    def test_timm_create_model_builds_conv4_by_name_without_classifier(self):
        model = timm.create_model("conv4")
        assert isinstance(model, Conv4) and model.num_classes == 0
        assert model.pretrained_cfg["architecture"] == "conv4"

    def test_classifier_and_reset_classifier(self):
        model = timm.create_model("conv4", num_classes=5).eval()
        x = images(2, 1, 28)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, 64)
        model.reset_classifier(3, global_pool="avg")
        assert model(x).shape == (2, 3) and model.num_features == 64

    def test_a_classifier_fed_images_of_another_size_raises_value_error(self):
        model = Conv4(num_classes=5, img_size=28)
        with pytest.raises(ValueError, match="expects 64 features"):
            model(images(2, 1, 84))

    @pytest.mark.parametrize("kwargs, message", [
        (dict(pool="max"), "pool"),
        (dict(img_size=8), "at least 16"),
        (dict(in_chans=0), "in_chans"),
    ])
    def test_bad_arguments_raise_value_error_naming_the_argument(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            Conv4(**kwargs)


def test_channels_last_layout_gives_the_same_gradients():
    """build_model puts Conv-4 in channels-last (faster on CPU); its gradients must equal the contiguous
    model's (BatchNorm backward on strided layouts has been wrong before in this torch, see
    models/vig.py). Compared in float64, where the two layouts agree to rounding on any CPU; float32
    is then checked against that reference only loosely, since oneDNN picks its float32 convolution
    algorithm by CPU (1e-3 relative was seen on a CI machine, 4e-6 here; a wrong layout gives O(1))."""
    import copy

    from fewshot.config import Config
    from fewshot.model import build_model

    torch.manual_seed(0)
    model = build_model(Config(backbone="conv4", track=False), 28, 1)
    assert model.backbone.blocks[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    contiguous = copy.deepcopy(model.backbone).to(memory_format=torch.contiguous_format)
    assert not contiguous.blocks[1].conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 28, 28, dtype=torch.float64)

    def grads(net, x):
        net.zero_grad()
        net.forward_head(net.forward_features(x), pre_logits=True).sin().sum().backward()
        return {n: p.grad.double() for n, p in net.named_parameters() if not (n.endswith("conv.bias"))}

    ref = grads(copy.deepcopy(contiguous).double(), x)
    last = copy.deepcopy(model.backbone).double()
    assert last.blocks[1].conv.weight.is_contiguous(memory_format=torch.channels_last)
    for name, g in grads(last, x.to(memory_format=torch.channels_last)).items():
        assert torch.allclose(g, ref[name], rtol=1e-9, atol=1e-11), name
    for net in (model.backbone, contiguous):
        for name, g in grads(net, x.float()).items():
            assert float((g - ref[name]).norm() / ref[name].norm()) < 1e-2, name
