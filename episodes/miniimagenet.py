"""miniImageNet (Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016) with
the class split of Ravi and Larochelle ("Optimization as a Model for Few-Shot Learning", ICLR
2017): 64 train, 16 val and 20 test classes of 600 images each.

Layout of ``root``::

    root/train.csv, root/val.csv, root/test.csv   # header "filename,label", one row per image
    root/images/<filename>                        # flat, as the usual archive unpacks
    root/images/<label>/<filename>                # also accepted, per image

Images are read as RGB and resized to ``img_size`` (84 by default). Every problem with the CSVs
(missing or extra columns, blank fields, duplicate file names, a class in two splits, an image
that is not there) is a :class:`~episodes.errors.DataError` naming the CSV and its row.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from .catalog import Splits, register_dataset
from .decode import decode_images
from .errors import DataError
from .imageset import ImageSet

__all__ = ["SPLIT_NAMES", "read_split_csv", "load_miniimagenet"]

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
_COLUMNS = ("filename", "label")

Row = Tuple[int, str, str]  # (row number in the file, 1 = header; filename; label)


def _plain_name(value: str) -> bool:
    """A single path component: no separators, not ``.``/``..``."""
    return value not in (".", "..") and "/" not in value and "\\" not in value and "\0" not in value


def _parse_csv(path: Path) -> Tuple[List[str], List[Tuple[int, List[str]]]]:
    """The header and the non-blank ``(row_number, fields)`` of a UTF-8 CSV file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read split CSV ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); expected a CSV with header 'filename,label'") from e
    if not text.strip():
        raise DataError(f"{path}: empty file; expected a CSV with header 'filename,label' and one row per image")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
        rows = [(reader.line_num, row) for row in reader if any(f.strip() for f in row)]
    except csv.Error as e:
        raise DataError(f"{path}: row {reader.line_num}: not valid CSV ({e})") from e
    return header, rows


def _read_rows(path: Path) -> List[Row]:
    """Validated ``(row_number, filename, label)`` of a Ravi-Larochelle split CSV."""
    header, raw_rows = _parse_csv(path)
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: row 1 (header) lacks column(s) {', '.join(missing)}; "
                        f"expected header 'filename,label', found {','.join(header)!r}")
    i_file, i_label = header.index("filename"), header.index("label")
    rows, first_row = [], {}
    for n, row in raw_rows:
        if len(row) != len(header):
            raise DataError(f"{path}: row {n} has {len(row)} fields, the header has {len(header)}: {row!r}")
        filename, label = row[i_file].strip(), row[i_label].strip()
        if not filename or not label:
            raise DataError(f"{path}: row {n} has a blank {'filename' if not filename else 'label'}: {row!r}")
        if not _plain_name(filename) or not _plain_name(label):
            raise DataError(f"{path}: row {n}: filename and label must be plain names without '/', '\\' "
                            f"or '..', found {row!r}")
        if filename in first_row:
            raise DataError(f"{path}: row {n}: duplicate filename {filename!r} (first in row {first_row[filename]})")
        first_row[filename] = n
        rows.append((n, filename, label))
    if not rows:
        raise DataError(f"{path}: no data rows after the header; expected one 'filename,label' row per image")
    return rows


def read_split_csv(path: Path) -> Dict[str, List[str]]:
    """Read one split CSV (header ``filename,label``).

    Returns:
        ``{label: [filename, ...]}``, labels in order of first appearance, files in row order.
    """
    by_label: Dict[str, List[str]] = {}
    for _, filename, label in _read_rows(Path(path)):
        by_label.setdefault(label, []).append(filename)
    return by_label


def _check_disjoint(root: Path, rows: Dict[str, List[Row]]) -> None:
    """A label or a file in two splits is an error (it would leak test classes into training)."""
    for key, what in ((2, "label"), (1, "filename")):
        seen: Dict[str, Tuple[str, int]] = {}
        for split in SPLIT_NAMES:
            for row in rows[split]:
                other = seen.get(row[key])
                if other and other[0] != split:
                    raise DataError(f"{root / (split + '.csv')}: row {row[0]}: {what} {row[key]!r} is also in "
                                    f"{other[0]}.csv (row {other[1]}); splits must be class-disjoint")
                seen.setdefault(row[key], (split, row[0]))


class _ImageIndex:
    """Finds ``images/<filename>`` or ``images/<label>/<filename>``, listing each folder once."""

    def __init__(self, images: Path):
        self.images = images
        self._listing: Dict[Path, set] = {}

    def _names(self, folder: Path) -> set:
        if folder not in self._listing:
            try:
                self._listing[folder] = {e.name for e in os.scandir(folder) if e.is_file()}
            except OSError:
                self._listing[folder] = set()
        return self._listing[folder]

    def find(self, csv_path: Path, row: Row) -> Path:
        n, filename, label = row
        for folder in (self.images, self.images / label):
            if filename in self._names(folder):
                return folder / filename
        raise DataError(f"{csv_path}: row {n}: image {filename!r} not found; looked for "
                        f"{self.images / filename} and {self.images / label / filename}")


def _build_split(root: Path, split: str, rows: List[Row], index: _ImageIndex, img_size: int) -> ImageSet:
    csv_path = root / f"{split}.csv"
    labels_sorted = sorted({r[2] for r in rows})
    class_of = {label: i for i, label in enumerate(labels_sorted)}
    items = [(str(p), p) for p in (index.find(csv_path, r) for r in rows)]
    images = decode_images(items, img_size, channels=3)
    labels = torch.tensor([class_of[r[2]] for r in rows], dtype=torch.long)
    return ImageSet(images, labels, labels_sorted, name=f"miniimagenet/{split}")


@register_dataset("miniimagenet", needs_root=True, default_img_size=84, in_chans=3,
                  description="miniImageNet, Ravi & Larochelle split: {train,val,test}.csv + images/ "
                              "(64/16/20 classes)")
def load_miniimagenet(root: Path, img_size: int) -> Splits:
    """Load miniImageNet from ``root`` (CSV files and ``images/``; see the module docstring).

    Returns:
        :class:`Splits` of uint8 ``[N, 3, img_size, img_size]`` image sets; classes are the
        CSV labels (WordNet ids), sorted.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected a folder holding train.csv, val.csv, test.csv and images/")
    missing = [f"{s}.csv" for s in SPLIT_NAMES if not (root / f"{s}.csv").is_file()]
    if missing:
        raise DataError(f"{root}: missing {', '.join(missing)}; miniImageNet needs train.csv, val.csv "
                        f"and test.csv (Ravi & Larochelle, header 'filename,label') beside images/")
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{images}: no such folder; expected the miniImageNet images there "
                        f"(images/<filename> or images/<label>/<filename>)")
    rows = {s: _read_rows(root / f"{s}.csv") for s in SPLIT_NAMES}
    _check_disjoint(root, rows)
    index = _ImageIndex(images)
    splits = Splits(*[_build_split(root, s, rows[s], index, img_size) for s in SPLIT_NAMES])
    log.info("miniimagenet %s: %d/%d/%d train/val/test classes", root,
             splits.train.num_classes, splits.val.num_classes, splits.test.num_classes)
    return splits
