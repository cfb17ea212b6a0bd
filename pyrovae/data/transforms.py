"""Transforms of data that is not grey-level images, fitted on the training split and kept in the run folder.

A transform maps the data's own units to what the model sees and back: ``standardize`` (each feature to
mean 0 and standard deviation 1 with the training split's statistics), ``log1p`` (counts to
``log(1 + x)``, for a continuous likelihood on counts), ``binarize`` (1 where a value is at least half the
largest value of the training split, else 0) and ``none``. Count likelihoods (Poisson, negative binomial,
binomial) take raw counts: their transform is ``none``. What was fitted (means, scales, the threshold) is
stored as JSON (:meth:`FittedTransform.to_dict`), so ``evaluate``, ``sample`` and ``diagnose`` apply the
training split's transform from the run folder alone, and samples are reported in the data's own units
through :meth:`FittedTransform.inverse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..errors import ConfigError, DataError

TRANSFORMS = ("auto", "none", "standardize", "log1p", "binarize")


@dataclass
class FittedTransform:
    """A transform with the statistics it was fitted to.

    Attributes:
        kind: ``"none"``, ``"standardize"``, ``"log1p"`` or ``"binarize"``.
        mean, scale: per-feature ``x_shape`` lists (``standardize``): ``x' = (x - mean) / scale``.
        threshold: ``binarize``: ``x' = 1[x >= threshold]``.
    """

    kind: str = "none"
    mean: list | None = None
    scale: list | None = None
    threshold: float | None = None
    _tensors: dict = field(default_factory=dict, repr=False, compare=False)

    def _stat(self, name: str) -> torch.Tensor:
        if name not in self._tensors:
            self._tensors[name] = torch.tensor(getattr(self, name), dtype=torch.float32)
        return self._tensors[name]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Data in its own units ``(n, *x_shape)`` -> what the model sees (float32, same shape)."""
        x = x.float()
        if self.kind == "standardize":
            return (x - self._stat("mean")) / self._stat("scale")
        if self.kind == "log1p":
            if (x < 0).any():
                raise DataError("the log1p transform needs non-negative values (counts); this data has negative ones: "
                                "use transform 'standardize' or 'none'")
            return torch.log1p(x)
        if self.kind == "binarize":  # a missing entry (NaN) stays missing
            return torch.where(torch.isnan(x), x, (x >= self.threshold).float())
        return x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """What the model gives (samples, reconstructions) -> the data's own units. ``binarize`` is not
        invertible and returns ``x`` (probabilities or 0/1)."""
        if self.kind == "standardize":
            return x * self._stat("scale").to(x.device) + self._stat("mean").to(x.device)
        if self.kind == "log1p":
            return torch.expm1(x)
        return x

    def to_dict(self) -> dict:
        return {k: v for k, v in (("kind", self.kind), ("mean", self.mean), ("scale", self.scale),
                                  ("threshold", self.threshold)) if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "FittedTransform":
        if d.get("kind") not in TRANSFORMS[1:]:
            raise DataError(f"the run folder's data transform {d!r} is not one pyrovae knows "
                            f"({', '.join(TRANSFORMS[1:])})")
        return cls(d["kind"], d.get("mean"), d.get("scale"), d.get("threshold"))


def choose_transform(kind: str, integer_valued: bool) -> str:
    """``auto`` resolved: ``standardize`` for real-valued data, ``none`` for integer data (counts, levels, 0/1),
    whose likelihoods take it as it is."""
    if kind not in TRANSFORMS:
        raise ConfigError(f"transform={kind!r} is unknown; choose one of {', '.join(TRANSFORMS)}")
    if kind != "auto":
        return kind
    return "none" if integer_valued else "standardize"


def fit_transform(kind: str, chunks: Iterable[torch.Tensor]) -> FittedTransform:
    """Fit ``kind`` (not ``auto``) on the training split, given as chunks ``(m, *x_shape)`` of it (one pass;
    float64 sums, so a split on disk is never held in memory).

    A feature with zero spread is scaled by 1 (it stays constant, not NaN). NaN entries (missing values) are
    left out: each feature's statistics are those of its observed entries.

    Raises:
        DataError: an empty split.
    """
    if kind in ("none", "log1p"):
        return FittedTransform(kind)
    n, total, squares, largest = None, None, None, None
    for x in chunks:
        x = x.double()
        observed = ~torch.isnan(x)  # missing entries (missing="mask") are left out of every statistic
        count = observed.sum(0)
        x = torch.where(observed, x, torch.zeros((), dtype=x.dtype))
        n = count if n is None else n + count
        total = x.sum(0) if total is None else total + x.sum(0)
        squares = (x * x).sum(0) if squares is None else squares + (x * x).sum(0)
        top = x.masked_fill(~observed, -torch.inf).max()
        largest = top if largest is None else torch.maximum(largest, top)
    if n is None or int(n.max()) == 0:
        raise DataError("the training split is empty (or wholly missing): there is nothing to fit a transform to")
    if kind == "binarize":
        return FittedTransform(kind, threshold=float(largest) / 2)
    if int(n.min()) == 0:
        raise DataError(f"{int((n == 0).sum())} feature(s) have no observed value in the training split: drop them, "
                        "or hold out fewer rows")
    mean = total / n
    var = (squares / n - mean * mean).clamp(min=0)
    scale = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    return FittedTransform(kind, mean=mean.float().tolist(), scale=scale.float().tolist())
