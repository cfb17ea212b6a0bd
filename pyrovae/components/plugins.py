"""Plug-ins by name: the registries of priors, likelihoods and guide families, their options checked
against their constructors, and building one from its name and options (what configs store)."""

from __future__ import annotations

import collections.abc
import inspect
import math
import numbers
import types
import typing

from ..errors import ConfigError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .priors import PRIORS

#: What each kind of plug-in is built from (its constructor's first argument) and its registry.
REGISTRIES = {"prior": PRIORS, "likelihood": LIKELIHOODS, "guide": GUIDES}


def _accepts(annotation, value) -> str | None:
    """None when ``value`` fits the type ``annotation`` (as options arrive from JSON or the command line: a
    list for a tuple), else what the annotation accepts, in words. An annotation it does not know (a user's
    class, ``Any``) accepts anything: the constructor then checks the value itself."""
    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _accepts(args[0], value)
    if origin in (typing.Union, types.UnionType):
        needs = [_accepts(a, value) for a in args]
        return None if None in needs else " or ".join(needs)
    if annotation is type(None):
        return None if value is None else "null"
    if origin is typing.Literal:
        return None if value in args else "one of " + ", ".join(map(repr, args))
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false"
    if annotation is int:
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "an integer"
    if annotation is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    if annotation is str:
        return None if isinstance(value, str) else "a string"
    if origin in (tuple, list, collections.abc.Sequence) or annotation in (tuple, list):
        item = args[0] if args and (origin is not tuple or len(args) == 2 and args[1] is Ellipsis) else None
        items = {int: "a list of integers", float: "a list of finite numbers"}.get(item, "a list")
        if not isinstance(value, (list, tuple)) or (item is not None and any(_accepts(item, v) for v in value)):
            return items
    return None


def _hints(cls) -> dict:
    """The constructor's annotations, resolved (``from __future__ import annotations`` leaves strings); {} when
    they cannot be."""
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # a name only imported for type checking, a typo in a user's plug-in
        return {}


def check_plugin(what: str, name: str, options: dict) -> None:
    """Raise :class:`~pyrovae.errors.ConfigError` unless ``name`` is a registered ``what`` (``"prior"``,
    ``"likelihood"`` or ``"guide"``) whose constructor takes every key of ``options``, each of the type its
    annotation (else its default's type) says: an integer where an ``int`` belongs (``num_components=2.5`` is
    refused, not truncated), a finite number for a ``float``, true/false for a ``bool``, one of a ``Literal``'s
    choices. The error names the plug-in, the option, the value and the type it accepts."""
    registry = REGISTRIES[what]
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    cls = registry[name]
    params = list(inspect.signature(cls).parameters.values())[1:]  # the first is z_dim or x_shape
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(f"{what} {cls.__name__} has no option {', '.join(map(repr, unknown))}; it "
                              f"takes {', '.join(accepted) or 'no options'}")
    hints = _hints(cls) if inspect.isclass(cls) else {}
    for p in params:
        if p.name not in options:
            continue
        annotation = hints.get(p.name, p.annotation if not isinstance(p.annotation, str) else inspect.Parameter.empty)
        if annotation is inspect.Parameter.empty and p.default not in (inspect.Parameter.empty, None):
            annotation = type(p.default)  # no annotation: the default's type
        needs = _accepts(annotation, options[p.name])
        if needs is not None:
            value = options[p.name]
            default = "" if p.default is inspect.Parameter.empty else f" (default {p.default!r})"
            raise ConfigError(f"{what} {name!r}: option {p.name}={value!r} ({type(value).__name__}) must be "
                              f"{needs}{default}")


def build_plugin(what: str, name: str, first, options: dict):
    """``REGISTRIES[what][name](first, **options)``: a prior (``first`` = z_dim), likelihood (x_shape) or
    guide family (z_dim).

    Raises:
        ConfigError: an unknown name or options the constructor does not take or accept.
    """
    check_plugin(what, name, options)
    try:
        return REGISTRIES[what][name](first, **options)
    except TypeError as e:
        raise ConfigError(f"{what} {name!r} does not take the options {options}: {e}") from e


def fitting_likelihoods(x, x_shape: tuple[int, ...]) -> list[str]:
    """The registered likelihoods (built with their default options) whose support holds all of ``x``
    ``(batch, *x_shape)``: what an error about a likelihood that does not fit the data suggests instead."""
    from ..errors import DataError

    names = []
    for name, cls in LIKELIHOODS.items():
        try:
            cls(tuple(x_shape)).check_support(x)
        except (DataError, ValueError, TypeError):
            continue
        names.append(name)
    return names
