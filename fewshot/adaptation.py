"""How a PromptedModel meets an episode: one small class per ``--adapt`` mode, in one registry.

- ``amortised`` (:class:`Amortised`): the prompt as it stands; a support-conditioned prompt
  (``prompt.conditioned``) first generates its prompt from the episode's support set in one forward
  pass. Meta-training (``fewshot train``) trains the prompt / generator episodically on the base
  classes with the backbone frozen.
- ``tune`` (:class:`Tune`): test-time tuning: per episode, a copy of the prompt takes ``adapt_steps``
  Adam steps (lr ``adapt_lr``) on the support-only loss, the backbone frozen, then scores the
  queries. In training mode the prompt is used as in ``amortised``: training learns the
  initialisation the test episodes start tuning from. With ``--meta-init`` (:class:`MetaTune`) the
  initialisation is meta-learned (``model.learner``) and a test episode adapts a clone of the
  learner with learn2learn's own update (first order; SGD at ``inner_lr``, or Meta-SGD's learned
  rates); ``adapt_steps = 0`` scores with the meta prompt as it is.
- ``head`` (:class:`Head`): the same tuning of a copy of the backbone's last block and final norm
  ("head-only": the ProtoNet ViG has no classifier, so its head is the last Grapher+FFN block and
  the norm).
- ``full`` (:class:`Full`): the same tuning of a copy of every backbone parameter.
- ``linear`` (:class:`LinearProbe`): scikit-learn ``LogisticRegression`` on the frozen pooled
  support features; logits are its log-probabilities for the queries.

The tuning strategies share one support-only loss and one loop (:func:`prompts.tuning.tune`, the
same as MAML's inner loop), scored by the model's matcher; they differ only in what they copy and
how one step changes it (:meth:`Tuned.start`). Backbone BatchNorms stay in eval mode (running
statistics) throughout: one episode is far too small to estimate batch statistics.

A strategy holds no state: the model owns the settings (``adapt_steps``, ``adapt_lr``, ``views``,
``seed``) and the meta learner, so a strategy is a few functions of (model, episode).

Glossary: S support images, Q queries, C x H x W images (uint8, or float already scaled), D feature dim.

Writing a strategy::

    @register_adaptation("my-mode")
    class MyMode(Adaptation):
        '''What it does, and the paper it follows.'''
        def logits(self, model, support_images, support_labels, query_images):
            ...                                    # -> [Q, way]
"""
from __future__ import annotations

import copy
from functools import partial
from typing import Callable, ClassVar, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from episodes import to_input
from prompts.base import Prompt
from prompts.tuning import optimiser_step, tune
from prompts.views import episode_generator
from registry import Registry

__all__ = ["Adaptation", "Amortised", "Tuned", "Tune", "MetaTune", "Head", "Full", "LinearProbe",
           "register_adaptation", "create_adaptation", "list_adaptations"]

_REGISTRY: Registry = Registry("adaptation")


def register_adaptation(name: str):
    """Class decorator: make an :class:`Adaptation` available as ``--adapt name`` (a duplicate name is an error)."""
    return _REGISTRY.register(name, attribute="name")


def list_adaptations() -> list:
    """The ``--adapt`` modes, sorted."""
    return _REGISTRY.names()


def create_adaptation(name: str, meta_learned: bool = False) -> "Adaptation":
    """The strategy ``name`` (``ValueError`` listing the valid names otherwise); ``meta_learned``
    (``--meta-init``) needs ``tune`` and gives its meta-learned form, :class:`MetaTune`."""
    cls = _REGISTRY.get(name)
    if meta_learned:
        if cls is not Tune:
            raise ValueError(f"a meta-learned initialisation adapts the prompt per episode: use adapt='tune', not {name!r}")
        cls = MetaTune
    return cls()


class Adaptation:
    """Base of the strategies: how a PromptedModel scores an episode.

    Attributes:
        name: registry name (set by :func:`register_adaptation`).
        bare_backbone: True for the baselines that adapt or probe the backbone itself (head, full,
            linear): they take ``--prompt none`` only.
    """

    name: ClassVar[str] = ""
    bare_backbone: ClassVar[bool] = False

    def episode_independent(self, model) -> bool:
        """True when an image's embedding does not depend on the episode (evaluation may embed once)."""
        return False

    def tunable(self, backbone: nn.Module, prompt: Prompt) -> list:
        """The parameters the per-episode tuning changes, on the given copies; none by default."""
        return []

    def logits(self, model, support_images: torch.Tensor, support_labels: torch.Tensor,
               query_images: torch.Tensor) -> torch.Tensor:
        """support_images ``[S, C, H, W]``, support_labels ``[S]``, query_images ``[Q, C, H, W]`` -> logits ``[Q, way]``."""
        raise NotImplementedError(f"{type(self).__name__} must define logits()")


@register_adaptation("amortised")
class Amortised(Adaptation):
    """The prompt as it stands (a support-conditioned prompt generated from the support set first)."""

    def episode_independent(self, model) -> bool:
        return not model.prompt.conditioned

    def logits(self, model, support_images, support_labels, query_images):
        return model.score(model.backbone, model.prompt, support_images, support_labels, query_images)


