"""Matcher and prompt options from their classes: --matcher-opt / --prompt-opt, matcher_opts: / prompt_opts:
in YAML, the shorthand options (--metric, --prompt-nodes, ...), and a matcher added in a file of its own."""
import importlib
import json
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

import matchers
from fewshot.cli import build_config, cli
from fewshot.config import Config, ConfigError, merge
from fewshot.model import build_model

TINY = ["--dataset", "glyphs", "--backbone", "test_vig", "--way", "3", "--shot", "1", "--query", "2",
        "--eval-episodes", "4", "--val-episodes", "0", "--episodes", "2", "--no-progress", "--threads", "1",
        "--no-track"]


class TestConfig:
    def test_options_are_converted_to_the_constructor_types_and_reach_the_matcher(self):
        cfg = Config(matcher="hungarian", matcher_opts={"solver": "sinkhorn", "iters": "7"})
        assert dict(cfg.matcher_opts) == {"solver": "sinkhorn", "iters": 7}
        m = build_model(cfg.replace(backbone="test_vig"), 28, 1).matcher
        assert (m.solver, m.iters) == ("sinkhorn", 7)

    @pytest.mark.parametrize("matcher,opts,attrs", [
        ("knn", {"k": "1"}, {"k": 1}),
        ("patch_voting", {"k": "2", "discriminative": "true"}, {"k": 2, "discriminative": True}),
    ])
    def test_options_that_had_no_cli_before_are_settable(self, matcher, opts, attrs):
        m = build_model(Config(matcher=matcher, matcher_opts=opts, backbone="test_vig"), 28, 1).matcher
        assert {k: getattr(m, k) for k in attrs} == attrs

    def test_a_shorthand_option_equals_the_option_mapping(self):
        a = build_model(Config(metric="cosine", temperature=0.5, backbone="test_vig"), 28, 1).matcher
        b = build_model(Config(matcher_opts={"metric": "cosine", "temperature": 0.5}, backbone="test_vig"), 28, 1).matcher
        assert (a.metric, a.temperature) == (b.metric, b.temperature) == ("cosine", 0.5)

    def test_prompt_options_reach_the_prompt(self):
        from fewshot.prompting import build_prompted_model
        import models

        cfg = Config(prompt="delete", prompt_opts={"keep": "0.5", "scorer": "relevance"}, prompt_blocks="1")
        model = build_prompted_model(cfg, models.create_backbone("test_vig"), matchers.create("prototype"))
        assert model.prompt.extra_repr() == "from_block=1, keep=0.5, scorer='relevance', block_mask=0.0"

    @pytest.mark.parametrize("changes,message", [
        ({"matcher": "knn", "matcher_opts": {"kk": 1}}, "matcher 'knn' has no option 'kk'; its options: k, metric, "
                                                         "weighted, level, surrogate, temperature. Did you mean 'k'?"),
        ({"matcher": "knn", "matcher_opts": {"k": "two"}}, "matcher 'knn' option k: expected an integer, got 'two'"),
        ({"matcher": "hungarian", "matcher_opts": {"solver": "sinkorn"}}, "Did you mean 'sinkhorn'?"),
        ({"prompt": "vgp", "prompt_opts": {"rank": 2.5}}, "prompt 'vgp' option rank: expected an integer, got 2.5"),
        ({"matcher": "prototype", "metric": "cosine", "matcher_opts": {"metric": "euclidean"}},
         "--metric 'cosine' and --matcher-opt metric='euclidean' disagree"),
        ({"prompt_nodes": 8}, "prompt 'none' has no option --prompt-nodes"),
        ({"matcher_opts": {"k": [1, 2]}}, "matcher_opts: the value of k must be one number"),
        ({"matcher_opts": "k=1"}, "matcher_opts must be a mapping"),
    ])
    def test_bad_options_are_refused_naming_them(self, changes, message):
        with pytest.raises(ConfigError) as err:
            merge(Config(), changes)
        assert message in str(err.value)

    def test_configs_with_options_stay_hashable_and_digest_by_value(self):
        a = Config(matcher="knn", matcher_opts={"k": "3"})
        b = Config(matcher="knn", matcher_opts={"k": 3})
        assert a == b and hash(a) == hash(b) and a.digest() == b.digest()
        assert a.digest() != Config(matcher="knn").digest()
        assert json.loads(json.dumps(a.to_dict()))["matcher_opts"] == {"k": 3}

    def test_a_saved_config_without_option_fields_resumes_and_changed_options_are_named(self):
        cfg = Config(matcher="knn")
        saved = cfg.to_dict()
        del saved["matcher_opts"], saved["prompt_opts"]  # a checkpoint written before these fields
        assert cfg.differences(saved) == []
        assert merge(Config(), saved) == cfg
        assert cfg.replace(matcher_opts={"k": 2}).differences(saved) == ["matcher_opts: {} -> {'k': 2}"]


class TestBuildConfig:
    def test_yaml_mappings_merge_with_command_line_options_key_by_key(self, tmp_path):
        p = tmp_path / "c.yaml"
        p.write_text("matcher: patch_voting\nmatcher_opts:\n  k: 2\n  discriminative: true\n")
        cfg = build_config(str(p), {"matcher_opts": {"k": "4"}})
        assert dict(cfg.matcher_opts) == {"k": 4, "discriminative": True}

    def test_yaml_options_of_a_matcher_named_on_the_command_line_are_accepted(self, tmp_path):
        p = tmp_path / "c.yaml"
        p.write_text("matcher_opts: {k: 2}\nprompt_nodes: 6\n")
        cfg = build_config(str(p), {"matcher": "knn", "prompt": "vpt"})
        assert cfg.component_options("matcher") == {"k": 2} and cfg.component_options("prompt") == {"num_nodes": 6}

    def test_another_matcher_drops_the_base_runs_options_of_the_old_one(self):
        base = Config(matcher="knn", matcher_opts={"k": 3})
        assert build_config(None, {"matcher": "hungarian"}, base=base).matcher_opts == {}
        assert dict(build_config(None, {"matcher_opts": {"weighted": "1"}}, base=base).matcher_opts) == \
            {"k": 3, "weighted": True}


