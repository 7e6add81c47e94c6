"""Many-shot transfer (``fewshot transfer``): the VPT / VGP protocol beside the episodic commands.

A backbone (trained here, ``--backbone-from runs/<run>/best.pt``, or the authors' ViG checkpoint)
gets a linear classifier over the task's K classes and is adapted on a labelled train split by
mini-batch training, then scored top-1 on a test split. ``--adapt`` says what trains (the rest of
the backbone is frozen, its BatchNorms in eval mode, so their running statistics never move):

- ``linear``: the classifier only (linear probe);
- ``head``: the backbone's last block and final norm plus the classifier (the project's
  "head-only"; VPT's Partial-1);
- ``full``: every backbone parameter plus the classifier (full fine-tuning);
- a prompt (``vpt``, ``vpt-shallow``, ``gpf``, ``gpf-plus``, ``vgp``, ``add``, ``modify``,
  ``delete``, ``graph``; :mod:`prompts`): the prompt's parameters plus the classifier, the prompt
  attached through the backbone's block hooks (:meth:`prompts.Prompt.forward_nodes`).
  A support-conditioned prompt (``add``, ``modify``, ``graph``, ``delete`` with a relevance scorer)
  is generated from a fixed, seeded *conditioning set* of ``condition_per_class`` training images
  per class, the same in training and testing.

Training: AdamW or SGD (momentum 0.9), no weight decay on biases, norms and the backbone's
``no_weight_decay()`` names; per-step linear warm-up then cosine decay (``LinearLR`` then
``CosineAnnealingLR`` in ``SequentialLR``); label smoothing; ``episodes.augment`` policies; bf16
autocast on CUDA only. Batches are a pure function of ``(seed, epoch)``, augmentation and dropout of
``(seed, step)``, so ``--resume`` from ``last.pt`` (written atomically after every epoch) ends
exactly where an uninterrupted run does. With a validation split, ``best.pt`` keeps the best
validation epoch and the test scores it. The run folder gets ``result.json`` and
``test_image_correct.txt`` (one 0/1 a test image, in test-set order), which ``fewshot compare``
pairs by McNemar's test.

Glossary: B images in a batch, C x S x S images, K classes, N0 patch nodes, D feature dim.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from episodes.sampler import episode_seed

from .checkpoint import load_checkpoint, save_atomic
from .evaluation import autocast_for
from .model import to_input
from .training import resolve_device

__all__ = ["ADAPT_MODES", "BASELINE_MODES", "OPTIMIZERS", "TRANSFER_SOURCES", "TransferConfig", "TransferModel",
           "load_transfer_data", "build_transfer_model", "trainable_modules", "make_optimizer", "make_scheduler",
           "predict", "transfer", "CORRECT_FILE"]

log = logging.getLogger(__name__)

BASELINE_MODES = ("linear", "head", "full")
PROMPT_MODES = ("vpt", "vpt-shallow", "gpf", "gpf-plus", "vgp", "svgp", "provp", "provp-ref", "add", "modify", "delete", "soft-delete", "graph")
ADAPT_MODES = BASELINE_MODES + PROMPT_MODES
OPTIMIZERS = ("adamw", "sgd")
TRANSFER_SOURCES = ("vtab", "class-folders")
"""``--dataset`` names read as transfer tasks; every other name is an episodic dataset (its test classes)."""
CORRECT_FILE = "test_image_correct.txt"
RESULT_FILE = "result.json"
DEFAULT_TRAIN_PER_CLASS = 10
"""Training images per class of an episodic dataset's test classes when ``--train-per-class`` is not given."""
DEFAULT_CONDITION_PER_CLASS = 4
"""Conditioning images per class of a generated prompt when ``--condition-per-class`` is not given."""
_NOT_SETTINGS = ("run_dir", "track", "tracking_uri", "experiment", "threads")
"""Fields that do not change a run's numbers (``--resume`` accepts other values for them)."""


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """Settings of one ``fewshot transfer`` run (the CLI options, same names)."""

    dataset: str = "glyphs"
    data_root: Optional[str] = None
    img_size: Optional[int] = None
    vtab_protocol: str = "final"
    train_per_class: Optional[int] = None
    val_per_class: int = 0
    backbone: str = "vig_small_28"
    backbone_from: Optional[str] = None
    adapt: str = "linear"
    prompt_opts: Dict[str, str] = dataclasses.field(default_factory=dict)
    condition_per_class: Optional[int] = None
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    augment: str = "none"
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    run_dir: Optional[str] = None
    track: bool = True
    tracking_uri: Optional[str] = None
    experiment: str = "transfer"

    def __post_init__(self):
        checks = [
            (self.adapt in ADAPT_MODES, f"--adapt must be one of {', '.join(ADAPT_MODES)}, got {self.adapt!r}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.vtab_protocol in ("final", "tune"), f"--vtab-protocol must be final or tune, got {self.vtab_protocol!r}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.warmup_epochs < self.epochs,
             f"--warmup-epochs must be in 0..{self.epochs - 1} (below --epochs {self.epochs}), got {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.condition_per_class is None or self.condition_per_class >= 1,
             f"--condition-per-class must be >= 1, got {self.condition_per_class}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.prompt_opts and self.adapt not in PROMPT_MODES:
            raise ValueError(f"--prompt-opt {', '.join(sorted(self.prompt_opts))} given, but --adapt {self.adapt} has no "
                             f"prompt; prompts: {', '.join(PROMPT_MODES)}")
        episodic = self.dataset not in TRANSFER_SOURCES
        if not episodic and (self.val_per_class or self.train_per_class is not None):
            flag = "--val-per-class" if self.val_per_class else "--train-per-class"
            raise ValueError(f"{flag} splits an episodic dataset's classes; --dataset {self.dataset} has its own splits")
        if self.condition_per_class is not None and self.adapt not in ("add", "modify", "graph", "delete"):
            raise ValueError(f"--condition-per-class is for prompts generated from training images (add, modify, "
                             f"graph, delete); --adapt {self.adapt} has none")
        if self.dataset != "vtab" and self.vtab_protocol != "final":
            raise ValueError(f"--vtab-protocol is for --dataset vtab, not {self.dataset}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def settings(self) -> dict:
        """The fields that determine the run's numbers (what ``--resume`` must find unchanged)."""
        return {k: v for k, v in self.to_dict().items() if k not in _NOT_SETTINGS}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:8]

    def default_run_dir(self) -> Path:
        return Path("runs") / f"transfer-{self.dataset}-{self.backbone}-{self.adapt}-seed{self.seed}-{self.digest()}"


# ----- data -------------------------------------------------------------------------------------
def load_transfer_data(config: TransferConfig, img_size: int, in_chans: int):
    """The task's :class:`episodes.transfer_data.TransferSplits`: VTAB lists, class folders, or an
    episodic dataset's test classes split per class. ``img_size`` / ``in_chans`` are used for the
    file sources (an episodic dataset has its own channels)."""
    from episodes import transfer_data

    if config.dataset in TRANSFER_SOURCES:
        if not config.data_root:
            raise ValueError(f"--dataset {config.dataset} reads files: give their folder with --data-root")
        if config.dataset == "vtab":
            return transfer_data.load_vtab(config.data_root, config.vtab_protocol, img_size, in_chans)
        return transfer_data.load_class_folders(config.data_root, img_size, in_chans)
    from episodes import load_splits

    test = load_splits(config.dataset, config.data_root, config.img_size).test
    per_class = DEFAULT_TRAIN_PER_CLASS if config.train_per_class is None else config.train_per_class
    return transfer_data.split_per_class(test, per_class, config.val_per_class, config.seed,
                                         source=f"{config.dataset} test classes")


# ----- the model ----------------------------------------------------------------------------------
def _last_block(backbone: nn.Module) -> nn.Module:
    """The backbone's last block: ``blocks[-1]`` (ViG, Conv-4) or ``stages[-1].blocks[-1]`` (pyramid ViG)."""
    if hasattr(backbone, "stages"):
        return backbone.stages[-1].blocks[-1]
    if hasattr(backbone, "blocks"):
        return backbone.blocks[-1]
    raise ValueError(f"--adapt head trains the last block, but {type(backbone).__name__} has no blocks")


_TRAINED = {
    "linear": lambda m: [m.classifier],
    "head": lambda m: [_last_block(m.backbone), getattr(m.backbone, "norm", nn.Identity()), m.classifier],
    "full": lambda m: [m.backbone, m.classifier],
}


def trainable_modules(model: "TransferModel") -> List[nn.Module]:
    """The modules ``model.adapt`` trains (everything else is frozen and kept in eval mode)."""
    return _TRAINED.get(model.adapt, lambda m: [m.prompt, m.classifier])(model)


class TransferModel(nn.Module):
    """Backbone (+ prompt) + linear classifier; ``forward(images) -> logits [B, K]``.

    Args:
        backbone: a ``models`` backbone (``forward_features`` / ``forward_head`` contract).
        num_classes: K.
        adapt: one of :data:`ADAPT_MODES`; sets ``requires_grad`` (see :func:`trainable_modules`).
        prompt: a :class:`prompts.Prompt` built for ``backbone`` when ``adapt`` is a prompt, else None.

    Example:
        >>> model = TransferModel(models.create_backbone("test_vig"), num_classes=10, adapt="linear")
        >>> model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, backbone: nn.Module, num_classes: int, adapt: str = "linear", prompt: Optional[nn.Module] = None):
        super().__init__()
        if adapt not in ADAPT_MODES:
            raise ValueError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {adapt!r}")
        if (prompt is not None) != (adapt in PROMPT_MODES):
            raise ValueError(f"adapt {adapt!r} {'needs' if prompt is None else 'takes no'} prompt")
        if num_classes < 2:
            raise ValueError(f"a transfer task needs at least 2 classes, got {num_classes}")
        self.backbone, self.prompt, self.adapt = backbone, prompt, adapt
        self.classifier = nn.Linear(int(backbone.num_features), num_classes)
        self._condition: Optional[tuple] = None  # (nodes [S, N0, D], labels [S]) of the conditioning set
        from prompts.base import freeze

        freeze(self)  # then the adapt mode's modules train again
        for module in trainable_modules(self):
            for p in module.parameters():
                p.requires_grad_(True)

    @property
    def conditioned(self) -> bool:
        return self.prompt is not None and bool(self.prompt.conditioned)

    def train(self, mode: bool = True):
        """Trained modules follow ``mode``; the frozen rest of the backbone stays in eval mode."""
        super().train(mode)
        if mode:
            self.backbone.eval()
            for module in trainable_modules(self):
                module.train()
        return self

    @torch.no_grad()
    def set_conditioning(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep the prompt's support features of ``images [S, C, H, W]`` (uint8; ``prompt.support_features``:
        the unprompted frozen backbone's nodes ``[S, N0, D]``, or ``{block: [S, N0, D]}``) and their
        ``labels [S]``: a conditioned prompt is generated from them at every forward pass."""
        was = self.backbone.training
        self.backbone.eval()
        nodes = self.prompt.support_features(self.backbone, to_input(images))
        as_float = {i: n.float() for i, n in nodes.items()} if isinstance(nodes, dict) else nodes.float()
        self._condition = (as_float, labels)
        self.backbone.train(was)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float ``[B, C, H, W]`` -> pooled ``[B, D]`` (prompted when there is a prompt)."""
        x = to_input(images)
        if self.prompt is None:
            return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        if self.conditioned:
            if self._condition is None:
                raise RuntimeError(f"prompt {self.prompt.name!r} is conditioned: call set_conditioning() first")
            self.prompt.set_episode(*self._condition)
        return self.prompt.embed(self.backbone, x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[B, C, H, W]`` (uint8, or float already scaled) -> logits ``[B, K]`` (float32)."""
        return self.classifier(self.features(images).float())

    def regulariser(self) -> torch.Tensor:
        """The prompt's extra loss term of the last forward pass (0 without a prompt)."""
        return self.prompt.regulariser() if self.prompt is not None else torch.zeros(())


def build_transfer_model(config: TransferConfig, img_size: int, in_chans: int, num_classes: int) -> TransferModel:
    """Backbone ``config.backbone`` (weights from ``config.backbone_from`` when given, else random with
    a one-line warning), the prompt of a prompt ``adapt``, a fresh classifier; seeded by ``config.seed``."""
    import models
    import prompts
    from registry import convert_options

    from .prompting import check_backbone_options, load_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        backbone = models.create_backbone(config.backbone, img_size=img_size, in_chans=in_chans)
        if config.backbone_from:
            check_backbone_options(config.backbone_from, {})  # fewshot transfer builds the backbone's defaults
            load_backbone(backbone, config.backbone_from)
        else:
            log.warning("--backbone %s is randomly initialised (no --backbone-from): %s adapts an untrained "
                        "backbone; pass --backbone-from runs/<run>/best.pt or the authors' checkpoint",
                        config.backbone, f"--adapt {config.adapt}")
        prompt = None
        if config.adapt in PROMPT_MODES:
            options = convert_options(prompts.get(config.adapt), config.prompt_opts, f"prompt {config.adapt!r}",
                                      skip=("backbone",))
            prompt = prompts.create(config.adapt, backbone, **options)
        return TransferModel(backbone, num_classes, config.adapt, prompt)


def default_image_spec(backbone: str) -> tuple:
    """``(img_size, in_chans)`` of the backbone's pretrained config (what the authors' weights expect)."""
    import timm

    import models  # noqa: F401  (registers the fewshot backbones)

    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None:
        return 224, 3
    c, h, _ = cfg.input_size
    return int(h), int(c)


# ----- optimisation -------------------------------------------------------------------------------
def make_optimizer(model: TransferModel, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9) over the trainable parameters; biases, norm weights (1-D tensors)
    and the backbone's ``no_weight_decay()`` names get no weight decay."""
    skip = {f"backbone.{n}" for n in getattr(model.backbone, "no_weight_decay", lambda: ())()}
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or n in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Per-step linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps``, then cosine
    decay to 0 at ``total_steps``."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps <= 0:
        return cosine
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0,
                                             total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[warmup_steps])


@torch.inference_mode()
def predict(model: TransferModel, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Top-1 predictions ``[N]`` of uint8 ``images [N, C, H, W]`` (eval mode, bf16 autocast on CUDA)."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        with autocast_for(device):
            out.append(model(images[start:start + batch_size].to(device)).argmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _conditioning_set(train, num_classes: int, per_class: int, seed: int) -> torch.Tensor:
    """Indices of up to ``per_class`` training images of every class, drawn with a generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(episode_seed(seed, 271_828))
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(train.labels == c).flatten()
        chosen.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    return torch.cat(chosen)


# ----- the command --------------------------------------------------------------------------------
@dataclasses.dataclass
class _State:
    epoch: int = 0
    best: dict = dataclasses.field(default_factory=lambda: {"acc": -1.0, "epoch": -1})
    history: list = dataclasses.field(default_factory=list)
    run_id: Optional[str] = None


def _resume(path: Path, config: TransferConfig, model, optimizer, scheduler) -> _State:
    ckpt = load_checkpoint(path)
    saved = json.loads(ckpt.get("settings") or "{}")
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in config.settings().items() if saved.get(k) != v]
    if changed:
        raise ValueError(f"{path} was written by a run with other settings ({'; '.join(changed)}); resume with the "
                         "same options or pick another --run-dir")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    return _State(int(ckpt["epoch"]), dict(ckpt["best"]), json.loads(ckpt["history"]), ckpt.get("mlflow_run_id") or None)


def transfer(config: TransferConfig, resume: bool = False, progress: bool = True) -> dict:
    """Adapt, select on validation (when there is a val split), score top-1 on test; the result dict.

    Writes ``last.pt`` (every epoch), ``best.pt`` (with validation), ``result.json`` and
    :data:`CORRECT_FILE` to the run folder, and tracks one MLflow run (``--no-track``: none).
    """
    from episodes.augment import create_augment

    from .tracking import ending, make_tracker

    t_start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    augment = create_augment(config.augment)
    img_size, in_chans = default_image_spec(config.backbone)
    img_size = config.img_size or img_size
    data = load_transfer_data(config, img_size, in_chans)
    log.info("%s", data.describe())
    c, h, _ = data.image_shape
    model = build_transfer_model(config, h, c, data.num_classes).to(device)
    if config.condition_per_class is not None and not model.conditioned:
        raise ValueError(f"--condition-per-class given, but prompt {config.adapt!r} with these options is not generated "
                         "from training images (e.g. delete with scorer=learned)")
    if model.conditioned:
        per_class = config.condition_per_class or DEFAULT_CONDITION_PER_CLASS
        cond = _conditioning_set(data.train, data.num_classes, per_class, config.seed)
        model.set_conditioning(data.train.images[cond].to(device), data.train.labels[cond].to(device))
    n_train = len(data.train)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    optimizer = make_optimizer(model, config.optimizer, config.lr, config.weight_decay)
    scheduler = make_scheduler(optimizer, config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch)
    run_dir = Path(config.run_dir) if config.run_dir else config.default_run_dir()
    last, best_path = run_dir / "last.pt", run_dir / "best.pt"
    state = _State()
    if resume and last.exists():
        state = _resume(last, config, model, optimizer, scheduler)
        log.info("resuming %s after epoch %d", run_dir, state.epoch)
    elif resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    log.info("parameters: %d trainable, %d frozen (--adapt %s)", trainable, frozen, config.adapt)
    tracker = make_tracker(config.track, config.tracking_uri, config.experiment, run_dir)
    tracker.start(run_dir.name, {**config.settings(), "trainable_params": trainable, "frozen_params": frozen,
                                 "num_classes": data.num_classes, "train_images": n_train,
                                 "test_images": len(data.test), "test_set_id": data.test.fingerprint,
                                 "source": data.source}, run_id=state.run_id,
                  tags={"command": "transfer", "adapt": config.adapt}, resume=resume)
    with ending(tracker):
        train_s = _train(config, model, data, optimizer, scheduler, state, device, augment, run_dir, tracker, progress)
        if data.val is not None and best_path.exists():
            model.load_state_dict(load_checkpoint(best_path)["model"])
        correct = (predict(model, data.test.images, device) == data.test.labels).to(torch.uint8)
        acc = float(correct.float().mean())
        n = correct.numel()
        result = {
            "kind": "transfer", "test_acc": acc, "test_acc_ci95": 1.96 * math.sqrt(acc * (1 - acc) / n),
            "test_images": n, "test_set_id": data.test.fingerprint, "num_classes": data.num_classes,
            "train_images": n_train, "adapt": config.adapt, "backbone": config.backbone,
            "backbone_from": config.backbone_from, "dataset": config.dataset, "source": data.source,
            "epochs": config.epochs, "best_epoch": state.best["epoch"] if data.val is not None else config.epochs,
            "best_val_acc": state.best["acc"] if data.val is not None else None,
            "trainable_params": trainable, "frozen_params": frozen, "train_seconds": round(train_s, 3),
            "wall_seconds": round(time.perf_counter() - t_start, 3), "run_dir": str(run_dir),
            "mlflow_run_id": tracker.run_id,
        }
        text = "".join(f"{int(v)}\n" for v in correct.tolist())
        (run_dir / CORRECT_FILE).write_text(text)
        (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
        tracker.log_metrics({"test_acc": acc, "wall_seconds": result["wall_seconds"]}, step=config.epochs)
        tracker.log_text(text, CORRECT_FILE)
        tracker.log_result(result)
        return result


def _train(config, model, data, optimizer, scheduler, state: _State, device, augment, run_dir: Path, tracker,
           progress: bool) -> float:
    """Epochs ``state.epoch + 1 .. config.epochs``; returns the seconds spent."""
    n = len(data.train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    forked = [device] if device.type == "cuda" else []
    t0 = time.perf_counter()
    bar = tqdm(total=config.epochs * steps_per_epoch, initial=state.epoch * steps_per_epoch, desc="transfer",
               disable=not progress, dynamic_ncols=True)
    while state.epoch < config.epochs:
        epoch = state.epoch
        order = torch.randperm(n, generator=torch.Generator().manual_seed(episode_seed(config.seed, epoch)))
        model.train()
        losses, hits, lrs = [], 0, []
        for b in range(steps_per_epoch):
            step = epoch * steps_per_epoch + b
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            images, labels = data.train.images[idx].to(device), data.train.labels[idx].to(device)
            with torch.random.fork_rng(devices=forked):
                torch.manual_seed(episode_seed(config.seed + 7919, step))  # dropout, Gumbel noise: pure in (seed, step)
                if augment is not None:
                    images = augment(images, torch.Generator().manual_seed(episode_seed(config.seed + 104_723, step)))
                with autocast_for(device):
                    logits = model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
                loss = loss + model.regulariser().to(loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            hits += int((logits.argmax(-1) == labels).sum())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        state.epoch = epoch + 1
        record = {"epoch": state.epoch, "train_loss": sum(losses) / len(losses), "train_acc": hits / n,
                  "lr": lrs[0]}
        if data.val is not None:
            val_acc = float((predict(model, data.val.images, device) == data.val.labels).float().mean())
            record["val_acc"] = val_acc
            if val_acc > state.best["acc"]:
                state.best = {"acc": val_acc, "epoch": state.epoch}
                save_atomic({"model": model.state_dict(), "epoch": state.epoch, "val_acc": val_acc}, run_dir / "best.pt")
        state.history.append(record)
        tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=state.epoch)
        log.info("%s", " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": state.epoch, "best": dict(state.best),
                     "history": json.dumps(state.history), "mlflow_run_id": tracker.run_id or "",
                     "settings": json.dumps(config.settings())}, run_dir / "last.pt")
    bar.close()
    return time.perf_counter() - t0
