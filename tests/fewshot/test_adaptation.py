"""fewshot.adaptation: one registered class per --adapt mode; tuning follows its documented algorithm."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import matchers
import models
import prompts
from fewshot.adaptation import MetaTune, Tune, create_adaptation, list_adaptations
from fewshot.config import Config, ConfigError
from fewshot.prompting import PromptedModel, freeze
from prompts.views import augment, episode_generator

WAY = 3


def _backbone():
    torch.manual_seed(0)
    return freeze(models.create_backbone("test_vig")).eval()


def _episode(seed=1):
    g = torch.Generator().manual_seed(seed)
    support = torch.randint(0, 256, (2 * WAY, 1, 28, 28), generator=g, dtype=torch.uint8)
    query = torch.randint(0, 256, (2 * WAY, 1, 28, 28), generator=g, dtype=torch.uint8)
    return support, torch.arange(WAY).repeat_interleave(2), query


def _model(adapt, **kw):
    bb = _backbone()
    prompt = prompts.create("none" if create_adaptation(adapt).bare_backbone else "vgp", bb)
    return PromptedModel(bb, prompt, matchers.create("prototype"), adapt=adapt, adapt_steps=2, **kw).eval()


def test_the_config_accepts_exactly_the_registered_adapt_modes():
    assert list_adaptations() == ["amortised", "full", "head", "linear", "tune"]
    for name in list_adaptations():
        assert Config(adapt=name, backbone="test_vig").adapt == name
    with pytest.raises(ConfigError, match="adapt must be one of amortised, full, head, linear, tune"):
        Config(adapt="tuen")


def test_an_unknown_mode_lists_the_valid_ones_and_the_closest():
    bb = _backbone()
    with pytest.raises(ValueError, match=r"valid names: amortised, full, head, linear, tune\. Did you mean 'tune'\?"):
        PromptedModel(bb, prompts.create("gpf", bb), matchers.create("prototype"), adapt="tuen")


def test_a_meta_learned_initialisation_takes_the_tune_mode_only():
    assert type(create_adaptation("tune", meta_learned=True)) is MetaTune
    assert type(create_adaptation("tune")) is Tune
    with pytest.raises(ValueError, match="use adapt='tune', not 'head'"):
        create_adaptation("head", meta_learned=True)


@pytest.mark.parametrize("adapt", list_adaptations())
def test_every_mode_scores_an_episode_and_leaves_the_stored_model_unchanged(adapt):
    model = _model(adapt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    support, labels, query = _episode()
    with torch.inference_mode():
        logits = model(support, labels, query)
    assert model.adapt == adapt and logits.shape == (len(query), WAY) and bool(torch.isfinite(logits).all())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("adapt", list_adaptations())
def test_each_mode_tunes_exactly_its_parameters(adapt):
    model = _model(adapt)
    bb, prompt = model.backbone, model.prompt
    expected = {"amortised": [], "linear": [], "tune": list(prompt.parameters()), "full": list(bb.parameters()),
                "head": list(bb.blocks[-1].parameters()) + list(bb.norm.parameters())}[adapt]
    assert [id(p) for p in model.tunable(bb, prompt)] == [id(p) for p in expected]


def test_tune_is_adam_on_a_copy_of_the_prompt_with_seeded_views():
    """The tuned logits equal a by-hand run of the documented algorithm: Adam on a copy of the prompt,
    each step scoring ``views`` fresh augmented views of the support against the plain support."""
    model = _model("tune", adapt_lr=0.05, views=3, seed=7)
    support, labels, query = _episode(2)
    with torch.inference_mode():
        logits = model(support, labels, query)
    to_float = lambda x: x.float() / 127.5 - 1  # noqa: E731
    prompt, bb, matcher = copy.deepcopy(model.prompt).train(), model.backbone, model.matcher
    s, q = to_float(support), to_float(query)

    def pooled(images):
        nodes, mask = prompt.forward_nodes(bb, images)
        return bb.forward_head(nodes, pre_logits=True, node_mask=mask)

    opt = torch.optim.Adam(prompt.parameters(), lr=0.05)
    gen = episode_generator(s, 7)
    for _ in range(2):
        views = augment(s, gen, 3)
        feats = pooled(torch.cat([s, views]))
        loss = F.cross_entropy(matcher(feats[:len(s)], labels, feats[len(s):]), labels.repeat(3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    prompt.eval()
    with torch.no_grad():
        feats = pooled(torch.cat([s, q]))
        ref = matcher(feats[:len(s)], labels, feats[len(s):])
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-3)
    with torch.inference_mode():
        untuned = PromptedModel(bb, model.prompt, matcher).eval()(support, labels, query)
    assert not torch.allclose(logits, untuned)


@pytest.mark.parametrize("name, last_block", [("test_pvig", lambda b: b.stages[-1].blocks[-1]),
                                              ("conv4", lambda b: b.blocks[-1])])
def test_head_tunes_the_last_block_of_a_pyramid_vig_and_of_conv4(name, last_block):
    """The pyramid ViG keeps its blocks in stages; Conv-4 has no final norm."""
    torch.manual_seed(0)
    bb = freeze(models.create_backbone(name)).eval()
    model = PromptedModel(bb, prompts.create("none", bb), matchers.create("prototype"), adapt="head", adapt_steps=1)
    norm = list(bb.norm.parameters()) if hasattr(bb, "norm") else []
    assert [id(p) for p in model.tunable(bb, model.prompt)] == [id(p) for p in list(last_block(bb).parameters()) + norm]
    support, labels, query = _episode()
    with torch.inference_mode():
        assert model.eval()(support, labels, query).shape == (len(query), WAY)
