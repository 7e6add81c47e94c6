"""Backbones for few-shot learning, registered in timm on import.

``import models`` registers the isotropic Vision GNN family (``vig_ti_224_gelu``,
``vig_s_224_gelu``, ``vig_b_224_gelu``, the small-image ``vig_small_28`` / ``vig_small_ln_28`` /
``vig_small_c4_28`` / ``vig_small_84`` and
the tiny ``test_vig``), the pyramid ViG (``pvig_ti/s/m/b_224_gelu``, ``pvig_small_28`` /
``pvig_small_84``, ``test_pvig``), the graph controls of ``vig_small_c4_28`` at equal parameters
(``vig_small_c4_grid_28``, ``vig_small_c4_self_28``) and the ``conv4`` and ``conv64f`` (DN4's Conv-64F)
baselines, so ``timm.create_model(name)`` builds them.

Every backbone has the same contract: ``forward_features(images) -> nodes [B, N, D]``,
``forward_head(nodes, pre_logits=True, node_mask=None) -> embedding [B, D]``. ViG also takes a
``node_mask`` and a ``block_hook`` in ``forward_features`` (prompts, node deletion).

Glossary: B batch, C image channels, H x W image, N nodes, P prompt nodes, D feature dim,
k neighbours per node.

Example:
    >>> import models
    >>> backbone = models.create_backbone("vig_small_28")
    >>> backbone.num_features
    96
"""
from __future__ import annotations

import difflib
from typing import List

import timm
from torch import nn

from .conv4 import Conv4
from .conv64f import Conv64F
from .graph_controls import FixedGraphVisionGNN
from .layers import check_node_mask, ink_node_mask, masked_mean
from .pvig import PyramidVisionGNN
from .vig import BlockHook, FFN, Grapher, VisionGNN, ViGBlock, knn_graph

__all__ = [
    "VisionGNN", "ViGBlock", "Grapher", "FFN", "BlockHook", "knn_graph", "PyramidVisionGNN",
    "FixedGraphVisionGNN", "Conv4", "Conv64F", "check_node_mask", "ink_node_mask", "masked_mean", "create_backbone",
    "list_backbones",
]

_MODULES = ("vig", "pvig", "conv4", "conv64f", "graph_controls")


def list_backbones() -> List[str]:
    """Names of the fewshot backbones registered in timm."""
    return timm.list_models(module=list(_MODULES))


def create_backbone(name: str, **kwargs) -> nn.Module:
    """A freshly initialised backbone without classifier (``num_classes=0``): ``forward_head(...,
    pre_logits=True)`` and ``forward`` both give the embedding.

    Args:
        name: a timm model name, usually one of :func:`list_backbones`.
        **kwargs: model arguments (``img_size``, ``in_chans``, ...).

    Raises:
        ValueError: for a name timm does not know, listing the fewshot backbones and the closest name.
    """
    if ":" not in name and not timm.is_model(name):
        choices = list_backbones()
        close = difflib.get_close_matches(name, choices, n=1) or difflib.get_close_matches(
            name, timm.list_models(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown backbone {name!r}: fewshot backbones are {', '.join(choices)}{hint}")
    kwargs.setdefault("num_classes", 0)
    return timm.create_model(name, pretrained=False, **kwargs)
