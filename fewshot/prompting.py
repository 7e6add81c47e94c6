"""PromptedModel: a frozen backbone adapted to each episode by a prompt (or by a tuned baseline).

Same interface as :class:`~fewshot.model.EpisodicModel` (``embed``, ``forward(s_img, s_lab, q_img)
-> logits [Q, way]``, ``episode_independent``, ``matcher``), so training and evaluation use it
unchanged. Ways to adapt to an episode (``adapt``):

- ``amortised``: the prompt is applied as it is; a support-conditioned prompt
  (``prompt.conditioned``) first generates its prompt from the episode's support set in one
  forward pass. Meta-training (``fewshot train``) trains the prompt / generator episodically on
  the base classes with the backbone frozen.
- ``tune``: test-time tuning: per episode, a copy of the prompt takes ``adapt_steps`` Adam steps
  (lr ``adapt_lr``) on a support-only loss, the backbone frozen, then scores the queries. In
  training mode (meta-training) the prompt is used as in ``amortised``: training learns the
  initialisation the test episodes start tuning from.
- ``head``: the same tuning loop on a copy of the backbone's last block and final norm ("head-only":
  the ProtoNet ViG has no classifier, so its head is the last Grapher+FFN block and the norm).
- ``full``: the same tuning loop on a copy of every backbone parameter (full fine-tuning).
- ``linear``: a linear probe: scikit-learn ``LogisticRegression`` on the frozen pooled support
  features; logits are its log-probabilities for the queries.

Meta-learned initialisation (``meta_init`` maml / fomaml / metasgd, :mod:`prompts.meta`): the
prompt is wrapped in a learn2learn learner (``self.learner``). Training calls
:func:`prompts.meta.meta_step` on batches of episodes (``fewshot.training``); at test time each
episode clones the learner and ``adapt()``s the clone for ``adapt_steps`` steps of the inner-loop
loss (SGD at ``inner_lr``, or Meta-SGD's learned rates) on the support set only, then scores the
queries with the adapted prompt. ``adapt_steps = 0`` scores with the meta prompt as it is.

Support-only loss (tune / head / full). A 1-shot episode has no labelled query, so each step
builds pseudo-queries: ``views`` augmented views of every support image (random affine: shift up
to 10% of the side, rotation up to 10 degrees, scale 0.9-1.1, :func:`augment`), scored by the
matcher against the *un-augmented* support embeddings; the loss is the cross-entropy of their
labels. The augmentation generator is seeded from the episode's support images and ``seed``, so
the same episode, seed and prompt give the same accuracy. Backbone BatchNorms stay in eval mode
(running statistics) throughout: one episode is far too small to estimate batch statistics.

Glossary: S support images, Q queries, C x H x W images, N0 patch nodes, D feature dim.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import prompts
from prompts import meta
from prompts.base import Prompt
from prompts.views import augment, episode_generator

from .config import ADAPT_MODES
from .model import to_input

__all__ = ["PromptedModel", "ADAPT_MODES", "augment", "freeze", "load_backbone", "build_prompted_model"]

def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``module`` (returned for chaining)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class PromptedModel(nn.Module):
    """Frozen backbone + prompt + matcher, with per-episode adaptation.

    Args:
        backbone: a ViG (frozen here: every parameter's ``requires_grad`` is turned off).
        prompt: a :class:`prompts.Prompt` built for ``backbone`` (``prompts.create("none", ...)`` for none).
        matcher: a ``matchers`` matcher (pooled input; prompts act on pooled embeddings).
        adapt: one of :data:`ADAPT_MODES`.
        adapt_steps: T tuning steps per episode (tune / head / full).
        adapt_lr: Adam learning rate of the tuning steps.
        views: augmented pseudo-query views per support image in the tuning loss.
        seed: mixes into the per-episode augmentation seed.
        meta_init: ``none`` or a :data:`prompts.meta.META_INITS` algorithm (needs ``adapt="tune"``).
        inner_lr: inner-loop learning rate of the meta learner (its test-time rate too).
    """

    def __init__(self, backbone: nn.Module, prompt: Prompt, matcher: nn.Module, adapt: str = "amortised",
                 adapt_steps: int = 10, adapt_lr: float = 1e-2, views: int = 2, seed: int = 0,
                 meta_init: str = "none", inner_lr: float = 0.1):
        super().__init__()
        if adapt not in ADAPT_MODES:
            raise ValueError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {adapt!r}")
        if adapt in ("head", "full", "linear") and prompt.name != "none":
            raise ValueError(f"--adapt {adapt} is a baseline on the bare backbone: use it with --prompt none, "
                             f"not {prompt.name!r}")
        if getattr(matcher, "input", "pooled") != "pooled":
            raise ValueError("prompted models score pooled embeddings: use a pooled matcher such as prototype")
        self.backbone, self.prompt, self.matcher = freeze(backbone), prompt, matcher
        self.adapt, self.adapt_steps, self.adapt_lr, self.views, self.seed = adapt, adapt_steps, adapt_lr, views, seed
        self.learner = None
        if meta_init != "none":
            if adapt != "tune":
                raise ValueError(f"meta_init {meta_init!r} adapts the prompt per episode: use adapt='tune'")
            self.learner = meta.wrap(prompt, meta_init, inner_lr)  # shares the prompt's parameters

    # ----- nn.Module --------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorms keep their running statistics
        return self

    @property
    def episode_independent(self) -> bool:
        """True only for a fixed prompt applied as it is (embeddings can be computed once)."""
        return self.adapt == "amortised" and not self.prompt.conditioned

    # ----- embeddings -------------------------------------------------------------------------
    def _embed_with(self, backbone: nn.Module, prompt: Prompt, images: torch.Tensor) -> torch.Tensor:
        nodes, mask = prompt.forward_nodes(backbone, to_input(images))
        return backbone.forward_head(nodes, pre_logits=True, node_mask=mask)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[B, C, H, W]`` -> pooled ``[B, D]`` with the prompt as it stands (a conditioned
        prompt must have seen its episode through :meth:`condition`)."""
        return self._embed_with(self.backbone, self.prompt, images)

    def condition(self, support_images: torch.Tensor, support_labels: torch.Tensor,
                  prompt: Optional[Prompt] = None, backbone: Optional[nn.Module] = None) -> None:
        """Let a support-conditioned prompt see the episode: unprompted support nodes ``[S, N0, D]``."""
        prompt = prompt or self.prompt
        if prompt.conditioned:
            backbone = backbone or self.backbone
            with torch.no_grad():
                nodes = backbone.forward_features(to_input(support_images))
            prompt.set_episode(nodes, support_labels)

    # ----- episodes ---------------------------------------------------------------------------
    def forward(self, support_images: torch.Tensor, support_labels: torch.Tensor,
                query_images: torch.Tensor) -> torch.Tensor:
        """support_images ``[S, C, H, W]``, support_labels ``[S]``, query_images ``[Q, C, H, W]`` -> logits ``[Q, way]``."""
        if self.adapt == "linear":
            return self._linear_probe(support_images, support_labels, query_images)
        if self.learner is not None and not self.training:
            return self._meta_adapted(support_images, support_labels, query_images)
        if self.adapt == "amortised" or (self.training and self.adapt == "tune"):
            # meta-training of a tuned prompt trains its initialisation through the amortised path
            return self._score(self.backbone, self.prompt, support_images, support_labels, query_images)
        backbone, prompt = self._tuned(support_images, support_labels)
        with torch.no_grad():
            return self._score(backbone, prompt, support_images, support_labels, query_images)

    def _score(self, backbone, prompt, s_img, s_lab, q_img) -> torch.Tensor:
        self.condition(s_img, s_lab, prompt, backbone)
        feats = self._embed_with(backbone, prompt, torch.cat([s_img, q_img]))
        n = s_img.shape[0]
        return self.matcher(feats[:n].float(), s_lab, feats[n:].float())

    def tunable(self, backbone: nn.Module, prompt: Prompt) -> list:
        """The parameters the tuning loop changes for this ``adapt`` mode (on the given copies)."""
        if self.adapt == "tune":
            return list(prompt.parameters())
        if self.adapt == "head":
            return list(backbone.blocks[-1].parameters()) + list(backbone.norm.parameters())
        return list(backbone.parameters())  # full

    def _tuned(self, s_img: torch.Tensor, s_lab: torch.Tensor):
        """Copies of (backbone, prompt) after ``adapt_steps`` Adam steps of the support-only loss."""
        with torch.enable_grad(), torch.inference_mode(False):
            self.prompt.clear_episode()  # generated tensors are not leaves: never copied
            prompt = copy.deepcopy(self.prompt)
            backbone = self.backbone if self.adapt == "tune" else copy.deepcopy(self.backbone)
            params = self.tunable(backbone, prompt)
            for p in params:
                p.requires_grad_(True)
            prompt.train()
            backbone.eval()
            s_img, s_lab = to_input(s_img.clone()), s_lab.clone()
            gen = episode_generator(s_img, self.seed)
            if params:
                opt = torch.optim.Adam(params, lr=self.adapt_lr)
                for _ in range(self.adapt_steps):
                    views = augment(s_img, gen, self.views)
                    self.condition(s_img, s_lab, prompt, backbone)
                    feats = self._embed_with(backbone, prompt, torch.cat([s_img, views]))
                    n = s_img.shape[0]
                    logits = self.matcher(feats[:n].float(), s_lab, feats[n:].float())
                    loss = F.cross_entropy(logits, s_lab.repeat(self.views)) + prompt.regulariser().to(logits)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            prompt.eval()
            for p in params:
                p.requires_grad_(False)
        return backbone, prompt

    def _meta_adapted(self, s_img, s_lab, q_img) -> torch.Tensor:
        """Clone the meta learner, ``adapt()`` it on the support set, score the queries with it."""
        with torch.enable_grad(), torch.inference_mode(False):
            s_float, labels = to_input(s_img.clone()), s_lab.clone()
            learner = self.learner.clone()
            gen = episode_generator(s_float, self.seed)
            for _ in range(self.adapt_steps):  # first order: no graph through the steps is needed here
                loss = meta.support_loss(learner.module, self.backbone, s_float, labels, self.views, gen)
                learner.adapt(loss, first_order=True)
        with torch.no_grad():
            return self._score(self.backbone, learner.module, s_img, s_lab, q_img)

    @torch.no_grad()
    def _linear_probe(self, s_img, s_lab, q_img) -> torch.Tensor:
        from sklearn.linear_model import LogisticRegression

        feats = self._embed_with(self.backbone, self.prompt, torch.cat([s_img, q_img])).float()
        feats = F.normalize(feats, dim=-1).cpu().numpy()
        n = s_img.shape[0]
        clf = LogisticRegression(C=10.0, max_iter=1000)
        clf.fit(feats[:n], s_lab.cpu().numpy())
        logp = clf.predict_log_proba(feats[n:])  # columns = clf.classes_ (sorted labels 0..way-1)
        way = int(s_lab.max()) + 1
        out = np.full((logp.shape[0], way), -np.inf, dtype=np.float32)
        out[:, clf.classes_] = logp
        return torch.from_numpy(out).to(q_img.device)


def load_backbone(backbone: nn.Module, path) -> nn.Module:
    """Load ``backbone``'s weights, all or nothing, from a fewshot checkpoint (``best.pt``, a
    pre-training checkpoint, a bare state dict) or the authors' ViG release files; which one it got
    is logged (``models.checkpoints.load_backbone_weights``). ``CheckpointError`` in one line, naming
    the file, when it is unreadable or does not fit."""
    from models.checkpoints import BackboneCheckpointError, load_backbone_weights

    from .checkpoint import CheckpointError

    try:
        load_backbone_weights(backbone, path)
    except BackboneCheckpointError as e:
        raise CheckpointError(str(e)) from None
    return backbone


def build_prompted_model(config, backbone: nn.Module, matcher: nn.Module) -> PromptedModel:
    """PromptedModel from the config: backbone loaded from ``config.backbone_from`` when given, frozen."""
    from .config import ConfigError

    if config.backbone_from:
        load_backbone(backbone, config.backbone_from)
    try:
        prompt = prompts.create(config.prompt, backbone, **config.component_options("prompt"))
        return PromptedModel(backbone, prompt, matcher, adapt=config.adapt, adapt_steps=config.adapt_steps,
                             adapt_lr=config.adapt_lr, seed=config.seed, meta_init=config.meta_init,
                             inner_lr=config.inner_lr)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from e
