"""Plug-ins by name: the registries of priors, likelihoods and guide families, their options checked
against their constructors, and building one from its name and options (what configs store)."""

from __future__ import annotations

import inspect

from ..errors import ConfigError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .priors import PRIORS

#: What each kind of plug-in is built from (its constructor's first argument) and its registry.
REGISTRIES = {"prior": PRIORS, "likelihood": LIKELIHOODS, "guide": GUIDES}


def check_plugin(what: str, name: str, options: dict) -> None:
    """Raise :class:`~pyrovae.errors.ConfigError` unless ``name`` is a registered ``what`` (``"prior"``,
    ``"likelihood"`` or ``"guide"``) whose constructor takes every key of ``options``."""
    registry = REGISTRIES[what]
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    params = list(inspect.signature(registry[name]).parameters.values())[1:]  # the first is z_dim or x_shape
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"{what} {registry[name].__name__} has no option {', '.join(map(repr, unknown))}; it "
                          f"takes {', '.join(accepted) or 'no options'}")


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
