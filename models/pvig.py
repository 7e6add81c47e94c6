"""Pyramid Vision GNN (PViG).

Paper: `Vision GNN: An Image is Worth Graph of Nodes` - https://arxiv.org/abs/2206.00272
@inproceedings{han2022vig,
  title={Vision GNN: An Image is Worth Graph of Nodes},
  author={Kai Han and Yunhe Wang and Jianyuan Guo and Yehui Tang and Enhua Wu},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2022},
}

Four stages of Grapher + FFN blocks (those of :mod:`models.vig`) on node grids that halve from
stage to stage (a stride-2 3x3 conv + BN between stages), as a CNN pyramid. Two things differ from
the isotropic ViG, both from the paper:

* **reduced key nodes**: in the early, large stages each node picks its k neighbours among the
  ``r x r`` average-pooled nodes (r = 4, 2, 1, 1), so the graph costs ``N * N / r^2``.
* **relative position term**: the k-NN distance of node i to key j gets ``-R[i, j]``, with
  ``R = 2 P P^T / D`` from the 2D sine-cosine position embedding P of the grid (so
  ``R[i, j] = (2 / D) * sum_f [cos(w_f dx) + cos(w_f dy)]`` over D/4 frequencies
  ``w_f = 10000^(-4f/D)``: 1 for the same position, smaller further away); for reduced keys the
  matrix is resized bicubically to ``N x N / r^2``, as the authors do, and again (bicubic) when
  the node grid differs from the configured one. It is a fixed buffer, saved with the weights.

Prompts and node deletion work per stage: ``block_hook`` runs before every block of every stage;
prompt nodes it appends live until the end of their stage (the downsampling conv needs the grid),
and a node mask follows the grid through the downsampling (a node of the next stage is deleted when
its whole 2x2 cell was). Written from the paper; the reference code is
huawei-noah/Efficient-AI-Backbones (``vig_pytorch/pyramid_vig.py``), whose checkpoints load through
:func:`checkpoint_filter_fn`.

Glossary: B batch, C image channels, h x w node grid of a stage, N nodes (h*w plus any prompt
nodes), M key nodes, D stage dim, k neighbours, d dilation, r key reduction.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .layers import NodeBatchNorm, check_node_mask, masked_mean
from .vig import (FFN, BlockHook, GraphClassifierMixin, GraphHook, Grapher, LayerType, Stem, _apply_hook,
                  _resolve_act, _small_cfg, check_graph_args, effective_knn)
from .vig import _cfg as vig_cfg

__all__ = ["PyramidVisionGNN", "PyramidGrapher", "PyramidBlock", "relative_position", "knn_to_keys"]


def relative_position(dim: int, grid: Tuple[int, int], key_grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """The paper's relative position term ``R [h*w, hk*wk]`` (float32) for a ``grid`` of nodes.

    ``R = 2 P P^T / dim`` for the 2D sine-cosine embedding P (dim/2 features per axis), computed
    from its closed form ``(2 / dim) * sum_f [cos(w_f dx) + cos(w_f dy)]``; square grids, as in
    the paper. For reduced keys (``key_grid``) the matrix is resized bicubically to
    ``[h*w, hk*wk]``.
    """
    if dim % 4:
        raise ValueError(f"the relative position term needs a dim divisible by 4, got {dim}")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # [dim/4]
    span = max(h, w)
    offsets = torch.arange(-(span - 1), span, dtype=torch.float64)
    table = torch.cos(offsets[:, None] * omega).sum(-1)  # sum_f cos(w_f * delta) for every offset delta
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dx = xs[:, None] - xs[None, :] + span - 1
    dy = ys[:, None] - ys[None, :] + span - 1
    rel = ((2.0 / dim) * (table[dx] + table[dy])).float()
    if key_grid is not None and key_grid[0] * key_grid[1] != h * w:
        rel = F.interpolate(rel[None, None], size=(h * w, key_grid[0] * key_grid[1]), mode="bicubic",
                            align_corners=False)[0, 0]
    return rel


def knn_to_keys(
        x: torch.Tensor,
        keys: torch.Tensor,
        num_knn: int,
        dilation: int = 1,
        key_mask: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Dilated k-NN of every node among the key nodes, on L2-normalised features.

    The distance of node i to key j is ``|x_i - key_j|^2 + bias[i, j]`` (unit vectors); deleted
    keys are at infinite distance. With ``keys = x`` and no bias this is :func:`models.vig.knn_graph`.

    Args:
        x: nodes ``[B, N, D]``; keys: ``[B, M, D]`` (not differentiated through).
        num_knn: k; dilation: d (both clamped by :func:`models.vig.effective_knn` to the valid keys).
        key_mask: ``[B, M]`` bool, True = key may be a neighbour.
        bias: ``[N, M]`` added to the distances (the relative position term, negated).

    Returns:
        neighbours: ``[B, N, k']`` long indices into the M keys, nearest first.
    """
    num_valid = keys.shape[1] if key_mask is None else int(key_mask.sum(dim=1).min())
    k, d = effective_knn(num_knn, dilation, num_valid)
    with torch.no_grad():
        x = F.normalize(x.detach(), dim=-1)
        keys = F.normalize(keys.detach(), dim=-1)
        dist = 2.0 - 2.0 * (x @ keys.transpose(1, 2))  # [B, N, M]
        if bias is not None:
            dist = dist + bias
        if key_mask is not None:
            dist = dist.masked_fill(~key_mask[:, None, :], float("inf"))
        nearest = dist.topk(k * d, dim=-1, largest=False, sorted=True).indices
    return nearest[..., ::d]


