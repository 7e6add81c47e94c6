"""Name registries and constructor options, shared by the ground-floor packages.

``episodes`` (datasets), ``matchers`` and ``prompts`` each keep one :class:`Registry` of their
components. This module imports nothing of the project and no third-party package, so every
package may use it without breaking the layering rule (the ground-floor packages never import
each other) and without an import loop.

The options of a registered class are read from its constructor: each keyword parameter with a
type hint (``int``, ``float``, ``bool``, ``str``, ``Optional[...]``, ``Literal[...]``) or, without
one, the type of its default. :func:`class_options` lists them (with the line of the class's
``Args:`` block that documents each), :func:`convert_options` checks and converts user-given
values (strings from a command line, or YAML scalars) against them.

Example:
    >>> reg = Registry("widget")
    >>> @reg.register("round")
    ... class Round:
    ...     '''A round widget.
    ...
    ...     Args:
    ...         size: diameter in pixels.
    ...     '''
    ...     def __init__(self, size: int = 3, shiny: bool = False):
    ...         self.size, self.shiny = size, shiny
    >>> reg.get("round") is Round
    True
    >>> convert_options(Round, {"size": "5", "shiny": "yes"}, "widget 'round'")
    {'size': 5, 'shiny': True}
"""
from __future__ import annotations

import difflib
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Iterator, Mapping, Optional, Tuple, TypeVar

__all__ = ["Registry", "Option", "OptionError", "closest_hint", "unknown_name_error", "class_options", "convert_options",
           "first_doc_line"]

T = TypeVar("T")

REQUIRED = inspect.Parameter.empty
"""Default of an option that has none (the caller must give it)."""


class OptionError(ValueError):
    """An option name or value that the class does not take; the message says which and why."""


def closest_hint(name: Any, valid) -> str:
    """`` Did you mean 'x'?`` for the valid name closest to ``name`` ('' when none is close)."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name_error(kind: str, name: Any, valid, cls=ValueError) -> ValueError:
    """``cls`` saying ``name`` is not a known ``kind``, listing the valid names and the closest one."""
    valid = sorted(valid)
    return cls(f"unknown {kind} {name!r}; valid names: {', '.join(valid) or '(none)'}.{closest_hint(name, valid)}")


class Registry(Generic[T]):
    """A name -> entry table; a duplicate name is an error, an unknown one lists the valid names.

    Args:
        kind: what the entries are, for messages ("matcher", "prompt", "dataset").
        load: called once before the first lookup (e.g. to import the modules that register).
    """

    def __init__(self, kind: str, load: Optional[Callable[[], None]] = None):
        self.kind = kind
        self._entries: Dict[str, T] = {}
        self._load, self._loading = load, False

    def _loaded(self) -> Dict[str, T]:
        if self._load is not None and not self._loading:  # registering modules may look names up
            self._loading = True
            try:
                self._load()
                self._load = None
            finally:
                self._loading = False
        return self._entries

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; registering the very same entry twice is a no-op (a reload)."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        old = self._entries.get(name)
        if old is not None and old is not entry:
            by = getattr(old, "__qualname__", None) or type(old).__name__
            raise ValueError(f"{self.kind} {name!r} is already registered (by {by}); pick another name")
        self._entries[name] = entry
        return entry

    def register(self, name: str, attribute: Optional[str] = None) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; ``attribute`` (e.g. ``"name"``) is set to ``name`` on the entry."""
        def deco(entry: T) -> T:
            self.add(name, entry)
            if attribute:
                setattr(entry, attribute, name)
            return entry
        return deco

    def get(self, name: str) -> T:
        entries = self._loaded()
        if name not in entries:
            raise unknown_name_error(self.kind, name, entries)
        return entries[name]

    __getitem__ = get

    def names(self) -> list:
        """The registered names, sorted."""
        return sorted(self._loaded())

    def items(self):
        return sorted(self._loaded().items())

    def __contains__(self, name) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._loaded())


# ----- options of a class ---------------------------------------------------------------------
_SCALARS = (bool, int, float, str)
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null")


