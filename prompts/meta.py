"""Meta-learned prompt initialisation (MAML, first-order MAML, Meta-SGD via ``learn2learn``).

Only the prompt's parameters are meta-learned; the backbone stays frozen (``requires_grad``
False) and *outside* the wrapped module, reached through the prompt's hooks in the forward pass.
Per task: ``learner = meta.clone()``, ``inner_steps`` of ``learner.adapt`` on the support-only loss,
then the query loss of the adapted learner; the mean query loss over ``meta_batch`` tasks updates
the meta prompt (Adam). At test time ``fewshot.adaptation.MetaTune`` clones the learner per episode
and adapts the clone on the support set only (Meta-SGD with its learned rates) through the same
tuning loop; :func:`adapt_prompt` is the same with plain SGD on a copy, for notebooks.

Both losses come from :mod:`prompts.tuning` (one score, one support-only loss, one loop) and score
with ``matcher``: the configured ``--matcher`` in the engine, ProtoNet's logits
(:func:`prototypes.prototype_logits`) by default. Mixed precision is the caller's: pass
``autocast``, a factory of the context the forward passes run under (the engine passes
``fewshot.evaluation.autocast_for``).

``learn2learn`` is imported lazily (it prints gym's notice on import), only in :func:`wrap`.

Glossary: S support images, Q queries, C x H x W float images (already scaled to the model's input).
"""
from __future__ import annotations

import contextlib
import copy
import functools
from typing import Callable, ContextManager, Iterable, Iterator, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from prototypes import prototype_logits

from .base import Prompt, freeze
from .tuning import Scorer, optimiser_step, score, tune

__all__ = ["META_INITS", "wrap", "episode_loss", "meta_step", "meta_train", "train_learner", "adapt_prompt"]

META_INITS = ("none", "maml", "fomaml", "metasgd")

Autocast = Callable[[], ContextManager]


def wrap(prompt: Prompt, method: str, inner_lr: float) -> nn.Module:
    """Wrap ``prompt`` in a learn2learn meta-learner: ``maml`` (second order), ``fomaml`` (first
    order) or ``metasgd`` (learned per-parameter inner rates, initialised to ``inner_lr``)."""
    if method not in META_INITS or method == "none":
        raise ValueError(f"meta-init must be one of {', '.join(m for m in META_INITS if m != 'none')}, got {method!r}")
    if not inner_lr > 0:
        raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
    import learn2learn as l2l  # lazy: prints gym's notice on import
    if method == "metasgd":
        return _meta_sgd()(prompt, lr=inner_lr, first_order=False)
    return l2l.algorithms.MAML(prompt, lr=inner_lr, first_order=(method == "fomaml"), allow_unused=True)


@functools.lru_cache(maxsize=None)
def _meta_sgd():
    """learn2learn's ``MetaSGD`` whose ``adapt`` leaves alone the parameters the loss does not reach
    (a DAM-VP cluster no image of the task is routed to), as ``MAML(allow_unused=True)`` does; the
    library's ``adapt`` raises on them. ``clone`` keeps the class."""
    import learn2learn as l2l
    from learn2learn.algorithms.meta_sgd import meta_sgd_update
    from learn2learn.utils import clone_module, clone_parameters

    class MetaSGD(l2l.algorithms.MetaSGD):
        def clone(self):
            return MetaSGD(clone_module(self.module), lrs=clone_parameters(self.lrs), first_order=self.first_order)

        def adapt(self, loss, first_order=None):
            second_order = not (self.first_order if first_order is None else first_order)
            grads = torch.autograd.grad(loss, list(self.module.parameters()), retain_graph=second_order,
                                        create_graph=second_order, allow_unused=True)
            self.module = meta_sgd_update(self.module, self.lrs, grads)  # a None gradient: no step

    return MetaSGD


