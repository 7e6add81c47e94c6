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


def test_temperature_for_a_matcher_without_one_is_refused():
    with pytest.raises(ConfigError, match="no option 'temperature'"):
        build_model(Config(matcher="knn", temperature=0.5, backbone="test_vig"), 28, 1)


def test_non_positive_temperature_is_refused():
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        Config(temperature=0.0)
