"""soft-delete: learned keep probabilities scale the patch nodes, weight the pooling, meet a sparsity
target through the regulariser, and delete the improbable nodes in eval mode."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import models
import prompts
from fewshot.cli import cli
from fewshot.prompting import freeze

WAY, SHOT = 3, 2


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return freeze(models.create_backbone("test_vig")).eval()


def images(n=4, seed=1):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def with_scores(prompt, scores):
    """Make the scorer return ``scores [B, N0]`` (logits) whatever the nodes."""
    prompt.scorer = _Fixed(scores)
    return prompt


class _Fixed(torch.nn.Module):
    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def forward(self, nodes):
        return self.scores.unsqueeze(-1)


def test_an_untrained_prompt_keeps_every_node_at_0_95(backbone):
    prompt = prompts.create("soft-delete", backbone)
    x = images()
    with torch.no_grad():
        p = prompt.keep_probability(backbone.forward_features(x))
    torch.testing.assert_close(p, torch.full((4, 49), torch.sigmoid(torch.tensor(3.0)).item()))


def test_the_first_prompted_block_sees_patch_nodes_times_p(backbone):
    prompt = with_scores(prompts.create("soft-delete", backbone, blocks="1"), torch.randn(4, 49))
    prompt._p = torch.rand(4, 49)
    x, mask = torch.randn(4, 49, 32), torch.ones(4, 49, dtype=torch.bool)
    for i in (0, 1):
        out, out_mask = prompt.block_hook(i, x, mask)
        expected = x * prompt._p[..., None] if i == 1 else x
        torch.testing.assert_close(out, expected)
        assert out_mask is mask


def test_the_embedding_is_the_p_weighted_mean_of_the_output_nodes(backbone):
    """Against a plain loop: the backbone run with the scaled nodes, then sum_n p_n x_n / sum_n p_n."""
    scores = torch.randn(4, 49, generator=torch.Generator().manual_seed(2))
    prompt = with_scores(prompts.create("soft-delete", backbone, blocks="0", hard=False), scores).eval()
    x = images()
    p = torch.sigmoid(scores)

    def scale(i, nodes, mask):
        return (nodes * p[..., None], mask) if i == 0 else (nodes, mask)

    with torch.no_grad():
        nodes = backbone.forward_features(x, block_hook=scale)
        expected = torch.stack([sum(p[b, n] * nodes[b, n] for n in range(49)) / p[b].sum() for b in range(4)])
        torch.testing.assert_close(prompt.embed(backbone, x), expected, rtol=1e-5, atol=1e-5)


def test_hard_eval_deletes_the_nodes_below_one_half_and_keeps_at_least_one(backbone):
    scores = torch.full((2, 49), -4.0)
    scores[0, :10] = 4.0          # image 0 keeps 10 nodes
    scores[1, 7] = -1.0           # image 1 has no node >= 0.5: its most probable one stays
    prompt = with_scores(prompts.create("soft-delete", backbone), scores).eval()
    _, mask = prompt.forward_nodes(backbone, images(2))
    assert mask[0].sum() == 10 and bool(mask[0, :10].all())
    assert mask[1].nonzero().flatten().tolist() == [7]
    prompt.train()
    _, mask = prompt.forward_nodes(backbone, images(2))
    assert mask is None  # training: nothing is cut, every node only scaled


def test_the_regulariser_is_sparsity_times_the_squared_gap_to_the_target(backbone):
    scores = torch.randn(4, 49, generator=torch.Generator().manual_seed(3))
    prompt = with_scores(prompts.create("soft-delete", backbone, keep=0.3, sparsity=2.5), scores)
    assert float(prompt.regulariser()) == 0.0  # before any forward pass
    prompt.embed(backbone, images())
    expected = 2.5 * (torch.sigmoid(scores).mean() - 0.3) ** 2
    torch.testing.assert_close(prompt.regulariser(), expected)


def test_the_sparsity_target_trains_the_scorer_towards_keep(backbone):
    """Only the regulariser: Adam on it moves the mean keep probability from 0.95 to the target."""
    torch.manual_seed(0)
    prompt = prompts.create("soft-delete", backbone, keep=0.4, sparsity=10.0).train()
    opt = torch.optim.Adam(prompt.parameters(), lr=0.01)
    x = images(8)
    for _ in range(100):
        opt.zero_grad()
        prompt.embed(backbone, x)
        prompt.regulariser().backward()
        opt.step()
    assert abs(float(prompt._last_p.detach().mean()) - 0.4) < 0.02


def test_bad_options_are_refused():
    bb = models.create_backbone("test_vig")
    with pytest.raises(ValueError, match="keep must be in"):
        prompts.create("soft-delete", bb, keep=0)
    with pytest.raises(ValueError, match="sparsity must be >= 0"):
        prompts.create("soft-delete", bb, sparsity=-1)


def test_episodic_training_adds_the_regulariser_to_the_loss(tmp_path):
    """A training episode's loss is the cross-entropy plus the prompt's regulariser: a huge sparsity
    weight adds exactly its penalty, and `fewshot train --prompt soft-delete` runs."""
    from fewshot.config import Config
    from fewshot.training import _episodic_step, prepare

    torch.manual_seed(0)
    bb = models.create_backbone("test_vig")
    torch.save({"model": {f"backbone.{k}": v for k, v in bb.state_dict().items()}}, tmp_path / "best.pt")
    common = dict(dataset="glyphs", backbone="test_vig", backbone_from=str(tmp_path / "best.pt"), prompt="soft-delete",
                  way=3, shot=1, query=2, episodes=1, eval_episodes=2, val_episodes=0, track=False, threads=1)
    losses, penalties = {}, {}
    for weight in (0.0, 1000.0):
        run = prepare(Config(**common, prompt_opts={"keep": 0.2, "sparsity": weight}, run_dir=str(tmp_path / "r")))
        run.model.train()
        losses[weight] = float(_episodic_step(run, 0)[0])
        penalties[weight] = float(run.model.prompt.regulariser().detach())
    assert penalties[0.0] == 0 and penalties[1000.0] == pytest.approx(1000 * (0.9526 - 0.2) ** 2, rel=1e-3)
    assert losses[1000.0] - losses[0.0] == pytest.approx(penalties[1000.0], rel=1e-4)
    args = ["train", "--dataset", "glyphs", "--backbone", "test_vig", "--backbone-from", str(tmp_path / "best.pt"),
            "--prompt", "soft-delete", "--prompt-opt", "keep=0.2", "--way", "3", "--shot", "1", "--query", "2",
            "--episodes", "2", "--eval-episodes", "2", "--val-episodes", "0", "--no-track", "--no-progress",
            "--threads", "1", "--run-dir", str(tmp_path / "cli")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output


def test_relevance_adds_the_largest_prototype_cosine_to_the_score(backbone):
    """``relevance=True``: logit = MLP score + max_c cos(node, prototype_c), prototypes from the support nodes."""
    import torch.nn.functional as F

    prompt = prompts.create("soft-delete", backbone, relevance=True)
    assert prompt.conditioned
    x, support = images(3), images(4, seed=5)
    with torch.no_grad():
        nodes = backbone.forward_features(x)
        with pytest.raises(RuntimeError, match="soft-delete: call set_episode"):
            prompt.keep_probability(nodes)
        labels = torch.tensor([0, 0, 1, 1])
        prompt.set_episode(backbone.forward_features(support), labels)
        pooled = backbone.forward_features(support).mean(1)
        protos = F.normalize(torch.stack([pooled[labels == c].mean(0) for c in (0, 1)]), dim=-1)
        cos = torch.tensor([[float(F.cosine_similarity(nodes[b, n][None], protos, dim=-1).max()) for n in range(49)]
                            for b in range(3)])
        expected = torch.sigmoid(prompt.scorer(nodes).squeeze(-1) + cos)
        torch.testing.assert_close(prompt.keep_probability(nodes), expected)
