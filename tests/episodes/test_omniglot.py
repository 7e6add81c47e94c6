"""episodes.omniglot: the real minimal zips, the extracted-folder form, a fake full Omniglot
(Vinyals-style path) and every bad input."""
import io
import zipfile

import pytest
import torch
from PIL import Image

from episodes import omniglot
from episodes.errors import DataError
from episodes.omniglot import find_omniglot_sets, load_omniglot, read_omniglot_set

TEST_ALPHABETS = {"Japanese_(katakana)", "Sanskrit", "Tagalog"}


def drawing(seed: int, size: int = 12) -> bytes:
    """A 1-bit PNG, black strokes on white like Omniglot's, different for every seed."""
    img = Image.new("1", (size, size), 1)
    for i in range(size):
        img.putpixel((i, (seed * 7 + i * (seed % 3 + 1)) % size), 0)  # a slanted stroke
    img.putpixel((seed % size, 0), 0)  # breaks the symmetry, so rotations differ
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def fake_set(folder, set_name, alphabets, drawers=2, offset=0, members=None):
    """Write ``<set_name>.zip`` with ``alphabets = {name: n_characters}``; returns its path."""
    path = folder / f"{set_name}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for a, (alphabet, n_chars) in enumerate(sorted(alphabets.items())):
            for c in range(1, n_chars + 1):
                for d in range(drawers):
                    seed = offset + 1000 * a + 10 * c + d
                    zf.writestr(f"{set_name}/{alphabet}/character{c:02d}/{seed:04d}_{d:02d}.png", drawing(seed))
        for name, data in members or []:
            zf.writestr(name, data)
    return path


def class_alphabets(images):
    return {name.split("/")[0] for name in images.class_names}


@pytest.fixture(scope="module", autouse=True)
def decode_each_drawing_once():
    """This module loads the same 5,840 real drawings about ten times (zips, extracted folders, symlinks,
    other val splits), and decoding them is most of each load. ``decode_images`` is a pure function of each
    item's bytes, the size and the channels (tested in test_decode.py), so here it decodes every distinct
    (bytes, size, channels) once and hands out copies of those rows; everything else a load does
    (finding, reading and splitting the sets, inverting, rotating) runs every time. Items never decoded
    (every fake and bad PNG the first time) go to the real function, in order, so its errors are unchanged."""
    real, rows = omniglot.decode_images, {}

    def decode_images(items, img_size, channels, max_workers=None):
        if not all(isinstance(data, (bytes, bytearray)) for _, data in items):
            return real(items, img_size, channels, max_workers)
        keys = [(bytes(data), img_size, channels) for _, data in items]
        new = [i for i, key in enumerate(keys) if key not in rows]
        if new:
            decoded = real([items[i] for i in new], img_size, channels, max_workers)
            rows.update((keys[i], row) for i, row in zip(new, decoded))
        out = torch.empty((len(items), channels, img_size, img_size), dtype=torch.uint8)
        for i, key in enumerate(keys):
            out[i] = rows[key]
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(omniglot, "decode_images", decode_images)
        yield


@pytest.fixture(scope="module")
def omniglot_dir(shared_data):
    return shared_data / "omniglot"


@pytest.fixture(scope="module")
def minimal(omniglot_dir):
    return load_omniglot(omniglot_dir, 28)


@pytest.fixture(scope="module")
def extracted(omniglot_dir, tmp_path_factory):
    """Both real zips extracted, as a user would, into a fresh folder."""
    out = tmp_path_factory.mktemp("omniglot_extracted")
    for name in ("images_background_small1", "images_background_small2"):
        with zipfile.ZipFile(omniglot_dir / f"{name}.zip") as zf:
            zf.extractall(out)
    return out


class TestRealZips:
    @pytest.mark.parametrize("set_name,n_chars", [("images_background_small1", 136), ("images_background_small2", 156)])
    def test_each_zip_has_its_characters_with_20_drawers_each(self, omniglot_dir, set_name, n_chars):
        chars = read_omniglot_set(omniglot_dir / f"{set_name}.zip")
        assert len(chars) == n_chars
        assert {len(v) for v in chars.values()} == {20}

    def test_the_two_zips_hold_242_distinct_characters_with_greek_and_latin_identical(self, omniglot_dir):
        small1 = read_omniglot_set(omniglot_dir / "images_background_small1.zip")
        small2 = read_omniglot_set(omniglot_dir / "images_background_small2.zip")
        assert len(set(small1) | set(small2)) == 242
        shared = set(small1) & set(small2)
        assert {a for a, _ in shared} == {"Greek", "Latin"}
        assert all([d for _, d in small1[k]] == [d for _, d in small2[k]] for k in shared)


