"""``--backbone-from``: the authors' files and our own checkpoints load; bad files fail in one line."""
import argparse
import importlib.util
import json
import logging
import pathlib

import pytest
import torch
from click.testing import CliRunner

import models
from fewshot.cli import cli
from models.checkpoints import BackboneCheckpointError, load_backbone_weights

_spec = importlib.util.spec_from_file_location("official_layout", pathlib.Path(__file__).with_name("official_layout.py"))
official_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(official_layout)

TINY = ["--dataset", "glyphs", "--way", "3", "--shot", "1", "--query", "2", "--eval-episodes", "4",
        "--val-episodes", "2", "--val-every", "3", "--checkpoint-every", "2", "--no-progress", "--threads", "1",
        "--no-track", "--episodes", "1"]
#: The authors' 224 px files: the smallest run that still trains one episode and tests two (2-way 1-shot, one
#: query per class, no validation), since every image costs a 224 px ViG-Ti / PViG-Ti forward on the CPU.
AUTHORS = ["--dataset", "glyphs", "--way", "2", "--shot", "1", "--query", "1", "--eval-episodes", "2",
           "--val-episodes", "0", "--no-progress", "--threads", "1", "--no-track", "--episodes", "1"]


def train(tmp_path, backbone, weights, settings=TINY):
    args = ["train", *settings, "--backbone", backbone, "--run-dir", str(tmp_path / "run"), "--backbone-from", str(weights)]
    return CliRunner().invoke(cli, args)


def episodic_checkpoint(path, name, seed=0):
    torch.manual_seed(seed)
    backbone = models.create_backbone(name)
    torch.save({"model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "step": 3}, path)
    return backbone


def error_line(result):
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("Error")]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def fresh():
    torch.manual_seed(123)
    return models.create_backbone("test_vig")


class TestLibrary:
    def test_our_best_pt_loads_and_is_reported_as_fewshot(self, tmp_path, fresh, caplog):
        src = episodic_checkpoint(tmp_path / "best.pt", "test_vig")
        with caplog.at_level(logging.INFO, logger="models.checkpoints"):
            assert load_backbone_weights(fresh, tmp_path / "best.pt") == "fewshot"
        assert "fewshot layout (fewshot episodic checkpoint)" in caplog.text
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), fresh.state_dict().values()))

    def test_a_pretraining_checkpoint_loads(self, tmp_path, fresh):
        src = models.create_backbone("test_vig")
        torch.save({"backbone": src.state_dict(), "head": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "pre.pt")
        assert load_backbone_weights(fresh, tmp_path / "pre.pt") == "fewshot"
        assert torch.equal(fresh.pos_embed, src.pos_embed)

    @pytest.mark.parametrize("bad", ["other_size", "truncated", "pickled", "other_family", "official_other_size"])
    def test_a_failed_load_leaves_the_backbone_untouched(self, tmp_path, fresh, bad):
        path = make_bad_file(tmp_path, bad)
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        with pytest.raises(BackboneCheckpointError) as err:
            load_backbone_weights(fresh, path, "test_vig")
        assert "\n" not in str(err.value)
        assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())

    def test_the_authors_file_of_another_size_names_the_size_it_fits(self, tmp_path):
        torch.save(official_layout.make_state(official_layout.isotropic_shapes(192, 12)), tmp_path / "vig_ti.pth")
        with torch.device("meta"):
            vig_s = models.create_backbone("vig_s_224_gelu")
        with pytest.raises(BackboneCheckpointError, match="official layout.*seems to fit vig_ti_224_gelu"):
            load_backbone_weights(vig_s, tmp_path / "vig_ti.pth", "vig_s_224_gelu")


