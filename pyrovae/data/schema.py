"""Column types of a mixed-type table (issue 21): the schema that :class:`pyrovae.components.mixed.MixedLikelihood`
models and that brings samples and imputations back in the table's own types and category labels.

A schema is a list of column entries in table order, each a dict::

    {"name": "alcohol", "type": "real"}          # any finite number (Normal; "distribution": "student_t")
    {"name": "proline", "type": "positive"}      # > 0 (log-Normal; "distribution": "gamma")
    {"name": "visits", "type": "count"}          # 0, 1, 2, ... (Poisson; "distribution": "negative_binomial")
    {"name": "smoker", "type": "binary"}         # 0/1 (Bernoulli)
    {"name": "colour", "type": "categorical", "categories": ["blue", "green", "red"]}
    {"name": "grade", "type": "ordinal", "categories": ["low", "mid", "high"]}   # ordered categories

In the data a categorical (or ordinal) column is ONE column of integer codes 0..K-1 (the index of the label in
``categories``); the likelihood expands it to one-hot for the encoder. A group form ``{"type": "real",
"columns": ["a", "b"]}`` is accepted too and expands to one entry per column.

Inference rule (:func:`infer_schema`), per column of a pandas frame, on its non-missing values:

* not numeric (text, or bool) -> ``categorical`` with the sorted distinct labels (bool: ``binary``);
* numeric, only 0 and 1 -> ``binary``;
* numeric, whole numbers >= 0 -> ``count``;
* otherwise -> ``real``. Positive skewed reals are kept ``real`` (standardized): a schema file can say
  ``positive`` for a log-Normal instead (inference does not guess it, since a log-Normal on a column with
  values near 0 is a poor default).

A schema file (``--data-option schema=FILE.json``) holds such a list, or ``{"columns": [...]}``; it must name
every column of the table (after ``label``/``drop``); a categorical entry without ``categories`` gets the
sorted labels seen in the table. The run folder keeps the schema in ``data.json`` (``schema``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..columns import CODED, TYPES, label_order, label_text, normalize_schema
from ..errors import ConfigError, DataError

def infer_schema(frame) -> list[dict]:
    """The schema of a pandas ``frame`` by the rule in this module's docstring (missing values ignored)."""
    import pandas as pd

    schema = []
    for name in frame.columns:
        values = frame[name].dropna()
        entry = {"name": str(name)}
        if pd.api.types.is_bool_dtype(frame[name]):
            entry["type"] = "binary"
        elif not pd.api.types.is_numeric_dtype(frame[name]):
            entry.update(type="categorical", categories=sorted({label_text(v) for v in values}))
        else:
            v = values.to_numpy(dtype=np.float64)
            if len(v) and np.isin(v, (0.0, 1.0)).all():
                entry["type"] = "binary"
            elif len(v) and (v >= 0).all() and (v == np.round(v)).all():
                entry["type"] = "count"
            else:
                entry["type"] = "real"
        schema.append(entry)
    return normalize_schema(schema)


