import pytest
import torch

from episodes import DataError, EpisodeBank, EpisodeSampler, ImageSet


def make_set(sizes, name="toy"):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    images = torch.arange(labels.numel(), dtype=torch.int64).remainder(256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    return ImageSet(images, labels, [f"class{c}" for c in range(len(sizes))], name=name)


@pytest.fixture
def images():
    return make_set([20] * 12)


class TestEpisodeShape:
    @pytest.mark.parametrize("way,shot,query", [(2, 1, 1), (5, 1, 15), (5, 5, 10), (12, 3, 2)])
    def test_episode_has_way_classes_shot_support_and_query_per_class(self, images, way, shot, query):
        ep = EpisodeSampler(images, way, shot, query, seed=3)[7]
        assert ep.classes.unique().numel() == way
        assert ep.support.shape == (way * shot,) and ep.query.shape == (way * query,)
        for i, c in enumerate(ep.classes.tolist()):
            assert (images.labels[ep.support[i * shot:(i + 1) * shot]] == c).all()
            assert (images.labels[ep.query[i * query:(i + 1) * query]] == c).all()
        assert ep.support_labels.tolist() == [i // shot for i in range(way * shot)]
        assert ep.query_labels.tolist() == [i // query for i in range(way * query)]

    def test_support_and_query_are_disjoint(self, images):
        sampler = EpisodeSampler(images, 5, 5, 15, seed=0)
        for i in range(50):
            ep = sampler[i]
            assert not set(ep.support.tolist()) & set(ep.query.tolist())
            assert len(set(ep.query.tolist())) == ep.query.numel()


class TestSeeding:
    def test_same_seed_same_episodes_in_any_access_order(self, images):
        a, b = EpisodeSampler(images, 5, 1, 3, seed=11), EpisodeSampler(images, 5, 1, 3, seed=11)
        forward = [a[i] for i in range(20)]
        backward = [b[i] for i in reversed(range(20))][::-1]
        for x, y in zip(forward, backward):
            assert torch.equal(x.classes, y.classes) and torch.equal(x.support, y.support) and torch.equal(x.query, y.query)

    def test_different_seed_gives_different_episodes(self, images):
        a, b = EpisodeSampler(images, 5, 1, 3, seed=1), EpisodeSampler(images, 5, 1, 3, seed=2)
        same = sum(torch.equal(a[i].support, b[i].support) for i in range(20))
        assert same <= 1

    def test_episodes_of_one_sampler_differ(self, images):
        s = EpisodeSampler(images, 5, 1, 3, seed=1)
        assert len({tuple(s[i].support.tolist()) for i in range(30)}) == 30

    def test_sampling_does_not_touch_the_global_rng(self, images):
        torch.manual_seed(123)
        before = torch.random.get_rng_state()
        EpisodeSampler(images, 5, 1, 3, seed=1)[0]
        assert torch.equal(before, torch.random.get_rng_state())

    def test_classes_are_used_roughly_uniformly(self, images):
        s = EpisodeSampler(images, 3, 1, 1, seed=0)
        counts = torch.bincount(torch.cat([s[i].classes for i in range(2000)]), minlength=12).float()
        expected = 2000 * 3 / 12
        assert (counts - expected).abs().max() < 0.2 * expected


class TestBadSizes:
    def test_way_larger_than_class_count_names_the_numbers(self, images):
        with pytest.raises(DataError, match=r"way=13 .* only 12"):
            EpisodeSampler(images, 13, 1, 1)

    def test_class_with_fewer_images_than_shot_plus_query_is_named(self):
        small = make_set([20, 20, 4, 20])
        with pytest.raises(DataError, match=r"class 'class2' has 4 images, fewer than shot\+query = 1\+5 = 6"):
            EpisodeSampler(small, 2, 1, 5)

    @pytest.mark.parametrize("kw", [dict(way=1), dict(shot=0), dict(query=0), dict(way=2.5)])
    def test_non_positive_or_non_integer_sizes_are_refused(self, images, kw):
        args = dict(way=5, shot=1, query=1) | kw
        with pytest.raises(ValueError, match=list(kw)[0]):
            EpisodeSampler(images, **args)

    def test_empty_class_is_refused_when_the_set_is_built(self):
        with pytest.raises(DataError, match="class 'b' has no images"):
            ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 0]), ["a", "b"])


class TestEpisodeBank:
    def test_bank_round_trips_through_a_file(self, images, tmp_path):
        bank = EpisodeSampler(images, 5, 2, 3, seed=4).bank(25)
        bank.save(tmp_path / "bank.pt")
        again = EpisodeBank.load(tmp_path / "bank.pt", images)
        assert again.bank_id == bank.bank_id and len(again) == 25
        assert (again.way, again.shot, again.query_per_class) == (5, 2, 3)
        for i in range(25):
            assert torch.equal(again[i].support, EpisodeSampler(images, 5, 2, 3, seed=4)[i].support)

    def test_bank_refuses_other_data(self, images, tmp_path):
        bank = EpisodeSampler(images, 5, 1, 3, seed=0).bank(5)
        bank.save(tmp_path / "bank.pt")
        other = make_set([20] * 11 + [21])
        with pytest.raises(DataError, match="fingerprint"):
            EpisodeBank.load(tmp_path / "bank.pt", other)

    def test_a_file_that_is_not_a_bank_is_refused_with_its_name(self, tmp_path):
        p = tmp_path / "junk.pt"
        p.write_bytes(b"not a bank")
        with pytest.raises(DataError, match="junk.pt"):
            EpisodeBank.load(p)

    def test_bank_id_changes_with_its_episodes(self, images):
        assert EpisodeSampler(images, 5, 1, 3, seed=0).bank(5).bank_id != EpisodeSampler(images, 5, 1, 3, seed=1).bank(5).bank_id


class TestImageSet:
    def test_subset_relabels_in_the_given_order(self, images):
        sub = images.subset([3, 1])
        assert sub.class_names == ["class3", "class1"] and sub.class_sizes().tolist() == [20, 20]
        assert torch.equal(sub.images[sub.indices_of(0)], images.images[images.indices_of(3)])

    def test_cache_round_trip_keeps_fingerprint(self, images, tmp_path):
        images.save(tmp_path / "c.pt")
        assert ImageSet.load(tmp_path / "c.pt").fingerprint == images.fingerprint

    def test_labels_out_of_range_are_refused(self):
        with pytest.raises(DataError, match="0..1"):
            ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 2]), ["a", "b"])
