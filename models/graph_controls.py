"""Graph controls at equal parameters: the ViG with its k-NN neighbourhood replaced by a fixed one.

Does a ViG gain from its graph, or from the blocks around it? Removing the Grapher blocks changes the
parameter count as well as the graph. These controls keep every block, parameter and initial weight
of the ViG they copy (the same state-dict keys and shapes) and change only which nodes each node's
max-relative graph convolution reads (Han et al., NeurIPS 2022; Li et al., DeepGCNs, ICCV 2019):

- ``"grid"``: the fixed 3x3 window of the node grid around each node (itself and its 8 grid
  neighbours; fewer at the border), a CNN-like graph: a 3x3 max-relative "convolution".
- ``"self"``: each node alone; ``max_j (x_j - x_i)`` is then 0 and the graph convolution sees only the
  node's own features: the Grapher becomes a per-node transform with the same parameters.
- ``"knn"``: the ViG's own dynamic k-nearest-neighbour graph (:func:`models.vig.knn_graph`).

Registered in timm: ``vig_small_c4_grid_28`` and ``vig_small_c4_self_28``, the controls of
``vig_small_c4_28``. They live in this module, subclassing :class:`models.vig.VisionGNN` and
:class:`models.vig.Grapher` without changing them: a :class:`FixedGrapher` takes over a built Grapher's
modules, so the control is the ViG exactly, up to the one call that picks the neighbours.

Glossary: B batch, h x w node grid, N nodes (h*w plus any prompt nodes), D features, k neighbours.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .layers import check_node_mask
from .vig import _SMALL_C4_28, _small_cfg, Grapher, VisionGNN, checkpoint_filter_fn, knn_graph

__all__ = ["NEIGHBOURHOODS", "grid_neighbours", "self_neighbours", "FixedGrapher", "FixedGraphVisionGNN"]

NEIGHBOURHOODS = ("knn", "grid", "self")
"""What ``neighbourhood`` may name."""


def grid_neighbours(grid: Tuple[int, int], num_nodes: int, node_mask: Optional[torch.Tensor] = None,
                    batch: int = 1, device=None) -> torch.Tensor:
    """The 3x3 window of every grid node, itself first.

    Args:
        grid: ``(h, w)``: nodes ``0 .. h*w-1`` are the grid, row-major.
        num_nodes: N >= h*w; nodes past the grid (prompt nodes) have only themselves.
        node_mask: ``[B, N]`` bool, True = node kept; a deleted neighbour is replaced by the node itself.
        batch: B when there is no mask.

    Returns:
        neighbours: ``[B, N, 9]`` long. Slot order: the node, then its window row by row; slots outside
        the grid (border nodes) and deleted nodes hold the node itself, which adds nothing to a max over
        ``x_j - x_i`` (it is 0, and the window always holds the node).
    """
    h, w = grid
    if num_nodes < h * w:
        raise ValueError(f"a {h}x{w} node grid needs at least {h * w} nodes, got {num_nodes}")
    node = torch.arange(num_nodes, device=device)
    rows, cols = node // w, node % w
    slots = [node]
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == 0 and dc == 0:
                continue
            r, c = rows + dr, cols + dc
            inside = (node < h * w) & (r >= 0) & (r < h) & (c >= 0) & (c < w)
            slots.append(torch.where(inside, r * w + c, node))
    neighbours = torch.stack(slots, dim=-1)  # [N, 9]
    if node_mask is None:
        return neighbours.expand(batch, -1, -1)
    keep = torch.gather(node_mask, 1, neighbours.flatten().expand(node_mask.shape[0], -1)).view(-1, num_nodes, 9)
    return torch.where(keep, neighbours, node[:, None])


def self_neighbours(num_nodes: int, batch: int = 1, device=None) -> torch.Tensor:
    """``[B, N, 1]``: every node's only neighbour is itself."""
    return torch.arange(num_nodes, device=device).view(1, num_nodes, 1).expand(batch, -1, -1)


