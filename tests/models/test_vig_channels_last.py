"""VisionGNN.memory_format: the channels-last model (as fewshot.model.build_model makes it) gives the
logits and gradients of the contiguous one, to float64 rounding, at the configured size and another."""
import copy

import pytest
import timm
import torch

import models  # noqa: F401  (registers the ViGs)


@pytest.mark.parametrize("name", ["test_vig", "vig_small_c4_28"])
@pytest.mark.parametrize("size", [28, 36])
def test_channels_last_matches_contiguous(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name).double().train()
    assert model.memory_format is torch.channels_last
    fast = copy.deepcopy(model).to(memory_format=model.memory_format)
    assert fast.stem.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, size, size, dtype=torch.float64)
    outs = []
    for m in (model, fast):
        nodes = m.forward_features(x)
        nodes.square().sum().backward()
        outs.append((nodes.detach(), [p.grad for p in m.parameters()]))
    assert torch.allclose(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(outs[0][1], outs[1][1]):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)