class TestCommandLine:
    def test_matcher_and_prompt_options_on_train(self, tmp_path):
        r = CliRunner().invoke(cli, ["train", *TINY, "--matcher", "patch_voting", "--matcher-opt", "k=2",
                                     "--matcher-opt", "discriminative=yes", "--run-dir", str(tmp_path / "r"), "--json"])
        assert r.exit_code == 0, r.output
        saved = (tmp_path / "r" / "config.yaml").read_text()
        assert "matcher_opts:" in saved and "discriminative: true" in saved and "k: 2" in saved

    @pytest.mark.parametrize("args,message", [
        (["--matcher", "knn", "--matcher-opt", "kk=1"], "has no option 'kk'; its options: k, metric, weighted, level, "
                                                        "surrogate, temperature. Did you mean 'k'?"),
        (["--matcher", "knn", "--matcher-opt", "k=x"], "matcher 'knn' option k: expected an integer, got 'x'"),
        (["--matcher-opt", "metric"], "expected NAME=VALUE, got 'metric'"),
        (["--prompt", "vgp", "--prompt-opt", "rank=low"], "prompt 'vgp' option rank: expected an integer"),
        (["--matcher", "protoype"], "Did you mean 'prototype'?"),
    ])
    def test_bad_options_exit_2_with_one_line(self, tmp_path, args, message):
        r = CliRunner().invoke(cli, ["train", *TINY, "--run-dir", str(tmp_path / "r"), *args])
        assert r.exit_code == 2, r.output
        assert message in r.output and "Traceback" not in r.output
        assert not (tmp_path / "r").exists()

    @pytest.mark.parametrize("command,names,option", [
        ("matchers", ["prototype", "knn", "hungarian", "patch_voting"], "solver"),
        ("prompts", ["vpt", "vgp", "damvp", "none"], "num_nodes"),
    ])
    def test_listings_name_each_class_with_its_options(self, command, names, option):
        r = CliRunner().invoke(cli, [command, "--json"])
        assert r.exit_code == 0, r.output
        table = json.loads(r.output)
        assert set(names) <= set(table)
        hung = table["hungarian" if command == "matchers" else "vpt"]
        assert any(o["name"] == option for o in hung["options"]) and hung["doc"]
        text = CliRunner().invoke(cli, [command]).output
        assert all(f"{n}: " in text for n in names)


MATCHER_MODULE = '''
"""A matcher written in a file of its own: only this file registers it."""
import torch

from matchers import Matcher, register_matcher, validate_episode


@register_matcher("scaled_proto_test")
class ScaledPrototype(Matcher):
    """Negative squared distance to class means, times a scale.

    Args:
        scale: logits are multiplied by it.
    """

    made = []

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)
        type(self).made.append(self.scale)

    def forward(self, support, support_labels, query):
        way = validate_episode(support, support_labels, query)
        means = torch.stack([support[support_labels == c].mean(0) for c in range(way)])
        return -self.scale * torch.cdist(query, means) ** 2
'''


@pytest.fixture
def throwaway_matcher(tmp_path, monkeypatch):
    """Register a matcher from a temporary module (and forget it afterwards)."""
    (tmp_path / "my_matcher_mod.py").write_text(textwrap.dedent(MATCHER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("my_matcher_mod")
    yield module.ScaledPrototype
    matchers.base._REGISTRY._entries.pop("scaled_proto_test", None)
    sys.modules.pop("my_matcher_mod", None)


def test_a_matcher_in_its_own_file_gets_its_options_on_the_command_line(tmp_path, throwaway_matcher):
    r = CliRunner().invoke(cli, ["train", *TINY, "--matcher", "scaled_proto_test", "--matcher-opt", "scale=0.25",
                                 "--run-dir", str(tmp_path / "r"), "--json"])
    assert r.exit_code == 0, r.output
    assert throwaway_matcher.made and set(throwaway_matcher.made) == {0.25}
    r = CliRunner().invoke(cli, ["train", *TINY, "--matcher", "scaled_proto_test", "--matcher-opt", "scale=big",
                                 "--run-dir", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "matcher 'scaled_proto_test' option scale: expected a number, got 'big'" in r.output
    listing = CliRunner().invoke(cli, ["matchers"]).output
    assert "scaled_proto_test: Negative squared distance to class means, times a scale." in listing
    assert "logits are multiplied by it." in listing


def test_a_matcher_in_its_own_file_gets_its_options_from_yaml(tmp_path, throwaway_matcher):
    p = tmp_path / "c.yaml"
    p.write_text("matcher: scaled_proto_test\nmatcher_opts:\n  scale: 3\n")
    cfg = build_config(str(p), {"backbone": "test_vig"})
    m = build_model(cfg, 28, 1).matcher
    assert isinstance(m, throwaway_matcher) and m.scale == 3.0
    support, labels, query = torch.randn(4, 8), torch.tensor([0, 1, 0, 1]), torch.randn(3, 8)
    torch.testing.assert_close(m(support, labels, query), 3.0 * matchers.create("prototype")(support, labels, query))
