"""scanpy's bundled ``pbmc68k_reduced`` (700 peripheral blood cells x 765 genes) as raw integer UMI counts.

scanpy ships the data set inside its wheel (no download), but ``adata.raw.X`` does not hold counts: it holds
``log1p(count * 1e4 / n_counts)``, rounded to 3 decimals, where ``n_counts`` is the cell's total over all
genes of the original 68k data (not only the 765 kept here). The counts come back per cell: the smallest
non-zero ``expm1(value)`` of a cell is the scale of one count, so ``expm1(value) / scale`` is the count up
to the rounding of the stored values. The residual ``|ratio - round(ratio)|`` measures how well that worked;
a cell whose residual exceeds the tolerance is dropped and counted. (A cell without any gene at count 1
would give half-integers for its odd counts, residual 0.5, and is dropped as well.)

With scanpy 1.11.5 every cell is recovered (largest residual 0.112, on a count of 114); storing the
recovered counts back with the scale ``1e4 / n_counts`` reproduces ``adata.raw.X`` to the third decimal in
all but 4 of 535,500 entries (those differ by 0.001).

Only numpy is imported with this module; scanpy (and anndata with it) is imported inside the function, as
it takes seconds to import.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError

#: The obs columns of ``pbmc68k_reduced`` that label cells: ``bulk_labels`` (10 cell types from the bulk
#: sorted populations) and ``louvain`` (11 clusters).
LABEL_KEYS = ("bulk_labels", "louvain")

_INSTALL_HINT = "pip install pyrovae[anndata]"


def _import_scanpy():
    try:
        import scanpy
    except ImportError as exc:
        raise DataError(f"loading pbmc68k_reduced needs scanpy (and anndata), which could not be imported "
                        f"({exc}); install them with `{_INSTALL_HINT}`") from exc
    return scanpy


def _version(scanpy) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("scanpy")
    except PackageNotFoundError:  # a source checkout on the path
        return str(getattr(scanpy, "__version__", "unknown"))


def recover_counts(logged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer counts from per-cell normalized, log1p-transformed values, and how far each cell is from integers.

    Args:
        logged: (cells, genes) array of ``log1p(count * scale_of_cell)`` values, finite and >= 0.

    Returns:
        ``(counts, residual)``: counts as a float64 (cells, genes) array of whole numbers (``expm1(value)``
        divided by the cell's smallest non-zero ``expm1(value)``, rounded), and the (cells,) array of each
        cell's largest ``|ratio - round(ratio)|``. A cell with no non-zero value has residual ``inf``.

    Raises:
        DataError: ``logged`` is not 2-dimensional, or has a NaN, infinite or negative value.
    """
    logged = np.asarray(logged, dtype=np.float64)
    if logged.ndim != 2:
        raise DataError(f"expected a (cells, genes) array, got shape {logged.shape}")
    if not np.isfinite(logged).all():
        raise DataError("the log-normalized values have NaN or infinite entries; they are not recoverable counts")
    if (logged < 0).any():
        raise DataError(f"the log-normalized values have negative entries (smallest {logged.min()}); "
                        f"log1p of normalized counts is never negative")
    scaled = np.expm1(logged)
    unit = np.where(scaled > 0, scaled, np.inf).min(axis=1)  # one count, per cell
    empty = ~np.isfinite(unit)
    unit[empty] = 1.0
    ratio = scaled / unit[:, None]
    counts = np.rint(ratio)
    residual = np.abs(ratio - counts).max(axis=1)
    residual[empty] = np.inf
    return counts, residual


