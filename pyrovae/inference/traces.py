r"""Importance weights from Pyro traces: the one place where pyrovae runs a guide, replays the model on
its draws and reads off log-densities.

Every estimator of pyrovae is built on :func:`importance_weights`: the IWAE and free-bits objectives,
the importance-sampled log-likelihood (:mod:`pyrovae.evaluation`), and the diagnostics (PSIS k-hat,
gaps). They take a model and a guide as Pyro programs with their arguments, ``(model, guide, *args,
**kwargs)``, the way Pyro's ELBOs do, so a label, a visible quadrant or a mask is simply another
argument.

Layout the estimators rely on: every sample site of the model and the guide lies inside one data plate
at ``dim=-1`` (one entry per data point), as in every model of :mod:`pyrovae.models`. K draws per data
point are vectorized in a ``pyro.plate("particles", K, dim=-2)`` around both programs, so a site in
the data plate has batch shape ``(K, batch)``.

For each data point x_n and draw z_{k,n} ~ q(z | x_n),

.. math::

    \log w_{k,n} = \log p(x_n, z_{k,n}) - \log q(z_{k,n} | x_n),

with each site weighed by its ``poutine.scale`` (beta on the latent sites, see
:func:`pyrovae.inference.kl_weight`) and mask, but without the data plate's ``num_data / batch``
factor, which belongs outside any log-sum-exp.

Why not Pyro's ``pyro.infer.importance.vectorized_importance_weights``: it sums every site over the
whole batch and returns one weight per particle, shape ``(K,)``, so the batch would act as a single
observation. Every estimator here needs one weight per particle and data point, ``(K, batch)``, and
the weights with the KL weight's scale but without the data plate's subsampling scale; the traces
below keep the data plate's dimension for that.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from ..errors import ConfigError, DataError

PARTICLES = "particles"
PARTICLE_DIM = -2
DATA_DIM = -1


def trace_pair(model, guide, *args, num_particles: int = 1, vectorize: bool | None = None, **kwargs):
    """``(model_trace, guide_trace)``: one run of the guide and of the model replayed on its draws, with
    subsample sites pruned and no log-densities computed (the caller computes what it needs).

    With ``vectorize`` (by default when ``num_particles > 1``) both programs run inside
    ``pyro.plate("particles", num_particles, dim=-2)``, so a site in the data plate has batch shape
    ``(num_particles, batch)``; without it they run once, as they are. Gradients flow through
    reparameterized draws.

    Raises:
        DataError: a batch of no data points (a tensor argument with first dimension 0): an objective over it
            is undefined (the check is one shape comparison per call, not a check of the data).
    """
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == 0:
            raise DataError(f"the batch holds no data points (an argument of shape {tuple(a.shape)}); an ELBO needs "
                            "at least one")
    if vectorize is None:
        vectorize = num_particles > 1
    if vectorize:
        with pyro.plate(PARTICLES, num_particles, dim=PARTICLE_DIM):
            return trace_pair(model, guide, *args, vectorize=False, **kwargs)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def particle_traces(model, guide, num_particles: int, *args, **kwargs):
    """``(model_trace, guide_trace)`` for ``num_particles`` draws from the guide, always vectorized in the
    ``particles`` plate (also for one draw), with their log-densities computed (``site["log_prob"]`` as
    Pyro scales it, ``site["unscaled_log_prob"]``)."""
    model_trace, guide_trace = trace_pair(model, guide, *args, num_particles=num_particles, vectorize=True,
                                          **kwargs)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return model_trace, guide_trace


def sample_sites(trace, observed: bool | None = None):
    """The sample sites of ``trace`` (subsample sites already pruned), all of them or only the observed
    (``observed=True``) or latent (``False``) ones."""
    for site in trace.nodes.values():
        if site["type"] == "sample" and (observed is None or bool(site["is_observed"]) == observed):
            yield site


def data_frame(site):
    """The site's plate frame at ``dim=-1`` (the data plate), or None."""
    return next((f for f in site["cond_indep_stack"] if f.dim == DATA_DIM), None)


def plate_scale(site) -> float:
    """The product of ``full_size / size`` over the site's subsampling plates: the factor by which
    Pyro scales a mini-batch's log-density up to the whole data set."""
    scale = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size:
            scale = scale * frame.full_size / frame.size
    return scale


def site_weight(site):
    """The site's own weight: its ``poutine.scale`` without the data plate's ``num_data / batch``
    factor (beta on a latent site under :func:`pyrovae.inference.kl_weight`, else 1)."""
    outer = plate_scale(site)
    return site["scale"] if outer == 1.0 else site["scale"] / outer


def weighted_log_prob(site) -> torch.Tensor:
    """The site's log-density with its weight (:func:`site_weight`) and mask, without the data plate's
    ``num_data / batch`` factor: ``(num_particles, batch)`` or broadcastable to it."""
    return scale_and_mask(site["unscaled_log_prob"], site_weight(site), site["mask"])


