"""prompts.tuning: the one episode score, support-only loss and tuning loop, against references written
from their definitions (one forward pass per image, class means by a loop, torch.cdist)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import prompts
from matchers import PrototypeMatcher
from prompts.tuning import optimiser_step, score, support_loss, tune
from prompts.views import augment

WAY, SHOT, QUERY = 3, 2, 2


@pytest.fixture(scope="module")
def episode():
    g = torch.Generator().manual_seed(2)
    support = torch.rand(WAY * SHOT, 1, 28, 28, generator=g) * 2 - 1
    query = torch.rand(WAY * QUERY, 1, 28, 28, generator=g) * 2 - 1
    return support, torch.arange(WAY).repeat_interleave(SHOT), query


def _gpf(backbone):
    prompt = prompts.create("gpf", backbone)
    with torch.no_grad():
        prompt.vectors.copy_(0.1 * torch.randn(prompt.vectors.shape, generator=torch.Generator().manual_seed(3)))
    return prompt


def _one_by_one(prompt, backbone, images):
    """Pooled prompted embeddings ``[B, D]``, one image per forward pass."""
    out = []
    for image in images:
        nodes, mask = prompt.forward_nodes(backbone, image[None])
        out.append(backbone.forward_head(nodes, pre_logits=True, node_mask=mask))
    return torch.cat(out)


def _protonet(support_emb, labels, query_emb):
    """Reference ProtoNet logits: class means by a loop, minus squared distances by torch.cdist."""
    means = torch.stack([support_emb[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
    return -torch.cdist(query_emb, means) ** 2


def test_score_defaults_to_protonet_on_embeddings_computed_image_by_image(backbone, episode):
    support, labels, query = episode
    prompt = _gpf(backbone)
    with torch.no_grad():
        logits = score(prompt, backbone, support, labels, query)
        ref = _protonet(_one_by_one(prompt, backbone, support), labels, _one_by_one(prompt, backbone, query))
    assert logits.shape == (WAY * QUERY, WAY)
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-3)


def test_score_uses_the_given_matcher(backbone, episode):
    support, labels, query = episode
    prompt = _gpf(backbone)
    cosine = PrototypeMatcher(metric="cosine", temperature=0.1)
    with torch.no_grad():
        logits = score(prompt, backbone, support, labels, query, cosine)
        s, q = _one_by_one(prompt, backbone, support), _one_by_one(prompt, backbone, query)
        means = torch.stack([s[labels == c].mean(0) for c in range(WAY)])
        ref = F.cosine_similarity(q[:, None], means[None], dim=-1) / 0.1
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


def test_score_conditions_a_generated_prompt_on_the_support_set(backbone, episode, add_prompt):
    support, labels, query = episode
    with torch.no_grad():
        logits = score(add_prompt, backbone, support, labels, query)
        add_prompt.set_episode(backbone.forward_features(support), labels)   # by hand, then image by image
        ref = _protonet(_one_by_one(add_prompt, backbone, support), labels, _one_by_one(add_prompt, backbone, query))
        flipped = score(add_prompt, backbone, support.flip(-1), labels, query)
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-3)
    assert not torch.allclose(logits, flipped)                              # the prompt came from the support set


def test_support_loss_scores_seeded_views_against_the_unaugmented_support(backbone, episode):
    support, labels, _ = episode
    prompt = _gpf(backbone)
    with torch.no_grad():
        loss = support_loss(prompt, backbone, support, labels, views=3, generator=torch.Generator().manual_seed(7))
        views = augment(support, torch.Generator().manual_seed(7), 3)
        logits = _protonet(_one_by_one(prompt, backbone, support), labels, _one_by_one(prompt, backbone, views))
        ref = F.cross_entropy(logits, labels.repeat(3))
        zero = support_loss(prompt, backbone, support, labels, views=0)
        s = _one_by_one(prompt, backbone, support)
        ref_zero = F.cross_entropy(_protonet(s, labels, s), labels)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(zero, ref_zero, rtol=1e-4, atol=1e-4)


def test_support_loss_adds_the_prompt_regulariser(backbone, episode, monkeypatch):
    support, labels, _ = episode
    prompt = _gpf(backbone)
    with torch.no_grad():
        plain = support_loss(prompt, backbone, support, labels, generator=torch.Generator().manual_seed(1))
        monkeypatch.setattr(prompt, "regulariser", lambda: torch.tensor(2.5))
        penalised = support_loss(prompt, backbone, support, labels, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(penalised - plain, torch.tensor(2.5))


def test_tune_updates_once_per_step_with_fresh_views_from_one_generator(backbone, episode):
    support, labels, _ = episode
    prompt = _gpf(backbone)
    seen = []
    with torch.no_grad():
        tune(prompt, backbone, support, labels, lambda loss: seen.append(float(loss)), steps=3,
             generator=torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        expected = [float(support_loss(prompt, backbone, support, labels, generator=g)) for _ in range(3)]
    assert seen == expected and len(set(seen)) == 3


def test_optimiser_step_with_sgd_moves_the_prompt_by_minus_lr_times_the_gradient(backbone, episode):
    support, labels, _ = episode
    prompt = _gpf(backbone)
    before = prompt.vectors.detach().clone()
    grad, = torch.autograd.grad(support_loss(prompt, backbone, support, labels), prompt.vectors)
    tune(prompt, backbone, support, labels, optimiser_step(torch.optim.SGD(prompt.parameters(), lr=0.01)), steps=1)
    torch.testing.assert_close(prompt.vectors.detach(), before - 0.01 * grad)
