"""learn2learn TaskDataset over the project's data: same class and shot counts as EpisodeSampler."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from episodes.datasets import load_splits
from episodes.l2l import task_dataset
from episodes.sampler import EpisodeSampler

WAY, SHOT, QUERY = 5, 1, 3


@pytest.fixture(scope="module")
def imageset():
    return load_splits("glyphs").test


def test_tasks_have_the_samplers_class_and_shot_counts(imageset):
    tasks = task_dataset(imageset, WAY, SHOT, QUERY, num_tasks=5)
    episode = EpisodeSampler(imageset, WAY, SHOT, QUERY, seed=0)[0]
    own = Counter(episode.support_labels.tolist()) + Counter(episode.query_labels.tolist())
    for i in range(3):
        images, labels = tasks[i]
        assert images.shape[0] == WAY * (SHOT + QUERY) == episode.support.numel() + episode.query.numel()
        assert images.shape[1:] == imageset.images.shape[1:]
        assert Counter(torch.as_tensor(labels).tolist()) == own          # 0..way-1, shot+query each
        originals = {int(imageset.labels[(imageset.images == img).flatten(1).all(1)][0]) for img in images}
        assert len(originals) == WAY


def test_too_many_ways_is_a_clear_error(imageset):
    with pytest.raises(ValueError, match="need"):
        task_dataset(imageset, 10_000, 1, 1)
