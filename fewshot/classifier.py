"""FewShotClassifier: a trained few-shot model as a scikit-learn classifier of one's own images.

``fit`` embeds a handful of labelled images (the support set: any number per class, any hashable
labels) once; ``predict`` / ``predict_proba`` embed the query images in batches and score them
against it with the model's matcher, or any other registered one (``matcher=``). The model comes
from shipped weights (:meth:`FewShotClassifier.from_pretrained`), a ``fewshot train`` run folder
(:meth:`FewShotClassifier.from_run`) or an :class:`~fewshot.model.EpisodicModel` built in Python
(``model=``). Images are converted to what the backbone takes (:mod:`fewshot.image_input`).

It follows scikit-learn's estimator conventions: the constructor only stores its arguments, so
``get_params`` / ``set_params`` / ``sklearn.base.clone`` work; ``fit`` returns ``self``; learned
state ends in ``_`` (``classes_``); ``predict`` before ``fit`` raises ``NotFittedError``;
``predict_proba``'s rows sum to 1 and its columns follow ``classes_``; ``score`` is the accuracy.

Glossary: S support images, Q query images, way = ``len(classes_)``, N nodes, D feature dim.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .image_input import as_image_list, to_model_images

__all__ = ["FewShotClassifier"]


@dataclass(frozen=True)
class _Source:
    """A loaded model and what its images must look like."""

    model: nn.Module
    img_size: int
    in_chans: int
    matcher_name: Optional[str]      # the matcher the model was trained with (None: unknown, model=)
    matcher_opts: dict               # its settings in the run's config


class FewShotClassifier(ClassifierMixin, BaseEstimator):
    """Classify images among the classes of a few labelled examples, with a trained few-shot model.

    Give exactly one of ``weights``, ``run_dir`` or ``model``.

    Args:
        weights: name of shipped weights (``fewshot.pretrained.list_pretrained()``).
        run_dir: folder of a ``fewshot train`` run.
        checkpoint: ``"best"`` or ``"last"`` weights of ``run_dir``.
        model: an :class:`~fewshot.model.EpisodicModel` (or ``PromptedModel``) built in Python; needs
            ``img_size`` and ``in_chans``.
        img_size: side of the images ``model`` takes (only with ``model``; weights and runs know theirs).
        in_chans: 1 (grayscale) or 3 (RGB), the channels ``model`` takes (only with ``model``).
        matcher: a registered matcher's name (``fewshot matchers``) or a matcher instance; None keeps the
            model's own.
        matcher_opts: options of ``matcher`` (``{"k": 3}``; strings are converted as ``--matcher-opt``'s
            are); for the model's own matcher they apply on top of its run's settings.
        invert: ``"auto"`` inverts grayscale images whose border is mostly bright (grayscale models were
            trained on bright strokes on black), True always, False never.
        batch_size: images embedded per forward pass.
        device: where the model runs (``"cpu"``, ``"cuda"``).

    Example:
        >>> clf = FewShotClassifier.from_pretrained("vig_small_c4_28.omniglot_minimal")
        >>> clf.fit(["a1.png", "b1.png", "c1.png"], ["a", "b", "c"])        # doctest: +SKIP
        >>> clf.predict(["x.png", "y.png"])                                  # doctest: +SKIP
        array(['b', 'a'], dtype='<U1')
    """

    def __init__(self, weights: Optional[str] = None, run_dir=None, checkpoint: str = "best",
                 model: Optional[nn.Module] = None, img_size: Optional[int] = None, in_chans: Optional[int] = None,
                 matcher=None, matcher_opts: Optional[dict] = None, invert="auto", batch_size: int = 64,
                 device="cpu"):
        self.weights = weights
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.model = model
        self.img_size = img_size
        self.in_chans = in_chans
        self.matcher = matcher
        self.matcher_opts = matcher_opts
        self.invert = invert
        self.batch_size = batch_size
        self.device = device

    # ----- constructors -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str, matcher=None, **matcher_opts) -> "FewShotClassifier":
        """A classifier on shipped weights ``name``, loaded now (an unknown name lists the valid ones)."""
        clf = cls(weights=name, matcher=matcher, matcher_opts=matcher_opts or None)
        clf._scorer()  # loads the weights and checks the matcher's options now, not at fit
        return clf

    @classmethod
    def from_run(cls, run_dir, checkpoint: str = "best", matcher=None, **matcher_opts) -> "FewShotClassifier":
        """A classifier on the ``checkpoint`` weights of the ``fewshot train`` run in ``run_dir``, loaded now."""
        clf = cls(run_dir=run_dir, checkpoint=checkpoint, matcher=matcher, matcher_opts=matcher_opts or None)
        clf._scorer()
        return clf

    # ----- scikit-learn API -------------------------------------------------------------------
    def fit(self, images, labels) -> "FewShotClassifier":
        """Embed the support set once.

        Args:
            images: S images (file paths, PIL images, uint8 arrays ``H x W (x C)``, uint8 tensors
                ``[C, H, W]``, or one ``[S, C, H, W]`` tensor).
            labels: S hashable labels, at least two distinct ones.
        Returns:
            self, with ``classes_`` (sorted when the labels are orderable, else in order of first appearance).
        """
        images = as_image_list(images)
        labels = _label_list(labels)
        if len(images) != len(labels):
            raise ValueError(f"fit got {len(images)} images but {len(labels)} labels; give one label per image")
        if not labels:
            raise ValueError("fit got no images: give at least one image of each of at least 2 classes")
        classes = _ordered_classes(labels)
        if len(classes) < 2:
            raise ValueError(f"fit needs at least 2 classes to tell apart, got only {classes[0]!r} "
                             f"({len(labels)} images)")
        index = {c: i for i, c in enumerate(classes)}
        scorer = self._scorer()
        source = self._source()
        support_images = to_model_images(images, source.img_size, source.in_chans, self.invert)
        support_labels = torch.tensor([index[label] for label in labels], dtype=torch.long)
        if _embeds_once(scorer):
            support, expanded = self._embed_support(scorer, support_images, support_labels)
            with torch.inference_mode():  # the matcher's own checks (k against the support, ...) now, not at predict
                scorer.matcher(support, expanded.to(support.device), support[:1])
            self.support_, self.support_labels_ = support, expanded
            self.support_images_ = None
        else:  # the prompt adapts to the support set: every batch of queries runs the whole model
            self.support_, self.support_labels_ = None, support_labels
            self.support_images_ = support_images
        self.classes_ = _label_array(classes)
        self.model_, self.matcher_ = scorer, scorer.matcher
        self.img_size_, self.in_chans_ = source.img_size, source.in_chans
        return self

    def decision_function(self, images) -> np.ndarray:
        """The matcher's logits ``[Q, way]`` (float32), columns in the order of ``classes_``."""
        check_is_fitted(self)
        images = as_image_list(images)
        way = len(self.classes_)
        out = [np.zeros((0, way), dtype=np.float32)]
        for start in range(0, len(images), self._batch()):
            part = [images[i] for i in range(start, min(start + self._batch(), len(images)))]
            query = to_model_images(part, self.img_size_, self.in_chans_, self.invert, start=start)
            out.append(self._logits(query).cpu().numpy())
        return np.concatenate(out)

    def predict_proba(self, images) -> np.ndarray:
        """``[Q, way]`` class probabilities (softmax of the logits; float64, rows sum to 1), columns as ``classes_``."""
        logits = torch.from_numpy(self.decision_function(images)).double()
        return logits.softmax(-1).numpy()

    def predict(self, images) -> np.ndarray:
        """``[Q]`` predicted labels, taken from ``classes_``."""
        logits = self.decision_function(images)  # raises NotFittedError before fit
        return self.classes_[logits.argmax(1)]

    def embed(self, images) -> np.ndarray:
        """Embeddings as the matcher takes them: ``[B, D]`` (pooled matchers) or ``[B, N, D]`` (node
        matchers), float32. Needs no ``fit``."""
        images = as_image_list(images)
        scorer, source = self._scorer(), self._source()
        out = []
        for start in range(0, len(images), self._batch()):
            part = [images[i] for i in range(start, min(start + self._batch(), len(images)))]
            out.append(self._embed(scorer, to_model_images(part, source.img_size, source.in_chans, self.invert,
                                                           start=start)))
        if not out:
            raise ValueError("embed got no images")
        return torch.cat(out).cpu().numpy()

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        """Like scikit-learn's (the arguments that differ from their defaults), with a module shown by its class."""
        params = inspect.signature(type(self).__init__).parameters
        shown = []
        for name, p in list(params.items())[1:]:
            value = getattr(self, name)
            if value is p.default or (not isinstance(value, nn.Module) and value == p.default):
                continue
            text = f"<{type(value).__name__}>" if isinstance(value, nn.Module) else repr(value)
            shown.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(shown)})"

    # ----- internals --------------------------------------------------------------------------
    def _batch(self) -> int:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        return self.batch_size

    def _device(self) -> torch.device:
        try:
            return torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {self.device!r}") from None

    def _source(self) -> _Source:
        """The model named by weights / run_dir / model, loaded once (cached until those change)."""
        key = (self.weights, None if self.run_dir is None else str(self.run_dir), self.checkpoint,
               id(self.model), self.img_size, self.in_chans)
        cached = self.__dict__.get("_cached_source")
        if cached is not None and cached[0] == key:
            return cached[1]
        given = [n for n in ("weights", "run_dir", "model") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of weights= (shipped weights), run_dir= (a fewshot train run) or "
                             f"model= (an EpisodicModel), got {' and '.join(given) or 'none'}")
        if self.model is None and (self.img_size is not None or self.in_chans is not None):
            raise ValueError(f"img_size= and in_chans= are for model=; the {given[0]} define their own")
        if self.weights is not None:
            source = _load_pretrained(self.weights)
        elif self.run_dir is not None:
            source = _load_run(Path(self.run_dir), self.checkpoint)
        else:
            source = _wrap_model(self.model, self.img_size, self.in_chans)
        self.__dict__["_cached_source"] = (key, source)
        return source

    def _scorer(self) -> nn.Module:
        """The source's model with the chosen matcher, in eval mode on ``device``."""
        import matchers
        from registry import convert_options

        source = self._source()
        model = source.model
        opts = dict(self.matcher_opts or {})
        if isinstance(self.matcher, nn.Module):
            if opts:
                raise ValueError("matcher_opts apply to a matcher given by name; a matcher instance has its own")
            new = self.matcher
        elif self.matcher is None and not opts:
            new = model.matcher
        elif self.matcher is None or isinstance(self.matcher, str):
            name = self.matcher or source.matcher_name or getattr(model.matcher, "registry_name", None)
            if name is None:
                raise ValueError("matcher_opts need a matcher name: the model's matcher is not a registered one")
            base = source.matcher_opts if name == source.matcher_name else {}
            new = matchers.create(name, **{**base, **convert_options(matchers.get(name), opts, f"matcher {name!r}")})
        else:
            raise TypeError(f"matcher must be a registered matcher's name or a matcher instance, "
                            f"got {type(self.matcher).__name__}")
        scorer = model if new is model.matcher else _with_matcher(model, new)
        return scorer.to(self._device()).eval()

    def _embed(self, scorer: nn.Module, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """uint8 ``[B, C, S, S]`` -> float32 embeddings, as evaluation computes them (``model.embed``, bf16
        autocast on CUDA)."""
        from .evaluation import autocast_for

        device = self._device()
        with torch.inference_mode(), autocast_for(device):
            return scorer.embed(images.to(device), **kwargs).float()

    def _embed_support(self, scorer, images: torch.Tensor, labels: torch.Tensor) -> tuple:
        """``(support [S', ...], support_labels [S'])``: the support embeddings, with the masked views and the
        augmented copies of an EpisodicModel with ``support_views`` / ``support_augment`` appended as its
        ``forward`` does (S' = S * (views + 1 + copies))."""
        b = self._batch()
        feats = [self._embed(scorer, images[i:i + b]) for i in range(0, len(images), b)]
        views = getattr(scorer, "support_views", 0)
        if views:
            grid = tuple(scorer.backbone.stem.grid_size(tuple(images.shape[-2:])))
            masks = scorer.view_masks(len(images), grid, self._device())
            repeated = images.repeat(views, 1, 1, 1)
            feats += [self._embed(scorer, repeated[i:i + b], node_mask=masks[i:i + b]) for i in range(0, len(repeated), b)]
            labels = labels.repeat(views + 1)
        copies = scorer.support_copies(images) if hasattr(scorer, "support_copies") else None
        if copies is not None:  # eval mode: the support_augment copies, as forward appends them
            feats += [self._embed(scorer, copies[i:i + b]) for i in range(0, len(copies), b)]
            labels = torch.cat([labels, labels[:len(images)].repeat(scorer.support_augment)])
        return torch.cat(feats), labels.to(self._device())

    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        """uint8 query images ``[Q, C, S, S]`` -> logits ``[Q, way]``."""
        if query.shape[0] == 0:
            return torch.zeros(0, len(self.classes_))
        scorer, device = self.model_, self._device()
        if self.support_ is not None:
            feats = self._embed(scorer, query)
            with torch.inference_mode():
                return scorer.matcher(self.support_, self.support_labels_, feats).float()
        from .evaluation import autocast_for

        with torch.inference_mode(), autocast_for(device):
            return scorer(self.support_images_.to(device), self.support_labels_.to(device), query.to(device)).float()


# ----- loading ---------------------------------------------------------------------------------
def _load_pretrained(name: str) -> _Source:
    from registry import unknown_name_error

    try:
        from . import pretrained
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.pretrained":
            raise
        raise ValueError(f"shipped weights ({name!r}) are not available: this installation has no "
                         f"fewshot.pretrained; use run_dir= or model=") from None
    names = pretrained.list_pretrained()
    if name not in names:
        raise unknown_name_error("pretrained weights", name, names)
    config, model, info = pretrained.load_pretrained(name)
    return _Source(model.eval(), int(info["img_size"]), int(info["in_chans"]), config.matcher,
                   config.component_options("matcher"))


def _load_run(run_dir: Path, checkpoint: str) -> _Source:
    from episodes import dataset_info

    from .evaluate_run import load_run_config, load_trained_model
    from .model import episode_img_size

    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    config = load_run_config(run_dir)
    info = dataset_info(config.dataset)
    img_size = episode_img_size(config) or info.default_img_size
    shape = SimpleNamespace(image_shape=(info.in_chans, img_size, img_size))  # what load_trained_model reads
    model, _ = load_trained_model(run_dir, config, shape, checkpoint)
    return _Source(model.eval(), img_size, info.in_chans, config.matcher, config.component_options("matcher"))


def _wrap_model(model: nn.Module, img_size, in_chans) -> _Source:
    if not callable(getattr(model, "embed", None)) or not isinstance(getattr(model, "matcher", None), nn.Module):
        raise TypeError(f"model must be a fewshot EpisodicModel (embed + matcher), got {type(model).__name__}")
    for name, value in (("img_size", img_size), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model= needs {name}= (a positive integer: the images the model takes), got {value!r}")
    return _Source(model.eval(), img_size, in_chans, getattr(model.matcher, "registry_name", None), {})


def _with_matcher(model: nn.Module, matcher: nn.Module) -> nn.Module:
    """``model`` scored by ``matcher``: a new EpisodicModel on the same backbone, or a copy of a
    PromptedModel (prompt copied, backbone shared) whose matcher is replaced."""
    from .model import EpisodicModel

    if type(model) is EpisodicModel:
        return EpisodicModel(model.backbone, matcher, node_filter=model.node_filter,
                             support_views=model.support_views, view_keep=model.view_keep,
                             support_augment=model.support_augment)
    if getattr(matcher, "input", "pooled") != "pooled":
        raise ValueError(f"{type(model).__name__} scores pooled embeddings: use a pooled matcher "
                         f"(prototype, knn), not {getattr(matcher, 'registry_name', type(matcher).__name__)!r}")
    out = copy.deepcopy(model, memo={id(model.backbone): model.backbone})
    out.matcher = matcher
    return out


def _embeds_once(model: nn.Module) -> bool:
    """True when the support can be embedded once: embeddings independent of the episode, or an
    EpisodicModel's support views (fixed masks)."""
    from .model import EpisodicModel

    return bool(model.episode_independent) or isinstance(model, EpisodicModel)


# ----- labels ----------------------------------------------------------------------------------
def _label_list(labels: Any) -> list:
    if isinstance(labels, (str, bytes)):
        raise TypeError(f"labels must be a sequence of labels, got one {type(labels).__name__}")
    if isinstance(labels, (np.ndarray, torch.Tensor)):
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {tuple(labels.shape)}")
        labels = labels.tolist()
    try:
        labels = list(labels)
    except TypeError:
        raise TypeError(f"labels must be a sequence of labels, got {type(labels).__name__}") from None
    for i, label in enumerate(labels):
        try:
            hash(label)
        except TypeError:
            raise ValueError(f"labels[{i}] ({label!r}) is not hashable; use strings, numbers or tuples") from None
    return labels


def _ordered_classes(labels: list) -> list:
    """The distinct labels, sorted when they can be, else in order of first appearance."""
    distinct = list(dict.fromkeys(labels))
    try:
        return sorted(distinct)
    except TypeError:
        return distinct


def _label_array(classes: list) -> np.ndarray:
    """``classes`` as a 1-D array: str or int dtype when they are all strings / integers, else object."""
    if all(isinstance(c, str) for c in classes) or all(isinstance(c, (int, np.integer)) and not isinstance(c, bool)
                                                       for c in classes):
        return np.asarray(classes)
    out = np.empty(len(classes), dtype=object)
    for i, c in enumerate(classes):
        out[i] = c
    return out
