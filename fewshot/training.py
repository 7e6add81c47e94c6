"""Episodic training: Adam, cosine schedule, gradient clipping, validation for model selection,
atomic checkpoints that a killed run resumes from, evaluation on a fixed test bank, MLflow tracking.

Resuming is exact: episode ``i`` is a pure function of ``(seed, i)``, the global RNG (dropout,
drop-path) is re-seeded from ``(seed, i)`` before every step, and the checkpoint holds the model,
optimiser and scheduler states. On CPU a resumed run ends bit-for-bit where an uninterrupted one does.

Under ``torchrun`` (``WORLD_SIZE > 1``; gloo on CPU, NCCL on CUDA) the model is wrapped in
DistributedDataParallel: every rank trains on its own episode stream (rank 0 on the single-process
stream, rank r on a sampler seeded by ``(seed, r)``), gradients are averaged across ranks, so one
step sees ``world`` episodes. Validation and the test bank are split across ranks and gathered;
only rank 0 writes checkpoints, tracks to MLflow and prints.
"""
from __future__ import annotations

import json
import sys
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from episodes import EpisodeSampler, dataset_info, episode_seed, load_splits
from episodes.sampler import class_groups
from episodes.augment import create_augment

from .checkpoint import load_checkpoint, save_atomic
from .compare import write_scores
from .config import Config, ConfigError
from .distributed import is_main, setup
from .evaluation import autocast_for, evaluate
from .model import build_model, count_parameters, episode_img_size
from .pretraining import pretrain
from .tracking import ending, make_tracker

__all__ = ["Run", "prepare", "train", "train_objective", "resolve_device", "start_process"]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return device


def start_process(config: Config) -> tuple:
    """Join torchrun's process group when ``WORLD_SIZE > 1``, set the torch threads and pick the device
    (under torchrun on CUDA: this rank's GPU). Returns ``(rank, world, device)``; ``(0, 1, device)``
    in a single process."""
    from ._malloc import tune_malloc
    tune_malloc()  # steps reuse their activations' memory instead of page-faulting it in (fewshot/_malloc.py)
    rank, world = setup(config.threads or 1)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return rank, world, device


@dataclass
class Run:
    """Everything a training or evaluation command needs, built and validated before anything is written."""

    config: Config
    splits: object
    model: torch.nn.Module
    device: torch.device
    train_sampler: EpisodeSampler
    val_bank: Optional[object]
    test_bank: object
    run_dir: Path
    backbone_name: str
    rank: int = 0
    world: int = 1
    train_model: Optional[torch.nn.Module] = None  # DistributedDataParallel(model) under torchrun, else model
    augment: Optional[Callable] = None  # episodes.augment policy of --augment (None: off)

    @property
    def forward_model(self) -> torch.nn.Module:
        return self.train_model if self.train_model is not None else self.model


def prepare(config: Config) -> Run:
    """Load data, check episode sizes against every split, build the model. Raises before any output."""
    rank, world, device = start_process(config)
    if world > 1 and config.meta_init != "none":
        raise ConfigError("--meta-init under torchrun is not supported (learn2learn's clones do not go through "
                          "DistributedDataParallel); run it in one process")
    if world > 1 and config.pretrain_epochs:
        raise ConfigError("--pretrain-epochs under torchrun is not supported yet; run it in one process")
    info = dataset_info(config.dataset)
    splits = load_splits(config.dataset, config.data_root, episode_img_size(config), cache=config.cache,
                         val_per_alphabet=config.val_per_alphabet)
    img_size = splits.train.image_shape[-1]
    in_chans = splits.train.image_shape[0]
    stream_seed = config.seed if rank == 0 else episode_seed(config.seed, 1_000_003 * rank)  # rank-seeded streams
    groups = {s: class_groups(splits[s], config.effective_train_episode_groups if s == "train" else config.episode_groups,
                              config.dataset) for s in ("train", "val", "test")}
    train_sampler = EpisodeSampler(splits.train, config.effective_train_way, config.effective_train_shot,
                                   config.effective_train_query, seed=stream_seed, groups=groups["train"])
    val_bank = None
    if config.val_episodes:
        val_bank = EpisodeSampler(splits.val, min(config.way, splits.val.num_classes), config.shot, config.query,
                                  seed=config.bank_seed + 1, groups=groups["val"]).bank(config.val_episodes)
    test_bank = EpisodeSampler(splits.test, config.way, config.shot, config.query,
                               seed=config.bank_seed, groups=groups["test"]).bank(config.eval_episodes)
    torch.manual_seed(config.seed)
    model = build_model(config, img_size, in_chans).to(device)
    backbone_name = config.backbone
    run_dir = Path(config.run_dir or Path("runs") / config.default_run_name(backbone_name))
    if is_main():
        log.info("dataset %s (%s)\n%s", info.name, info.description, splits.describe())
    train_model = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=config.prompted)
    return Run(config, splits, model, device, train_sampler, val_bank, test_bank, run_dir, backbone_name,
               rank, world, train_model, create_augment(config.augment))