class TestMinimalProtocol:
    def test_splits_have_484_15_and_106_classes_of_20_images(self, minimal):
        assert (minimal.train.num_classes, minimal.val.num_classes, minimal.test.num_classes) == (484, 15, 106)
        for split in ("train", "val", "test"):
            assert minimal[split].class_sizes().unique().tolist() == [20]

    def test_test_alphabets_are_exactly_the_three_found_only_in_small2(self, minimal):
        assert class_alphabets(minimal.test) == TEST_ALPHABETS
        assert not class_alphabets(minimal.train) & class_alphabets(minimal.test)
        assert not class_alphabets(minimal.val) & class_alphabets(minimal.test)

    def test_val_holds_out_three_whole_characters_per_small1_alphabet(self, minimal):
        val = set(minimal.val.class_names)
        train_chars = {name.split("@")[0] for name in minimal.train.class_names}
        assert not val & train_chars
        assert [name.split("/")[0] for name in minimal.val.class_names] == \
            [a for a in sorted(class_alphabets(minimal.train)) for _ in range(3)]

    def test_val_characters_are_the_ones_the_fixed_seed_picks(self, minimal):
        assert minimal.val.class_names[:3] == ["Balinese/character02", "Balinese/character13", "Balinese/character14"]

    def test_every_train_character_comes_in_four_rotations(self, minimal):
        names = minimal.train.class_names
        assert names[:4] == ["Balinese/character01", "Balinese/character01@rot90",
                             "Balinese/character01@rot180", "Balinese/character01@rot270"]
        base = minimal.train.images[minimal.train.indices_of(0)]
        for k in (1, 2, 3):
            assert torch.equal(minimal.train.images[minimal.train.indices_of(k)], torch.rot90(base, k, dims=(2, 3)))

    def test_images_are_28x28_uint8_with_bright_strokes_on_a_dark_background(self, minimal):
        for split in ("train", "val", "test"):
            images = minimal[split].images
            assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
            assert images.float().mean() < 60  # mostly dark background
            assert images.amax(dim=(1, 2, 3)).min() > 128  # every drawing has bright strokes
            assert (images[:, :, 0, :] == 0).float().mean() > 0.9  # the border row is background
        assert minimal.train.name == "omniglot-minimal/train"

    def test_a_zip_given_directly_is_read_with_its_sibling(self, omniglot_dir, minimal):
        splits = load_omniglot(omniglot_dir / "images_background_small2.zip", 28)
        assert splits.test.class_names == minimal.test.class_names
        assert torch.equal(splits.test.images, minimal.test.images)


class TestExtractedFolders:
    def test_extracted_folders_give_the_same_tensors_as_the_zips(self, extracted, minimal):
        assert set(find_omniglot_sets(extracted).values()) == {extracted / "images_background_small1",
                                                               extracted / "images_background_small2"}
        splits = load_omniglot(extracted, 28)
        for split in ("train", "val", "test"):
            assert splits[split].class_names == minimal[split].class_names
            assert torch.equal(splits[split].images, minimal[split].images)
            assert torch.equal(splits[split].labels, minimal[split].labels)

    def test_a_folder_wins_over_a_zip_of_the_same_name(self, extracted, omniglot_dir, tmp_path):
        (tmp_path / "images_background_small1").symlink_to(extracted / "images_background_small1")
        (tmp_path / "images_background_small1.zip").write_bytes(b"not a zip: must not be read")
        (tmp_path / "images_background_small2.zip").symlink_to(omniglot_dir / "images_background_small2.zip")
        assert find_omniglot_sets(tmp_path)["images_background_small1"] == tmp_path / "images_background_small1"
        assert load_omniglot(tmp_path, 28).val.num_classes == 15

    def test_a_folder_extracted_with_an_extra_level_is_read(self, tmp_path):
        fake_set(tmp_path, "images_background_small1", {"Alpha": 2})
        with zipfile.ZipFile(tmp_path / "images_background_small1.zip") as zf:
            zf.extractall(tmp_path / "images_background_small1")  # .../small1/small1/Alpha/...
        chars = read_omniglot_set(tmp_path / "images_background_small1")
        assert list(chars) == [("Alpha", "character01"), ("Alpha", "character02")]
        from_zip = read_omniglot_set(tmp_path / "images_background_small1.zip")
        assert {k: [d for _, d in v] for k, v in chars.items()} == {k: [d for _, d in v] for k, v in from_zip.items()}


