import math

import pytest
import torch
from torch import nn

from episodes import EpisodeSampler, ImageSet
from fewshot.evaluation import evaluate, summarise
from fewshot.model import EpisodicModel
from matchers import PrototypeMatcher


class ToyBackbone(nn.Module):
    """[B, 1, 8, 8] -> nodes [B, 4, 6] (2x2 patches of a conv), pooled [B, 6]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 4, stride=4)
        self.bn = nn.BatchNorm2d(6)

    def forward_features(self, x):
        return self.bn(self.conv(x)).flatten(2).transpose(1, 2)

    def forward_head(self, x, pre_logits=False):
        return x.mean(1)


@pytest.fixture
def toy_data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randint(0, 256, (10, 1, 8, 8), generator=g)
    noise = torch.randint(-60, 60, (10, 12, 1, 8, 8), generator=g)
    images = (centers[:, None] + noise).clamp(0, 255).to(torch.uint8).flatten(0, 1)
    return ImageSet(images, torch.arange(10).repeat_interleave(12), [f"c{i}" for i in range(10)])


def test_embed_once_and_per_episode_paths_give_identical_accuracies(toy_data):
    torch.manual_seed(0)
    model = EpisodicModel(ToyBackbone(), PrototypeMatcher())
    bank = EpisodeSampler(toy_data, 5, 2, 4, seed=1).bank(40)
    fast = evaluate(model, toy_data, bank, per_episode=False)
    slow = evaluate(model, toy_data, bank, per_episode=True)
    assert torch.equal(fast.accuracies, slow.accuracies)
    assert fast.episodes == 40 and fast.bank_id == bank.bank_id
    assert 0.2 < fast.mean <= 1.0


def test_evaluation_leaves_the_model_in_training_mode_and_unchanged(toy_data):
    model = EpisodicModel(ToyBackbone(), PrototypeMatcher())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, toy_data, EpisodeSampler(toy_data, 5, 1, 2).bank(5))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_accuracy_is_the_fraction_of_correct_queries(toy_data):
    class Oracle(ToyBackbone):  # embeds the true label: every episode is solved
        def forward_features(self, x):
            return x.view(x.shape[0], 1, -1)[..., :1].float().expand(-1, 2, 1)

    labels_as_pixels = ImageSet(toy_data.labels.view(-1, 1, 1, 1).expand(-1, 1, 8, 8).to(torch.uint8).mul(20),
                                toy_data.labels, toy_data.class_names)
    res = evaluate(EpisodicModel(Oracle(), PrototypeMatcher()), labels_as_pixels,
                   EpisodeSampler(labels_as_pixels, 5, 1, 3).bank(10))
    assert res.mean == 1.0 and res.ci95 == 0.0


def test_ci95_is_1_96_sample_std_over_root_n():
    acc = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])
    mean, ci = summarise(acc)
    assert mean == pytest.approx(0.6)
    assert ci == pytest.approx(1.96 * math.sqrt(sum((a - 0.6) ** 2 for a in acc.tolist()) / 4) / math.sqrt(5))


def _vig_models():
    """test_vig (eval-mode BatchNorm) bare, with a GPF prompt and with a VGP prompt, prompts non-zero."""
    import models
    import prompts
    from fewshot.prompting import PromptedModel

    out = {}
    for name in ("none", "gpf", "vgp"):
        torch.manual_seed(0)
        bb = models.create_backbone("test_vig")
        if name == "none":
            out[name] = EpisodicModel(bb, PrototypeMatcher())
            continue
        prompt = prompts.create(name, bb)
        with torch.no_grad():
            for p in prompt.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out[name] = PromptedModel(bb, prompt, PrototypeMatcher())
    return out


@pytest.mark.parametrize("name", ["none", "gpf", "vgp"])
def test_embed_once_equals_per_episode_on_logits_with_the_vig_and_fixed_prompts(name):
    """What the embed-once path computes for an episode (every distinct image embedded in one batch,
    the episode's rows picked, the matcher applied) equals the model's own episode forward, logit by
    logit; and :func:`evaluate` gives the same per-episode accuracies on both paths."""
    from episodes import load_splits

    model = _vig_models()[name].eval()
    assert model.episode_independent
    test = load_splits("glyphs").test
    bank = EpisodeSampler(test, 3, 2, 3, seed=4).bank(5)
    ids = torch.unique(torch.cat([bank.support.flatten(), bank.query.flatten()]))
    with torch.inference_mode():
        feats = model.embed(test.images[ids])
        row = {int(i): k for k, i in enumerate(ids)}
        for ep in bank:
            per_episode = model(test.images[ep.support], ep.support_labels, test.images[ep.query])
            once = model.matcher(feats[[row[int(i)] for i in ep.support]], ep.support_labels,
                                 feats[[row[int(i)] for i in ep.query]])
            assert per_episode.shape == (9, 3)
            torch.testing.assert_close(once, per_episode, rtol=1e-4, atol=1e-3)  # batch-size float32 rounding
    fast = evaluate(model, test, bank, per_episode=False)
    slow = evaluate(model, test, bank, per_episode=True)
    assert torch.equal(fast.accuracies, slow.accuracies)
