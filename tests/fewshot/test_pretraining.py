"""Augmented episodes and whole-class pretraining through the training engine: seeded, and a run
interrupted at any point resumes to the same weights as an uninterrupted one."""
import dataclasses

import pytest
import torch
import yaml

import fewshot.pretraining as pretraining
import fewshot.training as training
from fewshot.config import Config, ConfigError
from fewshot.checkpoint import load_checkpoint

BASE = dict(dataset="glyphs", backbone="conv4", way=3, shot=1, query=2, episodes=4, eval_episodes=6,
            val_episodes=3, val_every=2, checkpoint_every=1, track=False, threads=1, seed=3)


def config(tmp_path, name, **changes):
    return Config(**{**BASE, "run_dir": str(tmp_path / name), **changes})


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


#: Pretraining passes over the whole training split every epoch: 4800 glyphs, ~10 s an epoch of Conv-4
#: here. Its tests train on the first TRAIN_CLASSES classes (600 images, 5-10 mini-batches an epoch):
#: the same code, several steps an epoch, a tenth of the time.
TRAIN_CLASSES = 30


@pytest.fixture
def few_train_classes(monkeypatch):
    """Runs built by ``training.prepare`` see only the first TRAIN_CLASSES classes of glyphs' train split."""
    real = training.load_splits

    def load_splits(*args, **kwargs):
        splits = real(*args, **kwargs)
        return dataclasses.replace(splits, train=splits.train.subset(range(TRAIN_CLASSES), name="glyphs/train-few"))
    monkeypatch.setattr(training, "load_splits", load_splits)


class Interrupt(Exception):
    pass


def interrupt_after(monkeypatch, module, name, calls):
    """Make ``module.name`` raise after ``calls`` successful calls (a kill between two steps)."""
    real, count = getattr(module, name), {"n": 0}

    def wrapped(*args, **kwargs):
        if count["n"] == calls:
            raise Interrupt
        count["n"] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["affine", "elastic"])
def test_augmented_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, policy):
    full = training.train(config(tmp_path, "full", augment=policy), progress=False)
    interrupt_after(monkeypatch, training, "_episodic_step", 3)
    with pytest.raises(Interrupt):
        training.train(config(tmp_path, "cut", augment=policy), progress=False)
    monkeypatch.undo()
    resumed = training.train(config(tmp_path, "cut", augment=policy), resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    assert full["test_acc"] == resumed["test_acc"]


def test_augmentation_changes_what_the_model_sees(tmp_path):
    plain = training.prepare(config(tmp_path, "p", augment="none"))
    aug = training.prepare(config(tmp_path, "a", augment="affine"))
    s_plain, s_aug = training._episode_batch(plain, 0)[0], training._episode_batch(aug, 0)[0]
    assert s_plain.shape == s_aug.shape and not torch.equal(s_plain, s_aug)
    assert torch.equal(s_aug, training._episode_batch(aug, 0)[0])  # episode i's augmentation is fixed
    assert not torch.equal(s_aug, training._episode_batch(aug, 1)[0])


@pytest.mark.slow
def test_pretraining_trains_the_backbone_as_a_classifier_and_checkpoints_each_epoch(tmp_path, few_train_classes):
    cfg = config(tmp_path, "pre", pretrain_epochs=2, pretrain_batch=64, episodes=1)
    run = training.prepare(cfg)
    assert run.splits.train.num_classes == TRAIN_CLASSES
    before = {k: v.clone() for k, v in run.model.backbone.state_dict().items()}
    losses = []

    class Tracker:
        def log_metrics(self, metrics, step):
            losses.append((step, metrics))
    run.run_dir.mkdir(parents=True)
    pretraining.pretrain(run, Tracker(), resume=False, progress=False)
    ckpt = load_checkpoint(run.run_dir / "pretrain.pt")
    assert ckpt["epoch"] == 2 and ckpt["head"]["weight"].shape == (run.splits.train.num_classes, 64)
    assert [s for s, _ in losses] == [1, 2]
    assert losses[1][1]["pretrain_loss"] < losses[0][1]["pretrain_loss"]  # it learns
    assert {"pretrain_acc", "pretrain_val_acc"} <= losses[0][1].keys()
    changed = [k for k, v in run.model.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)


@pytest.mark.slow
def test_pretraining_interrupted_after_an_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch, few_train_classes):
    opts = dict(pretrain_epochs=2, pretrain_batch=128, episodes=2, augment="affine")
    training.train(config(tmp_path, "full", **opts), progress=False)
    with monkeypatch.context() as m:  # undone on leaving; few_train_classes stays
        interrupt_after(m, pretraining, "_epoch", 1)
        with pytest.raises(Interrupt):
            training.train(config(tmp_path, "cut", **opts), progress=False)
    assert load_checkpoint(tmp_path / "cut" / "pretrain.pt")["epoch"] == 1
    training.train(config(tmp_path, "cut", **opts), resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))


def test_pretraining_is_refused_for_a_frozen_prompted_backbone():
    with pytest.raises(ConfigError, match="pretrain-epochs"):
        Config(backbone="test_vig", prompt="gpf", pretrain_epochs=1)


@pytest.mark.parametrize("bad, match", [(dict(augment="rotate"), "augment must be one of none, affine, elastic"),
                                        (dict(pretrain_epochs=-1), "pretrain_epochs"),
                                        (dict(pretrain_batch=1), "pretrain_batch")])
def test_bad_values_are_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        Config(**bad)
