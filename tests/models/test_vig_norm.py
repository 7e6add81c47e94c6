"""ViG with LayerNorm blocks (``block_norm="layer"``): no statistic is shared across a batch."""
import pytest
import timm
import torch
from timm.layers import LayerNorm

import models  # noqa: F401  (registers the backbones)
from models.vig import VisionGNN


def tiny(**kw):
    return VisionGNN(img_size=28, in_chans=1, num_classes=0, embed_dim=32, depth=2, num_knn=4, stem_stride=4,
                     head_hidden=0, **kw)


def test_layer_norm_blocks_have_no_batchnorm_after_the_stem():
    model = tiny(block_norm="layer")
    after_stem = [m for name, m in model.named_modules() if not name.startswith("stem")]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in after_stem)
    assert sum(isinstance(m, LayerNorm) for m in after_stem) == 2 * 5 + 1  # 5 per block, then the final one


def test_an_images_nodes_do_not_depend_on_the_rest_of_the_batch_in_training_mode():
    torch.manual_seed(0)
    model = tiny(block_norm="layer")
    model.stem.eval()  # the stem keeps its BatchNorm; the blocks are what is tested
    x = torch.randn(5, 1, 28, 28)
    alone = model.forward_features(x[:1])
    together = model.forward_features(x)[:1]
    assert torch.allclose(alone, together, atol=1e-5)
    batch_norm = tiny(block_norm="batch")
    batch_norm.stem.eval()
    assert not torch.allclose(batch_norm.forward_features(x[:1]), batch_norm.forward_features(x)[:1], atol=1e-3)


def test_final_norm_can_be_switched_off():
    assert isinstance(tiny(final_norm=False).norm, torch.nn.Identity)
    assert isinstance(tiny(block_norm="layer").norm, LayerNorm)


def test_unknown_block_norm_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="batch, layer"):
        tiny(block_norm="group")


def test_registered_small_variant_trains():
    """A few Adam steps on a fixed batch: every parameter gets a non-zero gradient and the loss falls."""
    torch.manual_seed(0)
    model = timm.create_model("vig_small_ln_28", num_classes=4)
    assert timm.create_model("vig_small_ln_28")(torch.randn(2, 1, 28, 28)).shape == (2, 96)  # its features
    images, labels = torch.randn(8, 1, 28, 28), torch.arange(4).repeat(2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(12):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not dead, f"no gradient reaches {dead[:5]}"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
