"""Safe image decoding for the real-data loaders.

Every loader reads its files through these helpers, so that every bad input becomes one
:class:`~episodes.errors.DataError` naming the file at fault:

- :func:`decode_image`: bytes -> uint8 ``[C, S, S]`` (PIL, fully loaded inside ``try`` so a
  truncated or corrupt file fails here, antialiased resize).
- :func:`decode_images`: many images in a thread pool, order kept -> uint8 ``[N, C, S, S]``.
- :func:`read_zip_members`: the image members of a zip, after refusing unsafe member paths
  (absolute, ``..``) and zip bombs (by the declared sizes, before anything is extracted).
- :func:`list_image_files`: the image files under a folder, following symlinks but refusing
  symlink loops.

Glossary: N images, C channels (1 grayscale, 3 RGB), S = ``img_size`` pixels per side.
Sources are named ``/path/to/file.png`` on disk and ``/path/to/set.zip:member/name.png`` in a zip.
"""
from __future__ import annotations

import io
import logging
import os
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .errors import DataError

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "MAX_ZIP_TOTAL_BYTES", "MAX_ZIP_RATIO", "decode_image", "decode_images",
           "read_zip_members", "list_image_files"]

log = logging.getLogger(__name__)

#: Image file suffixes the loaders read (compared case-insensitively).
IMAGE_SUFFIXES: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
#: An image whose header declares more pixels than this is refused before it is decoded
#: (8192 x 8192; PIL itself only warns below twice its own 89M-pixel limit).
MAX_IMAGE_PIXELS = 1 << 26
#: A zip whose members declare more than this many uncompressed bytes in all is refused.
MAX_ZIP_TOTAL_BYTES = 2 << 30
#: A zip member (of at least ``_RATIO_MIN_BYTES``) compressed more than this is refused.
MAX_ZIP_RATIO = 200
# Below this declared size a high ratio is harmless (a blank BMP can deflate 1000:1).
_RATIO_MIN_BYTES = 1 << 20
_MODES = {1: "L", 3: "RGB"}

ImageSource = Union[bytes, os.PathLike, str]


def decode_image(data: bytes, source: str, img_size: int, channels: int) -> torch.Tensor:
    """Decode one encoded image and resize it to a square.

    Args:
        data: the encoded file (PNG, JPEG, BMP, GIF, WebP, ...).
        source: where ``data`` came from, used in error messages (``file.png``, ``set.zip:member``).
        img_size: output side S; the image is resized (antialiased, aspect ratio not kept).
        channels: 1 (grayscale ``L``) or 3 (``RGB``); other modes are converted.

    Returns:
        ``[channels, S, S]`` uint8.
    """
    from PIL import Image  # imported here: the loaders are the only PIL users

    if channels not in _MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not data:
        raise DataError(f"{source}: empty file (0 bytes); expected an encoded image")
    try:
        # (no warnings.catch_warnings here: it is not thread-safe; PIL's own bomb limit applies)
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise DataError(f"{source}: image declares {img.width}x{img.height} pixels, more than the "
                                f"{MAX_IMAGE_PIXELS} allowed (possible decompression bomb); refusing to decode it")
            img.load()  # decodes everything now: truncated data raises here, not later
            img = img.convert(_MODES[channels])
            if img.size != (img_size, img_size):
                img = img.resize((img_size, img_size), Image.Resampling.BILINEAR)
            raw = img.tobytes()
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, Image.DecompressionBombError) as e:
        raise DataError(f"{source}: not a readable image ({e.__class__.__name__}: {e}); "
                        f"the file is corrupt, truncated or not an image") from e
    x = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(img_size, img_size, channels)
    return x.permute(2, 0, 1).contiguous()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read image file ({e.strerror or e})") from e


