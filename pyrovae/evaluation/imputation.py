r"""Imputation of missing entries by a VAE trained on incomplete data (Mattei & Frellsen 2019).

For a data point with observed part x_o, mask m and K draws z_k ~ q(z | x_o) with self-normalized
importance weights

.. math::

    w_k = \frac{p(x_o | z_k) p(z_k) / q(z_k | x_o)}{\sum_l p(x_o | z_l) p(z_l) / q(z_l | x_o)},

* **single imputation** is the importance-weighted estimate of the conditional mean,

  .. math:: \hat x_m = \sum_k w_k \, \mathbb{E}[x_m | z_k] \approx \mathbb{E}[x_m | x_o],

  which is consistent as K grows (Mattei & Frellsen's Eq. 9); for the mixed-type likelihood
  (:mod:`pyrovae.components.mixed`) the point of each type instead: the most probable class of a binary,
  categorical or ordinal entry under the weighted mixture sum_k w_k p(x_m | z_k), the rounded mean of a count;
* **multiple imputation** is sampling importance resampling: M indices k_1..k_M drawn with probabilities
  w, then x_m^{(j)} ~ p(x_m | z_{k_j}), approximately draws of p(x_m | x_o); the per-entry predictive
  interval at ``level`` is the interval between their (1 - level)/2 and (1 + level)/2 quantiles.

The weights are those of :func:`pyrovae.inference.importance_weights` over the masked programs
``model(x, mask)`` and ``guide(x, mask)`` (:class:`pyrovae.VAE`), so log p(x_o | z) counts the observed
entries only. Observed entries are returned as they were, bit for bit.

References:
    Mattei & Frellsen (2019), *MIWAE: Deep Generative Modelling and Imputation of Incomplete Data Sets*, ICML.
    Rubin (1987), *Multiple Imputation for Nonresponse in Surveys*.
"""

from __future__ import annotations

import torch

from .. import checks
from ..errors import ArgumentTypeError, ConfigError, DataError, UnsupportedError
from ..inference.traces import importance_weights
from ..torchtools import rng_kept
from .programs import evaluating