class TestVinyalsStyleSplit:
    @pytest.fixture
    def full(self, tmp_path):
        fake_set(tmp_path, "images_background", {"Alpha": 3, "Beta": 2}, drawers=3)
        fake_set(tmp_path, "images_evaluation", {"Gamma": 4, "Delta": 1}, drawers=3, offset=5000)
        return tmp_path

    def test_characters_are_cut_by_the_counts_with_four_rotations_in_every_split(self, full, monkeypatch):
        monkeypatch.setattr(omniglot, "VINYALS_COUNTS", (6, 1, 3))
        splits = load_omniglot(full, 16)
        chars = {s: {n.split("@")[0] for n in splits[s].class_names} for s in ("train", "val", "test")}
        assert [len(chars[s]) for s in ("train", "val", "test")] == [6, 1, 3]
        assert [splits[s].num_classes for s in ("train", "val", "test")] == [24, 4, 12]
        assert not (chars["train"] & chars["val"] or chars["train"] & chars["test"] or chars["val"] & chars["test"])
        assert len(chars["train"] | chars["val"] | chars["test"]) == 10
        assert splits.test.class_sizes().unique().tolist() == [3]
        assert splits.train.images.shape[1:] == (1, 16, 16) and splits.train.name == "omniglot/train"
        assert splits.train.images.float().mean() < 128  # inverted: strokes bright

    def test_the_split_is_fixed_by_the_seed(self, full):
        chars = omniglot._merge([read_omniglot_set(full / "images_background.zip"),
                                 read_omniglot_set(full / "images_evaluation.zip")])
        a = omniglot._vinyals_splits(chars, 8, (6, 1, 3))
        b = omniglot._vinyals_splits(dict(reversed(list(chars.items()))), 8, (6, 1, 3))
        assert a.test.class_names == b.test.class_names and torch.equal(a.test.images, b.test.images)
        c = omniglot._vinyals_splits(chars, 8, (6, 1, 3), seed=1)
        assert a.train.class_names != c.train.class_names

    def test_the_full_set_wins_over_the_minimal_sets(self, full, monkeypatch):
        monkeypatch.setattr(omniglot, "VINYALS_COUNTS", (6, 1, 3))
        fake_set(full, "images_background_small1", {"Alpha": 5})
        fake_set(full, "images_background_small2", {"Zeta": 2})
        assert load_omniglot(full, 8).train.name == "omniglot/train"

    def test_a_full_set_without_1623_characters_is_refused(self, full):
        with pytest.raises(DataError, match="full Omniglot needs 1623 characters .* found 10"):
            load_omniglot(full, 8)


class TestMinimalOnFakeData:
    def test_small_sets_give_val_of_three_per_alphabet_and_test_of_new_alphabets(self, tmp_path):
        fake_set(tmp_path, "images_background_small1", {"Alpha": 5, "Beta": 4})
        fake_set(tmp_path, "images_background_small2", {"Alpha": 5, "Zeta": 2})
        splits = load_omniglot(tmp_path, 10)
        assert (splits.train.num_classes, splits.val.num_classes, splits.test.num_classes) == (12, 6, 2)
        assert class_alphabets(splits.test) == {"Zeta"}

    def test_an_alphabet_too_small_to_hold_out_three_characters_is_refused(self, tmp_path):
        fake_set(tmp_path, "images_background_small1", {"Alpha": 5, "Tiny": 3})
        fake_set(tmp_path, "images_background_small2", {"Zeta": 2})
        with pytest.raises(DataError, match="alphabet 'Tiny' has 3 characters"):
            load_omniglot(tmp_path, 10)


