"""svgp: VGP plus support-generated offsets, conditioned on the support nodes entering each block."""
from __future__ import annotations

import pytest
import torch

import prompts
from prompts.generator import SupportGenerator
from prototypes import class_means

WAY, SHOT = 3, 2


@pytest.fixture(scope="module")
def support():
    g = torch.Generator().manual_seed(4)
    return torch.randn(WAY * SHOT, 1, 28, 28, generator=g), torch.arange(WAY).repeat_interleave(SHOT)


def block_inputs(backbone, images):
    """The nodes entering each block ``{i: [S, N0, D]}``, by running the blocks one by one (no hooks)."""
    x = backbone._pos_embed(backbone.stem(images)).flatten(2).transpose(1, 2)
    seen = {}
    for i, block in enumerate(backbone.blocks):
        seen[i] = x
        x = block(x, None, None)
    return seen


def randomise_outputs(prompt, seed=0):
    """Draw the zero-initialised generator outputs and VGP prompts, so every part acts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in prompt.named_parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def embed(prompt, backbone, images, support, labels):
    with torch.no_grad():
        prompt.condition(backbone, support, labels)
        return prompt.embed(backbone, images)


@pytest.mark.parametrize("condition_on", ["blocks", "output"])
def test_fresh_svgp_is_exactly_the_vgp_it_starts_from(backbone, support, condition_on):
    images, labels = support
    torch.manual_seed(0)
    vgp = prompts.create("vgp", backbone, blocks="0,1")
    randomise_outputs(vgp, seed=1)                       # a "trained" VGP: node and edge prompts non-zero
    svgp = prompts.create("svgp", backbone, blocks="0,1", condition_on=condition_on)
    svgp.warm_start(vgp.state_dict())
    torch.testing.assert_close(embed(svgp, backbone, images, images, labels),
                               embed(vgp, backbone, images, images, labels))
    # once the generators' output layers move, the support set changes the embedding
    randomise_outputs(svgp, seed=2)
    assert not torch.allclose(embed(svgp, backbone, images, images, labels),
                              embed(vgp, backbone, images, images, labels), atol=1e-4)


def test_blocks_mode_conditions_each_block_on_the_nodes_entering_it(backbone, support):
    images, labels = support
    torch.manual_seed(0)
    prompt = prompts.create("svgp", backbone, blocks="0,1")
    randomise_outputs(prompt)
    with torch.no_grad():
        feats = prompt.support_features(backbone, images)
        ref = block_inputs(backbone, images)
        assert sorted(feats) == [0, 1]
        for i in (0, 1):
            torch.testing.assert_close(feats[i], ref[i])
        prompt.set_episode(feats, labels)
        for i in (0, 1):   # generated vectors = the block's own generator on that block's prototypes
            gen = prompt.generators[str(i)]
            protos = class_means(ref[i].mean(1), labels)                                     # [way, D]
            attn = torch.softmax(gen.queries @ gen.key(protos).T / gen.hidden ** 0.5, -1)    # [M+1, way]
            expect = gen.out(attn @ gen.value(protos) + gen.context(protos.mean(0)))
            torch.testing.assert_close(prompt._episode[i], expect)
        output_mode = prompts.create("svgp", backbone, blocks="0,1", condition_on="output")
        output_mode.load_state_dict(prompt.state_dict())
        output_mode.condition(backbone, images, labels)
        for i in (0, 1):
            assert not torch.allclose(output_mode._episode[i], prompt._episode[i])


def test_block_hook_adds_the_generated_shift_and_offsets_to_vgp(backbone, support):
    """Patch node n of block i: ``x_n + a_n down_n(x_n) P_n + s_i``; virtual node m: ``V_m P_g + o_im``."""
    images, labels = support
    torch.manual_seed(0)
    prompt = prompts.create("svgp", backbone, blocks="1", num_nodes=3, rank=4)
    randomise_outputs(prompt)
    d, n0 = backbone.embed_dim, 49
    x = torch.randn(2, n0, d, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        prompt.condition(backbone, images, labels)
        y, mask = prompt.block_hook(1, x, torch.ones(2, n0, dtype=torch.bool))
        same, _ = prompt.block_hook(0, x, torch.ones(2, n0, dtype=torch.bool))
    p, gen = prompt.per_block[0], prompt._episode[1].double()
    w, b = p.node_down.weight.double(), p.node_down.bias.double()
    for bi in range(2):
        for n in (0, 17, n0 - 1):
            xn = x[bi, n].double()
            expect = xn + p.node_scale.double() * ((w @ xn + b) @ p.node_prompt.double()) + gen[-1]
            torch.testing.assert_close(y[bi, n].double(), expect, rtol=1e-5, atol=1e-6)
        for m in range(3):
            expect = p.virtual.double()[m] @ p.graph_prompt.double() + gen[m]
            torch.testing.assert_close(y[bi, n0 + m].double(), expect, rtol=1e-5, atol=1e-6)
    assert y.shape == (2, n0 + 3, d) and bool(mask.all()) and same is x


def test_bad_input_gives_a_clear_message(backbone, support):
    images, labels = support
    with pytest.raises(ValueError, match="condition_on must be one of blocks, output"):
        prompts.create("svgp", backbone, condition_on="middle")
    prompt = prompts.create("svgp", backbone)
    with pytest.raises(ValueError, match="needs the support nodes entering each block"):
        prompt.set_episode(backbone.forward_features(images), labels)
    with pytest.raises(RuntimeError, match="svgp: call set_episode"):
        prompt.forward_nodes(backbone, images)
    with pytest.raises(ValueError, match="not a VGP state of the same shape"):
        prompt.warm_start(prompts.create("vgp", backbone, blocks="0").state_dict())
    with pytest.raises(ValueError, match="(?s)not a VGP state of the same shape.*size mismatch"):
        prompt.warm_start(prompts.create("vgp", backbone, rank=3).state_dict())
