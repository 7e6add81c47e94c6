"""k-nearest-neighbour matcher on faiss flat indexes.

The classic k-NN rule (Cover and Hart, IEEE Trans. Information Theory 1967, "Nearest neighbor
pattern classification") over an episode's support set, searched exactly with faiss (Johnson,
Douze and Jegou, IEEE Trans. Big Data 2019, "Billion-scale similarity search with GPUs").
The votes have no gradient; training goes through a differentiable surrogate: soft neighbours
(Goldberger, Roweis, Hinton and Salakhutdinov, NIPS 2004, "Neighbourhood Components Analysis")
or the prototype loss (Snell, Swersky and Zemel, NeurIPS 2017).
"""
from __future__ import annotations

import logging
from typing import Dict, Literal, Tuple

import torch
import torch.nn.functional as F

from prototypes import class_means, squared_distances

from .base import Matcher, register_matcher, validate_episode
from .patch_metrics import node_labels

__all__ = ["KNNMatcher", "knn_vote_logits", "surrogate_logits", "faiss_search", "import_faiss"]

SURROGATES = ("soft_neighbours", "prototype")

_METRICS = {"l2": "l2", "euclidean": "l2", "cosine": "cosine"}  # "euclidean" as the engine's config spells it
_GPU_RESOURCES: Dict[int, object] = {}  # faiss GPU scratch memory, made once per device (not episode state)


