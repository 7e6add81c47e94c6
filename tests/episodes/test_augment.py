"""Training-image augmentation: seeded, shape- and dtype-preserving, and equal to a brute-force resampler."""
import numpy as np
import pytest
import torch

from episodes.augment import (AffinePolicy, ElasticPolicy, affine_matrices, create_augment, elastic_field,
                              list_augments)


def images(n=6, c=1, size=28, seed=0):
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def bilinear_reference(img: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Resample one ``[C, H, W]`` image by the 2x3 matrix ``theta`` in normalised coordinates
    (align_corners=False, border padding), one output pixel at a time."""
    c, h, w = img.shape
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            xn, yn = (2 * j + 1) / w - 1, (2 * i + 1) / h - 1  # pixel centre in -1..1
            xs, ys = theta @ np.array([xn, yn, 1.0])
            x, y = ((xs + 1) * w - 1) / 2, ((ys + 1) * h - 1) / 2  # source, in pixels
            x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)  # border padding clamps the coordinate
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
            fx, fy = x - x0, y - y0
            out[:, i, j] = (img[:, y0, x0] * (1 - fx) * (1 - fy) + img[:, y0, x1] * fx * (1 - fy)
                            + img[:, y1, x0] * (1 - fx) * fy + img[:, y1, x1] * fx * fy)
    return out


class TestAffinePolicy:
    def test_output_has_the_input_shape_dtype_and_device(self):
        x = images(5, 3, 16)
        y = AffinePolicy()(x, gen(0))
        assert y.shape == x.shape and y.dtype == torch.uint8 and y.device == x.device

    def test_same_seed_same_images_other_seed_other_images(self):
        x = images()
        a, b, c = (AffinePolicy()(x, gen(s)) for s in (7, 7, 8))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    def test_each_image_gets_its_own_transform(self):
        x = images(1).expand(4, -1, -1, -1).contiguous()
        y = AffinePolicy()(x, gen(3))
        assert len({tuple(im.flatten().tolist()) for im in y}) == 4

    def test_zero_ranges_are_the_identity(self):
        x = images()
        assert torch.equal(AffinePolicy(rotate=0, shift=0, scale=0, shear=0)(x, gen(0)), x)

    def test_matches_a_per_pixel_bilinear_reference(self):
        x = images(3, 1, 12)
        policy = AffinePolicy(rotate=30, shift=0.2, scale=0.2, shear=15)
        theta = affine_matrices(3, gen(5), 30, 0.2, 0.2, 15).numpy()
        y = policy(x, gen(5))
        for k in range(3):
            ref = np.clip(np.round(bilinear_reference(x[k].double().numpy(), theta[k])), 0, 255)
            # float32 grid vs float64 reference: a pixel may round the other way at .5
            assert np.abs(y[k].numpy().astype(np.int64) - ref).max() <= 1

    def test_matrix_is_rotation_shear_and_zoom_within_the_ranges(self):
        theta = affine_matrices(500, gen(1), rotate=10, shift=0.1, scale=0.1, shear=0)
        a, t = theta[:, :, :2], theta[:, :, 2]
        zoom = 1 / torch.linalg.det(a).sqrt()  # det(A) = 1 / zoom^2 without shear
        assert zoom.min() >= 0.9 - 1e-9 and zoom.max() <= 1.1 + 1e-9
        angle = torch.rad2deg(torch.atan2(a[:, 1, 0], a[:, 0, 0]))
        assert angle.abs().max() <= 10 + 1e-6 and angle.abs().max() > 8  # the range is used
        assert t.abs().max() <= 0.2 + 1e-12  # 10 % of a side = 0.2 in -1..1 units

    def test_refuses_float_images(self):
        with pytest.raises(TypeError, match="uint8"):
            AffinePolicy()(torch.zeros(2, 1, 8, 8), gen(0))

    def test_empty_batch_passes_through(self):
        x = torch.zeros(0, 1, 8, 8, dtype=torch.uint8)
        assert AffinePolicy()(x, gen(0)).shape == (0, 1, 8, 8)


class TestElastic:
    def test_displacement_peaks_at_alpha_pixels(self):
        field = elastic_field(4, (28, 28), gen(0), alpha=2.0, sigma=3.0)
        pixels = field * torch.tensor([28 / 2, 28 / 2])
        assert field.shape == (4, 28, 28, 2)
        assert torch.allclose(pixels.abs().amax(dim=(1, 2)), torch.full((4, 2), 2.0), atol=1e-4)

    def test_field_is_smooth(self):
        field = elastic_field(2, (28, 28), gen(0), alpha=2.0, sigma=3.0)
        step = (field[:, 1:] - field[:, :-1]).abs().mean()
        noise = elastic_field(2, (28, 28), gen(0), alpha=2.0, sigma=0.3)
        assert step < 0.5 * (noise[:, 1:] - noise[:, :-1]).abs().mean()

    def test_elastic_differs_from_its_affine_part(self):
        x = images()
        assert not torch.equal(ElasticPolicy()(x, gen(2)), AffinePolicy()(x, gen(2)))
        assert torch.equal(ElasticPolicy()(x, gen(2)), ElasticPolicy()(x, gen(2)))


def test_named_policies():
    assert list_augments() == ["none", "affine", "elastic"]
    assert create_augment("none") is None
    assert isinstance(create_augment("elastic"), ElasticPolicy)
    with pytest.raises(ValueError, match="Did you mean 'affine'"):
        create_augment("afine")
