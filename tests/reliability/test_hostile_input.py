"""Hostile and corrupt input through the command line: every case must end with exit code 2,
exactly one line (``Error: <file>: <why>``) naming the file at fault, no traceback, no side
effect of the input (no code run, nothing extracted) and no MLflow store created.

The unit-level checks live in tests/episodes (decode, miniimagenet, folder, omniglot) and
tests/fewshot (config, checkpoint); here each reaches the user through ``fewshot train``,
``fewshot eval`` or ``fewshot data``.
"""
import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from episodes.decode import read_zip_members
from episodes.errors import DataError
from fewshot.cli import cli

TINY = ["--backbone", "test_vig", "--way", "2", "--shot", "1", "--query", "1", "--episodes", "2",
        "--eval-episodes", "3", "--val-episodes", "2", "--val-every", "1", "--no-progress", "--threads", "1"]
GLYPHS = ["--dataset", "glyphs", "--way", "3", "--query", "2"]


def image_bytes(fmt="PNG", size=(40, 40), seed=0):
    img = Image.new("RGB", size, ((37 * seed) % 256, (91 * seed) % 256, 128))
    for i in range(size[0]):
        img.putpixel((i, (i * (seed + 1)) % size[1]), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def folder_tree(root: Path, classes=4, per_class=3) -> Path:
    """root/<class>/<i>.png: a valid class-per-folder dataset."""
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            (root / f"class{c}" / f"{i}.png").write_bytes(image_bytes(seed=10 * c + i))
    return root


def mini_root(root: Path) -> Path:
    """A valid miniImageNet layout: 3/2/2 classes x 3 JPEGs, train.csv val.csv test.csv, images/."""
    (root / "images").mkdir(parents=True)
    for s, (split, n_classes) in enumerate((("train", 3), ("val", 2), ("test", 2))):
        lines = ["filename,label"]
        for c in range(n_classes):
            label = f"n0{s}{c:06d}"
            for i in range(3):
                name = f"{label}{i:08d}.jpg"
                (root / "images" / name).write_bytes(image_bytes("JPEG", (12, 10), seed=31 * s + 7 * c + i))
                lines.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def omniglot_zips(root: Path, extra_members=()) -> Path:
    """images_background_small1.zip (+ ``extra_members``) and images_background_small2.zip."""
    root.mkdir(parents=True, exist_ok=True)
    for k, set_name in enumerate(("images_background_small1", "images_background_small2")):
        with zipfile.ZipFile(root / f"{set_name}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for c in range(1, 5):
                for d in range(3):
                    zf.writestr(f"{set_name}/Alpha{k}/character{c:02d}/{c:02d}_{d:02d}.png", image_bytes(seed=c + d))
            if k == 0:
                for name, data in extra_members:
                    zf.writestr(name, data)
    return root


def claim_huge_size(zip_path: Path, member: str) -> None:
    """Rewrite the central-directory entry of ``member`` to declare 2.25 GiB, compressed and
    uncompressed (ratio 1, so only the total size can catch it); its data stays small."""
    raw = bytearray(zip_path.read_bytes())
    entry = raw.find(b"PK\x01\x02")  # central directory entries: name length @28, name @46
    while entry >= 0:
        name_len = int.from_bytes(raw[entry + 28:entry + 30], "little")
        if raw[entry + 46:entry + 46 + name_len].decode() == member:
            raw[entry + 20:entry + 28] = (0x90000000).to_bytes(4, "little") * 2  # compressed, uncompressed size
            zip_path.write_bytes(bytes(raw))
            return
        entry = raw.find(b"PK\x01\x02", entry + 4)
    raise AssertionError(f"{member} not in {zip_path}")


class Evil:
    """A pickle that would run code when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny trained runs on glyphs (no tracking): test_vig and conv4."""
    root = tmp_path_factory.mktemp("trained")
    runs = {}
    for backbone in ("test_vig", "conv4"):
        run_dir = root / backbone
        r = CliRunner().invoke(cli, ["train", *TINY, *GLYPHS, "--backbone", backbone, "--run-dir", str(run_dir),
                                     "--no-track"])
        assert r.exit_code == 0, r.output
        runs[backbone] = run_dir
    return runs


# Each case: (id, build(tmp_path, trained) -> (args, text the one line must hold), side-effect file or None).
# The store is tmp_path/"mlruns"; "{store}" in args is replaced with its URI.

def truncated_png(tmp, _):
    root = folder_tree(tmp / "data")
    bad = root / "class2" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return ["train", *TINY, "--dataset", "folder", "--data-root", str(root)], f"{bad}: not a readable image"


def truncated_jpeg(tmp, _):
    root = folder_tree(tmp / "data")
    bad = root / "class1" / "0.jpg"
    data = image_bytes("JPEG", (64, 64), seed=5)
    bad.write_bytes(data[:len(data) // 3])
    return ["train", *TINY, "--dataset", "folder", "--data-root", str(root)], f"{bad}: not a readable image"


def empty_image(tmp, _):
    root = folder_tree(tmp / "data")
    (root / "class3" / "2.png").write_bytes(b"")
    return ["train", *TINY, "--dataset", "folder", "--data-root", str(root)], f"{root / 'class3' / '2.png'}: empty file"


def png_claiming_a_huge_size(tmp, _):
    """A valid PNG whose header (CRC fixed) declares 10000 x 10000 pixels (PIL itself would only warn): refused before decoding."""
    import zlib
    root = folder_tree(tmp / "data")
    bad = root / "class0" / "0.png"
    data = bytearray(bad.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = (10000).to_bytes(4, "big") * 2
    data[ihdr + 17:ihdr + 21] = zlib.crc32(bytes(data[ihdr:ihdr + 17])).to_bytes(4, "big")
    bad.write_bytes(bytes(data))
    return (["train", *TINY, "--dataset", "folder", "--data-root", str(root)],
            f"{bad}: image declares 10000x10000 pixels, more than the {1 << 26} allowed")


def text_named_png(tmp, _):
    root = folder_tree(tmp / "data")
    (root / "class0" / "notes.png").write_text("not an image at all\n")
    return (["data", "describe", "folder", "--data-root", str(root)],
            f"{root / 'class0' / 'notes.png'}: not a readable image")


def zip_traversal(tmp, _):
    root = omniglot_zips(tmp / "omni", [("../x.png", image_bytes())])
    return (["train", *TINY, "--dataset", "omniglot", "--data-root", str(root)],
            f"{root / 'images_background_small1.zip'}:../x.png: unsafe member path")


def zip_nested_traversal(tmp, _):
    member = "images_background_small1/Alpha0/../../../../x.png"
    root = omniglot_zips(tmp / "omni", [(member, image_bytes())])
    return (["data", "describe", "omniglot", "--data-root", str(root)],
            f"{root / 'images_background_small1.zip'}:{member}: unsafe member path")


def zip_absolute(tmp, _):
    root = omniglot_zips(tmp / "omni", [("/tmp/x.png", image_bytes())])
    return (["train", *TINY, "--dataset", "omniglot", "--data-root", str(root)],
            f"{root / 'images_background_small1.zip'}:/tmp/x.png: unsafe member path")


def zip_bomb_ratio(tmp, _):
    member = "images_background_small1/Alpha0/character01/zz.png"
    root = omniglot_zips(tmp / "omni", [(member, b"\0" * (4 << 20))])  # 4 MiB of zeros: ~4 kB deflated
    return (["train", *TINY, "--dataset", "omniglot", "--data-root", str(root)],
            f"{root / 'images_background_small1.zip'}:{member}: compression ratio")


def zip_bomb_declared_size(tmp, _):
    member = "images_background_small1/Alpha0/character01/zz.png"
    root = omniglot_zips(tmp / "omni", [(member, image_bytes())])
    claim_huge_size(root / "images_background_small1.zip", member)
    return (["train", *TINY, "--dataset", "omniglot", "--data-root", str(root)],
            f"{root / 'images_background_small1.zip'}: members declare 2.25 GiB uncompressed")


def zip_truncated(tmp, _):
    root = omniglot_zips(tmp / "omni")
    z = root / "images_background_small2.zip"
    z.write_bytes(z.read_bytes()[:-100])  # central directory cut off
    return (["train", *TINY, "--dataset", "omniglot", "--data-root", str(root)], f"{z}: not a readable zip file")


def symlink_loop_in_class(tmp, _):
    root = folder_tree(tmp / "data")
    (root / "class1" / "again").symlink_to(root)
    return ["train", *TINY, "--dataset", "folder", "--data-root", str(root)], f"{root / 'class1' / 'again'}: symlink loop"


def symlink_to_itself(tmp, _):
    root = folder_tree(tmp / "data")
    (root / "class1" / "self").symlink_to(root / "class1" / "self")
    return ["data", "describe", "folder", "--data-root", str(root)], f"{root / 'class1' / 'self'}: "


def class_folder_linking_to_itself(tmp, _):
    root = folder_tree(tmp / "data")
    (root / "loop").symlink_to(root / "loop")
    return ["train", *TINY, "--dataset", "folder", "--data-root", str(root)], f"{root / 'loop'}: broken or looping symlink"


def csv_missing_column(tmp, _):
    root = mini_root(tmp / "mini")
    csv = root / "val.csv"
    csv.write_text(csv.read_text().replace("filename,label", "file,label", 1))
    return (["train", *TINY, "--dataset", "miniimagenet", "--data-root", str(root), "--img-size", "16"],
            f"{csv}: row 1 (header) lacks column(s) filename")


def csv_duplicate_filename(tmp, _):
    root = mini_root(tmp / "mini")
    csv = root / "train.csv"
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join(rows + [rows[2]]) + "\n")
    return (["train", *TINY, "--dataset", "miniimagenet", "--data-root", str(root), "--img-size", "16"],
            f"{csv}: row {len(rows) + 1}: duplicate filename")


def csv_class_of_another_split(tmp, _):
    root = mini_root(tmp / "mini")
    label = (root / "train.csv").read_text().splitlines()[1].split(",")[1]
    with open(root / "test.csv", "a") as f:
        f.write(f"{(root / 'test.csv').read_text().splitlines()[1].split(',')[0]}x,{label}\n")
    return (["data", "describe", "miniimagenet", "--data-root", str(root), "--img-size", "16"],
            f"{root / 'test.csv'}: row 8: label {label!r} is also in train.csv")


def csv_class_without_images(tmp, _):
    root = mini_root(tmp / "mini")
    with open(root / "val.csv", "a") as f:
        f.write("ghost.jpg,n09999999\n")
    return (["train", *TINY, "--dataset", "miniimagenet", "--data-root", str(root), "--img-size", "16"],
            f"{root / 'val.csv'}: row 8: image 'ghost.jpg' not found")


def csv_path_in_label(tmp, _):
    root = mini_root(tmp / "mini")
    with open(root / "train.csv", "a") as f:
        f.write("a.jpg,../../etc\n")
    return (["train", *TINY, "--dataset", "miniimagenet", "--data-root", str(root), "--img-size", "16"],
            f"{root / 'train.csv'}: row 11: filename and label must be plain names")


def csv_binary(tmp, _):
    root = mini_root(tmp / "mini")
    (root / "test.csv").write_bytes(b"filename,label\n\x89PNG\r\n\x1a\n\xff\xfe,n1\n")
    return (["train", *TINY, "--dataset", "miniimagenet", "--data-root", str(root), "--img-size", "16"],
            f"{root / 'test.csv'}: not UTF-8")


def bank_of_other_data(tmp, trained):
    bank = tmp / "bank.pt"
    r = CliRunner().invoke(cli, ["data", "bank", "glyphs", "--split", "val", "--way", "3", "--episodes", "4",
                                 "--out", str(bank)])
    assert r.exit_code == 0, r.output
    return (["eval", "--run-dir", str(trained["test_vig"]), "--bank", str(bank), "--no-progress"],
            f"{bank}: episode bank was drawn from data with fingerprint")


def bank_not_a_bank(tmp, trained):
    bank = tmp / "bank.pt"
    torch.save({"model": torch.zeros(3)}, bank)
    return (["eval", "--run-dir", str(trained["test_vig"]), "--bank", str(bank), "--no-progress"],
            f"{bank}: not a fewshot episode bank")


def checkpoint_of_other_architecture(tmp, trained):
    run = tmp / "run"
    run.mkdir()
    for f in ("config.yaml", "best.pt"):
        (run / f).write_bytes((trained["test_vig"] / f).read_bytes())
    (run / "best.pt").write_bytes((trained["conv4"] / "best.pt").read_bytes())  # conv4 weights, test_vig config
    return (["eval", "--run-dir", str(run), "--no-progress"],
            f"{run / 'best.pt'} does not fit backbone 'test_vig'")


def resume_from_other_architecture(tmp, trained):
    run = tmp / "run"
    run.mkdir()
    (run / "last.pt").write_bytes((trained["conv4"] / "last.pt").read_bytes())
    return (["train", *TINY, *GLYPHS, "--run-dir", str(run), "--resume"],
            f"{run / 'last.pt'} was written by a run with other settings")


def truncated_checkpoint(tmp, trained):
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes((trained["test_vig"] / "config.yaml").read_bytes())
    data = (trained["test_vig"] / "best.pt").read_bytes()
    (run / "best.pt").write_bytes(data[:len(data) // 2])
    return (["eval", "--run-dir", str(run), "--no-progress"], f"{run / 'best.pt'}: not a loadable fewshot checkpoint")


def pickled_code_in_checkpoint(tmp, trained):
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes((trained["test_vig"] / "config.yaml").read_bytes())
    torch.save({"model": Evil(tmp / "pwned")}, run / "best.pt")
    return (["eval", "--run-dir", str(run), "--no-progress"], f"{run / 'best.pt'}: not a loadable fewshot checkpoint")


def pickled_code_in_bank(tmp, trained):
    bank = tmp / "bank.pt"
    with open(bank, "wb") as f:
        pickle.dump(Evil(tmp / "pwned"), f)
    return (["eval", "--run-dir", str(trained["test_vig"]), "--bank", str(bank), "--no-progress"],
            f"{bank}: not a fewshot episode bank")


def yaml_unknown_keys(tmp, _):
    cfg = tmp / "run.yaml"
    cfg.write_text("way: 3\nepochs: 5\nlearning_rate: 0.1\nshto: 2\n")
    return (["train", "--config", str(cfg), *TINY],
            f"{cfg}: unknown configuration keys: epochs, learning_rate, shto (did you mean shot?)")


def yaml_python_tag(tmp, _):
    cfg = tmp / "run.yaml"
    cfg.write_text(f"way: 3\nseed: !!python/object/apply:os.system ['touch {tmp / 'pwned'}']\n")
    return ["train", "--config", str(cfg), *TINY], f"{cfg}: not valid (safe) YAML"


def yaml_python_name_tag(tmp, trained):
    cfg = tmp / "run.yaml"
    cfg.write_text("!!python/name:os.system\n")
    return ["eval", "--run-dir", str(trained["test_vig"]), "--config", str(cfg)], f"{cfg}: not valid (safe) YAML"


def yaml_not_a_mapping(tmp, _):
    cfg = tmp / "run.yaml"
    cfg.write_text("- way\n- 3\n")
    return ["train", "--config", str(cfg), *TINY], f"{cfg}: a config file must be a mapping"


def yaml_bad_value(tmp, _):
    cfg = tmp / "run.yaml"
    cfg.write_text("way: -4\n")
    return ["train", "--config", str(cfg), *TINY], f"{cfg}: way must be a positive integer"


CASES = [truncated_png, truncated_jpeg, empty_image, png_claiming_a_huge_size, text_named_png, zip_traversal, zip_nested_traversal,
         zip_absolute, zip_bomb_ratio, zip_bomb_declared_size, zip_truncated, symlink_loop_in_class,
         symlink_to_itself, class_folder_linking_to_itself, csv_missing_column, csv_duplicate_filename,
         csv_class_of_another_split, csv_class_without_images, csv_path_in_label, csv_binary, bank_of_other_data,
         bank_not_a_bank, checkpoint_of_other_architecture, resume_from_other_architecture, truncated_checkpoint,
         pickled_code_in_checkpoint, pickled_code_in_bank, yaml_unknown_keys, yaml_python_tag, yaml_python_name_tag,
         yaml_not_a_mapping, yaml_bad_value]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_hostile_input_is_refused_with_one_line_naming_the_file(case, tmp_path, trained, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default ./mlruns store would appear here
    args, expected = case(tmp_path, trained)
    store = tmp_path / "mlruns"
    if args[0] in ("train", "eval"):
        args = [*args, "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}"]
    monkeypatch.delenv("FEWSHOT_DEBUG", raising=False)
    r = CliRunner().invoke(cli, args)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.output  # click's exit, no crash
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert expected in lines[0], lines[0]
    assert not store.exists(), "a refused input reached the tracking store"
    assert not (tmp_path / "pwned").exists(), "code in the input was run"
    extracted = [p for p in tmp_path.rglob("x.png")]
    assert not extracted, f"a zip member escaped: {extracted}"


class TestDamagedZipHeaders:
    """Found by test_fuzz.py: damaged central-directory fields that used to escape as IndexError,
    NotImplementedError or UnicodeDecodeError instead of a DataError naming the zip."""

    @staticmethod
    def patched_zip(tmp_path, offset, value, name=b"s/a.png"):
        path = tmp_path / "damaged.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(name.decode(), image_bytes())
        raw = bytearray(path.read_bytes())
        entry = raw.find(b"PK\x01\x02")  # central directory: version needed @6, flags @8, name @46
        raw[entry + offset:entry + offset + len(value)] = value
        path.write_bytes(bytes(raw))
        return path

    def test_a_member_with_an_empty_name(self, tmp_path):
        path = tmp_path / "damaged.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(zipfile.ZipInfo(""), b"x")
        with pytest.raises(DataError, match=rf"^{path}: a member has an empty name"):
            read_zip_members(path)

    def test_an_unsupported_zip_version(self, tmp_path):
        path = self.patched_zip(tmp_path, 6, (255).to_bytes(2, "little"))
        with pytest.raises(DataError, match=rf"^{path}: not a readable zip file \(NotImplementedError"):
            read_zip_members(path)

    def test_a_name_flagged_utf8_that_is_not(self, tmp_path):
        path = self.patched_zip(tmp_path, 46, b"\xff")
        raw = bytearray(path.read_bytes())
        entry = raw.find(b"PK\x01\x02")
        raw[entry + 8:entry + 10] = (0x800).to_bytes(2, "little")  # general purpose flag: UTF-8 names
        path.write_bytes(bytes(raw))
        with pytest.raises(DataError, match=rf"^{path}: not a readable zip file \(UnicodeDecodeError"):
            read_zip_members(path)
