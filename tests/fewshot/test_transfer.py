"""fewshot transfer: data sources and their errors, what each --adapt mode trains, exact resume,
McNemar's test, fewshot compare on transfer runs, and the CLI end to end."""
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import models
import prompts
from episodes import ImageSet
from episodes.errors import DataError
from episodes.transfer_data import load_class_folders, load_vtab, read_file_list, split_per_class
from fewshot import transfer as tr
from fewshot.cli import cli
from fewshot.compare import CompareError, compare, load_run, mcnemar
from fewshot.transfer_cli import _ADAPT

SIZE = 28


def draw(cls: int, k: int) -> np.ndarray:
    """A 28x28 grayscale image of class ``cls``: a bright bar at a class-specific row, seeded noise."""
    rng = np.random.default_rng(1000 * cls + k)
    img = rng.integers(0, 60, (SIZE, SIZE)).astype(np.uint8)
    row = 4 + 7 * cls
    img[row:row + 4, 3 + k % 4:25] = 230
    return img


def save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, "L").save(path)


def class_folders(root: Path, classes=3, train=6, val=2, test=3) -> Path:
    for split, n in (("train", train), ("val", val), ("test", test)):
        for c in range(classes):
            for k in range(n):
                save(root / split / f"class{c}" / f"{k}.png", draw(c, k + 100 * len(split)))
    return root


def vtab_folder(root: Path, classes=3, per_class=4) -> Path:
    lines = {"train800.txt": [], "val200.txt": [], "test.txt": []}
    for name, offset in (("train800.txt", 0), ("val200.txt", 50), ("test.txt", 80)):
        for c in range(classes):
            for k in range(per_class):
                rel = f"images/{name[:-4]} {c}/{k}.png"  # a space in the path
                save(root / rel, draw(c, k + offset))
                lines[name].append(f"{rel} {c}")
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n\n")
    (root / "train800val200.txt").write_text("\n".join(lines["train800.txt"] + lines["val200.txt"]) + "\n")
    return root


def config(tmp_path, **kw) -> tr.TransferConfig:
    base = dict(dataset="class-folders", data_root=str(class_folders(tmp_path / "data")), backbone="test_vig",
                epochs=2, batch_size=8, lr=1e-2, run_dir=str(tmp_path / "run"), track=False)
    return tr.TransferConfig(**{**base, **kw})


# ----- data -----------------------------------------------------------------------------------------
def test_vtab_lists_are_parsed_with_spaces_blank_lines_and_both_protocols(tmp_path):
    root = vtab_folder(tmp_path / "task")
    entries = read_file_list(root / "test.txt")
    assert len(entries) == 12 and entries[0].path == "images/test 0/0.png" and entries[0].label == 0
    assert entries[-1].line == 12 and entries[-1].label == 2
    final = load_vtab(root, "final", img_size=SIZE, channels=1)
    assert final.val is None and len(final.train) == 24 and len(final.test) == 12 and final.num_classes == 3
    tune = load_vtab(root, "tune", img_size=SIZE, channels=1)
    assert len(tune.train) == 12 and len(tune.val) == 12
    # pixels are the decoded files, in list order
    assert torch.equal(tune.test.images[5, 0], torch.from_numpy(draw(1, 1 + 80)))
    assert tune.test.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize("line, message", [
    ("images/nowhere.png 1", r"test.txt:3: image .*nowhere.png not found"),
    ("images/test 0/0.png x", r"test.txt:3: label 'x' is not a non-negative integer"),
    ("images/test 0/0.png -1", r"test.txt:3: label '-1' is not a non-negative integer"),
    ("justonefield", r"test.txt:3: expected 'relative/path label'"),
    ("../outside.png 0", r"test.txt:3: image path '../outside.png' must be relative"),
    ("/etc/passwd 0", r"test.txt:3: image path '/etc/passwd' must be relative"),
    ("images/test 0/0.png 3", r"test.txt:3: label 3 is outside the class range 0..2 of .*train800val200.txt"),
])
def test_a_bad_line_of_a_file_list_is_named_by_file_and_line(tmp_path, line, message):
    root = vtab_folder(tmp_path / "task")
    rows = (root / "test.txt").read_text().splitlines()
    rows[2] = line
    (root / "test.txt").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=message):
        load_vtab(root, "final", img_size=SIZE, channels=1)