class FixedGrapher(Grapher):
    """A :class:`~models.vig.Grapher` whose graph is fixed (``"grid"`` / ``"self"``) instead of the k-NN one.

    Built from an existing Grapher, whose modules (and so parameters, initial weights and state-dict
    keys) it takes over unchanged.

    Args:
        grapher: the Grapher to copy.
        neighbourhood: one of :data:`NEIGHBOURHOODS`.
    """

    def __init__(self, grapher: Grapher, neighbourhood: str):
        nn.Module.__init__(self)
        if neighbourhood not in NEIGHBOURHOODS:
            raise ValueError(f"neighbourhood must be one of {', '.join(NEIGHBOURHOODS)}, got {neighbourhood!r}")
        self.num_knn, self.dilation, self.neighbourhood = grapher.num_knn, grapher.dilation, neighbourhood
        self.fc_in, self.graph_conv, self.fc_out, self.drop_path = \
            grapher.fc_in, grapher.graph_conv, grapher.fc_out, grapher.drop_path
        self.grid: Optional[Tuple[int, int]] = None  # set by FixedGraphVisionGNN from each input's node grid

    def _graph(self, x: torch.Tensor, h: torch.Tensor, node_mask: Optional[torch.Tensor]) -> torch.Tensor:
        batch, num_nodes = x.shape[:2]
        if self.neighbourhood == "knn":
            return knn_graph(h, self.num_knn, self.dilation, node_mask)
        if self.neighbourhood == "self":
            return self_neighbours(num_nodes, batch, x.device)
        if self.grid is None:
            raise ValueError("a grid neighbourhood needs the node grid: use FixedGrapher inside FixedGraphVisionGNN, "
                             "or set .grid = (h, w)")
        return grid_neighbours(self.grid, num_nodes, node_mask, batch, x.device)

    def neighbours(self, x: torch.Tensor, node_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The graph this block uses for its input ``[B, N, D]``: ``[B, N, k']`` long."""
        check_node_mask(node_mask, x)
        return self._graph(x, self._project(x), node_mask)

    def forward(self, x: torch.Tensor, node_mask: Optional[torch.Tensor] = None,
                graph_hook: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """x: ``[B, N, D]``, node_mask: ``[B, N]`` bool -> ``[B, N, D]``, as :meth:`Grapher.forward` over the fixed graph."""
        h = self._project(x)
        neighbours = self._graph(x, h, node_mask)
        if graph_hook is not None:
            h = graph_hook(h, neighbours)
        return x + self.drop_path(self.fc_out(self.graph_conv(h, neighbours)))


class FixedGraphVisionGNN(VisionGNN):
    """:class:`~models.vig.VisionGNN` with every Grapher's neighbourhood fixed (:class:`FixedGrapher`).

    Args:
        neighbourhood: ``"grid"`` (3x3 window of the node grid), ``"self"`` (each node alone) or ``"knn"``
            (the plain ViG).
        **kwargs: the arguments of :class:`~models.vig.VisionGNN`.

    Example:
        >>> control = FixedGraphVisionGNN("grid", img_size=28, in_chans=1, num_classes=0, embed_dim=32,
        ...                               depth=2, num_knn=4, stem_stride=4)
        >>> control.forward_features(torch.randn(2, 1, 28, 28)).shape   # every node reads its 3x3 window
        torch.Size([2, 49, 32])
    """

    def __init__(self, neighbourhood: str = "grid", **kwargs):
        super().__init__(**kwargs)
        if neighbourhood not in NEIGHBOURHOODS:
            raise ValueError(f"neighbourhood must be one of {', '.join(NEIGHBOURHOODS)}, got {neighbourhood!r}")
        self.neighbourhood = neighbourhood
        for block in self.blocks:
            block.grapher = FixedGrapher(block.grapher, neighbourhood)

    def forward_features(self, x: torch.Tensor, *args, **kwargs):
        """As :meth:`VisionGNN.forward_features`; the Graphers first learn this input's node grid."""
        grid = tuple(self.stem.grid_size(tuple(x.shape[-2:])))
        for block in self.blocks:
            block.grapher.grid = grid
        return super().forward_features(x, *args, **kwargs)


def _create_control(variant: str, pretrained: bool = False, **kwargs) -> FixedGraphVisionGNN:
    if pretrained:
        raise ValueError(f"no pretrained weights exist for {variant!r}: it is a control, trained from scratch")
    return build_model_with_cfg(FixedGraphVisionGNN, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                **kwargs)


default_cfgs = generate_default_cfgs({
    "vig_small_c4_grid_28": _small_cfg(in_chans=1, img_size=28),
    "vig_small_c4_self_28": _small_cfg(in_chans=1, img_size=28),
})


@register_model
def vig_small_c4_grid_28(pretrained: bool = False, **kwargs) -> FixedGraphVisionGNN:
    """:func:`~models.vig.vig_small_c4_28` with each Grapher reading the fixed 3x3 grid window of every node
    instead of its k nearest neighbours: the same blocks, parameters and initial weights."""
    model_args = dict(_SMALL_C4_28, neighbourhood="grid")
    return _create_control("vig_small_c4_grid_28", pretrained, **dict(model_args, **kwargs))


@register_model
def vig_small_c4_self_28(pretrained: bool = False, **kwargs) -> FixedGraphVisionGNN:
    """:func:`~models.vig.vig_small_c4_28` with each node its own only neighbour (no message between nodes):
    the same blocks, parameters and initial weights."""
    model_args = dict(_SMALL_C4_28, neighbourhood="self")
    return _create_control("vig_small_c4_self_28", pretrained, **dict(model_args, **kwargs))
