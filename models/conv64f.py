"""Conv-64F, the network of DN4: four 64-channel conv blocks that keep a fine final feature map, whose
cells are the local descriptors an image-to-class matcher scores.

Paper: `Revisiting Local Descriptor based Image-to-Class Measure for Few-shot Learning` -
https://arxiv.org/abs/1903.12290
@inproceedings{li2019dn4,
  title={Revisiting Local Descriptor based Image-to-Class Measure for Few-shot Learning},
  author={Wenbin Li and Lei Wang and Jinglin Xu and Jing Huo and Yang Gao and Jiebo Luo},
  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2019},
}

Four blocks of 3x3 conv (64 channels, padding 1, no bias: a BatchNorm follows) - BatchNorm -
LeakyReLU(0.2); a 2x2 max-pool follows the first two blocks only. The image is quartered once,
not sixteen times as in Conv-4, so a 28x28 image ends on a 7x7 map (49 descriptors) and an 84x84
one on 21x21 (441). The map is returned as nodes ``[B, N, D]``, the contract every ``models``
backbone keeps: ``--backbone conv64f --matcher dn4`` is the DN4 baseline; a pooled matcher takes the
mean over the nodes (``forward_head(..., pre_logits=True)``, ``[B, 64]``).

Glossary: B batch, C image channels, H x W image, h x w final grid (H // 4 x W // 4), N = h*w
nodes (local descriptors), D channels.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs, register_model

from .layers import masked_mean
from .shipped import build_own, own_cfg, shipped_cfgs

__all__ = ["Conv64F", "LeakyConvBlock"]

NUM_POOLS = 2
"""Blocks followed by a 2x2 max-pool (the first two): the final map is the image over 4."""


class LeakyConvBlock(nn.Sequential):
    """3x3 conv (padding 1, no bias) - BatchNorm - LeakyReLU(0.2) [- 2x2 max-pool]:
    ``[B, C_in, H, W]`` -> ``[B, C_out, H, W]`` (``[B, C_out, H//2, W//2]`` with ``pool``).

    Args:
        in_chans: input channels.
        out_chans: output channels.
        pool: end with a 2x2 max-pool.
    """

    def __init__(self, in_chans: int, out_chans: int, pool: bool):
        layers = [nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False), nn.BatchNorm2d(out_chans),
                  nn.LeakyReLU(0.2, inplace=True)]
        super().__init__(*layers, *([nn.MaxPool2d(2)] if pool else []))


class Conv64F(nn.Module):
    """Conv-64F (Li et al., CVPR 2019, DN4's embedding network) with the fewshot backbone contract.

    Args:
        in_chans: image channels C.
        hidden_dim: channels of every block, D (64 in the paper).
        num_classes: classifier outputs over the pooled embedding; 0 (default) makes the head an identity.
        img_size: configured input size H (or (H, W)); only checked (at least 4x4) and recorded in
            ``grid_size``: any size works, the node count follows the input.

    Example:
        >>> model = Conv64F(in_chans=1, img_size=28)
        >>> nodes = model.forward_features(torch.randn(2, 1, 28, 28))   # [2, 49, 64]
        >>> model.forward_head(nodes, pre_logits=True).shape
        torch.Size([2, 64])
    """

    num_prefix_tokens = 0
    memory_format = torch.channels_last
    """Preferred layout of the conv weights, as for Conv-4 (``fewshot.model.build_model`` applies it)."""

    def __init__(
            self,
            in_chans: int = 1,
            hidden_dim: int = 64,
            num_classes: int = 0,
            img_size: Union[int, Tuple[int, int]] = 28,
    ):
        super().__init__()
        img_size = tuple(to_2tuple(img_size))
        for name, value, low in (("in_chans", in_chans, 1), ("hidden_dim", hidden_dim, 1),
                                 ("num_classes", num_classes, 0)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self.grid_size = (img_size[0] >> NUM_POOLS, img_size[1] >> NUM_POOLS)
        if min(self.grid_size) < 1:
            raise ValueError(f"Conv-64F halves the image twice: img_size must be at least 4x4, got {img_size}")
        self.num_features = self.embed_dim = hidden_dim
        self.blocks = nn.Sequential(*[LeakyConvBlock(in_chans if i == 0 else hidden_dim, hidden_dim, i < NUM_POOLS)
                                      for i in range(4)])
        self.num_classes = num_classes
        self.head = nn.Linear(hidden_dim, num_classes) if num_classes else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head by a fresh linear classifier with ``num_classes`` outputs (0: identity).

        Args:
            num_classes: classifier outputs.
            global_pool: only ``None`` or ``'avg'`` (the mean over nodes), for timm compatibility.
        """
        if global_pool not in (None, "avg"):
            raise ValueError(f"Conv64F pools by the mean over nodes only: global_pool must be None or 'avg', "
                             f"got {global_pool!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        device = next(self.parameters()).device
        self.head = nn.Linear(self.num_features, num_classes).to(device) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """images ``[B, C, H, W]`` -> nodes ``[B, N, D]``, N = (H // 4) * (W // 4), row-major."""
        return self.blocks(x).flatten(2).transpose(1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False,
                     node_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Nodes to the pooled embedding or class logits.

        Args:
            x: nodes ``[B, N, D]``.
            pre_logits: return the embedding ``[B, D]`` (mean over the kept nodes).
            node_mask: ``[B, N]`` bool, True = node kept in the mean; None keeps every node.

        Returns:
            ``[B, D]`` with ``pre_logits`` or ``num_classes == 0``, else logits ``[B, num_classes]``.
        """
        x = masked_mean(x, node_mask)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """images ``[B, C, H, W]`` -> logits ``[B, num_classes]`` (the embedding ``[B, D]`` when num_classes is 0)."""
        return self.forward_head(self.forward_features(x))


def _create_conv64f(variant: str, pretrained: bool = False, **kwargs) -> Conv64F:
    return build_own(Conv64F, variant, pretrained, **kwargs)  # its only weights are the shipped ones (models/weights/)


default_cfgs = generate_default_cfgs({"conv64f": own_cfg("blocks.0.0"), **shipped_cfgs("conv64f", own_cfg("blocks.0.0"))})


@register_model
def conv64f(pretrained: bool = False, **kwargs) -> Conv64F:
    """Conv-64F (DN4): 4 x [3x3 conv 64 - BN - LeakyReLU 0.2], max-pool after the first two; 49 nodes of 64 at 28x28."""
    model_args = dict(in_chans=1, hidden_dim=64, num_classes=0, img_size=28)
    return _create_conv64f("conv64f", pretrained, **dict(model_args, **kwargs))
