"""Support expansion by masked views: extra support embeddings of each support image with random nodes deleted."""
import pytest
import timm
import torch

import matchers
from fewshot.config import Config, ConfigError
from fewshot.model import EpisodicModel
from models import masked_mean


def episode(way=3, shot=2, query=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (way * shot + way * query, 1, 28, 28), generator=g, dtype=torch.uint8)
    return images[:way * shot], torch.arange(way).repeat(shot), images[way * shot:]


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return timm.create_model("test_vig").eval()


def test_view_masks_keep_the_asked_fraction_and_never_nothing(backbone):
    model = EpisodicModel(backbone, matchers.create("prototype"), support_views=3, view_keep=0.5)
    masks = model.view_masks(6, (7, 7))
    assert masks.shape == (18, 49) and (masks.sum(1) == round(0.5 * 49)).all()
    assert torch.equal(masks, model.view_masks(6, (7, 7)))  # the same views for the same episode
    tiny = EpisodicModel(backbone, matchers.create("prototype"), support_views=2, view_keep=0.001)
    assert (tiny.view_masks(5, (7, 7)).sum(1) == 1).all()


def test_views_are_extra_support_items_of_their_class(backbone):
    """The logits equal a prototype computed by hand from the plain and the masked-view embeddings."""
    support, labels, query = episode()
    model = EpisodicModel(backbone, matchers.create("prototype"), support_views=2, view_keep=0.6)
    x = lambda im: im.float() / 127.5 - 1
    with torch.no_grad():
        logits = model(support, labels, query)
        masks = model.view_masks(len(support), (7, 7))
        plain = backbone.forward_head(backbone.forward_features(x(support)), pre_logits=True)
        views = [masked_mean(backbone.forward_features(x(support[i:i + 1]), node_mask=masks[r:r + 1]), masks[r:r + 1])
                 for r, i in ((r, r % len(support)) for r in range(len(masks)))]
        items = torch.cat([plain, *views])
        item_labels = labels.repeat(3)
        q = backbone.forward_head(backbone.forward_features(x(query)), pre_logits=True)
        protos = torch.stack([items[item_labels == c].mean(0) for c in range(3)])
        expect = -torch.cdist(q, protos) ** 2
    assert torch.allclose(logits, expect, atol=1e-4, rtol=1e-4)


def test_keeping_every_node_changes_nothing(backbone):
    support, labels, query = episode()
    with torch.no_grad():
        plain = EpisodicModel(backbone, matchers.create("prototype"))(support, labels, query)
        views = EpisodicModel(backbone, matchers.create("prototype"), support_views=3, view_keep=1.0)(support, labels, query)
    assert torch.allclose(plain, views, rtol=1e-4, atol=1e-3)  # logits of size ~50: float32 summation order
    assert not EpisodicModel(backbone, matchers.create("prototype"), support_views=1).episode_independent


@pytest.mark.parametrize("kwargs, match", [
    (dict(matcher="dn4"), "pooled matcher"), (dict(backbone="conv4"), "node masks"),
    (dict(support_views=-1), "support_views"), (dict(view_keep=0.0), "view_keep")])
def test_bad_settings_are_refused(kwargs, match):
    from fewshot.model import build_model
    settings = {"backbone": "test_vig", "support_views": 2, **kwargs}
    with pytest.raises((ValueError, ConfigError), match=match):
        build_model(Config(**settings), 28, 1)


def test_refused_for_a_prompted_model():
    with pytest.raises(ConfigError, match="--support-views applies to a plain episodic model"):
        Config(backbone="test_vig", prompt="gpf", support_views=2)
