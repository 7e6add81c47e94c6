"""``fewshot predict`` in-process (click's CliRunner) on folders of PNGs drawn from the glyphs test split: the
lines, JSON and CSV carry FewShotClassifier's probabilities, and every bad input ends in one line naming the path."""
import csv
import io
import json
import struct
import sys
import types
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from episodes import load_splits
from fewshot import Config, FewShotClassifier
from fewshot.checkpoint import save_atomic
from fewshot.cli import cli
from fewshot.model import build_model

CLASSES = {"alpha": 0, "beta": 1, "gamma": 2}      # folder name -> glyphs test class
SUPPORT_SHOTS = {"alpha": 2, "beta": 1, "gamma": 1}
QUERIES_PER_CLASS = 2


def write_run(folder, seed=0, **settings):
    """A run folder as ``fewshot train`` leaves it (config.yaml, best.pt), with seeded untrained weights."""
    config = Config(**{"dataset": "glyphs", "backbone": "test_vig", "matcher": "prototype", "run_dir": str(folder),
                       "track": False, **settings})
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config, 28, 1)
    save_atomic({"model": model.state_dict()}, folder / "best.pt")
    return folder


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width x height`` 8-bit grayscale pixels, with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs") / "run", seed=1)


@pytest.fixture(scope="module")
def glyph_folders(tmp_path_factory):
    """``(support, queries)``: support/<class>/*.png (2, 1, 1 images) and queries/<class>_<i>.png, as
    white-background PNGs at 56 px (what a user scans), cut from the glyphs test split."""
    test = load_splits("glyphs", None, 28).test
    root = tmp_path_factory.mktemp("images")
    support, queries = root / "support", root / "queries"
    queries.mkdir()
    for name, cls in CLASSES.items():
        (support / name).mkdir(parents=True)
        idx = test.indices_of(cls).tolist()
        for k, i in enumerate(idx[:SUPPORT_SHOTS[name] + QUERIES_PER_CLASS]):
            img = Image.fromarray(255 - test.images[i, 0].numpy()).resize((56, 56), Image.Resampling.BILINEAR)
            if k < SUPPORT_SHOTS[name]:
                img.save(support / name / f"{k}.png")
            else:
                img.convert("RGB").save(queries / f"{name}_{k}.png")
    return support, queries


def invoke(*args):
    return CliRunner().invoke(cli, ["predict", *map(str, args)])


def reference(run_dir, support, query_files, **kw):
    """FewShotClassifier's probabilities for the same folders: ``(classes, proba [Q, way])``."""
    files = sorted(p for p in support.rglob("*.png"))
    clf = FewShotClassifier.from_run(run_dir, **kw).fit(files, [p.parent.name for p in files])
    return clf.classes_.tolist(), clf.predict_proba(query_files)


