"""registry: the name table shared by datasets, matchers and prompts, and options read from a constructor."""
from typing import Literal, Optional

import pytest

from registry import OptionError, Registry, class_options, convert_options


class Lamp:
    """A lamp for the tests.

    Args:
        watts: power drawn.
        colour: ``"warm"`` or ``"cold"``;
            a second line of help.
    """

    def __init__(self, watts: int = 40, colour: Literal["warm", "cold"] = "warm", dimmable: bool = False,
                 ratio: float = 0.5, label="hall", timer: Optional[int] = None):
        pass


class TestRegistry:
    def test_lookup_listing_and_the_attribute_set_on_the_entry(self):
        reg = Registry("lamp")
        reg.register("lamp", attribute="registry_name")(Lamp)
        assert reg.get("lamp") is Lamp and reg["lamp"] is Lamp and Lamp.registry_name == "lamp"
        assert reg.names() == ["lamp"] and "lamp" in reg and len(reg) == 1

    def test_a_name_taken_by_another_entry_is_refused_but_the_same_entry_may_register_again(self):
        reg = Registry("lamp")
        reg.add("lamp", Lamp)
        reg.add("lamp", Lamp)  # a module reloaded
        with pytest.raises(ValueError, match="lamp 'lamp' is already registered \\(by Lamp\\)"):
            reg.add("lamp", type("Other", (), {}))

    def test_unknown_names_list_the_valid_ones_and_the_closest(self):
        reg = Registry("lamp")
        for name in ("desk", "floor", "ceiling"):
            reg.add(name, object())
        with pytest.raises(ValueError) as err:
            reg.get("flor")
        assert str(err.value) == "unknown lamp 'flor'; valid names: ceiling, desk, floor. Did you mean 'floor'?"

    def test_the_loader_runs_once_before_the_first_lookup(self):
        calls = []
        reg = Registry("lamp", load=lambda: (calls.append(1), reg.add("late", Lamp)))
        assert calls == []
        assert reg.names() == ["late"] and reg.get("late") is Lamp and calls == [1]


class TestOptions:
    def test_types_defaults_choices_and_help_come_from_the_constructor(self):
        opts = class_options(Lamp)
        assert list(opts) == ["watts", "colour", "dimmable", "ratio", "label", "timer"]
        assert [opts[n].type for n in opts] == [int, str, bool, float, str, int]
        assert opts["colour"].choices == ("warm", "cold") and opts["colour"].type_name() == "{warm|cold}"
        assert opts["timer"].optional and opts["timer"].type_name() == "int|none"
        assert opts["watts"].help == "power drawn."
        assert opts["colour"].help == '``"warm"`` or ``"cold"``; a second line of help.'

    @pytest.mark.parametrize("given,expected", [
        ({"watts": "60"}, {"watts": 60}),
        ({"watts": 60}, {"watts": 60}),
        ({"ratio": "0.25", "dimmable": "yes"}, {"ratio": 0.25, "dimmable": True}),
        ({"ratio": 1, "dimmable": False}, {"ratio": 1.0, "dimmable": False}),
        ({"dimmable": "off"}, {"dimmable": False}),
        ({"label": 7}, {"label": "7"}),          # YAML reads a bare 7 as a number
        ({"timer": "none"}, {"timer": None}),
        ({"timer": "5"}, {"timer": 5}),
        ({"colour": "cold"}, {"colour": "cold"}),
    ])
    def test_values_are_converted_to_the_declared_type(self, given, expected):
        out = convert_options(Lamp, given, "lamp 'desk'")
        assert out == expected and all(type(out[k]) is type(v) for k, v in expected.items())

    @pytest.mark.parametrize("given,message", [
        ({"wats": 3}, "lamp 'desk' has no option 'wats'; its options: watts, colour, dimmable, ratio, label, "
                      "timer. Did you mean 'watts'?"),
        ({"watts": "bright"}, "lamp 'desk' option watts: expected an integer, got 'bright'"),
        ({"watts": True}, "lamp 'desk' option watts: expected an integer, got True"),
        ({"watts": 2.5}, "lamp 'desk' option watts: expected an integer, got 2.5"),
        ({"dimmable": "maybe"}, "lamp 'desk' option dimmable: expected true or false, got 'maybe'"),
        ({"ratio": "half"}, "lamp 'desk' option ratio: expected a number, got 'half'"),
        ({"colour": "cld"}, "lamp 'desk' option colour: expected one of warm, cold, got 'cld'. Did you mean 'cold'?"),
        ({"watts": "none"}, "lamp 'desk' option watts: expected an integer, got 'none'"),
    ])
    def test_bad_names_and_values_say_which_option_and_what_it_takes(self, given, message):
        with pytest.raises(OptionError) as err:
            convert_options(Lamp, given, "lamp 'desk'")
        assert str(err.value) == message
