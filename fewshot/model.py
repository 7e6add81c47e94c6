"""EpisodicModel: a backbone, an optional prompt and a matcher, scored one episode at a time.

Glossary: S = way*shot support images, Q query images, C x H x W images, N nodes, D feature dim.
"""
from __future__ import annotations

import logging
from typing import Optional

import timm
import torch
from torch import nn

import matchers
import models
from episodes import to_input
from episodes.augment import augmented_copies

log = logging.getLogger(__name__)

__all__ = ["EpisodicModel", "build_model", "count_parameters", "episode_img_size", "to_input"]  # to_input: episodes' own, re-exported


class EpisodicModel(nn.Module):
    """Embeds support and query images with the backbone and scores them with the matcher.

    Args:
        backbone: a ``models`` backbone (``forward_features`` -> ``[B, N, D]``,
            ``forward_head(pre_logits=True)`` -> ``[B, D]``).
        matcher: a ``matchers`` matcher; its ``input`` attribute (``"pooled"`` or ``"nodes"``)
            says which embedding it scores.
        node_filter: ``"none"``, or ``"ink"``: delete the nodes whose image patch is blank background
            (:func:`models.ink_node_mask`) from the graph and from pooling. Node-level matchers still
            receive every node's features. Needs a backbone that takes ``node_mask`` (the ViGs).
        support_views: ``V`` extra embeddings of every support image, each with a random subset of
            ``view_keep`` of its nodes deleted from graph and pooling (the same subsets for the same
            episode), scored as extra support items of the image's class. Needs a pooled matcher.
        view_keep: fraction of nodes a view keeps (at least one).
        support_augment: ``V`` affine copies of every support image (:func:`episodes.augment.augmented_copies`,
            the same copies for the same image) join its class's support set when the model is scored
            (``eval()`` mode; training episodes are left as they are). Any backbone and matcher.
    """

    def __init__(self, backbone: nn.Module, matcher: matchers.Matcher, node_filter: str = "none",
                 support_views: int = 0, view_keep: float = 0.75, support_augment: int = 0):
        super().__init__()
        if node_filter not in ("none", "ink"):
            raise ValueError(f"node_filter must be 'none' or 'ink', got {node_filter!r}")
        if (node_filter != "none" or support_views) and not hasattr(getattr(backbone, "stem", None), "grid_size"):
            raise ValueError(f"--node-filter / --support-views need a backbone with node masks (a ViG), "
                             f"not {type(backbone).__name__}")
        if support_views and getattr(matcher, "input", "pooled") == "nodes":
            raise ValueError("--support-views adds pooled embeddings of masked views; use a pooled matcher "
                             "(prototype, knn), not a node-level one")
        if isinstance(support_views, bool) or not isinstance(support_views, int) or support_views < 0:
            raise ValueError(f"support_views must be an integer >= 0, got {support_views!r}")
        if not 0 < view_keep <= 1:
            raise ValueError(f"view_keep must be in (0, 1], got {view_keep!r}")
        if isinstance(support_augment, bool) or not isinstance(support_augment, int) or support_augment < 0:
            raise ValueError(f"support_augment must be an integer >= 0, got {support_augment!r}")
        self.backbone, self.matcher, self.node_filter = backbone, matcher, node_filter
        self.support_views, self.view_keep = support_views, float(view_keep)
        self.support_augment = support_augment

    @property
    def episode_independent(self) -> bool:
        """True when an image's embedding does not depend on the episode (no support-generated prompt,
        no support views), so evaluation may embed every image once and score episodes by indexing."""
        return self.support_views == 0

    meta_learned = False
    """Only a meta-learned ``PromptedModel`` trains by ``meta_step`` instead of the episode's query loss."""

    def fit(self, train_images: torch.Tensor, seed: int = 0) -> None:
        """The hook run on the training images ``[N, C, H, W]`` before the first episode: nothing to fit here."""

    def _grid(self, images: torch.Tensor) -> tuple:
        return tuple(self.backbone.stem.grid_size(tuple(images.shape[-2:])))

    def embed(self, images: torch.Tensor, node_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """images ``[B, C, H, W]`` (uint8 or float) -> ``[B, D]`` or ``[B, N, D]`` as the matcher wants;
        ``node_mask [B, N]`` (True = kept) deletes nodes on top of the node filter."""
        if self.node_filter == "ink":
            ink = models.ink_node_mask(images, self._grid(images))
            node_mask = ink if node_mask is None else _keep_some(node_mask & ink, ink)
        masked = {} if node_mask is None else {"node_mask": node_mask}  # Conv-4 takes no node_mask
        nodes = self.backbone.forward_features(to_input(images), **masked)
        if getattr(self.matcher, "input", "pooled") == "nodes":
            return nodes
        return self.backbone.forward_head(nodes, pre_logits=True, **masked)

    def view_masks(self, count: int, grid: tuple, device=None) -> torch.Tensor:
        """``[support_views * count, h*w]`` bool: view ``v`` of image ``i`` (row ``v * count + i``) keeps
        ``max(1, round(view_keep * h*w))`` nodes drawn uniformly, from a generator seeded with 0 (the same
        episode always gets the same views)."""
        n = grid[0] * grid[1]
        keep = max(1, round(self.view_keep * n))
        order = torch.rand(self.support_views * count, n, generator=torch.Generator().manual_seed(0)).argsort(-1)
        mask = torch.zeros(self.support_views * count, n, dtype=torch.bool)
        return mask.scatter_(1, order[:, :keep], True).to(device)

    def support_copies(self, support_images: torch.Tensor) -> Optional[torch.Tensor]:
        """uint8 ``[V * S, C, H, W]``, copy-major: the ``support_augment`` copies of every support image when
        the model is scored (``eval()`` mode); None in training or with ``support_augment=0``."""
        if not self.support_augment or self.training:
            return None
        return augmented_copies(support_images, self.support_augment)

    def forward(self, support_images: torch.Tensor, support_labels: torch.Tensor,
                query_images: torch.Tensor) -> torch.Tensor:
        """support_images ``[S, C, H, W]``, support_labels ``[S]``, query_images ``[Q, C, H, W]`` -> logits ``[Q, way]``."""
        feats = self.embed(torch.cat([support_images, query_images]))
        n = support_images.shape[0]
        support, labels = feats[:n], support_labels
        if self.support_views:
            views = self.embed(support_images.repeat(self.support_views, 1, 1, 1),
                               node_mask=self.view_masks(n, self._grid(support_images), support_images.device))
            support, labels = torch.cat([support, views]), support_labels.repeat(self.support_views + 1)
        copies = self.support_copies(support_images)
        if copies is not None:
            support = torch.cat([support, self.embed(copies)])
            labels = torch.cat([labels, support_labels.repeat(self.support_augment)])
        return self.matcher(support.float(), labels, feats[n:].float())


def _keep_some(mask: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``mask [B, N]``, with the rows that keep no node replaced by ``fallback``'s."""
    empty = ~mask.any(dim=1, keepdim=True)
    return torch.where(empty, fallback, mask)


def count_parameters(module: nn.Module) -> dict:
    """``{"trainable": n, "frozen": n}`` parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


def episode_img_size(config) -> Optional[int]:
    """Side the episode images are resized to; None keeps the dataset's own.

    ``--img-size`` when given. Otherwise a backbone loaded with ``--backbone-from`` whose released
    weights expect a fixed input size (the authors' ImageNet ViGs: 224 px; their position embedding
    and pyramid stages are made for it) gets images of that size, grayscale ones through the
    first convolution summed over RGB. Our small variants have no release and keep the dataset's size.
    """
    if config.img_size or not config.backbone_from or not config.backbone:
        return config.img_size
    cfg = timm.models.get_pretrained_cfg(config.backbone) if timm.is_model(config.backbone) else None
    if cfg is None or not cfg.url:
        return None
    size = int(cfg.input_size[-1])
    log.info("episode images resized to %d px, the input size of %s's released weights (--img-size overrides)",
             size, config.backbone)
    return size


def create_backbone(name: str, options: dict, img_size: int, in_chans: int) -> nn.Module:
    """``models.create_backbone(name, img_size=..., in_chans=..., **options)``, an argument the
    backbone does not take or refuses (``--backbone-opt``) given as a ``ConfigError`` naming it."""
    from .config import ConfigError

    try:
        return models.create_backbone(name, img_size=img_size, in_chans=in_chans, **options)
    except TypeError as e:
        unknown = [k for k in options if repr(k) in str(e)]
        if not options or not unknown:
            raise
        raise ConfigError(f"--backbone-opt {unknown[0]}: backbone {name!r} takes no argument {unknown[0]!r} "
                          f"({e})") from None
    except ValueError as e:
        if not options:
            raise
        given = " ".join(f"--backbone-opt {k}={v}" for k, v in options.items())
        raise ConfigError(f"backbone {name!r} with {given}: {e}") from None


def build_model(config, img_size: int, in_chans: int, backbone: Optional[nn.Module] = None) -> nn.Module:
    """Backbone (``config.backbone``; ``backbone`` when given, e.g. shipped weights) + matcher,
    freshly initialised: an :class:`EpisodicModel`, or, when ``config.prompted``, a
    ``fewshot.prompting.PromptedModel`` (frozen backbone, loaded from ``--backbone-from`` when given, plus the prompt)."""
    if backbone is None:
        backbone = create_backbone(config.backbone, dict(config.backbone_opts), img_size, in_chans)
    if getattr(backbone, "memory_format", None) is not None:  # e.g. Conv-4: channels-last is faster on CPU
        backbone = backbone.to(memory_format=backbone.memory_format)
    matcher = matchers.create(config.matcher, **config.component_options("matcher"))
    if config.prompted:
        from .prompting import build_prompted_model  # imports the prompt families only when needed
        return build_prompted_model(config, backbone, matcher)
    return EpisodicModel(backbone, matcher, node_filter=config.node_filter, support_views=config.support_views,
                         view_keep=config.view_keep, support_augment=config.support_augment)