class TestOutput:
    def test_one_line_per_query_with_class_score_and_runner_up_then_the_counts(self, run_dir, glyph_folders):
        support, queries = glyph_folders
        r = invoke("--run-dir", run_dir, "--support", support, "--query-dir", queries, "--threads", 1)
        assert r.exit_code == 0, r.output
        files = sorted(queries.glob("*.png"))
        classes, proba = reference(run_dir, support, files)
        lines = r.stdout.splitlines()
        assert len(lines) == len(files) + 1 + len(classes)
        for f, p, line in zip(files, proba, lines):
            first, second = np.argsort(-p, kind="stable")[:2]
            assert line == f"{f}: {classes[first]} {p[first]:.4f}; runner-up {classes[second]} {p[second]:.4f}"
        predicted = Counter(classes[j] for j in proba.argmax(1))
        assert lines[len(files)] == f"queries per predicted class ({len(files)} in all):"
        assert lines[len(files) + 1:] == [f"  {c:<5}  {predicted[c]}" for c in classes]

    def test_json_holds_the_predictions_top_k_and_counts(self, run_dir, glyph_folders):
        support, queries = glyph_folders
        r = invoke("--run-dir", run_dir, "--support", support, "--query-dir", queries, "--top-k", 3, "--json")
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        files = sorted(queries.glob("*.png"))
        classes, proba = reference(run_dir, support, files)
        assert out["classes"] == classes == sorted(CLASSES) and out["matcher"] == "prototype"
        assert [p["path"] for p in out["predictions"]] == [str(f) for f in files]
        for p, row in zip(out["predictions"], proba):
            assert [t["class"] for t in p["top"]] == [classes[j] for j in np.argsort(-row, kind="stable")]
            assert [t["score"] for t in p["top"]] == pytest.approx(sorted(row, reverse=True), abs=1e-12)
            assert (p["class"], p["score"]) == (p["top"][0]["class"], p["top"][0]["score"])
        assert out["counts"] == {c: sum(p["class"] == c for p in out["predictions"]) for c in classes}

    def test_csv_rows_on_stdout_and_the_counts_on_stderr(self, run_dir, glyph_folders):
        support, queries = glyph_folders
        files = sorted(queries.glob("*.png"))[:2]
        r = invoke("--run-dir", run_dir, "--support", support, "--query", files[0], "--query", files[1], "--csv",
                   "--top-k", 1)
        assert r.exit_code == 0, r.output
        rows = list(csv.reader(io.StringIO(r.stdout)))
        classes, proba = reference(run_dir, support, files)
        assert rows == [["path", "class_1", "score_1"]] + [[str(f), classes[p.argmax()], f"{p.max():.4f}"]
                                                            for f, p in zip(files, proba)]
        assert r.stderr.splitlines()[0] == "queries per predicted class (2 in all):"

    def test_the_matcher_and_its_options_are_swappable(self, run_dir, glyph_folders):
        support, queries = glyph_folders
        r = invoke("--run-dir", run_dir, "--support", support, "--query-dir", queries, "--matcher", "dn4",
                   "--matcher-opt", "k=2", "--matcher-opt", "reduce=mean", "--json")
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        files = sorted(queries.glob("*.png"))
        classes, proba = reference(run_dir, support, files, matcher="dn4", k=2, reduce="mean")
        assert out["matcher"] == "dn4"
        assert [p["score"] for p in out["predictions"]] == pytest.approx(proba.max(1).tolist(), abs=1e-12)
        assert [p["class"] for p in out["predictions"]] == [classes[j] for j in proba.argmax(1)]

    def test_shipped_weights_by_name(self, run_dir, glyph_folders, monkeypatch):
        import fewshot

        from fewshot.evaluate_run import load_run_config, load_trained_model

        try:
            import fewshot.pretrained as module
        except ImportError:  # the shipped weights' module has not landed: a stand-in serving the run's weights
            module = types.ModuleType("fewshot.pretrained")
            monkeypatch.setitem(sys.modules, "fewshot.pretrained", module)
            monkeypatch.setattr(fewshot, "pretrained", module, raising=False)
        config = load_run_config(run_dir)
        shape = types.SimpleNamespace(image_shape=(1, 28, 28))
        monkeypatch.setattr(module, "list_pretrained", lambda: ["test_vig.tiny"], raising=False)
        monkeypatch.setattr(module, "load_pretrained", lambda name: (
            config, load_trained_model(run_dir, config, shape)[0].eval(), {"img_size": 28, "in_chans": 1,
                                                                           "dataset": "glyphs"}), raising=False)
        support, queries = glyph_folders
        by_name = invoke("--weights", "test_vig.tiny", "--support", support, "--query-dir", queries)
        by_run = invoke("--run-dir", run_dir, "--support", support, "--query-dir", queries)
        assert by_name.exit_code == 0, by_name.output
        assert by_name.stdout == by_run.stdout
        r = invoke("--weights", "test_vig.tin", "--support", support, "--query-dir", queries)
        assert r.exit_code == 2 and r.stderr == ("Error: unknown pretrained weights 'test_vig.tin'; valid names: "
                                                 "test_vig.tiny. Did you mean 'test_vig.tiny'?\n")


