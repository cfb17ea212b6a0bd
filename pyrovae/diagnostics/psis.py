"""Samples of the amortized guide with their importance weights, and PSIS k-hat (Yao, Vehtari, Simpson
& Gelman 2018): is q(z|x) a good importance proposal for p(z|x)?

Everything here takes the Pyro programs with their arguments, ``(model, guide, *args)``, so it works for
any model family (a CVAE's ``(x, y)`` included). The weights come from
:func:`pyrovae.inference.importance_weights`, the one place where pyrovae traces them.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pyro
import torch

from .. import checks
from ..errors import ConfigError, DataError
from ..evaluation.programs import check_arguments, program_device, program_module
from ..inference.traces import importance_weights
from ..torchtools import frozen
from .arviz_io import az

KHAT_GOOD = 0.5
"""Below this PSIS k-hat, importance sampling with q(z|x) is reliable (Yao et al. 2018)."""
KHAT_BAD = 0.7
"""Above this PSIS k-hat, importance-sampled estimates from q(z|x) are unreliable (Yao et al. 2018)."""


def frozen_programs(model):
    """:func:`pyrovae.torchtools.frozen` on the model's module (eval mode, no parameter gradients)."""
    module = program_module(model)
    return contextlib.nullcontext() if module is None else frozen(module)


