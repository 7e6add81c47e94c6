"""One's own images as a model's input: file paths, PIL images, uint8 arrays and tensors -> uint8 ``[B, C, S, S]``.

Every image is converted the way the datasets' loaders convert theirs (:func:`episodes.decode.decode_image`):
PIL mode ``L`` (C = 1) or ``RGB`` (C = 3), then a bilinear (antialiased) resize to ``S x S``, aspect ratio
not kept; a uint8 tensor already ``[C, S, S]`` is taken as it is. Grayscale models were trained on
bright strokes on a dark background (glyphs, Omniglot inverted, digits), so ``invert="auto"`` inverts a
grayscale image whose border is mostly bright (a scan or a raw Omniglot PNG: dark ink on white).

Glossary: B images, C channels (the model's ``in_chans``), S pixels per side (its ``img_size``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from episodes.decode import decode_image
from episodes.errors import DataError

__all__ = ["INVERT_CHOICES", "as_image_list", "to_model_images"]

INVERT_CHOICES = ("auto", True, False)
"""``invert=``: ``"auto"`` (grayscale images with a bright border), always, or never."""

_MODES = {1: "L", 3: "RGB"}
_ARRAY_MODES = (1, 3, 4)  # channels of an H x W x C array (PIL mode L, RGB, RGBA)


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover  (pillow is a dependency)
        return False
    return isinstance(obj, Image.Image)


def as_image_list(images: Any, what: str = "images") -> Sequence:
    """``images`` as an indexable sequence of single images; a lone image (a path, a PIL image, a
    2-D array) is refused with a hint, since it would otherwise be read as a sequence of rows or characters."""
    if isinstance(images, (str, bytes, os.PathLike)) or _is_pil(images):
        raise TypeError(f"{what} must be a sequence of images, got one {type(images).__name__}; pass [image]")
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim < 3:
            raise ValueError(f"{what} must be a sequence of images, got one array of shape {tuple(images.shape)}; "
                             f"pass [image], or a [B, H, W] / [B, C, H, W] batch")
        return images
    if not hasattr(images, "__len__") or not hasattr(images, "__getitem__"):
        try:
            return list(images)
        except TypeError:
            raise TypeError(f"{what} must be a sequence of images, got {type(images).__name__}") from None
    return images


def _read_file(path: Path, img_size: int, in_chans: int) -> torch.Tensor:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read image file ({e.strerror or e})") from e
    return decode_image(data, str(path), img_size, in_chans)


def _from_pil(img, where: str, img_size: int, in_chans: int) -> torch.Tensor:
    from PIL import Image

    try:
        img = img.convert(_MODES[in_chans])
        if img.size != (img_size, img_size):
            img = img.resize((img_size, img_size), Image.Resampling.BILINEAR)
        raw = img.tobytes()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ValueError(f"{where}: the PIL image cannot be converted to {_MODES[in_chans]} "
                         f"({e.__class__.__name__}: {e})") from e
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(img_size, img_size, in_chans).permute(2, 0, 1)


def _from_array(arr: np.ndarray, where: str, img_size: int, in_chans: int) -> torch.Tensor:
    """An ``H x W`` or ``H x W x C`` uint8 array (C = 1, 3 or 4)."""
    from PIL import Image

    if arr.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 pixels in 0..255, got dtype {arr.dtype}; "
                         f"convert with (image * 255).round().astype(np.uint8) or .astype(np.uint8)")
    if arr.size == 0:
        raise ValueError(f"{where}: empty image of shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] not in _ARRAY_MODES:
        hint = (" (it looks channels-first: numpy images are H x W x C, use arr.transpose(1, 2, 0))"
                if arr.shape[0] in _ARRAY_MODES else "")
        raise ValueError(f"{where}: an H x W x C image needs 1, 3 or 4 channels, got shape {arr.shape}{hint}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{where}: expected an H x W or H x W x C image, got shape {arr.shape}")
    return _from_pil(Image.fromarray(np.ascontiguousarray(arr)), where, img_size, in_chans)  # L, RGB or RGBA


def _from_tensor(t: torch.Tensor, where: str, img_size: int, in_chans: int) -> torch.Tensor:
    """A ``[H, W]`` or ``[C, H, W]`` uint8 tensor (C = 1, 3 or 4); ``[in_chans, S, S]`` is taken as it is."""
    if t.dtype != torch.uint8:
        raise ValueError(f"{where}: expected a uint8 tensor (pixels 0..255), got {t.dtype}; "
                         f"convert with (t * 255).round().to(torch.uint8)")
    t = t.detach().cpu()
    if tuple(t.shape) == (in_chans, img_size, img_size):
        return t
    if t.dim() == 3 and t.shape[0] not in _ARRAY_MODES:
        raise ValueError(f"{where}: a [C, H, W] tensor needs 1, 3 or 4 channels, got shape {tuple(t.shape)}")
    if t.dim() not in (2, 3):
        raise ValueError(f"{where}: expected a [H, W] or [C, H, W] tensor, got shape {tuple(t.shape)}")
    arr = t.numpy() if t.dim() == 2 else t.permute(1, 2, 0).numpy()
    return _from_array(arr, where, img_size, in_chans)


def _one_image(image: Any, where: str, img_size: int, in_chans: int) -> torch.Tensor:
    """One image of any accepted kind -> uint8 ``[in_chans, img_size, img_size]``."""
    if isinstance(image, (str, os.PathLike)):
        return _read_file(Path(image), img_size, in_chans)
    if _is_pil(image):
        return _from_pil(image, where, img_size, in_chans)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, where, img_size, in_chans)
    if isinstance(image, np.ndarray):
        return _from_array(image, where, img_size, in_chans)
    raise TypeError(f"{where}: expected a file path, a PIL image, a uint8 numpy array or a uint8 tensor, "
                    f"got {type(image).__name__}")


def _bright_border(image: torch.Tensor) -> bool:
    """True when most pixels of the outermost ring of ``image [C, S, S]`` are brighter than mid-grey."""
    x = image[0]
    ring = torch.cat([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])
    return bool(ring.float().median() > 127.5)


def to_model_images(images: Sequence, img_size: int, in_chans: int, invert: Union[str, bool] = "auto",
                    start: int = 0, what: str = "images") -> torch.Tensor:
    """``images`` (a sequence of paths, PIL images, uint8 arrays or tensors) -> uint8 ``[B, in_chans, S, S]``.

    Args:
        img_size: S, the side the model takes.
        in_chans: 1 (grayscale) or 3 (RGB).
        invert: ``"auto"``: a grayscale image (``in_chans == 1``) whose border is mostly bright is inverted;
            True: every image is inverted; False: none is.
        start: index of ``images[0]`` in the caller's whole sequence, for messages (``images[start + i]``).
        what: the argument's name, for messages.
    Raises:
        ValueError (:class:`~episodes.errors.DataError` for files) naming the image's index or path;
        TypeError for an object that is no image.
    """
    if in_chans not in _MODES:
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans!r}")
    if invert not in INVERT_CHOICES or isinstance(invert, (int, float)) and not isinstance(invert, bool):
        raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")
    out = torch.empty((len(images), in_chans, img_size, img_size), dtype=torch.uint8)
    for i in range(len(images)):
        x = _one_image(images[i], f"{what}[{start + i}]", img_size, in_chans)
        if invert is True or (invert == "auto" and in_chans == 1 and _bright_border(x)):
            x = 255 - x
        out[i] = x
    return out