class TestBadInput:
    """Each ends with exit code 2 and one line naming the path at fault."""

    @pytest.fixture
    def folders(self, glyph_folders, tmp_path):
        """A writable copy of the glyph folders."""
        import shutil

        support, queries = glyph_folders
        shutil.copytree(support, tmp_path / "support")
        shutil.copytree(queries, tmp_path / "queries")
        return tmp_path / "support", tmp_path / "queries"

    def one_line_error(self, run_dir, support, *query_args):
        r = invoke("--run-dir", run_dir, "--support", support, *(query_args or ("--query-dir", support.parent / "queries")))
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and len(r.stderr.splitlines()) == 1, r.stderr
        return r.stderr.strip()

    def test_an_empty_class_folder(self, run_dir, folders):
        support, _ = folders
        (support / "delta").mkdir()
        assert self.one_line_error(run_dir, support).startswith(f"Error: {support / 'delta'}: empty class folder")

    def test_a_corrupt_support_image(self, run_dir, folders):
        support, _ = folders
        (support / "beta" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        assert self.one_line_error(run_dir, support).startswith(f"Error: {support / 'beta' / '0.png'}: not a readable image")

    def test_a_corrupt_query_image(self, run_dir, folders):
        support, queries = folders
        bad = queries / "zz.png"
        bad.write_bytes(b"")
        assert self.one_line_error(run_dir, support).startswith(f"Error: {bad}: empty file (0 bytes)")

    def test_a_missing_query_file(self, run_dir, folders):
        support, queries = folders
        missing = queries / "nope.png"
        assert self.one_line_error(run_dir, support, "--query", missing).startswith(
            f"Error: {missing}: cannot read image file (No such file or directory)")

    def test_a_single_class(self, run_dir, folders):
        import shutil

        support, _ = folders
        shutil.rmtree(support / "beta"), shutil.rmtree(support / "gamma")
        assert self.one_line_error(run_dir, support) == (
            f"Error: {support}: only one class folder (alpha); prediction needs at least 2 classes, each a folder "
            f"of images")

    def test_a_query_folder_with_no_image(self, run_dir, folders, tmp_path):
        support, _ = folders
        empty = tmp_path / "empty"
        (empty / "sub").mkdir(parents=True)
        (empty / "notes.txt").write_text("no image here")
        assert self.one_line_error(run_dir, support, "--query-dir", empty).startswith(
            f"Error: {empty}: no image files (.png")

    def test_a_support_folder_that_does_not_exist(self, run_dir, tmp_path):
        missing = tmp_path / "nowhere"
        assert self.one_line_error(run_dir, missing, "--query", "q.png") == (
            f"Error: {missing}: not a folder; expected <class>/<images> folders inside")

    def test_a_support_image_too_large_for_the_backbone(self, run_dir, folders):
        support, _ = folders
        huge = support / "gamma" / "huge.png"
        huge.write_bytes(png_declaring(9000, 9000))
        assert self.one_line_error(run_dir, support).startswith(
            f"Error: {huge}: image declares 9000x9000 pixels, more than the 67108864 allowed")

    def test_an_unknown_matcher_lists_the_registered_ones(self, run_dir, folders):
        support, _ = folders
        r = invoke("--run-dir", run_dir, "--support", support, "--query-dir", support.parent / "queries",
                   "--matcher", "protoype")
        assert r.exit_code == 2 and r.stderr.startswith("Error: unknown matcher 'protoype'; valid names: ")
        assert r.stderr.rstrip().endswith("Did you mean 'prototype'?")

    @pytest.mark.parametrize("args, message", [
        ([], "give exactly one of --weights NAME (shipped weights) or --run-dir DIR (a trained run)"),
        (["--weights", "x", "--run-dir", "RUN"], "give exactly one of --weights NAME"),
        (["--weights", "x", "--checkpoint", "last"], "--checkpoint chooses among the weights of --run-dir"),
        (["--run-dir", "RUN", "--query", "a.png"], "give the images to classify with --query PATH (repeatable) or "
                                                  "--query-dir DIR, not both"),
        (["--run-dir", "RUN", "--json", "--csv"], "--json and --csv are exclusive"),
        (["--run-dir", "RUN", "--top-k", "4"], "--top-k 4 is more than the 3 classes of SUPPORT"),
        (["--run-dir", "RUN", "--top-k", "0"], "Invalid value for '--top-k': 0 is not in the range x>=1."),
    ])
    def test_usage_errors_name_the_options(self, run_dir, glyph_folders, args, message):
        support, queries = glyph_folders
        args = [str(run_dir) if a == "RUN" else a for a in args]
        r = invoke(*args, "--support", support, "--query-dir", queries)
        assert r.exit_code == 2, r.output
        assert message.replace("SUPPORT", str(support)) in r.stderr


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A Conv-4 ProtoNet trained by ``fewshot train`` for 20 glyphs episodes."""
    run = tmp_path_factory.mktemp("trained") / "conv4"
    r = CliRunner().invoke(cli, ["train", "--dataset", "glyphs", "--backbone", "conv4", "--matcher", "prototype",
                                 "--way", "3", "--shot", "1", "--query", "2", "--episodes", "20", "--eval-episodes", "5",
                                 "--val-episodes", "2", "--val-every", "10", "--no-track", "--no-progress",
                                 "--threads", "1", "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    return run


@pytest.mark.slow
def test_a_trained_run_predicts_what_its_own_model_scores(trained_run, glyph_folders):
    from fewshot.evaluate_run import load_run_config, load_trained_model
    from fewshot.image_input import to_model_images

    support, queries = glyph_folders
    r = invoke("--run-dir", trained_run, "--support", support, "--query-dir", queries, "--json", "--top-k", 3)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    model, _ = load_trained_model(trained_run, load_run_config(trained_run), types.SimpleNamespace(image_shape=(1, 28, 28)))
    files = sorted(support.rglob("*.png"))
    labels = torch.tensor([sorted(CLASSES).index(p.parent.name) for p in files])
    query_files = sorted(queries.glob("*.png"))
    with torch.inference_mode():
        logits = model.eval()(to_model_images(files, 28, 1), labels, to_model_images(query_files, 28, 1))
    assert [p["class"] for p in out["predictions"]] == [sorted(CLASSES)[j] for j in logits.argmax(1).tolist()]
    assert [p["score"] for p in out["predictions"]] == pytest.approx(logits.softmax(1).max(1).values.tolist(), abs=1e-5)


def test_its_help_loads_neither_torch_nor_a_registry():
    import subprocess

    code = ("import sys; from click.testing import CliRunner; from fewshot.cli import cli; "
            "r = CliRunner().invoke(cli, ['predict', '--help']); assert r.exit_code == 0 and '--query-dir' in r.output; "
            "print(sorted(m for m in ('torch', 'sklearn', 'matchers', 'episodes', 'models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
