"""episodes.folder (class-per-folder trees), episodes.digits (scikit-learn's toy digits) and
their registration."""
import pytest
import torch
from PIL import Image

from episodes import dataset_info, load_splits
from episodes.digits import load_digits
from episodes.errors import DataError
from episodes.folder import load_folder, split_classes


def make_tree(root, classes, per_class=3, suffix=".png"):
    """``root/<class>/<i><suffix>`` images, class ``c`` filled with grey level ``10 * (c + 1)``."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt = {".png": "PNG", ".jpg": "JPEG", ".JPG": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP"}[suffix]
            Image.new("RGB", (9, 7), (10 * (c + 1),) * 3).save(root / name / f"{i}{suffix}", format=fmt)
    return root


class TestFolderLayouts:
    def test_given_split_folders_are_used_as_they_are(self, tmp_path):
        make_tree(tmp_path / "train", ["a", "b", "c"])
        make_tree(tmp_path / "val", ["d"])
        make_tree(tmp_path / "test", ["e", "f"], per_class=2)
        splits = load_folder(tmp_path, 16)
        assert [splits[s].class_names for s in ("train", "val", "test")] == [["a", "b", "c"], ["d"], ["e", "f"]]
        assert splits.train.images.shape == (9, 3, 16, 16) and splits.test.class_sizes().tolist() == [2, 2]
        assert splits.val.name == "folder/val"

    def test_one_tree_is_split_60_20_20_by_class_with_a_fixed_seed(self, tmp_path):
        names = [f"class{i:02d}" for i in range(10)]
        make_tree(tmp_path, names, per_class=2)
        splits = load_folder(tmp_path, 8)
        parts = [splits[s].class_names for s in ("train", "val", "test")]
        assert [len(p) for p in parts] == [6, 2, 2]
        assert sorted(sum(parts, [])) == names
        assert parts == [list(p) for p in split_classes(names)]
        assert load_folder(tmp_path, 8).test.class_names == parts[2]

    @pytest.mark.parametrize("n,expected", [(3, (1, 1, 1)), (4, (2, 1, 1)), (5, (3, 1, 1)), (20, (12, 4, 4))])
    def test_every_split_gets_at_least_one_class(self, n, expected):
        assert tuple(map(len, split_classes([f"c{i}" for i in range(n)]))) == expected

    def test_images_keep_their_class_and_colour(self, tmp_path):
        make_tree(tmp_path, ["a", "b", "c"], suffix=".jpg")
        splits = load_folder(tmp_path, 8)
        for s in ("train", "val", "test"):
            for c, name in enumerate(splits[s].class_names):
                level = 10 * ("abc".index(name) + 1)
                assert (splits[s].images[splits[s].indices_of(c)].float() - level).abs().max() <= 3

    @pytest.mark.parametrize("suffix", [".png", ".JPG", ".bmp", ".gif", ".webp"])
    def test_every_image_suffix_is_read_whatever_its_case(self, tmp_path, suffix):
        make_tree(tmp_path, ["a", "b", "c"], per_class=1, suffix=suffix)
        assert len(load_folder(tmp_path, 8).train) == 1

    def test_other_files_and_hidden_entries_are_ignored(self, tmp_path):
        make_tree(tmp_path, ["a", "b", "c"], per_class=2)
        (tmp_path / "a" / "notes.txt").write_text("not an image")
        (tmp_path / "a" / ".thumb.png").write_bytes(b"hidden, never decoded")
        (tmp_path / ".git").mkdir()
        splits = load_folder(tmp_path, 8)
        assert sum(len(splits[s]) for s in ("train", "val", "test")) == 6


class TestFolderBadInputs:
    def test_an_empty_class_folder_is_an_error_naming_it(self, tmp_path):
        make_tree(tmp_path, ["a", "b", "c"])
        (tmp_path / "lonely").mkdir()
        (tmp_path / "lonely" / "readme.txt").write_text("no images here")
        with pytest.raises(DataError, match=r"lonely: empty class folder"):
            load_folder(tmp_path, 8)

    def test_fewer_than_three_classes_is_an_error_saying_how_many(self, tmp_path):
        make_tree(tmp_path, ["a", "b"])
        with pytest.raises(DataError, match=r"at least 3 classes .* found 2: \['a', 'b'\]"):
            load_folder(tmp_path, 8)

    def test_some_split_folders_without_the_others_is_an_error_naming_the_missing_ones(self, tmp_path):
        make_tree(tmp_path / "train", ["a"])
        make_tree(tmp_path / "test", ["b"])
        with pytest.raises(DataError, match=r"found split folder\(s\) train, test/ but not val/"):
            load_folder(tmp_path, 8)

    def test_a_class_in_two_split_folders_is_an_error_naming_it(self, tmp_path):
        make_tree(tmp_path / "train", ["a", "b"])
        make_tree(tmp_path / "val", ["c"])
        make_tree(tmp_path / "test", ["b"])
        with pytest.raises(DataError, match=r"test/b: class 'b' is also in .*train/b"):
            load_folder(tmp_path, 8)

    def test_a_symlink_loop_inside_a_class_folder_is_an_error_naming_it(self, tmp_path):
        make_tree(tmp_path, ["a", "b", "c"])
        (tmp_path / "b" / "again").symlink_to(tmp_path)
        with pytest.raises(DataError, match=r"b/again: symlink loop"):
            load_folder(tmp_path, 8)

    def test_a_class_folder_linking_to_itself_is_an_error_naming_it(self, tmp_path):
        make_tree(tmp_path, ["a", "b", "c"])
        (tmp_path / "d").symlink_to(tmp_path / "d")
        with pytest.raises(DataError, match=r"/d: broken or looping symlink"):
            load_folder(tmp_path, 8)

    @pytest.mark.parametrize("data,reason", [(b"", "empty file"), (b"GIF89a truncated", "not a readable image")])
    def test_a_corrupt_or_empty_image_is_an_error_naming_it(self, tmp_path, data, reason):
        make_tree(tmp_path, ["a", "b", "c"])
        (tmp_path / "c" / "broken.gif").write_bytes(data)
        with pytest.raises(DataError, match=rf"c/broken\.gif: {reason}"):
            load_folder(tmp_path, 8)

    def test_a_root_that_is_not_a_folder_is_an_error_naming_it(self, tmp_path):
        with pytest.raises(DataError, match=r"absent: not a folder"):
            load_folder(tmp_path / "absent", 8)


@pytest.fixture(scope="module")
def digits():
    return load_digits(None, 28)


class TestDigits:
    def test_train_is_digits_0_to_4_and_val_test_split_the_images_of_5_to_9(self, digits):
        assert digits.train.class_names == [f"digit{d}" for d in range(5)]
        assert digits.val.class_names == digits.test.class_names == [f"digit{d}" for d in range(5, 10)]
        assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
        assert (digits.val.class_sizes() - digits.test.class_sizes()).abs().max() <= 1

    def test_val_and_test_share_no_image(self, digits):
        val = {bytes(x.flatten().tolist()) for x in digits.val.images}
        test = {bytes(x.flatten().tolist()) for x in digits.test.images}
        assert len(val & test) < 5  # (a few digits are drawn identically at 8x8)

    def test_images_are_resized_uint8_with_bright_strokes(self, digits):
        images = digits.train.images
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
        assert images.float().mean() < 100 and images.amax() == 255
        assert (images < 128).float().mean() > 0.6  # strokes are the bright minority
        assert (images[:, :, :, 0] < 20).float().mean() > 0.95  # the left border column is background

    def test_the_native_size_keeps_scikit_learns_values_scaled_to_255(self):
        from sklearn.datasets import load_digits as sk_load_digits

        raw = torch.as_tensor(sk_load_digits().images[0])  # a 0: the first image of train's first class
        train = load_digits(None, 8).train
        assert torch.equal(train.images[0, 0], (raw * 255 / 16).round().to(torch.uint8))


class TestRegistry:
    @pytest.mark.parametrize("name,needs_root,size,chans", [
        ("omniglot", True, 28, 1), ("miniimagenet", True, 84, 3), ("folder", True, 84, 3), ("digits", False, 28, 1)])
    def test_each_loader_is_registered_with_its_defaults(self, name, needs_root, size, chans):
        info = dataset_info(name)
        assert (info.needs_root, info.default_img_size, info.in_chans) == (needs_root, size, chans)

    def test_load_splits_runs_a_loader_from_the_registry(self, tmp_path):
        make_tree(tmp_path, ["a", "b", "c"], per_class=1)
        assert load_splits("folder", tmp_path, img_size=12).train.image_shape == (3, 12, 12)
        assert load_splits("digits").train.image_shape == (1, 28, 28)
