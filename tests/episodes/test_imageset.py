"""One image scaling: ``to_input`` (the models' -1..1 input) is ``2 * as_float - 1``, bit for bit."""
from __future__ import annotations

import torch

from episodes import ImageSet, to_input


def test_to_input_is_the_mean_half_std_half_normalisation_of_as_float_bit_for_bit():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    images = ImageSet(pixels, torch.tensor([0, 0, 1, 1]), ["a", "b"])
    unit = images.as_float()
    assert unit.dtype == torch.float32 and torch.equal(unit, pixels.double().div(255).float())
    x = to_input(pixels)
    assert x.dtype == torch.float32 and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(x, pixels.float() / 127.5 - 1)        # the numbers every trained model has seen
    assert torch.equal(x, unit * 2 - 1)
    assert torch.equal(images.as_float(torch.tensor([3])), unit[3:])


def test_float_images_pass_through_to_input_unchanged():
    x = torch.rand(2, 1, 4, 4) * 2 - 1
    assert to_input(x) is x
