"""episodes.miniimagenet: the real Ravi-Larochelle CSVs, an end-to-end load on trimmed copies of
them with generated images, and every bad input."""
import pytest
import torch
from PIL import Image

from episodes.errors import DataError
from episodes.miniimagenet import load_miniimagenet, read_split_csv

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def real_csvs(shared_data):
    return {s: read_split_csv(shared_data / "miniimagenet_splits" / f"{s}.csv") for s in SPLITS}


def colour_of(label: str) -> tuple:
    """A distinct RGB colour per class, so a test can tell the classes apart after decoding."""
    h = sum(label.encode()) * 37
    return (h % 256, (h // 7) % 256, (h // 13) % 256)


@pytest.fixture
def mini_root(tmp_path, real_csvs):
    """Trimmed copies of the real CSVs (3/2/2 classes x 4 rows) and generated 12x10 JPEGs:
    train and val images flat in images/, test images in images/<label>/."""
    (tmp_path / "images").mkdir()
    for split, n_classes in zip(SPLITS, (3, 2, 2)):
        lines = ["filename,label"]
        for label in list(real_csvs[split])[:n_classes]:
            folder = tmp_path / "images" / (label if split == "test" else "")
            folder.mkdir(exist_ok=True)
            for filename in real_csvs[split][label][:4]:
                Image.new("RGB", (12, 10), colour_of(label)).save(folder / filename, format="JPEG", quality=95)
                lines.append(f"{filename},{label}")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def csv_rows(path):
    return path.read_text().splitlines()


class TestRealCsvs:
    def test_splits_have_64_16_and_20_classes_of_600_images(self, real_csvs):
        assert [len(real_csvs[s]) for s in SPLITS] == [64, 16, 20]
        for split in SPLITS:
            assert {len(files) for files in real_csvs[split].values()} == {600}

    def test_splits_share_no_class_and_no_file(self, real_csvs):
        labels = [set(real_csvs[s]) for s in SPLITS]
        files = [{f for fs in real_csvs[s].values() for f in fs} for s in SPLITS]
        for a, b in ((0, 1), (0, 2), (1, 2)):
            assert not labels[a] & labels[b] and not files[a] & files[b]


class TestEndToEnd:
    def test_trimmed_csvs_load_as_rgb_sets_of_the_csv_classes(self, mini_root, real_csvs):
        splits = load_miniimagenet(mini_root, 16)
        for split, n_classes in zip(SPLITS, (3, 2, 2)):
            images = splits[split]
            assert images.class_names == sorted(list(real_csvs[split])[:n_classes])
            assert images.images.shape == (4 * n_classes, 3, 16, 16) and images.images.dtype == torch.uint8
            assert images.class_sizes().tolist() == [4] * n_classes
            assert images.name == f"miniimagenet/{split}"
            for c, label in enumerate(images.class_names):
                mean = images.images[images.indices_of(c)].float().mean(dim=(0, 2, 3))
                assert torch.allclose(mean, torch.tensor(colour_of(label), dtype=torch.float), atol=4)

    def test_extra_columns_blank_lines_and_a_byte_order_mark_are_accepted(self, mini_root):
        rows = csv_rows(mini_root / "val.csv")
        text = "\ufeff" + "\n".join([rows[0] + ",source"] + [r + ",imagenet" for r in rows[1:]]) + "\n\n\n"
        (mini_root / "val.csv").write_text(text, encoding="utf-8")
        assert load_miniimagenet(mini_root, 8).val.num_classes == 2


class TestBadCsv:
    @pytest.mark.parametrize("content,message", [
        ("", r"bad\.csv: empty file"),
        ("name,label\nx.jpg,n1\n", r"bad\.csv: row 1 \(header\) lacks column\(s\) filename"),
        ("filename\nx.jpg\n", r"bad\.csv: row 1 \(header\) lacks column\(s\) label"),
        ("filename,label\n", r"bad\.csv: no data rows"),
        ("filename,label\na.jpg,n1\nb.jpg,n1\na.jpg,n2\n",
         r"bad\.csv: row 4: duplicate filename 'a\.jpg' \(first in row 2\)"),
        ("filename,label\na.jpg,\n", r"bad\.csv: row 2 has a blank label"),
        ("filename,label\n  ,n1\n", r"bad\.csv: row 2 has a blank filename"),
        ("filename,label\na.jpg,n1,extra\n", r"bad\.csv: row 2 has 3 fields, the header has 2"),
        ("filename,label\n../../etc/passwd,n1\n", r"bad\.csv: row 2: filename and label must be plain names"),
        ('filename,label\na.jpg,n1\n"b.jpg\n', r"bad\.csv: row 3: not valid CSV"),
        ('filename,label\na.jpg,n1\n"b".jpg,n1\n', r"bad\.csv: row 3: not valid CSV"),
    ])
    def test_a_malformed_csv_is_an_error_naming_file_and_row(self, tmp_path, content, message):
        (tmp_path / "bad.csv").write_text(content)
        with pytest.raises(DataError, match=message):
            read_split_csv(tmp_path / "bad.csv")

    def test_a_csv_that_is_not_utf8_is_an_error_naming_it(self, tmp_path):
        (tmp_path / "bad.csv").write_bytes(b"filename,label\n\xff\xfe.jpg,n1\n")
        with pytest.raises(DataError, match=r"bad\.csv: not UTF-8"):
            read_split_csv(tmp_path / "bad.csv")


class TestBadRoot:
    def test_a_label_in_two_splits_is_an_error_naming_both_csvs(self, mini_root):
        train_row = csv_rows(mini_root / "train.csv")[1]
        label = train_row.split(",")[1]
        with open(mini_root / "val.csv", "a") as f:
            f.write(f"extra.jpg,{label}\n")
        with pytest.raises(DataError, match=rf"val\.csv: row 10: label '{label}' is also in train\.csv \(row 2\)"):
            load_miniimagenet(mini_root, 8)

    def test_a_file_in_two_splits_is_an_error(self, mini_root):
        filename = csv_rows(mini_root / "train.csv")[1].split(",")[0]
        label = csv_rows(mini_root / "test.csv")[1].split(",")[1]
        with open(mini_root / "test.csv", "a") as f:
            f.write(f"{filename},{label}\n")
        with pytest.raises(DataError, match=rf"test\.csv: row 10: filename '{filename}' is also in train\.csv"):
            load_miniimagenet(mini_root, 8)

    def test_a_referenced_image_that_does_not_exist_is_an_error_naming_csv_row_and_file(self, mini_root):
        filename = csv_rows(mini_root / "train.csv")[3].split(",")[0]
        (mini_root / "images" / filename).unlink()
        with pytest.raises(DataError, match=rf"train\.csv: row 4: image '{filename}' not found"):
            load_miniimagenet(mini_root, 8)

    @pytest.mark.parametrize("data,reason", [(b"", "empty file"),
                                             (b"\xff\xd8\xff\xe0 not really", "not a readable image")])
    def test_a_corrupt_or_empty_image_is_an_error_naming_it(self, mini_root, data, reason):
        filename, label = csv_rows(mini_root / "test.csv")[2].split(",")
        (mini_root / "images" / label / filename).write_bytes(data)
        with pytest.raises(DataError, match=rf"{label}/{filename}: {reason}"):
            load_miniimagenet(mini_root, 8)

    def test_a_missing_csv_is_an_error_naming_it(self, mini_root):
        (mini_root / "test.csv").unlink()
        with pytest.raises(DataError, match=r"missing test\.csv"):
            load_miniimagenet(mini_root, 8)

    def test_a_missing_images_folder_is_an_error_naming_it(self, tmp_path):
        for split in SPLITS:
            (tmp_path / f"{split}.csv").write_text("filename,label\na.jpg,n1\n")
        with pytest.raises(DataError, match=r"images: no such folder"):
            load_miniimagenet(tmp_path, 8)

    def test_a_root_that_is_not_a_folder_is_an_error_naming_it(self, tmp_path):
        with pytest.raises(DataError, match=r"absent: not a folder"):
            load_miniimagenet(tmp_path / "absent", 8)
