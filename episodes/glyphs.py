"""glyphs: the embedded default dataset, procedurally generated stroke-drawn characters.

Nothing is read or downloaded: ``fewshot train --way 5 --shot 1`` runs anywhere, offline.
Each class is an invented "character" of 2-4 pen strokes; each of its instances is the same
character drawn again by a slightly different hand.

**Per class** (from its own generator ``numpy.random.default_rng([seed, class_index])``, so
class ``c`` is the same whatever ``num_classes`` is, and at every ``img_size``):

- the number of strokes (2-4);
- each stroke's control polygon in a unit box: an open pen path of 2-5 points (a random walk
  whose heading turns a little at smooth points and sharply at corners, so strokes are lines,
  curves and angles) or, less often, a closed loop of 4-5 points around an ellipse;
- how strokes meet: a later stroke often starts on an earlier one (at an end or a point along
  it) and sometimes ends on one, so strokes share endpoints as in real scripts;
- the whole character is then centred and scaled to fill the middle of the box (its longer
  side 0.66; a much shorter side stretched a little, so few characters are mere slivers).

Strokes are uniform cubic B-splines of their control polygons (open ones clamped, so they end
exactly at their first and last control points; a corner is a tripled control point; loops
are periodic).

**Per instance** (from ``default_rng([seed, class_index, instance_index])``, so instance ``i``
is also the same whatever ``per_class`` is), like the variation between people writing the
same letter:

- each stroke a little longer or shorter (about its start, log-sd 0.12) and a little out of
  place (sd 0.03 of the box);
- wobble: every control point moved by Gaussian noise (sd 0.035, ~1 pixel at 28x28), so
  strokes bend differently and junctions open or overshoot;
- the whole character rotated (normal, sd 8 degrees, clipped to +-15), slanted (shear, sd
  0.12), scaled (0.82-1.10, plus ~5% per axis) and shifted (up to 0.08 of the box, ~2 pixels);
- stroke width 1.2-2.2 pixels (at any ``img_size``, scaled from 28x28).

Difficulty: tuned so that a Conv-4 prototypical network trained for about two minutes on this
CPU-only setup (1000 20-way episodes) reaches about the same 5-way 1-shot test accuracy on
glyphs as on omniglot-minimal (~92%): learnable, not trivial.

Rendering: strokes are drawn with PIL at 4x the output size (round caps and corners) and
box-downsampled (an exact 4x4 average), so edges are antialiased. Strokes are bright (255) on
a dark (0) background, the project's convention (Omniglot is inverted to match).

Splits (fixed, by class): classes 0-239 train, 240-299 val, 300-399 test; 20 images each.
The generated set is memoised in-process per ``(num_classes, per_class, img_size, seed)``:
the three splits come from one generation (~2 s for the default 8000 images at 28x28 on two
CPU cores).

Glossary: N images, S = ``img_size``, unit box = ``[0, 1] x [0, 1]`` with y pointing down.
"""
from __future__ import annotations

import functools
import operator
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from .catalog import Splits, register_dataset
from .imageset import ImageSet

__all__ = ["GLYPHS_SPLIT", "NUM_CLASSES", "PER_CLASS", "SUPERSAMPLE", "generate_glyphs", "glyph_class_name",
           "load_glyphs"]

#: Classes in the registered dataset and how many go to train / val / test (in class order).
NUM_CLASSES = 400
PER_CLASS = 20
GLYPHS_SPLIT = (240, 60, 100)
#: Strokes are drawn at this multiple of the output size, then box-downsampled.
SUPERSAMPLE = 4

# ----- per-class shape parameters (unit box) ------------------------------------------------
_STROKES = (2, 4)                    # strokes per character, inclusive
_LOOP_PROB = 0.12                    # a stroke is a closed loop
_OPEN_POINTS = (2, 3, 4, 5)          # control points of an open stroke ...
_OPEN_POINTS_P = (0.3, 0.3, 0.25, 0.15)  # ... and their probabilities
_START_ON_STROKE_PROB = 0.65         # a later stroke starts on an earlier one
_END_ON_STROKE_PROB = 0.3            # ... and ends on one (when one is near enough)
_GLYPH_EXTENT = 0.66                 # the character's longer side, after normalisation
_CORNER_PROB = 0.35                  # an interior control point of an open stroke is a corner
_MAX_STRETCH = 1.6                   # the shorter side may be stretched this much more than the longer
_SAMPLES_PER_SEGMENT = 8             # curve samples per B-spline segment
_SHARP_TURN_COS = 0.97               # a path turning more than ~14 degrees at a sample gets a round joint

