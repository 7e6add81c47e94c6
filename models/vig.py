"""Vision GNN (ViG), isotropic.

Paper: `Vision GNN: An Image is Worth Graph of Nodes` - https://arxiv.org/abs/2206.00272
@inproceedings{han2022vig,
  title={Vision GNN: An Image is Worth Graph of Nodes},
  author={Kai Han and Yunhe Wang and Jianyuan Guo and Yehui Tang and Enhua Wu},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2022},
}

An image is cut into patches by a convolutional stem; every patch is a node. Each block builds a
k-nearest-neighbour graph over the current node features (dynamic graph), mixes every node with
its neighbours by a max-relative graph convolution (Grapher), then transforms each node alone
(FFN). Written from the paper; the reference code is huawei-noah/Efficient-AI-Backbones.

Unlike the reference code, nothing here depends on a fixed node count: the graph is built over
whatever nodes arrive, so prompt nodes can be appended and nodes deleted (masked) per block
through ``forward_features(..., node_mask=..., block_hook=...)``.

Glossary: B batch, C image channels, H x W image, h x w node grid after the stem,
N nodes (h*w plus any prompt nodes), D embed dim, k neighbours per node, d dilation.
Blocks speak ``[B, N, D]`` throughout: their 1x1 convolutions and BatchNorms are node layers
(``models.layers.NodeConv`` / ``NodeBatchNorm``) with the parameter layout of ``nn.Conv2d`` /
``nn.BatchNorm2d``, so the authors' weights load as they are. Only the stem speaks ``[B, D, h, w]``.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Callable, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm, get_act_layer, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .shipped import build_shipped, is_shipped_tag, shipped_cfgs

from .checkpoints import resize_pos_embed
from .layers import NodeBatchNorm, NodeConv, check_node_mask, masked_mean, neighbour_max

__all__ = [
    "VisionGNN", "ViGBlock", "Grapher", "FFN", "MaxRelativeGraphConv", "Stem",
    "knn_graph", "effective_knn", "max_relative", "BlockHook", "GraphHook", "GraphClassifierMixin",
]

BlockHook = Callable[[int, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]]
"""``hook(block_idx, x: [B, N, D], node_mask: [B, N] bool) -> (x: [B, N', D], node_mask: [B, N'] or None)``."""

GraphHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``hook(block_idx, h: [B, N, D], neighbours: [B, N, k]) -> h: [B, N, D]``, inside the Grapher."""

LayerType = Union[str, Type[nn.Module]]

_BLOCK_NORMS = {"batch": NodeBatchNorm, "layer": LayerNorm}
"""Normalisations over the features of ``[B, N, D]`` that ``VisionGNN(block_norm=...)`` names."""


def _resolve_act(act_layer: LayerType) -> Type[nn.Module]:
    try:
        act = get_act_layer(act_layer)
    except KeyError:
        raise ValueError(
            f"unknown act_layer {act_layer!r}: use a timm activation name such as 'gelu', 'relu' or 'silu', "
            "or an nn.Module class") from None
    if act is None:
        raise ValueError(f"act_layer must name an activation, got {act_layer!r}")
    return act


