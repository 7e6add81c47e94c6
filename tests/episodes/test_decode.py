"""episodes.decode: image decoding, safe zip reading and symlink-safe folder walking."""
import io
import os
import zipfile

import pytest
import torch
from PIL import Image

from episodes.decode import decode_image, decode_images, list_image_files, read_zip_members
from episodes.errors import DataError


def png_bytes(size=(10, 10), color=0, mode="L", fmt="PNG"):
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


class TestDecodeImage:
    def test_grayscale_png_becomes_uint8_channels_by_size_by_size(self):
        x = decode_image(png_bytes((30, 20), 200), "a.png", 16, 1)
        assert x.dtype == torch.uint8 and x.shape == (1, 16, 16)
        assert (x == 200).all()

    def test_rgb_jpeg_keeps_its_colour_channels(self):
        x = decode_image(png_bytes((12, 12), (255, 0, 0), "RGB", "JPEG"), "a.jpg", 8, 3)
        assert x.shape == (3, 8, 8)
        assert x[0].float().mean() > 240 and x[1].float().mean() < 15 and x[2].float().mean() < 15

    def test_grayscale_image_read_as_rgb_repeats_its_value(self):
        x = decode_image(png_bytes((8, 8), 77), "a.png", 8, 3)
        assert (x == 77).all() and x.shape == (3, 8, 8)

    def test_one_bit_png_maps_to_0_and_255(self):
        x = decode_image(png_bytes((8, 8), 1, mode="1"), "a.png", 8, 1)
        assert (x == 255).all()

    def test_zero_byte_data_is_an_error_naming_the_source(self):
        with pytest.raises(DataError, match=r"set\.zip:a/b\.png: empty file"):
            decode_image(b"", "set.zip:a/b.png", 8, 1)

    def test_truncated_png_is_an_error_naming_the_source(self):
        data = png_bytes((64, 64), 10)
        with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
            decode_image(data[: len(data) // 2], "broken.png", 8, 1)

    def test_bytes_that_are_not_an_image_are_an_error_naming_the_source(self):
        with pytest.raises(DataError, match=r"notes\.png: not a readable image"):
            decode_image(b"hello, not a png", "notes.png", 8, 1)


class TestDecodeImages:
    def test_many_images_keep_their_order_in_the_thread_pool(self):
        items = [(f"{i}.png", png_bytes((9, 9), i)) for i in range(100)]
        x = decode_images(items, 4, 1, max_workers=2)
        assert x.shape == (100, 1, 4, 4)
        assert x[:, 0, 0, 0].tolist() == list(range(100))

    def test_paths_are_read_by_the_workers(self, tmp_path):
        for i in range(3):
            (tmp_path / f"{i}.png").write_bytes(png_bytes((5, 5), 10 * i))
        x = decode_images([(str(tmp_path / f"{i}.png"), tmp_path / f"{i}.png") for i in range(3)], 5, 1)
        assert x[:, 0, 0, 0].tolist() == [0, 10, 20]

    def test_a_missing_path_is_an_error_naming_it(self, tmp_path):
        with pytest.raises(DataError, match="gone.png"):
            decode_images([("gone", tmp_path / "gone.png")], 5, 1)

    def test_the_first_bad_image_in_a_large_batch_is_reported(self):
        items = [(f"{i}.png", png_bytes((4, 4), 1)) for i in range(200)]
        items[150] = ("bad150.png", b"garbage")
        with pytest.raises(DataError, match="bad150.png"):
            decode_images(items, 4, 1, max_workers=2)

    def test_no_items_give_an_empty_batch(self):
        assert decode_images([], 7, 3).shape == (0, 3, 7, 7)


class TestReadZipMembers:
    def test_members_with_the_suffixes_come_back_sorted_with_their_bytes(self, tmp_path):
        z = write_zip(tmp_path / "d.zip", [("s/b.PNG", b"2"), ("s/a.png", b"1"), ("s/notes.txt", b"x")])
        assert read_zip_members(z, (".png",)) == [("s/a.png", b"1"), ("s/b.PNG", b"2")]

    def test_macos_metadata_members_are_skipped(self, tmp_path):
        z = write_zip(tmp_path / "d.zip", [("s/a.png", b"1"), ("__MACOSX/s/._a.png", b"meta"), ("s/._b.png", b"m")])
        assert [n for n, _ in read_zip_members(z)] == ["s/a.png"]

    def test_zip_with_parent_dir_member_is_refused(self, tmp_path):
        z = write_zip(tmp_path / "evil.zip", [("s/a.png", b"1"), ("s/../../escape.png", b"2")])
        with pytest.raises(DataError, match=r"evil\.zip:s/\.\./\.\./escape\.png: unsafe member path"):
            read_zip_members(z)

    def test_zip_with_absolute_member_path_is_refused(self, tmp_path):
        z = write_zip(tmp_path / "evil.zip", [("/etc/a.png", b"1")])
        with pytest.raises(DataError, match=r"evil\.zip:/etc/a\.png: unsafe member path"):
            read_zip_members(z)

    def test_zip_with_backslash_parent_member_is_refused(self, tmp_path):
        z = write_zip(tmp_path / "evil.zip", [("s\\..\\..\\a.png", b"1")])
        with pytest.raises(DataError, match="unsafe member path"):
            read_zip_members(z)

    def test_zip_bomb_by_compression_ratio_is_refused_before_extracting(self, tmp_path):
        z = write_zip(tmp_path / "bomb.zip", [("s/zeros.png", b"\0" * (8 << 20))], zipfile.ZIP_DEFLATED)
        with pytest.raises(DataError, match=r"bomb\.zip:s/zeros\.png: compression ratio .* zip bomb"):
            read_zip_members(z)

    def test_zip_bomb_by_total_declared_size_is_refused(self, tmp_path):
        z = write_zip(tmp_path / "big.zip", [(f"s/{i}.png", os.urandom(2000)) for i in range(3)])
        with pytest.raises(DataError, match=r"big\.zip: members declare .* zip bomb"):
            read_zip_members(z, max_total_bytes=5000)

    def test_a_member_declaring_more_than_2_gib_is_refused_by_the_default_limit(self, tmp_path):
        z = write_zip(tmp_path / "huge.zip", [("s/a.png", b"x" * 100)])
        raw = bytearray(z.read_bytes())
        entry = raw.rfind(b"PK\x01\x02")  # central directory: compressed size @20, uncompressed @24
        raw[entry + 20:entry + 28] = (0x90000000).to_bytes(4, "little") * 2  # claims 2.25 GiB
        z.write_bytes(bytes(raw))
        with pytest.raises(DataError, match=r"huge\.zip: members declare 2\.25 GiB .* more than the 2\.00 GiB"):
            read_zip_members(z)

    def test_a_small_highly_compressible_member_is_not_a_bomb(self, tmp_path):
        z = write_zip(tmp_path / "ok.zip", [("s/blank.bmp", b"\0" * 50_000)], zipfile.ZIP_DEFLATED)
        assert read_zip_members(z)[0][1] == b"\0" * 50_000

    def test_zip_with_a_duplicated_member_is_refused(self, tmp_path):
        with pytest.warns(UserWarning):
            z = write_zip(tmp_path / "dup.zip", [("s/a.png", b"1"), ("s/a.png", b"2")])
        with pytest.raises(DataError, match=r"dup\.zip:s/a\.png: member stored twice"):
            read_zip_members(z)

    def test_a_file_that_is_not_a_zip_is_an_error_naming_it(self, tmp_path):
        (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
        with pytest.raises(DataError, match=r"fake\.zip: not a readable zip file"):
            read_zip_members(tmp_path / "fake.zip")

    def test_a_corrupted_member_is_an_error_naming_zip_and_member(self, tmp_path):
        z = write_zip(tmp_path / "crc.zip", [("s/a.png", b"A" * 100)])
        raw = bytearray(z.read_bytes())
        raw[raw.index(b"A" * 100) + 50] = ord("B")  # stored data no longer matches its CRC
        z.write_bytes(bytes(raw))
        with pytest.raises(DataError, match=r"crc\.zip:s/a\.png: cannot extract member"):
            read_zip_members(z)


class TestListImageFiles:
    def test_images_are_found_recursively_sorted_and_case_insensitively(self, tmp_path):
        (tmp_path / "sub").mkdir()
        for name in ["b.JPG", "a.png", "sub/c.webp", "notes.txt", ".hidden.png"]:
            (tmp_path / name).write_bytes(b"x")
        assert [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)] == \
            ["a.png", "b.JPG", "sub/c.webp"]

    def test_symlinked_folders_are_followed(self, tmp_path):
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "a.png").write_bytes(b"x")
        (tmp_path / "cls").mkdir()
        (tmp_path / "cls" / "link").symlink_to(tmp_path / "real")
        assert list_image_files(tmp_path / "cls") == [tmp_path / "cls" / "link" / "a.png"]

    def test_symlink_loop_to_a_parent_folder_is_an_error_naming_the_link(self, tmp_path):
        cls = tmp_path / "cls"
        cls.mkdir()
        (cls / "a.png").write_bytes(b"x")
        (cls / "loop").symlink_to(tmp_path)
        with pytest.raises(DataError, match=r"cls/loop: symlink loop"):
            list_image_files(cls)

    def test_symlink_to_itself_is_an_error_naming_it(self, tmp_path):
        (tmp_path / "self").symlink_to(tmp_path / "self")
        with pytest.raises(DataError, match=r"self: "):
            list_image_files(tmp_path)

    def test_dangling_symlink_is_an_error_naming_it(self, tmp_path):
        (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
        with pytest.raises(DataError, match=r"gone\.png: broken symlink"):
            list_image_files(tmp_path)

    def test_a_missing_folder_is_an_error_naming_it(self, tmp_path):
        with pytest.raises(DataError, match="absent"):
            list_image_files(tmp_path / "absent")