class TestBadInputs:
    def test_a_missing_root_is_an_error_naming_it(self, tmp_path):
        with pytest.raises(DataError, match="nowhere: no such file"):
            load_omniglot(tmp_path / "nowhere", 28)

    def test_only_one_minimal_zip_is_an_error_saying_what_was_found_and_needed(self, tmp_path):
        fake_set(tmp_path, "images_background_small1", {"Alpha": 5})
        with pytest.raises(DataError, match=r"found .*images_background_small1\.zip\. Needed: images_background "):
            load_omniglot(tmp_path, 28)

    def test_a_folder_without_omniglot_is_an_error_listing_none_found(self, tmp_path):
        with pytest.raises(DataError, match="found none of them"):
            load_omniglot(tmp_path, 28)

    def test_a_zip_that_is_not_omniglots_layout_says_what_was_expected_and_found(self, tmp_path):
        path = tmp_path / "images_background_small1.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("photos/cat.png", drawing(1))
        with pytest.raises(DataError, match=r"expected members like 'images_background_small1/<Alphabet>/"
                                            r"<characterNN>/<file>\.png', found 'photos/cat\.png'"):
            read_omniglot_set(path)

    def test_a_zip_without_pngs_is_an_error_naming_it(self, tmp_path):
        path = tmp_path / "images_background.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("images_background/readme.txt", "hi")
        with pytest.raises(DataError, match=r"images_background\.zip: no PNG members"):
            read_omniglot_set(path)

    @pytest.mark.parametrize("data,reason", [(b"", "empty file"), (b"\x89PNG\r\n\x1a\n trunc", "not a readable image"),
                                             (drawing(3)[:60], "not a readable image")])
    def test_a_bad_png_in_the_zip_is_an_error_naming_zip_and_member(self, tmp_path, data, reason):
        member = "images_background_small1/Alpha/character01/bad.png"
        fake_set(tmp_path, "images_background_small1", {"Alpha": 5}, members=[(member, data)])
        fake_set(tmp_path, "images_background_small2", {"Zeta": 2})
        with pytest.raises(DataError, match=rf"images_background_small1\.zip:{member}: {reason}"):
            load_omniglot(tmp_path, 28)

    def test_a_zip_with_a_parent_dir_member_is_refused(self, tmp_path):
        fake_set(tmp_path, "images_background_small1", {"Alpha": 5},
                 members=[("images_background_small1/../../evil.png", drawing(1))])
        fake_set(tmp_path, "images_background_small2", {"Zeta": 2})
        with pytest.raises(DataError, match=r"images_background_small1\.zip:.*evil\.png: unsafe member path"):
            load_omniglot(tmp_path, 28)

    def test_an_empty_character_folder_is_an_error_naming_it(self, tmp_path):
        (tmp_path / "images_background" / "Alpha" / "character07").mkdir(parents=True)
        with pytest.raises(DataError, match=r"Alpha/character07: empty character folder"):
            read_omniglot_set(tmp_path / "images_background")

    def test_an_image_outside_a_character_folder_is_an_error_naming_it(self, tmp_path):
        (tmp_path / "images_background" / "Alpha" / "character01").mkdir(parents=True)
        (tmp_path / "images_background" / "Alpha" / "character01" / "a.png").write_bytes(drawing(1))
        (tmp_path / "images_background" / "Alpha" / "stray.png").write_bytes(drawing(2))
        with pytest.raises(DataError, match=r"Alpha/stray\.png: image outside a character folder"):
            read_omniglot_set(tmp_path / "images_background")

    def test_a_file_that_is_not_an_omniglot_set_is_refused(self, tmp_path):
        (tmp_path / "photos.zip").write_bytes(b"PK")
        with pytest.raises(DataError, match=r"photos\.zip: not an Omniglot set"):
            load_omniglot(tmp_path / "photos.zip", 28)


@pytest.fixture(scope="module")
def six(omniglot_dir):
    """omniglot-minimal with 6 characters of every training alphabet held out (30 val classes)."""
    return load_omniglot(omniglot_dir, 28, val_per_alphabet=6)


