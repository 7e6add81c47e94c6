"""Meta-learned prompt initialisation (MAML, first-order MAML, Meta-SGD via ``learn2learn``).

Only the prompt's parameters are meta-learned; the backbone stays frozen (``requires_grad``
False) and *outside* the wrapped module, reached through the prompt's hooks in the forward pass.
Per task: ``learner = meta.clone()``, ``learner.adapt(support_loss)`` for ``inner_steps``, then the
query loss of the adapted learner; the mean query loss over ``meta_batch`` tasks updates the meta
prompt (Adam). At test time ``fewshot.prompting.PromptedModel`` clones the learner per episode and
``adapt()``s the clone on the support set only (Meta-SGD with its learned rates);
:func:`adapt_prompt` is the same with plain SGD on a copy, for notebooks.

``learn2learn`` is imported lazily (it prints gym's notice on import), only in :func:`wrap`.

Loss: prototype classifier on pooled prompted embeddings, logits ``-||q - c_k||^2``; the support
(inner-loop) loss classifies augmented views of the support images against the prototypes of the
un-augmented support (:mod:`prompts.views`), the same kind of loss as ``--adapt tune``.
"""
from __future__ import annotations

import copy
import contextlib
from typing import Iterable, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import Prompt, class_prototypes
from .views import augment, episode_generator

__all__ = ["META_INITS", "wrap", "embed", "episode_loss", "support_loss", "meta_step", "meta_train",
           "adapt_prompt", "autocast"]

META_INITS = ("none", "maml", "fomaml", "metasgd")


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on ``device`` (cuda or cpu) when ``amp``; a no-op context otherwise."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def wrap(prompt: Prompt, method: str, inner_lr: float) -> nn.Module:
    """Wrap ``prompt`` in a learn2learn meta-learner: ``maml`` (second order), ``fomaml`` (first
    order) or ``metasgd`` (learned per-parameter inner rates, initialised to ``inner_lr``)."""
    if method not in META_INITS or method == "none":
        raise ValueError(f"meta-init must be one of {', '.join(m for m in META_INITS if m != 'none')}, got {method!r}")
    if not inner_lr > 0:
        raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
    import learn2learn as l2l  # lazy: prints gym's notice on import
    if method == "metasgd":
        return l2l.algorithms.MetaSGD(prompt, lr=inner_lr, first_order=False)
    return l2l.algorithms.MAML(prompt, lr=inner_lr, first_order=(method == "fomaml"), allow_unused=True)


