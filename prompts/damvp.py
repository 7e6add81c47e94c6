"""DAM-VP cluster prompts (Huang et al., CVPR 2023, "Diversity-Aware Meta Visual Prompting").

The frozen backbone's pooled features of a data set are clustered into C coarse clusters
(scikit-learn KMeans; faiss k-means above ``FAISS_ABOVE`` points); each cluster has its own prompt,
a copy of the (meta) prompt, and every image is routed to the prompt of its nearest centroid, at
training and at test time.
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from .base import Prompt

__all__ = ["FAISS_ABOVE", "fit_centroids", "route", "ClusterPrompts"]

FAISS_ABOVE = 20_000


def fit_centroids(features: torch.Tensor, clusters: int, seed: int = 0) -> torch.Tensor:
    """k-means centroids ``[C, D]`` of features ``[N, D]`` (sklearn, or faiss when N > FAISS_ABOVE)."""
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    x = np.ascontiguousarray(features.detach().float().cpu().numpy())
    if len(x) < clusters:
        raise ValueError(f"cannot make {clusters} clusters from {len(x)} feature vectors")
    if len(x) > FAISS_ABOVE:
        import faiss
        km = faiss.Kmeans(x.shape[1], clusters, niter=25, seed=seed, verbose=False)
        km.train(x)
        centroids = km.centroids
    else:
        from sklearn.cluster import KMeans
        centroids = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit(x).cluster_centers_
    return torch.as_tensor(np.asarray(centroids), dtype=torch.float32)


def route(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index ``[B]`` of the nearest centroid (Euclidean) of each feature ``[B, D]``; centroids ``[C, D]``."""
    return torch.cdist(features.float(), centroids.to(features.device).float()).argmin(dim=1)


class ClusterPrompts(nn.Module):
    """One prompt per cluster, each an independent copy of ``prompt`` (the meta prompt).

    Args:
        prompt: the initial (meta) prompt; copied C times, not kept.
        centroids: ``[C, D]`` from :func:`fit_centroids` on the frozen backbone's pooled features.
    """

    def __init__(self, prompt: Prompt, centroids: torch.Tensor):
        super().__init__()
        if prompt.conditioned:
            raise ValueError(f"DAM-VP needs a fixed prompt, {prompt.name!r} is support-conditioned")
        self.register_buffer("centroids", centroids.detach().float().clone())
        self.prompts = nn.ModuleList(copy.deepcopy(prompt) for _ in range(len(centroids)))
        self.num_patch_nodes = prompt.num_patch_nodes

    def assign(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Cluster index ``[B]`` of images ``[B, C, H, W]`` from the unprompted frozen features."""
        with torch.no_grad():
            feats = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
        return route(feats, self.centroids)

    def forward_nodes(self, backbone: nn.Module, images: torch.Tensor
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Each image through its cluster's prompt: ``(nodes [B, N0, D], mask [B, N0] or None)``."""
        assign = self.assign(backbone, images)
        nodes, masks = [None] * len(images), [None] * len(images)
        for c in assign.unique().tolist():
            idx = (assign == c).nonzero(as_tuple=True)[0]
            n, m = self.prompts[c].forward_nodes(backbone, images[idx])
            for j, i in enumerate(idx.tolist()):
                nodes[i] = n[j]
                masks[i] = None if m is None else m[j]
        out = torch.stack(nodes)
        if all(m is None for m in masks):
            return out, None
        full = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
        return out, torch.stack([full[0] if m is None else m for m in masks])
