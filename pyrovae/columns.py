"""The column types of a mixed-type table and the schema entries that name them: the vocabulary shared by the
data side (:mod:`pyrovae.data.schema`: inference, files, encoding tables) and the likelihood
(:mod:`pyrovae.components.mixed`). See :mod:`pyrovae.data.schema` for the schema format."""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError

#: The column types and, for each, the distributions the likelihood offers (the first is the default).
TYPES = {
    "real": ("normal", "student_t"),
    "positive": ("lognormal", "gamma"),
    "count": ("poisson", "negative_binomial"),
    "binary": ("bernoulli",),
    "categorical": ("categorical",),
    "ordinal": ("cumulative_logit",),
}
CODED = ("categorical", "ordinal")


def label_text(value) -> str:
    """A category label as text: whole numbers without a decimal point (3.0 and 3 are both ``"3"``)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, str):  # "3.0" read as text (a column written with NaN) is the label "3"
        try:
            number = float(value)
        except ValueError:
            return value.strip()
        if math.isfinite(number) and number.is_integer():
            return str(int(number))
    return str(value)


def label_order(label: str):
    """The sort key of category labels: numbers by value (2 before 10, for ordinal columns), then text."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def normalize_schema(schema) -> list[dict]:
    """``schema`` (a list of column entries or groups, or ``{"columns": [...]}``) as a list of column entries
    with ``type``, ``distribution`` and (categorical, ordinal) ``categories`` or ``num_classes`` filled in.

    Raises:
        ConfigError: not a list of dicts; an unknown type or distribution; a categorical with fewer than 2
            categories.
    """
    if isinstance(schema, dict) and "columns" in schema:
        schema = schema["columns"]
    if not isinstance(schema, (list, tuple)) or not schema:
        raise ConfigError(f"a schema is a non-empty list of column entries like {{'name': 'age', 'type': 'real'}}, "
                          f"got {schema!r:.80}")
    out = []
    for entry in schema:
        if not isinstance(entry, dict) or "type" not in entry:
            raise ConfigError(f"schema entry {entry!r:.80} needs a 'type' ({', '.join(TYPES)})")
        if "columns" in entry:  # a group
            columns = entry["columns"]
            names = [None] * columns if isinstance(columns, int) else list(columns)
            rest = {k: v for k, v in entry.items() if k != "columns"}
            out += normalize_schema([{**rest, "name": name} if name is not None else rest for name in names])
            continue
        kind = entry["type"]
        if kind not in TYPES:
            raise ConfigError(f"schema column {entry.get('name')!r}: type {kind!r} is unknown; choose one of "
                              f"{', '.join(TYPES)}")
        column = dict(entry)
        column.setdefault("distribution", TYPES[kind][0])
        if column["distribution"] not in TYPES[kind]:
            raise ConfigError(f"schema column {entry.get('name')!r}: a {kind} column's distribution is one of "
                              f"{', '.join(TYPES[kind])}, not {column['distribution']!r}")
        if kind in CODED:
            if "categories" in column and column["categories"] is not None:
                column["categories"] = [label_text(c) for c in column["categories"]]
                column["num_classes"] = len(column["categories"])
            k = column.get("num_classes")
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 2):
                raise ConfigError(f"schema column {entry.get('name')!r}: a {kind} column needs at least 2 categories, "
                                  f"got {k!r}")
        out.append(column)
    return out


__all__ = ["CODED", "TYPES", "label_text", "normalize_schema"]