# ----- per-instance jitter ------------------------------------------------------------------
_WOBBLE = 0.035                      # sd of control-point noise (unit box; ~1 px at 28)
_STROKE_LENGTH_SD = 0.12             # log-scale sd of each stroke's size about its start
_STROKE_SHIFT_SD = 0.03              # sd of each stroke's displacement (unit box)
_ROTATION_SD, _ROTATION_MAX = 8.0, 15.0   # degrees
_SHEAR_SD = 0.12                     # slant: x += shear * y
_SCALE = (0.82, 1.10)                # overall scale, uniform
_ANISOTROPY_SD = 0.05                # log-scale sd of each axis around the overall scale
_SHIFT = 0.08                        # uniform in +-, unit box (~2 px at 28)
_WIDTH = (1.2, 2.2)                  # stroke width in output pixels, uniform

# uniform cubic B-spline basis: point(t) = [t^3, t^2, t, 1] @ _BSPLINE @ [Q_j, ..., Q_j+3]
_BSPLINE = np.array([[-1, 3, -3, 1], [3, -6, 3, 0], [-3, 0, 3, 0], [1, 4, 1, 0]], dtype=np.float64) / 6.0


def glyph_class_name(cls: int) -> str:
    """The class name of class index ``cls``: ``glyph0042``."""
    return f"glyph{cls:04d}"


