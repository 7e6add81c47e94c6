"""Datasets and episodes.

Loaders decode images once into an :class:`ImageSet` (uint8 ``[N, C, H, W]``); the
:class:`EpisodeSampler` draws seeded N-way K-shot Q-query episodes as indices; an
:class:`EpisodeBank` freezes a list of episodes so that every method is scored on the same ones.

Glossary: N images, C x H x W image, way / shot / query counts per episode.
"""
from .catalog import DatasetInfo, Splits, dataset_info, list_datasets, register_dataset
from .datasets import load_splits
from .errors import DataError
from .imageset import ImageSet, to_input
from .sampler import Episode, EpisodeBank, EpisodeSampler, episode_seed

__all__ = ["DataError", "DatasetInfo", "Episode", "EpisodeBank", "EpisodeSampler", "ImageSet", "Splits",
           "dataset_info", "episode_seed", "list_datasets", "load_splits", "register_dataset", "to_input"]
