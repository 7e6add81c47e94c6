"""PromptedModel: a frozen backbone adapted to each episode by a prompt (or by a tuned baseline).

Same interface as :class:`~fewshot.model.EpisodicModel` (``embed``, ``forward(support_images,
support_labels, query_images) -> logits [Q, way]``, ``episode_independent``, ``matcher``, the
training hooks ``fit`` and ``meta_step``), so training and evaluation use it unchanged. How it adapts
to an episode (``adapt``) is a strategy of :mod:`fewshot.adaptation`: ``amortised``, ``tune``,
``head``, ``full`` or ``linear``; with ``meta_init`` (maml / fomaml / metasgd, :mod:`prompts.meta`)
the prompt is wrapped in a learn2learn learner (``self.learner``), trained by :meth:`meta_step` and
adapted per test episode by the ``tune`` strategy's meta-learned form.

Glossary: S support images, Q queries, C x H x W images, N0 patch nodes, D feature dim.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable, ContextManager, Optional, Sequence, Tuple

import torch
from torch import nn

import prompts
from episodes import to_input
from prompts import meta, tuning
from prompts.base import Prompt, freeze
from prompts.views import augment

from .adaptation import create_adaptation

log = logging.getLogger(__name__)

__all__ = ["PromptedModel", "augment", "freeze", "load_backbone", "backbone_source", "check_backbone_options",
           "build_prompted_model"]


class PromptedModel(nn.Module):
    """Frozen backbone + prompt + matcher, with per-episode adaptation.

    Args:
        backbone: a ViG (frozen here: every parameter's ``requires_grad`` is turned off).
        prompt: a :class:`prompts.Prompt` built for ``backbone`` (``prompts.create("none", ...)`` for none).
        matcher: a ``matchers`` matcher (pooled input; prompts act on pooled embeddings); it scores
            the queries, the support-only tuning loss and, with ``meta_init``, both meta-learning losses.
        adapt: an ``--adapt`` mode (:func:`fewshot.adaptation.list_adaptations`).
        adapt_steps: T tuning steps per episode (tune / head / full, and the meta-learned tune).
        adapt_lr: Adam learning rate of the tuning steps.
        views: augmented pseudo-query views per support image in the support-only loss.
        seed: mixes into the per-episode augmentation seed.
        meta_init: ``none`` or a :data:`prompts.meta.META_INITS` algorithm (needs ``adapt="tune"``).
        inner_lr: inner-loop learning rate of the meta learner (its test-time rate too).
        inner_steps: inner-loop steps per task of :meth:`meta_step`.

    Example:
        >>> backbone = models.create_backbone("test_vig")
        >>> model = PromptedModel(backbone, prompts.create("gpf", backbone), matchers.create("prototype"),
        ...                       adapt="tune", adapt_steps=5)
        >>> logits = model(support_images, support_labels, query_images)   # [Q, way]
    """

    def __init__(self, backbone: nn.Module, prompt: Prompt, matcher: nn.Module, adapt: str = "amortised",
                 adapt_steps: int = 10, adapt_lr: float = 1e-2, views: int = 2, seed: int = 0,
                 meta_init: str = "none", inner_lr: float = 0.1, inner_steps: int = 1):
        super().__init__()
        self.adaptation = create_adaptation(adapt, meta_learned=meta_init != "none")
        if self.adaptation.bare_backbone and prompt.name != "none":
            raise ValueError(f"--adapt {adapt} is a baseline on the bare backbone: use it with --prompt none, "
                             f"not {prompt.name!r}")
        if getattr(matcher, "input", "pooled") != "pooled":
            raise ValueError("prompted models score pooled embeddings: use a pooled matcher such as prototype")
        self.backbone, self.prompt, self.matcher = freeze(backbone), prompt, matcher
        self.adapt_steps, self.adapt_lr, self.views, self.seed = adapt_steps, adapt_lr, views, seed
        self.inner_steps = inner_steps
        # shares the prompt's parameters; a submodule, so Meta-SGD's rates are trained and saved
        self.learner = meta.wrap(prompt, meta_init, inner_lr) if meta_init != "none" else None

    # ----- nn.Module --------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorms keep their running statistics
        return self

    @property
    def adapt(self) -> str:
        """The ``--adapt`` mode."""
        return self.adaptation.name

    @property
    def episode_independent(self) -> bool:
        """True only for a fixed prompt applied as it is (embeddings can be computed once)."""
        return self.adaptation.episode_independent(self)

    def tunable(self, backbone: nn.Module, prompt: Prompt) -> list:
        """The parameters the per-episode tuning changes (on the given copies of backbone and prompt)."""
        return self.adaptation.tunable(backbone, prompt)

    # ----- embeddings and scores --------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[B, C, H, W]`` -> pooled ``[B, D]`` with the prompt as it stands (a conditioned
        prompt must have seen its episode through ``prompt.condition``)."""
        return self.prompt.embed(self.backbone, to_input(images))

    def score(self, backbone: nn.Module, prompt: Prompt, support_images: torch.Tensor, support_labels: torch.Tensor,
              query_images: torch.Tensor) -> torch.Tensor:
        """Logits ``[Q, way]`` of the queries with the given backbone and prompt (the model's own, or
        tuned copies), scored by the matcher (:func:`prompts.tuning.score`)."""
        return tuning.score(prompt, backbone, to_input(support_images), support_labels, to_input(query_images),
                            self.matcher)

    def forward(self, support_images: torch.Tensor, support_labels: torch.Tensor,
                query_images: torch.Tensor) -> torch.Tensor:
        """support_images ``[S, C, H, W]``, support_labels ``[S]``, query_images ``[Q, C, H, W]`` -> logits ``[Q, way]``."""
        return self.adaptation.logits(self, support_images, support_labels, query_images)

    def regulariser(self) -> torch.Tensor:
        """The prompt's extra loss term of its last forward pass (0 for most prompts)."""
        return self.prompt.regulariser()

    # ----- training hooks ---------------------------------------------------------------------
    def fit(self, train_images: torch.Tensor, seed: int = 0) -> None:
        """Before the first training episode: let the prompt fit what it learns from data rather than
        by gradient (DAM-VP's centroids) on up to ``prompt.fit_images`` of the training images
        ``[N, C, H, W]``, drawn with ``seed``; a no-op for the other prompts."""
        n = self.prompt.fit_images
        if n == 0:
            return
        idx = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))[:n]
        device = next(self.backbone.parameters()).device
        self.prompt.fit(self.backbone, to_input(train_images[idx].to(device)), seed=seed)

    @property
    def meta_learned(self) -> bool:
        """True with ``meta_init``: training steps go through :meth:`meta_step`."""
        return self.learner is not None

    def meta_step(self, episodes: Sequence[Tuple[torch.Tensor, ...]],
                  autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> Tuple[torch.Tensor, float]:
        """One outer step of the meta-learned prompt: back-propagate the mean query loss over
        ``episodes`` (each ``(support_images [S, C, H, W], support_labels [S], query_images [Q, C, H, W],
        query_labels [Q])``), each scored after ``inner_steps`` inner steps of a clone of the learner
        (:func:`prompts.meta.meta_step`), forward passes under ``autocast()``. Gradients accumulate;
        the caller steps the optimiser. Returns ``(mean loss, mean accuracy)``."""
        if self.learner is None:
            raise RuntimeError("meta_step needs a meta-learned prompt: build the model with meta_init")
        tasks = [(to_input(s), sl, to_input(q), ql) for s, sl, q, ql in episodes]
        return meta.meta_step(self.learner, self.backbone, tasks, self.inner_steps, self.matcher, autocast)


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


def _saved_run_config(path) -> Optional[dict]:
    """The ``config.yaml`` beside a ``--backbone-from`` file (a fewshot run's, as in ``runs/<run>/best.pt``);
    None for a file without a readable one (e.g. the authors' checkpoint)."""
    import yaml

    cfg = Path(path).expanduser().with_name("config.yaml")
    try:
        saved = yaml.safe_load(cfg.read_text()) if cfg.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


def backbone_source(path) -> Optional[str]:
    """The dataset of the fewshot run a ``--backbone-from`` file belongs to; None for a file that is not a run's."""
    return (_saved_run_config(path) or {}).get("dataset")


def check_backbone_options(path, options: dict) -> None:
    """Refuse to load a run's backbone into one built with other ``--backbone-opt`` arguments: the weights
    may fit (e.g. ``num_knn`` has none) while the network differs from the one trained. ``ConfigError``
    naming both sets; a file that is not a run's is not checked."""
    from .config import ConfigError

    saved = _saved_run_config(path)
    trained = dict((saved or {}).get("backbone_opts") or {})
    if saved is not None and trained != dict(options):
        def flags(opts):
            return " ".join(f"--backbone-opt {k}={v}" for k, v in sorted(opts.items())) or "no --backbone-opt"
        raise ConfigError(f"{path}: the backbone was trained with {flags(trained)}; give the same to load it "
                          f"(given: {flags(dict(options))})")


def build_prompted_model(config, backbone: nn.Module, matcher: nn.Module) -> PromptedModel:
    """PromptedModel from the config: backbone loaded from ``config.backbone_from`` when given, frozen."""
    from .config import ConfigError

    if config.backbone_from:
        check_backbone_options(config.backbone_from, config.backbone_opts)
        load_backbone(backbone, config.backbone_from)
        source = backbone_source(config.backbone_from)
        if source is not None and source != config.dataset:
            log.info("cross-domain: the backbone was trained on %s (%s); the episodes come from %s",
                     source, config.backbone_from, config.dataset)
    else:
        log.warning("--backbone %s is randomly initialised (no --backbone-from): --prompt %s / --adapt %s adapt an "
                    "untrained frozen backbone; pass --backbone-from runs/<run>/best.pt (a trained run) or the "
                    "authors' checkpoint", config.backbone, config.prompt, config.adapt)
    try:
        prompt = prompts.create(config.prompt, backbone, **config.component_options("prompt"))
        return PromptedModel(backbone, prompt, matcher, adapt=config.adapt, adapt_steps=config.adapt_steps,
                             adapt_lr=config.adapt_lr, seed=config.seed, meta_init=config.meta_init,
                             inner_lr=config.inner_lr, inner_steps=config.inner_steps)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from e
