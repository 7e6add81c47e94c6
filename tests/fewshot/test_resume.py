"""Interrupt a training run (Ctrl-C injected at a training episode), resume it with ``resume=True``,
and it ends bit for bit where an uninterrupted run with the same seed ends: weights, optimiser and
scheduler state, best checkpoint, per-episode test accuracies. Fast (in-process, tiny runs), so the
quick subset holds a resume test; the subprocess SIGKILL / SIGINT versions are in tests/reliability."""
from __future__ import annotations

import pytest
import torch

from fewshot.config import Config
from fewshot.training import train

from ..conftest import assert_same_training_outcome

SEED = 7  # the training stream's seed; the banks use bank_seed 0 (test) and 1 (validation)

RUNS = {
    "conv4": dict(backbone="conv4"),
    "prompt-gpf": dict(backbone="test_vig", prompt="gpf", prompt_blocks="0"),
    "prompt-vgp-tune": dict(backbone="test_vig", prompt="vgp", prompt_nodes=2, prompt_rank=2, adapt="tune",
                            adapt_steps=1),
}


def tiny(run_dir, **changes) -> Config:
    base = dict(dataset="glyphs", way=3, shot=1, query=2, episodes=6, checkpoint_every=2, val_episodes=2,
                val_every=3, eval_episodes=4, track=False, threads=1, seed=SEED, run_dir=str(run_dir))
    return Config(**{**base, **changes})


def interrupted_then_resumed(cfg: Config, interrupt, at_episode: int, expect_step: int) -> dict:
    interrupt.arm(SEED, at_episode)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert interrupt.fired
    from pathlib import Path
    ckpt = torch.load(Path(cfg.run_dir) / "last.pt", weights_only=True)
    assert int(ckpt["step"]) == expect_step  # the run really stopped in the middle
    return train(cfg, resume=True, progress=False)


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_interrupted_and_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(tmp_path, interrupt, kind):
    whole = tiny(tmp_path / "whole", **RUNS[kind])
    reference = train(whole, progress=False)
    assert not interrupt.fired
    # episode 3 is requested at step 3: the checkpoint of step 2 is on disk, step 3 is lost and redone
    cut = tiny(tmp_path / "cut", **RUNS[kind])
    resumed = interrupted_then_resumed(cut, interrupt, at_episode=3, expect_step=2)
    assert_same_training_outcome(tmp_path / "whole", tmp_path / "cut", reference, resumed)
    # the comparison can fail: another seed ends elsewhere
    other = train(tiny(tmp_path / "other", seed=SEED + 1, **RUNS[kind]), progress=False)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "other" / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_settings_is_refused_naming_them(tmp_path, interrupt):
    cfg = tiny(tmp_path / "run")
    interrupt.arm(SEED, 3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    with pytest.raises(ValueError, match=r"lr: 0\.001 -> 0\.002"):
        train(cfg.replace(lr=2e-3), resume=True, progress=False)