def episode_loss(prompt: Prompt, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor,
                 query: torch.Tensor, query_labels: torch.Tensor, matcher: Scorer = prototype_logits
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Query cross-entropy and accuracy (scalars) of ``matcher`` on the prompted embeddings of float
    ``support [S, C, H, W]`` and ``query [Q, C, H, W]``."""
    logits = score(prompt, backbone, support, support_labels, query, matcher)
    return F.cross_entropy(logits, query_labels), (logits.argmax(1) == query_labels).float().mean()


def meta_step(meta: nn.Module, backbone: nn.Module, tasks: Sequence[Tuple[torch.Tensor, ...]], inner_steps: int,
              matcher: Scorer = prototype_logits, autocast: Autocast = contextlib.nullcontext
              ) -> Tuple[torch.Tensor, float]:
    """Back-propagate the mean query loss over ``tasks`` (each ``(support, support_labels, query,
    query_labels)``, float images on the backbone's device) after ``inner_steps`` adaptation steps of
    a clone of ``meta``. Gradients accumulate in ``meta``'s parameters; the caller steps the
    optimiser. Returns ``(mean loss, mean accuracy)``."""
    total, acc = 0.0, 0.0
    for support, support_labels, query, query_labels in tasks:
        learner = meta.clone()
        with autocast():  # fresh views at every inner step, the same on every run
            tune(learner.module, backbone, support, support_labels, learner.adapt, inner_steps, matcher)
            loss, a = episode_loss(learner.module, backbone, support, support_labels, query, query_labels, matcher)
        (loss / len(tasks)).backward()
        total += float(loss.detach()) / len(tasks)
        acc += float(a) / len(tasks)
    return torch.tensor(total), acc


def meta_train(prompt: Prompt, backbone: nn.Module, tasks: Iterable[Tuple[torch.Tensor, ...]], method: str,
               inner_steps: int = 1, inner_lr: float = 0.1, meta_batch: int = 4, meta_lr: float = 1e-2,
               iterations: int = 100, device="cpu", matcher: Scorer = prototype_logits,
               autocast: Autocast = contextlib.nullcontext) -> Tuple[Prompt, list]:
    """Meta-learn ``prompt``'s initialisation in place over ``iterations`` outer steps, each on
    ``meta_batch`` tasks drawn from the iterator ``tasks`` (moved to ``device``). Returns
    ``(prompt, losses per step)``; the wrapper is dropped (Meta-SGD's learned rates with it: use
    :func:`train_learner` to keep them)."""
    meta = wrap(prompt, method, inner_lr)
    losses = train_learner(meta, backbone, tasks, inner_steps, meta_batch, meta_lr, iterations, device, matcher,
                           autocast)
    return prompt, losses


def train_learner(meta: nn.Module, backbone: nn.Module, tasks: Iterable[Tuple[torch.Tensor, ...]],
                  inner_steps: int = 1, meta_batch: int = 4, meta_lr: float = 1e-2, iterations: int = 100,
                  device="cpu", matcher: Scorer = prototype_logits,
                  autocast: Autocast = contextlib.nullcontext) -> list:
    """:func:`meta_train` on a learner made by :func:`wrap` (e.g. ``PromptedModel.learner``), which keeps
    what the wrapper learns besides the prompt (Meta-SGD's per-parameter rates) for test-time adaptation.
    Returns the losses per outer step."""
    if inner_steps < 1 or meta_batch < 1 or iterations < 0:
        raise ValueError("inner_steps and meta_batch must be >= 1 and iterations >= 0")
    freeze(backbone)
    meta = meta.to(device)
    opt = torch.optim.Adam(meta.parameters(), lr=meta_lr)
    it: Iterator = iter(tasks)
    losses = []
    for _ in range(iterations):
        batch = [tuple(t.to(device) for t in next(it)) for _ in range(meta_batch)]
        opt.zero_grad(set_to_none=True)
        loss, _ = meta_step(meta, backbone, batch, inner_steps, matcher, autocast)
        opt.step()
        losses.append(float(loss))
    return losses


def adapt_prompt(prompt: Prompt, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor,
                 steps: int, lr: float, device="cpu", matcher: Scorer = prototype_logits,
                 autocast: Autocast = contextlib.nullcontext) -> Prompt:
    """A copy of ``prompt`` tuned by ``steps`` plain SGD steps of the support-only loss on float
    ``support [S, C, H, W]``; ``prompt`` itself is untouched."""
    tuned = copy.deepcopy(prompt).to(device)
    params = [p for p in tuned.parameters() if p.requires_grad]
    if steps == 0 or not params:
        return tuned
    support, support_labels = support.to(device), support_labels.to(device)
    with autocast():
        tune(tuned, backbone, support, support_labels, optimiser_step(torch.optim.SGD(params, lr=lr)), steps, matcher)
    return tuned
