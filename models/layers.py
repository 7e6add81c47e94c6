"""Node-mask helpers shared by the backbones.

A node mask is a ``[B, N]`` bool tensor: True keeps the node, False deletes it (it is never a
neighbour in the graph and is left out of pooling). ``None`` means every node is kept.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["check_node_mask", "masked_mean"]


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
