"""Data sets as the trainer and the evaluator see them: data points of any shape (images, table rows, count
vectors), optional labels, and the random transforms of grey-level images.

An :class:`ArrayDataset` holds its data points in memory as a tensor, or on disk as rows of a ``.npy``
file read a batch at a time (:class:`NpyRows`: data larger than memory, whose resident size does not grow
with the number of rows). Everything downstream (batch plans, DDP sharding, the evaluator) gathers batches
through :meth:`ArrayDataset.batch`, so any source works everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import DataError

BINARIZATIONS = ("dynamic", "static", "none", "dequantize")
#: Transforms that draw afresh at every pass over the training data (stored as uint8 grey levels).
RANDOM_TRANSFORMS = ("dynamic", "dequantize")


def dequantize(grey: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization of 8-bit grey levels: ``x = (k + u) / 256`` with ``u ~ U(0, 1)`` per pixel.

    A continuous density p on the dequantized values bounds the probability of the discrete levels
    (Theis, van den Oord & Bethge 2016): ``log P(k) >= E_u[log p((k + u) / 256)] - D log 256`` for D
    pixels, so ``(-log p + D log 256) / (D log 2)`` is an upper bound on the discrete model's bits per
    dimension and is comparable across continuous likelihoods and with 8-bit discrete ones. Without it,
    grey MNIST's exact zeros let a learned-scale density grow without bound.

    Args:
        grey: uint8 in [0, 255], any shape.

    Returns:
        float32 tensor of the same shape with values in the open interval (0, 1).
    """
    # u is kept 2^-12 away from both ends of its level, so that x stays strictly inside (0, 1) (densities
    # on the open interval, such as the Beta, apply) and k + u never rounds up to k + 1 in float32.
    u = torch.rand(grey.shape, generator=generator).clamp_(2.0 ** -12, 1 - 2.0 ** -12)
    return (grey.float() + u) / 256.0


