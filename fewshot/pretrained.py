"""Shipped few-shot models by name: a trained backbone (a timm pretrained tag) and the matcher it was trained with.

    >>> from fewshot.pretrained import list_pretrained, load_pretrained
    >>> list_pretrained()  # doctest: +SKIP
    ['conv4.omniglot_minimal', 'vig_small_c4_28.glyphs', 'vig_small_c4_28.omniglot_minimal']
    >>> config, model, info = load_pretrained("vig_small_c4_28.omniglot_minimal")  # doctest: +SKIP
    >>> logits = model(support_images, support_labels, query_images)  # doctest: +SKIP

The files and their provenance live in ``models/weights/`` (:mod:`models.shipped`).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from .config import Config, merge

__all__ = ["list_pretrained", "pretrained_info", "pretrained_config", "load_pretrained"]

_NOT_SETTINGS = ("run_dir", "data_root", "tracking_uri", "track", "threads", "device", "experiment", "cache")
"""Fields of the training run's config that described its machine, not the model."""


def list_pretrained() -> List[str]:
    """Names of the shipped models (``architecture.tag``)."""
    from models.shipped import shipped_names

    return shipped_names()


def pretrained_info(name: str) -> dict:
    """The provenance record of a shipped model: command, commit, sha256, accuracy, settings."""
    from models.shipped import shipped_info

    return shipped_info(name)


def pretrained_config(name: str, changes: Optional[dict] = None) -> Config:
    """The settings the shipped model was trained with (dataset, backbone, matcher, image size, ...),
    without the training machine's paths, with ``changes`` applied."""
    saved = {k: v for k, v in pretrained_info(name)["config"].items() if k not in _NOT_SETTINGS}
    return merge(merge(Config(), saved), changes or {})


def load_pretrained(name: str, config: Optional[Config] = None) -> Tuple[Config, object, dict]:
    """``(config, model, info)``: the shipped model ``name`` on CPU in eval mode.

    The backbone comes from ``timm.create_model(name, pretrained=True)`` (its sha256 checked); the
    matcher is the one ``config`` names (default: the one it was trained with), so
    ``load_pretrained(name, pretrained_config(name, {"matcher": "prototype"}))`` swaps it.

    Raises:
        models.shipped.ShippedWeightsError: an unknown name, or a missing or altered file.
    """
    import timm

    import models  # noqa: F401  (registers the backbones and their shipped tags)
    from .model import build_model

    info = pretrained_info(name)
    config = config or pretrained_config(name)
    img_size, in_chans = int(info["img_size"]), int(info["in_chans"])
    backbone = timm.create_model(name, pretrained=True, num_classes=0, img_size=img_size, in_chans=in_chans)
    model = build_model(config, img_size, in_chans, backbone=backbone)
    return config, model.eval(), info
