"""The project's data sets as learn2learn ``MetaDataset`` / ``TaskDataset`` (learn2learn imported lazily).

A task has ``way`` classes with ``shot + query`` images each, built with learn2learn's task
transforms ``NWays``, ``KShots``, ``LoadData``, ``RemapLabels`` and ``ConsecutiveLabels``.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["ImageSetDataset", "meta_dataset", "task_dataset"]


class ImageSetDataset(Dataset):
    """An ``ImageSet`` as a map-style data set: ``ds[i] -> (uint8 image [C, H, W], int label)``."""

    def __init__(self, imageset):
        self.images = imageset.images
        self.labels = [int(x) for x in torch.as_tensor(imageset.labels).tolist()]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def meta_dataset(imageset):
    """``learn2learn.data.MetaDataset`` over ``imageset`` (labels -> indices maps)."""
    import learn2learn as l2l  # lazy: prints gym's notice on import
    ds = ImageSetDataset(imageset)
    return l2l.data.MetaDataset(ds, labels_to_indices=_labels_to_indices(ds.labels))


def _labels_to_indices(labels):
    out = {}
    for i, y in enumerate(labels):
        out.setdefault(y, []).append(i)
    return out


def task_dataset(imageset, way: int, shot: int, query: int, num_tasks: int = -1):
    """``learn2learn.data.TaskDataset`` of ``way``-way tasks with ``shot + query`` images per class;
    labels remapped to ``0..way-1``."""
    if way < 1 or shot < 1 or query < 0:
        raise ValueError(f"way and shot must be >= 1 and query >= 0, got {way}, {shot}, {query}")
    import learn2learn as l2l
    from learn2learn.data.transforms import ConsecutiveLabels, KShots, LoadData, NWays, RemapLabels
    md = meta_dataset(imageset)
    if len(md.labels) < way:
        raise ValueError(f"{way}-way tasks need {way} classes, the data set has {len(md.labels)}")
    transforms = [NWays(md, way), KShots(md, shot + query), LoadData(md), RemapLabels(md), ConsecutiveLabels(md)]
    return l2l.data.TaskDataset(md, task_transforms=transforms, num_tasks=num_tasks)
