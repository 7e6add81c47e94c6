import pytest

from fewshot.config import Config, ConfigError
from fewshot.model import build_model


@pytest.mark.parametrize("matcher, expected", [("prototype", 1.0), ("hungarian", 0.1), ("patch_voting", 0.1)])
def test_unset_temperature_keeps_the_matchers_own_default(matcher, expected):
    model = build_model(Config(matcher=matcher, backbone="test_vig"), 28, 1)
    assert model.matcher.temperature == pytest.approx(expected)


def test_given_temperature_reaches_the_matcher():
    model = build_model(Config(matcher="hungarian", temperature=0.5, backbone="test_vig"), 28, 1)
    assert model.matcher.temperature == pytest.approx(0.5)


def test_temperature_for_a_matcher_without_one_is_refused(monkeypatch):
    """Every shipped matcher takes a temperature now (k-NN's for its training surrogate), so the refusal is
    checked on a matcher class that has none."""
    import matchers

    class NoTemperature(matchers.PrototypeMatcher):
        def __init__(self, metric: str = "euclidean"):
            super().__init__(metric=metric)

    real_get = matchers.get
    monkeypatch.setattr(matchers, "get", lambda name: NoTemperature if name == "no_temperature" else real_get(name))
    with pytest.raises(ConfigError, match="matcher 'no_temperature' has no option --temperature"):
        build_model(Config(matcher="no_temperature", temperature=0.5, backbone="test_vig"), 28, 1)


def test_non_positive_temperature_is_refused():
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        Config(temperature=0.0)


def test_training_episodes_use_the_train_sizes(tmp_path):
    from fewshot.training import prepare

    run = prepare(Config(backbone="test_vig", way=5, shot=1, query=15, train_way=7, train_shot=2, train_query=3,
                         val_episodes=0, eval_episodes=3, track=False, run_dir=str(tmp_path / "r")))
    ep = run.train_sampler[0]
    assert (len(ep.classes), ep.support.numel(), ep.query.numel()) == (7, 14, 21)
    assert (run.test_bank.way, run.test_bank.shot, run.test_bank.query_per_class) == (5, 1, 15)


def test_non_positive_train_query_is_refused():
    with pytest.raises(ConfigError, match="train_query"):
        Config(train_query=0)
