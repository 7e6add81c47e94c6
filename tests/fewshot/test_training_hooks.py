"""The model's own training hooks: ``fit(train_images, seed)`` before the first episode (DAM-VP's
centroids) and ``meta_step`` (scored by the configured matcher)."""
from __future__ import annotations

import pytest
import torch

import matchers
import models
import prompts
from fewshot.model import EpisodicModel
from fewshot.prompting import PromptedModel, freeze
from prompts import meta
from prototypes import prototype_logits


def _backbone():
    torch.manual_seed(0)
    return freeze(models.create_backbone("test_vig")).eval()


def _images(n, seed):
    return torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_damvp_fit_clusters_a_seeded_sample_of_the_training_images_once(monkeypatch):
    bb = _backbone()
    model = PromptedModel(bb, prompts.create("damvp", bb, clusters=2, num_nodes=1), matchers.create("prototype"))
    monkeypatch.setattr(type(model.prompt), "fit_images", 40)   # a sample smaller than the set
    train = _images(60, 1)
    model.fit(train, seed=3)
    # by hand: the first 40 of a permutation drawn from a generator seeded 3, scaled to -1..1
    idx = torch.randperm(60, generator=torch.Generator().manual_seed(3))[:40]
    reference = prompts.create("damvp", bb, clusters=2, num_nodes=1)
    reference.fit_clusters(bb, train[idx].float() / 127.5 - 1, seed=3)
    assert bool(model.prompt.fitted)
    torch.testing.assert_close(model.prompt.centroids, reference.centroids)
    fitted = model.prompt.centroids.clone()
    model.fit(_images(60, 2), seed=4)                            # fitted already (e.g. a resumed run): kept
    assert torch.equal(model.prompt.centroids, fitted)


def test_models_without_data_fitted_state_fit_nothing_and_train_episodically():
    bb = _backbone()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    for model in (EpisodicModel(bb, matchers.create("prototype")),
                  PromptedModel(bb, prompts.create("gpf", bb), matchers.create("prototype"))):
        model.fit(_images(8, 0), seed=0)
        assert not model.meta_learned
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())
    with pytest.raises(RuntimeError, match="meta_init"):
        PromptedModel(bb, prompts.create("gpf", bb), matchers.create("prototype")).meta_step([])


def _meta_gradient(matcher, via_model: bool):
    bb = _backbone()
    prompt = prompts.create("gpf", bb)
    with torch.no_grad():
        prompt.vectors.copy_(0.1 * torch.randn(prompt.vectors.shape, generator=torch.Generator().manual_seed(5)))
    model = PromptedModel(bb, prompt, matcher, adapt="tune", meta_init="maml", inner_lr=0.05, inner_steps=2)
    labels = torch.arange(3).repeat_interleave(2)
    episode = (_images(6, 7), labels, _images(6, 8), labels)
    if via_model:
        model.meta_step([episode])
    else:   # the prompts-level function with an explicit scorer, on images scaled by hand
        s, q = episode[0].float() / 127.5 - 1, episode[2].float() / 127.5 - 1
        scorer = prototype_logits if matcher is None else matcher
        meta.meta_step(model.learner, bb, [(s, labels, q, labels)], 2, scorer)
    return prompt.vectors.grad.clone()


def test_meta_step_scores_with_the_configured_matcher():
    euclidean = _meta_gradient(matchers.create("prototype"), via_model=True)
    torch.testing.assert_close(euclidean, _meta_gradient(None, via_model=False), rtol=1e-5, atol=1e-7)
    cosine = matchers.create("prototype", metric="cosine", temperature=0.1)
    by_model = _meta_gradient(cosine, via_model=True)
    torch.testing.assert_close(by_model, _meta_gradient(cosine, via_model=False), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(by_model, euclidean, rtol=1e-2)