def make_bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "other_size":
        episodic_checkpoint(path, "vig_small_28")
    elif kind == "truncated":
        episodic_checkpoint(tmp_path / "whole.pt", "test_vig")
        data = (tmp_path / "whole.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickled":  # what timm's train script saves beside the weights
        torch.save({"state_dict": models.create_backbone("test_vig").state_dict(), "args": argparse.Namespace(lr=1)},
                   path)
    elif kind == "other_family":  # a ResNet's keys
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
                    "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3), "fc.weight": torch.zeros(1000, 512)}, path)
    elif kind == "official_other_size":
        torch.save(official_layout.make_state(official_layout.isotropic_shapes(32, 2, grid=4)), path)
    return path


class TestCli:
    @pytest.mark.parametrize("bad, message", [
        ("other_size", r"does not fit test_vig: it seems to fit vig_small_28 \(167 of 167 keys match\).*"
                       r"of another shape \(pos_embed: file \[1, 96, 7, 7\] vs model \[1, 32, 7, 7\]"),
        ("truncated", "truncated or corrupt"),
        ("pickled", "holds a pickled argparse.Namespace object, which torch.load\\(weights_only=True\\) refuses"),
        ("other_family", r"unrecognised layout.*fits no fewshot backbone.*unexpected \(conv1.weight"),
        ("official_other_size", r"official layout.*does not fit test_vig"),
    ])
    def test_bad_file_gives_one_clear_line_and_a_nonzero_exit(self, tmp_path, bad, message):
        line = error_line(train(tmp_path, "test_vig", make_bad_file(tmp_path, bad)))
        assert str(tmp_path) in line
        assert __import__("re").search(message, line), line

    def test_missing_file(self, tmp_path):
        assert "no such file" in error_line(train(tmp_path, "test_vig", tmp_path / "nope.pt"))

    def test_our_best_pt_trains(self, tmp_path):
        episodic_checkpoint(tmp_path / "best.pt", "test_vig")
        r = train(tmp_path, "test_vig", tmp_path / "best.pt")
        assert r.exit_code == 0, r.output

    @pytest.mark.slow
    def test_the_authors_vig_ti_file_trains_on_grayscale_glyphs(self, tmp_path, caplog):
        torch.save(official_layout.make_state(official_layout.isotropic_shapes(192, 12)), tmp_path / "vig_ti_74.5.pth")
        with caplog.at_level(logging.INFO):
            r = train(tmp_path, "vig_ti_224_gelu", tmp_path / "vig_ti_74.5.pth", AUTHORS)
        assert r.exit_code == 0, r.output
        assert "official layout" in caplog.text and "adapted from 3 to 1 input channels" in caplog.text
        assert "episode images resized to 224 px" in caplog.text
        assert "image (1, 224, 224)" in caplog.text  # the splits as loaded, not the glyphs' 28 px

    @pytest.mark.slow
    def test_the_authors_pvig_ti_file_runs_a_protonet_tuned_per_episode(self, tmp_path, caplog, monkeypatch):
        """Item 5 of the pyramid issue: their weights, episode images resized to 224 px, the frozen
        backbone's last stage block tuned on each episode's support set (``--adapt head``): the query
        scores after the tuning step differ from the frozen backbone's in every episode whose support
        loss has a gradient, and the stored backbone is left as it was. (These random weights give
        logits in the hundreds: in some episodes the support loss is exactly 0 in float32, no
        gradient, and Adam leaves the block as it was; the test checks those stay exactly equal.)"""
        import fewshot.adaptation as adaptation
        from fewshot.adaptation import Head

        torch.save({"state_dict": official_pvig_ti_of_our_init()}, tmp_path / "pvig_ti_78.5.pth.tar")
        scored, tuned_logits, losses, real_tune = [], Head.logits, [], adaptation.tune

        def tune_spy(prompt, backbone, support, labels, update, *rest):
            def recording(loss):
                losses.append(float(loss))
                return update(loss)
            return real_tune(prompt, backbone, support, labels, recording, *rest)

        monkeypatch.setattr(adaptation, "tune", tune_spy)

        def spy(self, model, support_images, support_labels, query_images):
            before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
            tuned = tuned_logits(self, model, support_images, support_labels, query_images)
            with torch.no_grad():
                frozen = model.score(model.backbone, model.prompt, support_images, support_labels, query_images)
            unchanged = all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
            scored.append((float((tuned - frozen).abs().max() / frozen.abs().max()), unchanged))  # relative
            return tuned

        monkeypatch.setattr(Head, "logits", spy)
        args = ["train", *AUTHORS, "--backbone", "pvig_ti_224_gelu", "--run-dir", str(tmp_path / "run"),
                "--backbone-from", str(tmp_path / "pvig_ti_78.5.pth.tar"), "--adapt", "head", "--adapt-steps", "1",
                "--json"]
        with caplog.at_level(logging.INFO):
            r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        assert "episode images resized to 224 px" in caplog.text and "image (1, 224, 224)" in caplog.text
        result = json.loads(r.output[r.output.index("{"):])
        assert result["trainable_params"] == 0 and result["frozen_params"] == 9_293_424  # PViG-Ti without its classifier
        assert 0 <= result["test_acc"] <= 1 and result["test_episodes"] == 2
        assert len(scored) == 2  # the 2 test episodes went through the tuning (nothing trains: no training episode)
        assert len(losses) == len(scored)  # one tuning step per episode
        moved = [(loss, gap) for loss, (gap, _) in zip(losses, scored)]
        assert sum(loss > 0 for loss, _ in moved) >= len(moved) // 2, moved  # at least half the episodes have a gradient
        assert all(gap > 1e-3 if loss > 0 else gap == 0 for loss, gap in moved), moved  # and it moved their scores
        assert all(unchanged for _, unchanged in scored)  # on a copy: the stored backbone is untouched


def official_pvig_ti_of_our_init() -> dict:
    """The authors' PViG-Ti file layout holding our seeded random PViG-Ti's weights. ``make_state``'s
    values (0.1 * randn everywhere, BatchNorm scales included) map every image to the same embedding,
    so no tuning could change a score; these weights tell images apart. Each official key gets the
    tensor ``checkpoint_filter_fn`` would load into our model from it (found by storage: the filter
    renames and reshapes without copying)."""
    from models.pvig import checkpoint_filter_fn

    official = official_layout.make_state(official_layout.pyramid_shapes((48, 96, 240, 384), (2, 2, 6, 2)))
    torch.manual_seed(0)
    ours = models.create_backbone("pvig_ti_224_gelu")
    by_storage = {v.untyped_storage().data_ptr(): k for k, v in official.items()}
    filled = 0
    for key, tensor in checkpoint_filter_fn(dict(official), ours).items():
        name = by_storage.get(tensor.untyped_storage().data_ptr())
        if name is not None:
            official[name] = ours.state_dict()[key].reshape(official[name].shape).clone()
            filled += 1
    assert filled == 475  # every official tensor but the classifier ("prediction.*")
    return official


class TestEpisodeImageSize:
    """Episode images take the input size the loaded weights were released for."""

    @pytest.mark.parametrize("backbone, backbone_from, img_size, expected", [
        ("vig_ti_224_gelu", "vig_ti.pth", None, 224),     # the authors' weights: their input size
        ("pvig_s_224_gelu", "pvig_s.pth.tar", None, 224),
        ("vig_ti_224_gelu", "vig_ti.pth", 112, 112),      # --img-size wins
        ("vig_ti_224_gelu", None, None, None),            # trained from scratch: the dataset's size
        ("vig_small_28", "best.pt", None, None),          # our small variants have no release
        (None, "best.pt", None, None),                    # the default backbone (Conv-4)
    ])
    def test_size(self, backbone, backbone_from, img_size, expected):
        from fewshot.config import Config
        from fewshot.model import episode_img_size

        config = Config(dataset="glyphs", backbone=backbone, backbone_from=backbone_from, img_size=img_size)
        assert episode_img_size(config) == expected
