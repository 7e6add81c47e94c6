"""DAM-VP: k-means centroids, nearest-centroid routing, independent per-cluster prompts."""
from __future__ import annotations

import pytest
import torch

import models
import prompts
from prompts import damvp


def test_route_sends_each_feature_to_its_nearest_centroid():
    g = torch.Generator().manual_seed(0)
    feats, cents = torch.randn(50, 5, generator=g), torch.randn(4, 5, generator=g)
    brute = torch.tensor([min(range(4), key=lambda c: float(((f - cents[c]) ** 2).sum())) for f in feats])
    assert torch.equal(damvp.route(feats, cents), brute)


@pytest.mark.parametrize("n", [60, damvp.FAISS_ABOVE + 10])
def test_fit_centroids_recovers_separated_blobs(n):
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    feats = centres[torch.arange(n) % 3] + 0.1 * torch.randn(n, 2, generator=g)
    found = damvp.fit_centroids(feats, 3)
    assert found.shape == (3, 2)
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.2
    with pytest.raises(ValueError, match="cannot make 100 clusters"):
        damvp.fit_centroids(feats[:10], 100)


def test_cluster_prompts_are_independent_and_images_use_their_clusters_prompt():
    torch.manual_seed(0)
    bb = models.create_backbone("test_vig").eval()
    for p in bb.parameters():
        p.requires_grad_(False)
    base = prompts.create("gpf", bb)
    images = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        feats = bb.forward_head(bb.forward_features(images), pre_logits=True)
    cp = damvp.ClusterPrompts.around(base, torch.stack([feats[0], feats[1]]))
    assign = cp.assign(bb, images)
    assert assign[0] == 0 and assign[1] == 1
    assert cp.prompts[0].vectors is not cp.prompts[1].vectors
    assert torch.equal(cp.prompts[0].vectors, base.vectors)
    with torch.no_grad():
        cp.prompts[1].vectors.add_(0.5)
    assert torch.equal(cp.prompts[0].vectors, base.vectors)      # independent parameters
    with torch.no_grad():
        for c, p in enumerate(cp.prompts):   # distinct prompts per cluster, so routing matters
            p.vectors.copy_(torch.randn(p.vectors.shape, generator=torch.Generator().manual_seed(10 + c)))
    nodes, _ = cp.forward_nodes(bb, images)
    # reference from the definition: image i goes to its nearest centroid c (brute force over the
    # unprompted pooled features) and every patch node gets c's vector added before each block
    cents = cp.centroids
    for i in range(6):
        c = min(range(2), key=lambda c: float(((feats[i] - cents[c]) ** 2).sum()))
        assert int(assign[i]) == c
        vectors = cp.prompts[c].vectors.detach()

        def add_vector(block, x, mask, v=vectors):
            return x + v[block], mask

        with torch.no_grad():
            ref = bb.forward_features(images[i:i + 1], block_hook=add_vector)
        torch.testing.assert_close(nodes[i], ref[0], rtol=1e-3, atol=1e-4)  # batch-size float32 rounding
    loss = nodes[assign == 1].sum()
    loss.backward()
    g0 = cp.prompts[0].vectors.grad
    assert (g0 is None or not g0.any()) and cp.prompts[1].vectors.grad.abs().sum() > 0


def _frozen_vig():
    torch.manual_seed(0)
    bb = models.create_backbone("test_vig").eval()
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb


def test_registered_damvp_copies_its_base_prompt_and_needs_fitted_centroids():
    bb = _frozen_vig()
    cp = prompts.create("damvp", bb, blocks="1", num_nodes=3, clusters=3, base="vpt")
    assert cp.clusters == 3 and all(p.name == "vpt" and p.nodes.shape == (1, 3, bb.embed_dim) for p in cp.prompts)
    assert sum(p.numel() for p in cp.parameters()) == 3 * 3 * bb.embed_dim
    images = torch.randn(8, 1, 28, 28)
    with pytest.raises(RuntimeError, match="not fitted"):
        cp.forward_nodes(bb, images)
    sizes = cp.fit_clusters(bb, images, seed=0)
    assert int(sizes.sum()) == 8 and bool(cp.fitted)
    # the fitted centroids are k-means on the unprompted pooled features: a fixed point of Lloyd's
    # iteration (each centroid is the mean of the features nearest to it), checked by brute force
    with torch.no_grad():
        feats = bb.forward_head(bb.forward_features(images), pre_logits=True).double()
    cents = cp.centroids.double()
    nearest = [min(range(3), key=lambda c: float(((f - cents[c]) ** 2).sum())) for f in feats]
    assert sizes.tolist() == [nearest.count(c) for c in range(3)] and min(sizes.tolist()) >= 1
    for c in range(3):
        members = feats[[i for i in range(8) if nearest[i] == c]]
        torch.testing.assert_close(cents[c], members.mean(0), rtol=1e-4, atol=1e-4)
    assert cp.assign(bb, images).tolist() == nearest
    nodes, mask = cp.forward_nodes(bb, images)
    assert nodes.shape == (8, cp.num_patch_nodes, bb.embed_dim) and mask is None
    # centroids travel in the state dict, so a checkpoint routes the same way
    other = prompts.create("damvp", bb, blocks="1", num_nodes=3, clusters=3, base="vpt")
    other.load_state_dict(cp.state_dict())
    assert torch.equal(other.assign(bb, images), cp.assign(bb, images))


@pytest.mark.parametrize("base", ["add", "damvp", "none"])
def test_damvp_refuses_a_base_prompt_it_cannot_copy(base):
    with pytest.raises(ValueError, match="fixed base prompt"):
        prompts.create("damvp", _frozen_vig(), base=base)
