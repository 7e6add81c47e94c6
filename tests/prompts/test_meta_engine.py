"""--meta-init and --prompt damvp through the engine: config checks, training, test-time adaptation."""
from __future__ import annotations

import pytest
import torch

import matchers
import models
import prompts
from fewshot.config import Config, ConfigError
from fewshot.prompting import PromptedModel


@pytest.mark.parametrize("changes,message", [
    ({"meta_init": "reptile"}, "meta_init must be one of"),
    ({"meta_init": "maml"}, "give --prompt"),
    ({"meta_init": "maml", "prompt": "vpt"}, "use --adapt tune"),
    ({"meta_init": "maml", "prompt": "vpt", "adapt": "tune", "adapt_lr": 0.5}, "set --inner-lr"),
    ({"inner_steps": 3}, "only apply with --meta-init"),
    ({"meta_batch": 2, "inner_lr": 0.5}, "--inner-lr, --meta-batch only apply"),
    ({"meta_init": "maml", "prompt": "vpt", "adapt": "tune", "inner_lr": 0.0}, "inner_lr must be > 0"),
    ({"clusters": 0}, "clusters must be an integer >= 1"),
])
def test_config_rejects_bad_meta_options(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config().replace(**changes)


def test_clusters_without_damvp_is_an_error():
    from fewshot.prompting import build_prompted_model

    bb = models.create_backbone("test_vig")
    with pytest.raises(ConfigError, match="no option --clusters"):
        build_prompted_model(Config(prompt="vpt", clusters=3), bb, matchers.create("prototype"))


def _model(meta_init="fomaml", steps=2, prompt="gpf"):
    torch.manual_seed(0)
    bb = models.create_backbone("test_vig").eval()
    p = prompts.create(prompt, bb)
    return PromptedModel(bb, p, matchers.create("prototype"), adapt="tune", adapt_steps=steps,
                         meta_init=meta_init, inner_lr=0.5)


def _episode(seed=0, way=3):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 256, (way, 1, 28, 28), generator=g, dtype=torch.uint8)
    q = torch.randint(0, 256, (2 * way, 1, 28, 28), generator=g, dtype=torch.uint8)
    return s, torch.arange(way), q


def test_test_time_adaptation_clones_the_meta_prompt_and_leaves_it_unchanged():
    model = _model(steps=2).eval()
    before = model.prompt.vectors.detach().clone()
    s, sl, q = _episode()
    with torch.inference_mode():                       # as fewshot.evaluation calls it
        adapted = model(s, sl, q)
        again = model(s, sl, q)
    assert torch.equal(model.prompt.vectors, before)
    assert torch.equal(adapted, again)                 # deterministic
    model.adapt_steps = 0
    with torch.inference_mode():
        unadapted = model(s, sl, q)
    assert not torch.allclose(adapted, unadapted)      # the steps changed the prompt used for the queries
    # zero steps: the meta prompt as it is, i.e. the amortised score
    model.learner = None
    model.adapt = "amortised"
    with torch.inference_mode():
        torch.testing.assert_close(unadapted, model(s, sl, q))


def test_metasgd_learner_has_per_parameter_rates_in_the_state_dict():
    model = _model("metasgd")
    keys = [k for k in model.state_dict() if k.startswith("learner.lrs")]
    assert keys and sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * model.prompt.vectors.numel()


def _train(tmp_path, name, **changes):
    from fewshot.training import train

    cfg = Config(backbone="test_vig", episodes=3, eval_episodes=4, val_episodes=0, track=False, way=3, query=2,
                 run_dir=str(tmp_path / name), threads=1, **changes)
    return cfg, train(cfg, progress=False)


@pytest.mark.parametrize("method", ["maml", "fomaml", "metasgd"])
def test_meta_training_moves_only_the_prompt_and_resumes(tmp_path, method):
    from fewshot.evaluate_run import load_trained_model

    cfg, result = _train(tmp_path, method, prompt="gpf", meta_init=method, adapt="tune", adapt_steps=1,
                         inner_steps=1, meta_batch=2, inner_lr=0.5)
    assert result["test_episodes"] == 4 and 0 <= result["test_acc"] <= 1
    from episodes import load_splits
    images = load_splits("glyphs", None, None).test
    model, _ = load_trained_model(tmp_path / method, cfg, images, checkpoint="last")
    assert model.prompt.vectors.abs().sum() > 0        # zero-initialised GPF moved
    torch.manual_seed(0)
    fresh = models.create_backbone("test_vig")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.backbone.state_dict().values()))


def test_damvp_trains_through_the_cli_config_and_saves_its_centroids(tmp_path):
    from fewshot.checkpoint import load_checkpoint

    _, result = _train(tmp_path, "damvp", prompt="damvp", clusters=2, prompt_nodes=2, prompt_blocks="0")
    state = load_checkpoint(tmp_path / "damvp" / "last.pt")["model"]
    assert state["prompt.centroids"].shape == (2, 32) and bool(state["prompt.fitted"])
    assert result["trainable_params"] == 2 * 2 * 32
    # with meta-init: the cluster prompts are meta-learned together
    _, result = _train(tmp_path, "damvp-maml", prompt="damvp", clusters=2, prompt_nodes=2, prompt_blocks="0",
                       meta_init="fomaml", adapt="tune", adapt_steps=1, meta_batch=2)
    assert 0 <= result["test_acc"] <= 1
