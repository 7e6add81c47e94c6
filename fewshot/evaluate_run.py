"""``fewshot eval``: score a trained run's weights on a fixed test bank and track the result."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Optional

import yaml

from episodes import EpisodeBank, EpisodeSampler, load_splits
from episodes.sampler import class_groups

from .checkpoint import CheckpointError, load_checkpoint
from .compare import write_scores
from .distributed import is_main
from .config import Config, ConfigError, legacy_settings, merge
from .evaluation import evaluate
from .model import build_model, count_parameters, episode_img_size
from .tracking import make_tracker
from .training import start_process

__all__ = ["load_run_config", "load_trained_model", "evaluate_run"]

log = logging.getLogger(__name__)


def load_run_config(run_dir: Path) -> Config:
    """The resolved config a run was trained with (``run_dir/config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a fewshot run folder (no config.yaml); give the --run-dir of a training run")
    return merge(Config(), legacy_settings(yaml.safe_load(path.read_text()) or {}))


def load_trained_model(run_dir: Path, config: Config, images, checkpoint: str = "best"):
    """``(model on CPU with run_dir/{checkpoint}.pt loaded, checkpoint path)`` for images like ``images``."""
    img_size, in_chans = images.image_shape[-1], images.image_shape[0]
    model = build_model(config, img_size, in_chans)
    path = Path(run_dir) / f"{checkpoint}.pt"
    state = load_checkpoint(path)["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path} does not fit backbone {config.backbone!r} "
                              f"with matcher {config.matcher!r} ({first})") from None
    return model, path


_BANK_FIELDS = frozenset({"dataset", "data_root", "img_size", "way", "shot", "query", "eval_episodes", "bank_seed"})
"""Settings that define the bank; already in an evaluation folder's name through the bank id."""


def eval_folder(run_dir: Path, config: Config, checkpoint: str, bank_id: str) -> Path:
    """``run_dir/eval-<checkpoint>-<bank id>``, plus ``-<8 hex>`` naming the scoring settings (matcher, its options,
    node filter, adaptation, ...) when they differ from the run's own, so that two evaluations of one run on one
    bank with different matchers land in two folders that ``fewshot compare`` can pair."""
    name = f"eval-{checkpoint}-{bank_id}"
    saved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    changed = sorted(d for d in config.differences(saved) if d.split(":")[0] not in _BANK_FIELDS)
    if changed:
        name += "-" + hashlib.sha256("\n".join(changed).encode()).hexdigest()[:8]
    return Path(run_dir) / name


def weights_run_dir(name: str, config: Config) -> Path:
    """The folder that holds the evaluations of shipped weights ``name`` (``runs/pretrained/<name>``, or under
    ``--run-dir``), with the settings they were trained with in its config.yaml, as a trained run's."""
    from .pretrained import pretrained_config

    run_dir = Path(config.run_dir or Path("runs") / "pretrained" / name)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(pretrained_config(name).to_dict(), sort_keys=False))
    return run_dir


def evaluate_run(run_dir: Optional[Path], config: Config, checkpoint: str = "best", bank_file: Optional[str] = None,
                 progress: bool = True, weights: Optional[str] = None) -> dict:
    """Evaluate ``run_dir/{checkpoint}.pt`` with ``config`` (the run's, with the user's changes), or the shipped
    weights ``weights`` (``fewshot.pretrained``; results go to :func:`weights_run_dir`)."""
    _, _, device = start_process(config)  # joins torchrun's process group when WORLD_SIZE > 1
    splits = load_splits(config.dataset, config.data_root, episode_img_size(config), cache=config.cache)
    test = splits.test
    if bank_file:
        bank = EpisodeBank.load(bank_file, test)
    else:
        bank = EpisodeSampler(test, config.way, config.shot, config.query, seed=config.bank_seed,
                              groups=class_groups(test, config.episode_groups, config.dataset)).bank(config.eval_episodes)
    if weights:
        from models.shipped import shipped_file
        from .pretrained import load_pretrained

        _, model, _ = load_pretrained(weights, config)
        run_dir, path, checkpoint = weights_run_dir(weights, config), shipped_file(weights, verify=False), "shipped"
    else:
        model, path = load_trained_model(run_dir, config, test, checkpoint)
    model.to(device)
    out = eval_folder(run_dir, config, checkpoint, bank.bank_id)  # for `fewshot compare` (also with --no-track)
    tracker = make_tracker(config.track and is_main(), config.tracking_uri, config.experiment, out)  # rank 0 tracks
    params = count_parameters(model)
    tracker.start(f"eval-{Path(run_dir).name}", {**config.to_dict(), "checkpoint": str(path), "weights": weights,
                                                 "test_bank_id": bank.bank_id, **{f"{k}_params": v for k, v in params.items()}},
                  tags={"command": "eval"})
    status = "FAILED"
    try:
        t0 = time.perf_counter()
        res = evaluate(model, test, bank, device, progress=progress)
        result = {**res.as_dict("test"), "eval_seconds": round(time.perf_counter() - t0, 3),
                  "checkpoint": str(path), "mlflow_run_id": tracker.run_id, "dataset": config.dataset,
                  "matcher": config.matcher}
        tracker.log_metrics({"test_acc": res.mean, "test_ci95": res.ci95}, step=0)
        tracker.log_text("\n".join(f"{a:.6f}" for a in res.accuracies.tolist()) + "\n", "test_episode_accuracies.txt")
        tracker.log_result(result)  # result.json and the headline tags
        result["eval_dir"] = str(out)
        if is_main():
            write_scores(out, res.accuracies.tolist(), result)
        status = "FINISHED"
        return result
    finally:
        tracker.end(status)
