"""Conv-4, the standard few-shot learning backbone.

Papers:
* `Matching Networks for One Shot Learning` - https://arxiv.org/abs/1606.04080
* `Prototypical Networks for Few-shot Learning` - https://arxiv.org/abs/1703.05175
@inproceedings{snell2017prototypical,
  title={Prototypical Networks for Few-shot Learning},
  author={Jake Snell and Kevin Swersky and Richard Zemel},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2017},
}

Four blocks of 3x3 conv (64 channels, padding 1) - BatchNorm - ReLU - 2x2 max-pool. The final
feature map is returned as nodes ``[B, N, D]`` (N = h*w cells, D = channels), the same contract
as :class:`models.vig.VisionGNN`; the classic ProtoNet embedding is its flattening (64 values for
28x28 images, 1600 for 84x84).

Glossary: B batch, C image channels, H x W image, h x w final grid, N = h*w nodes, D channels.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs, register_model

from .shipped import build_own, own_cfg, shipped_cfgs

from .layers import masked_mean

__all__ = ["Conv4", "ConvBlock"]

_POOLS = ("flatten", "avg")


class ConvBlock(nn.Module):
    """3x3 conv (padding 1) - BatchNorm - ReLU - 2x2 max-pool: ``[B, C_in, H, W]`` -> ``[B, C_out, H//2, W//2]``.

    Args:
        in_chans: input channels.
        out_chans: output channels.
    """

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class Conv4(nn.Module):
    """Conv-4 backbone (Vinyals et al. 2016; Snell et al. 2017) with the fewshot backbone contract.

    Args:
        in_chans: image channels C.
        hidden_dim: channels of every conv block, D.
        num_classes: classifier outputs; 0 (default) makes the head an identity.
        img_size: configured input size H (or (H, W)); sets ``num_features`` for ``pool='flatten'``.
        pool: ``'flatten'`` (the standard ProtoNet embedding, ``N*D`` values) or ``'avg'`` (mean
            over nodes, D values).

    Example:
        >>> model = Conv4(in_chans=1, img_size=28)
        >>> model.forward_head(model.forward_features(torch.randn(2, 1, 28, 28)), pre_logits=True).shape
        torch.Size([2, 64])
    """

    num_prefix_tokens = 0
    memory_format = torch.channels_last
    """Preferred layout of the conv weights: 1.1-1.45x faster training on CPU than contiguous
    (``benchmarks/train_throughput.py``, ours+channels_last), same gradients to float32 rounding
    (``tests/models/test_conv4.py``). ``fewshot.model.build_model`` applies it."""

    def __init__(
            self,
            in_chans: int = 1,
            hidden_dim: int = 64,
            num_classes: int = 0,
            img_size: Union[int, Tuple[int, int]] = 28,
            pool: str = "flatten",
    ):
        super().__init__()
        img_size = tuple(to_2tuple(img_size))
        for name, value, low in (("in_chans", in_chans, 1), ("hidden_dim", hidden_dim, 1),
                                 ("num_classes", num_classes, 0)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
        self.grid_size = (img_size[0] // 16, img_size[1] // 16)
        if min(self.grid_size) < 1:
            raise ValueError(f"Conv-4 halves the image 4 times: img_size must be at least 16x16, got {img_size}")
        self.pool = pool
        self.embed_dim = hidden_dim
        self.num_features = hidden_dim * (self.grid_size[0] * self.grid_size[1] if pool == "flatten" else 1)
        self.blocks = nn.Sequential(*[ConvBlock(in_chans if i == 0 else hidden_dim, hidden_dim) for i in range(4)])
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

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
            global_pool: None keeps the pooling; ``'flatten'`` or ``'avg'`` changes it.
        """
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if global_pool is not None:
            if global_pool not in _POOLS:
                raise ValueError(f"global_pool must be None or one of {_POOLS}, got {global_pool!r}")
            self.pool = global_pool
            self.num_features = self.embed_dim * (
                self.grid_size[0] * self.grid_size[1] if global_pool == "flatten" else 1)
        self.num_classes = num_classes
        device = next(self.parameters()).device
        self.head = nn.Linear(self.num_features, num_classes).to(device) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """images ``[B, C, H, W]`` -> nodes ``[B, N, D]``, N = (H // 16) * (W // 16)."""
        return self.blocks(x).flatten(2).transpose(1, 2)

    def forward_head(
            self,
            x: torch.Tensor,
            pre_logits: bool = False,
            node_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Nodes to the embedding or class logits.

        Args:
            x: nodes ``[B, N, D]``.
            pre_logits: return the embedding (``[B, N*D]`` for 'flatten', ``[B, D]`` for 'avg').
            node_mask: ``[B, N]`` bool, True = node kept; only with ``pool='avg'`` (masked mean).

        Returns:
            the embedding, or logits ``[B, num_classes]``.
        """
        if self.pool == "flatten":
            if node_mask is not None:
                raise ValueError("Conv4 with pool='flatten' cannot mask nodes: every node is a fixed slice of "
                                 "the embedding; create it with pool='avg' to pool over kept nodes")
            x = x.flatten(1)
        else:
            x = masked_mean(x, node_mask)
        if pre_logits:
            return x
        if self.num_classes and x.shape[1] != self.num_features:
            raise ValueError(
                f"the classifier expects {self.num_features} features (img_size {self.grid_size[0] * 16}), "
                f"got {x.shape[1]}: feed images of the configured img_size or use pool='avg'")
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """images ``[B, C, H, W]`` -> logits ``[B, num_classes]`` (the embedding when num_classes is 0)."""
        return self.forward_head(self.forward_features(x))


def _create_conv4(variant: str, pretrained: bool = False, **kwargs) -> Conv4:
    return build_own(Conv4, variant, pretrained, **kwargs)  # its only weights are the shipped ones (models/weights/)


default_cfgs = generate_default_cfgs({"conv4": own_cfg("blocks.0.conv"), **shipped_cfgs("conv4", own_cfg("blocks.0.conv"))})


@register_model
def conv4(pretrained: bool = False, **kwargs) -> Conv4:
    """Conv-4: 4 x [3x3 conv 64 - BN - ReLU - max-pool], flattened embedding (64 at 28x28, 1600 at 84x84)."""
    model_args = dict(in_chans=1, hidden_dim=64, num_classes=0, img_size=28, pool="flatten")
    return _create_conv4("conv4", pretrained, **dict(model_args, **kwargs))
