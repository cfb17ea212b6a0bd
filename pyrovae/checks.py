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
import os

from .errors import ArgumentTypeError, ConfigError

#: The largest seed numpy and Pyro accept (``pyro.set_rng_seed``).
MAX_SEED = 2**32 - 1


def _why(hint: str) -> str:
    return f" ({hint})" if hint else ""


def integer(value, name: str, minimum: int = 0, hint: str = "", maximum: int | None = None) -> int:
    """``value`` as an ``int`` when it is a whole number (not a bool) of at least ``minimum`` (and at most
    ``maximum`` when given); ``hint`` is added to the message.

    Raises:
        ArgumentTypeError: not an integer.
        ConfigError: below ``minimum`` or above ``maximum``.
    """
    accepts = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name}={value!r} must be an integer {accepts}, got {type(value).__name__}"
                                + _why(hint))
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(f"{name}={value!r} must be an integer {accepts}" + _why(hint))
    return int(value)


def seed(value, name: str = "seed") -> int:
    """``value`` as an ``int`` when it is a seed numpy and Pyro accept: a whole number in [0, 2**32 - 1]."""
    return integer(value, name, 0, hint="a random seed", maximum=MAX_SEED)


def positive_int(value, name: str, hint: str = "") -> int:
    """``value`` as an ``int`` when it is a whole number >= 1 (see :func:`integer`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name}={value!r} must be a positive integer, got {type(value).__name__}"
                                + _why(hint))
    if value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer" + _why(hint))
    return int(value)


def sizes(value, name: str, minimum_length: int = 0, hint: str = "") -> tuple[int, ...]:
    """``value`` as a tuple of ``int`` when it is a sequence (tuple, list, ``torch.Size``) of at least
    ``minimum_length`` whole numbers >= 1: layer sizes, shapes.

    Raises:
        ArgumentTypeError: not a sequence, or an entry that is not an integer.
        ConfigError: too short, or an entry below 1.
    """
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise ArgumentTypeError(f"{name}={value!r} must be a sequence of positive integers, e.g. (512, 512), got "
                                f"{type(value).__name__}" + _why(hint))
    if len(value) < minimum_length:
        raise ConfigError(f"{name}={tuple(value)!r} must hold at least {minimum_length} positive integer(s)"
                          + _why(hint))
    return tuple(positive_int(v, f"{name}[{i}]", hint) for i, v in enumerate(value))


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


#: Bytes per float32 parameter while training with Adam: the weight, its gradient and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16


def available_memory() -> int | None:
    """Bytes of memory free for new allocations: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else the
    machine's physical memory (``os.sysconf``); None when neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def dense_parameters(sizes) -> int:
    """The weights and biases of fully connected layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``: the size
    of a network known before it is built (for networks that cannot be measured on the meta device)."""
    sizes = [int(n) for n in sizes]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def trainable_in_memory(num_parameters: int | None, what: str, hint: str = "") -> None:
    """Refuse a model whose ``num_parameters`` float32 parameters would not fit in the available memory
    while training (:data:`TRAINING_BYTES_PER_PARAMETER` bytes each: weights, gradients, Adam's state), before
    anything is allocated. ``what`` names the settings that make the model's size.

    Raises:
        ConfigError: with the estimate and the memory available (nothing is checked when ``num_parameters`` is
            None: not known).
    """
    if num_parameters is None:
        return
    need, free = num_parameters * TRAINING_BYTES_PER_PARAMETER, available_memory()
    if free is not None and need > free:
        raise ConfigError(f"{what}: the networks would have {num_parameters:,} parameters, {_bytes(need)} to train "
                          f"(weights, gradients and Adam's two moments, {TRAINING_BYTES_PER_PARAMETER} bytes per "
                          f"parameter), more than the {_bytes(free)} of memory available" + _why(hint))
