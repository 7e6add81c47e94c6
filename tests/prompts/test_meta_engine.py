"""--meta-init and --prompt damvp through the engine: config checks, training, test-time adaptation."""
from __future__ import annotations

import pytest
import torch

import matchers
import models
import prompts
from fewshot.config import Config, ConfigError
from fewshot.prompting import PromptedModel

from ..conftest import assert_same_training_outcome


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
    amortised = PromptedModel(model.backbone, model.prompt, model.matcher).eval()
    with torch.inference_mode():
        torch.testing.assert_close(unadapted, amortised(s, sl, q))


def test_metasgd_learner_has_per_parameter_rates_in_the_state_dict():
    model = _model("metasgd")
    keys = [k for k in model.state_dict() if k.startswith("learner.lrs")]
    assert keys and sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * model.prompt.vectors.numel()


def _config(tmp_path, name, **changes):
    return Config(backbone="test_vig", episodes=4, eval_episodes=4, val_episodes=0, track=False, way=3, query=2,
                  checkpoint_every=2, run_dir=str(tmp_path / name), threads=1, seed=SEED, **changes)


def _train(tmp_path, name, **changes):
    from fewshot.training import train

    cfg = _config(tmp_path, name, **changes)
    return cfg, train(cfg, progress=False)


def _interrupt_and_resume(tmp_path, name, interrupt, at_episode, **changes):
    """Ctrl-C when training episode ``at_episode`` is drawn, then the same config with resume=True."""
    from fewshot.training import train

    cfg = _config(tmp_path, name, **changes)
    interrupt.arm(SEED, at_episode)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert interrupt.fired
    assert int(torch.load(tmp_path / name / "last.pt", weights_only=True)["step"]) == 2  # stopped mid-run
    return train(cfg, resume=True, progress=False)


SEED = 3
META = dict(prompt="gpf", adapt="tune", adapt_steps=1, inner_steps=1, meta_batch=2, inner_lr=0.5)


@pytest.mark.parametrize("method", ["maml", "fomaml", "metasgd"])
def test_meta_training_moves_only_the_prompt_and_resumes(tmp_path, method, interrupt):
    from fewshot.checkpoint import load_checkpoint

    _, whole = _train(tmp_path, "whole", meta_init=method, **META)
    # 4 outer steps of 2 episodes: episode 6 is drawn by step 3, after the checkpoint of step 2
    resumed = _interrupt_and_resume(tmp_path, "cut", interrupt, at_episode=6, meta_init=method, **META)
    assert_same_training_outcome(tmp_path / "whole", tmp_path / "cut", whole, resumed)
    state = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    assert state["prompt.vectors"].abs().sum() > 0        # the zero-initialised GPF moved
    if method == "metasgd":                               # and Meta-SGD's learned rates moved from inner_lr
        rates = [v for k, v in state.items() if k.startswith("learner.lrs")]
        assert rates and any(not torch.allclose(r, torch.full_like(r, 0.5)) for r in rates)
    torch.manual_seed(SEED)                               # the backbone is what prepare() built from the seed
    fresh = models.create_backbone("test_vig").state_dict()
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    assert backbone.keys() == fresh.keys()
    assert all(torch.equal(fresh[k], backbone[k]) for k in fresh)  # weights and BatchNorm buffers untouched


@pytest.mark.slow  # three runs, each embedding 4096 training images for k-means (~12 s)
def test_damvp_trains_through_the_cli_config_and_saves_its_centroids(tmp_path, interrupt):
    from fewshot.checkpoint import load_checkpoint

    damvp = dict(prompt="damvp", clusters=2, prompt_nodes=2, prompt_blocks="0")
    _, result = _train(tmp_path, "damvp", **damvp)
    state = load_checkpoint(tmp_path / "damvp" / "last.pt")["model"]
    assert state["prompt.centroids"].shape == (2, 32) and bool(state["prompt.fitted"])
    assert result["trainable_params"] == 2 * 2 * 32
    # with meta-init the cluster prompts are meta-learned together; a resumed run keeps the centroids
    # it fitted before the interruption and ends exactly where an uninterrupted one does
    meta = dict(damvp, meta_init="fomaml", adapt="tune", adapt_steps=1, meta_batch=2)
    _, whole = _train(tmp_path, "damvp-maml", **meta)
    resumed = _interrupt_and_resume(tmp_path, "damvp-maml-cut", interrupt, at_episode=6, **meta)
    assert_same_training_outcome(tmp_path / "damvp-maml", tmp_path / "damvp-maml-cut", whole, resumed)
    meta_state = load_checkpoint(tmp_path / "damvp-maml" / "last.pt")["model"]
    torch.testing.assert_close(meta_state["prompt.centroids"], state["prompt.centroids"])  # same seed, same fit
    # the two cluster prompts start as copies of one base prompt: each learned from its own images
    assert not torch.equal(meta_state["prompt.prompts.0.nodes"], meta_state["prompt.prompts.1.nodes"])
