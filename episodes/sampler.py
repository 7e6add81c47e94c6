"""Seeded N-way K-shot Q-query episodes and saved episode banks.

Episode ``i`` of a sampler is a pure function of ``(seed, i)``: it is drawn from its own
``torch.Generator`` seeded from both, so access order, worker processes, ranks and resuming
never change it, and nothing touches the global random state.

Episodes may be drawn within groups of classes (``groups``; :func:`class_groups` resolves
``--episode-groups``): episode ``i`` first draws one group, uniformly among the groups with at
least ``way`` classes, then its ``way`` classes from that group only. For Omniglot the groups are
alphabets, Lake et al. (2015)'s one-shot protocol, where every trial's characters come from one
alphabet (and, as there, an alphabet with fewer characters than ``way`` takes no part).

Glossary: way classes per episode, shot support images per class, query query images per class.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import torch

from .errors import DataError
from .imageset import ImageSet

__all__ = ["Episode", "EpisodeSampler", "EpisodeBank", "episode_seed", "class_groups", "EPISODE_GROUPS"]

EPISODE_GROUPS = ("none", "alphabet")
"""What ``--episode-groups`` may name: ``none`` (classes drawn from the whole split) or ``alphabet``
(each episode's classes from one Omniglot alphabet)."""

_GROUPED_DATASETS = {"alphabet": ("omniglot",)}
"""The datasets whose classes carry each grouping."""


def episode_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed derived from ``(seed, index)`` by hashing (no correlated streams)."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Episode:
    """Indices of one episode into an :class:`ImageSet`.

    Attributes:
        classes: ``[way]`` dataset class of each episode label ``0..way-1``.
        support: ``[way*shot]`` image indices, grouped by class (label ``i // shot``).
        query: ``[way*query]`` image indices, grouped by class (label ``i // query``).
    """

    classes: torch.Tensor
    support: torch.Tensor
    query: torch.Tensor

    @property
    def way(self) -> int:
        return self.classes.numel()

    @property
    def support_labels(self) -> torch.Tensor:
        """``[way*shot]`` episode labels ``0..way-1``."""
        return torch.arange(self.way).repeat_interleave(self.support.numel() // self.way)

    @property
    def query_labels(self) -> torch.Tensor:
        """``[way*query]`` episode labels ``0..way-1``."""
        return torch.arange(self.way).repeat_interleave(self.query.numel() // self.way)


class EpisodeSampler:
    """Draws seeded episodes from an :class:`ImageSet`.

    Args:
        images: the class pool to sample from.
        way: classes per episode.
        shot: support images per class.
        query: query images per class (disjoint from the support images).
        seed: base seed; episode ``i`` depends on ``(seed, i)`` only.
        groups: ``{group name: [class index, ...]}`` (e.g. :func:`class_groups`): every episode's
            classes come from one group, drawn uniformly among the groups with at least ``way``
            classes; the smaller ones are left out with a warning naming them, and a
            :class:`DataError` names every group when none is large enough. None: the whole set.

    Example:
        >>> sampler = EpisodeSampler(imageset, way=5, shot=1, query=15, seed=0)
        >>> ep = sampler[0]                      # the same episode every time
        >>> support = imageset.as_float(ep.support)   # [5, C, H, W]
    """

    def __init__(self, images: ImageSet, way: int, shot: int, query: int, seed: int = 0,
                 groups: Optional[Mapping[str, Sequence[int]]] = None):
        for name, v, lo in (("way", way, 2), ("shot", shot, 1), ("query", query, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if way > images.num_classes:
            raise DataError(f"{images.name}: way={way} needs {way} classes but the set has only "
                            f"{images.num_classes}; use --way {images.num_classes} or fewer")
        sizes = images.class_sizes()
        need = shot + query
        small = torch.nonzero(sizes < need).flatten().tolist()
        if small:
            c = small[0]
            more = f" ({len(small)} classes in all)" if len(small) > 1 else ""
            raise DataError(f"{images.name}: class {images.class_names[c]!r} has {int(sizes[c])} images, "
                            f"fewer than shot+query = {shot}+{query} = {need}{more}; lower --shot or --query")
        self.images, self.way, self.shot, self.query, self.seed = images, way, shot, query, int(seed)
        self.groups = None if groups is None else _eligible_groups(images, groups, way)

    def __getitem__(self, index: int) -> Episode:
        g = torch.Generator().manual_seed(episode_seed(self.seed, index))
        if self.groups is None:
            classes = torch.randperm(self.images.num_classes, generator=g)[: self.way]
        else:  # one group, then way of its classes
            group = self.groups[int(torch.randint(len(self.groups), (1,), generator=g))]
            classes = group[torch.randperm(group.numel(), generator=g)[: self.way]]
        support, query = [], []
        for c in classes.tolist():
            pool = self.images.indices_of(c)
            pick = pool[torch.randperm(pool.numel(), generator=g)[: self.shot + self.query]]
            support.append(pick[: self.shot])
            query.append(pick[self.shot:])
        return Episode(classes, torch.cat(support), torch.cat(query))

    def __iter__(self) -> Iterator[Episode]:
        i = 0
        while True:
            yield self[i]
            i += 1

    def bank(self, n: int) -> "EpisodeBank":
        """The first ``n`` episodes, frozen into an :class:`EpisodeBank`."""
        if n < 1:
            raise ValueError(f"an episode bank needs at least 1 episode, got {n}")
        eps = [self[i] for i in range(n)]
        return EpisodeBank(
            classes=torch.stack([e.classes for e in eps]), support=torch.stack([e.support for e in eps]),
            query=torch.stack([e.query for e in eps]), seed=self.seed, fingerprint=self.images.fingerprint,
            dataset=self.images.name)


def _eligible_groups(images: ImageSet, groups: Mapping[str, Sequence[int]], way: int) -> List[torch.Tensor]:
    """The ``[n_g]`` class indices of every group with at least ``way`` classes, in the mapping's order."""
    sizes = {name: len(classes) for name, classes in groups.items()}
    for name, classes in groups.items():
        bad = [c for c in classes if not 0 <= int(c) < images.num_classes]
        if bad or len(set(map(int, classes))) != len(classes):
            raise ValueError(f"{images.name}: group {name!r} must list distinct class indices in "
                             f"0..{images.num_classes - 1}, got {list(classes)}")
    small = [name for name, n in sizes.items() if n < way]
    listing = ", ".join(f"{name} ({n})" for name, n in sizes.items())
    if len(small) == len(sizes):
        raise DataError(f"{images.name}: {way}-way episodes within one group need a group of at least {way} classes; "
                        f"the groups have {listing or 'none'}; lower --way or use --episode-groups none")
    if small:
        warnings.warn(f"{images.name}: {', '.join(f'{name} ({sizes[name]} classes)' for name in small)} "
                      f"{'has' if len(small) == 1 else 'have'} fewer classes than way = {way} and "
                      f"{'takes' if len(small) == 1 else 'take'} no part in "
                      f"{way}-way within-group episodes", stacklevel=3)
    return [torch.as_tensor(list(classes), dtype=torch.long) for name, classes in groups.items() if sizes[name] >= way]


def class_groups(images: ImageSet, by: str, dataset: str) -> Optional[Dict[str, List[int]]]:
    """The class groups ``--episode-groups by`` names for ``images`` of ``dataset``.

    Args:
        images: one split of the dataset.
        by: one of :data:`EPISODE_GROUPS`; ``"none"`` gives None (episodes from the whole split).
        dataset: the registered dataset the images come from; a grouping its classes do not carry is refused.

    Returns:
        ``{group name: [class index, ...]}`` for :class:`EpisodeSampler`'s ``groups``, or None.
    """
    if by not in EPISODE_GROUPS:
        raise ValueError(f"episode groups must be one of {', '.join(EPISODE_GROUPS)}, got {by!r}")
    if by == "none":
        return None
    if dataset not in _GROUPED_DATASETS[by]:
        raise DataError(f"--episode-groups {by}: dataset {dataset!r} has no {by} of its classes; "
                        f"only {', '.join(_GROUPED_DATASETS[by])} does")
    from .omniglot import alphabet_groups  # the only grouping so far

    return alphabet_groups(images)


@dataclass(frozen=True)
class EpisodeBank:
    """A fixed list of episodes (indices only), tied to one dataset by its fingerprint.

    Every method compared on a bank is scored on identical episodes. Stored tensors:
    ``classes [E, way]``, ``support [E, way*shot]``, ``query [E, way*query]``.
    """

    classes: torch.Tensor
    support: torch.Tensor
    query: torch.Tensor
    seed: int
    fingerprint: str
    dataset: str = ""

    def __len__(self) -> int:
        return self.classes.shape[0]

    def __getitem__(self, i: int) -> Episode:
        return Episode(self.classes[i], self.support[i], self.query[i])

    def __iter__(self) -> Iterator[Episode]:
        return (self[i] for i in range(len(self)))

    @property
    def way(self) -> int:
        return self.classes.shape[1]

    @property
    def shot(self) -> int:
        return self.support.shape[1] // self.way

    @property
    def query_per_class(self) -> int:
        return self.query.shape[1] // self.way

    @property
    def bank_id(self) -> str:
        """Content hash of the bank: two evaluations are comparable iff their bank_id match."""
        h = hashlib.sha256(self.fingerprint.encode())
        for t in (self.classes, self.support, self.query):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        return {"episodes": len(self), "way": self.way, "shot": self.shot, "query": self.query_per_class,
                "seed": self.seed, "dataset": self.dataset, "fingerprint": self.fingerprint, "bank_id": self.bank_id}

    def check(self, images: ImageSet) -> None:
        """Raise :class:`DataError` unless this bank was drawn from ``images``."""
        if images.fingerprint != self.fingerprint:
            raise DataError(f"episode bank was drawn from data with fingerprint {self.fingerprint} "
                            f"({self.dataset or 'unknown'}), but {images.name} has fingerprint {images.fingerprint}; "
                            "make a new bank for this data")

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank atomically as a ``.pt`` file of plain tensors plus JSON metadata."""
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save({"classes": self.classes, "support": self.support, "query": self.query,
                    "meta": json.dumps({"seed": self.seed, "fingerprint": self.fingerprint, "dataset": self.dataset})}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, images: ImageSet | None = None) -> "EpisodeBank":
        """Read a bank saved by :meth:`save`; with ``images``, also check it belongs to them. Whatever
        goes wrong (no file, an empty, text, truncated or foreign file, other contents) is one
        :class:`DataError` line naming the file. (``episodes`` may not import ``models``, whose
        ``read_checkpoint`` reads every other ``.pt`` file; this is the same ``weights_only`` load.)"""
        if not os.path.isfile(path):
            raise DataError(f"{path}: episode bank file not found" if not os.path.exists(path) else
                            f"{path}: not a fewshot episode bank (a folder, not a file)")
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: not a fewshot episode bank (the file is empty, 0 bytes)")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(d["meta"])
            bank = cls(d["classes"], d["support"], d["query"], int(meta["seed"]), str(meta["fingerprint"]),
                       str(meta.get("dataset", "")))
        except (MemoryError, RecursionError):
            raise
        except Exception as e:  # torch's weights-only unpickler raises many kinds on foreign bytes
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
            raise DataError(f"{path}: not a fewshot episode bank ({e.__class__.__name__}"
                            f"{': ' + first.split('. ')[0] if first else ''})") from None
        if images is not None:
            try:
                bank.check(images)
            except DataError as e:
                raise DataError(f"{path}: {e}") from None
        return bank
