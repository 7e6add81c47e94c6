"""Image-to-class top-k similarity sums, the work behind DN4, at the cost of its matrix products.

For every query node ``m`` and class ``c``: the sum of the ``k`` largest cosine similarities of
``m`` with the ``P = shot*N`` nodes of class ``c``'s support images. The similarities are computed
one block of query nodes at a time (``[P*way, r]`` per episode, sized to stay in cache) and each
block is reduced at once, so the ``[Q*M, S*N]`` matrix never exists and ``torch.topk`` (a sort per
row of ``P`` values) is never called. The reduction (:func:`top_k_set`) uses only whole-tensor
``maximum`` / ``minimum`` / ``amax`` over the block: for ``k <= 3`` each halving reads the rows it
pairs twice and writes half as many twice, about four reads and two writes of the block in all,
against the ``P``-value sort per row of ``torch.topk``.

Support nodes are laid out class-minor, ``support_nodes[e, p*way + c]`` = node ``p`` of class
``c``, so that position ``p`` of every class is one contiguous slice of the block.

Glossary: E episodes, way classes, P nodes per class (shot*N), R query nodes per episode (Q*M),
D feature dim, k neighbours per query node and class.
"""
from __future__ import annotations

import functools
from typing import Callable, List, Tuple

import torch

__all__ = ["top_k_set", "class_topk_scores", "ClassTopKSum", "class_minor"]

_BLOCK_ELEMENTS = 1 << 19
"""Similarities per block (2 MB in float32, the size of one core's L2 cache here): measured by
``benchmarks/dn4_scoring.py``; smaller blocks pay Python dispatch, larger ones leave the cache."""


