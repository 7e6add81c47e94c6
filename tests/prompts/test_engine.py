"""fewshot.prompting: config validation, checkpoint loading, the training entry point."""
from __future__ import annotations

import pytest
import torch

import matchers
import models
import prompts
from fewshot.checkpoint import CheckpointError, save_atomic
from fewshot.config import Config, ConfigError
from fewshot.prompting import PromptedModel, augment, build_prompted_model, load_backbone


@pytest.mark.parametrize("changes,message", [
    ({"adapt": "maml"}, "adapt must be one of"),
    ({"prompt_blocks": "0;2"}, "prompt_blocks"),
    ({"prompt_keep": 0.0}, "prompt_keep"),
    ({"adapt_steps": -1}, "adapt_steps"),
    ({"adapt_lr": -1.0}, "adapt_lr"),
    ({"adapt": "full", "prompt": "vgp"}, "--prompt none"),
])
def test_config_rejects_bad_prompting_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config().replace(**changes)


def test_prompted_flag():
    assert not Config().prompted
    assert Config(prompt="gpf").prompted and Config(adapt="linear").prompted


def test_option_the_prompt_does_not_take_is_an_error():
    bb = models.create_backbone("test_vig")
    with pytest.raises(ConfigError, match="no option --prompt-nodes"):
        build_prompted_model(Config(prompt="gpf", prompt_nodes=7), bb, matchers.create("prototype"))
    model = build_prompted_model(Config(prompt="vgp", prompt_nodes=3, prompt_rank=2, prompt_blocks="1"), bb,
                                 matchers.create("prototype"))
    assert model.prompt.blocks == (1,) and model.prompt.rank == 2 and model.prompt.num_nodes == 3
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_backbone_is_loaded_from_an_episodic_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = models.create_backbone("test_vig")
    save_atomic({"model": {f"backbone.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "best.pt")
    torch.manual_seed(1)
    dst = load_backbone(models.create_backbone("test_vig"), tmp_path / "best.pt")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_backbone(models.create_backbone("vig_small_28"), tmp_path / "best.pt")


def test_augment_is_seeded_and_keeps_shape():
    x = torch.rand(3, 1, 28, 28)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_head_only_tunes_last_block_and_norm_only():
    bb = models.create_backbone("test_vig")
    model = PromptedModel(bb, prompts.create("none", bb), matchers.create("prototype"), adapt="head")
    ids = {id(p) for p in model.tunable(bb, model.prompt)}
    assert ids == {id(p) for p in list(bb.blocks[-1].parameters()) + list(bb.norm.parameters())}


def test_episode_independence():
    bb = models.create_backbone("test_vig")
    m = lambda name, adapt="amortised": PromptedModel(bb, prompts.create(name, bb), matchers.create("prototype"),  # noqa: E731
                                                      adapt=adapt)
    assert m("gpf").episode_independent and m("vgp").episode_independent
    assert not m("add").episode_independent and not m("gpf", "tune").episode_independent


def test_train_freezes_backbone_and_logs_counts(tmp_path):
    """Prompt training changes the prompt only: every backbone weight and BatchNorm buffer (running
    statistics, batch counters) of the --backbone-from checkpoint is bit for bit the same afterwards."""
    from fewshot.checkpoint import load_checkpoint
    from fewshot.training import train

    torch.manual_seed(11)
    source = models.create_backbone("test_vig")
    with torch.no_grad():  # BatchNorm buffers far from their defaults: a forward in train mode would move them
        for name, buf in source.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                buf.fill_(123)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    save_atomic({"model": {f"backbone.{k}": v for k, v in before.items()}}, tmp_path / "source.pt")
    cfg = Config(backbone="test_vig", prompt="gpf", prompt_blocks="0", episodes=3, eval_episodes=3,
                 val_episodes=0, track=False, run_dir=str(tmp_path / "run"), threads=1,
                 backbone_from=str(tmp_path / "source.pt"))
    result = train(cfg, progress=False)
    assert result["trainable_params"] == 32  # one D=32 vector for block 0
    assert result["frozen_params"] == sum(p.numel() for p in source.parameters())
    state = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    after = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"training changed backbone entries {changed}"
    assert any(k.endswith("running_var") for k in before) and any(k.endswith("num_batches_tracked") for k in before)
    assert state["prompt.vectors"].abs().sum() > 0  # while the prompt did train


def test_a_prompt_on_a_random_backbone_is_warned_about_in_one_line(tmp_path, caplog):
    import logging

    torch.manual_seed(0)
    save_atomic({"model": {f"backbone.{k}": v for k, v in models.create_backbone("test_vig").state_dict().items()}},
                tmp_path / "best.pt")
    caplog.set_level(logging.WARNING, logger="fewshot.prompting")
    build_prompted_model(Config(backbone="test_vig", prompt="gpf"), models.create_backbone("test_vig"),
                         matchers.create("prototype"))
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "\n" not in warned[0].getMessage()
    assert "randomly initialised" in warned[0].getMessage() and "--backbone-from" in warned[0].getMessage()
    caplog.clear()
    build_prompted_model(Config(backbone="test_vig", prompt="gpf", backbone_from=str(tmp_path / "best.pt")),
                         models.create_backbone("test_vig"), matchers.create("prototype"))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
