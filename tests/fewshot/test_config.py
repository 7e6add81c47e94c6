import pytest
import torch

from fewshot.checkpoint import CheckpointError, load_checkpoint, save_atomic
from fewshot.config import Config, ConfigError, load_yaml, merge


def test_yaml_overrides_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("way: 20\nshot: 5\ndata-root: /data\n")
    cfg = merge(Config(), load_yaml(p))
    assert (cfg.way, cfg.shot, cfg.data_root) == (20, 5, "/data")


def test_unknown_keys_are_listed_with_a_suggestion(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("wya: 5\nfoo: 1\n")
    with pytest.raises(ConfigError, match=r"unknown configuration keys: foo, wya \(did you mean way\?\)"):
        load_yaml(p)


def test_python_tags_are_refused_by_safe_loading(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("way: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid \\(safe\\) YAML"):
        load_yaml(p)


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(p)


@pytest.mark.parametrize("bad", [dict(way=1), dict(shot=0), dict(episodes=-3), dict(lr=0.0), dict(device="tpu")])
def test_bad_values_are_refused_by_name(bad):
    with pytest.raises(ConfigError, match=list(bad)[0]):
        Config(**bad)


def test_digest_ignores_bookkeeping_but_not_results():
    base = Config()
    assert base.digest() == base.replace(run_dir="x", experiment="y", threads=2).digest()
    assert base.digest() != base.replace(lr=2e-3).digest()


def test_checkpoint_round_trip_and_safe_loading(tmp_path):
    p = tmp_path / "ck.pt"
    save_atomic({"model": {"w": torch.arange(3)}, "step": 4}, p)
    assert load_checkpoint(p)["step"] == 4
    assert [x.name for x in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    p = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, p)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(p)


def test_missing_and_truncated_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    p = tmp_path / "half.pt"
    save_atomic({"model": {"w": torch.zeros(1000)}}, p)
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="half.pt"):
        load_checkpoint(p)


def test_differences_name_changed_settings_and_accept_fields_added_since():
    base = Config(lr=1e-3, prompt="damvp")
    saved = base.to_dict()
    del saved["clusters"]                     # a run written before the field existed
    del saved["matcher_opts"], saved["prompt_opts"]
    saved["run_dir"] = "elsewhere"            # bookkeeping: never compared
    assert base.differences(saved) == []
    assert base.replace(lr=2e-3).differences(saved) == ["lr: 0.001 -> 0.002"]
    assert base.replace(clusters=8).differences(saved) == ["clusters: 4 -> 8"]


def test_the_default_run_is_the_method_with_its_own_training_queries():
    cfg = Config()
    assert (cfg.backbone, cfg.matcher, cfg.augment, cfg.train_query) == ("vig_small_c4_28", "dn4", "affine", 5)
    assert (cfg.query, cfg.effective_train_query) == (15, 5)   # evaluation keeps --query


@pytest.mark.parametrize("changes", [dict(backbone="conv4"), dict(prompt="vgp"), dict(adapt="tune")])
def test_a_named_backbone_or_a_prompted_run_trains_on_query_images(changes):
    cfg = Config(**changes)
    assert cfg.train_query is None and cfg.effective_train_query == cfg.query == 15
    assert Config().replace(**changes).effective_train_query == 15   # the method's 5 is refilled, not kept


@pytest.mark.parametrize("changes", [dict(), dict(backbone="conv4")])
def test_an_explicit_train_query_is_kept(changes):
    assert Config(train_query=7, **changes).effective_train_query == 7
    assert Config(train_query=7).replace(**changes).effective_train_query == 7


def test_a_run_saved_before_the_method_had_its_own_query_count_reads_as_trained():
    from fewshot.config import legacy_settings

    saved = {**Config().to_dict(), "train_query": None, "query": 10}   # what such a run stored
    assert merge(Config(), legacy_settings(saved)).effective_train_query == 10
    assert merge(Config(), legacy_settings(Config().to_dict())).effective_train_query == 5


def test_the_prepared_default_run_trains_on_five_queries_and_tests_on_fifteen(tmp_path):
    import fewshot.training as training

    run = training.prepare(Config(run_dir=str(tmp_path / "run"), track=False, threads=1, eval_episodes=2,
                                  val_episodes=2))
    assert run.train_sampler[0].query.numel() == 5 * 5
    assert run.test_bank[0].query.numel() == 5 * 15


def test_differences_compare_the_training_query_count_that_trained():
    prompted = Config(prompt="vgp")                          # train_query unset: --query's 15 trains
    assert prompted.differences({**prompted.to_dict(), "train_query": 15}) == []
    assert prompted.replace(train_query=15).differences(prompted.to_dict()) == []
    assert Config().differences({**Config().to_dict(), "train_query": None}) == ["train_query: 15 -> 5"]
