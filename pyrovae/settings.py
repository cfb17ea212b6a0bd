"""The base of every config: strict, frozen pydantic models that round-trip through JSON, so that a run
folder's ``config.json`` alone rebuilds its model (the pattern of pythae's config dataclasses).

Every field carries a ``description``; :mod:`pyrovae.app.cli` derives each command's flags from these
fields (a test keeps the two in step), so a field's description is its ``--help`` text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pydantic
from pydantic import BaseModel, ConfigDict

from .errors import ConfigError
from .files import atomic_write_text


def _check_device(v: str) -> str:
    if v != "cpu" and not (v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {v!r}")
    return v


#: A device name: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
Device = Annotated[str, pydantic.AfterValidator(_check_device)]


class Settings(BaseModel):
    """A frozen config that forbids unknown fields and round-trips through JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
            ConfigError: the file is missing, not JSON, or holds invalid settings.
        """
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the config ({e})") from e
        return cls.from_dict(d)


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
        loc = ".".join(str(p) for p in err["loc"])
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