def binarize(grey: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per pixel with probability equal to its grey value.

    Args:
        grey: uint8 in [0, 255] or float in [0, 1], any shape.

    Returns:
        float32 tensor of the same shape with values in {0, 1}.
    """
    p = grey.float() / 255.0 if grey.dtype == torch.uint8 else grey
    return torch.bernoulli(p, generator=generator)


class NpyRows:
    """The rows of a ``.npy`` file on disk, read on demand: ``rows[index]`` reads only those rows.

    Reads go through ``os.pread`` of each run of consecutive rows rather than a memory map, so the pages
    read are the kernel's cache, not this process's resident memory: a pass over a file larger than
    memory keeps the resident size at a few batches.

    Args:
        path: a C-ordered ``.npy`` file of shape ``(n, *row_shape)`` and a numeric dtype.

    Raises:
        DataError: the file is missing, not a ``.npy`` file, Fortran-ordered or of an object dtype.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                self.offset = f.tell()
        except (OSError, ValueError) as e:
            raise DataError(f"{self.path}: cannot read it as a .npy file ({e})") from e
        if fortran or dtype.hasobject or len(shape) < 1:
            raise DataError(f"{self.path}: a streamed .npy file must hold a C-ordered numeric array of at least one "
                            f"dimension, got shape {shape}, dtype {dtype}, fortran_order={fortran}")
        self.shape, self.dtype = (tuple(shape) if len(shape) > 1 else (shape[0], 1)), dtype  # 1-D: one feature
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        expected = self.offset + self.shape[0] * self.row_bytes
        if self.path.stat().st_size < expected:
            raise DataError(f"{self.path}: truncated .npy file ({self.path.stat().st_size} bytes, the header promises "
                            f"{expected}); write it again")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        order = np.argsort(index, kind="stable")
        rows = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        flat = rows.reshape(len(index), -1).view(np.uint8).reshape(len(index), self.row_bytes)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            sorted_index = index[order]
            start = 0
            while start < len(order):  # one read per run of consecutive rows
                stop = start + 1
                while stop < len(order) and sorted_index[stop] == sorted_index[stop - 1] + 1:
                    stop += 1
                offset = self.offset + int(sorted_index[start]) * self.row_bytes
                data = os.pread(fd, (stop - start) * self.row_bytes, offset)
                flat[order[start:stop]] = np.frombuffer(data, dtype=np.uint8).reshape(stop - start, self.row_bytes)
                start = stop
        finally:
            os.close(fd)
        return rows.astype(rows.dtype.newbyteorder("="), copy=False)  # native byte order


@dataclass
class ArrayDataset:
    """Data points (and optional labels) as the trainer draws them.

    Attributes:
        x: ``(n, *x_shape)``: a tensor in memory, or :class:`NpyRows` on disk (read a batch at a time).
            For images with a random transform (``binarization`` ``"dynamic"`` or ``"dequantize"``) uint8
            grey levels, transformed afresh at every draw; otherwise the values the model sees (float32),
            or rows that ``transform`` turns into them.
        labels: ``(n,)`` int64 class labels, or None.
        binarization: ``"dynamic"``, ``"static"``, ``"none"`` or ``"dequantize"`` (for data that is not
            grey-level images: ``"none"``).
        transform: applied to each batch read from disk (the fitted transform of the training split);
            None for data in memory, which is stored transformed.
        feature_names, label_names: optional names of the features (of a table) and of the classes.
        fitted: the transform fitted on the training split that turned the data's own units into these
            values (its ``inverse`` maps samples and reconstructions back); None when there is none.
        mask: ``(n, *x_shape)`` float32, 1 where an entry is observed and 0 where it is missing (``x`` holds 0
            there), for data read with ``missing="mask"`` (in memory only); None for complete data.
        schema: the column types of a mixed-type table (:mod:`pyrovae.data.schema`), for writing samples back
            with category labels; None otherwise.
    """

    x: torch.Tensor | NpyRows
    labels: torch.Tensor | None
    binarization: str = "none"
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    feature_names: tuple[str, ...] | None = None
    label_names: tuple[str, ...] | None = None
    rows: np.ndarray | None = field(default=None, repr=False)  # on disk: the file rows this split holds
    fitted: object | None = field(default=None, repr=False)
    mask: torch.Tensor | None = field(default=None, repr=False)
    schema: list | None = field(default=None, repr=False)

    def in_data_units(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` the model gives (samples, reconstructions, ``(n, *x_shape)``) in the data's own units."""
        return values if self.fitted is None else self.fitted.inverse(values)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else self.x.shape[0]

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def in_memory(self) -> bool:
        return isinstance(self.x, torch.Tensor)

    @property
    def images(self) -> torch.Tensor:
        """All data points as a tensor, as stored (see ``x``); for data on disk this reads the whole split."""
        if self.in_memory:
            return self.x
        return self._read(torch.arange(len(self)))

    def _read(self, index: torch.Tensor) -> torch.Tensor:
        rows = self.rows[index.numpy()] if self.rows is not None else index.numpy()
        x = torch.from_numpy(np.asarray(self.x[rows], dtype=np.float32))  # any byte order and numeric dtype
        return self.transform(x) if self.transform is not None else x

    def get(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The data points at ``index`` as float32 ``(len(index), *x_shape)``: binarized (``dynamic``) or
        dequantized (``dequantize``) now, read from disk and transformed for data on disk."""
        if not self.in_memory:
            return self._read(index)
        x = self.x[index]
        if self.binarization == "dynamic":
            return binarize(x, generator)
        if self.binarization == "dequantize":
            return dequantize(x, generator)
        return x

    def as_float(self, max_rows: int = 20_000, seed: int = 0) -> torch.Tensor:
        """The data points as float32 (grey levels k / 255 for stored uint8 ones), e.g. for the data mean a
        decoder's output bias starts from. Data on disk gives ``max_rows`` rows drawn with ``seed``."""
        if not self.in_memory:
            n = len(self)
            generator = torch.Generator().manual_seed(seed)
            index = torch.arange(n) if n <= max_rows else torch.randperm(n, generator=generator)[:max_rows]
            return self._read(index.sort().values)
        return self.x.float() / (255.0 if self.x.dtype == torch.uint8 else 1.0)

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The batch at ``index``: ``{"x": self.get(index, generator), "y": labels, "mask": mask}`` (no ``"y"``
        without labels, no ``"mask"`` without a mask)."""
        batch = {"x": self.get(index, generator)}
        if self.mask is not None:
            batch["mask"] = self.mask[index]
        if self.labels is not None:
            batch["y"] = self.labels[index]
        return batch

    def subset(self, index) -> "ArrayDataset":
        """The data points (and labels) at ``index`` (a tensor, array or slice), with the same transforms."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index)
        labels = None if self.labels is None else self.labels[index]
        if self.in_memory:
            return ArrayDataset(self.x[index], labels, self.binarization, self.transform, self.feature_names,
                                self.label_names, fitted=self.fitted,
                                mask=None if self.mask is None else self.mask[index])
        rows = self.rows[index.numpy()] if self.rows is not None else index.numpy()
        return ArrayDataset(self.x, labels, self.binarization, self.transform, self.feature_names, self.label_names,
                            rows=np.asarray(rows), fitted=self.fitted)

    def batches(self, batch_size: int, shuffle: bool = True,
                generator: torch.Generator | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Yield mini-batches ``{"x": (b, *x_shape) float32, "y": (b,) int64}`` covering the data set once
        (the last one may be smaller).

        Shuffling and dynamic binarization draw from ``generator`` (a CPU generator), so a run is
        reproducible from its seed. Each batch is gathered by tensor indexing: no per-item Python.
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.batch(order[start:start + batch_size], generator)

    def chunks(self, size: int = 10_000) -> Iterator[torch.Tensor]:
        """All data points in order, ``size`` at a time, as the model sees them (random transforms drawn with
        seed 0): for checks and statistics that must not hold a split on disk in memory at once."""
        generator = torch.Generator().manual_seed(0)
        for start in range(0, len(self), size):
            yield self.get(torch.arange(start, min(start + size, len(self))), generator)


#: The name pyrovae 0.1 gave the data set class (it held MNIST images only).
ImageDataset = ArrayDataset
