"""The data settings of a run, and the ``(train, validation, test)`` split they describe.

:func:`prepare_data` reads the source (:mod:`pyrovae.data.sources`), splits it with a recorded seed, fits
the transform on the training split (:mod:`pyrovae.data.transforms`) and returns the three splits with a
JSON-able description of all of it (:class:`DataInfo`), which the trainer writes to the run folder as
``data.json``; ``evaluate``, ``sample`` and ``diagnose`` rebuild the same test split from it and apply the
transform fitted at training time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
import pydantic
from pydantic import Field, PositiveInt

from ..errors import ConfigError, DataError
from ..settings import Seed, Settings
from .dataset import RANDOM_TRANSFORMS, ArrayDataset, binarize, dequantize
from .mnist import TEST_BINARIZATION_SEED, load_mnist
from .sources import NAMED_SETS, Source, read_source
from .transforms import TRANSFORMS, FittedTransform, choose_transform, fit_transform


class DataConfig(Settings):
    """Which data a run trains and is tested on, and how it is split and transformed.

    ``source`` is ``mnist`` (read from ``data_dir``, see :func:`pyrovae.data.resolve_data_root`), a named set
    that ships inside an installed package (``digits``, ``breast_cancer``, ``wine``, ``pbmc68k_reduced``), or
    a file or folder (see :mod:`pyrovae.data.sources`). A source with its own test split (MNIST, a folder of
    IDX files) keeps it; any other holds out ``test_fraction`` of its rows, drawn with ``split_seed`` (fixed
    whatever the run's seed, so test numbers are comparable across runs). The validation rows are a random
    subset of the rest, drawn with the run's seed.

    Grey-level images (uint8: MNIST, IDX files, image folders) are binarized or dequantized as
    ``binarization`` says, the held-out splits once with seed 0; other data goes through ``transform``,
    fitted on the training split.

    ``missing="mask"`` (tables and arrays, not images or files streamed from disk): NaN entries, or the
    entries an explicit boolean mask passed in Python marks False (``(x, mask)`` or ``{"x", "mask"}``), are
    missing. The transform is fitted on the observed entries only, missing entries are zero-filled after it,
    and every split carries a float ``mask`` ``(n, *x_shape)`` (1 observed, 0 missing) beside ``x``, which
    reaches every batch as ``"mask"`` and the model as an argument.
    """

    source: str = Field("mnist", description="mnist, a named set (digits, breast_cancer, wine, pbmc68k_reduced) or a "
                                             "file or folder (.npy .npz .pt .csv .tsv .parquet .h5ad, IDX, images)")
    data_options: dict[str, Any] = Field(default_factory=dict, description="options of the source, e.g. label=COLUMN")
    data_dir: Optional[str] = Field(None, description="MNIST root (default: $PYROVAE_DATA, else ~/.cache/pyrovae)")
    binarization: Literal["dynamic", "static", "none", "dequantize"] = Field(
        "dynamic", description="grey-level images: dynamic: a fresh Bernoulli draw of every training image at "
                               "every epoch; static: once; none: grey values k/255; dequantize: (k + u)/256, "
                               "u ~ U(0, 1) afresh")
    transform: Literal["auto", "none", "standardize", "log1p", "binarize"] = Field(
        "auto", description="other data: fitted on the training split; auto: standardize real values, keep integers")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="rows held out for testing when the source has no test "
                                                              "split of its own")
    split_seed: Seed = Field(0, description="seed of the held-out test rows")
    validation_size: int = Field(0, ge=0, description="training data points held out for validation (0: none)")
    train_size: Optional[PositiveInt] = Field(None, description="train on the first N training data points only")
    test_size: Optional[PositiveInt] = Field(None, description="test on the first N test data points only")
    missing: Literal["refuse", "mask"] = Field(
        "refuse", description="missing values (NaN) in a table or array: refuse them, or mask them (the model's "
                              "likelihood counts observed entries only; see pyrovae impute)")

    @pydantic.field_validator("source")
    @classmethod
    def _absolute_source(cls, source: str) -> str:
        """A file or folder is kept as an absolute path, so the run folder works from any directory."""
        return _absolute(source) if source != "mnist" and source not in NAMED_SETS else source

    @pydantic.field_validator("data_options")
    @classmethod
    def _absolute_options(cls, options: dict) -> dict:
        return {k: _absolute(v) if k in PATH_OPTIONS and isinstance(v, str) else v for k, v in options.items()}


#: Data options that name files (made absolute like the source).
PATH_OPTIONS = ("labels", "test", "test_labels", "schema")


def _absolute(path: str) -> str:
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path


@dataclass
class DataInfo:
    """What a run's data was: written to the run folder as ``data.json``.

    Attributes:
        source: the config's ``source``; provenance: its file's sha256 or its package and version.
        x_shape, sizes (``train``, ``validation``, ``test``), test_rows_sha256 (of the test rows' indices:
        the split is the recorded one), binarization (grey-level images) or transform (fitted, as a dict),
        schema (the column types of a mixed-type table, :mod:`pyrovae.data.schema`, or None),
        feature_names, label_names, num_classes, max_value (the largest value of the training split as the
        model sees it, from its first 20,000 data points; for the display of images).
    """

    source: str
    provenance: dict
    x_shape: tuple
    sizes: dict
    test_rows_sha256: str | None
    binarization: str | None
    transform: dict | None
    feature_names: list | None = None
    label_names: list | None = None
    num_classes: int | None = None
    max_value: float | None = None
    schema: list | None = None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @property
    def fitted(self) -> FittedTransform | None:
        return None if self.transform is None else FittedTransform.from_dict(self.transform)


def load_data(config: DataConfig, seed: int = 0, data=None) -> tuple[ArrayDataset, ArrayDataset | None, ArrayDataset]:
    """The ``(train, validation or None, test)`` splits of :func:`prepare_data` (without its description)."""
    return prepare_data(config, seed, data)[:3]


def _mnist(config: DataConfig, seed: int):
    train, validation, test = load_mnist(config.data_dir, config.binarization, config.validation_size, seed=seed,
                                         train_size=config.train_size)
    if config.test_size is not None:
        _check_size("test_size", config.test_size, len(test), "MNIST test images")
        test = test.subset(slice(0, config.test_size))
    info = DataInfo("mnist", {"kind": "mnist", "root": str(config.data_dir or "$PYROVAE_DATA")}, train.x_shape,
                    {"train": len(train), "validation": len(validation) if validation else 0, "test": len(test)},
                    None, config.binarization, None, label_names=[str(d) for d in range(10)], num_classes=10)
    return train, validation, test, info


def _check_size(name: str, size: int, available: int, what: str) -> None:
    """Refuse ``train_size``/``test_size`` larger than the split it takes the first rows of (rather than
    quietly using fewer)."""
    if size > available:
        raise ConfigError(f"{name}={size} is more than the {available} {what}; choose at most {available}, or leave "
                          "it out to use them all")


def _rows_hash(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


def _grey(x: np.ndarray, binarization: str, seed: int) -> tuple[torch.Tensor, str]:
    """uint8 images stored as the trainer draws them (as MNIST's, :func:`pyrovae.data.mnist.load_mnist`)."""
    grey = torch.from_numpy(np.ascontiguousarray(x))
    if binarization in RANDOM_TRANSFORMS:
        return grey, binarization
    if binarization == "static":
        return binarize(grey, torch.Generator().manual_seed(seed)), "static"
    if binarization == "dequantized_once":
        return dequantize(grey, torch.Generator().manual_seed(seed)), "none"
    return grey.float() / 255.0, "none"


def _integer_valued(chunks) -> bool:
    for x in chunks:
        x = x[~torch.isnan(x)]  # missing entries (missing="mask") say nothing of the type
        if not torch.equal(x, x.round()):
            return False
    return True


def _check_complete(x: torch.Tensor, what: str, feature_names, allow_nan: bool = False) -> None:
    bad = ~torch.isfinite(x)
    if allow_nan:
        bad = bad & ~torch.isnan(x)
    if bad.any():
        per_feature = bad.reshape(bad.shape[0], -1).sum(0)
        worst = torch.nonzero(per_feature).flatten()[:5].tolist()
        names = [feature_names[i] if feature_names else f"feature {i}" for i in worst]
        if allow_nan:
            raise DataError(f"{what}: {int(bad.sum())} infinite values, e.g. in {', '.join(names)}: a missing value is "
                            "NaN (an empty cell); replace the infinite ones by NaN or by numbers")
        raise DataError(f"{what}: {int(bad.sum())} missing or infinite values (NaN/inf), e.g. in {', '.join(names)}: "
                        "pyrovae's likelihoods need complete data; train with missing='mask' (--missing mask) to mask "
                        "them, or drop or impute those rows or columns first")


def prepare_data(config: DataConfig, seed: int = 0, data=None, fitted: FittedTransform | None = None,
                 ) -> tuple[ArrayDataset, ArrayDataset | None, ArrayDataset, DataInfo]:
    """Read, split and transform the data ``config`` describes (or ``data``, a Python object: a tensor, an
    array, ``(x, labels)``, a ``Dataset`` or a ``DataLoader``).

    Args:
        config: the data settings.
        seed: the run's seed (validation rows, static binarization of the training images).
        data: data passed in Python instead of ``config.source``.
        fitted: a transform fitted before (a run folder's), applied instead of fitting one afresh.

    Returns:
        ``(train, validation or None, test, info)``: :class:`~pyrovae.data.ArrayDataset` splits (the training
        split of a streamed ``.npy`` file stays on disk; the others are read into memory) and their
        :class:`DataInfo`.

    Raises:
        DataError: unreadable or malformed data, missing values, too few rows for the split.
        ConfigError: options the source does not take; ``train_size`` or ``test_size`` larger than its split;
            ``binarization`` set for data that is not grey-level images.
    """
    if data is None and config.source == "mnist":
        defaults = DataConfig()
        changed = [name for name in ("data_options", "transform", "test_fraction", "split_seed")
                   if getattr(config, name) != getattr(defaults, name)]
        if changed:
            raise ConfigError(f"{', '.join(changed)} do not apply to MNIST (its own test split, binarization for its "
                              "images); they are for --data sources")
        return _mnist(config, seed)
    masking = config.missing == "mask"
    if data is not None:
        data = _with_nan_for_mask(data, masking)
    src: Source = read_source(config.source if data is None else data, config.data_options if data is None else None)
    n = len(src.x)
    rng = np.random.default_rng(config.split_seed)
    if src.test is None:
        perm = rng.permutation(n)
        n_test = max(1, int(round(config.test_fraction * n)))
        if n - n_test < 1:
            raise DataError(f"{n} data points leave none to train on after holding out test_fraction="
                            f"{config.test_fraction}")
        test_rows, rest = np.sort(perm[:n_test]), perm[n_test:]
    else:
        test_rows, rest = None, np.random.default_rng(seed).permutation(n)
    if config.validation_size >= len(rest):
        raise ConfigError(f"validation_size={config.validation_size} leaves no training data ({len(rest)} rows to "
                          "split)")
    if src.test is None:  # validation rows from the run's seed, the test rows fixed by split_seed
        rest = rest[np.random.default_rng(seed).permutation(len(rest))]
    val_rows, train_rows = np.sort(rest[:config.validation_size]), np.sort(rest[config.validation_size:])
    if config.train_size is not None:
        _check_size("train_size", config.train_size, len(train_rows),
                    f"training rows of {config.source} (after the test and validation_size={config.validation_size} "
                    "rows)")
        train_rows = train_rows[:config.train_size]

    def take(rows):
        x = src.x[rows]
        return x, (None if src.labels is None else torch.from_numpy(src.labels[rows]))

    if src.test is None:
        test_x, test_y = take(test_rows)
    else:
        test_x, test_y = src.test[0], (None if src.test[1] is None else torch.from_numpy(src.test[1]))
    if config.test_size is not None:
        _check_size("test_size", config.test_size, len(test_x), f"test rows of {config.source}")
        test_x, test_y = test_x[:config.test_size], (None if test_y is None else test_y[:config.test_size])
    names = dict(feature_names=src.feature_names, label_names=src.label_names)

    if src.grey_levels:
        if "transform" in config.model_fields_set and config.transform not in ("auto", "none"):
            raise ConfigError(f"transform={config.transform!r} is for tables and counts; images are binarized or "
                              "dequantized (binarization)")
        x, mode = _grey(src.x[train_rows], config.binarization, seed)
        labels = None if src.labels is None else torch.from_numpy(src.labels[train_rows])
        train = ArrayDataset(x, labels, mode, **names)
        held_out = {"none": "none", "dequantize": "dequantized_once"}.get(config.binarization, "static")
        validation = None
        if len(val_rows):
            vx, vy = take(val_rows)
            vx, vmode = _grey(vx, held_out, TEST_BINARIZATION_SEED + 1)
            validation = ArrayDataset(vx, vy, vmode, **names)
        tx, tmode = _grey(test_x, held_out, TEST_BINARIZATION_SEED)
        test = ArrayDataset(tx, test_y, tmode, **names)
        binarization, transform = config.binarization, None
    else:
        if "binarization" in config.model_fields_set and config.binarization != "dynamic":
            raise ConfigError(f"binarization={config.binarization!r} is for grey-level images (uint8); this data is "
                              f"{src.x.dtype}: use transform (none, standardize, log1p, binarize)")
        if masking and not isinstance(src.x, np.ndarray):
            raise ConfigError("missing='mask' needs the data in memory; this source is streamed from disk (.npy, "
                              "backed .h5ad): load it into memory (np.load) and pass the array")
        if not isinstance(src.x, np.ndarray):  # rows read from disk (.npy, backed .h5ad)
            train = ArrayDataset(src.x, None if src.labels is None else torch.from_numpy(src.labels[train_rows]),
                                 rows=train_rows, **names)
        else:
            x, labels = take(train_rows)
            train = ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), labels, **names)
        sample = train if train.in_memory else train.subset(slice(0, min(len(train), 20_000)))
        for chunk in sample.chunks():  # all of it in memory; the first 20,000 rows of a file streamed from disk
            _check_complete(chunk, f"{config.source} (training split)", src.feature_names, masking)
        if fitted is None and src.schema is not None:
            fitted = _schema_transform(config.transform, src.schema, train.chunks())
        if fitted is None:
            kind = choose_transform(config.transform, _integer_valued(sample.chunks()))
            fitted = fit_transform(kind, train.chunks())
        train = _masked(_apply(train, fitted), masking)
        validation = None
        if len(val_rows):
            vx, vy = take(val_rows)
            vx = torch.from_numpy(np.asarray(vx, dtype=np.float32))
            _check_complete(vx, f"{config.source} (validation split)", src.feature_names, masking)
            validation = _masked(_apply(ArrayDataset(vx, vy, **names), fitted), masking)
        test = ArrayDataset(torch.from_numpy(np.asarray(test_x, dtype=np.float32)), test_y, **names)
        _check_complete(test.x, f"{config.source} (test split)", src.feature_names, masking)
        test = _masked(_apply(test, fitted), masking)
        binarization, transform = None, fitted.to_dict()
    num_classes = (len(src.label_names) if src.label_names else int(src.labels.max()) + 1) if src.labels is not None \
        else None
    info = DataInfo(config.source if data is None else f"python:{type(data).__name__}", src.provenance, train.x_shape,
                    {"train": len(train), "validation": 0 if validation is None else len(validation),
                     "test": len(test)},
                    None if test_rows is None else _rows_hash(test_rows), binarization, transform,
                    list(src.feature_names) if src.feature_names else None,
                    list(src.label_names) if src.label_names else None, num_classes,
                    max(float(chunk.max()) for chunk in train.subset(slice(0, min(len(train), 20_000))).chunks()),
                    src.schema)
    return train, validation, test, info


