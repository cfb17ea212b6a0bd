"""Plug-ins by name: the registries of priors, likelihoods and guide families, their options checked
against their constructors, and building one from its name and options (what configs store).

A plug-in of one's own is registered by name with :func:`register_prior`, :func:`register_likelihood` or
:func:`register_guide` (also ``pyrovae.register_*``); a run folder trained with it then reloads (``evaluate``,
``sample``, ``diagnose``, ``load_run``) in any process that has registered it. For the command line, a
package exposes its plug-ins through the entry-point group ``pyrovae.plugins`` (:data:`ENTRY_POINT_GROUP`),
loaded the first time a name is not found::

    # pyproject.toml of the package that holds the plug-ins
    [project.entry-points."pyrovae.plugins"]
    my_plugins = "my_package.pyrovae_plugins"    # a module that calls pyrovae.register_* when imported
                                                 # (or "my_package:register", a function called once)
"""

from __future__ import annotations

import collections.abc
import importlib.metadata
import inspect
import logging
import math
import numbers
import types
import typing

from ..errors import ArgumentTypeError, ConfigError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .mixed import MixedLikelihood
from .priors import PRIORS

LIKELIHOODS.setdefault("mixed", MixedLikelihood)  # defined beside likelihoods.py, on its helpers

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
        load_entry_points()
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {', '.join(registry)} (a {what} of your own: "
                          f"register it with pyrovae.register_{what} before use, or through the "
                          f"{ENTRY_POINT_GROUP!r} entry points)")
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


# --- plug-ins of one's own --------------------------------------------------------------------------------

log = logging.getLogger(__name__)

#: The entry-point group whose entries (modules that register plug-ins when imported, or functions called
#: once with no arguments) are loaded the first time a plug-in name is not found.
ENTRY_POINT_GROUP = "pyrovae.plugins"
_loaded_entry_points: set[str] = set()

#: What each kind of plug-in must have (see the contracts in :mod:`.priors`, :mod:`.likelihoods`, :mod:`.guides`).
PROTOCOLS = {"prior": ("forward",), "likelihood": ("forward", "check_support"),
             "guide": ("forward", "num_features", "params")}


def load_entry_points() -> list[str]:
    """Load the entry points of :data:`ENTRY_POINT_GROUP` not loaded yet (each once per process); returns
    their names. An entry point that fails to load is logged and skipped."""
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _loaded_entry_points:
            continue
        _loaded_entry_points.add(key)
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, (type, types.ModuleType)):
                obj()
        except Exception as e:  # noqa: BLE001 - another package's plug-ins must not break pyrovae
            log.warning("pyrovae plug-ins: the entry point %s = %s failed to load (%s: %s)", ep.name, ep.value,
                        type(e).__name__, e)
            continue
        loaded.append(ep.name)
    return loaded