def _backbone_source(config: Config) -> Optional[str]:
    """The dataset ``--backbone-from``'s run was trained on (None: no such run, or no file)."""
    if not config.backbone_from:
        return None
    from .prompting import backbone_source
    return backbone_source(config.backbone_from)


def _state(run: Run, opt, sched, step: int, best: dict, run_id: Optional[str]) -> dict:
    return {"model": run.model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "step": step, "best": dict(best), "mlflow_run_id": run_id or "", "config_digest": run.config.digest(),
            "config": json.dumps(run.config.to_dict())}


def _resume(run: Run, opt, sched, path: Path):
    ckpt = load_checkpoint(path)
    saved = json.loads(ckpt["config"]) if ckpt.get("config") else None
    changed = run.config.differences(saved) if saved is not None else (
        [] if ckpt.get("config_digest") == run.config.digest() else ["(settings digest)"])
    if changed:
        raise ConfigError(f"{path} was written by a run with other settings ({'; '.join(changed)}); "
                          "resume with the same options or pick another --run-dir")
    run.model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    return int(ckpt["step"]), dict(ckpt["best"]), ckpt.get("mlflow_run_id") or None


def train_objective(model: torch.nn.Module) -> str:
    """What the training loss scores: the matcher's logits, or the differentiable surrogate a matcher
    without a gradient names in ``gradient_surrogate`` (k-NN's votes: ``matchers.KNNMatcher``)."""
    return getattr(model.matcher, "gradient_surrogate", None) or "cross-entropy of the matcher's logits"


def _no_gradient(config: Config) -> ConfigError:
    """The one line for a matcher whose logits carry no gradient and that names no surrogate."""
    import matchers

    return ConfigError(f"--matcher {config.matcher} gives logits without a gradient, so it cannot train a model; "
                       f"train with a differentiable matcher (e.g. --matcher prototype), then score the trained run "
                       f"with it: fewshot eval --run-dir <run> --matcher {config.matcher} "
                       f"(matchers: {', '.join(matchers.list_matchers())})")


def _episode_batch(run: Run, step: int):
    """Training episode ``step`` on the device: ``(support [S, C, H, W] uint8, support_labels [S],
    query [Q, C, H, W] uint8, query_labels [Q])``, augmented by ``--augment`` with a generator seeded
    from ``(seed, rank, step)``, so a resumed run sees the same images."""
    ep = run.train_sampler[step]
    images = run.splits.train.images
    d = run.device
    support, query = images[ep.support].to(d, non_blocking=True), images[ep.query].to(d, non_blocking=True)
    if run.augment is not None:
        g = torch.Generator().manual_seed(episode_seed(run.config.seed + 104_723 + 1_000_003 * run.rank, step))
        both = run.augment(torch.cat([support, query]), g)
        support, query = both[:len(support)], both[len(support):]
    return support, ep.support_labels.to(d), query, ep.query_labels.to(d)


def _episodic_step(run: Run, step: int):
    """Back-propagate training episode ``step``'s query loss; ``(loss, accuracy)``."""
    s_img, s_lab, q_img, q_lab = _episode_batch(run, step)
    with autocast_for(run.device):
        logits = run.forward_model(s_img, s_lab, q_img)
    if not logits.requires_grad:
        raise _no_gradient(run.config)
    loss = F.cross_entropy(logits.float(), q_lab)
    if hasattr(run.model, "regulariser"):  # a prompt's extra loss term (e.g. soft-delete's sparsity target)
        loss = loss + run.model.regulariser().to(loss)
    loss.backward()
    return loss.detach(), (logits.argmax(-1) == q_lab).float().mean()


def _meta_step(run: Run, step: int):
    """One outer step of the meta-learned prompt (``--meta-init``): episodes ``step * B .. step * B + B - 1``
    (B = ``--meta-batch``) through the model's own meta step (``PromptedModel.meta_step``)."""
    b = run.config.meta_batch
    episodes = [_episode_batch(run, step * b + j) for j in range(b)]
    return run.model.meta_step(episodes, autocast=lambda: autocast_for(run.device))