@dataclass(frozen=True)
class Option:
    """One keyword option of a class's constructor."""

    name: str
    type: type                              # bool, int, float or str
    default: Any = REQUIRED
    choices: Optional[Tuple[Any, ...]] = None
    optional: bool = False                  # None is a valid value
    help: str = ""

    def type_name(self) -> str:
        """Short type for listings: ``int``, ``float``, ``{a|b}``, ``int|none``."""
        t = "{" + "|".join(map(str, self.choices)) + "}" if self.choices else self.type.__name__
        return f"{t}|none" if self.optional else t

    def convert(self, value: Any, where: str = "") -> Any:
        """``value`` (a string from a command line, or a YAML scalar) as this option's type;
        :class:`OptionError` naming the option when it is not one."""
        label = f"{where} option {self.name}" if where else f"option {self.name}"
        if value is None or (self.optional and isinstance(value, str) and value.strip().lower() in _NONE):
            if self.optional or self.default is None:
                return None
            raise OptionError(f"{label}: expected {self._expected()}, got {value!r}")
        out = _coerce(self.type, value)
        if out is _BAD:
            raise OptionError(f"{label}: expected {self._expected()}, got {value!r}")
        if self.choices is not None and out not in self.choices:
            raise OptionError(f"{label}: expected {self._expected()}, got {value!r}.{closest_hint(out, self.choices)}")
        return out

    def _expected(self) -> str:
        word = "one of " + ", ".join(map(str, self.choices)) if self.choices else _TYPE_WORDS[self.type]
        return word + (" or none" if self.optional else "")


_BAD = object()


def _coerce(typ: type, value: Any) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        return _BAD
    if isinstance(value, bool):  # bool is an int in Python; never take True for 1
        return _BAD
    if typ is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return _BAD
        return _BAD
    if typ is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                return _BAD
        return _BAD
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):  # YAML reads ``blocks: 0`` as a number
        return str(value)
    return _BAD


def _resolve_type(annotation: Any, default: Any) -> Tuple[type, Optional[tuple], bool]:
    """(scalar type, Literal choices or None, None allowed) of one parameter."""
    optional = default is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else inspect.Parameter.empty
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return type(args[0]), tuple(args), optional
    if annotation in _SCALARS:
        return annotation, None, optional
    if default is not None and default is not REQUIRED and type(default) in _SCALARS:
        return type(default), None, optional
    return str, None, optional


def first_doc_line(obj) -> str:
    """The first line of ``obj``'s docstring ('' when it has none)."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _args_help(cls) -> Dict[str, str]:
    """``{name: text}`` from the ``Args:`` block of ``cls``'s docstring (Google style)."""
    doc = inspect.getdoc(cls) or ""
    out: Dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return out
    indent, current = None, None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        ind = len(line) - len(line.lstrip())
        if indent is None:
            indent = ind
        if ind < indent:
            break
        text = line.strip()
        name, sep, rest = text.partition(":")
        if ind == indent and sep and name.isidentifier():
            current = name
            out[name] = rest.strip()
        elif current:
            out[current] = f"{out[current]} {text}".strip()
    return out


def class_options(cls, skip: Tuple[str, ...] = ()) -> Dict[str, Option]:
    """The keyword options of ``cls``'s constructor (``self``, ``*args``/``**kwargs`` and ``skip``
    left out), in signature order."""
    init = cls.__init__
    params = inspect.signature(init).parameters
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # a hint naming something unimportable: fall back to the defaults' types
        hints = {}
    docs = _args_help(cls)
    out = {}
    for p in params.values():
        if p.name == "self" or p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        typ, choices, optional = _resolve_type(hints.get(p.name, inspect.Parameter.empty), p.default)
        out[p.name] = Option(p.name, typ, p.default, choices, optional, docs.get(p.name, ""))
    return out


def convert_options(cls, values: Mapping[str, Any], where: str, skip: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """``values`` checked against ``cls``'s constructor and converted to its types.

    ``where`` names the component in messages (e.g. ``"matcher 'knn'"``). An unknown name raises
    :class:`OptionError` listing the valid ones with the closest as a hint; a value of the wrong
    type raises one naming the option and what it expects.
    """
    options = class_options(cls, skip)
    out = {}
    for name, value in values.items():
        if name not in options:
            raise OptionError(f"{where} has no option {name!r}; its options: {', '.join(options) or '(none)'}."
                              f"{closest_hint(name, options)}")
        out[name] = options[name].convert(value, where)
    return out
