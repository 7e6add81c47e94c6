"""ProVP / ProVP-Ref (Xu et al., 2023): progressive prompt nodes against a block-by-block float64 reference,
the contrastive feature re-formation loss against hand-computed values, gradients, exact resume, the CLI."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from click.testing import CliRunner

import matchers
import models
import prompts
from fewshot import transfer as tr
from fewshot.cli import cli
from fewshot.config import Config
from fewshot.prompting import PromptedModel, freeze
from fewshot.training import train
from prompts.provp import reformation_loss

from ..conftest import assert_same_training_outcome

WAY, SHOT = 3, 2


@pytest.fixture(scope="module")
def deep_backbone():
    """A frozen 3-block ``test_vig`` (seed 0, eval mode): room for an unprompted block between two prompted ones."""
    torch.manual_seed(0)
    return freeze(models.create_backbone("test_vig", depth=3)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(2))


def randomised(prompt, seed=1, scale=0.5):
    """The prompt with its nodes drawn large enough (std ``scale``) to move the patch nodes."""
    with torch.no_grad():
        prompt.nodes.copy_(torch.randn(prompt.nodes.shape, generator=torch.Generator().manual_seed(seed)) * scale)
    return prompt


def reference_embedding(backbone, images, nodes, blocks, alpha):
    """ProVP written from the paper's equations, one block at a time, nothing shared with the prompt's code:
    prompted block i (j-th prompted): input ``[X, P_j + alpha O_{j-1}]`` (``P_0`` alone at the first), where
    ``O_{j-1}`` is the prompt part of the output of the block before i; unprompted blocks carry every node;
    the pooled embedding is the mean of the normed patch nodes. Returns ``(pooled [B, D], prompt inputs)``."""
    x = backbone._pos_embed(backbone.stem(images)).flatten(2).transpose(1, 2)          # [B, N0, D]
    n0, b = x.shape[1], x.shape[0]
    entered, out_prompt, j = [], None, 0
    for i, block in enumerate(backbone.blocks):
        if i in blocks:
            p_in = nodes[j].expand(b, -1, -1)
            if out_prompt is not None:
                p_in = p_in + alpha * out_prompt
            entered.append(p_in)
            x = torch.cat([x[:, :n0], p_in], dim=1)
            j += 1
        x = block(x, torch.ones(x.shape[:2], dtype=torch.bool), None)
        out_prompt = x[:, n0:] if x.shape[1] > n0 else None
    return backbone.norm(x)[:, :n0].mean(dim=1), entered


# ----- progressive prompt nodes ------------------------------------------------------------------------
@pytest.mark.parametrize("blocks", ["0,1,2", "0,2", "1,2"])
def test_prompted_embedding_matches_the_block_by_block_reference_in_float64(deep_backbone, images, blocks):
    bb = copy.deepcopy(deep_backbone).double()
    torch.manual_seed(0)
    prompt = randomised(prompts.create("provp", bb, blocks=blocks, num_nodes=3, alpha=0.7)).double()
    seen = []
    hook = prompt.block_hook

    def recording(i, x, node_mask):
        y, m = hook(i, x, node_mask)
        if i in prompt.blocks:
            seen.append(y[:, prompt.num_patch_nodes:].detach().clone())
        return y, m

    prompt.block_hook = recording
    x = images.double()
    with torch.no_grad():
        got = prompt.embed(bb, x)
        expect, entered = reference_embedding(bb, x, prompt.nodes.detach(), prompt.blocks, 0.7)
    assert got.dtype == torch.float64 and len(seen) == len(entered) == len(prompt.blocks)
    for a, e in zip(seen, entered):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)
    # from the second prompted block on, the prompt nodes are the image's own (instance-specific)
    assert not torch.allclose(seen[1][0], seen[1][1])
    assert torch.equal(seen[0][0], seen[0][1])


def test_the_progressive_term_changes_the_embedding_and_alpha_zero_is_vpt_deep(backbone, images):
    torch.manual_seed(5)
    vpt = prompts.create("vpt", backbone, num_nodes=3)
    torch.manual_seed(5)
    still = prompts.create("provp", backbone, num_nodes=3, alpha=0.0)
    torch.manual_seed(5)
    moving = prompts.create("provp", backbone, num_nodes=3, alpha=1.0)
    assert torch.equal(vpt.nodes, still.nodes) and torch.equal(vpt.nodes, moving.nodes)  # the same draw
    with torch.no_grad():
        torch.testing.assert_close(still.embed(backbone, images), vpt.embed(backbone, images), rtol=0, atol=0)
        assert not torch.allclose(moving.embed(backbone, images), vpt.embed(backbone, images), atol=1e-4)


def test_unprompted_blocks_keep_n0_nodes_and_prompted_ones_get_m_more(deep_backbone, images):
    prompt = prompts.create("provp", deep_backbone, blocks="1", num_nodes=5)
    sizes = []
    handles = [b.grapher.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[1])) for b in deep_backbone.blocks]
    try:
        with torch.no_grad():
            nodes, mask = prompt.forward_nodes(deep_backbone, images)
    finally:
        for h in handles:
            h.remove()
    assert sizes == [49, 54, 54] and nodes.shape == (5, 49, 32) and mask is None


# ----- contrastive feature re-formation ----------------------------------------------------------------
def test_reformation_loss_against_hand_computed_values():
    # cosine logits [[1, 0], [1/sqrt2, 1/sqrt2]] at temperature 1: row 0 -log(e / (e + 1)), row 1 log 2
    prompted = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    frozen = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    expect = (math.log(1 + math.exp(-1)) + math.log(2)) / 2              # 0.50320...
    assert float(reformation_loss(prompted, frozen, 1.0)) == pytest.approx(expect, abs=1e-6)
    assert expect == pytest.approx(0.5032041, abs=1e-6)
    # temperature 0.5 doubles the logits: row 0 log(1 + e^-2), row 1 still log 2
    assert float(reformation_loss(prompted, frozen, 0.5)) == pytest.approx(
        (math.log(1 + math.exp(-2)) + math.log(2)) / 2, abs=1e-6)
    # identical features: the loss falls with the temperature towards 0
    eye = torch.eye(3)
    assert float(reformation_loss(eye, eye, 0.1)) == pytest.approx(math.log(1 + 2 * math.exp(-10)), abs=1e-7)
    # one image has no negative: log 1 = 0
    assert float(reformation_loss(prompted[:1], frozen[:1])) == 0.0


def test_regulariser_is_weight_times_the_loss_of_prompted_against_frozen_features(backbone, images):
    torch.manual_seed(0)
    prompt = randomised(prompts.create("provp-ref", backbone, ref_weight=2.5, temperature=0.3))
    assert float(prompt.regulariser()) == 0.0  # before any forward pass
    pooled = prompt.embed(backbone, images)
    with torch.no_grad():
        frozen = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
    expect = 2.5 * reformation_loss(pooled.detach(), frozen, 0.3)
    torch.testing.assert_close(prompt.regulariser().detach(), expect)
    assert float(prompt.regulariser().detach()) > 0
    # a pass without gradient (evaluation) computes no loss and runs no extra backbone pass
    calls = []
    handle = backbone.stem.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            prompt.embed(backbone, images)
    finally:
        handle.remove()
    assert calls == [1] and float(prompt.regulariser()) == 0.0
    # provp (ref_weight 0) never adds a term
    plain = prompts.create("provp", backbone)
    plain.embed(backbone, images)
    assert float(plain.regulariser()) == 0.0


def test_a_small_step_down_the_regularisers_gradient_lowers_it_and_reaches_every_block(backbone, images):
    """The loss is attached to every block's prompt nodes (not to the backbone) with the right sign."""
    bb, x = copy.deepcopy(backbone).double(), images.double()   # float64: a tiny step keeps the k-NN graphs
    torch.manual_seed(0)
    prompt = randomised(prompts.create("provp-ref", bb, temperature=0.01), scale=0.1).double()
    prompt.embed(bb, x)
    before = prompt.regulariser()
    before.backward()
    grad = prompt.nodes.grad
    assert bool((grad.abs().sum(dim=(1, 2)) > 0).all()) and all(p.grad is None for p in bb.parameters())
    with torch.no_grad():
        prompt.nodes.sub_(1e-6 * grad / grad.norm())
    prompt.embed(bb, x)
    after = float(prompt.regulariser().detach())
    assert after < float(before.detach())
    assert float(before.detach()) - after == pytest.approx(1e-6 * float(grad.norm()), rel=1e-2)  # first order


