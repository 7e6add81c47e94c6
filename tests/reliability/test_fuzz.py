"""Bounded fuzzing of the image, zip and CSV readers on mutated real files from ../shared/data.

Each target runs for ``FEWSHOT_FUZZ_SECONDS`` seconds (default 3; CI keeps the default) over
inputs mutated with a seeded RNG (``FEWSHOT_FUZZ_SEED``, default 0), so a failure names the
seed and iteration that reproduce it. The only acceptable outcomes are a well-formed result or
a :class:`DataError` whose message starts with the name of the file at fault.
"""
import io
import os
import random
import time
import zipfile
import zlib

import pytest
import torch

from episodes.decode import decode_image, read_zip_members
from episodes.errors import DataError
from episodes.miniimagenet import read_split_csv

SECONDS = float(os.environ.get("FEWSHOT_FUZZ_SECONDS", "3"))
SEED = int(os.environ.get("FEWSHOT_FUZZ_SEED", "0"))
MIN_ITERATIONS = 30  # whatever the machine's speed, a fuzz run that tries fewer inputs has not run


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-4 random byte-level edits: flips, overwrites with interesting values, truncation,
    insertion, deletion, duplication of a chunk."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        i = rng.randrange(len(buf) + 1) if buf else 0
        if op == 0 and buf:
            buf[min(i, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(i, len(buf) - 1)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif op == 2:
            del buf[i:]
        elif op == 3:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4:
            del buf[i:i + rng.randint(1, 64)]
        elif op == 5 and buf:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j:j + rng.randint(1, 256)]
        elif op == 6 and len(buf) >= 4:  # a 32-bit field set to a huge or zero value (sizes, lengths)
            j = rng.randrange(len(buf) - 3)
            buf[j:j + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
    return bytes(buf)


def mutate_png(data: bytes, rng: random.Random) -> bytes:
    """Half the time byte-level edits (mostly caught by PNG's chunk CRCs); otherwise edits inside
    one chunk (header, palette, compressed pixels...) with its CRC fixed, so the decoder itself
    meets the damage."""
    if rng.random() < 0.5:
        return mutate(data, rng)
    chunks, pos = [], 8  # after the signature: [length][type][data][crc] ...
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        chunks.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    k = rng.randrange(len(chunks))
    kind, body = chunks[k]
    chunks[k] = (kind, mutate(body, rng) if body else bytes(rng.randrange(256) for _ in range(4)))
    out = bytearray(data[:8])
    for kind, body in chunks:
        out += len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    return bytes(out)


def mutate_csv(text: str, rng: random.Random) -> bytes:
    """Line- and field-level edits of a CSV (then maybe byte-level ones)."""
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        i = rng.randrange(len(lines)) if lines else 0
        if op == 0 and lines:
            del lines[i]
        elif op == 1 and lines:
            lines.insert(rng.randrange(len(lines) + 1), lines[i])  # duplicate row (or header)
        elif op == 2 and lines:
            fields = lines[i].split(",")
            del fields[rng.randrange(len(fields))]
            lines[i] = ",".join(fields)
        elif op == 3 and lines:
            pos = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + rng.choice([",", '"', "\r", "\x00", "/", "..", " ", "\ufeff", "é"]) + lines[i][pos:]
        elif op == 4 and lines:
            lines[i] = ""
        elif op == 5 and len(lines) > 1:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    return mutate(data, rng) if rng.random() < 0.3 else data


def fuzz(target, seeds_data, mutator, check):
    """Run ``check(target(mutated))`` until the time budget is spent; return the iteration count."""
    rng = random.Random(SEED)
    deadline, n = time.perf_counter() + SECONDS, 0
    while n < MIN_ITERATIONS or time.perf_counter() < deadline:
        original = rng.choice(seeds_data)
        data = mutator(original, rng)
        try:
            out = target(data)
        except DataError as e:
            check(None, e, data)
        except Exception as e:  # anything else is a bug: report how to replay it
            raise AssertionError(f"iteration {n} (FEWSHOT_FUZZ_SEED={SEED}): {e.__class__.__name__}: {e}") from e
        else:
            check(out, None, data)
        n += 1
    return n


@pytest.fixture(scope="module")
def omniglot_pngs(shared_data):
    """40 real Omniglot drawings (PNG bytes) from the two minimal zips."""
    pngs = []
    for z in sorted((shared_data / "omniglot").glob("images_background_small*.zip")):
        with zipfile.ZipFile(z) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".png"))
            pngs += [zf.read(n) for n in names[::max(1, len(names) // 20)][:20]]
    assert len(pngs) == 40
    return pngs


def test_fuzzed_omniglot_pngs_decode_or_fail_with_the_file_named(omniglot_pngs):
    source = "set.zip:Alphabet/character01/x.png"

    def check(out, err, data):
        if err is not None:
            assert str(err).startswith(f"{source}: "), str(err)
        else:
            assert out.dtype == torch.uint8 and out.shape == (1, 28, 28)

    n = fuzz(lambda data: decode_image(data, source, 28, 1), omniglot_pngs, mutate_png, check)
    print(f"\nfuzzed PNGs: {n}")


def test_fuzzed_zips_of_real_drawings_are_read_or_refused_with_the_zip_named(omniglot_pngs, tmp_path):
    archives = []
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression) as zf:
            for i, png in enumerate(omniglot_pngs[:8]):
                zf.writestr(f"s/Alpha/character0{i % 2}/{i}.png", png)
        archives.append(buf.getvalue())
    path = tmp_path / "fuzz.zip"

    def read(data):
        path.write_bytes(data)
        return read_zip_members(path)

    def check(out, err, data):
        if err is not None:
            assert str(err).startswith(str(path)), str(err)
        else:
            assert all(isinstance(name, str) and isinstance(member, bytes) for name, member in out)

    n = fuzz(read, archives, mutate, check)
    print(f"\nfuzzed zips: {n}")


def test_fuzzed_real_split_csvs_parse_or_fail_with_the_file_named(shared_data, tmp_path):
    originals = []
    for split in ("train", "val", "test"):
        lines = (shared_data / "miniimagenet_splits" / f"{split}.csv").read_text().splitlines()
        originals.append("\n".join(lines[:1] + lines[1::300][:40]))  # header + 40 rows over all classes
    path = tmp_path / "split.csv"

    def read(data):
        path.write_bytes(data)
        return read_split_csv(path)

    def check(out, err, data):
        if err is not None:
            assert str(err).startswith(f"{path}: "), str(err)
        else:
            files = [f for fs in out.values() for f in fs]
            assert files and len(files) == len(set(files))  # rows, no duplicate file names
            assert all(label and "/" not in label and f and "/" not in f for label, fs in out.items() for f in fs)

    n = fuzz(read, originals, mutate_csv, check)
    print(f"\nfuzzed CSVs: {n}")
