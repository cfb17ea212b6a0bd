"""The base of every config: strict, frozen pydantic models that round-trip through JSON, so that a run
folder's ``config.json`` alone rebuilds its model (the pattern of pythae's config dataclasses).

Every field carries a ``description``; :mod:`pyrovae.app.cli` derives each command's flags from these
fields (a test keeps the two in step), so a field's description is its ``--help`` text.

Every float field of every config refuses NaN and infinities (``allow_inf_nan=False`` on the base, so a
field added later is covered too): ``--lr inf`` or ``beta=float("nan")`` is a :class:`~pyrovae.errors.ConfigError`
naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pydantic
from pydantic import BaseModel, ConfigDict

from .checks import MAX_SEED
from .errors import ConfigError
from .files import atomic_write_text


def _check_device(v: str) -> str:
    if v != "cpu" and not (v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {v!r}")
    return v


#: A device name: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
Device = Annotated[str, pydantic.AfterValidator(_check_device)]

#: A random seed: a whole number in [0, 2**32 - 1].
Seed = Annotated[int, pydantic.Field(ge=0, le=MAX_SEED)]


class Settings(BaseModel):
    """A frozen config that forbids unknown fields, NaN and infinite floats, and round-trips through JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def __init__(self, /, **values):
        """Validate ``values``: a bad one is a :class:`~pyrovae.errors.ConfigError` naming each bad field, the
        value it got and what it accepts (not pydantic's ``ValidationError``), so that catching
        :class:`~pyrovae.errors.PyroVAEError` catches it."""
        try:
            super().__init__(**values)
        except pydantic.ValidationError as e:
            raise ConfigError("invalid configuration: " + describe(e)) from None

    # pydantic then validates a nested config (a dict in a RunConfig) as before, without this __init__, so
    # that its errors keep their full location (trainer.lr).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def to_dict(self) -> dict:
        """The JSON-ready dict (``model_dump(mode="json")``)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a dict. Raises :class:`~pyrovae.errors.ConfigError` naming each bad field."""
        return make_config(cls, **d)

    def replace(self, **changes):
        """A copy with ``changes`` applied and validated (``ConfigError`` on a bad value)."""
        return make_config(type(self), **{**self.model_dump(), **changes})

    def save(self, path: str | Path) -> None:
        """Write the config as indented JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path):
        """Read a config written by :meth:`save`.

        Raises:
            ConfigError: the file is missing, not JSON (e.g. truncated), or holds invalid settings; the message
                names the file.
        """
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:  # ValueError: JSONDecodeError (truncated), UnicodeDecodeError
            raise ConfigError(f"{path}: cannot read the config ({e}); restore it from a copy") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: a config is a JSON object of settings, got a JSON {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def make_config(cls: type[BaseModel], **values) -> BaseModel:
    """``cls(**values)``, with pydantic's errors turned into one :class:`~pyrovae.errors.ConfigError` that
    names each bad field, the value it got and what it accepts."""
    try:
        return cls(**values)
    except pydantic.ValidationError as e:
        raise ConfigError("invalid configuration: " + describe(e)) from None


def describe(error: pydantic.ValidationError, prefix: str = "") -> str:
    """pydantic's errors as one line: ``field=value: what it accepts; ...`` (each field after ``prefix``)."""
    lines = []
    for err in error.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")  # hidden[0]
        field = prefix + loc if loc else prefix.rstrip(".")
        got = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown option"
        if not field:
            lines.append(msg)
        else:
            lines.append(f"{field}: {msg}" if isinstance(got, dict) else f"{field}={got!r}: {msg}")
    return "; ".join(lines)
