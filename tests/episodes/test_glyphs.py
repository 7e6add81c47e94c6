"""episodes.glyphs: the generated default dataset: shapes, seeding, class identity, that the
jitter is real but classes stay distinct, the ink convention, the fixed splits and bad input."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from episodes import dataset_info, glyphs
from episodes.glyphs import GLYPHS_SPLIT, generate_glyphs, load_glyphs


def fresh(**kw):
    """Generate with every in-process cache cleared, so nothing is merely remembered."""
    glyphs._generate.cache_clear()
    glyphs._class_shape.cache_clear()
    return generate_glyphs(**kw)


@pytest.fixture(scope="module")
def small():
    """20 classes x 20 instances at 28x28, seed 0."""
    return generate_glyphs(num_classes=20, per_class=20, img_size=28, seed=0)


@pytest.fixture(scope="module")
def splits():
    return load_glyphs(None, 28)


class TestShapes:
    def test_images_are_uint8_one_channel_squares_grouped_by_class(self, small):
        assert small.images.dtype == torch.uint8
        assert small.images.shape == (400, 1, 28, 28)
        assert small.labels.tolist() == [c for c in range(20) for _ in range(20)]
        assert small.class_sizes().tolist() == [20] * 20

    def test_classes_are_named_glyph_and_a_four_digit_index(self, small):
        assert small.class_names[:3] == ["glyph0000", "glyph0001", "glyph0002"]
        assert small.class_names[-1] == "glyph0019"
        assert small.name == "glyphs"

    @pytest.mark.parametrize("img_size", [8, 32, 64])
    def test_any_image_size_from_8_is_drawn(self, img_size):
        g = generate_glyphs(num_classes=2, per_class=3, img_size=img_size)
        assert g.images.shape == (6, 1, img_size, img_size)
        assert int(g.images.max()) > 200

    def test_the_default_set_has_400_classes_of_20(self):
        g = generate_glyphs()
        assert g.images.shape == (8000, 1, 28, 28) and g.num_classes == 400


class TestSeeding:
    def test_same_seed_gives_byte_identical_images(self):
        a = fresh(num_classes=6, per_class=4, seed=7)
        b = fresh(num_classes=6, per_class=4, seed=7)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)

    def test_different_seed_gives_different_images(self):
        a = generate_glyphs(num_classes=6, per_class=4, seed=7)
        b = generate_glyphs(num_classes=6, per_class=4, seed=8)
        assert not torch.equal(a.images, b.images)
        # every image differs, not just a few
        assert bool((a.images != b.images).flatten(1).any(1).all())

    def test_a_class_is_the_same_whatever_the_number_of_classes(self):
        few = fresh(num_classes=5, per_class=6, seed=3)
        many = fresh(num_classes=50, per_class=6, seed=3)
        assert torch.equal(few.images, many.images[:30])

    def test_an_instance_is_the_same_whatever_the_number_per_class(self):
        few = generate_glyphs(num_classes=4, per_class=3, seed=3)
        many = generate_glyphs(num_classes=4, per_class=10, seed=3)
        for c in range(4):
            assert torch.equal(few.images[few.indices_of(c)], many.images[many.indices_of(c)[:3]])

    def test_generation_does_not_touch_the_global_rngs(self):
        torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
        fresh(num_classes=3, per_class=3, seed=11)
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))
        assert random.getstate() == py_state

    def test_generation_is_memoised_and_each_call_gets_its_own_copy(self):
        a = generate_glyphs(num_classes=3, per_class=2, seed=5)
        hits = glyphs._generate.cache_info().hits
        a.images.zero_()
        b = generate_glyphs(num_classes=3, per_class=2, seed=5)
        assert glyphs._generate.cache_info().hits == hits + 1
        assert int(b.images.max()) > 200


class TestClassesAndJitter:
    """Pixel distances after a 3x3 box blur: instances of a class vary but stay near their class."""

    @staticmethod
    def blurred(images):
        k, n = images.num_classes, len(images) // images.num_classes
        return F.avg_pool2d(images.as_float(), 3, 1, 1).flatten(1).view(k, n, -1), k, n

    def test_instances_of_one_class_all_differ(self, small):
        x, k, _ = self.blurred(small)
        closest_pair = torch.stack([torch.pdist(x[c]).min() for c in range(k)])
        assert float(closest_pair.min()) > 0.5  # no two instances are (near) copies

    def test_instances_are_nearer_their_own_class_mean_than_other_classes_means(self, small):
        x, k, n = self.blurred(small)
        sums = x.sum(1)
        own = (x - (sums[:, None] - x) / (n - 1)).norm(dim=-1)  # to the mean of the *other* instances
        d = torch.cdist(x.flatten(0, 1), sums / n).view(k, n, k)
        other = ~torch.eye(k, dtype=torch.bool)[:, None, :]
        mean_to_others = (d * other).sum(-1) / (k - 1)
        nearest_other = d.masked_fill(~other, float("inf")).min(-1).values
        ratio = float(own.mean() / mean_to_others.mean())
        # measured 0.72-0.76 over seeds 0-5: clearly related, yet far from copies (ratio 0)
        assert 0.4 < ratio < 0.85, ratio
        # measured 67-75% (chance against 19 other means would be far lower)
        assert float((own < nearest_other).float().mean()) > 0.55
        assert float((own < mean_to_others).float().mean()) > 0.95


class TestInk:
    def test_strokes_are_bright_on_a_dark_background(self, small):
        x = small.images.float()
        assert float(x.mean()) < 60  # measured ~23: mostly background
        assert bool((x.flatten(1).amax(1) >= 230).all())  # every image has solid stroke pixels
        assert float((small.images == 0).float().mean()) > 0.6
        corners = small.images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]].float()
        assert float(corners.mean()) < 10

    def test_edges_are_antialiased_with_intermediate_grey_levels(self, small):
        x = small.images
        assert float(((x > 20) & (x < 235)).float().mean()) > 0.03


class TestSplits:
    def test_splits_have_240_60_100_disjoint_classes_of_20_images(self, splits):
        names = [set(splits[s].class_names) for s in ("train", "val", "test")]
        assert tuple(map(len, names)) == GLYPHS_SPLIT == (240, 60, 100)
        assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
        for s in ("train", "val", "test"):
            assert splits[s].class_sizes().tolist() == [20] * splits[s].num_classes
            assert splits[s].image_shape == (1, 28, 28)
            assert splits[s].name == f"glyphs/{s}"

    def test_splits_take_classes_in_order(self, splits):
        assert splits.train.class_names[0] == "glyph0000" and splits.train.class_names[-1] == "glyph0239"
        assert splits.val.class_names[0] == "glyph0240" and splits.val.class_names[-1] == "glyph0299"
        assert splits.test.class_names[0] == "glyph0300" and splits.test.class_names[-1] == "glyph0399"

    def test_split_images_are_those_of_the_full_set(self, splits):
        full = generate_glyphs()
        assert torch.equal(splits.train.images, full.images[:4800])
        assert torch.equal(splits.test.images, full.images[6000:])
        assert splits.test.labels.tolist() == [c for c in range(100) for _ in range(20)]

    def test_glyphs_is_registered_as_a_generated_one_channel_dataset(self):
        info = dataset_info("glyphs")
        assert info.loader is load_glyphs
        assert (info.needs_root, info.default_img_size, info.in_chans) == (False, 28, 1)
        assert info.description


class TestBadArguments:
    @pytest.mark.parametrize("kw,name", [
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=-3), "num_classes"),
        (dict(per_class=0), "per_class"),
        (dict(img_size=7), "img_size"),
        (dict(seed=-1), "seed"),
        (dict(num_classes=2.5), "num_classes"),
        (dict(per_class="20"), "per_class"),
        (dict(img_size=True), "img_size"),
    ])
    def test_bad_arguments_raise_value_error_naming_the_argument(self, kw, name):
        with pytest.raises(ValueError, match=name):
            generate_glyphs(**kw)

    def test_the_message_says_what_must_hold_and_what_was_given(self):
        with pytest.raises(ValueError, match=r"img_size must be an integer >= 8, got 4"):
            generate_glyphs(img_size=4)