def _schema_transform(kind: str, schema: list, chunks) -> FittedTransform:
    """The transform of a mixed-type table: ``auto`` or ``standardize`` standardizes the real columns (fitted
    on the training split's observed entries) and leaves every other column (codes, counts, 0/1, positive
    values) as it is; ``none`` leaves all as they are.

    Raises:
        ConfigError: ``log1p`` or ``binarize``, which would break the column types."""
    if kind == "none":
        return FittedTransform("none")
    if kind not in ("auto", "standardize"):
        raise ConfigError(f"transform={kind!r} does not apply to a table with a schema (mixed types); use auto "
                          "(standardize the real columns) or none")
    fitted = fit_transform("standardize", chunks)
    real = [c["type"] == "real" for c in schema]
    fitted.mean = [m if r else 0.0 for m, r in zip(fitted.mean, real)]
    fitted.scale = [s if r else 1.0 for s, r in zip(fitted.scale, real)]
    return fitted


def _with_nan_for_mask(data, masking: bool):
    """Python data with an explicit boolean mask, ``(x, mask)`` or ``{"x", "mask"[, "y"]}`` (True: observed), as
    ``x`` with NaN where the mask is False (which :func:`prepare_data` turns back into the mask). Other data is
    returned as it is. A pair is read as ``(x, mask)`` only when its second part is a boolean array of ``x``'s
    shape (else it is ``(x, labels)``).

    Raises:
        ConfigError: a mask with ``missing="refuse"``. DataError: a mask of another shape than ``x``.
    """
    if isinstance(data, dict) and "mask" in data:
        x, mask, rest = data["x"], data["mask"], {k: v for k, v in data.items() if k not in ("x", "mask")}
    elif isinstance(data, (tuple, list)) and len(data) == 2 and _is_bool(data[1]) and \
            np.shape(data[1]) == np.shape(data[0]) and np.ndim(data[1]) > 1:
        x, mask, rest = data[0], data[1], {}
    else:
        return data
    if not masking:
        raise ConfigError("the data comes with a mask of missing entries; train with missing='mask' "
                          "(DataConfig(missing='mask'), --missing mask) to use it")
    x = np.array(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    mask = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if mask.shape != x.shape:
        raise DataError(f"the mask has shape {mask.shape}, x has shape {x.shape}: give one entry per value of x "
                        "(True: observed)")
    x[~mask.astype(bool)] = np.nan
    return {"x": x, **rest}


def _is_bool(v) -> bool:
    return (isinstance(v, torch.Tensor) and v.dtype == torch.bool) or (isinstance(v, np.ndarray) and v.dtype == bool)


def _masked(data: ArrayDataset, masking: bool) -> ArrayDataset:
    """With ``masking``: the float mask of the observed (non-NaN) entries kept beside ``x``, and ``x``
    zero-filled where missing (after the transform, so a missing entry reads as the training mean of a
    standardized feature)."""
    if masking:
        observed = ~torch.isnan(data.x)
        data.mask = observed.to(data.x.dtype)
        data.x = torch.where(observed, data.x, torch.zeros((), dtype=data.x.dtype))
    return data


def _apply(data: ArrayDataset, fitted: FittedTransform) -> ArrayDataset:
    """``data`` as the model sees it: transformed now (in memory) or at every read (on disk)."""
    if fitted.kind == "none":
        return data
    data.fitted = fitted
    if not data.in_memory:
        data.transform = fitted
        return data
    data.x = fitted(data.x)
    return data


__all__ = ["DataConfig", "DataInfo", "NAMED_SETS", "TRANSFORMS", "load_data", "prepare_data"]
