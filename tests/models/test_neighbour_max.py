"""models.layers.neighbour_max against advanced indexing + max(dim): the same values, the same gradient
(ties go to the first neighbour, as torch.max picks it), and a second derivative for second-order methods."""
import pytest
import torch

from models.layers import neighbour_max
from models.vig import max_relative


def reference(keys, neighbours):
    batch = torch.arange(keys.shape[0])[:, None, None]
    return keys[batch, neighbours].max(dim=2).values


@pytest.mark.parametrize("k", [1, 3, 9])
def test_values_and_gradients_equal_indexing_and_max(k):
    g = torch.Generator().manual_seed(k)
    keys = torch.randn(3, 11, 5, generator=g, dtype=torch.float64)
    keys[0, 4] = keys[0, 2]  # equal keys: ties between neighbours
    neighbours = torch.randint(0, 11, (3, 7, k), generator=g)
    neighbours[0, 0, :2] = torch.tensor([2, 4])[:k] if k > 1 else neighbours[0, 0, :1]
    grad = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    results = []
    for fn in (neighbour_max, reference):
        leaf = keys.clone().requires_grad_()
        out = fn(leaf, neighbours)
        out.backward(grad)
        results.append((out.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_dilated_neighbours_a_strided_view():
    keys = torch.randn(2, 9, 4, dtype=torch.float64)
    nearest = torch.randint(0, 9, (2, 9, 6))
    assert torch.equal(neighbour_max(keys, nearest[..., ::2]), reference(keys, nearest[..., ::2]))


def test_max_relative_first_and_second_derivatives():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    neighbours = torch.randint(0, 6, (2, 6, 3), generator=g)
    assert torch.autograd.gradcheck(lambda a: max_relative(a, neighbours), (x,))
    assert torch.autograd.gradgradcheck(lambda a: max_relative(a, neighbours), (x,))
