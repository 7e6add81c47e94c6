"""evaluate() scores groups of episodes through a matcher's bank_scorer (DN4) with the accuracies of the
per-episode path."""
import torch
from torch import nn

from episodes import EpisodeSampler, ImageSet
from fewshot import evaluation
from fewshot.evaluation import evaluate
from fewshot.model import EpisodicModel
from matchers import DN4Matcher


class NodeBackbone(nn.Module):
    """[B, 1, 8, 8] -> nodes [B, 4, 6]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 4, stride=4)

    def forward_features(self, x):
        return self.conv(x).flatten(2).transpose(1, 2)

    def forward_head(self, x, pre_logits=False):
        return x.mean(1)


def images() -> ImageSet:
    g = torch.Generator().manual_seed(0)
    centers = torch.randint(0, 256, (8, 1, 8, 8), generator=g)
    noise = torch.randint(-70, 70, (8, 10, 1, 8, 8), generator=g)
    pixels = (centers[:, None] + noise).clamp(0, 255).to(torch.uint8).flatten(0, 1)
    return ImageSet(pixels, torch.arange(8).repeat_interleave(10), [f"c{i}" for i in range(8)])


def test_bank_scorer_path_gives_the_per_episode_accuracies(monkeypatch):
    data = images()
    torch.manual_seed(0)
    model = EpisodicModel(NodeBackbone(), DN4Matcher(k=3))
    bank = EpisodeSampler(data, 4, 2, 3, seed=1).bank(23)  # not a multiple of the group size
    calls = []
    scorer = DN4Matcher.bank_scorer
    monkeypatch.setattr(DN4Matcher, "bank_scorer", lambda self, nodes: calls.append(1) or scorer(self, nodes))
    monkeypatch.setattr(evaluation, "_BANK_GROUP", 5)
    fast = evaluate(model, data, bank, per_episode=False)
    slow = evaluate(model, data, bank, per_episode=True)
    assert calls == [1]  # one scorer for the bank: every image normalised once
    assert torch.equal(fast.accuracies, slow.accuracies) and fast.episodes == 23
    assert 0.3 < fast.mean < 1.0