def decode_images(items: Sequence[Tuple[str, ImageSource]], img_size: int, channels: int,
                  max_workers: Optional[int] = None) -> torch.Tensor:
    """Decode many images in a thread pool, keeping their order.

    Args:
        items: ``(source, data)`` pairs; ``data`` is the encoded bytes or a path to read
            (read inside the worker, so a large folder is never held in memory as bytes).
        img_size: output side S.
        channels: 1 or 3.
        max_workers: threads (default: the CPU count, at most 8).

    Returns:
        ``[N, channels, S, S]`` uint8, row ``i`` decoded from ``items[i]``.
        The first bad item (in order) raises its :class:`DataError`.
    """
    out = torch.empty((len(items), channels, img_size, img_size), dtype=torch.uint8)
    if not items:
        return out

    def work(i: int) -> None:
        source, data = items[i]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data = _read_bytes(Path(data))
        out[i] = decode_image(bytes(data), source, img_size, channels)

    workers = max_workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(items) < 64:
        for i in range(len(items)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fewshot-decode") as pool:
            for _ in pool.map(work, range(len(items)), chunksize=64):
                pass  # iterating re-raises the first failure in order
    return out


def _unsafe_member(name: str) -> bool:
    """True for absolute paths, drive letters and ``..`` components (either slash)."""
    norm = name.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    return norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in parts


def _check_zip(zip_path: Path, infos: List[zipfile.ZipInfo], max_total_bytes: int, max_ratio: float) -> None:
    """Refuse path traversal, duplicate members and zip bombs, using only the central directory."""
    seen = set()
    for info in infos:
        if not info.filename:
            raise DataError(f"{zip_path}: a member has an empty name; the zip is damaged")
        if _unsafe_member(info.filename):
            raise DataError(f"{zip_path}:{info.filename}: unsafe member path (absolute or with '..'); "
                            f"a dataset zip may only hold relative paths below its own folder")
        if info.filename in seen:
            raise DataError(f"{zip_path}:{info.filename}: member stored twice in the zip; "
                            f"each member name must be unique")
        seen.add(info.filename)
        if info.file_size >= _RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            raise DataError(f"{zip_path}:{info.filename}: compression ratio "
                            f"{info.file_size / max(info.compress_size, 1):.0f}:1 exceeds {max_ratio:.0f}:1 "
                            f"(possible zip bomb); refusing to extract")
    total = sum(i.file_size for i in infos)
    if total > max_total_bytes:
        raise DataError(f"{zip_path}: members declare {total / 2**30:.2f} GiB uncompressed, more than the "
                        f"{max_total_bytes / 2**30:.2f} GiB allowed (possible zip bomb); refusing to extract")


def read_zip_members(zip_path: Union[str, os.PathLike], suffixes: Sequence[str] = IMAGE_SUFFIXES,
                     max_total_bytes: int = MAX_ZIP_TOTAL_BYTES,
                     max_ratio: float = MAX_ZIP_RATIO) -> List[Tuple[str, bytes]]:
    """Read the members of a zip whose names end with one of ``suffixes``.

    Before anything is extracted the whole central directory is checked: a member with an
    absolute or ``..`` path, a duplicated member name, a member compressed more than
    ``max_ratio`` : 1, or members declaring more than ``max_total_bytes`` in all, refuse the zip.
    macOS metadata (``__MACOSX/``, ``._*``) is skipped.

    Returns:
        ``(member_name, bytes)`` pairs sorted by member name.
    """
    zip_path = Path(zip_path)
    suffixes = tuple(s.lower() for s in suffixes)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            _check_zip(zip_path, infos, max_total_bytes, max_ratio)
            wanted = [i for i in infos if not i.is_dir() and i.filename.lower().endswith(suffixes)]
            meta = [i for i in wanted if i.filename.startswith("__MACOSX/") or Path(i.filename).name.startswith("._")]
            if meta:
                log.info("%s: skipping %d macOS metadata members (__MACOSX/, ._*)", zip_path, len(meta))
            out = []
            for info in sorted(set(wanted) - set(meta), key=lambda i: i.filename):
                out.append((info.filename, _read_member(zf, zip_path, info)))
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError,
            UnicodeDecodeError) as e:  # the last two: a damaged header (version, UTF-8 name flag)
        raise DataError(f"{zip_path}: not a readable zip file ({e.__class__.__name__}: {e})") from e


def _read_member(zf: zipfile.ZipFile, zip_path: Path, info: zipfile.ZipInfo) -> bytes:
    try:
        with zf.open(info) as f:  # zipfile stops at the declared size and checks the CRC
            return f.read()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as e:
        raise DataError(f"{zip_path}:{info.filename}: cannot extract member ({e.__class__.__name__}: {e}); "
                        f"the zip is damaged, encrypted or uses an unsupported compression") from e


def list_image_files(folder: Union[str, os.PathLike], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> List[Path]:
    """All image files below ``folder``, recursively, sorted; hidden files are ignored.

    Symlinks are followed (class folders may be links), but a link that leads back to a folder
    being walked (a loop), or that cannot be resolved (a self-referencing or dangling link to an
    image), raises :class:`DataError` naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected a folder of images)")
    suffixes = tuple(s.lower() for s in suffixes)
    found: List[Path] = []
    _walk(folder, (Path(os.path.realpath(folder)),), suffixes, found)
    return sorted(found)


def _walk(folder: Path, ancestors: Tuple[Path, ...], suffixes: Tuple[str, ...], found: List[Path]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{folder}: cannot list folder ({e.strerror or e})") from e
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()  # follows links; ELOOP for a link to itself
            is_file = entry.is_file()
        except OSError as e:
            raise DataError(f"{path}: symlink loop or unreadable entry ({e.strerror or e})") from e
        if entry.is_symlink() and not is_dir and not is_file:
            raise DataError(f"{path}: broken symlink ({os.readlink(path)!r} cannot be resolved); "
                            f"fix or remove the link")
        if is_dir:
            real = Path(os.path.realpath(path))
            if any(a == real or real in a.parents for a in ancestors):
                raise DataError(f"{path}: symlink loop (it leads back to {real}, which contains it); "
                                f"remove the link or replace it with a copy")
            _walk(path, ancestors + (real,), suffixes, found)
        elif is_file and entry.name.lower().endswith(suffixes):
            found.append(path)