@torch.no_grad()
def impute(model, x: torch.Tensor, mask: torch.Tensor, num_samples: int = 1000, num_imputations: int = 0,
           level: float = 0.9, seed: int = 0, batch_size: int = 256) -> dict:
    """Single (and multiple) imputation of the missing entries of ``x``.

    Args:
        model: a trained :class:`pyrovae.VAE` (a family with ``takes_mask``, a ``likelihood`` and a ``decoder``).
        x: ``(n, *x_shape)`` as the model sees it (after the data's transform); any finite value where missing.
        mask: ``(n, *x_shape)``, 1 (or True) observed, 0 missing.
        num_samples: K, importance draws of q(z | x_o) per data point.
        num_imputations: M, draws of x_m by sampling importance resampling (0: single imputation only).
        level: the predictive intervals' probability (with ``num_imputations`` > 1).
        seed: seed of the draws (the caller's random state is left as it was).
        batch_size: data points per vectorized pass (memory ~ K * batch_size * prod(x_shape) floats).

    Returns:
        dict: ``imputed`` ``(n, *x_shape)`` (x with the missing entries replaced by their importance-weighted
        conditional mean); ``ess`` ``(n,)`` the weights' effective sample size (1/sum w^2, out of K); with
        ``num_imputations``: ``draws`` ``(M, n, *x_shape)`` and ``lower``, ``upper`` ``(n, *x_shape)`` (equal to
        x where observed).

    Raises:
        UnsupportedError: a model that takes no mask. DataError: ``x`` and ``mask`` of different shapes, or
        non-finite observed values. ConfigError: ``num_samples`` < 1, ``num_imputations`` < 0, ``level``
        outside (0, 1).
    """
    if not getattr(model, "takes_mask", False) or not hasattr(model, "likelihood"):
        raise UnsupportedError(f"imputation needs a VAE trained with missing values (a model taking a mask), got "
                               f"{getattr(model, 'kind', type(model).__name__)}")
    if not isinstance(x, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise ArgumentTypeError("x and mask must be torch tensors")
    if x.shape != mask.shape:
        raise DataError(f"x has shape {tuple(x.shape)} and mask {tuple(mask.shape)}: give one mask entry per value")
    num_samples = checks.positive_int(num_samples, "num_samples")
    if not isinstance(num_imputations, int) or num_imputations < 0:
        raise ConfigError(f"num_imputations must be a whole number >= 0, got {num_imputations!r}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    observed = mask.bool()
    if not torch.isfinite(x[observed]).all():
        raise DataError("x has NaN or infinite observed values; mark missing entries with the mask")
    device = next(iter(model.parameters()), x).device
    x_filled = x.masked_fill(~observed, 0.0)
    imputed, ess, draws = [], [], []
    with evaluating(model.model), rng_kept(device):
        torch.manual_seed(seed)
        for start in range(0, x.shape[0], batch_size):
            xc = x_filled[start:start + batch_size].to(device)
            mc = mask[start:start + batch_size].to(device=device, dtype=xc.dtype)
            weights = importance_weights(model.model, model.guide, num_samples, xc, mc)
            w = torch.softmax(weights.log_weights, dim=0)  # (K, b)
            fn = weights.model_trace.nodes["x"]["fn"]
            base = getattr(getattr(fn, "d", fn), "base_dist", None)
            if hasattr(base, "weighted_point"):  # mixed types: the most probable class of a categorical, ...
                imputed.append(base.weighted_point(w).reshape(xc.shape).cpu())
            else:
                means = fn.mean  # (K, b, *x_shape): E[x | z_k]
                w_x = w.reshape(*w.shape, *([1] * (means.dim() - 2)))
                imputed.append((w_x * means).sum(0).cpu())
            ess.append((1.0 / w.pow(2).sum(0)).cpu())
            if num_imputations:
                z = weights.values[model.latent_site]  # (K, b, z_dim)
                picks = torch.multinomial(w.T, num_imputations, replacement=True)  # (b, M)
                chosen = z.transpose(0, 1)[torch.arange(z.shape[1], device=device)[:, None], picks]  # (b, M, z_dim)
                drawn = model.likelihood(model.decoder(chosen.transpose(0, 1))).sample()  # (M, b, *x_shape)
                draws.append(drawn.cpu())
    mean = torch.cat(imputed)
    out = {"imputed": torch.where(observed, x, mean.to(x.dtype)), "ess": torch.cat(ess)}
    if num_imputations:
        drawn = torch.where(observed, x, torch.cat(draws, 1).to(x.dtype))
        tail = (1 - level) / 2
        out["draws"] = drawn
        if num_imputations > 1:
            q = torch.quantile(drawn.float(), torch.tensor([tail, 1 - tail]), dim=0).to(x.dtype)
            out["lower"], out["upper"] = torch.where(observed, x, q[0]), torch.where(observed, x, q[1])
    return out


def imputation_metrics(truth: torch.Tensor, mask: torch.Tensor, result: dict) -> dict:
    """How well ``result`` (of :func:`impute`) recovers ``truth`` ``(n, *x_shape)`` on the missing entries
    (``mask`` 0): ``rmse`` of the single imputation and, with intervals, their ``coverage`` (the share of
    missing entries inside them) and mean ``width``, in the units of ``truth``."""
    missing = ~mask.bool()
    err = (result["imputed"] - truth)[missing]
    metrics = {"rmse": err.pow(2).mean().sqrt().item(), "num_missing": int(missing.sum())}
    if "lower" in result:
        inside = (result["lower"] <= truth) & (truth <= result["upper"])
        metrics["coverage"] = inside[missing].float().mean().item()
        metrics["width"] = (result["upper"] - result["lower"])[missing].mean().item()
    return metrics


__all__ = ["impute", "imputation_metrics"]
