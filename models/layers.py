"""Node layers and node-mask helpers shared by the backbones.

Node layers act on node features ``[..., D]`` (channels last): :class:`NodeConv` is a 1x1
convolution computed as a matrix product, :class:`NodeBatchNorm` a BatchNorm over every node of the
batch. Their parameters and buffers have the names and shapes of ``nn.Conv2d(.., 1)`` and
``nn.BatchNorm2d``, so weights written for the ``[B, D, N, 1]`` layout (the ViG authors' code)
load unchanged, and a block never transposes its nodes to a convolution layout and back.

A node mask is a ``[B, N]`` bool tensor: True keeps the node, False deletes it (it is never a
neighbour in the graph and is left out of pooling). ``None`` means every node is kept.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NodeConv", "NodeBatchNorm", "ContiguousGrad", "neighbour_max", "check_node_mask", "masked_mean",
           "ink_node_mask"]


class ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    On torch 2.14.1 (CPU), BatchNorm's backward gives wrong input gradients when its input or its
    output gradient is a strided view such as ``[B, N, D] -> [B, D, N, 1]`` by transpose
    (``torch.autograd.gradcheck`` fails; it passes with contiguous tensors). Before this guard,
    every ViG here trained with silently wrong gradients; see
    ``tests/models/test_vig.py::test_vig_gradients_match_finite_differences``.
    """

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class _NeighbourMax(torch.autograd.Function):
    """``out[b, i] = max over j of keys[b, neighbours[b, i, j]]`` (per feature), one neighbour slot at a time.

    Forward gathers one ``[B*N, D]`` slice per slot and keeps a running maximum and the slot it came
    from (the first of equal values, as ``torch.max``); backward adds each output gradient to the one
    key it came from by a single ``scatter_add_``. Advanced indexing plus ``max(dim)`` instead builds
    ``[B, N, k, D]`` in the forward and zero-fills and scatters a tensor of that size in the
    backward (the two against each other: ``benchmarks/results/vig_step_profile.md``).
    """

    @staticmethod
    def forward(ctx, keys: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        b, m, d = keys.shape
        n, k = neighbours.shape[1:]
        rows = (neighbours + (torch.arange(b, device=keys.device) * m)[:, None, None]).reshape(b * n, k).t().contiguous()
        table = keys.reshape(b * m, d)
        best = table.index_select(0, rows[0])  # [B*N, D]
        slot = torch.zeros(b * n, d, dtype=torch.uint8 if k <= 256 else torch.long, device=keys.device)
        value, above = torch.empty_like(best), torch.empty(best.shape, dtype=torch.bool, device=keys.device)
        marked = torch.empty_like(slot)
        for j in range(1, k):
            torch.index_select(table, 0, rows[j], out=value)
            torch.gt(value, best, out=above)
            torch.maximum(best, value, out=best)
            # the slot of the running maximum is the last j whose value was strictly above it: max over j of
            # j * above (masked_fill_ does the same at about 100x the time)
            if slot.dtype == torch.uint8:
                torch.mul(above.view(torch.uint8), j, out=marked)
            else:
                marked.copy_(above).mul_(j)
            torch.maximum(slot, marked, out=slot)
        ctx.save_for_backward(rows, slot)
        ctx.keys_shape = keys.shape
        return best.view(b, n, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, slot = ctx.saved_tensors
        b, m, d = ctx.keys_shape
        source = rows.t().gather(1, slot.long())  # [B*N, D]: the key row each output value came from
        grad_keys = grad.new_zeros(b * m, d).scatter_add_(0, source, grad.reshape(-1, d))
        return grad_keys.view(b, m, d), None


def neighbour_max(keys: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Feature-wise maximum over each node's neighbours: ``keys [B, M, D]``, ``neighbours [B, N, k]``
    (indices into M) -> ``[B, N, D]``; differentiable in ``keys`` (twice, for second-order methods)."""
    return _NeighbourMax.apply(keys, neighbours)


class NodeConv(nn.Conv2d):
    """1x1 convolution over node features: ``[..., in_dim]`` -> ``[..., out_dim]``.

    The weight keeps ``nn.Conv2d``'s layout ``[out_dim, in_dim / groups, 1, 1]``; the product is a
    ``F.linear`` (groups = 1) or one batched product over the groups, which on CPU is about 1.5x
    faster, forward and backward, than a convolution over ``[B, D, N, 1]`` (torch's slow
    ``_slow_conv2d`` path for 1x1 kernels), and needs no transpose. Group g maps input channels
    ``g * in_dim / groups ...`` to output channels ``g * out_dim / groups ...``, as a grouped conv.
    """

    def __init__(self, in_dim: int, out_dim: int, groups: int = 1):
        super().__init__(in_dim, out_dim, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.flatten(1)  # [out_dim, in_dim / groups]
        if self.groups == 1:
            return F.linear(x, weight, self.bias)
        g = self.groups
        y = torch.einsum("...gi,goi->...go", x.unflatten(-1, (g, -1)), weight.unflatten(0, (g, -1)))
        y = y.flatten(-2)
        return y if self.bias is None else y + self.bias


class NodeBatchNorm(nn.BatchNorm1d):
    """BatchNorm over node features ``[..., D]``: statistics over every node of every sample, as
    ``nn.BatchNorm2d`` over ``[B, D, N, 1]`` (same parameters, buffers and state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x.reshape(-1, x.shape[-1]))
        return ContiguousGrad.apply(y).view(x.shape)


def check_node_mask(node_mask: Optional[torch.Tensor], x: torch.Tensor) -> None:
    """Raise a ``ValueError`` unless ``node_mask`` is None or a ``[B, N]`` bool mask for ``x: [B, N, D]``
    that keeps at least one node of every sample."""
    if node_mask is None:
        return
    if node_mask.dtype != torch.bool:
        raise ValueError(f"node_mask must be a bool tensor (True = node kept), got dtype {node_mask.dtype}")
    if tuple(node_mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"node_mask must have shape [B, N] = {list(x.shape[:2])} to match the nodes, "
            f"got {list(node_mask.shape)}")
    if not bool(node_mask.any(dim=1).all()):
        empty = (~node_mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"node_mask must keep at least one node per sample; samples {empty} keep none")


def masked_mean(x: torch.Tensor, node_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over the kept nodes.

    Args:
        x: node features ``[B, N, D]``.
        node_mask: ``[B, N]`` bool, True = node kept; None keeps every node.

    Returns:
        pooled: ``[B, D]``.
    """
    if x.dim() != 3:
        raise ValueError(f"expected node features [B, N, D], got shape {list(x.shape)}")
    if node_mask is None:
        return x.mean(dim=1)
    check_node_mask(node_mask, x)
    weights = node_mask.to(x.dtype).unsqueeze(-1)  # [B, N, 1]
    # where() rather than a product, so a non-finite feature of a deleted node cannot leak in.
    total = torch.where(node_mask.unsqueeze(-1), x, x.new_zeros(())).sum(dim=1)
    return total / weights.sum(dim=1)


def ink_node_mask(images: torch.Tensor, grid: tuple, threshold: float = 0.1, dilate: int = 1) -> torch.Tensor:
    """Keep the nodes whose patch of the image holds ink (strokes, foreground); drop blank background.

    A pixel is ink when it differs from the image's background, the median of its border pixels, by
    more than ``threshold`` of the full range (255 for uint8, 1 for float images in 0..1, 2 in -1..1).
    The image is cut into the ``h x w`` cells of the node grid; a node is kept when its cell, grown by
    ``dilate`` cells on each side (a node sees beyond its own cell through the stem), holds ink.
    An image with no ink at all keeps every node.

    Args:
        images: ``[B, C, H, W]`` uint8 or float.
        grid: the node grid ``(h, w)`` (e.g. ``backbone.stem.grid_size((H, W))``).
    Returns:
        node_mask: ``[B, h*w]`` bool, True = node kept, row-major like the nodes.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {list(images.shape)}")
    x = images.float()
    span = 255.0 if images.dtype == torch.uint8 else float(x.amax() - x.amin()) or 1.0
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # [B, C, 2H + 2W]
    background = border.median(dim=-1).values[..., None, None]  # [B, C, 1, 1]
    ink = ((x - background).abs() > threshold * span).any(dim=1, keepdim=True).float()  # [B, 1, H, W]
    cells = torch.nn.functional.adaptive_max_pool2d(ink, tuple(grid))  # [B, 1, h, w]
    if dilate > 0:
        cells = torch.nn.functional.max_pool2d(cells, 2 * dilate + 1, stride=1, padding=dilate)
    mask = cells.flatten(1) > 0
    return mask | ~mask.any(dim=1, keepdim=True)