@pytest.mark.parametrize("name", ["provp", "provp-ref"])
def test_every_parameter_gets_gradient_through_an_episode(backbone, name):
    g = torch.Generator().manual_seed(1)
    support, labels, query = torch.randn(WAY * SHOT, 1, 28, 28, generator=g), torch.arange(WAY).repeat_interleave(SHOT), \
        torch.randn(4, 1, 28, 28, generator=g)
    model = PromptedModel(backbone, prompts.create(name, backbone), matchers.create("prototype")).train()
    logits = model(support, labels, query)
    (torch.nn.functional.cross_entropy(logits, torch.arange(4) % WAY) + model.regulariser()).backward()
    grads = model.prompt.nodes.grad
    assert grads is not None and bool((grads.abs().sum(dim=(1, 2)) > 0).all())  # every block's nodes
    assert all(p.grad is None for p in backbone.parameters())


# ----- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"num_nodes": 0}, "provp: num_nodes must be >= 1, got 0"),
    ({"alpha": -0.1}, "provp: alpha must be a finite number >= 0, got -0.1"),
    ({"alpha": float("nan")}, "provp: alpha must be a finite number >= 0, got nan"),
    ({"ref_weight": -1.0}, r"provp: ref_weight must be a finite number >= 0 \(0: no re-formation loss\), got -1.0"),
    ({"temperature": 0.0}, "provp: temperature must be > 0, got 0.0"),
    ({"rank": 4}, "prompt 'provp' takes no option"),
])
def test_bad_options_are_refused_with_a_clear_message(backbone, options, message):
    with pytest.raises(ValueError, match=message):
        prompts.create("provp", backbone, **options)


