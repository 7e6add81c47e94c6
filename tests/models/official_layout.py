"""State dicts in the key layout of the authors' ViG code (huawei-noah/Efficient-AI-Backbones,
``vig_pytorch/vig.py`` and ``pyramid_vig.py``), written out from reading it: names and shapes only,
generated here; their code is not used.

Isotropic ``DeepGCN``: ``stem.convs`` (four stride-2 3x3 conv + BN + act, channels D/8, D/4, D/2, D,
then a 3x3 conv + BN: Sequential indices 0,1 / 3,4 / 6,7 / 9,10 / 12,13), ``pos_embed [1, D, 14, 14]``,
``backbone.{i}.0`` the Grapher (``fc1``: 1x1 conv + BN; ``graph_conv.gconv.nn``: grouped (4) 1x1
conv 2D -> 2D + BN; ``fc2``: 1x1 conv 2D -> D + BN), ``backbone.{i}.1`` the FFN (``fc1`` D -> 4D,
``fc2`` 4D -> D, each conv + BN), ``prediction`` (0: 1x1 conv D -> 1024, 1: BN, 4: 1x1 conv -> classes).

Pyramid ``DeepGCN``: ``stem.convs`` (stride-2 conv to C0/2 + BN + act, stride-2 conv to C0 + BN + act,
conv + BN: indices 0,1 / 3,4 / 6,7), ``pos_embed [1, C0, 56, 56]``, one flat ``backbone`` sequence
holding, before every stage but the first, a downsampling ``backbone.{j}.conv`` (0: stride-2 3x3 conv,
1: BN), then that stage's blocks, whose Grapher also holds ``relative_pos [1, n, n / r^2]`` (n nodes
of the stage at 224 px, r = 4, 2, 1, 1), and the same ``prediction``.
"""
from typing import Dict, Sequence, Tuple

import torch

Shapes = Dict[str, Tuple[int, ...]]


def _conv(shapes: Shapes, name: str, out: int, inp: int, k: int, groups: int = 1) -> None:
    shapes[f"{name}.weight"] = (out, inp // groups, k, k)
    shapes[f"{name}.bias"] = (out,)


def _bn(shapes: Shapes, name: str, c: int) -> None:
    for p in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{p}"] = (c,)
    shapes[f"{name}.num_batches_tracked"] = ()


def _block(shapes: Shapes, prefix: str, dim: int, relative_pos: Tuple[int, ...] = ()) -> None:
    g = f"{prefix}.0"
    _conv(shapes, f"{g}.fc1.0", dim, dim, 1)
    _bn(shapes, f"{g}.fc1.1", dim)
    _conv(shapes, f"{g}.graph_conv.gconv.nn.0", 2 * dim, 2 * dim, 1, groups=4)
    _bn(shapes, f"{g}.graph_conv.gconv.nn.1", 2 * dim)
    _conv(shapes, f"{g}.fc2.0", dim, 2 * dim, 1)
    _bn(shapes, f"{g}.fc2.1", dim)
    if relative_pos:
        shapes[f"{g}.relative_pos"] = relative_pos
    f = f"{prefix}.1"
    _conv(shapes, f"{f}.fc1.0", 4 * dim, dim, 1)
    _bn(shapes, f"{f}.fc1.1", 4 * dim)
    _conv(shapes, f"{f}.fc2.0", dim, 4 * dim, 1)
    _bn(shapes, f"{f}.fc2.1", dim)


def _prediction(shapes: Shapes, dim: int, num_classes: int) -> None:
    _conv(shapes, "prediction.0", 1024, dim, 1)
    _bn(shapes, "prediction.1", 1024)
    _conv(shapes, "prediction.4", num_classes, 1024, 1)


def isotropic_shapes(dim: int, depth: int, num_classes: int = 1000, in_chans: int = 3, grid: int = 14) -> Shapes:
    """Names and shapes of the authors' isotropic ViG with D = ``dim`` and ``depth`` blocks."""
    shapes: Shapes = {"pos_embed": (1, dim, grid, grid)}
    chans = [in_chans, dim // 8, dim // 4, dim // 2, dim]
    for i in range(4):
        _conv(shapes, f"stem.convs.{3 * i}", chans[i + 1], chans[i], 3)
        _bn(shapes, f"stem.convs.{3 * i + 1}", chans[i + 1])
    _conv(shapes, "stem.convs.12", dim, dim, 3)
    _bn(shapes, "stem.convs.13", dim)
    for i in range(depth):
        _block(shapes, f"backbone.{i}", dim)
    _prediction(shapes, dim, num_classes)
    return shapes


def pyramid_shapes(channels: Sequence[int], blocks: Sequence[int], num_classes: int = 1000, in_chans: int = 3,
                   img_size: int = 224, reduce_ratios: Sequence[int] = (4, 2, 1, 1)) -> Shapes:
    """Names and shapes of the authors' pyramid ViG with the given stage channels and depths."""
    c0 = channels[0]
    side = img_size // 4
    shapes: Shapes = {"pos_embed": (1, c0, side, side)}
    _conv(shapes, "stem.convs.0", c0 // 2, in_chans, 3)
    _bn(shapes, "stem.convs.1", c0 // 2)
    _conv(shapes, "stem.convs.3", c0, c0 // 2, 3)
    _bn(shapes, "stem.convs.4", c0)
    _conv(shapes, "stem.convs.6", c0, c0, 3)
    _bn(shapes, "stem.convs.7", c0)
    j = 0
    for s, (dim, depth) in enumerate(zip(channels, blocks)):
        if s > 0:
            _conv(shapes, f"backbone.{j}.conv.0", dim, channels[s - 1], 3)
            _bn(shapes, f"backbone.{j}.conv.1", dim)
            j += 1
            side //= 2
        n, r = side * side, reduce_ratios[s]
        for _ in range(depth):
            _block(shapes, f"backbone.{j}", dim, relative_pos=(1, n, n // (r * r)))
            j += 1
    _prediction(shapes, channels[-1], num_classes)
    return shapes


def make_state(shapes: Shapes, device: str = "cpu", seed: int = 0) -> Dict[str, torch.Tensor]:
    """A state dict with these shapes: random values (positive running variances, integer
    counters) on CPU, or empty tensors on the meta device."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if device == "meta":
            dtype = torch.long if name.endswith("num_batches_tracked") else torch.float32
            state[name] = torch.empty(shape, device="meta", dtype=dtype)
        elif name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        else:
            state[name] = torch.randn(shape, generator=g) * 0.1
    return state
