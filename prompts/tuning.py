"""One episode score, one support-only loss and one tuning loop, for every path that adapts to an episode.

The paths differ only in what they update and how, so the caller passes ``update(loss)``:

- ``--adapt tune / head / full`` (``fewshot.adaptation``): Adam steps on copies of the prompt or of
  (part of) the backbone, :func:`optimiser_step`;
- MAML / first-order MAML / Meta-SGD (:mod:`prompts.meta`): learn2learn's ``learner.adapt``, in the
  inner loop of meta-training and on a clone of the learner at test time;
- :func:`prompts.meta.adapt_prompt`: plain SGD on a copy (for notebooks).

Scoring is a matcher ``m(support [S, D], support_labels [S], query [Q, D]) -> logits [Q, way]`` (the
configured ``--matcher``; ProtoNet's :func:`prototypes.prototype_logits` when none is given).

Support-only loss. A 1-shot episode has no labelled query, and a support image scored against its
own class prototype is a saturated, uninformative loss. So each step scores ``views`` augmented
copies of the support images (:func:`prompts.views.augment`: random affine, shift up to 10% of the
side, rotation up to 10 degrees, scale 0.9-1.1) against the *un-augmented* support; the loss is the
cross-entropy of their labels plus the prompt's :meth:`~prompts.base.Prompt.regulariser`. The views
come from a generator seeded by the support images (and a run seed), so the same episode, seed and
prompt give the same result.

Glossary: S support images, Q queries, V views per support image, C x H x W float images (already
scaled to the model's input), D feature dim.

Example:
    >>> prompt = prompts.create("gpf", backbone)
    >>> opt = torch.optim.Adam(prompt.parameters(), lr=1e-2)
    >>> tune(prompt, backbone, support, support_labels, optimiser_step(opt), steps=5)
    >>> logits = score(prompt, backbone, support, support_labels, query)   # [Q, way]
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from prototypes import prototype_logits

from .base import Prompt
from .views import augment, episode_generator

__all__ = ["Scorer", "score", "support_loss", "tune", "optimiser_step"]

Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""A matcher: ``(support [S, D], support_labels [S], query [Q, D]) -> logits [Q, way]``."""


def score(prompt: Prompt, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor,
          query: torch.Tensor, matcher: Scorer = prototype_logits) -> torch.Tensor:
    """Logits ``[Q, way]`` of float ``query [Q, C, H, W]`` against float ``support [S, C, H, W]``
    (labels ``[S]``): the prompt conditioned on the support set (when it is conditioned), support and
    queries embedded in one forward pass, scored by ``matcher``."""
    prompt.condition(backbone, support, support_labels)
    feats = prompt.embed(backbone, torch.cat([support, query]))
    n = support.shape[0]
    return matcher(feats[:n], support_labels, feats[n:])


def support_loss(prompt: Prompt, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor,
                 matcher: Scorer = prototype_logits, views: int = 2,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The support-only loss (a scalar): ``views`` augmented copies of float ``support [S, C, H, W]``
    (drawn from ``generator``, by default one seeded by the images) scored against the un-augmented
    support, cross-entropy of their labels, plus the prompt's regulariser. ``views = 0``: the support
    images against themselves (saturated, nearly gradient-free at 1 shot)."""
    if views == 0:
        pseudo_queries, targets = support, support_labels
    else:
        generator = generator if generator is not None else episode_generator(support)
        pseudo_queries, targets = augment(support, generator, views), support_labels.repeat(views)
    logits = score(prompt, backbone, support, support_labels, pseudo_queries, matcher)
    return F.cross_entropy(logits, targets) + prompt.regulariser().to(logits)


def tune(prompt: Prompt, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor,
         update: Callable[[torch.Tensor], object], steps: int, matcher: Scorer = prototype_logits, views: int = 2,
         generator: Optional[torch.Generator] = None) -> None:
    """``steps`` times: ``update(support_loss(...))``. ``update`` changes ``prompt`` and/or ``backbone``
    in place (:func:`optimiser_step`, or a learn2learn learner's ``adapt`` with ``prompt`` its
    ``module``); fresh views at every step, from ``generator`` (by default one seeded by ``support``)."""
    generator = generator if generator is not None else episode_generator(support)
    for _ in range(steps):
        update(support_loss(prompt, backbone, support, support_labels, matcher, views, generator))


def optimiser_step(optimiser: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
    """An ``update`` for :func:`tune`: zero the gradients, back-propagate the loss, step ``optimiser``."""
    def update(loss: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return update