def test_a_class_missing_from_train_is_named_by_file_and_line(tmp_path):
    root = vtab_folder(tmp_path / "task")
    train = [r for r in (root / "train800val200.txt").read_text().splitlines() if not r.endswith(" 1")]
    (root / "train800val200.txt").write_text("\n".join(train) + "\n")
    with pytest.raises(DataError, match=r"test.txt:5: class 1 has no training image in .*train800val200.txt"):
        load_vtab(root, "final", img_size=SIZE, channels=1)


def test_a_missing_list_and_an_empty_list_are_refused(tmp_path):
    root = vtab_folder(tmp_path / "task")
    (root / "val200.txt").unlink()
    with pytest.raises(DataError, match=r"no val200.txt \(protocol 'tune' reads"):
        load_vtab(root, "tune", img_size=SIZE, channels=1)
    (root / "test.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"test.txt: the file list is empty"):
        load_vtab(root, "final", img_size=SIZE, channels=1)


def test_class_folders_share_train_classes_and_refuse_a_class_missing_from_train(tmp_path):
    root = class_folders(tmp_path / "data")
    splits = load_class_folders(root, img_size=SIZE, channels=1)
    assert splits.class_names == ["class0", "class1", "class2"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 9)
    assert splits.test.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    save(root / "test" / "class9" / "0.png", draw(0, 0))
    with pytest.raises(DataError, match=r"test/class9: class 'class9' has no folder in .*train"):
        load_class_folders(root, img_size=SIZE, channels=1)


def test_split_per_class_is_seeded_disjoint_and_refuses_too_few_images():
    labels = torch.arange(4).repeat_interleave(6)
    images = torch.arange(24, dtype=torch.uint8).view(24, 1, 1, 1).expand(24, 1, 8, 8).contiguous()
    src = ImageSet(images, labels, ["a", "b", "c", "d"], name="toy/test")
    s = split_per_class(src, 2, 1, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (8, 4, 12)
    ids = [set(p.images[:, 0, 0, 0].tolist()) for p in (s.train, s.val, s.test)]
    assert set.union(*ids) == set(range(24)) and sum(map(len, ids)) == 24
    for part in (s.train, s.val, s.test):  # every image keeps its class
        assert torch.equal(part.labels, labels[part.images[:, 0, 0, 0].long()])
    again = split_per_class(src, 2, 1, seed=3)
    assert torch.equal(again.train.images, s.train.images)
    assert not torch.equal(split_per_class(src, 2, 1, seed=4).train.images, s.train.images)
    with pytest.raises(DataError, match=r"class 'a' has 6 images; --train-per-class 5 and --val-per-class 1 leave none"):
        split_per_class(src, 5, 1)


# ----- what each adapt mode trains ---------------------------------------------------------------------
def _expected_trainable(model: tr.TransferModel) -> set:
    if model.adapt == "linear":
        prefixes = ("classifier.",)
    elif model.adapt == "head":
        last = len(model.backbone.blocks) - 1
        prefixes = ("classifier.", f"backbone.blocks.{last}.", "backbone.norm.")
    elif model.adapt == "full":
        prefixes = ("classifier.", "backbone.")
    else:
        prefixes = ("classifier.", "prompt.")
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


@pytest.mark.parametrize("adapt", tr.ADAPT_MODES)
def test_each_adapt_mode_trains_only_what_it_should(adapt):
    torch.manual_seed(0)
    backbone = models.create_backbone("test_vig")
    prompt = prompts.create(adapt, backbone) if adapt in tr.PROMPT_MODES else None
    model = tr.TransferModel(backbone, 3, adapt, prompt)
    images = torch.from_numpy(np.stack([draw(c, k) for c in range(3) for k in range(4)]))[:, None]
    labels = torch.arange(3).repeat_interleave(4)
    if model.conditioned:
        model.set_conditioning(images, labels)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = tr.make_optimizer(model, "adamw", 0.05, 0.0)
    model.train()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(images), labels) + model.regulariser()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trained_modules = tuple(n.rsplit(".", 1)[0] + "." for n in trainable)
    frozen_changes = {k for k in changed if not k.startswith(trained_modules) and k not in trainable}
    assert not frozen_changes, f"{adapt}: frozen weights or BatchNorm buffers moved: {sorted(frozen_changes)[:5]}"
    assert {"classifier.weight", "classifier.bias"} <= changed
    if adapt == "head":
        assert any(k.startswith("backbone.blocks.1.") for k in changed & trainable)
    if adapt in tr.PROMPT_MODES:
        assert any(k.startswith("prompt.") for k in changed), f"{adapt}: the prompt did not train"
    if adapt in ("linear",) + tr.PROMPT_MODES:  # the whole backbone is frozen: nothing of it moved
        assert not {k for k in changed if k.startswith("backbone.")}


def test_the_cli_choices_are_the_engine_modes_and_every_prompt_mode_is_registered():
    assert _ADAPT == tr.ADAPT_MODES
    assert set(tr.PROMPT_MODES) <= set(prompts.list_prompts())


def test_warm_up_then_cosine_learning_rate_per_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.4)
    sched = tr.make_scheduler(opt, total_steps=10, warmup_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.4 * (i + 1) / 4 if i < 4 else 0.2 * (1 + math.cos(math.pi * (i - 4) / 6)) for i in range(10)]
    # LinearLR starts at lr / warmup and reaches lr at the milestone
    expected[:4] = [0.4 * (1 / 4 + (1 - 1 / 4) * i / 4) for i in range(4)]
    assert lrs == pytest.approx(expected, abs=1e-7)