def embed(prompt: Prompt, backbone: nn.Module, images: torch.Tensor,
          support: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Pooled prompted embeddings ``[B, D]`` of float images ``[B, C, H, W]``; a conditioned prompt is
    first given ``support = (support_images [S, C, H, W], labels [S])``."""
    if prompt.conditioned:
        if support is None:
            raise ValueError(f"prompt {prompt.name!r} is support-conditioned: pass the support set")
        with torch.no_grad():
            s_nodes = backbone.forward_features(support[0])
        prompt.set_episode(s_nodes, support[1])
    nodes, mask = prompt.forward_nodes(backbone, images)
    pooled = backbone.forward_head(nodes, pre_logits=True, node_mask=mask)
    return pooled.float() if pooled.dtype in (torch.float16, torch.bfloat16) else pooled


def _logits(query_emb: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    # written out rather than torch.cdist, whose double backward MAML's second-order term needs
    return -(query_emb.pow(2).sum(1, keepdim=True) - 2 * query_emb @ protos.T + protos.pow(2).sum(1))


def support_loss(prompt, backbone, s_img, s_lab, views: int = 2,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Inner-loop loss on the support set only: ``views`` augmented copies of the support images
    ``[S, C, H, W]`` (:func:`prompts.views.augment`, drawn from ``generator``, by default one seeded by
    the images) classified against the prototypes of the un-augmented support. ``views = 0``: the
    support images against their own prototypes (saturated, nearly gradient-free, for 1-shot)."""
    s_emb = embed(prompt, backbone, s_img, (s_img, s_lab))
    protos = class_prototypes(s_emb, s_lab)
    if views == 0:
        return F.cross_entropy(_logits(s_emb, protos), s_lab)
    generator = generator or episode_generator(s_img)
    q_emb = embed(prompt, backbone, augment(s_img, generator, views), (s_img, s_lab))
    return F.cross_entropy(_logits(q_emb, protos), s_lab.repeat(views))


def episode_loss(prompt, backbone, s_img, s_lab, q_img, q_lab) -> Tuple[torch.Tensor, torch.Tensor]:
    """Query loss and accuracy of the prototype classifier built from the prompted support."""
    s_emb = embed(prompt, backbone, s_img, (s_img, s_lab))
    q_emb = embed(prompt, backbone, q_img, (s_img, s_lab))
    logits = _logits(q_emb, class_prototypes(s_emb, s_lab))
    return F.cross_entropy(logits, q_lab), (logits.argmax(1) == q_lab).float().mean()


def _module(learner: nn.Module) -> Prompt:
    return learner.module if hasattr(learner, "module") else learner


def meta_step(meta: nn.Module, backbone: nn.Module, tasks: Sequence[Tuple[torch.Tensor, ...]],
              inner_steps: int, device="cpu", amp: bool = False) -> Tuple[torch.Tensor, float]:
    """Back-propagate the mean query loss over ``tasks`` (each ``(s_img, s_lab, q_img, q_lab)``, float
    images) after ``inner_steps`` adaptation steps of a clone of ``meta``. Gradients accumulate in
    ``meta``'s parameters; the caller steps the optimiser. Returns ``(mean loss, mean accuracy)``."""
    total, acc = 0.0, 0.0
    for task in tasks:
        s_img, s_lab, q_img, q_lab = (t.to(device) for t in task)
        learner = meta.clone()
        generator = episode_generator(s_img)  # fresh views at every inner step, the same on every run
        with autocast(device, amp):
            for _ in range(inner_steps):
                learner.adapt(support_loss(_module(learner), backbone, s_img, s_lab, generator=generator))
            loss, a = episode_loss(_module(learner), backbone, s_img, s_lab, q_img, q_lab)
        (loss / len(tasks)).backward()
        total += float(loss.detach()) / len(tasks)
        acc += float(a) / len(tasks)
    return torch.tensor(total), acc


def meta_train(prompt: Prompt, backbone: nn.Module, tasks: Iterable[Tuple[torch.Tensor, ...]], method: str,
               inner_steps: int = 1, inner_lr: float = 0.1, meta_batch: int = 4, meta_lr: float = 1e-2,
               iterations: int = 100, device="cpu", amp: bool = False) -> Tuple[Prompt, list]:
    """Meta-learn ``prompt``'s initialisation in place over ``iterations`` outer steps, each on
    ``meta_batch`` tasks drawn from the iterator ``tasks``. Returns ``(prompt, losses per step)``."""
    if inner_steps < 1 or meta_batch < 1 or iterations < 0:
        raise ValueError("inner_steps and meta_batch must be >= 1 and iterations >= 0")
    for p in backbone.parameters():
        p.requires_grad_(False)
    meta = wrap(prompt, method, inner_lr).to(device)
    opt = torch.optim.Adam(meta.parameters(), lr=meta_lr)
    it: Iterator = iter(tasks)
    losses = []
    for _ in range(iterations):
        batch = [next(it) for _ in range(meta_batch)]
        opt.zero_grad(set_to_none=True)
        loss, _ = meta_step(meta, backbone, batch, inner_steps, device, amp)
        opt.step()
        losses.append(float(loss))
    return prompt, losses


def adapt_prompt(prompt: Prompt, backbone: nn.Module, s_img: torch.Tensor, s_lab: torch.Tensor,
                 steps: int, lr: float, device="cpu", amp: bool = False) -> Prompt:
    """A copy of ``prompt`` tuned by ``steps`` plain SGD steps on the support loss (support only);
    ``prompt`` itself is untouched."""
    tuned = copy.deepcopy(prompt).to(device)
    params = [p for p in tuned.parameters() if p.requires_grad]
    if steps == 0 or not params:
        return tuned
    opt = torch.optim.SGD(params, lr=lr)
    s_img, s_lab = s_img.to(device), s_lab.to(device)
    generator = episode_generator(s_img)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = support_loss(tuned, backbone, s_img, s_lab, generator=generator)
        loss.backward()
        opt.step()
    return tuned