def effective_knn(num_knn: int, dilation: int, num_valid: int) -> Tuple[int, int]:
    """Neighbour count and dilation actually used when only ``num_valid`` nodes may be neighbours.

    k is clamped to ``num_valid``, then d so that ``k * d <= num_valid``: the ``k * d`` nearest
    candidates are always valid nodes.
    """
    if num_valid < 1:
        raise ValueError(f"a graph needs at least one valid node, got {num_valid}")
    k = min(num_knn, num_valid)
    d = max(1, min(dilation, num_valid // k))
    return k, d


def knn_graph(
        x: torch.Tensor,
        num_knn: int,
        dilation: int = 1,
        node_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Dilated k-nearest-neighbour graph over L2-normalised node features.

    For every node, rank all valid nodes by Euclidean distance (itself first), keep the
    ``k * d`` nearest and take every d-th of them. Deleted nodes (``node_mask`` False) are at
    infinite distance, so no node ever picks them. k and d are clamped by :func:`effective_knn`
    to the smallest number of valid nodes in the batch.

    Args:
        x: node features ``[B, N, D]`` (not differentiated through: the graph is discrete).
        num_knn: neighbours per node, k.
        dilation: d.
        node_mask: ``[B, N]`` bool, True = node may be a neighbour; None keeps every node.

    Returns:
        neighbours: ``[B, N, k']`` long indices into the N nodes, nearest first, k' = min(k, valid nodes).
    """
    num_nodes = x.shape[1]
    num_valid = num_nodes if node_mask is None else int(node_mask.sum(dim=1).min())
    k, d = effective_knn(num_knn, dilation, num_valid)
    with torch.no_grad():
        x = F.normalize(x.detach(), dim=-1)
        # unit vectors: squared distance = 2 - 2 * cosine similarity
        dist = (2.0 - 2.0 * (x @ x.transpose(1, 2))).clamp_min_(0.0)  # [B, N, N]
        if node_mask is not None:
            dist.masked_fill_(~node_mask[:, None, :], float("inf"))
        nearest = dist.topk(k * d, dim=-1, largest=False, sorted=True).indices  # [B, N, k*d]
    return nearest[..., ::d]


class MaxRelativeGraphConv(nn.Module):
    """Max-relative graph convolution (Li et al., DeepGCNs, as used in ViG).

    For node i: ``[x_i, max_{j in N(i)} (x_j - x_i)]`` -> grouped 1x1 conv -> norm -> act. The two
    halves are interleaved channel by channel so each conv group sees a node's features together
    with their relative maxima.

    Args:
        dim: input node features D.
        out_dim: output channels (2D in ViG).
        act_layer: activation class.
        groups: groups of the 1x1 convolution.
    """

    def __init__(self, dim: int, out_dim: int, act_layer: Type[nn.Module] = nn.GELU, groups: int = 4,
                 norm_layer: Type[nn.Module] = NodeBatchNorm):
        super().__init__()
        if (2 * dim) % groups or out_dim % groups:
            raise ValueError(f"2*dim ({2 * dim}) and out_dim ({out_dim}) must be divisible by groups ({groups})")
        self.conv = NodeConv(2 * dim, out_dim, groups)
        self.norm = norm_layer(out_dim)
        self.act = act_layer()

    def forward(self, x: torch.Tensor, neighbours: torch.Tensor, keys: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: ``[B, N, D]``, neighbours: ``[B, N, k]`` indices into ``keys: [B, M, D]`` (default: x itself)
        -> ``[B, N, out_dim]``."""
        x = torch.stack([x, max_relative(x, neighbours, keys)], dim=-1).flatten(2)  # [B, N, 2D], interleaved
        return self.act(self.norm(self.conv(x)))


def max_relative(x: torch.Tensor, neighbours: torch.Tensor, keys: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``max_{j in N(i)} (keys_j - x_i)`` for every node i.

    Args:
        x: ``[B, N, D]``; neighbours: ``[B, N, k]`` indices into ``keys: [B, M, D]`` (default: x itself).
    Returns:
        ``[B, N, D]``.
    """
    # max_j (x_j - x_i) = max_j x_j - x_i, bit for bit (rounding x_j - x_i is monotone in x_j)
    return neighbour_max(x if keys is None else keys, neighbours) - x


class Grapher(nn.Module):
    """Grapher module: ``x + DropPath(fc_out(GraphConv(fc_in(x))))`` on a dynamic k-NN graph.

    Args:
        dim: node features D.
        num_knn: neighbours per node, k.
        dilation: take every d-th of the ``k * d`` nearest nodes.
        act_layer: activation class of the graph convolution.
        drop_path: stochastic depth rate of the residual branch.
        groups: groups of the graph convolution's 1x1 conv.
        norm_layer: normalisation over the features of ``[B, N, D]`` (NodeBatchNorm, or LayerNorm).
    """

    def __init__(
            self,
            dim: int,
            num_knn: int = 9,
            dilation: int = 1,
            act_layer: Type[nn.Module] = nn.GELU,
            drop_path: float = 0.,
            groups: int = 4,
            norm_layer: Type[nn.Module] = NodeBatchNorm,
    ):
        super().__init__()
        self.num_knn = num_knn
        self.dilation = dilation
        self.fc_in = nn.Sequential(NodeConv(dim, dim), norm_layer(dim))
        self.graph_conv = MaxRelativeGraphConv(dim, 2 * dim, act_layer, groups, norm_layer)
        self.fc_out = nn.Sequential(NodeConv(2 * dim, dim), norm_layer(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_in(x)

    def neighbours(self, x: torch.Tensor, node_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The graph this block builds for its input (use eval mode: fc_in holds a BatchNorm).

        Args:
            x: block input ``[B, N, D]``.
            node_mask: ``[B, N]`` bool, True = node kept.

        Returns:
            neighbours: ``[B, N, k']`` long, nearest first.
        """
        check_node_mask(node_mask, x)
        return knn_graph(self._project(x), self.num_knn, self.dilation, node_mask)

    def forward(self, x: torch.Tensor, node_mask: Optional[torch.Tensor] = None,
                graph_hook: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """x: ``[B, N, D]``, node_mask: ``[B, N]`` bool -> ``[B, N, D]``.

        ``graph_hook(h [B, N, D], neighbours [B, N, k]) -> h'`` (optional) sees the projected
        features and the k-NN graph just built and returns the features the graph convolution
        mixes (an edge prompt, e.g. VGP's, needs the neighbour indices).
        """
        h = self._project(x)
        neighbours = knn_graph(h, self.num_knn, self.dilation, node_mask)
        if graph_hook is not None:
            h = graph_hook(h, neighbours)
        return x + self.drop_path(self.fc_out(self.graph_conv(h, neighbours)))


class FFN(nn.Module):
    """Per-node feed-forward module: ``x + DropPath(BN(fc2(act(BN(fc1(x))))))``.

    Args:
        dim: node features D.
        hidden_dim: hidden features.
        act_layer: activation class.
        drop_path: stochastic depth rate of the residual branch.
    """

    def __init__(self, dim: int, hidden_dim: int, act_layer: Type[nn.Module] = nn.GELU, drop_path: float = 0.,
                 norm_layer: Type[nn.Module] = NodeBatchNorm):
        super().__init__()
        self.fc1 = nn.Sequential(NodeConv(dim, hidden_dim), norm_layer(hidden_dim))
        self.act = act_layer()
        self.fc2 = nn.Sequential(NodeConv(hidden_dim, dim), norm_layer(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, N, D]`` -> ``[B, N, D]``."""
        return x + self.drop_path(self.fc2(self.act(self.fc1(x))))


class ViGBlock(nn.Module):
    """One ViG block: Grapher then FFN.

    Args:
        dim: node features D.
        num_knn: neighbours per node, k.
        dilation: graph dilation d.
        ffn_hidden: hidden features of the FFN.
        act_layer: activation class.
        drop_path: stochastic depth rate of both residual branches.
        norm_layer: normalisation class of both modules (see :class:`Grapher`).
    """

    def __init__(
            self,
            dim: int,
            num_knn: int,
            dilation: int,
            ffn_hidden: int,
            act_layer: Type[nn.Module] = nn.GELU,
            drop_path: float = 0.,
            norm_layer: Type[nn.Module] = NodeBatchNorm,
    ):
        super().__init__()
        self.grapher = Grapher(dim, num_knn, dilation, act_layer, drop_path, norm_layer=norm_layer)
        self.ffn = FFN(dim, ffn_hidden, act_layer, drop_path, norm_layer)

    def forward(self, x: torch.Tensor, node_mask: Optional[torch.Tensor] = None,
                graph_hook: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """x: ``[B, N, D]``, node_mask: ``[B, N]`` bool -> ``[B, N, D]``; ``graph_hook``: see :meth:`Grapher.forward`."""
        return self.ffn(self.grapher(x, node_mask, graph_hook))


class Stem(nn.Module):
    """Overlapping convolutional patch embedding.

    ``log2(stride)`` stride-2 3x3 conv-BN-act layers, channels doubling up to D (C -> D/8 -> D/4 ->
    D/2 -> D for stride 16), then a stride-1 3x3 conv-BN.

    Args:
        in_chans: image channels C.
        embed_dim: output channels D.
        stride: total stride, a power of two >= 2.
        act_layer: activation class.
    """

    def __init__(self, in_chans: int, embed_dim: int, stride: int = 16, act_layer: Type[nn.Module] = nn.GELU):
        super().__init__()
        self.num_down = stride.bit_length() - 1
        chans = [in_chans] + [embed_dim >> (self.num_down - 1 - i) for i in range(self.num_down)]
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), act_layer()]
        layers += [nn.Conv2d(embed_dim, embed_dim, 3, padding=1), nn.BatchNorm2d(embed_dim)]
        self.convs = nn.Sequential(*layers)

    def grid_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Node grid (h, w) for an (H, W) image: each stride-2 conv maps s to ceil(s / 2)."""
        h, w = img_size
        for _ in range(self.num_down):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, H, W]`` -> ``[B, D, h, w]``."""
        return self.convs(x)


class PoolStem(nn.Module):
    """Conv-4-style stem: ``log2(stride)`` blocks of 3x3 conv - BatchNorm - activation - 2x2 max-pool
    (``width`` channels each, as the first blocks of Conv-4), then a 3x3 conv - BatchNorm to D.

    Conv-4 is the backbone to beat on small glyphs; its blocks keep full resolution until each pool
    picks the strongest response, where :class:`Stem` subsamples with strided convolutions. This
    stem gives the graph blocks Conv-4's intermediate feature map as nodes.

    Args:
        in_chans: image channels C.
        embed_dim: output channels D.
        stride: total stride, a power of two >= 2.
        act_layer: activation class.
        width: channels of the conv-pool blocks.
    """

    def __init__(self, in_chans: int, embed_dim: int, stride: int = 4, act_layer: Type[nn.Module] = nn.GELU,
                 width: int = 64):
        super().__init__()
        self.num_down = stride.bit_length() - 1
        layers, c_in = [], in_chans
        for _ in range(self.num_down):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), act_layer(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            c_in = width
        layers += [nn.Conv2d(width, embed_dim, 3, padding=1), nn.BatchNorm2d(embed_dim)]
        self.convs = nn.Sequential(*layers)

    grid_size = Stem.grid_size  # a ceil-mode pool maps s to ceil(s / 2), as a stride-2 conv does

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, H, W]`` -> ``[B, D, h, w]``."""
        return self.convs(x)


_STEMS = {"conv": Stem, "pool": PoolStem}


class GraphClassifierMixin:
    """What the isotropic and the pyramid ViG share around the graph: the MLP head (``head_hidden``
    features, BatchNorm, activation, dropout; or one linear layer), weight initialisation, and timm's
    classifier contract. Needs ``embed_dim``, ``head_hidden``, ``drop_rate``, ``_act`` and ``pos_embed``."""

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        if self.head_hidden == 0:
            return nn.Sequential(OrderedDict(drop=nn.Dropout(self.drop_rate),
                                             fc=nn.Linear(self.embed_dim, num_classes)))
        return nn.Sequential(OrderedDict(
            pre_fc=nn.Linear(self.embed_dim, self.head_hidden),
            norm=nn.BatchNorm1d(self.head_hidden),
            act=self._act(),
            drop=nn.Dropout(self.drop_rate),
            fc=nn.Linear(self.head_hidden, num_classes),
        ))

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, D, h, w]`` -> x + position embedding, resized bilinearly when (h, w) differs."""
        return x + resize_pos_embed(self.pos_embed, x.shape[-2:])

    def init_weights(self) -> None:
        """Kaiming-normal convolutions (as the reference code), truncated-normal linears and
        position embedding, zero biases."""
        trunc_normal_(self.pos_embed, std=.02)
        self.apply(_init_module)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head by a fresh one with ``num_classes`` outputs (0: identity).

        Args:
            num_classes: classifier outputs.
            global_pool: only ``None`` or ``'avg'`` (masked mean), for timm compatibility.
        """
        if global_pool not in (None, "avg"):
            raise ValueError(f"{type(self).__name__} pools by masked mean only: global_pool must be None or 'avg', "
                             f"got {global_pool!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        device = self.pos_embed.device
        self.head = self._make_head(num_classes).to(device)
        self.head.apply(_init_module)


class VisionGNN(GraphClassifierMixin, nn.Module):
    """Isotropic Vision GNN (Han et al., NeurIPS 2022): stem, position embedding, ``depth`` blocks of
    Grapher + FFN on a dynamic k-NN graph, a final BatchNorm, masked mean pooling, MLP head.

    Args:
        img_size: configured input size H (or (H, W)); sets the position-embedding grid and the
            default dilation. Other sizes work: the embedding is resized bilinearly.
        in_chans: image channels C.
        num_classes: classifier outputs; 0 makes the head an identity (``forward`` returns the
            pooled embedding ``[B, D]``).
        embed_dim: node features D.
        depth: number of Grapher + FFN blocks.
        num_knn: neighbours of the first block; k grows linearly to ``2 * num_knn`` at the last.
        max_dilation: cap on the dilation ``block_idx // 4 + 1``; None uses
            ``max(1, nodes // (2 * num_knn))`` for the configured grid.
        stem_stride: total stride of the stem (a power of two >= 2): nodes = (H/stride) * (W/stride).
        act_layer: activation, a timm name (``get_act_layer``) or an nn.Module class.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, growing linearly to this rate at the last block.
        head_hidden: hidden features of the head (0: a single linear classifier).
        ffn_ratio: FFN hidden features = ``ffn_ratio * embed_dim``.
        block_norm: ``"batch"`` (the paper: BatchNorm in every block) or ``"layer"`` (LayerNorm over
            each node's features: no statistics shared across the images of an episode).
        final_norm: the extra normalisation (of ``block_norm``'s kind) after the last block.
        stem_type: ``"conv"`` (the paper: strided 3x3 convolutions, :class:`Stem`) or ``"pool"``
            (Conv-4-style conv-pool blocks, :class:`PoolStem`); the authors' checkpoints need ``"conv"``.

    Example:
        >>> model = VisionGNN(img_size=28, in_chans=1, num_classes=0, embed_dim=32, depth=2,
        ...                   num_knn=4, stem_stride=4)
        >>> nodes = model.forward_features(torch.randn(2, 1, 28, 28))  # [2, 49, 32]
        >>> model.forward_head(nodes, pre_logits=True).shape
        torch.Size([2, 32])
    """

    num_prefix_tokens = 0
    memory_format = torch.channels_last
    """Preferred layout of the convolution weights: the stem's convolutions, BatchNorms and pools run
    channels-last (oneDNN's fast path on CPU; the stem's training step against the contiguous layout is
    in ``benchmarks/results/vig_step_profile.md``), and its ``[B, D, h, w]`` output then flattens into
    the blocks' ``[B, N, D]`` without a copy. The node layers' 1x1 weights are the same memory either
    way. ``fewshot.model.build_model`` applies it, as for Conv-4; logits equal to float rounding
    (``tests/models/test_vig_channels_last.py``)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: int = 192,
            depth: int = 12,
            num_knn: int = 9,
            max_dilation: Optional[int] = None,
            stem_stride: int = 16,
            act_layer: LayerType = "gelu",
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            head_hidden: int = 1024,
            ffn_ratio: float = 4,
            block_norm: str = "batch",
            final_norm: bool = True,
            stem_type: str = "conv",
    ):
        super().__init__()
        if block_norm not in _BLOCK_NORMS:
            raise ValueError(f"block_norm must be one of {', '.join(_BLOCK_NORMS)}, got {block_norm!r}")
        if stem_type not in _STEMS:
            raise ValueError(f"stem_type must be one of {', '.join(_STEMS)}, got {stem_type!r}")
        norm_layer = _BLOCK_NORMS[block_norm]
        img_size = tuple(to_2tuple(img_size))
        _check_args(img_size, in_chans, num_classes, embed_dim, depth, num_knn, max_dilation, stem_stride,
                    drop_rate, drop_path_rate, head_hidden, ffn_ratio)
        act = _resolve_act(act_layer)
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.head_hidden = head_hidden
        self.drop_rate = drop_rate
        self._act = act

        self.stem = _STEMS[stem_type](in_chans, embed_dim, stem_stride, act)
        self.grid_size = self.stem.grid_size(img_size)
        num_nodes = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.grid_size))

        if max_dilation is None:
            max_dilation = max(1, num_nodes // (2 * num_knn))
        self.knn_per_block = [num_knn * (depth - 1 + i) // (depth - 1) if depth > 1 else num_knn
                              for i in range(depth)]
        self.dilation_per_block = [min(i // 4 + 1, max_dilation) for i in range(depth)]
        drop_path = [drop_path_rate * i / (depth - 1) if depth > 1 else 0. for i in range(depth)]
        self.blocks = nn.ModuleList([
            ViGBlock(embed_dim, k, d, int(embed_dim * ffn_ratio), act, dp, norm_layer)
            for k, d, dp in zip(self.knn_per_block, self.dilation_per_block, drop_path)
        ])
        # Not in the paper: a BatchNorm over node features after the last block keeps the scale of
        # the embedding fixed. Without it the residual stream grows during metric (ProtoNet)
        # training and the squared distances blow up: on glyphs 5-way 1-shot, vig_small_28 fell to
        # 27% validation accuracy after 150 episodes without it, and reached 69% with it.
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()
        self.head = self._make_head(num_classes)
        self.init_weights()

    def forward_features(
            self,
            x: torch.Tensor,
            node_mask: Optional[torch.Tensor] = None,
            block_hook: Optional[BlockHook] = None,
            return_mask: bool = False,
            graph_hook: Optional[GraphHook] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """Images to node features.

        Args:
            x: images ``[B, C, H, W]``.
            node_mask: ``[B, h*w]`` bool, True = node kept; a deleted node is never a neighbour.
            block_hook: called as ``block_hook(i, x, node_mask)`` before block i (i = 0..depth-1)
                with ``x: [B, N, D]`` and ``node_mask: [B, N]`` bool (all True when no mask was
                given); returns ``(x: [B, N', D], node_mask: [B, N'] or None)``. It may append
                nodes (prompts), change features or change the mask.
            return_mask: also return the mask in force after the last block.
            graph_hook: called as ``graph_hook(i, h, neighbours)`` inside block i's Grapher, after
                the k-NN graph ``neighbours: [B, N, k]`` is built over the projected features
                ``h: [B, N, D]``; returns the ``[B, N, D]`` features the graph convolution mixes.

        Returns:
            nodes: ``[B, N, D]``; with ``return_mask``, ``(nodes, node_mask)`` where node_mask is
            ``[B, N]`` bool or None (every node kept). Pass it on to :meth:`forward_head`.

        Note:
            Deleted nodes keep being computed (their features are simply never read by kept
            nodes). In training mode the BatchNorm batch statistics still include them; in eval
            mode a deleted node has no effect at all on the kept nodes.
        """
        x = self._pos_embed(self.stem(x))
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        check_node_mask(node_mask, x)
        for i, block in enumerate(self.blocks):
            if block_hook is not None:
                x, node_mask = _apply_hook(block_hook, i, x, node_mask)
            x = block(x, node_mask, None if graph_hook is None else functools.partial(graph_hook, i))
        x = self.norm(x)
        return (x, node_mask) if return_mask else x

    def forward_head(
            self,
            x: torch.Tensor,
            pre_logits: bool = False,
            node_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Node features to the pooled embedding or class logits.

        Args:
            x: node features ``[B, N, D]``.
            pre_logits: return the pooled embedding ``[B, D]`` (what a matcher wants).
            node_mask: ``[B, N]`` bool; pooling averages only the kept nodes. It may differ from
                the graph mask, e.g. to leave prompt nodes out of the embedding.

        Returns:
            ``[B, D]`` with ``pre_logits`` or ``num_classes == 0``, else logits ``[B, num_classes]``.
        """
        x = masked_mean(x, node_mask)
        return x if pre_logits else self.head(x)

    def forward(
            self,
            x: torch.Tensor,
            node_mask: Optional[torch.Tensor] = None,
            block_hook: Optional[BlockHook] = None,
    ) -> torch.Tensor:
        """images ``[B, C, H, W]`` -> logits ``[B, num_classes]`` (``[B, D]`` when num_classes is 0)."""
        x, node_mask = self.forward_features(x, node_mask, block_hook, return_mask=True)
        return self.forward_head(x, node_mask=node_mask)


def _apply_hook(block_hook: BlockHook, i: int, x: torch.Tensor, node_mask: Optional[torch.Tensor]):
    """``block_hook(i, x, node_mask)`` with its output checked; a ``None`` mask is passed as all True."""
    if node_mask is None:
        node_mask = x.new_ones(x.shape[:2], dtype=torch.bool)
    out = block_hook(i, x, node_mask)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"block_hook must return (x, node_mask); before block {i} it returned {type(out).__name__}")
    new_x, new_mask = out
    if new_x.dim() != 3 or new_x.shape[0] != x.shape[0] or new_x.shape[2] != x.shape[2]:
        raise ValueError(
            f"block_hook before block {i} must return nodes [B, N', D] with B = {x.shape[0]} and D = {x.shape[2]}, "
            f"got {list(new_x.shape)}")
    check_node_mask(new_mask, new_x)
    return new_x, new_mask


def check_graph_args(img_size, num_knn, num_classes, head_hidden, max_dilation, drop_rate, drop_path_rate) -> None:
    """The argument checks the isotropic and the pyramid ViG share: a ``ValueError`` naming the first invalid one."""
    if any(s < 1 for s in img_size):
        raise ValueError(f"img_size must be positive, got {img_size}")
    for name, value, low in (("num_knn", num_knn, 1), ("num_classes", num_classes, 0), ("head_hidden", head_hidden, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if max_dilation is not None and max_dilation < 1:
        raise ValueError(f"max_dilation must be None or >= 1, got {max_dilation}")
    for name, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if not 0. <= value < 1.:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def _check_args(img_size, in_chans, num_classes, embed_dim, depth, num_knn, max_dilation, stem_stride,
                drop_rate, drop_path_rate, head_hidden, ffn_ratio) -> None:
    """Raise a ``ValueError`` naming the first invalid VisionGNN argument."""
    check_graph_args(img_size, num_knn, num_classes, head_hidden, max_dilation, drop_rate, drop_path_rate)
    for name, value, low in (("in_chans", in_chans, 1), ("embed_dim", embed_dim, 1), ("depth", depth, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if stem_stride < 2 or stem_stride & (stem_stride - 1):
        raise ValueError(f"stem_stride must be a power of two >= 2 (2, 4, 8, 16, ...), got {stem_stride}")
    multiple = max(2, stem_stride // 2)
    if embed_dim % multiple:
        raise ValueError(
            f"embed_dim must be divisible by {multiple} (the stem halves it {stem_stride.bit_length() - 2} times "
            f"and the graph conv uses 4 groups over 2*embed_dim), got {embed_dim}")
    if ffn_ratio <= 0 or int(embed_dim * ffn_ratio) < 1:
        raise ValueError(f"ffn_ratio must give at least one hidden feature, got {ffn_ratio} with embed_dim {embed_dim}")


def _init_module(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def checkpoint_filter_fn(state_dict: dict, model: VisionGNN) -> dict:
    """Map a checkpoint of the authors' isotropic ViG onto :class:`VisionGNN` (timm's filter convention).

    Their layout (``vig_pytorch/vig.py``) -> ours: ``backbone.{i}.0.fc1`` -> ``blocks.{i}.grapher.fc_in``,
    ``backbone.{i}.0.graph_conv.gconv.nn.{0,1}`` -> ``blocks.{i}.grapher.graph_conv.{conv,norm}``,
    ``backbone.{i}.0.fc2`` -> ``blocks.{i}.grapher.fc_out``, ``backbone.{i}.1.fc{1,2}`` ->
    ``blocks.{i}.ffn.fc{1,2}``; ``stem.*`` and ``pos_embed`` keep their names (the position
    embedding is resized bilinearly when the model's grid differs, the first convolution summed
    over RGB as timm does when the model takes other channels); the head ``prediction.{0,1,4}``
    (1x1 convs) -> ``head.{pre_fc,norm,fc}`` (linear weights), dropped when the model has no
    classifier. Their model has no normalisation after the last block: when ours has the BatchNorm
    (``final_norm=True``), it is given the statistics of an eval-mode identity (mean 0, variance
    ``1 - eps``, weight 1, bias 0); ``pretrained=True`` builds the model without it. A state dict
    already in our layout (also under a ``backbone.`` prefix) passes through unchanged.
    """
    from .checkpoints import is_official_layout, map_official_state, split_official_block_key, strip_fewshot_prefix, \
        unwrap_state_dict

    state, _ = unwrap_state_dict(state_dict)
    if not is_official_layout(state):
        return strip_fewshot_prefix(state)

    def block_key(key, value):
        block = split_official_block_key(key)
        return None if block is None else (f"blocks.{block[0]}.{block[1]}", value)
    return map_official_state(state, model, block_key)


def _create_vig(variant: str, pretrained: bool = False, **kwargs) -> VisionGNN:
    if pretrained and is_shipped_tag(variant, kwargs):  # weights trained by fewshot (models/weights/)
        return build_shipped(VisionGNN, variant, checkpoint_filter_fn, **kwargs)
    if pretrained:
        from .checkpoints import build_pretrained

        return build_pretrained(VisionGNN, variant, checkpoint_filter_fn, **kwargs)  # without our final norm
    return build_model_with_cfg(VisionGNN, variant, pretrained, **kwargs)


_RELEASE = "https://github.com/huawei-noah/Efficient-AI-Backbones/releases/download/vig/"


def _cfg(**kwargs) -> dict:
    """Pretrained config of an ImageNet-sized variant (``url``: the authors' release, if any)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": .9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.convs.0",
        "classifier": "head.fc",
        "license": "mit",
        **kwargs,
    }


def _small_cfg(in_chans: int, img_size: int) -> dict:
    """Config of a small-image variant: no classifier, inputs scaled to -1..1."""
    return _cfg(num_classes=0, input_size=(in_chans, img_size, img_size), crop_pct=1.0,
                interpolation="bilinear", mean=(0.5,) * in_chans, std=(0.5,) * in_chans)


default_cfgs = generate_default_cfgs({
    # The authors' releases, trained on ImageNet-1k with inputs scaled to -1..1 (their default_cfg).
    "vig_ti_224_gelu": _cfg(url=_RELEASE + "vig_ti_74.5.pth", mean=(0.5,) * 3, std=(0.5,) * 3),
    "vig_s_224_gelu": _cfg(url=_RELEASE + "vig_s_80.6.pth", mean=(0.5,) * 3, std=(0.5,) * 3),
    "vig_b_224_gelu": _cfg(url=_RELEASE + "vig_b_82.6.pth", mean=(0.5,) * 3, std=(0.5,) * 3),
    "vig_small_28": _small_cfg(in_chans=1, img_size=28),
    "vig_small_ln_28": _small_cfg(in_chans=1, img_size=28),
    "vig_small_c4_28": _small_cfg(in_chans=1, img_size=28),
    **shipped_cfgs("vig_small_c4_28", _small_cfg(in_chans=1, img_size=28)),  # e.g. vig_small_c4_28.omniglot_minimal
    "vig_small_c4_nograph_28": _small_cfg(in_chans=1, img_size=28),
    "vig_small_84": _small_cfg(in_chans=3, img_size=84),
    "test_vig": _small_cfg(in_chans=1, img_size=28),
})


@register_model
def vig_ti_224_gelu(pretrained: bool = False, **kwargs) -> VisionGNN:
    """ViG-Ti (7.1M parameters): D 192, 12 blocks, 196 nodes at 224x224."""
    model_args = dict(embed_dim=192, depth=12, num_knn=9, stem_stride=16, act_layer="gelu")
    return _create_vig("vig_ti_224_gelu", pretrained, **dict(model_args, **kwargs))


@register_model
def vig_s_224_gelu(pretrained: bool = False, **kwargs) -> VisionGNN:
    """ViG-S (22.7M parameters): D 320, 16 blocks."""
    model_args = dict(embed_dim=320, depth=16, num_knn=9, stem_stride=16, act_layer="gelu")
    return _create_vig("vig_s_224_gelu", pretrained, **dict(model_args, **kwargs))


@register_model
def vig_b_224_gelu(pretrained: bool = False, **kwargs) -> VisionGNN:
    """ViG-B (86.8M parameters): D 640, 16 blocks."""
    model_args = dict(embed_dim=640, depth=16, num_knn=9, stem_stride=16, act_layer="gelu")
    return _create_vig("vig_b_224_gelu", pretrained, **dict(model_args, **kwargs))


@register_model
def vig_small_28(pretrained: bool = False, **kwargs) -> VisionGNN:
    """Small ViG for 28x28 grayscale (Omniglot, glyphs): stride 4 -> 7x7 = 49 nodes, D 96, 4 blocks."""
    model_args = dict(img_size=28, in_chans=1, num_classes=0, embed_dim=96, depth=4, num_knn=9,
                      stem_stride=4, head_hidden=256)
    return _create_vig("vig_small_28", pretrained, **dict(model_args, **kwargs))


@register_model
def vig_small_ln_28(pretrained: bool = False, **kwargs) -> VisionGNN:
    """:func:`vig_small_28` with LayerNorm instead of BatchNorm in the blocks and after them: an
    image's embedding no longer depends on the other images of its episode (BatchNorm statistics
    from one episode are a known weak point of episodic training)."""
    model_args = dict(img_size=28, in_chans=1, num_classes=0, embed_dim=96, depth=4, num_knn=9,
                      stem_stride=4, head_hidden=256, block_norm="layer")
    return _create_vig("vig_small_ln_28", pretrained, **dict(model_args, **kwargs))


_SMALL_C4_28 = dict(img_size=28, in_chans=1, num_classes=0, embed_dim=96, depth=4, num_knn=9,
                    stem_stride=4, head_hidden=256, block_norm="layer", stem_type="pool")


@register_model
def vig_small_c4_28(pretrained: bool = False, **kwargs) -> VisionGNN:
    """:func:`vig_small_ln_28` on a Conv-4-style stem (:class:`PoolStem`: two conv-BN-GELU-max-pool
    blocks of 64 channels, 28 -> 14 -> 7): the 49 nodes are Conv-4's second feature map."""
    return _create_vig("vig_small_c4_28", pretrained, **dict(_SMALL_C4_28, **kwargs))


@register_model
def vig_small_c4_nograph_28(pretrained: bool = False, **kwargs) -> VisionGNN:
    """:func:`vig_small_c4_28` without its graph blocks (depth 0): the Conv-4-style stem, position
    embedding and final LayerNorm alone. The control that says what the Grapher blocks add."""
    return _create_vig("vig_small_c4_nograph_28", pretrained, **dict(_SMALL_C4_28, **{"depth": 0, **kwargs}))


@register_model
def vig_small_84(pretrained: bool = False, **kwargs) -> VisionGNN:
    """Small ViG for 84x84 RGB (miniImageNet): stride 8 -> 11x11 = 121 nodes, D 96, 4 blocks."""
    model_args = dict(img_size=84, in_chans=3, num_classes=0, embed_dim=96, depth=4, num_knn=9,
                      stem_stride=8, head_hidden=256)
    return _create_vig("vig_small_84", pretrained, **dict(model_args, **kwargs))


@register_model
def test_vig(pretrained: bool = False, **kwargs) -> VisionGNN:
    """Tiny ViG for tests: 28x28 grayscale, 49 nodes, D 32, 2 blocks, k 4."""
    model_args = dict(img_size=28, in_chans=1, num_classes=0, embed_dim=32, depth=2, num_knn=4,
                      stem_stride=4, head_hidden=64)
    return _create_vig("test_vig", pretrained, **dict(model_args, **kwargs))
