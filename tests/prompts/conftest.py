"""Fixtures shared by the prompt tests: the tiny frozen ViG and a generated prompt that is not a no-op."""
from __future__ import annotations

import pytest
import torch

import models
import prompts
from fewshot.prompting import freeze


@pytest.fixture(scope="module")
def backbone():
    """``test_vig`` seeded 0, every parameter frozen, in eval mode."""
    torch.manual_seed(0)
    return freeze(models.create_backbone("test_vig")).eval()


@pytest.fixture
def add_prompt(backbone):
    """An ``add`` prompt on block 0 whose generators' zero-initialised output layers are drawn at random
    (seed 0), so the prompt nodes it generates depend on the support set."""
    torch.manual_seed(0)
    prompt = prompts.create("add", backbone, blocks="0")
    with torch.no_grad():
        for gen in prompt.generators.values():
            gen.out.weight.normal_()
    return prompt