@register_matcher("knn")
class KNNMatcher(Matcher):
    """Exact k-nearest-neighbour vote over the support set.

    Each query vector's ``k`` nearest support vectors (``k`` clamped to the number of support
    vectors) vote for their classes; logits are the votes:

    - ``weighted=False``: ``votes[c]`` = number of the ``k`` neighbours in class ``c``;
    - ``weighted=True``: ``votes[c]`` = sum over class-``c`` neighbours of ``1 / (1 + d)``, with
      ``d`` the Euclidean distance (``metric="l2"``) or the cosine distance ``1 - cos``
      (``metric="cosine"``).

    Tie rule: neighbours are ranked by distance (equal distances by support index), and each
    class with at least one neighbour gets ``bonus * (k - r) / k`` added, ``r`` being the rank
    (0 = nearest) of its nearest neighbour; ``bonus`` is 0.5 for counts (less than one vote, so
    it only orders classes with equal counts) and 1e-4 for weighted votes (where it also decides
    near-ties closer than 1e-4). So among tied classes the one holding the nearer neighbour wins.

    ``metric="l2"`` searches a ``faiss.IndexFlatL2``; ``metric="cosine"`` an ``IndexFlatIP`` on
    L2-normalised vectors. ``level="pooled"`` (node inputs ``[n, N, D]`` are mean-pooled first);
    ``level="nodes"`` makes every query node search all support nodes and averages the node
    logits over the query image's nodes. CUDA tensors use a faiss GPU index when faiss has GPU
    support, else the CPU one; logits come back on the input's device.

    Training: the votes carry no gradient, so when a gradient is asked for (grad mode on and
    ``support`` or ``query`` requiring grad: a training step, test-time tuning, meta-learning) the
    logits are those of a differentiable **surrogate** over the same vectors (pooled, or every node
    with the query's node logits averaged), see :func:`surrogate_logits`; under ``torch.no_grad()`` /
    ``torch.inference_mode()`` (validation, test, prediction) and for plain tensors they are the
    k-NN votes. ``fewshot train`` states the surrogate in its log and in the MLflow parameter
    ``train_objective`` (:attr:`gradient_surrogate`).

    Args:
        k: neighbours that vote.
        metric: ``"l2"`` (alias ``"euclidean"``) or ``"cosine"``.
        weighted: similarity-weighted votes instead of counts.
        level: ``"pooled"`` or ``"nodes"``.
        surrogate: the training loss's logits: ``"soft_neighbours"`` (every support vector is a
            soft neighbour, NCA) or ``"prototype"`` (class means, ProtoNet).
        temperature: the surrogate's similarities (``-||q - s||^2`` for l2, ``cos`` for cosine) are
            divided by it.

    Example:
        >>> m = KNNMatcher(k=3, metric="cosine")
        >>> support, labels, query = torch.randn(25, 64), torch.arange(5).repeat(5), torch.randn(75, 64)
        >>> m(support, labels, query).shape
        torch.Size([75, 5])
    """

    input = "pooled"
    accepts = (2, 3)

    def __init__(self, k: int = 5, metric: Literal["l2", "euclidean", "cosine"] = "l2", weighted: bool = False,
                 level: Literal["pooled", "nodes"] = "pooled",
                 surrogate: Literal["soft_neighbours", "prototype"] = "soft_neighbours", temperature: float = 1.0):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {', '.join(map(repr, _METRICS))}, got {metric!r}")
        if not isinstance(weighted, bool):
            raise ValueError(f"weighted must be True or False, got {weighted!r}")
        if level not in ("pooled", "nodes"):
            raise ValueError(f"level must be 'pooled' or 'nodes', got {level!r}")
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {', '.join(map(repr, SURROGATES))}, got {surrogate!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.k, self.metric, self.weighted, self.level = k, _METRICS[metric], weighted, level
        self.surrogate, self.temperature = surrogate, float(temperature)
        self.input = level  # what the engine hands over

    @property
    def gradient_surrogate(self) -> str:
        """What the training loss scores instead of the votes (for the run's log and parameters)."""
        what = {"soft_neighbours": "soft-neighbour (NCA) logits over every support vector",
                "prototype": "prototype logits (class means)"}[self.surrogate]
        return (f"cross-entropy of {what}, {self.metric} similarity / temperature {self.temperature:g}, "
                f"at {self.level} level: a differentiable surrogate of knn (k={self.k}), whose votes carry no "
                "gradient; validation and test score with the k-NN votes")

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """support ``[S, D]`` or ``[S, N, D]``, support_labels ``[S]``, query ``[Q, D]`` or ``[Q, M, D]``
        -> logits ``[Q, way]``: the k-NN votes, or the surrogate's logits when a gradient is asked for."""
        way = validate_episode(support, support_labels, query, accepts=self.accepts)
        labels, n_query = support_labels.long(), query.shape[0]
        if self.level == "nodes":
            if support.dim() != 3 or support.shape[1] == 0 or query.shape[1] == 0:
                raise ValueError(f"KNNMatcher(level='nodes') needs node-level features [n, nodes, dim] with at "
                                 f"least one node, got support {tuple(support.shape)} and query "
                                 f"{tuple(query.shape)}; pass node features or use level='pooled'")
            labels = node_labels(labels, support.shape[1])
            support, query = support.flatten(0, 1), query.flatten(0, 1)  # [S*N, D], [Q*M, D]
        elif support.dim() == 3:
            support, query = support.mean(1), query.mean(1)
        if torch.is_grad_enabled() and (support.requires_grad or query.requires_grad):
            logits = surrogate_logits(support, labels, query, way, self.surrogate, self.metric, self.temperature)
            return logits.view(n_query, -1, way).mean(1) if self.level == "nodes" else logits
        dist, idx = faiss_search(support, query, min(self.k, support.shape[0]), self.metric)
        logits = knn_vote_logits(dist, labels[idx], way, self.weighted)
        if self.level == "nodes":
            logits = logits.view(n_query, -1, way).mean(1)  # mean of the node logits
        return logits.to(query.dtype)


def knn_vote_logits(dist: torch.Tensor, neighbour_labels: torch.Tensor, way: int, weighted: bool) -> torch.Tensor:
    """Votes plus the tie bonus (see :class:`KNNMatcher`).

    Args:
        dist: ``[n, k]`` neighbour distances, ascending along each row.
        neighbour_labels: ``[n, k]`` their classes.
    Returns:
        ``[n, way]`` float32.
    """
    n, k = dist.shape
    weights = 1.0 / (1.0 + dist) if weighted else torch.ones_like(dist)
    votes = dist.new_zeros(n, way).scatter_add_(1, neighbour_labels, weights)
    rank_score = (k - torch.arange(k, device=dist.device, dtype=dist.dtype)) / k  # 1 for the nearest
    nearest = dist.new_zeros(n, way).scatter_reduce_(1, neighbour_labels, rank_score.expand(n, k), reduce="amax")
    return votes + (1e-4 if weighted else 0.5) * nearest


def surrogate_logits(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, way: int,
                     surrogate: str = "soft_neighbours", metric: str = "l2", temperature: float = 1.0) -> torch.Tensor:
    """Differentiable logits standing in for the k-NN votes in a training loss.

    With similarity ``sim(q, s)`` = ``-||q - s||^2`` (``"l2"``) or the cosine (``"cosine"``), over
    ``T = temperature``:

    - ``"soft_neighbours"``: ``logits[q, c] = logsumexp over support items s of class c of sim(q, s) / T``,
      so ``softmax(logits)[c]`` is NCA's probability that ``q``'s stochastic nearest neighbour is
      of class ``c`` (the k-NN rule as ``T`` -> 0, with ``k = 1``);
    - ``"prototype"``: ``logits[q, c] = sim(q, mean of class c) / T``.

    Args:
        support: ``[S, D]``; support_labels: ``[S]`` in ``0..way-1``; query: ``[Q, D]``.
    Returns:
        ``[Q, way]`` in ``query``'s dtype.
    """
    if metric == "cosine":
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    if surrogate == "prototype":
        support, support_labels = class_means(support, support_labels, way), torch.arange(way, device=query.device)
    sim = query @ support.T if metric == "cosine" else -squared_distances(query, support)  # [Q, S] or [Q, way]
    sim = sim / temperature
    if surrogate == "prototype":
        return sim
    by_class = sim.new_full((way, *sim.shape), float("-inf"))  # [way, Q, S]: class c keeps its own columns
    mask = support_labels.view(1, -1) == torch.arange(way, device=sim.device).view(-1, 1)  # [way, S]
    by_class = torch.where(mask.unsqueeze(1), sim.unsqueeze(0), by_class)
    return torch.logsumexp(by_class, dim=-1).T  # [Q, way]


def import_faiss():
    """``import faiss`` with its loader's log lines kept out of the user's terminal.

    faiss's loader tries its AVX512-SPR / AVX512 / AVX2 builds in turn and logs each failed attempt
    (``ModuleNotFoundError("No module named 'faiss.swigfaiss_avx512'")``) at INFO on the
    ``faiss.loader`` logger, which the CLI shows by default; they say nothing to a user, so that
    logger is held at WARNING while faiss loads (its errors still show).
    """
    loader = logging.getLogger("faiss.loader")
    level = loader.level
    loader.setLevel(max(level, logging.WARNING))
    try:
        import faiss  # lazy: `import matchers` must not pay for faiss
    except ImportError as err:
        raise ImportError("KNNMatcher needs faiss: pip install faiss-cpu (or faiss-gpu)") from err
    finally:
        loader.setLevel(level)
    return faiss


def faiss_search(support: torch.Tensor, query: torch.Tensor, k: int, metric: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN of ``query: [n, D]`` among ``support: [s, D]`` with a faiss flat index.

    Returns:
        ``dist: [n, k]`` float32 (Euclidean distance for ``"l2"``, ``1 - cos`` for ``"cosine"``),
        ``idx: [n, k]`` int64 support indices, both on ``query``'s device, nearest first (equal
        distances in support-index order).
    """
    faiss = import_faiss()
    support, query = support.detach().float(), query.detach().float()
    if metric == "cosine":
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    index = (faiss.IndexFlatIP if metric == "cosine" else faiss.IndexFlatL2)(support.shape[1])
    if query.is_cuda and hasattr(faiss, "StandardGpuResources"):
        device = query.device.index if query.device.index is not None else torch.cuda.current_device()
        if device not in _GPU_RESOURCES:
            _GPU_RESOURCES[device] = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(_GPU_RESOURCES[device], device, index)
    index.add(support.cpu().contiguous().numpy())
    scores, idx = index.search(query.cpu().contiguous().numpy(), k)
    scores, idx = torch.from_numpy(scores), torch.from_numpy(idx)
    dist = 1.0 - scores if metric == "cosine" else scores.clamp_min(0).sqrt()  # faiss L2 returns squared distances
    by_index = idx.sort(dim=1).indices  # rank by (distance, support index): deterministic among equal distances
    dist, idx = dist.gather(1, by_index), idx.gather(1, by_index)
    by_distance = dist.sort(dim=1, stable=True).indices
    dist, idx = dist.gather(1, by_distance), idx.gather(1, by_distance)
    return dist.to(query.device), idx.to(query.device)