def load_pbmc68k_reduced_counts(tolerance: float = 0.25, label_key: str = "bulk_labels") -> dict:
    """scanpy's ``pbmc68k_reduced`` as integer UMI counts of its ``adata.raw`` genes, with cell-type labels.

    Args:
        tolerance: the largest residual ``|ratio - round(ratio)|`` a cell may have and be kept, in (0, 0.5).
            The 3-decimal rounding of the stored values alone moves a ratio by up to about ``1.5e-3`` times
            the count (about 0.38 at the largest count, 259); the worst cell of scanpy 1.11.5 has 0.112. A
            value of 0.5 or more could not tell a count from its neighbour.
        label_key: the obs column whose categories become ``labels``, one of :data:`LABEL_KEYS`.

    Returns:
        A dict with
          * ``counts``: float32 (cells, genes) array of whole-number UMI counts (700 x 765 with scanpy
            1.11.5, totals per cell 342 to 1654, largest entry 259);
          * ``genes``: list of the genes' names (``adata.raw.var_names``), ``cells``: list of the kept cells'
            barcodes;
          * ``labels``: int64 (cells,) category codes of ``adata.obs[label_key]``, ``label_names``: list of
            the category names (``label_names[labels[i]]`` is cell i's label);
          * ``cells_failed``: number of cells dropped for a residual above ``tolerance``;
          * ``max_residual``: the largest residual among the kept cells (all at most ``tolerance``);
          * ``tolerance``: the tolerance used;
          * ``source``: ``"scanpy <version> pbmc68k_reduced"``.

    Raises:
        ConfigError: ``tolerance`` is not in (0, 0.5), or ``label_key`` is not one of :data:`LABEL_KEYS`.
        DataError: scanpy cannot be imported (install ``pyrovae[anndata]``); the data set has no ``raw``,
            no ``label_key`` column, or a label missing; its values are not log-normalized counts; or no
            cell is recovered within ``tolerance``.
    """
    if not isinstance(tolerance, (int, float)) or not 0 < float(tolerance) < 0.5:
        raise ConfigError(f"tolerance must be a number in (0, 0.5), got {tolerance!r}")
    if label_key not in LABEL_KEYS:
        raise ConfigError(f"label_key must be one of {LABEL_KEYS}, got {label_key!r}")
    scanpy = _import_scanpy()
    scanpy_version = _version(scanpy)
    adata = scanpy.datasets.pbmc68k_reduced()
    if adata.raw is None:
        raise DataError(f"scanpy {scanpy_version}'s pbmc68k_reduced has no .raw; its counts cannot be recovered")
    raw = adata.raw.X
    raw = raw.toarray() if hasattr(raw, "toarray") else np.asarray(raw)
    if label_key not in adata.obs:
        raise DataError(f"scanpy {scanpy_version}'s pbmc68k_reduced has no obs column {label_key!r} "
                        f"(it has {list(adata.obs.columns)})")

    if np.array_equal(raw, np.rint(raw)) and (raw >= 0).all():  # a release that ships the counts themselves
        counts, residual = raw.astype(np.float64), np.zeros(raw.shape[0])
    else:
        counts, residual = recover_counts(raw)
    keep = residual <= tolerance
    if not keep.any():
        raise DataError(f"no cell of pbmc68k_reduced has its counts recovered within tolerance {tolerance} "
                        f"(smallest residual {residual.min():.3g}); adata.raw.X of scanpy {scanpy_version} "
                        f"is not log1p of per-cell normalized counts")

    column = adata.obs[label_key].astype("category")
    codes = np.asarray(column.cat.codes, dtype=np.int64)
    if (codes < 0).any():
        raise DataError(f"{int((codes < 0).sum())} cells of pbmc68k_reduced have no {label_key!r} label")
    return {
        "counts": counts[keep].astype(np.float32),
        "genes": [str(g) for g in adata.raw.var_names],
        "cells": [str(c) for c, k in zip(adata.obs_names, keep) if k],
        "labels": codes[keep],
        "label_names": [str(c) for c in column.cat.categories],
        "cells_failed": int((~keep).sum()),
        "max_residual": float(residual[keep].max()),
        "tolerance": float(tolerance),
        "source": f"scanpy {scanpy_version} pbmc68k_reduced",
    }


__all__ = ["LABEL_KEYS", "load_pbmc68k_reduced_counts", "recover_counts"]
