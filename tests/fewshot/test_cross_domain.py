"""Cross-domain episodes: a backbone trained on one dataset, prompted and scored on another's episodes."""
from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from fewshot.cli import cli
from fewshot.prompting import backbone_source

TINY = ["--way", "3", "--shot", "1", "--query", "2", "--eval-episodes", "4", "--val-episodes", "2", "--val-every", "2",
        "--no-track", "--no-progress", "--threads", "1", "--backbone", "test_vig"]


@pytest.fixture(scope="module")
def glyphs_run(tmp_path_factory):
    """A test_vig trained for 2 episodes on glyphs: runs/<run>/best.pt with its config.yaml."""
    run = tmp_path_factory.mktemp("source") / "glyphs-run"
    r = CliRunner().invoke(cli, ["train", "--dataset", "glyphs", *TINY, "--episodes", "2", "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    return run


def test_the_source_dataset_is_read_from_the_run_beside_the_file(glyphs_run, tmp_path):
    assert backbone_source(glyphs_run / "best.pt") == "glyphs"
    (tmp_path / "vig_ti.pth").write_bytes(b"")  # an authors' file: no run around it
    assert backbone_source(tmp_path / "vig_ti.pth") is None
    (tmp_path / "config.yaml").write_text(":: not yaml [")
    assert backbone_source(tmp_path / "vig_ti.pth") is None


def test_a_glyphs_backbone_prompted_on_digits_episodes_says_so_and_evaluates(glyphs_run, tmp_path, caplog):
    run = tmp_path / "digits-vgp"
    args = ["train", "--dataset", "digits", *TINY, "--episodes", "2", "--backbone-from", str(glyphs_run / "best.pt"),
            "--prompt", "vgp", "--run-dir", str(run), "--json"]
    with caplog.at_level(logging.INFO):
        r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "cross-domain: the backbone was trained on glyphs" in caplog.text
    assert "the episodes come from digits" in caplog.text
    result = json.loads(r.output[r.output.index("{"):])
    assert result["dataset"] == "digits" and result["trainable_params"] > 0 and result["test_episodes"] == 4
    r = CliRunner().invoke(cli, ["eval", "--run-dir", str(run), "--eval-episodes", "3", "--no-track", "--json"])
    assert r.exit_code == 0, r.output


def test_an_in_domain_backbone_is_not_called_cross_domain(glyphs_run, tmp_path, caplog):
    args = ["train", "--dataset", "glyphs", *TINY, "--episodes", "1", "--backbone-from", str(glyphs_run / "best.pt"),
            "--prompt", "gpf", "--run-dir", str(tmp_path / "in-domain")]
    with caplog.at_level(logging.INFO):
        r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "cross-domain" not in caplog.text