def class_minor(support: torch.Tensor, way: int) -> torch.Tensor:
    """Support nodes grouped by class, equal shots: ``[E, way*shot, N, D]`` (class ``c`` = images
    ``c*shot ... c*shot+shot-1``) -> ``[E, P*way, D]`` with row ``p*way + c`` = node ``p`` of class ``c``."""
    e, s, n, d = support.shape
    return support.reshape(e, way, (s // way) * n, d).transpose(1, 2).reshape(e, -1, d)


def top_k_set(x: torch.Tensor, k: int, scratch: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """The ``k`` largest values along dim 1 of every column, as a multiset (in no particular order).

    Halving: with the ``s`` rows paired as ``hi = max(a, b)``, ``lo = min(a, b)``, a ``lo`` value among
    the ``k`` largest has its partner above it, so at most ``k // 2`` of them are, and they are the
    largest of ``lo``: ``top_k(x) = top_k(hi + [odd row] + top_{k//2}(lo))``, ``ceil(s/2) + k//2`` rows.
    Repeated until ``k`` rows are left (``s = k + 1`` with ``k`` even drops its minimum by one bubble
    pass). Ties are kept as values, as ``torch.topk`` keeps them.

    Args:
        x: ``[E, s, C]`` with ``s >= k``; overwritten unless ``out`` is given.
        k: values kept per column.
        scratch: optional ``[E, >= s//2, C]`` buffer for the ``lo`` halves.
        out: optional ``[E, >= ceil(s/2) + k//2, C]`` workspace that receives the first halving, so
            ``x`` is left as it was.
    Returns:
        ``[E, k, C]``, a view of ``x`` or of ``out``.
    """
    steps, top = plan_top_k(x, k, scratch, out)
    for step in steps:
        step()
    return top


def plan_top_k(x: torch.Tensor, k: int, scratch: torch.Tensor | None = None,
               out: torch.Tensor | None = None) -> Tuple[List[Callable[[], object]], torch.Tensor]:
    """:func:`top_k_set` as a list of steps bound to views of ``x``, ``scratch`` and ``out``, and the view
    that holds the result once they have run: a block loop plans once and runs the steps per block
    (with no slicing in the loop). Buffers it needs beyond those given are allocated here, once."""
    steps: List[Callable[[], object]] = []
    dest = x if out is None else out
    while x.shape[1] > k:
        s = x.shape[1]
        half, extra = s // 2, k // 2
        if extra >= half:  # s == k + 1 and k even: bubble the minimum to the end, keep the rest
            if dest is not x:
                steps.append(functools.partial(dest[:, :s].copy_, x))
                x = dest[:, :s]
            low = x.new_empty(x[:, 0].shape)
            for j in range(k):
                a, b = x[:, j], x[:, j + 1]
                steps += [functools.partial(torch.minimum, a, b, out=low), functools.partial(torch.maximum, a, b, out=a),
                          functools.partial(b.copy_, low)]
            return steps, x[:, :k]
        a, b = x[:, :half], x[:, half:2 * half]
        if scratch is None or scratch.shape[1] < half:
            scratch = x.new_empty(x.shape[0], half, x.shape[2])
        low = scratch[:, :half]
        steps += [functools.partial(torch.minimum, a, b, out=low),
                  functools.partial(torch.maximum, a, b, out=dest[:, :half])]  # in place when dest is x: exact alias
        keep = half
        if s % 2:
            steps.append(functools.partial(dest[:, keep].copy_, x[:, 2 * half]))
            keep += 1
        if extra == 1:
            steps.append(functools.partial(torch.amax, low, dim=1, out=dest[:, keep]))
        else:
            inner, top = plan_top_k(low, extra)
            steps += inner + [functools.partial(dest[:, keep:keep + extra].copy_, top)]
        x = dest = dest[:, :keep + extra]
    return steps, x


def _rows_per_block(episodes: int, support_rows: int, nodes: int, total: int) -> int:
    """Query nodes per block: a multiple of ``nodes`` (whole query images), at least one image."""
    images = max(1, _BLOCK_ELEMENTS // max(1, episodes * support_rows * nodes))
    return min(total, images * nodes)


class _Blocks:
    """Buffers for the blocks of one call: similarities ``[E, P*way, r]``, the halving's workspace
    and its scratch; the last, shorter block gets views of the same storage."""

    def __init__(self, like: torch.Tensor, episodes: int, support_rows: int, way: int, rows: int, keep_sim: bool):
        self.shape = (episodes, support_rows, way)
        per_class = support_rows // way
        n = episodes * support_rows * rows
        self.sim = like.new_empty(n)
        self.work = like.new_empty(n) if keep_sim else None
        self.scratch = like.new_empty(episodes * (per_class // 2) * way * rows)
        self.plans = {}

    def scores(self, support_nodes: torch.Tensor, block: torch.Tensor, k: int, nodes: int):
        """Similarities of ``block: [E, r, D]`` (whole query images of ``nodes`` nodes) with the support
        nodes, reduced: returns the image-to-class scores ``[E, way, r / nodes]`` and, with ``keep_sim``,
        the k-th largest values ``[E, way, r]`` and the similarities ``[E, P*way, r]``."""
        e, pw, way = self.shape
        r = block.shape[1]
        if r not in self.plans:  # views of the buffers for blocks of r rows, and the halving's steps over them
            per_class = pw // way
            sim = self.sim[:e * pw * r].view(e, pw, r)
            scratch = self.scratch[:e * (per_class // 2) * way * r].view(e, per_class // 2, way * r)
            out = None if self.work is None else self.work[:e * pw * r].view(e, per_class, way * r)
            self.plans[r] = (sim, *plan_top_k(sim.view(e, per_class, way * r), k, scratch, out))
        sim, steps, top = self.plans[r]
        torch.bmm(support_nodes, block.transpose(1, 2), out=sim)
        for step in steps:
            step()
        scores = top.reshape(e, k, way, r // nodes, nodes).sum((1, 4))
        if self.work is None:
            return scores, None, None
        return scores, top.amin(1).view(e, way, r), sim


def class_topk_scores(support_nodes: torch.Tensor, query_nodes: torch.Tensor, way: int, k: int,
                      nodes: int) -> torch.Tensor:
    """Image-to-class scores, summed over each query image's nodes, without autograd.

    Args:
        support_nodes: ``[E, P*way, D]`` unit vectors, class-minor (:func:`class_minor`).
        query_nodes: ``[E, Q*M, D]`` unit vectors, ``M = nodes`` per query image.
        way, k: classes and neighbours per class (``k <= P``).
        nodes: ``M``.
    Returns:
        ``[E, Q, way]``: ``sum over m of the sum of top_k over p of cos(query node m, node p of class c)``.
    """
    e, pw, _ = support_nodes.shape
    total = query_nodes.shape[1]
    rows = _rows_per_block(e, pw, nodes, total)
    blocks = _Blocks(query_nodes, e, pw, way, rows, keep_sim=False)
    out = query_nodes.new_empty(e, way, total // nodes)
    for start in range(0, total, rows):
        out[..., start // nodes:(start + rows) // nodes] = blocks.scores(
            support_nodes, query_nodes[:, start:start + rows], k, nodes)[0]
    return out.transpose(1, 2)


class ClassTopKSum(torch.autograd.Function):
    """:func:`class_topk_scores` with a gradient: each query node's score for class ``c`` is the sum of
    the similarities it selected, so their gradient is one on the selected pairs and zero elsewhere
    (as through ``torch.topk``; ``t`` values tied at the k-th place for ``u < t`` remaining slots get
    ``u / t`` each). Forward keeps the selection as a bit per similarity (``[E, P*way, Q*M]`` bool), so
    the backward is two matrix products, no recomputation, no dense index scatter.

    ``apply(support_nodes [E, P*way, D], query_nodes [E, Q*M, D], way, k, nodes) -> [E, Q, way]``.
    """

    @staticmethod
    def forward(ctx, support_nodes, query_nodes, way: int, k: int, nodes: int):
        e, pw, _ = support_nodes.shape
        total = query_nodes.shape[1]
        rows = _rows_per_block(e, pw, nodes, total)
        blocks = _Blocks(query_nodes, e, pw, way, rows, keep_sim=True)
        out = query_nodes.new_empty(e, way, total // nodes)
        chosen: List[torch.Tensor] = []  # per block: [E, P*way, r] bool, True = selected
        ties: List[Tuple[int, tuple, torch.Tensor]] = []
        for i, start in enumerate(range(0, total, rows)):
            sums, kth, sim = blocks.scores(support_nodes, query_nodes[:, start:start + rows], k, nodes)
            r = sim.shape[-1]
            out[..., start // nodes:(start + r) // nodes] = sums
            sim4 = sim.view(e, pw // way, way, r)
            sel = sim4 >= kth.unsqueeze(1)
            count = sel.sum(1, dtype=torch.int32)  # [E, way, r]; > k where values tie at the k-th place
            if bool((count > k).any()):
                ties.append((i, *_tie_weights(sim4, kth, count > k, k)))
            chosen.append(sel.view(e, pw, r))
        ctx.save_for_backward(support_nodes, query_nodes, *chosen)
        ctx.ties, ctx.way, ctx.nodes, ctx.rows = ties, way, nodes, rows
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):
        support_nodes, query_nodes, *chosen = ctx.saved_tensors
        way, nodes, rows = ctx.way, ctx.nodes, ctx.rows
        e, pw, _ = support_nodes.shape
        total = query_nodes.shape[1]
        ties = {i: (index, value) for i, index, value in ctx.ties}
        grad_query = torch.empty_like(query_nodes) if ctx.needs_input_grad[1] else None
        grad_support = torch.zeros_like(support_nodes) if ctx.needs_input_grad[0] else None
        # every node of query image q carries the image's gradient: [E, way, Q*M]
        node_grad = grad.transpose(1, 2).unsqueeze(-1).expand(e, way, total // nodes, nodes).reshape(e, way, total)
        for i, start in enumerate(range(0, total, rows)):
            sel = chosen[i]
            r = sel.shape[-1]
            weights = sel.to(grad.dtype).view(e, pw // way, way, r)
            if i in ties:  # tied selections: fractional weights on their columns
                index, value = ties[i]
                weights[index[0], :, index[1], index[2]] = value
            weights.mul_(node_grad[..., start:start + r].unsqueeze(1))
            weights = weights.view(e, pw, r)
            if grad_query is not None:
                torch.bmm(weights.transpose(1, 2), support_nodes, out=grad_query[:, start:start + r])
            if grad_support is not None:
                grad_support.baddbmm_(weights, query_nodes[:, start:start + r])
        return grad_support, grad_query, None, None, None


def _tie_weights(sim4: torch.Tensor, kth: torch.Tensor, tied: torch.Tensor, k: int):
    """Fractional selection weights ``[T, P]`` of the ``T`` columns ``tied`` ``[E, way, r]`` of a block,
    with their index ``(episode, class, row)``."""
    index = tied.nonzero(as_tuple=True)
    values = sim4[index[0], :, index[1], index[2]]  # [T, P]
    t = kth[index].unsqueeze(1)
    above, at = values > t, values == t
    share = (k - above.sum(1, keepdim=True)).to(values.dtype) / at.sum(1, keepdim=True).to(values.dtype)
    return index, above.to(values.dtype) + at.to(values.dtype) * share
