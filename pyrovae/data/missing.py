"""Missingness patterns for experiments: which entries of a complete table to hide, with a seed.

* :func:`mcar`: missing completely at random: each entry independently with probability ``rate``.
* :func:`mnar_self_masking`: missing not at random by self-masking: an entry above its column's mean goes
  missing with probability ``rate``, one at or below it never (so the missing values are the large ones,
  and imputation from the observed ones is biased low; the setting of Ipsen, Mattei & Frellsen 2021).

Both return a copy of ``x`` (an array or a tensor, any shape ``(n, ...)``) with NaN where missing, which
``DataConfig(missing="mask")`` and ``pyrovae impute`` read as missing.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


def _check(rate: float, name: str) -> None:
    if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ConfigError(f"{name}: rate must be a probability in [0, 1], got {rate!r}")


def _with_nan(x, missing: np.ndarray):
    if isinstance(x, torch.Tensor):
        return x.float().masked_fill(torch.from_numpy(missing), float("nan"))
    out = np.array(x, dtype=np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
    out[missing] = np.nan
    return out


def mcar(x, rate: float, seed: int = 0):
    """``x`` with each entry missing (NaN) independently with probability ``rate``, drawn with ``seed``.

    Raises:
        ConfigError: ``rate`` outside [0, 1].
    """
    _check(rate, "mcar")
    return _with_nan(x, np.random.default_rng(seed).random(np.shape(x)) < rate)


def mnar_self_masking(x, rate: float, seed: int = 0):
    """``x`` with each entry above its column's mean (over the rows, first axis) missing with probability
    ``rate``, drawn with ``seed``; entries at or below the mean stay observed.

    Raises:
        ConfigError: ``rate`` outside [0, 1].
    """
    _check(rate, "mnar_self_masking")
    values = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    above = values > np.nanmean(values, axis=0, keepdims=True)
    return _with_nan(x, above & (np.random.default_rng(seed).random(values.shape) < rate))


__all__ = ["mcar", "mnar_self_masking"]
