"""The weights shipped in models/weights/: present, unaltered, loadable through timm, and as accurate as recorded."""
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

import models  # noqa: F401  (registers the backbones and their shipped tags)
from models.shipped import WEIGHTS_DIR, ShippedWeightsError, sha256_of, shipped_file, shipped_info, shipped_names

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"
EXPECTED = ["conv4.omniglot_minimal", "vig_small_c4_28.glyphs", "vig_small_c4_28.omniglot_minimal"]


def test_every_shipped_recipe_has_its_weights():
    assert sorted(shipped_names()) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_record_names_its_file_hash_command_commit_and_accuracy(name):
    info = shipped_info(name)
    path = WEIGHTS_DIR / info["file"]
    assert path.name == f"{name}.safetensors"
    assert path.stat().st_size == info["bytes"] < 3 * 2**20  # each under 3 MB
    assert sha256_of(path) == info["sha256"]
    assert info["command"].startswith("fewshot train ") and len(info["commit"]) >= 7
    assert 0 < info["test"]["test_acc"] <= 1 and info["check"]["episodes"] == 200


@pytest.mark.parametrize("name", EXPECTED)
def test_timm_builds_the_backbone_with_exactly_the_shipped_tensors(name):
    from safetensors.torch import load_file

    info = shipped_info(name)
    backbone = timm.create_model(name, pretrained=True, num_classes=0)
    saved = load_file(str(WEIGHTS_DIR / info["file"]))
    state = backbone.state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


def test_an_altered_file_is_refused_naming_it(tmp_path, monkeypatch):
    import models.shipped as shipped

    name = "conv4.omniglot_minimal"
    for suffix in (".safetensors", ".json"):
        shutil.copy(WEIGHTS_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    with open(tmp_path / f"{name}.safetensors", "r+b") as f:  # flip one byte of the tensor data
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ShippedWeightsError, match=r"conv4\.omniglot_minimal\.safetensors: sha256 differs"):
        shipped_file(name)


def test_an_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ShippedWeightsError, match="no shipped weights named 'conv4.omniglot'.*did you mean "
                                                  "'conv4.omniglot_minimal'"):
        shipped_info("conv4.omniglot")


def test_conv4_without_a_shipped_tag_says_which_exist():
    with pytest.raises(ValueError, match="the shipped ones are conv4.omniglot_minimal"):
        timm.create_model("conv4", pretrained=True)


@pytest.fixture(scope="module")
def splits_loaded_once():
    """Both omniglot_minimal weights are checked on the same test split: ``episodes.load_splits``
    (which ``check_accuracy`` calls) decodes the omniglot zips once for the module; the splits are only read."""
    import episodes

    real, loaded = episodes.load_splits, {}

    def load_splits(name, root=None, img_size=None, **kwargs):
        key = (name, str(root), img_size, tuple(sorted(kwargs.items())))
        if key not in loaded:
            loaded[key] = real(name, root, img_size, **kwargs)
        return loaded[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(episodes, "load_splits", load_splits)
        yield


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_reproduces_its_recorded_accuracy_on_the_200_episode_check_bank(name, splits_loaded_once):
    from episodes import dataset_info
    from fewshot.pretrained import load_pretrained, pretrained_config
    from scripts.ship_weights import check_accuracy

    info = shipped_info(name)
    root = None
    if dataset_info(info["dataset"]).needs_root:
        if not (DATA / "images_background_small2.zip").exists():
            pytest.skip(f"omniglot-minimal zips not at {DATA}")
        root = str(DATA)
    config = pretrained_config(name, {"data_root": root})
    _, model, _ = load_pretrained(name, config)
    got = check_accuracy(model, config)
    assert got["bank_id"] == info["check"]["bank_id"]
    assert abs(got["acc"] - info["check"]["acc"]) <= 0.5, (got, info["check"])


@pytest.mark.slow
def test_fewshot_eval_scores_shipped_weights(tmp_path):
    from click.testing import CliRunner

    from fewshot.cli import cli

    res = CliRunner().invoke(cli, ["eval", "--weights", "vig_small_c4_28.glyphs", "--eval-episodes", "20",
                                   "--no-track", "--no-progress", "--threads", "1", "--json",
                                   "--run-dir", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["test_episodes"] == 20 and out["matcher"] == "dn4" and 0.5 < out["test_acc"] <= 1
    assert Path(out["eval_dir"]).parent == tmp_path / "w"
    assert (tmp_path / "w" / "config.yaml").is_file()


@pytest.mark.slow
def test_the_classifier_from_shipped_weights_predicts_an_episode_as_the_model_does():
    """FewShotClassifier.from_pretrained fitted on an episode's support images (as uint8 arrays) gives every
    query the class the model's own forward gives it."""
    from episodes import EpisodeSampler, load_splits
    from fewshot import FewShotClassifier
    from fewshot.pretrained import load_pretrained

    test = load_splits("glyphs").test
    ep = EpisodeSampler(test, 5, 1, 4, seed=3)[0]
    _, model, _ = load_pretrained("vig_small_c4_28.glyphs")
    with torch.inference_mode():
        expected = model(test.images[ep.support], ep.support_labels, test.images[ep.query]).argmax(-1)
    names = [f"class-{int(c)}" for c in ep.support_labels]
    clf = FewShotClassifier.from_pretrained("vig_small_c4_28.glyphs")
    clf.fit([img[0].numpy() for img in test.images[ep.support]], names)
    got = clf.predict([img[0].numpy() for img in test.images[ep.query]])
    assert list(got) == [f"class-{int(c)}" for c in expected]
    assert clf.score([img[0].numpy() for img in test.images[ep.query]],
                     [f"class-{int(c)}" for c in ep.query_labels]) > 0.5
