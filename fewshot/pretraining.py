"""Whole-class pretraining: a plain classifier over every training class before episodic training.

Baseline++ (Chen et al., ICLR 2019) and RFS (Tian et al., ECCV 2020) found that a backbone trained
as an ordinary classifier over all base classes is a strong start for few-shot learning. With
``--pretrain-epochs E`` the backbone and a linear head over the pooled embedding train for ``E``
epochs of cross-entropy on mini-batches of the training split (``--pretrain-batch``, the
``--augment`` policy, Adam at ``--lr`` with a cosine schedule); the head is then dropped and
episodic training starts from the pretrained backbone.

Resuming is exact at epoch granularity: ``pretrain.pt`` in the run dir holds backbone, head,
optimiser and schedule after every finished epoch; the batch order of epoch ``e`` and the
augmentation of batch ``b`` are pure functions of ``(seed, e)`` and ``(seed, e, b)``.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from episodes import episode_seed

from .checkpoint import load_checkpoint, save_atomic
from .evaluation import autocast_for, evaluate
from .model import to_input

__all__ = ["pretrain"]

log = logging.getLogger(__name__)

_ORDER_SALT, _AUGMENT_SALT, _DROPOUT_SALT = 15_485_863, 32_452_843, 49_979_687


def pretrain(run, tracker, resume: bool, progress: bool = True) -> None:
    """Train ``run.model.backbone`` as a ``num_classes``-way classifier for ``config.pretrain_epochs``
    epochs (no-op when 0), checkpointing to ``run_dir/pretrain.pt`` after each epoch. With ``resume``
    it continues from that file (loading the finished weights when every epoch is done)."""
    config, device = run.config, run.device
    if config.pretrain_epochs == 0:
        return
    backbone, train = run.model.backbone, run.splits.train
    head = nn.Linear(backbone.num_features, train.num_classes).to(device)
    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(train) / config.pretrain_batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.pretrain_epochs * per_epoch)
    path, epoch = run.run_dir / "pretrain.pt", 0
    if resume and path.exists():
        ckpt = load_checkpoint(path)
        backbone.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        epoch = int(ckpt["epoch"])
        log.info("pretraining: resuming %s after epoch %d", path, epoch)
    labels = train.labels.to(device)
    backbone.train()
    for epoch in range(epoch, config.pretrain_epochs):
        loss, acc = _epoch(run, backbone, head, opt, sched, labels, epoch, progress)
        if run.rank == 0:
            save_atomic({"model": backbone.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "epoch": epoch + 1}, path)
        metrics = {"pretrain_loss": loss, "pretrain_acc": acc}
        if run.val_bank is not None:
            val = evaluate(run.model, run.splits.val, run.val_bank, device)
            metrics["pretrain_val_acc"] = val.mean
            backbone.train()
        tracker.log_metrics(metrics, step=epoch + 1)
        log.info("pretraining epoch %d/%d: %s", epoch + 1, config.pretrain_epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def _epoch(run, backbone, head, opt, sched, labels, epoch: int, progress: bool):
    """One epoch over the training split in a seeded order; returns mean ``(loss, accuracy)``."""
    config, images = run.config, run.splits.train.images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(
        episode_seed(config.seed + _ORDER_SALT, epoch)))
    batches = [b for b in order.split(config.pretrain_batch) if len(b) > 1]  # BatchNorm needs two images
    total_loss, total_right, seen = 0.0, 0, 0
    for b, idx in enumerate(tqdm(batches, desc=f"pretrain {epoch + 1}/{config.pretrain_epochs}",
                                 disable=not progress, leave=False)):
        key = epoch * 1_000_003 + b
        x = images[idx].to(run.device, non_blocking=True)
        if run.augment is not None:
            x = run.augment(x, torch.Generator().manual_seed(episode_seed(config.seed + _AUGMENT_SALT, key)))
        torch.manual_seed(episode_seed(config.seed + _DROPOUT_SALT, key))  # dropout / drop-path
        y = labels[idx.to(labels.device)]
        with autocast_for(run.device):
            logits = head(backbone.forward_head(backbone.forward_features(to_input(x)), pre_logits=True).float())
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], config.grad_clip)
        opt.step()
        sched.step()
        total_loss += float(loss.detach()) * len(idx)
        total_right += int((logits.argmax(-1) == y).sum())
        seen += len(idx)
    return total_loss / max(seen, 1), total_right / max(seen, 1)
