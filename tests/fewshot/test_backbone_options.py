"""``--backbone-opt NAME=VALUE``: arguments of the backbone's constructor, typed like YAML scalars, stored with the
run so that eval and predict rebuild the same network, refused in one line when the backbone does not take them,
and checked when a run's weights are loaded with ``--backbone-from``."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from fewshot.cli import build_config, cli, train as train_cmd
from fewshot.config import Config, ConfigError, merge
from fewshot.evaluate_run import load_run_config, load_trained_model
from fewshot.model import build_model
from fewshot.training import train


def parsed(*flags) -> Config:
    """The Config ``fewshot train <flags>`` runs with."""
    params = train_cmd.make_context("train", list(flags)).params
    return build_config(None, {k: v for k, v in params.items()
                               if k not in ("config_file", "as_json", "resume", "progress")})


def test_options_reach_the_backbone_typed():
    config = parsed("--backbone", "test_vig", "--matcher", "dn4", "--backbone-opt", "num_knn=3",
                    "--backbone-opt", "drop_path_rate=0.2")
    assert dict(config.backbone_opts) == {"num_knn": 3, "drop_path_rate": 0.2}
    assert type(config.backbone_opts["num_knn"]) is int
    backbone = build_model(config, 28, 1).backbone
    default = build_model(config.replace(backbone_opts={}), 28, 1).backbone
    assert backbone.knn_per_block[0] == 3 and default.knn_per_block[0] == 4  # test_vig's own k is 4
    assert backbone.blocks[-1].grapher.drop_path.drop_prob == pytest.approx(0.2)
    assert isinstance(default.blocks[-1].grapher.drop_path, torch.nn.Identity)


def test_no_options_keep_the_digest_of_older_runs():
    assert Config().digest() == merge(Config(), {"backbone_opts": {}}).digest()
    assert merge(Config(), {"backbone_opts": {"num_knn": 5}}).digest() != Config().digest()


def test_an_argument_the_backbone_does_not_take_is_one_line_naming_it(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--dataset", "glyphs", "--backbone", "test_vig", "--backbone-opt",
                                      "depht=3", "--episodes", "1", "--no-track", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code != 0 and result.exc_info[0] is SystemExit
    assert "--backbone-opt depht: backbone 'test_vig' takes no argument 'depht'" in result.output
    assert "Traceback" not in result.output


def test_a_value_the_backbone_refuses_names_the_option():
    with pytest.raises(ConfigError, match=r"backbone 'test_vig' with --backbone-opt stem_stride=3: stem_stride must be"):
        build_model(merge(Config(), {"backbone": "test_vig", "backbone_opts": {"stem_stride": 3}}), 28, 1)


@pytest.mark.parametrize("name", ["img_size", "in_chans", "num_classes", "pretrained"])
def test_arguments_the_data_fixes_are_refused(name):
    with pytest.raises(ConfigError, match=f"backbone_opts: {name} cannot be set"):
        merge(Config(), {"backbone_opts": {name: 1}})


def test_changing_the_backbone_drops_the_old_ones_arguments():
    base = merge(Config(), {"backbone": "test_vig", "backbone_opts": {"num_knn": 3}})
    assert dict(build_config(None, {"backbone_opts": {"drop_path_rate": "0.1"}}, base=base).backbone_opts) == \
        {"num_knn": 3, "drop_path_rate": 0.1}
    assert dict(build_config(None, {"backbone": "conv4"}, base=base).backbone_opts) == {}


@pytest.fixture(scope="module")
def run_with_options(tmp_path_factory):
    """A test_vig + DN4 run trained for 2 glyphs episodes with ``--backbone-opt num_knn=3``."""
    run = tmp_path_factory.mktemp("opts") / "run"
    config = Config(dataset="glyphs", backbone="test_vig", matcher="dn4", backbone_opts={"num_knn": 3}, way=3,
                    shot=1, query=2, episodes=2, val_episodes=0, eval_episodes=2, augment="none", track=False,
                    threads=1, run_dir=str(run))
    train(config, progress=False)
    return run


def test_a_trained_run_is_rebuilt_with_its_options(run_with_options):
    config = load_run_config(run_with_options)
    assert dict(config.backbone_opts) == {"num_knn": 3}

    class Images:  # what load_trained_model reads of the data: the image shape
        image_shape = (1, 28, 28)
    model, _ = load_trained_model(run_with_options, config, Images(), checkpoint="last")  # no validation: no best.pt
    assert model.backbone.knn_per_block[0] == 3


def test_backbone_from_a_run_needs_its_options(run_with_options):
    prompted = dict(dataset="glyphs", backbone="test_vig", prompt="vpt", backbone_from=str(run_with_options / "last.pt"))
    with pytest.raises(ConfigError, match=r"trained with --backbone-opt num_knn=3; give the same to load it "
                                          r"\(given: no --backbone-opt\)"):
        build_model(merge(Config(), prompted), 28, 1)
    model = build_model(merge(Config(), {**prompted, "backbone_opts": {"num_knn": 3}}), 28, 1)
    assert model.backbone.knn_per_block[0] == 3
