"""prototypes: class means and squared distances against loops and torch.cdist; twice differentiable."""
from __future__ import annotations

import torch

from prototypes import class_means, prototype_logits, squared_distances


def test_class_means_equal_a_loop_over_classes_for_pooled_and_node_features():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([2, 0, 1, 0, 2, 2])
    for shape in ((6, 5), (6, 4, 5)):
        features = torch.randn(*shape, generator=g)
        ref = torch.stack([features[labels == c].mean(0) for c in range(3)])
        torch.testing.assert_close(class_means(features, labels), ref)
        torch.testing.assert_close(class_means(features, labels, way=3), ref)


def test_a_class_without_items_gets_a_zero_mean():
    means = class_means(torch.ones(2, 3), torch.tensor([0, 0]), way=2)
    assert means.tolist() == [[1.0] * 3, [0.0] * 3]


def test_squared_distances_equal_cdist_squared_and_protonet_logits_their_negation():
    g = torch.Generator().manual_seed(1)
    support, query = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(3).repeat(2)
    means = torch.stack([support[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(squared_distances(query, means), torch.cdist(query, means) ** 2)
    torch.testing.assert_close(prototype_logits(support, labels, query), -torch.cdist(query, means) ** 2)


def test_squared_distances_have_a_second_derivative_for_maml():
    g = torch.Generator().manual_seed(2)
    query = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    means = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(squared_distances, (query, means))
