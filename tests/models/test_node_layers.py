"""Node layers (``[..., D]``, channels last) against the convolution-layout modules they replace:
``nn.Conv2d(.., 1)`` and ``nn.BatchNorm2d`` over ``[B, D, N, 1]``, same weights."""
import pytest
import torch
from torch import nn

from models.layers import NodeBatchNorm, NodeConv


def as_conv(x):
    """``[B, N, D]`` -> ``[B, D, N, 1]``."""
    return x.transpose(1, 2).unsqueeze(-1)


def as_nodes(y):
    """``[B, D, N, 1]`` -> ``[B, N, D]``."""
    return y.squeeze(-1).transpose(1, 2)


@pytest.mark.parametrize("groups", [1, 4])
def test_node_conv_equals_a_1x1_conv_forward_and_backward(groups):
    torch.manual_seed(0)
    ours = NodeConv(16, 24, groups).double()
    reference = nn.Conv2d(16, 24, 1, groups=groups).double()
    reference.load_state_dict(ours.state_dict())  # same keys and shapes
    x = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = ours(x), as_nodes(reference(as_conv(x_ref)))
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    torch.testing.assert_close(ours.bias.grad, reference.bias.grad)


def test_grouped_node_conv_keeps_each_group_to_its_own_channels():
    """Output group g depends on input group g only (a zero input group gives the bias alone)."""
    conv = NodeConv(8, 12, groups=4)
    x = torch.randn(2, 5, 8)
    x[..., 2:4] = 0  # input group 1
    with torch.no_grad():
        y = conv(x)
    torch.testing.assert_close(y[..., 3:6], conv.bias[3:6].expand(2, 5, 3))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_node_batchnorm_equals_batchnorm2d_in_training_and_eval(momentum):
    torch.manual_seed(0)
    ours, reference = NodeBatchNorm(6, momentum=momentum), nn.BatchNorm2d(6, momentum=momentum)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2)
        ours.bias.uniform_(-1, 1)
    reference.load_state_dict(ours.state_dict())
    for _ in range(3):  # running statistics move the same way, step by step
        x = 3 * torch.randn(4, 9, 6) + 1
        torch.testing.assert_close(ours(x), as_nodes(reference(as_conv(x))))
    torch.testing.assert_close(ours.state_dict(), reference.state_dict())
    ours.eval(), reference.eval()
    x = torch.randn(2, 9, 6)
    torch.testing.assert_close(ours(x), as_nodes(reference(as_conv(x))))


def test_node_batchnorm_gradient_matches_finite_differences_with_a_strided_output_gradient():
    """The output gradient arrives strided (a transpose downstream): torch's BatchNorm backward is
    wrong on such views unless the layer makes it contiguous."""
    torch.manual_seed(0)
    bn = NodeBatchNorm(5).double()
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 4, dtype=torch.float64)

    def f(x):
        return (bn(x).transpose(1, 2) * w).sin().sum()

    f(x).backward()
    d = torch.randn_like(x)
    with torch.no_grad():
        fd = (f(x + 1e-6 * d) - f(x - 1e-6 * d)) / 2e-6
    assert (x.grad * d).sum().item() == pytest.approx(fd.item(), rel=1e-6)