def draws(model, guide, args: tuple, num_samples: int, max_chunk: int, other=None, site: str = "z") -> dict:
    """S = ``num_samples`` guide draws per data point with their log densities, chunked so that at most
    ``max_chunk`` (sample, data point) pairs go through the model at once; on the CPU.

    Returns ``z (S, n, z_dim)``, ``log_w (S, n)`` = log p(x, z) - log q(z|x) and ``log_q (S, n)`` =
    log q(z|x) for the guide's own draws; with ``other``, a function ``(start, stop) -> distribution`` over
    z for the data points ``start:stop``, also ``log_other (S, n)``, that distribution's log density at the
    same draws. A guide with per-data-point parameters (:class:`pyrovae.diagnostics.LocalGuide`) is
    restricted to each chunk's data points through its ``rows(start, stop)``.

    Raises:
        ConfigError: the guide has no sample site ``site``.
    """
    n = int(args[0].shape[0])
    samples_per_pass = min(num_samples, max_chunk)
    images_per_pass = max(1, max_chunk // samples_per_pass)
    columns = {"z": [], "log_w": [], "log_q": [], "log_other": []}
    for start in range(0, n, images_per_pass):
        chunk = tuple(a[start:start + images_per_pass] for a in args)
        size = int(chunk[0].shape[0])
        chunk_guide = guide.rows(start, start + size) if hasattr(guide, "rows") else guide
        rows = {key: [] for key in columns}
        for done in range(0, num_samples, samples_per_pass):
            k = min(samples_per_pass, num_samples - done)
            with pyro.validation_enabled(False):
                weights = importance_weights(model, chunk_guide, k, *chunk)
            if site not in weights.guide_trace.nodes:
                raise ConfigError(f"the guide has no sample site {site!r}; name the latent site to diagnose "
                                  f"(the guide's sites: {', '.join(weights.values)})")
            node = weights.guide_trace.nodes[site]
            z = node["value"].detach()
            z = z.expand(k, size, *z.shape[2:]).reshape(k, size, -1)
            rows["z"].append(z.cpu())
            rows["log_w"].append(weights.log_weights.detach().cpu())
            rows["log_q"].append(node["unscaled_log_prob"].detach().expand(k, size).cpu())
            if other is not None:
                rows["log_other"].append(other(start, start + size).log_prob(z).detach().cpu())
        for key, parts in rows.items():
            if parts:
                columns[key].append(torch.cat(parts, 0))
    return {key: torch.cat(parts, 1) for key, parts in columns.items() if parts}


@torch.no_grad()
def posterior_samples(model, guide, *args, num_samples: int = 1000, max_chunk: int = 65536,
                      site: str = "z") -> dict:
    r"""Draws z_k ~ q(z | x) and their log importance weights log p(x, z_k) - log q(z_k | x), per data point.

    The weights come from Pyro traces of ``guide`` and of ``model`` replayed on the guide's draws
    (:func:`pyrovae.inference.importance_weights`), so any model family, prior, likelihood and guide
    family is covered. Seed with ``pyro.set_rng_seed`` for reproducible draws.

    Args:
        model, guide: Pyro programs of a trained model (left unchanged), e.g. ``vae.model``, ``vae.guide``.
        *args: their arguments, one row per data point (``x``; ``x, y`` for a CVAE), checked by the
            family's ``check_data``.
        num_samples: S, draws per data point.
        max_chunk: the largest number of (sample, data point) pairs evaluated in one pass (bounds memory;
            the result itself holds S * n * z_dim numbers).
        site: the latent site whose draws are returned (default ``"z"``).

    Returns:
        dict with ``z`` ``(S, n, z_dim)`` and ``log_weights`` ``(S, n)`` (nats), on the CPU.

    Raises:
        ConfigError: ``num_samples`` or ``max_chunk`` < 1, or no site ``site``.
        DataError: arguments of different lengths.
    """
    num_samples = checks.positive_int(num_samples, "num_samples")
    max_chunk = checks.positive_int(max_chunk, "max_chunk")
    check_arguments(args)
    device = program_device(model)
    with frozen_programs(model):
        out = draws(model, guide, tuple(a.to(device) for a in args), num_samples, max_chunk, site=site)
    return {"z": out["z"], "log_weights": out["log_w"]}


# --- PSIS k-hat and importance-sampling ESS -----------------------------------------------------------------


def psis_khat(log_weights: torch.Tensor | np.ndarray) -> dict:
    r"""PSIS k-hat and the importance-sampling effective sample size, per image.

    For each image, the S log importance ratios log w_k = log p(x, z_k) - log q(z_k | x), z_k ~ q(z|x),
    go through ArviZ's ``psislw`` (Vehtari et al. 2024), which fits a generalized Pareto distribution to
    the largest min(S/5, 3 sqrt(S)) ratios; its shape k-hat is the diagnostic of Yao et al. (2018):
    below :data:`KHAT_GOOD` (0.5) q is a good importance proposal, between 0.5 and :data:`KHAT_BAD` (0.7)
    it is usable, above 0.7 importance-sampled estimates (such as the test log-likelihood) are
    unreliable. k > 0.5 means the chi-square divergence of p(z|x) from q is infinite, k > 1 that
    KL(p || q) is. When all of an image's log ratios agree to within float rounding (q equals the
    posterior) there is no tail to fit and k-hat is reported as -inf.

    The effective sample size is ESS = (sum_k w_k)^2 / sum_k w_k^2 in [1, S] (Kong 1992); ``ess_fraction``
    = ESS / S in [1/S, 1] is 1 when q is the posterior.

    Args:
        log_weights: ``(S, n)``: S log ratios (nats) for each of n images, as :func:`posterior_samples`
            gives them; S >= 25 (use S >= 1000 for a k-hat worth reading).

    Returns:
        dict of ``(n,)`` float64 tensors: ``khat``, ``ess`` and ``ess_fraction``.

    Raises:
        DataError: ``log_weights`` is not 2-dimensional, has fewer than 25 samples, or holds NaN or +inf.

    References:
        Yao, Vehtari, Simpson & Gelman (2018), *Yes, but Did It Work?: Evaluating Variational Inference*.
        Vehtari, Simpson, Gelman, Yao & Gabry (2024), *Pareto Smoothed Importance Sampling*, JMLR.
    """
    lw = torch.as_tensor(log_weights)
    if lw.dim() != 2:
        raise DataError(f"log_weights must be (num_samples, num_images), got shape {tuple(lw.shape)}; "
                         "for one image use log_weights[:, None]")
    if lw.shape[0] < 25:
        raise DataError(f"log_weights has {lw.shape[0]} samples per image; PSIS fits a Pareto tail to the "
                         "largest min(S/5, 3 sqrt(S)) of them and needs S >= 25 (use S >= 1000)")
    if not lw.is_floating_point() or torch.isnan(lw).any() or (lw == math.inf).any():
        raise DataError("log_weights must be floating point without NaN or +inf; check the model's "
                         "log-densities for the images concerned")
    # rounding error of a log ratio computed in lw's precision: below it the ratios are constant
    tolerance = 64 * torch.finfo(lw.dtype).eps * (1 + torch.where(lw.isfinite(), lw.abs(), 0).amax(0))
    constant = (lw.amax(0) - lw.amin(0)) <= tolerance
    lw64 = lw.double()
    with warnings.catch_warnings():
        # ArviZ warns about k-hat > 0.7 itself; here that is the measurement, reported to the caller
        warnings.simplefilter("ignore")
        _, khat = az.psislw(lw64.T.contiguous().numpy())
    khat = torch.as_tensor(np.asarray(khat, dtype=np.float64)).reshape(lw.shape[1])
    khat[constant] = -math.inf
    ess = torch.exp(2 * torch.logsumexp(lw64, 0) - torch.logsumexp(2 * lw64, 0))
    return {"khat": khat, "ess": ess, "ess_fraction": ess / lw.shape[0]}