def test_provp_ref_differs_from_provp_only_in_the_default_weight(backbone):
    assert prompts.options("provp-ref")["ref_weight"].default == 1.0
    assert prompts.options("provp")["ref_weight"].default == 0.0
    assert prompts.accepted_options("provp") == prompts.accepted_options("provp-ref")
    with pytest.raises(ValueError, match="provp-ref: temperature must be > 0"):
        prompts.create("provp-ref", backbone, temperature=-1.0)
    assert "provp" in tr.PROMPT_MODES and "provp-ref" in tr.PROMPT_MODES


def test_reformation_loss_refuses_mismatched_features():
    with pytest.raises(ValueError, match=r"must both be \[B, D\], got \(2, 3\) and \(3, 3\)"):
        reformation_loss(torch.zeros(2, 3), torch.zeros(3, 3))


# ----- the engine and the CLI ---------------------------------------------------------------------------
SEED = 7


def tiny(run_dir, **changes) -> Config:
    base = dict(dataset="glyphs", way=3, shot=1, query=2, episodes=6, checkpoint_every=2, val_episodes=2,
                val_every=3, eval_episodes=4, track=False, threads=1, seed=SEED, run_dir=str(run_dir),
                backbone="test_vig", prompt="provp-ref", prompt_nodes=2, prompt_opts={"alpha": "0.5"})
    return Config(**{**base, **changes})


@pytest.mark.slow  # three tiny training runs: ~15 s
def test_an_interrupted_provp_ref_run_resumes_bit_for_bit(tmp_path, interrupt):
    reference = train(tiny(tmp_path / "whole"), progress=False)
    cut = tiny(tmp_path / "cut")
    interrupt.arm(SEED, 3)
    with pytest.raises(KeyboardInterrupt):
        train(cut, progress=False)
    assert interrupt.fired
    assert int(torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"]) == 2
    resumed = train(cut, resume=True, progress=False)
    assert_same_training_outcome(tmp_path / "whole", tmp_path / "cut", reference, resumed)
    # the comparison can fail: without the re-formation term the prompt ends elsewhere
    other = train(tiny(tmp_path / "other", prompt="provp"), progress=False)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "other" / "last.pt", weights_only=True)["model"]
    assert not torch.equal(a["prompt.nodes"], b["prompt.nodes"])
    assert other["test_acc"] >= 0


def class_folders(root, classes=3, per_split=(("train", 4), ("val", 1), ("test", 2))):
    """``root/{train,val,test}/class<c>/<k>.png``: 28x28 grey images, a bright bar at a class-specific row."""
    from PIL import Image

    for split, n in per_split:
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            for k in range(n):
                img = torch.randint(0, 60, (28, 28), generator=torch.Generator().manual_seed(100 * c + k), dtype=torch.uint8)
                img[4 + 7 * c:8 + 7 * c, 3 + k % 4:25] = 230
                Image.fromarray(img.numpy(), "L").save(root / split / f"class{c}" / f"{k}.png")
    return root


def test_fewshot_transfer_adapt_provp_ref_trains_the_prompt_with_its_options(tmp_path):
    root = class_folders(tmp_path / "data")
    res = CliRunner().invoke(cli, ["transfer", "--dataset", "class-folders", "--data-root", str(root), "--backbone",
                                   "test_vig", "--adapt", "provp-ref", "--prompt-opt", "num_nodes=2", "--prompt-opt",
                                   "temperature=0.2", "--epochs", "1", "--batch-size", "8", "--no-track",
                                   "--no-progress", "--run-dir", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    assert '"trainable_params": ' + str(2 * 2 * 32 + 32 * 3 + 3) in res.output  # 2 blocks x 2 nodes x D + classifier
    bad = CliRunner().invoke(cli, ["transfer", "--dataset", "class-folders", "--data-root", str(root), "--backbone",
                                   "test_vig", "--adapt", "provp", "--prompt-opt", "alpha=-1", "--no-track"])
    assert bad.exit_code == 2 and "provp: alpha must be a finite number >= 0, got -1.0" in bad.output
    assert "Traceback" not in bad.output


def test_fewshot_prompts_lists_both_with_their_documented_options():
    res = CliRunner().invoke(cli, ["prompts"])
    assert res.exit_code == 0, res.output
    for line in ("provp: Progressive prompt nodes per prompted block", "provp-ref: ProVP-Ref",
                 "weight of the contrastive feature re-formation loss", "temperature of the re-formation loss"):
        assert line in res.output