def train(config: Config, resume: bool = False, progress: bool = True) -> dict:
    """Train, select on validation, evaluate on the test bank; return the result dictionary."""
    run = prepare(config)
    model, device = run.model, run.device
    # only trainable parameters (a prompted model's backbone is frozen); a model with none (e.g.
    # --prompt none --adapt linear) skips the training loop and is only evaluated
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable or [torch.nn.Parameter(torch.zeros(0))], lr=config.lr,
                           weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.episodes)
    last, best_path = run.run_dir / "last.pt", run.run_dir / "best.pt"
    step, best, run_id = 0, {"acc": -1.0, "step": -1}, None
    if resume and last.exists():
        step, best, run_id = _resume(run, opt, sched, last)
        log.info("resuming %s at episode %d", run.run_dir, step)
    elif resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run.run_dir)
    if is_main():  # under torchrun rank 0 alone writes files and tracks
        run.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run.run_dir.glob(".*.pt.tmp*"):  # temporary files of a run killed mid-write
            stale.unlink(missing_ok=True)
        (run.run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    progress = progress and is_main()

    params = count_parameters(model)
    tracker = make_tracker(config.track and is_main(), config.tracking_uri, config.experiment, run.run_dir)
    tracker.start(run.run_dir.name, {**config.to_dict(), "backbone_resolved": run.backbone_name,
                                     "trainable_params": params["trainable"], "frozen_params": params["frozen"],
                                     "train_fingerprint": run.splits.train.fingerprint,
                                     "test_bank_id": run.test_bank.bank_id, "world_size": run.world,
                                     "backbone_source_dataset": _backbone_source(config),
                                     "train_objective": train_objective(model)}, run_id=run_id,
                  tags={"command": "train"}, resume=resume)
    if run_id is None:
        tracker.log_text(yaml.safe_dump(config.to_dict(), sort_keys=False), "config.yaml")
    log.info("parameters: %d trainable, %d frozen", params["trainable"], params["frozen"])
    log.info("training objective: %s", train_objective(model))
    with ending(tracker):
        model.fit(run.splits.train.images, seed=run.config.seed)  # e.g. DAM-VP's centroids; kept when resumed
        if step == 0:  # a run resumed mid-way through episodic training has finished pretraining
            pretrain(run, tracker, resume, progress)
        if trainable:
            step = _train_loop(run, opt, sched, step, best, tracker, progress)
        return _final_evaluation(run, best, tracker, progress)


def _train_loop(run: Run, opt, sched, step: int, best: dict, tracker, progress: bool) -> int:
    config, model = run.config, run.model
    last, best_path = run.run_dir / "last.pt", run.run_dir / "best.pt"
    pending = {"train_loss": [], "train_acc": [], "lr": []}
    first = step
    step_fn = _meta_step if model.meta_learned else _episodic_step
    model.train()
    bar = tqdm(total=config.episodes, initial=step, desc="train", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    while step < config.episodes:
        torch.manual_seed(episode_seed(config.seed + 7919 + 104_729 * run.rank, step))  # dropout: pure in (seed, rank, step)
        opt.zero_grad(set_to_none=True)
        loss, acc = step_fn(run, step)
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        pending["lr"].append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        step += 1
        pending["train_loss"].append(float(loss))
        pending["train_acc"].append(float(acc))
        bar.update(1)
        bar.set_postfix(loss=f"{pending['train_loss'][-1]:.3f}")
        if run.val_bank is not None and (step % config.val_every == 0 or step == config.episodes):
            val = evaluate(model, run.splits.val, run.val_bank, run.device)
            tracker.log_metrics({"val_acc": val.mean, "val_ci95": val.ci95}, step=step)
            if val.mean > best["acc"]:  # the same on every rank: validation is gathered
                best.update(acc=val.mean, step=step)
                if is_main():
                    save_atomic({"model": model.state_dict(), "step": step, "val_acc": val.mean}, best_path)
            if is_main():
                bar.write(f"episode {step}: val {val}", file=sys.stderr)
        if step % config.checkpoint_every == 0 or step == config.episodes:
            for name, values in pending.items():  # one step per logged value, then checkpoint
                tracker.log_metric_history(name, values, start_step=step - len(values) + 1)
                values.clear()
            if is_main():
                save_atomic(_state(run, opt, sched, step, best, tracker.run_id), last)
    bar.close()
    if step > first:
        tracker.log_metrics({"train_episodes_per_s": (step - first) / (time.perf_counter() - t0)}, step=step)
    return step


def _final_evaluation(run: Run, best: dict, tracker, progress: bool) -> dict:
    config, model = run.config, run.model
    best_path = run.run_dir / "best.pt"
    if run.world > 1:
        torch.distributed.barrier()  # rank 0 has written best.pt
    if run.val_bank is not None and best_path.exists():
        model.load_state_dict(load_checkpoint(best_path)["model"])
    t0 = time.perf_counter()
    test = evaluate(model, run.splits.test, run.test_bank, run.device, progress=progress)
    eval_s = time.perf_counter() - t0
    result = {**test.as_dict("test"), "best_val_acc": best["acc"] if best["step"] >= 0 else None,
              "best_step": best["step"], "episodes": config.episodes, "run_dir": str(run.run_dir),
              "mlflow_run_id": tracker.run_id, "backbone": run.backbone_name, "dataset": config.dataset,
              "eval_seconds": round(eval_s, 3), **{f"{k}_params": v for k, v in count_parameters(model).items()}}
    tracker.log_metrics({"test_acc": test.mean, "test_ci95": test.ci95, "eval_seconds": eval_s}, step=config.episodes)
    tracker.log_text("\n".join(f"{a:.6f}" for a in test.accuracies.tolist()) + "\n", "test_episode_accuracies.txt")
    tracker.log_result(result)
    if is_main():
        write_scores(run.run_dir, test.accuracies.tolist(), result)  # result.json + per-episode accuracies
    history = tracker.metric_history(("train_loss", "train_acc", "val_acc"))  # from MLflow (and records pending)
    if history:
        from .plots import learning_curves
        png = learning_curves(history, run.run_dir / "learning_curves.png", title=f"{run.run_dir.name}: test {test}")
        tracker.log_artifact(png)
    log.info("test accuracy: %s", test)
    return result