class TestValPerAlphabet:
    """--val-per-alphabet V: more held-out characters of the training alphabets; V = 3 is the historical split."""

    def test_three_is_the_default_split_exactly(self, omniglot_dir, minimal):
        three = load_omniglot(omniglot_dir, 28, val_per_alphabet=3)
        for split in ("train", "val", "test"):
            assert three[split].fingerprint == minimal[split].fingerprint

    def test_the_default_test_bank_is_the_one_the_results_were_scored_on(self, minimal):
        """benchmarks/results/omniglot_minimal.md's 5-way 1-shot bank (600 episodes, bank seed 0)."""
        from episodes import EpisodeSampler

        assert EpisodeSampler(minimal.test, 5, 1, 15, seed=0).bank(600).bank_id == "198fb0828aee0318"

    def test_six_hold_out_six_whole_unrotated_characters_of_every_alphabet(self, six, minimal):
        assert (six.train.num_classes, six.val.num_classes, six.test.num_classes) == (424, 30, 106)
        alphabets = sorted(class_alphabets(minimal.train))
        assert [n.split("/")[0] for n in six.val.class_names] == [a for a in alphabets for _ in range(6)]
        assert not any("@rot" in n for n in six.val.class_names)
        train_chars = {n.split("@")[0] for n in six.train.class_names}
        assert not train_chars & set(six.val.class_names)
        assert len(train_chars | set(six.val.class_names)) == 136  # every small1 character, once
        assert class_alphabets(six.train) == set(alphabets)  # every alphabet still trains

    def test_the_draws_are_seeded_and_the_test_split_is_untouched(self, six, omniglot_dir, minimal):
        again = load_omniglot(omniglot_dir, 28, val_per_alphabet=6)
        assert again.val.class_names == six.val.class_names and torch.equal(again.val.images, six.val.images)
        assert six.test.fingerprint == minimal.test.fingerprint
        balinese = {n for n in minimal.val.class_names if n.startswith("Balinese/")}
        assert balinese < set(six.val.class_names)  # the first alphabet's six draws start with its three

    def test_load_splits_passes_the_option_and_caches_it_apart(self, omniglot_dir, tmp_path):
        from episodes import load_splits

        for name in ("images_background_small1.zip", "images_background_small2.zip"):
            (tmp_path / name).symlink_to(omniglot_dir / name)
        assert load_splits("omniglot", tmp_path, cache=True, val_per_alphabet=4).val.num_classes == 20
        assert load_splits("omniglot", tmp_path, cache=True).val.num_classes == 15
        assert load_splits("omniglot", tmp_path, cache=True, val_per_alphabet=4).val.num_classes == 20  # from cache
        assert len(list(tmp_path.glob(".fewshot-cache-omniglot-*val_per_alphabet4.pt"))) == 1

    def test_more_than_an_alphabet_can_spare_is_refused_naming_it_and_the_limit(self, omniglot_dir):
        with pytest.raises(DataError, match=r"alphabet 'Early_Aramaic' has 22 characters; omniglot-minimal holds "
                                            r"out 22 per alphabet and needs more \(use --val-per-alphabet 21 or fewer\)"):
            load_omniglot(omniglot_dir, 28, val_per_alphabet=22)

    @pytest.mark.parametrize("value", [0, -1, 2.5, True])
    def test_a_value_that_is_not_a_positive_integer_is_refused(self, omniglot_dir, value):
        with pytest.raises(DataError, match="val_per_alphabet must be a positive integer"):
            load_omniglot(omniglot_dir, 28, val_per_alphabet=value)

    def test_the_full_omniglot_split_is_fixed_and_refuses_the_option(self, tmp_path):
        fake_set(tmp_path, "images_background", {"Alpha": 3}, drawers=3)
        fake_set(tmp_path, "images_evaluation", {"Gamma": 4}, drawers=3, offset=5000)
        with pytest.raises(DataError, match="--val-per-alphabet applies to omniglot-minimal .* fixed val split of 172"):
            load_omniglot(tmp_path, 8, val_per_alphabet=5)

    def test_a_dataset_without_the_option_refuses_it_naming_both(self):
        from episodes import load_splits

        with pytest.raises(DataError, match="dataset 'glyphs' has no option --val-per-alphabet"):
            load_splits("glyphs", val_per_alphabet=6)


