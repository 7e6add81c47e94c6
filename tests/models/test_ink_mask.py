"""Ink node masks: a node is kept when its (dilated) cell of the image holds a non-background pixel."""
import pytest
import torch

from models import ink_node_mask


def reference(image, grid, threshold, dilate):
    """Loops over cells: background = median of the border pixels (lower median, as torch), ink = |x - bg| > t."""
    c, h, w = image.shape
    gh, gw = grid
    x = image.double()
    span = 255.0
    keep = []
    for i in range(gh):
        for j in range(gw):
            found = False
            for ci in range(max(0, i - dilate), min(gh, i + dilate + 1)):
                for cj in range(max(0, j - dilate), min(gw, j + dilate + 1)):
                    r0, r1 = (ci * h) // gh, -(-(ci + 1) * h // gh)
                    c0, c1 = (cj * w) // gw, -(-(cj + 1) * w // gw)
                    for ch in range(c):
                        border = torch.cat([x[ch, 0], x[ch, -1], x[ch, :, 0], x[ch, :, -1]])
                        bg = border.sort().values[(border.numel() - 1) // 2]
                        if ((x[ch, r0:r1, c0:c1] - bg).abs() > threshold * span).any():
                            found = True
            keep.append(found)
    keep = torch.tensor(keep)
    return keep if keep.any() else torch.ones_like(keep)


@pytest.mark.parametrize("dilate", [0, 1])
@pytest.mark.parametrize("grid", [(7, 7), (4, 4), (3, 5)])
def test_matches_the_cell_loop(grid, dilate):
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    for b in range(4):  # a few random strokes on black
        for _ in range(3):
            r, c = torch.randint(0, 26, (2,), generator=g).tolist()
            images[b, 0, r:r + 3, c:c + 2] = 255
    images[3] = 0  # no ink at all: every node kept
    got = ink_node_mask(images, grid, threshold=0.1, dilate=dilate)
    assert got.shape == (4, grid[0] * grid[1])
    for b in range(4):
        assert torch.equal(got[b], reference(images[b], grid, 0.1, dilate)), b
    assert got[3].all()


def test_dark_ink_on_a_white_page_counts_too():
    page = torch.full((1, 1, 28, 28), 255, dtype=torch.uint8)
    page[0, 0, 0:4, 0:4] = 0  # a mark in the top-left cell
    mask = ink_node_mask(page, (7, 7), dilate=0)
    assert mask[0, 0] and mask.sum() == 1


def test_float_images_use_their_range():
    images = torch.zeros(1, 1, 28, 28)
    images[0, 0, 10:12, 10:12] = 1.0
    assert torch.equal(ink_node_mask(images, (7, 7), dilate=0), ink_node_mask((images * 255).to(torch.uint8), (7, 7), dilate=0))


def test_episodic_model_deletes_blank_nodes_from_graph_and_pooling():
    import matchers
    import timm
    from fewshot.model import EpisodicModel
    backbone = timm.create_model("test_vig").eval()
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 8:20, 8:12] = 255
    images[1, :, 0:2, 0:2] = 255  # one extra speck far away: changes only image 1's mask
    model = EpisodicModel(backbone, matchers.create("prototype"), node_filter="ink")
    mask = ink_node_mask(images, backbone.stem.grid_size((28, 28)))
    with torch.no_grad():
        expect = backbone.forward_head(backbone.forward_features(images.float() / 127.5 - 1, node_mask=mask),
                                       pre_logits=True, node_mask=mask)
        assert torch.allclose(model.embed(images), expect, atol=1e-6)
        plain = EpisodicModel(backbone, matchers.create("prototype")).embed(images)
    assert not torch.allclose(model.embed(images), plain, atol=1e-3)


def test_a_backbone_without_node_masks_is_refused():
    import matchers
    import timm
    from fewshot.model import EpisodicModel
    with pytest.raises(ValueError, match="need a backbone with node masks"):
        EpisodicModel(timm.create_model("conv4"), matchers.create("prototype"), node_filter="ink")


def test_the_config_refuses_it_for_a_prompted_model_and_builds_it_otherwise():
    from fewshot.config import Config, ConfigError
    from fewshot.model import build_model
    with pytest.raises(ConfigError, match="--node-filter applies to a plain episodic model"):
        Config(backbone="test_vig", prompt="gpf", node_filter="ink")
    assert build_model(Config(backbone="test_vig", node_filter="ink"), 28, 1).node_filter == "ink"