# ----- resume ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("adapt", ["head", "delete"])  # delete: Gumbel noise from the global RNG in training
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path, monkeypatch, adapt):
    kw = dict(adapt=adapt, epochs=3, warmup_epochs=1, augment="affine", label_smoothing=0.1)
    whole = tr.transfer(config(tmp_path / "a", **kw), progress=False)
    cfg = config(tmp_path / "b", **kw)
    real_save, saves = tr.save_atomic, []

    def save_then_die(obj, path):
        real_save(obj, path)
        saves.append(Path(path).name)
        if saves.count("last.pt") == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tr.transfer(cfg, progress=False)
    monkeypatch.setattr(tr, "save_atomic", real_save)
    assert torch.load(Path(cfg.run_dir) / "last.pt", weights_only=True)["epoch"] == 1
    resumed = tr.transfer(cfg, resume=True, progress=False)
    a = torch.load(Path(whole["run_dir"]) / "last.pt", weights_only=True)
    b = torch.load(Path(resumed["run_dir"]) / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["history"] == b["history"] and a["best"] == b["best"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed["test_acc"] == whole["test_acc"]
    assert (Path(resumed["run_dir"]) / tr.CORRECT_FILE).read_text() == (Path(whole["run_dir"]) / tr.CORRECT_FILE).read_text()


def test_resume_refuses_other_settings(tmp_path):
    tr.transfer(config(tmp_path, epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"last.pt was written by a run with other settings \(lr: 0.01 -> 0.02\)"):
        tr.transfer(config(tmp_path, epochs=1, lr=0.02), resume=True, progress=False)


def test_results_select_on_validation_and_store_per_image_correctness(tmp_path):
    res = tr.transfer(config(tmp_path, adapt="full", epochs=3), progress=False)
    run = Path(res["run_dir"])
    correct = [int(x) for x in (run / tr.CORRECT_FILE).read_text().split()]
    assert len(correct) == res["test_images"] == 9 and sum(correct) / 9 == pytest.approx(res["test_acc"])
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == res["best_epoch"] and best["val_acc"] == res["best_val_acc"]
    history = json.loads(torch.load(run / "last.pt", weights_only=True)["history"])
    assert max(h["val_acc"] for h in history) == res["best_val_acc"]
    assert res["trainable_params"] == sum(p.numel() for p in models.create_backbone("test_vig").parameters()) + 32 * 3 + 3
    assert res["test_acc"] > 1 / 3  # the bars are easy: well above chance after 3 epochs of full fine-tuning


# ----- McNemar and fewshot compare --------------------------------------------------------------------
def test_mcnemar_matches_a_hand_computed_exact_test():
    # 20 images: 8 where only a is right, 2 where only b is right, 6 both right, 4 both wrong
    a = np.array([1] * 8 + [0] * 2 + [1] * 6 + [0] * 4)
    b = np.array([0] * 8 + [1] * 2 + [1] * 6 + [0] * 4)
    r = mcnemar(a, b)
    assert (r["n10"], r["n01"], r["images"]) == (8, 2, 20)
    # two-sided exact p = 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert r["mcnemar_p"] == pytest.approx(112 / 1024)
    assert r["mcnemar_chi2"] == pytest.approx((6 - 1) ** 2 / 10)
    assert r["mean_diff"] == pytest.approx(0.3)
    assert r["diff_ci95"] == pytest.approx(1.96 * math.sqrt(10 - 36 / 20) / 20)
    same = mcnemar(a, a)
    assert same["mcnemar_p"] == 1.0 and same["mean_diff"] == 0.0
    with pytest.raises(CompareError, match="pairs images"):
        mcnemar(a, b[:-1])


def _fake_transfer_run(folder: Path, correct, test_set="t0"):
    folder.mkdir(parents=True)
    (folder / tr.CORRECT_FILE).write_text("".join(f"{c}\n" for c in correct))
    (folder / "result.json").write_text(json.dumps({"kind": "transfer", "test_set_id": test_set,
                                                    "test_images": len(correct), "num_classes": 3}))
    return str(folder)


def test_compare_pairs_transfer_runs_by_mcnemar_and_refuses_mixing(tmp_path):
    a = [1] * 8 + [0] * 2 + [1] * 6 + [0] * 4
    b = [0] * 8 + [1] * 2 + [1] * 6 + [0] * 4
    ra, rb = _fake_transfer_run(tmp_path / "a", a), _fake_transfer_run(tmp_path / "b", b)
    report = compare([load_run(ra), load_run(rb)])
    assert report["kind"] == "transfer" and report["runs"][0]["acc"] == pytest.approx(0.7)
    assert report["pairs"][0]["mcnemar_p"] == pytest.approx(112 / 1024)
    out = CliRunner().invoke(cli, ["compare", ra, rb])
    assert out.exit_code == 0, out.output
    assert "a vs b: diff +30.00" in out.output and "n10=8 n01=2, exact p=0.109" in out.output
    other = _fake_transfer_run(tmp_path / "c", b, test_set="t1")
    with pytest.raises(CompareError, match="different test sets"):
        compare([load_run(ra), load_run(other)])
    from fewshot.compare import write_scores
    write_scores(tmp_path / "ep", [0.5, 0.6], {"test_bank_id": "x", "test_episodes": 2})
    with pytest.raises(CompareError, match="cannot compare transfer runs"):
        compare([load_run(ra), load_run(str(tmp_path / "ep"))])


def test_compare_on_two_real_transfer_runs_uses_their_test_images(tmp_path):
    r1 = tr.transfer(config(tmp_path / "1", adapt="linear", epochs=1), progress=False)
    r2 = tr.transfer(config(tmp_path / "2", adapt="vpt", epochs=1), progress=False)
    assert r1["test_set_id"] == r2["test_set_id"]
    report = compare([load_run(r1["run_dir"]), load_run(r2["run_dir"])])
    a = np.array((Path(r1["run_dir"]) / tr.CORRECT_FILE).read_text().split(), dtype=int)
    b = np.array((Path(r2["run_dir"]) / tr.CORRECT_FILE).read_text().split(), dtype=int)
    assert report["pairs"][0]["n10"] == int(((a == 1) & (b == 0)).sum())


# ----- the CLI ------------------------------------------------------------------------------------------
def test_cli_bad_input_is_one_line_naming_the_file_and_line_with_exit_2(tmp_path):
    root = vtab_folder(tmp_path / "task")
    (root / "test.txt").write_text((root / "test.txt").read_text() + "images/gone.png 0\n")
    res = CliRunner().invoke(cli, ["transfer", "--dataset", "vtab", "--data-root", str(root), "--backbone", "test_vig",
                                   "--no-track", "--no-progress", "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == f"Error: {root / 'test.txt'}:14: image {root / 'images/gone.png'} not found"  # line 13 is blank
    res = CliRunner().invoke(cli, ["transfer", "--adapt", "linear", "--prompt-opt", "num_nodes=2", "--no-track"])
    assert res.exit_code == 2 and "--prompt-opt num_nodes given, but --adapt linear has no prompt" in res.output
    res = CliRunner().invoke(cli, ["transfer", "--dataset", "class-folders", "--no-track"])
    assert res.exit_code == 2 and "--dataset class-folders reads files: give their folder with --data-root" in res.output
    res = CliRunner().invoke(cli, ["transfer", "--dataset", "vtab", "--data-root", str(root), "--train-per-class", "5"])
    assert res.exit_code == 2 and "--train-per-class splits an episodic dataset's classes" in res.output
    res = CliRunner().invoke(cli, ["transfer", "--adapt", "vpt", "--condition-per-class", "2", "--no-track"])
    assert res.exit_code == 2 and "--condition-per-class is for prompts generated from training images" in res.output


def test_condition_per_class_on_a_prompt_that_is_not_generated_is_refused(tmp_path):
    cfg = config(tmp_path, adapt="delete", prompt_opts={"scorer": "learned"}, condition_per_class=2)
    with pytest.raises(ValueError, match="--condition-per-class given, but prompt 'delete' with these options"):
        tr.transfer(cfg, progress=False)


@pytest.mark.slow  # MLflow sqlite store: ~14 s
def test_cli_on_class_folders_with_a_trained_backbone_tracks_trainable_params(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fewshot.transfer")
    first = tr.transfer(config(tmp_path / "pre", adapt="full", epochs=1), progress=False)
    backbone_file = tmp_path / "backbone.pt"  # a bare state dict of the fine-tuned backbone
    state = torch.load(Path(first["run_dir"]) / "last.pt", weights_only=True)["model"]
    torch.save({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}, backbone_file)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    res = CliRunner().invoke(cli, ["transfer", "--dataset", "class-folders", "--data-root", str(tmp_path / "pre" / "data"),
                                   "--backbone", "test_vig", "--backbone-from", str(backbone_file), "--adapt", "gpf",
                                   "--epochs", "1", "--no-progress", "--tracking-uri", uri, "--run-dir",
                                   str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output.strip().splitlines()[-1])
    assert "randomly initialised" in caplog.text  # only the pre-run, on a random backbone, is warned about
    assert caplog.text.count("randomly initialised") == 1
    assert result["trainable_params"] == 2 * 32 + 32 * 3 + 3  # gpf: one D-vector per block, plus the classifier
    from mlflow.tracking import MlflowClient
    run = MlflowClient(tracking_uri=uri).get_run(result["mlflow_run_id"])
    assert run.data.params["trainable_params"] == str(result["trainable_params"])
    assert run.data.metrics["test_acc"] == pytest.approx(result["test_acc"])
    assert run.data.tags["adapt"] == "gpf"


@pytest.mark.slow
def test_cli_smallest_run_on_glyphs_warns_once_about_the_random_backbone(tmp_path):
    cmd = [sys.executable, "-m", "fewshot", "transfer", "--dataset", "glyphs", "--backbone", "vig_small_28", "--adapt",
           "head", "--epochs", "1", "--no-track", "--no-progress", "--run-dir", str(tmp_path / "r"), "--threads", "1",
           "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if "--backbone-from" in line]
    assert len(warnings) == 1 and "randomly initialised" in warnings[0] and warnings[0].startswith("WARNING")
    assert "Traceback" not in proc.stderr and "UserWarning" not in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["test_images"] == 1000 and result["num_classes"] == 100 and result["train_images"] == 1000
    correct = (tmp_path / "r" / tr.CORRECT_FILE).read_text().split()
    assert len(correct) == 1000 and sum(map(int, correct)) / 1000 == pytest.approx(result["test_acc"])
    blocks = models.create_backbone("vig_small_28").blocks
    assert result["trainable_params"] == (sum(p.numel() for p in blocks[-1].parameters()) + 2 * 96 + 96 * 100 + 100)
    assert "test top-1 accuracy" in proc.stderr and "trainable parameters" in proc.stderr