class TestWithinAlphabetEpisodes:
    """--episode-groups alphabet on the real zips: Lake et al. (2015)'s one-shot protocol."""

    @staticmethod
    def sampler(images, way, shot=1, query=5, seed=0, grouped=True):
        from episodes import EpisodeSampler
        from episodes.sampler import class_groups

        groups = class_groups(images, "alphabet" if grouped else "none", "omniglot")
        return EpisodeSampler(images, way, shot, query, seed=seed, groups=groups)

    def test_alphabet_groups_of_the_test_split(self, minimal):
        groups = omniglot.alphabet_groups(minimal.test)
        assert {a: len(c) for a, c in groups.items()} == {"Japanese_(katakana)": 47, "Sanskrit": 42, "Tagalog": 17}
        for alphabet, classes in groups.items():
            assert all(minimal.test.class_names[c].startswith(alphabet + "/") for c in classes)

    def test_rotated_copies_belong_to_their_characters_alphabet(self, minimal):
        groups = omniglot.alphabet_groups(minimal.train)
        assert sorted(groups) == sorted(class_alphabets(minimal.train))
        assert len(groups["Greek"]) == 4 * (24 - 3)  # Greek's training characters, each in four rotations
        assert minimal.train.class_names.index("Greek/character01@rot90") in groups["Greek"]

    @pytest.mark.filterwarnings("ignore:omniglot-minimal/test. Tagalog")
    @pytest.mark.parametrize("split, way", [("train", 20), ("val", 5), ("test", 5), ("test", 20)])
    def test_every_episodes_classes_share_one_alphabet(self, six, split, way):
        images = six[split]
        bank = self.sampler(images, way).bank(300)
        seen = set()
        for ep in bank:
            alphabets = {omniglot.alphabet_of(images.class_names[c]) for c in ep.classes.tolist()}
            assert len(alphabets) == 1 and ep.classes.unique().numel() == way
            seen |= alphabets
            for i, c in enumerate(ep.classes.tolist()):  # images of the episode's own classes
                assert (images.labels[ep.support[i:i + 1]] == c).all()
        assert seen == {a for a, c in omniglot.alphabet_groups(images).items() if len(c) >= way}

    def test_the_usual_protocol_mixes_alphabets(self, minimal):
        bank = self.sampler(minimal.test, 5, grouped=False).bank(50)
        assert any(len({omniglot.alphabet_of(minimal.test.class_names[c]) for c in ep.classes.tolist()}) > 1
                   for ep in bank)

    def test_seeded_determinism_and_a_bank_id_of_its_own(self, minimal):
        a, b = self.sampler(minimal.test, 5, seed=3).bank(40), self.sampler(minimal.test, 5, seed=3).bank(40)
        assert a.bank_id == b.bank_id and torch.equal(a.classes, b.classes) and torch.equal(a.query, b.query)
        assert self.sampler(minimal.test, 5, seed=3)[17].classes.tolist() == a[17].classes.tolist()  # any order
        assert self.sampler(minimal.test, 5, seed=4).bank(40).bank_id != a.bank_id
        assert self.sampler(minimal.test, 5, seed=3, grouped=False).bank(40).bank_id != a.bank_id

    def test_an_alphabet_with_fewer_characters_than_way_sits_out_with_a_warning_naming_it(self, minimal):
        with pytest.warns(UserWarning, match=r"Tagalog \(17 classes\) has fewer classes than way = 20 and takes no "
                                             r"part in 20-way within-group episodes"):
            bank = self.sampler(minimal.test, 20).bank(60)
        tagalog = set(omniglot.alphabet_groups(minimal.test)["Tagalog"])
        assert not tagalog & set(bank.classes.flatten().tolist())

    def test_no_alphabet_large_enough_is_an_error_naming_every_alphabet(self, minimal):
        with pytest.raises(DataError, match=r"omniglot-minimal/val: 5-way episodes within one group need a group of "
                                            r"at least 5 classes; the groups have Balinese \(3\), Early_Aramaic \(3\), "
                                            r"Greek \(3\), Korean \(3\), Latin \(3\)"):
            self.sampler(minimal.val, 5)
