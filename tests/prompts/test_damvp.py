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
    cp = damvp.ClusterPrompts(base, torch.stack([feats[0], feats[1]]))
    assign = cp.assign(bb, images)
    assert assign[0] == 0 and assign[1] == 1
    assert cp.prompts[0].vectors is not cp.prompts[1].vectors
    assert torch.equal(cp.prompts[0].vectors, base.vectors)
    with torch.no_grad():
        cp.prompts[1].vectors.add_(0.5)
    assert torch.equal(cp.prompts[0].vectors, base.vectors)      # independent parameters
    nodes, _ = cp.forward_nodes(bb, images)
    for i in range(6):
        ref, _ = cp.prompts[int(assign[i])].forward_nodes(bb, images[i:i + 1])
        torch.testing.assert_close(nodes[i], ref[0], rtol=1e-3, atol=1e-4)  # batch-size float32 rounding
    loss = nodes[assign == 1].sum()
    loss.backward()
    g0 = cp.prompts[0].vectors.grad
    assert (g0 is None or not g0.any()) and cp.prompts[1].vectors.grad.abs().sum() > 0