def read_schema(path: str | Path) -> list[dict]:
    """A schema file (JSON: a list of column entries, or ``{"columns": [...]}``), normalized.

    Raises:
        DataError: the file cannot be read or is not JSON. ConfigError: see :func:`normalize_schema`."""
    try:
        return normalize_schema(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise DataError(f"schema file {path}: cannot read it as JSON ({e})") from e


def encode_frame(frame, schema: list[dict], what: str = "the table") -> tuple[np.ndarray, list[dict]]:
    """``frame`` (pandas; text or numbers) as the float32 array ``(n, D)`` the likelihood reads, NaN where a cell
    is missing, and the schema with every categorical's ``categories`` filled in (the sorted labels of the
    frame where the schema gave none).

    Categorical and ordinal cells become their label's code 0..K-1; binary cells 0/1 (also true/false);
    the other types their number.

    Raises:
        DataError (one, naming the column): a column the schema lacks or a schema column the table lacks; a
        category not among the schema's (never seen in training); a value that is not a number in a numeric
        column; a negative or fractional count; a binary value other than 0/1; a positive value <= 0.
    """
    import pandas as pd

    schema = normalize_schema(schema)
    names = [str(c) for c in frame.columns]
    known = [c.get("name") for c in schema]
    lacking = [n for n in names if n not in known]
    if lacking:
        raise DataError(f"{what}: column {lacking[0]!r} is not in the schema (its columns: "
                        f"{', '.join(map(str, known))}); add it to the schema file, or leave it out with "
                        "--data-option drop=COLUMN")
    absent = [n for n in known if n not in names]
    if absent:
        raise DataError(f"{what}: no column {absent[0]!r}, which the schema names; its columns are {', '.join(names)}")
    schema = sorted(schema, key=lambda c: names.index(c["name"]))  # the table's column order, as its names are
    out = np.full((len(frame), len(schema)), np.nan, dtype=np.float32)
    filled = []
    for j, column in enumerate(schema):
        name, kind = column["name"], column["type"]
        cells = frame[name]
        present = cells.notna().to_numpy()
        if cells.dtype == object:  # text read as is: empty cells are missing
            present &= ~cells.astype(str).str.strip().isin(("", "NA", "N/A", "NaN", "nan", "NULL", "null", "None"))
        values = cells[present]
        column = dict(column)
        if kind in CODED:
            labels = [label_text(v) for v in values]
            if column.get("categories") is None:
                column["categories"] = sorted(set(labels), key=label_order)
                column["num_classes"] = len(column["categories"])
                if column["num_classes"] < 2:
                    raise DataError(f"{what}: column {name!r} has fewer than 2 categories ({column['categories']}); "
                                    "drop it or give its categories in the schema")
            index = {c: k for k, c in enumerate(column["categories"])}
            unseen = sorted({lab for lab in labels if lab not in index})
            if unseen:
                raise DataError(f"{what}: column {name!r} holds the category {unseen[0]!r}, never seen in training "
                                f"(its categories: {', '.join(column['categories'])}); map it to a known one or "
                                "leave the cell empty (missing)")
            out[present, j] = [index[lab] for lab in labels]
        else:
            if kind == "binary" and values.dtype == object:
                values = values.astype(str).str.strip().str.lower().map({"true": 1, "false": 0, "1": 1, "0": 0,
                                                                       "1.0": 1, "0.0": 0}).fillna(values)
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            bad = np.isnan(numbers) | ~np.isfinite(numbers)
            if bad.any():
                raise DataError(f"{what}: column {name!r} ({kind}) holds {values[bad].iloc[0]!r}, not a number; "
                                "a missing cell is empty or NA")
            if kind == "binary" and not np.isin(numbers, (0.0, 1.0)).all():
                raise DataError(f"{what}: column {name!r} is binary in the schema but holds "
                                f"{label_text(numbers[~np.isin(numbers, (0.0, 1.0))][0])}; a binary column holds 0 "
                                "and 1 only (declare it categorical or count in the schema)")
            if kind == "count" and ((numbers < 0) | (numbers != np.round(numbers))).any():
                bad = numbers[(numbers < 0) | (numbers != np.round(numbers))][0]
                raise DataError(f"{what}: column {name!r} is a count in the schema but holds {bad:g}; counts are "
                                "whole numbers >= 0 (declare it real in the schema)")
            if kind == "positive" and (numbers <= 0).any():
                raise DataError(f"{what}: column {name!r} is positive in the schema but holds "
                                f"{numbers[numbers <= 0][0]:g}; declare it real in the schema")
            out[present, j] = numbers
        filled.append(column)
    return out, filled


def decode_table(values, schema: list[dict], names=None):
    """``values`` ``(n, D)`` (numbers in the data's units: codes for categoricals) as a pandas frame in the
    table's own types: category labels for categorical and ordinal columns, integers for counts and binary
    columns (rounded, clipped to the valid range), floats otherwise."""
    import pandas as pd

    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    frame = {}
    for j, column in enumerate(schema):
        v, kind = values[:, j], column["type"]
        if kind in CODED:
            k = column.get("num_classes") or len(column["categories"])
            codes = np.clip(np.round(v), 0, k - 1).astype(int)
            cats = column.get("categories") or [str(c) for c in range(k)]
            frame[column.get("name") or f"feature_{j}"] = [cats[c] for c in codes]
        elif kind == "count":
            frame[column.get("name") or f"feature_{j}"] = np.clip(np.round(v), 0, None).astype(np.int64)
        elif kind == "binary":
            frame[column.get("name") or f"feature_{j}"] = np.clip(np.round(v), 0, 1).astype(np.int64)
        else:
            frame[column.get("name") or f"feature_{j}"] = v
    return pd.DataFrame(frame)


def cell_texts(values, schema: list[dict]) -> list[list[str]]:
    """``values (n, D)`` as the text of each cell (columns of :func:`decode_table`; floats with 7 digits):
    what ``pyrovae impute`` writes into the missing cells. Returns one list per column."""
    frame = decode_table(values, schema)
    out = []
    for j, column in enumerate(schema):
        col = frame.iloc[:, j]
        out.append([format(float(v), ".7g") for v in col] if column["type"] in ("real", "positive")
                   else [str(v) for v in col])
    return out


__all__ = ["TYPES", "cell_texts", "decode_table", "encode_frame", "infer_schema", "label_text", "normalize_schema",
           "read_schema"]