class PyramidGrapher(Grapher):
    """Grapher of a pyramid stage: neighbours among ``r x r`` pooled key nodes, distances shifted by the
    relative position term. Same modules (and weights) as :class:`models.vig.Grapher`, plus the
    fixed ``relative_pos`` buffer ``[1, h*w, h*w / r^2]``.

    Args:
        dim: node features D.
        grid: the stage's configured node grid (h, w).
        num_knn: k.
        dilation: d.
        reduce_ratio: r, pooling of the key nodes (1: every node is a key).
        act_layer: activation class.
        drop_path: stochastic depth rate.
        relative_pos: add the relative position term.
    """

    def __init__(self, dim: int, grid: Tuple[int, int], num_knn: int = 9, dilation: int = 1, reduce_ratio: int = 1,
                 act_layer=nn.GELU, drop_path: float = 0., relative_pos: bool = True):
        super().__init__(dim, num_knn, dilation, act_layer, drop_path)
        self.reduce_ratio = reduce_ratio
        self.grid = grid
        if relative_pos:
            key_grid = (grid[0] // reduce_ratio, grid[1] // reduce_ratio)
            self.register_buffer("relative_pos", -relative_position(dim, grid, key_grid)[None])
        else:
            self.relative_pos = None

    def _keys(self, h: torch.Tensor, hw: Tuple[int, int], node_mask: Optional[torch.Tensor]):
        """Key nodes ``[B, M, D]``, their mask and grid from the projected nodes ``h [B, N, D]``."""
        rows, cols = hw
        r = max(1, min(self.reduce_ratio, rows, cols))
        if r == 1:
            return h, node_mask, hw
        grid = h[:, :rows * cols].transpose(1, 2).reshape(h.shape[0], h.shape[2], rows, cols)
        if node_mask is None:
            keys = F.avg_pool2d(grid, r, r)
            key_mask = None
        else:  # mean of the kept nodes of each cell; a cell with none kept is deleted
            m = node_mask[:, None, :rows * cols].reshape(h.shape[0], 1, rows, cols).to(h.dtype)
            total = F.avg_pool2d(grid * m, r, r)
            count = F.avg_pool2d(m, r, r)
            keys = total / count.clamp_min(1e-12)
            key_mask = (count > 0).flatten(1)
        key_grid = tuple(keys.shape[-2:])
        keys = keys.flatten(2).transpose(1, 2)
        extra = h[:, rows * cols:]
        if extra.shape[1]:  # prompt nodes are keys too
            keys = torch.cat([keys, extra], dim=1)
            if key_mask is not None:
                key_mask = torch.cat([key_mask, node_mask[:, rows * cols:]], dim=1)
        return keys, key_mask, key_grid

    def _bias(self, hw, key_grid, num_nodes: int, num_keys: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        """The relative position term for this grid ``[N, M]`` (zero rows / columns for prompt nodes)."""
        if self.relative_pos is None:
            return None
        n, m = hw[0] * hw[1], key_grid[0] * key_grid[1]
        rel = self.relative_pos[0]
        if tuple(rel.shape) != (n, m):
            rel = F.interpolate(rel[None, None], size=(n, m), mode="bicubic", align_corners=False)[0, 0]
        rel = rel.to(like.dtype)
        if num_nodes > n or num_keys > m:
            rel = F.pad(rel, (0, num_keys - m, 0, num_nodes - n))
        return rel

    def forward(self, x: torch.Tensor, hw: Tuple[int, int], node_mask: Optional[torch.Tensor] = None,
                graph_hook=None) -> torch.Tensor:
        """x: ``[B, N, D]`` (the first ``h*w`` nodes are the grid, row-major), hw: (h, w) -> ``[B, N, D]``.

        ``graph_hook(h, neighbours)`` sees neighbour indices into the key nodes (the nodes
        themselves when r = 1).
        """
        h = self._project(x)
        keys, key_mask, key_grid = self._keys(h, hw, node_mask)
        bias = self._bias(hw, key_grid, h.shape[1], keys.shape[1], h)
        neighbours = knn_to_keys(h, keys, self.num_knn, self.dilation, key_mask, bias)
        if graph_hook is not None:
            h = graph_hook(h, neighbours)
            if keys.shape[1] == h.shape[1] and self.reduce_ratio == 1:
                keys = h
        return x + self.drop_path(self.fc_out(self.graph_conv(h, neighbours, keys)))


class PyramidBlock(nn.Module):
    """:class:`PyramidGrapher` then :class:`models.vig.FFN`."""

    def __init__(self, dim: int, grid: Tuple[int, int], num_knn: int, dilation: int, reduce_ratio: int,
                 ffn_hidden: int, act_layer=nn.GELU, drop_path: float = 0., relative_pos: bool = True):
        super().__init__()
        self.grapher = PyramidGrapher(dim, grid, num_knn, dilation, reduce_ratio, act_layer, drop_path, relative_pos)
        self.ffn = FFN(dim, ffn_hidden, act_layer, drop_path)

    def forward(self, x, hw, node_mask=None, graph_hook=None):
        return self.ffn(self.grapher(x, hw, node_mask, graph_hook))


class PyramidStage(nn.Module):
    """Optional stride-2 downsampling (3x3 conv + BN) then the stage's blocks."""

    def __init__(self, in_dim: int, dim: int, downsample: bool, blocks: Sequence[PyramidBlock]):
        super().__init__()
        self.downsample = nn.Sequential(nn.Conv2d(in_dim, dim, 3, stride=2, padding=1),
                                        nn.BatchNorm2d(dim)) if downsample else None
        self.blocks = nn.ModuleList(blocks)


class PyramidVisionGNN(GraphClassifierMixin, nn.Module):
    """Pyramid Vision GNN (Han et al., NeurIPS 2022): stem, position embedding, stages of Grapher +
    FFN blocks on halving node grids with reduced keys and a relative position term, a final
    BatchNorm (optional), masked mean pooling, MLP head.

    Args:
        img_size: configured input size; sets the position embedding, the relative position terms
            and the default dilation. Other sizes work (both are resized).
        in_chans: image channels C.
        num_classes: classifier outputs; 0 makes the head an identity.
        channels: D of each stage.
        depths: blocks of each stage.
        num_knn: k of every block.
        reduce_ratios: key reduction r of each stage.
        max_dilation: cap on the dilation ``block_idx // 4 + 1``; None: last stage nodes // k.
        stem_stride: stride of the stem (power of two >= 2).
        act_layer: activation, a timm name or an nn.Module class.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, growing linearly over all blocks.
        head_hidden: hidden features of the head (0: a single linear classifier).
        ffn_ratio: FFN hidden features = ``ffn_ratio * D``.
        relative_pos: use the relative position term.
        final_norm: a BatchNorm over the last stage's nodes (not in the paper; see
            :class:`models.vig.VisionGNN`).

    Example:
        >>> model = PyramidVisionGNN(img_size=28, in_chans=1, num_classes=0, channels=(16, 32), depths=(1, 1),
        ...                          num_knn=4, reduce_ratios=(2, 1), stem_stride=2)
        >>> nodes = model.forward_features(torch.randn(2, 1, 28, 28))  # [2, 49, 32]
        >>> model.forward_head(nodes, pre_logits=True).shape
        torch.Size([2, 32])
    """

    num_prefix_tokens = 0

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            channels: Sequence[int] = (48, 96, 240, 384),
            depths: Sequence[int] = (2, 2, 6, 2),
            num_knn: int = 9,
            reduce_ratios: Sequence[int] = (4, 2, 1, 1),
            max_dilation: Optional[int] = None,
            stem_stride: int = 4,
            act_layer: LayerType = "gelu",
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            head_hidden: int = 1024,
            ffn_ratio: float = 4,
            relative_pos: bool = True,
            final_norm: bool = True,
    ):
        super().__init__()
        img_size = tuple(to_2tuple(img_size))
        _check_args(img_size, channels, depths, reduce_ratios, num_knn, stem_stride, num_classes, head_hidden,
                    drop_rate, drop_path_rate, max_dilation)
        act = _resolve_act(act_layer)
        self.num_classes = num_classes
        self.num_features = self.embed_dim = channels[-1]
        self.head_hidden = head_hidden
        self.drop_rate = drop_rate
        self._act = act
        self.depths = tuple(depths)

        self.stem = Stem(in_chans, channels[0], stem_stride, act)
        self.grid_size = self.stem.grid_size(img_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, channels[0], *self.grid_size))

        grids = [self.grid_size]
        for _ in channels[1:]:
            grids.append(((grids[-1][0] + 1) // 2, (grids[-1][1] + 1) // 2))
        if max_dilation is None:
            max_dilation = max(1, grids[-1][0] * grids[-1][1] // num_knn)
        total = sum(depths)
        drop_path = [drop_path_rate * i / (total - 1) if total > 1 else 0. for i in range(total)]
        self.dilation_per_block = [min(i // 4 + 1, max_dilation) for i in range(total)]
        stages, idx = [], 0
        for s, (dim, depth, r, grid) in enumerate(zip(channels, depths, reduce_ratios, grids)):
            blocks = []
            for _ in range(depth):
                blocks.append(PyramidBlock(dim, grid, num_knn, self.dilation_per_block[idx], r, int(dim * ffn_ratio),
                                           act, drop_path[idx], relative_pos))
                idx += 1
            stages.append(PyramidStage(channels[s - 1] if s else dim, dim, s > 0, blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = NodeBatchNorm(channels[-1]) if final_norm else nn.Identity()
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
        """Images to the last stage's node features.

        Args:
            x: images ``[B, C, H, W]``.
            node_mask: ``[B, h*w]`` bool over the first stage's grid, True = node kept.
            block_hook: ``block_hook(i, x [B, N, D], node_mask [B, N]) -> (x, node_mask)`` before
                block i (numbered over all stages); nodes it appends are dropped at the end of
                their stage.
            return_mask: also return the mask in force after the last block.
            graph_hook: ``graph_hook(i, h, neighbours)`` inside block i's Grapher (neighbours index
                the key nodes, see :class:`PyramidGrapher`).

        Returns:
            nodes ``[B, N, D_last]``; with ``return_mask``, ``(nodes, node_mask)``.
        """
        x = self._pos_embed(self.stem(x))
        hw = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        check_node_mask(node_mask, x)
        idx = 0
        for stage in self.stages:
            if stage.downsample is not None:
                x, node_mask, hw = self._downsample(stage.downsample, x, node_mask, hw)
            for block in stage.blocks:
                if block_hook is not None:
                    x, node_mask = _apply_hook(block_hook, idx, x, node_mask)
                x = block(x, hw, node_mask, None if graph_hook is None else functools.partial(graph_hook, idx))
                idx += 1
        x = self.norm(x)
        return (x, node_mask) if return_mask else x

    @staticmethod
    def _downsample(conv: nn.Module, x: torch.Tensor, node_mask: Optional[torch.Tensor], hw):
        """Grid nodes (prompt nodes dropped) -> stride-2 conv -> nodes of the next stage, mask pooled."""
        rows, cols = hw
        grid = x[:, :rows * cols].transpose(1, 2).reshape(x.shape[0], x.shape[2], rows, cols)
        y = conv(grid)
        new_hw = tuple(y.shape[-2:])
        if node_mask is not None:
            m = node_mask[:, :rows * cols].reshape(x.shape[0], 1, rows, cols).float()
            node_mask = F.max_pool2d(m, 2, 2, ceil_mode=True).flatten(1) > 0
            if tuple(node_mask.shape[1:]) != (new_hw[0] * new_hw[1],):
                raise RuntimeError(f"mask grid {node_mask.shape} does not match the downsampled grid {new_hw}")
        return y.flatten(2).transpose(1, 2), node_mask, new_hw

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False,
                     node_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Nodes ``[B, N, D]`` -> embedding ``[B, D]`` (``pre_logits`` or no classifier) or logits."""
        x = masked_mean(x, node_mask)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, node_mask: Optional[torch.Tensor] = None,
                block_hook: Optional[BlockHook] = None) -> torch.Tensor:
        """images ``[B, C, H, W]`` -> logits ``[B, num_classes]`` (``[B, D]`` when num_classes is 0)."""
        x, node_mask = self.forward_features(x, node_mask, block_hook, return_mask=True)
        return self.forward_head(x, node_mask=node_mask)


def _check_args(img_size, channels, depths, reduce_ratios, num_knn, stem_stride, num_classes, head_hidden,
                drop_rate, drop_path_rate, max_dilation) -> None:
    """Raise a ``ValueError`` naming the first invalid PyramidVisionGNN argument."""
    check_graph_args(img_size, num_knn, num_classes, head_hidden, max_dilation, drop_rate, drop_path_rate)
    if not (len(channels) == len(depths) == len(reduce_ratios)) or not channels:
        raise ValueError(f"channels, depths and reduce_ratios need one entry per stage, got {len(channels)}, "
                         f"{len(depths)} and {len(reduce_ratios)}")
    if any(c < 4 or c % 4 for c in channels):
        raise ValueError(f"every stage dim must be a positive multiple of 4 (graph conv groups, position term), "
                         f"got {tuple(channels)}")
    if any(d < 1 for d in depths) or any(r < 1 for r in reduce_ratios):
        raise ValueError(f"depths and reduce_ratios must be >= 1, got {tuple(depths)} and {tuple(reduce_ratios)}")
    if stem_stride < 2 or stem_stride & (stem_stride - 1) or channels[0] % max(2, stem_stride // 2):
        raise ValueError(f"stem_stride must be a power of two >= 2 dividing 2 * channels[0], got {stem_stride}")


def checkpoint_filter_fn(state_dict: dict, model: PyramidVisionGNN) -> dict:
    """Map a checkpoint of the authors' pyramid ViG onto :class:`PyramidVisionGNN` (timm convention).

    Their one flat ``backbone`` sequence (``vig_pytorch/pyramid_vig.py``) holds, in order, each
    stage's downsampling (``backbone.{j}.conv.{0,1}`` -> ``stages.{s}.downsample.{0,1}``) and
    blocks (``backbone.{j}.{0,1}.*`` -> ``stages.{s}.blocks.{b}.{grapher,ffn}.*`` as in
    :func:`models.vig.checkpoint_filter_fn`, ``relative_pos`` included and resized bicubically
    when our grid differs). Stem, position embedding (resized bilinearly), head and our final
    BatchNorm (an eval-mode identity) as for the isotropic ViG. Our own layout passes through.
    """
    from .checkpoints import (is_official_layout, map_official_state, split_official_block_key, strip_fewshot_prefix,
                              unwrap_state_dict)

    state, _ = unwrap_state_dict(state_dict)
    if not is_official_layout(state):
        return strip_fewshot_prefix(state)
    units, j = {}, 0  # official index j -> our prefix
    for s, stage in enumerate(model.stages):
        if stage.downsample is not None:
            units[j] = f"stages.{s}.downsample."
            j += 1
        for b in range(len(stage.blocks)):
            units[j] = f"stages.{s}.blocks.{b}."
            j += 1
    own = model.state_dict()

    def block_key(key, value):
        block = split_official_block_key(key)
        if block is not None and block[0] in units:
            new = units[block[0]] + block[1]
            if new.endswith("relative_pos") and new in own and value.shape != own[new].shape:
                value = F.interpolate(value[None], size=own[new].shape[-2:], mode="bicubic", align_corners=False)[0]
            return new, value
        if key.startswith("backbone.") and ".conv." in key:
            idx, rest = key[len("backbone."):].split(".conv.", 1)
            return (units[int(idx)] + rest if int(idx) in units else key), value
        return None
    return map_official_state(state, model, block_key)


def _create_pvig(variant: str, pretrained: bool = False, **kwargs) -> PyramidVisionGNN:
    if pretrained:
        from .checkpoints import build_pretrained

        return build_pretrained(PyramidVisionGNN, variant, checkpoint_filter_fn, **kwargs)  # without our final norm
    return build_model_with_cfg(PyramidVisionGNN, variant, pretrained, **kwargs)


_RELEASE = "https://github.com/huawei-noah/Efficient-AI-Backbones/releases/download/pyramid-vig/"


def _cfg(url: str = "", **kwargs) -> dict:
    """The isotropic ViG's ImageNet config, with the authors' pyramid default_cfg: inputs scaled to -1..1."""
    return vig_cfg(url=url, **{"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), **kwargs})


default_cfgs = generate_default_cfgs({
    "pvig_ti_224_gelu": _cfg(_RELEASE + "pvig_ti_78.5.pth.tar"),
    "pvig_s_224_gelu": _cfg(_RELEASE + "pvig_s_82.1.pth.tar"),
    "pvig_m_224_gelu": _cfg(_RELEASE + "pvig_m_83.1.pth.tar"),
    "pvig_b_224_gelu": _cfg(_RELEASE + "pvig_b_83.66.pth.tar", crop_pct=.95),
    "pvig_small_28": _small_cfg(in_chans=1, img_size=28),
    "pvig_small_84": _small_cfg(in_chans=3, img_size=84),
    "test_pvig": _small_cfg(in_chans=1, img_size=28),
})


@register_model
def pvig_ti_224_gelu(pretrained: bool = False, **kwargs) -> PyramidVisionGNN:
    """Pyramid ViG-Ti (10.7M parameters): D 48/96/240/384, 2/2/6/2 blocks, 56x56 nodes first."""
    model_args = dict(channels=(48, 96, 240, 384), depths=(2, 2, 6, 2))
    return _create_pvig("pvig_ti_224_gelu", pretrained, **dict(model_args, **kwargs))


@register_model
def pvig_s_224_gelu(pretrained: bool = False, **kwargs) -> PyramidVisionGNN:
    """Pyramid ViG-S (27.3M parameters): D 80/160/400/640, 2/2/6/2 blocks."""
    model_args = dict(channels=(80, 160, 400, 640), depths=(2, 2, 6, 2))
    return _create_pvig("pvig_s_224_gelu", pretrained, **dict(model_args, **kwargs))


@register_model
def pvig_m_224_gelu(pretrained: bool = False, **kwargs) -> PyramidVisionGNN:
    """Pyramid ViG-M (51.7M parameters): D 96/192/384/768, 2/2/16/2 blocks."""
    model_args = dict(channels=(96, 192, 384, 768), depths=(2, 2, 16, 2))
    return _create_pvig("pvig_m_224_gelu", pretrained, **dict(model_args, **kwargs))


@register_model
def pvig_b_224_gelu(pretrained: bool = False, **kwargs) -> PyramidVisionGNN:
    """Pyramid ViG-B (92.6M parameters): D 128/256/512/1024, 2/2/18/2 blocks."""
    model_args = dict(channels=(128, 256, 512, 1024), depths=(2, 2, 18, 2))
    return _create_pvig("pvig_b_224_gelu", pretrained, **dict(model_args, **kwargs))


@register_model
def pvig_small_28(pretrained: bool = False, **kwargs) -> PyramidVisionGNN:
    """Small pyramid ViG for 28x28 grayscale: stem stride 2, grids 14x14 (r 2) -> 7x7 -> 4x4, D 32/64/128."""
    model_args = dict(img_size=28, in_chans=1, num_classes=0, channels=(32, 64, 128), depths=(1, 1, 2),
                      reduce_ratios=(2, 1, 1), stem_stride=2, head_hidden=256)
    return _create_pvig("pvig_small_28", pretrained, **dict(model_args, **kwargs))


@register_model
def pvig_small_84(pretrained: bool = False, **kwargs) -> PyramidVisionGNN:
    """Small pyramid ViG for 84x84 RGB: grids 21x21 (r 2) -> 11x11 -> 6x6 -> 3x3, D 32/64/128/192."""
    model_args = dict(img_size=84, in_chans=3, num_classes=0, channels=(32, 64, 128, 192), depths=(1, 1, 2, 1),
                      reduce_ratios=(2, 1, 1, 1), stem_stride=4, head_hidden=256)
    return _create_pvig("pvig_small_84", pretrained, **dict(model_args, **kwargs))


@register_model
def test_pvig(pretrained: bool = False, **kwargs) -> PyramidVisionGNN:
    """Tiny pyramid ViG for tests: 28x28 grayscale, grids 14x14 (r 2) -> 7x7, D 16/32, k 4."""
    model_args = dict(img_size=28, in_chans=1, num_classes=0, channels=(16, 32), depths=(1, 1),
                      reduce_ratios=(2, 1), num_knn=4, stem_stride=2, head_hidden=64)
    return _create_pvig("test_pvig", pretrained, **dict(model_args, **kwargs))