class Tuned(Adaptation):
    """Base of the tuning strategies: ``model.adapt_steps`` steps of the support-only loss on copies
    (seeded views, :func:`prompts.tuning.tune`), then the queries scored with the tuned copies."""

    copies_backbone: ClassVar[bool] = True
    """Whether the backbone is copied (head, full) or shared, frozen, with the original (tune)."""

    def start(self, model) -> Tuple[nn.Module, Prompt, Optional[Callable[[torch.Tensor], object]]]:
        """``(backbone, prompt, update)`` for one episode: copies to tune, in training mode, and one
        Adam step of their :meth:`tunable` parameters (None when there are none to tune)."""
        model.prompt.clear_episode()  # generated tensors are not leaves: never copied
        prompt = copy.deepcopy(model.prompt).train()
        backbone = copy.deepcopy(model.backbone) if self.copies_backbone else model.backbone
        params = self.tunable(backbone, prompt)
        for p in params:
            p.requires_grad_(True)
        return backbone, prompt, optimiser_step(torch.optim.Adam(params, lr=model.adapt_lr)) if params else None

    def finish(self, backbone: nn.Module, prompt: Prompt) -> None:
        """After the steps: the prompt copy in eval mode and the tuned parameters frozen again, so the
        queries are scored exactly as by a stored model (kernels differ with ``requires_grad``)."""
        prompt.eval()
        for p in self.tunable(backbone, prompt):
            p.requires_grad_(False)

    def logits(self, model, support_images, support_labels, query_images):
        with torch.enable_grad(), torch.inference_mode(False):
            support, labels = to_input(support_images.clone()), support_labels.clone()
            backbone, prompt, update = self.start(model)
            if update is not None:
                tune(prompt, backbone, support, labels, update, model.adapt_steps, model.matcher, model.views,
                     episode_generator(support, model.seed))
            self.finish(backbone, prompt)
        with torch.no_grad():
            return model.score(backbone, prompt, support_images, support_labels, query_images)


@register_adaptation("tune")
class Tune(Tuned):
    """Test-time tuning of a copy of the prompt; in training mode the amortised path."""

    copies_backbone = False

    def tunable(self, backbone, prompt):
        return list(prompt.parameters())

    def logits(self, model, support_images, support_labels, query_images):
        if model.training:  # meta-training of a tuned prompt trains its initialisation through the amortised path
            return model.score(model.backbone, model.prompt, support_images, support_labels, query_images)
        return super().logits(model, support_images, support_labels, query_images)


class MetaTune(Tune):
    """``tune`` with a meta-learned initialisation (``--meta-init``, :mod:`prompts.meta`): a test episode
    clones the model's learn2learn learner and adapts the clone (first order: no graph through the
    steps is needed at test time), the prompt left in eval mode as in the learner's inner loop."""

    def start(self, model):
        model.prompt.clear_episode()
        learner = model.learner.clone()
        return model.backbone, learner.module, partial(learner.adapt, first_order=True)

    def finish(self, backbone, prompt):
        """Nothing to restore: the clone's parameters are the learner's adapted (non-leaf) tensors."""


@register_adaptation("head")
class Head(Tuned):
    """Tuning of a copy of the backbone's last block and final norm, if any (a baseline, ``--prompt none``):
    the isotropic ViG's and Conv-4's ``blocks[-1]``, the pyramid ViG's ``stages[-1].blocks[-1]``."""

    bare_backbone = True

    def tunable(self, backbone, prompt):
        blocks = backbone.stages[-1].blocks if hasattr(backbone, "stages") else backbone.blocks
        norm = getattr(backbone, "norm", None)
        return list(blocks[-1].parameters()) + (list(norm.parameters()) if norm is not None else [])


@register_adaptation("full")
class Full(Tuned):
    """Tuning of a copy of every backbone parameter (full fine-tuning; a baseline, ``--prompt none``)."""

    bare_backbone = True

    def tunable(self, backbone, prompt):
        return list(backbone.parameters())


@register_adaptation("linear")
class LinearProbe(Adaptation):
    """A linear probe: logistic regression (C = 10) on the L2-normalised frozen pooled support features;
    logits are its log-probabilities for the queries (a baseline, ``--prompt none``)."""

    bare_backbone = True

    @torch.no_grad()
    def logits(self, model, support_images, support_labels, query_images):
        from sklearn.linear_model import LogisticRegression

        feats = model.embed(torch.cat([support_images, query_images])).float()
        feats = F.normalize(feats, dim=-1).cpu().numpy()
        n = support_images.shape[0]
        clf = LogisticRegression(C=10.0, max_iter=1000)
        clf.fit(feats[:n], support_labels.cpu().numpy())
        logp = clf.predict_log_proba(feats[n:])  # columns = clf.classes_ (sorted labels 0..way-1)
        way = int(support_labels.max()) + 1
        out = np.full((logp.shape[0], way), -np.inf, dtype=np.float32)
        out[:, clf.classes_] = logp
        return torch.from_numpy(out).to(query_images.device)