def _check_protocol(what: str, cls) -> None:
    """Raise :class:`~pyrovae.errors.ArgumentTypeError` unless ``cls`` is an ``nn.Module`` class with what a
    ``what`` needs; where it builds from its first argument alone (``z_dim`` = 2, or ``x_shape`` = (1, 4, 4)),
    the built instance is checked too (a prior's event shape, a likelihood's ``num_params``, a guide family's
    ``num_features``)."""
    from torch import nn

    kind = {"guide": "guide family"}.get(what, what)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ArgumentTypeError(f"a {kind} must be a torch.nn.Module subclass, got {cls!r}")
    missing = [m for m in PROTOCOLS[what] if not callable(getattr(cls, m, None))
               or (m == "forward" and getattr(cls, m) is nn.Module.forward)]
    if missing:
        raise ArgumentTypeError(f"{kind} {cls.__name__} has no {', '.join(missing)} (see the contract in "
                                f"pyrovae.components.{what}s)")
    params = [p for p in inspect.signature(cls).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not params or params[0].kind is inspect.Parameter.KEYWORD_ONLY:
        raise ArgumentTypeError(f"{kind} {cls.__name__} must take {'x_shape' if what == 'likelihood' else 'z_dim'} "
                                "as its first argument: pyrovae builds it as Cls(first, **options)")
    first = (1, 4, 4) if what == "likelihood" else 2
    try:
        instance = cls(first)
    except Exception:  # noqa: BLE001 - options without defaults, or shapes it does not take: checked in use
        return
    try:
        if what == "prior":
            from .priors import check_prior
            check_prior(instance, first)
        elif what == "likelihood":
            num = getattr(instance, "num_params", None)
            if isinstance(num, bool) or not isinstance(num, int) or num < 1:
                raise ArgumentTypeError(f"likelihood {cls.__name__} needs num_params, a positive int (decoder "
                                        f"outputs per data dimension), got {num!r}")
        else:
            num = instance.num_features(first)
            if isinstance(num, bool) or not isinstance(num, int) or num < 1:
                raise ArgumentTypeError(f"guide family {cls.__name__}.num_features(z_dim) must give a positive int, "
                                        f"got {num!r}")
    except ConfigError as e:  # check_prior's: the distribution's shapes
        raise ArgumentTypeError(str(e)) from None


def register_plugin(what: str, name: str, cls=None, *, replace: bool = False):
    """Register ``cls`` as the ``what`` (``"prior"``, ``"likelihood"`` or ``"guide"``) called ``name``, after
    checking that it fits the plug-in contract; a config (``VAEConfig(likelihood=name, likelihood_options=...)``),
    the command line (``--likelihood name``) and a run folder's reload then find it. Without ``cls``, a class
    decorator. Registering the same class again is a no-op.

    Raises:
        ConfigError: ``name`` is not a non-empty identifier-like string, or is taken by another class and
            ``replace`` is False.
        ArgumentTypeError: ``cls`` does not fit the contract.
    """
    if what not in REGISTRIES:
        raise ConfigError(f"what={what!r}: choose one of {', '.join(REGISTRIES)}")
    if cls is None:
        return lambda c: register_plugin(what, name, c, replace=replace)
    if not isinstance(name, str) or not name or not name.replace("_", "a").replace("-", "a").isalnum():
        raise ConfigError(f"a {what}'s name must be a non-empty string of letters, digits, '_' and '-', got {name!r}")
    _check_protocol(what, cls)
    registry = REGISTRIES[what]
    old = registry.get(name)
    same = old is cls or (old is not None and (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__))
    if old is not None and not same and not replace:
        raise ConfigError(f"the {what} name {name!r} is taken by {old.__module__}.{old.__qualname__}; choose "
                          "another name, or pass replace=True")
    registry[name] = cls
    return cls


def register_prior(name: str, cls=None, *, replace: bool = False):
    """Register a prior p(z) of one's own by name (see :func:`register_plugin`; the contract is in
    :mod:`pyrovae.components.priors`): ``pyrovae.register_prior("student_t", StudentTPrior)``, or as a class
    decorator ``@pyrovae.register_prior("student_t")``."""
    return register_plugin("prior", name, cls, replace=replace)


def register_likelihood(name: str, cls=None, *, replace: bool = False):
    """Register a likelihood p(x|z) of one's own by name (see :func:`register_plugin`; the contract is in
    :mod:`pyrovae.components.likelihoods`)."""
    return register_plugin("likelihood", name, cls, replace=replace)


def register_guide(name: str, cls=None, *, replace: bool = False):
    """Register a guide family q(z|x) of one's own by name (see :func:`register_plugin`; the contract is in
    :mod:`pyrovae.components.guides`)."""
    return register_plugin("guide", name, cls, replace=replace)


def plugin_options(cls) -> dict[str, object]:
    """The options of a plug-in class (its constructor's arguments after the first) with their defaults
    (:data:`inspect.Parameter.empty` where an option is required)."""
    params = list(inspect.signature(cls).parameters.values())[1:]
    return {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def describe_plugins() -> dict[str, list[dict]]:
    """Every registered plug-in (entry points loaded), by kind: ``{"prior": [{"name", "class", "options"
    ({option: default, inspect.Parameter.empty where required}), "description" (the docstring's first line)}],
    "likelihood": [...], "guide": [...]}``: what ``pyrovae plugins`` prints."""
    load_entry_points()
    out = {}
    for what, registry in REGISTRIES.items():
        out[what] = [{"name": name, "class": f"{cls.__module__}.{cls.__qualname__}", "options": plugin_options(cls),
                      "description": _one_line(inspect.getdoc(cls) or "")} for name, cls in registry.items()]
    return out


def _one_line(doc: str, width: int = 100) -> str:
    """A docstring's first sentence on one line, without reST markup, at most ``width`` characters."""
    text = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "").replace(":class:", "")
    if ". " in text:
        text = text[: text.index(". ") + 1]
    text = text.rstrip(":")
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


class PluginNames:
    """The names of the registered ``what`` plug-ins as a container for argparse's ``choices``: membership
    loads the entry points when a name is not found (so that a package's plug-ins are valid choices)."""

    def __init__(self, what: str):
        self.what = what

    def __contains__(self, name) -> bool:
        if name not in REGISTRIES[self.what]:
            load_entry_points()
        return name in REGISTRIES[self.what]

    def __iter__(self):
        return iter(list(REGISTRIES[self.what]))

    def __len__(self) -> int:
        return len(REGISTRIES[self.what])


#: The example of each kind's ``--<kind>-option`` in the command line's help.
EXAMPLES = {"prior": ("mixture", "num_components", 10), "likelihood": ("student_t", "learned_scale", "true"),
            "guide": ("low_rank_normal", "rank", 2)}


def plugin_example(what: str) -> str:
    """An example of ``--<what>-option`` for the help: ``--prior mixture --prior-option num_components=10``."""
    name, key, value = EXAMPLES[what]
    return f"--{what} {name} --{what}-option {key}={value}"
