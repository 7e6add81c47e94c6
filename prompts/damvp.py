"""DAM-VP cluster prompts (Huang et al., CVPR 2023, "Diversity-Aware Meta Visual Prompting").

The frozen backbone's pooled features of a data set are clustered into C coarse clusters
(scikit-learn KMeans; faiss k-means above ``FAISS_ABOVE`` points); each cluster has its own prompt,
a copy of one base prompt (the meta prompt when meta-learned), and every image is routed to the
prompt of its nearest centroid, at training and at test time.

``--prompt damvp --clusters C --cluster-prompt vpt`` builds :class:`ClusterPrompts` around a fixed
base prompt; before the first training episode the model fits the centroids on (up to
``fit_images``) training images (:meth:`ClusterPrompts.fit`, called by ``PromptedModel.fit``) and
they are saved in the checkpoint with the prompts.
In a notebook: ``ClusterPrompts.around(prompt, centroids)``.
"""
from __future__ import annotations

import copy
import logging
from typing import ClassVar, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .base import Prompt, accepted_options, create, get, register_prompt

__all__ = ["FAISS_ABOVE", "fit_centroids", "route", "ClusterPrompts", "pooled_features"]

log = logging.getLogger(__name__)

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


@torch.no_grad()
def pooled_features(backbone: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Unprompted pooled features ``[B, D]`` of float images ``[B, C, H, W]``, in batches."""
    out = [backbone.forward_head(backbone.forward_features(images[i:i + batch]), pre_logits=True).float()
           for i in range(0, len(images), batch)]
    return torch.cat(out)


@register_prompt("damvp")
class ClusterPrompts(Prompt):
    """One prompt per cluster, each an independent copy of a fixed base prompt.

    Args:
        backbone: the frozen ViG.
        blocks, num_nodes: passed to the base prompt when it takes them.
        clusters: C.
        base: registry name of the base prompt (a fixed one: ``vpt``, ``gpf``, ``gpf-plus``, ``vgp``, ...).

    Buffers: ``centroids [C, D]`` and ``fitted`` (False until :meth:`fit_clusters` or :meth:`around`).
    """

    fit_images: ClassVar[int] = 4096

    def __init__(self, backbone, blocks="all", num_nodes: int = 4, clusters: int = 4, base: str = "vpt"):
        super().__init__(backbone, blocks)
        if clusters < 1:
            raise ValueError(f"damvp: clusters must be >= 1, got {clusters}")
        if base in ("damvp", "none") or get(base).conditioned:
            raise ValueError(f"damvp needs a fixed base prompt (vpt, gpf, gpf-plus, vgp, ...), not {base!r}")
        options = {"blocks": blocks, "num_nodes": num_nodes}
        prompt = create(base, backbone, **{k: v for k, v in options.items() if k in accepted_options(base)})
        self._init(prompt, torch.zeros(clusters, self.dim), fitted=False)

    def _init(self, prompt: Prompt, centroids: torch.Tensor, fitted: bool) -> None:
        self.base = prompt.name
        self.register_buffer("centroids", centroids.detach().float().clone())
        self.register_buffer("fitted", torch.tensor(fitted))
        self.prompts = nn.ModuleList(copy.deepcopy(prompt) for _ in range(len(centroids)))

    @classmethod
    def around(cls, prompt: Prompt, centroids: torch.Tensor) -> "ClusterPrompts":
        """C copies of ``prompt`` (the meta prompt), routed by ``centroids [C, D]`` (already fitted)."""
        if prompt.conditioned:
            raise ValueError(f"DAM-VP needs a fixed prompt, {prompt.name!r} is support-conditioned")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.dim, self.depth, self.blocks = prompt.dim, prompt.depth, prompt.blocks
        self.num_patch_nodes = prompt.num_patch_nodes
        self._init(prompt, centroids, fitted=True)
        return self

    @property
    def clusters(self) -> int:
        return len(self.prompts)

    def fit_clusters(self, backbone: nn.Module, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Fit the centroids on the unprompted pooled features of float images ``[N, C, H, W]``;
        returns the cluster sizes ``[C]``."""
        feats = pooled_features(backbone, images)
        self.centroids.copy_(fit_centroids(feats, self.clusters, seed).to(self.centroids.device))
        self.fitted.fill_(True)
        return torch.bincount(route(feats, self.centroids), minlength=self.clusters).cpu()

    def fit(self, backbone: nn.Module, images: torch.Tensor, seed: int = 0) -> None:
        """Before training: :meth:`fit_clusters` on float training images ``[n, C, H, W]``, unless the
        centroids are fitted already (restored from a checkpoint, or given to :meth:`around`)."""
        if bool(self.fitted):
            return
        sizes = self.fit_clusters(backbone, images, seed=seed)
        log.info("DAM-VP: %d clusters fitted on %d training images, sizes %s", self.clusters, len(images),
                 sizes.tolist())

    def assign(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Cluster index ``[B]`` of images ``[B, C, H, W]`` from the unprompted frozen features."""
        if not bool(self.fitted):
            raise RuntimeError("damvp: the centroids are not fitted yet; call fit_clusters(backbone, images) "
                               "(fewshot train does it on the training split)")
        return route(pooled_features(backbone, images), self.centroids)

    def forward_nodes(self, backbone: nn.Module, images: torch.Tensor, node_mask: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Each image through its cluster's prompt: ``(nodes [B, N0, D], mask [B, N0] or None)``."""
        assign = self.assign(backbone, images)
        nodes, masks = [None] * len(images), [None] * len(images)
        for c in assign.unique().tolist():
            idx = (assign == c).nonzero(as_tuple=True)[0]
            n, m = self.prompts[c].forward_nodes(backbone, images[idx],
                                                 None if node_mask is None else node_mask[idx])
            for j, i in enumerate(idx.tolist()):
                nodes[i] = n[j]
                masks[i] = None if m is None else m[j]
        out = torch.stack(nodes)
        if all(m is None for m in masks):
            return out, None
        full = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
        return out, torch.stack([full[0] if m is None else m for m in masks])

    def regulariser(self) -> torch.Tensor:
        return sum((p.regulariser() for p in self.prompts), torch.zeros(()))

    def extra_repr(self) -> str:
        return f"clusters={self.clusters}, base={self.base!r}, fitted={bool(self.fitted)}"
