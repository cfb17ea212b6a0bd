"""Argument checks at the public boundary: validate once, with one error that names the argument, the
value it got and what it accepts (the pattern of scikit-learn's ``sklearn.utils.validation``).

A value of the wrong type (a string or a float where a whole number belongs) raises
:class:`~pyrovae.errors.ArgumentTypeError` (a ``TypeError``); a value of the right type outside the
accepted range raises :class:`~pyrovae.errors.ConfigError` (a ``ValueError``). Internals trust their
inputs: model and guide programs, called at every training step, are not checked.
"""

from __future__ import annotations

import math
import numbers

from .errors import ArgumentTypeError, ConfigError


def _why(hint: str) -> str:
    return f" ({hint})" if hint else ""


def integer(value, name: str, minimum: int = 0, hint: str = "") -> int:
    """``value`` as an ``int`` when it is a whole number (not a bool) of at least ``minimum``; ``hint`` is
    added to the message.

    Raises:
        ArgumentTypeError: not an integer.
        ConfigError: below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name}={value!r} must be an integer >= {minimum}, got {type(value).__name__}"
                                + _why(hint))
    if value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}" + _why(hint))
    return int(value)


def positive_int(value, name: str, hint: str = "") -> int:
    """``value`` as an ``int`` when it is a whole number >= 1 (see :func:`integer`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name}={value!r} must be a positive integer, got {type(value).__name__}"
                                + _why(hint))
    if value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer" + _why(hint))
    return int(value)


def number(value, name: str, minimum: float = -math.inf, strict: bool = False, hint: str = "") -> float:
    """``value`` as a ``float`` when it is a finite real number (not a bool) >= ``minimum`` (> with
    ``strict``); ``hint`` is added to the message.

    Raises:
        ArgumentTypeError: not a real number.
        ConfigError: NaN, infinite, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name}={value!r} must be a number, got {type(value).__name__}" + _why(hint))
    bound = "" if minimum == -math.inf else f" {'>' if strict else '>='} {minimum:g}"
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ConfigError(f"{name}={value!r} must be a finite number{bound}" + _why(hint))
    return float(value)


def positive_number(value, name: str, hint: str = "") -> float:
    """``value`` as a ``float`` when it is a finite number > 0 (see :func:`number`)."""
    return number(value, name, 0.0, strict=True, hint=hint)


def one_of(value, name: str, choices) -> object:
    """``value`` when it is one of ``choices``.

    Raises:
        ConfigError: naming the choices.
    """
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is unknown; choose one of {', '.join(map(str, choices))}")
    return value
