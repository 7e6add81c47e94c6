"""Evaluation on a fixed :class:`~episodes.EpisodeBank`: mean accuracy and its 95% confidence interval.

When the model's embeddings do not depend on the episode, every distinct image of the bank is
embedded once and episodes are scored by indexing (in groups, by the matcher's ``bank_scorer``
when it has one, e.g. DN4); otherwise each episode runs the whole model. Both paths give the same
per-episode accuracies.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from episodes import EpisodeBank, ImageSet
from episodes.augment import augmented_copies

from .distributed import gather_in_order, shard

__all__ = ["EvalResult", "evaluate", "summarise", "autocast_for"]


@dataclass(frozen=True)
class EvalResult:
    """Per-episode accuracies ``[E]`` and their summary."""

    accuracies: torch.Tensor
    way: int
    shot: int
    query: int
    bank_id: str

    @property
    def episodes(self) -> int:
        return self.accuracies.numel()

    @property
    def mean(self) -> float:
        return float(self.accuracies.double().mean())

    @property
    def ci95(self) -> float:
        return summarise(self.accuracies)[1]

    def as_dict(self, prefix: str = "test") -> dict:
        return {f"{prefix}_acc": self.mean, f"{prefix}_ci95": self.ci95, f"{prefix}_episodes": self.episodes,
                f"{prefix}_way": self.way, f"{prefix}_shot": self.shot, f"{prefix}_query": self.query,
                f"{prefix}_bank_id": self.bank_id}

    def __str__(self) -> str:
        return (f"{100 * self.mean:.2f} +- {100 * self.ci95:.2f} % ({self.way}-way {self.shot}-shot, "
                f"{self.query} queries/class, {self.episodes} episodes, bank {self.bank_id})")


def summarise(accuracies: torch.Tensor) -> tuple:
    """``(mean, half-width of the 95% CI = 1.96 * std / sqrt(n))``; std with Bessel's correction."""
    a = accuracies.double()
    n = a.numel()
    std = float(a.std(unbiased=True)) if n > 1 else 0.0
    return float(a.mean()), 1.96 * std / math.sqrt(n)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU: the one mixed-precision policy, used by evaluation, the
    training steps and (passed in as a factory) the meta step of :mod:`prompts.meta`."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.inference_mode()
def _embed_all(model, images: torch.Tensor, idx: torch.Tensor, device, batch_size: int, progress: bool) -> torch.Tensor:
    """``model.embed`` of the uint8 ``images[idx]`` in batches -> float32 ``[len(idx), ...]``."""
    out = []
    for start in tqdm(range(0, idx.numel(), batch_size), desc="embed", disable=not progress, leave=False):
        batch = images[idx[start:start + batch_size]].to(device)
        with autocast_for(device):
            out.append(model.embed(batch).float())
    return torch.cat(out)


_BANK_GROUP = 50
"""Episodes per call of a matcher's bank scorer (the progress bar's step)."""


def _support_copies(model, images: ImageSet, bank: EpisodeBank, episodes: slice, feats: torch.Tensor,
                    where: torch.Tensor, device, batch_size: int, progress: bool):
    """``(feats, support_rows)``: ``feats`` with the embedded ``support_augment`` copies of every support image
    of ``episodes`` appended (none without them), and ``support_rows(support [E, way*shot], way) -> [E, way*S']``
    mapping a bank's support indices (grouped by class) to rows of it, each class's copies after its shots."""
    copies = int(getattr(model, "support_augment", 0) or 0)
    if not copies:
        return feats, lambda support, way: where[support]
    ids = torch.unique(bank.support[episodes].flatten())
    augmented = augmented_copies(images.images[ids], copies)  # [V * n, C, H, W], copy-major
    extra = [_embed_all(model, augmented, torch.arange(len(augmented)), device, batch_size, progress)]
    row = torch.full((len(images),), -1, dtype=torch.long)
    row[ids] = torch.arange(ids.numel())
    row, base, n = row.to(device), len(feats), ids.numel()

    def support_rows(support: torch.Tensor, way: int) -> torch.Tensor:
        e = support.shape[0]
        parts = [where[support]] + [base + v * n + row[support] for v in range(copies)]
        return torch.cat([p.view(e, way, -1) for p in parts], dim=-1).flatten(1)
    return torch.cat([feats] + extra), support_rows


def _score_bank(score, bank: EpisodeBank, mine: range, where: torch.Tensor, support_rows, device,
                progress: bool) -> torch.Tensor:
    """Per-episode accuracies ``[len(mine)]`` from ``score(support [E, S], query [E, Q], way) -> [E, Q, way]``,
    the bank's query indices mapped to rows of the embedded features by ``where``, its support by
    ``support_rows`` (:func:`_support_copies`)."""
    accs = [torch.empty(0)]
    for start in tqdm(range(mine.start, mine.stop, _BANK_GROUP), desc="evaluate", disable=not progress, leave=False):
        group = slice(start, min(start + _BANK_GROUP, mine.stop))
        logits = score(support_rows(bank.support[group].to(device), bank.way), where[bank.query[group].to(device)],
                       bank.way)
        query_labels = bank[group.start].query_labels.to(device)  # the same in every episode of a bank
        accs.append((logits.argmax(-1) == query_labels).float().mean(-1).cpu())
    return torch.cat(accs)


@torch.inference_mode()
def evaluate(model, images: ImageSet, bank: EpisodeBank, device: torch.device | str = "cpu",
             batch_size: int = 256, progress: bool = False, per_episode: bool | None = None) -> EvalResult:
    """Score ``model`` on every episode of ``bank`` (drawn from ``images``).

    Args:
        per_episode: force the per-episode path (True) or the embed-once path (False);
            None picks embed-once when ``model.episode_independent``.
    """
    bank.check(images)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    if per_episode is None:
        per_episode = not model.episode_independent
    mine = shard(len(bank))  # under torchrun each rank scores its share; gathered in bank order below
    accs = torch.empty(len(mine))
    try:
        if not per_episode:
            sl = slice(mine.start, mine.stop)
            ids = torch.unique(torch.cat([bank.support[sl].flatten(), bank.query[sl].flatten()]))
            feats = _embed_all(model, images.images, ids, device, batch_size, progress)
            where = torch.full((len(images),), -1, dtype=torch.long)
            where[ids] = torch.arange(ids.numel())
            where = where.to(device)
            feats, support_rows = _support_copies(model, images, bank, sl, feats, where, device, batch_size, progress)
        scorer = None if per_episode else getattr(model.matcher, "bank_scorer", None)
        if scorer is not None:  # the matcher scores groups of episodes by index into feats (DN4)
            accs = _score_bank(scorer(feats), bank, mine, where, support_rows, device, progress)
        else:
            for k, i in enumerate(tqdm(mine, desc="evaluate", disable=not progress, leave=False)):
                ep = bank[i]
                s_lab = ep.support_labels.to(device)
                q_lab = ep.query_labels.to(device)
                if per_episode:
                    with autocast_for(device):
                        logits = model(images.images[ep.support].to(device), s_lab,
                                       images.images[ep.query].to(device))
                else:
                    rows = support_rows(ep.support[None].to(device), bank.way)[0]
                    s_lab = torch.arange(bank.way, device=device).repeat_interleave(rows.numel() // bank.way)
                    logits = model.matcher(feats[rows], s_lab, feats[where[ep.query.to(device)]])
                accs[k] = (logits.argmax(-1) == q_lab).float().mean().cpu()
    finally:
        model.train(was_training)
    accs = gather_in_order(accs, len(bank))
    return EvalResult(accs, bank.way, bank.shot, bank.query_per_class, bank.bank_id)