def data_scale(trace) -> float:
    """``num_data / batch`` of the trace's data plate (1 when it does not subsample)."""
    for site in sample_sites(trace):
        frame = data_frame(site)
        if frame is not None and frame.full_size is not None:
            return frame.full_size / frame.size
    return 1.0


def data_size(trace) -> int | None:
    """The number of data points in the trace's data plate (None without one)."""
    for site in sample_sites(trace):
        frame = data_frame(site)
        if frame is not None:
            return frame.size
    return None


@dataclass
class ImportanceWeights:
    """K importance draws per data point and their log-densities, from :func:`importance_weights`.

    Attributes:
        log_weights: ``(K, batch)`` log p(x, z) - log q(z | x), nats, each site with its weight.
        log_likelihood_terms: ``(K, batch)`` the observed sites' log-densities, log p(x | z) (the
            reconstruction term), with their weights.
        log_q: ``(K, batch)`` log q(z | x) of the draws, unweighted.
        values: the guide's draws by site name, each ``(K, batch, ...)``.
        data_scale: ``num_data / batch`` of the data plate (1 when it does not subsample).
        model_trace, guide_trace: the traces themselves.
    """

    log_weights: torch.Tensor
    log_likelihood_terms: torch.Tensor
    log_q: torch.Tensor
    values: dict
    data_scale: float
    model_trace: object
    guide_trace: object


def _as_batch(total, num_particles: int, size: int | None) -> torch.Tensor:
    total = torch.as_tensor(total)
    if size is None:  # no data plate: the batch is whatever the sites' log-densities broadcast to
        size = total.shape[-1] if total.dim() >= 2 else 1
    return total.expand(num_particles, size)


def log_weights_from_traces(model_trace, guide_trace, num_particles: int) -> torch.Tensor:
    """``(num_particles, batch)`` log weights from traces made by :func:`particle_traces`."""
    log_w = 0.0
    for site in sample_sites(model_trace):
        log_w = log_w + weighted_log_prob(site)
    for site in sample_sites(guide_trace, observed=False):
        log_w = log_w - weighted_log_prob(site)
    return _as_batch(log_w, num_particles, data_size(model_trace))


def importance_weights(model, guide, num_particles: int, *args, **kwargs) -> ImportanceWeights:
    r"""Importance log weights of ``num_particles`` guide draws per data point, with the terms that other
    estimators need from the same draws.

    Args:
        model, guide: Pyro programs taking ``*args, **kwargs``, every sample site inside a data plate at
            ``dim=-1`` (as the models of :mod:`pyrovae.models`); the guide may be any proposal over the
            model's latent sites, e.g. one that draws z from the prior.
        num_particles: K, draws per data point (one vectorized pass).

    Returns:
        an :class:`ImportanceWeights`; tensors keep their graph (differentiable through reparameterized
        draws).
    """
    model_trace, guide_trace = particle_traces(model, guide, num_particles, *args, **kwargs)
    size = data_size(model_trace)
    log_w = log_weights_from_traces(model_trace, guide_trace, num_particles)
    observed, log_q = 0.0, 0.0
    for site in sample_sites(model_trace, observed=True):
        observed = observed + weighted_log_prob(site)
    values = {}
    for site in sample_sites(guide_trace, observed=False):
        log_q = log_q + site["unscaled_log_prob"]
        values[site["name"]] = site["value"]
    return ImportanceWeights(log_w, _as_batch(observed, num_particles, size), _as_batch(log_q, num_particles, size),
                             values, data_scale(model_trace), model_trace, guide_trace)


def check_layout(model_trace, guide_trace, objective: str, reparameterized: bool = True) -> None:
    """One :class:`~pyrovae.errors.ConfigError` for a model/guide pair that ``objective`` cannot handle:
    a sample site outside the data plate at ``dim=-1`` or inside another plate, a model latent site
    without a guide site, and (``reparameterized``) a guide site without ``rsample``."""
    for trace, what in ((model_trace, "model"), (guide_trace, "guide")):
        for site in sample_sites(trace):
            extra = [f for f in site["cond_indep_stack"] if f.dim not in (DATA_DIM, PARTICLE_DIM)]
            if data_frame(site) is None or extra:
                raise ConfigError(
                    f"{objective} needs every sample site inside one data plate at dim=-1 (the per-data-point "
                    f"bound is taken over it); the {what}'s site {site['name']!r} is in plates "
                    f"{[(f.name, f.dim) for f in site['cond_indep_stack'] if f.name != PARTICLES]}")
    if reparameterized:
        for site in sample_sites(guide_trace, observed=False):
            if not site["fn"].has_rsample:
                raise ConfigError(
                    f"{objective} uses reparameterized (pathwise) gradients, but the guide's site {site['name']!r} "
                    f"has a {type(site['fn']).__name__} distribution without rsample; use a reparameterizable "
                    f"guide family (e.g. Normal) or a score-function estimator such as pyro.infer.TraceGraph_ELBO")
    for site in sample_sites(model_trace, observed=False):
        if site["name"] not in guide_trace.nodes:
            raise ConfigError(f"the model's latent site {site['name']!r} has no guide site; {objective} "
                              "needs the guide to sample every latent site of the model")