def _check_count(name: str, value, minimum: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if isinstance(value, bool) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


# ----- class shapes --------------------------------------------------------------------------
def _spline_weights(n_points: int, closed: bool, corners: Tuple[int, ...] = ()) -> np.ndarray:
    """``[T, n_points]`` weights: curve samples ``[T, 2]`` = weights @ control points ``[n_points, 2]``.

    Open strokes repeat their end points three times (the curve starts and ends on them);
    closed ones wrap around and repeat their first sample at the end. A control point listed in
    ``corners`` is repeated three times too: the curve passes through it with a sharp turn.
    """
    if closed:
        sel = list(range(n_points)) + [0, 1, 2]
    else:
        sel = [0, 0]
        for j in range(n_points):
            sel += [j] * (3 if j in corners else 1)
        sel += [n_points - 1, n_points - 1]
    onehot = np.eye(n_points)[sel]                                       # [m, n]
    t = np.linspace(0.0, 1.0, _SAMPLES_PER_SEGMENT, endpoint=False)
    basis = np.stack([t ** 3, t ** 2, t, np.ones_like(t)], 1) @ _BSPLINE  # [k, 4]
    rows = [basis @ onehot[j:j + 4] for j in range(len(sel) - 3)]
    last = np.array([[0.0, 0.0, 0.0, 1.0]]) @ _BSPLINE @ onehot[len(sel) - 4:]  # t = 1 of the last segment
    return np.concatenate(rows + [last], 0)


def _open_stroke(rng: np.random.Generator, start: np.ndarray) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """A pen path from ``start``: its control polygon ``[n, 2]`` and which interior points are corners.

    The heading turns a little at smooth points (a curve) and a lot at corners (an angle).
    """
    n = int(rng.choice(_OPEN_POINTS, p=_OPEN_POINTS_P))
    heading = rng.uniform(0.0, 2 * np.pi)
    pts, corners = [start], []
    for j in range(1, n):
        if j > 1:
            if rng.random() < _CORNER_PROB:
                corners.append(j - 1)
                heading += rng.choice([-1.0, 1.0]) * rng.uniform(1.2, 2.4)
            else:
                heading += rng.normal(0.0, 0.7)
        step = rng.uniform(0.35, 0.7) if n == 2 else rng.uniform(0.18, 0.36)
        pts.append(pts[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
    return np.stack(pts), tuple(corners)


def _loop_stroke(rng: np.random.Generator, touch: Optional[np.ndarray]) -> np.ndarray:
    """``[n, 2]`` control points of a closed loop (an irregular ellipse), touching ``touch`` if given."""
    n = int(rng.integers(4, 6))
    radii = rng.uniform(0.1, 0.24, 2)
    tilt = rng.uniform(0.0, np.pi)
    ang = np.linspace(0.0, 2 * np.pi, n, endpoint=False) + rng.uniform(0.0, 2 * np.pi) + rng.normal(0, 0.2, n)
    ring = np.stack([radii[0] * np.cos(ang), radii[1] * np.sin(ang)], 1)
    rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    ring = ring @ rot.T * 1.5  # a B-spline loop runs inside its control points: enlarge them
    centre = rng.uniform(0.3, 0.7, 2) if touch is None else touch - ring[0] / 1.5
    return ring + centre


class _Shape(NamedTuple):
    """One character, all strokes together: P control points, T curve samples."""

    ctrl: np.ndarray        # [P, 2] control points, unit box
    weights: np.ndarray     # [T, P] B-spline weights, block-diagonal over strokes: curve = weights @ ctrl
    bounds: Tuple[int, ...]  # stroke s is curve samples bounds[s]:bounds[s+1]
    stroke_of: np.ndarray   # [P] stroke index of each control point
    pivots: np.ndarray      # [P, 2] where the point's stroke begins (its first curve sample)


@functools.lru_cache(maxsize=4096)
def _class_shape(seed: int, cls: int) -> _Shape:
    """Character ``cls``, from its own generator ``default_rng([seed, cls])``."""
    rng = np.random.default_rng([seed, cls])
    ctrls: List[np.ndarray] = []
    blocks: List[np.ndarray] = []
    curves: List[np.ndarray] = []  # sampled earlier strokes: where later strokes may join
    for s in range(int(rng.integers(_STROKES[0], _STROKES[1] + 1))):
        anchor = None
        if s > 0 and rng.random() < _START_ON_STROKE_PROB:
            prev = curves[int(rng.integers(len(curves)))]
            # an end of the earlier stroke half the time, otherwise any point along it
            anchor = prev[[0, -1][int(rng.integers(2))]] if rng.random() < 0.5 else prev[int(rng.integers(len(prev)))]
        if rng.random() < _LOOP_PROB:
            ctrl, closed, corners = _loop_stroke(rng, anchor), True, ()
        else:
            ctrl, corners = _open_stroke(rng, anchor if anchor is not None else rng.uniform(0.15, 0.85, 2))
            closed = False
            if s > 0 and rng.random() < _END_ON_STROKE_PROB:
                others = np.concatenate(curves)
                dist = np.linalg.norm(others - ctrl[-1], axis=1)
                dist[np.linalg.norm(others - ctrl[0], axis=1) < 0.15] = np.inf  # not back where it began
                k = int(np.argmin(dist))
                if dist[k] < 0.35:
                    ctrl[-1] = others[k]
        weights = _spline_weights(len(ctrl), closed, corners)
        ctrls.append(ctrl)
        blocks.append(weights)
        curves.append(weights @ ctrl)

    ctrl = np.concatenate(ctrls)
    weights = np.zeros((sum(b.shape[0] for b in blocks), len(ctrl)))
    bounds, r, k = [0], 0, 0
    for b in blocks:
        weights[r:r + b.shape[0], k:k + b.shape[1]] = b
        r, k = r + b.shape[0], k + b.shape[1]
        bounds.append(r)
    # centre the drawn character, scale its longer side to _GLYPH_EXTENT and stretch a much
    # shorter side (by at most _MAX_STRETCH) towards half of that, so characters fill the box
    drawn = np.concatenate(curves)
    lo, hi = drawn.min(0), drawn.max(0)
    extent = np.maximum(hi - lo, 1e-3)
    scale = _GLYPH_EXTENT / extent.max()
    scale = scale * np.clip(0.5 * _GLYPH_EXTENT / (extent * scale), 1.0, _MAX_STRETCH)
    ctrl = (ctrl - (lo + hi) / 2) * scale + 0.5
    stroke_of = np.repeat(np.arange(len(ctrls)), [len(c) for c in ctrls])
    pivots = (weights @ ctrl)[np.array(bounds[:-1])][stroke_of]
    for a in (ctrl, weights, stroke_of, pivots):
        a.setflags(write=False)
    return _Shape(ctrl, weights, tuple(bounds), stroke_of, pivots)


# ----- instances -----------------------------------------------------------------------------
def _render_instance(seed: int, cls: int, inst: int, img_size: int) -> np.ndarray:
    """``[S, S]`` uint8 image of instance ``inst`` of class ``cls``."""
    shape = _class_shape(seed, cls)
    n_strokes = len(shape.bounds) - 1
    rng = np.random.default_rng([seed, cls, inst])
    # each stroke drawn a little longer or shorter from where it begins, and a little off place;
    # every control point wobbles
    length = np.exp(rng.normal(0.0, _STROKE_LENGTH_SD, n_strokes))[shape.stroke_of, None]
    offset = rng.normal(0.0, _STROKE_SHIFT_SD, (n_strokes, 2))[shape.stroke_of]
    ctrl = shape.pivots + (shape.ctrl - shape.pivots) * length + offset + rng.normal(0.0, _WOBBLE, shape.ctrl.shape)
    pts = shape.weights @ ctrl                                                # [T, 2]
    angle = np.deg2rad(np.clip(rng.normal(0.0, _ROTATION_SD), -_ROTATION_MAX, _ROTATION_MAX))
    shear = rng.normal(0.0, _SHEAR_SD)
    scale = rng.uniform(*_SCALE) * np.exp(rng.normal(0.0, _ANISOTROPY_SD, 2))
    shift = rng.uniform(-_SHIFT, _SHIFT, 2)
    width = rng.uniform(*_WIDTH)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    affine = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    canvas_size = img_size * SUPERSAMPLE
    pts = ((pts - 0.5) @ affine.T + 0.5 + shift) * canvas_size

    canvas = Image.new("L", (canvas_size, canvas_size), 0)
    draw = ImageDraw.Draw(canvas)
    w = max(1, int(round(width * SUPERSAMPLE * img_size / 28.0)))
    r = w / 2.0
    for a, b in zip(shape.bounds[:-1], shape.bounds[1:]):
        draw.line(pts[a:b].ravel().tolist(), fill=255, width=w)
    # round caps at stroke ends and round joints where the path turns sharply (a wide line's
    # outer corner would otherwise be notched); smooth bends need none
    step = np.diff(pts, axis=0)
    step /= np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-9)
    sharp = np.flatnonzero((step[:-1] * step[1:]).sum(1) < _SHARP_TURN_COS) + 1
    ends = np.array(shape.bounds[:-1] + tuple(b - 1 for b in shape.bounds[1:]))
    for x, y in pts[np.union1d(ends, sharp)]:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(canvas.reduce(SUPERSAMPLE))


@functools.lru_cache(maxsize=8)
def _generate(num_classes: int, per_class: int, img_size: int, seed: int) -> torch.Tensor:
    out = np.empty((num_classes * per_class, 1, img_size, img_size), dtype=np.uint8)
    for c in range(num_classes):
        for i in range(per_class):
            out[c * per_class + i, 0] = _render_instance(seed, c, i, img_size)
    return torch.from_numpy(out)


def generate_glyphs(num_classes: int = NUM_CLASSES, per_class: int = PER_CLASS, img_size: int = 28,
                    seed: int = 0) -> ImageSet:
    """Generate the glyph characters (see the module docstring for what is random at which level).

    Args:
        num_classes: number of characters (classes ``0..num_classes-1``); class ``c`` does not
            depend on it.
        per_class: instances drawn of each character; instance ``i`` does not depend on it.
        img_size: output side S in pixels (at least 8); strokes scale with it.
        seed: non-negative integer; the same seed gives byte-identical images.

    Returns:
        :class:`ImageSet` named ``glyphs`` with ``images [num_classes*per_class, 1, S, S]``
        uint8 (strokes 255 on 0), ``labels [num_classes*per_class]`` (class ``c`` holds images
        ``c*per_class .. (c+1)*per_class-1``) and class names ``glyph0000``, ``glyph0001``, ...
        Generation is memoised per argument tuple; each call returns its own copy of the tensor.

    Example:
        >>> g = generate_glyphs(num_classes=3, per_class=2, img_size=16)
        >>> tuple(g.images.shape), g.class_names[2]
        ((6, 1, 16, 16), 'glyph0002')
    """
    num_classes = _check_count("num_classes", num_classes, 1)
    per_class = _check_count("per_class", per_class, 1)
    img_size = _check_count("img_size", img_size, 8)
    seed = _check_count("seed", seed, 0)
    images = _generate(num_classes, per_class, img_size, seed).clone()
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return ImageSet(images, labels, [glyph_class_name(c) for c in range(num_classes)], name="glyphs")


@register_dataset("glyphs", needs_root=False, default_img_size=28, in_chans=1,
                  description="generated stroke-drawn characters (default, offline): 400 classes x 20, "
                              "split 240/60/100 by class")
def load_glyphs(root: Optional[Path], img_size: int) -> Splits:
    """The registered glyphs dataset (``root`` is not used): seed 0, 400 classes of 20 images.

    Returns:
        :class:`Splits` of uint8 ``[N, 1, img_size, img_size]`` image sets: train = classes 0-239
        (4800 images), val = 240-299 (1200), test = 300-399 (2000), each relabelled from 0.
    """
    full = generate_glyphs(NUM_CLASSES, PER_CLASS, img_size, seed=0)
    n_train, n_val, n_test = GLYPHS_SPLIT
    ranges = {"train": range(0, n_train), "val": range(n_train, n_train + n_val),
              "test": range(n_train + n_val, n_train + n_val + n_test)}
    return Splits(**{s: full.subset(list(r), name=f"glyphs/{s}") for s, r in ranges.items()})
