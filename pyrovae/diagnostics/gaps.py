"""Inference, amortization and approximation gaps (Cremer, Li & Duvenaud 2018): how much of the distance
between the ELBO and log p(x) is the price of one shared encoder, and how much the price of the guide
family, data point by data point."""

from __future__ import annotations

import math

import pyro
import torch
from torch import nn

from .. import checks
from ..errors import DataError
from ..evaluation.programs import check_arguments
from ..inference.objectives import make_elbo
from ..models.base import Family
from ..torchtools import device_of, frozen
from .psis import draws


class LocalGuide(nn.Module):
    r"""q(z | x_n) = ``guide_family(h_n)`` with one free parameter vector h_n per data point: the guide
    family without its encoder, the non-amortized guide of Cremer, Li & Duvenaud (2018).

    Args:
        guide_family: a guide family of :mod:`pyrovae.components.guides` (its own parameters, such as an
            IAF's MADE weights, are shared by all data points and not optimized here).
        h: ``(n, num_features)`` the initial parameters, e.g. ``model.guide_features(*args)``.
        site: the latent site it samples (default ``"z"``).

    Call it as a Pyro guide with the arguments of the model for the n data points it was built for.
    """

    def __init__(self, guide_family: nn.Module, h: torch.Tensor, site: str = "z"):
        super().__init__()
        self.guide_family, self.site = guide_family, site
        self.h = nn.Parameter(h.detach().clone())

    def forward(self, *args, h: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """Samples z ``(n, z_dim)`` in a data plate over the first argument's rows, as the models'
        guides do; ``h`` (default: all of :attr:`h`) are the parameters of those data points.

        Raises:
            DataError: the arguments and the parameters are for different numbers of data points.
        """
        h = self.h if h is None else h
        n = args[0].shape[0]
        if n != h.shape[0]:
            raise DataError(f"LocalGuide: {n} data points but parameters for {h.shape[0]}; "
                            "use .rows(start, stop) for a slice of the data points it was built for")
        with pyro.plate("data", n, dim=-1):
            return pyro.sample(self.site, self.guide_family(h))

    def rows(self, start: int, stop: int):
        """This guide restricted to the data points ``start:stop`` it was built for (a Pyro guide)."""
        return lambda *args, **kwargs: self(*args, h=self.h[start:stop])


def _mean_and_stderr(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return log_w.mean(0), log_w.std(0) / math.sqrt(log_w.shape[0])


def _log_likelihoods(from_q: dict, from_star: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(x) estimated from K draws of q and K of q*: with the mixture (q + q*) / 2 as the proposal
    (deterministic-mixture multiple importance sampling, Owen & Zhou 2000), with q alone and with q*
    alone. Each is log of an unbiased estimate of p(x); the mixture's ratios p / ((q + q*) / 2) are at
    most twice those of the better of the two, so one heavy-tailed proposal does not spoil it."""
    def mixture_log_weights(draws, own_is_q):
        log_q, log_star = ((draws["log_q"], draws["log_other"]) if own_is_q
                           else (draws["log_other"], draws["log_q"]))
        log_joint = draws["log_w"] + draws["log_q"]
        return log_joint - (torch.logaddexp(log_q, log_star) - math.log(2))

    def logmeanexp(log_w):
        return (torch.logsumexp(log_w.double(), 0) - math.log(log_w.shape[0])).float()

    mixed = torch.cat([mixture_log_weights(from_q, True), mixture_log_weights(from_star, False)])
    return logmeanexp(mixed), logmeanexp(from_q["log_w"]), logmeanexp(from_star["log_w"])


def amortization_gap(model: Family, *args, steps: int = 300, lr: float = 0.02, num_particles: int = 8,
                     num_samples: int = 1000, log_likelihood_samples: int = 1000, elbo: str = "TraceMeanField_ELBO",
                     seed: int = 0, max_chunk: int = 65536) -> dict:
    r"""The inference gap of each image split into its amortization and approximation parts.

    Following Cremer, Li & Duvenaud (2018), with q = q(z|x) the amortized guide and q* the best member of
    the same guide family for the single image x::

        inference gap      log p(x) - ELBO(q)     = amortization gap + approximation gap
        amortization gap   ELBO(q*) - ELBO(q)     (>= 0: the price of sharing one encoder)
        approximation gap  log p(x) - ELBO(q*)    (>= 0: the price of the family)

    q* is found by SVI: the encoder's output vector h(x) (all the per-data-point parameters the guide
    family reads, :meth:`pyrovae.models.Family.guide_features`: loc and raw scale for the diagonal
    Normal) becomes a free parameter per data point
    (:class:`LocalGuide`), started at h(x) and moved by Adam on the ELBO (Pyro's ``elbo`` estimator with
    ``num_particles`` draws, the learning rate annealed from ``lr`` to 0 by a cosine over ``steps``). The
    model's parameters stay fixed. The images are optimized together, but as Adam's update is
    elementwise and the ELBO a sum over images, each image's parameters move as if alone.

    ELBO(q) and ELBO(q*) are the means of ``num_samples`` log importance weights drawn with the same
    random numbers (the same base noise for reparameterized families), so their difference, the
    amortization gap, has a much smaller Monte Carlo error than either.

    log p(x) is importance sampled from K = ``log_likelihood_samples`` draws of q and K of q*, with their
    mixture (q + q*) / 2 as the proposal (deterministic-mixture multiple importance sampling, Owen & Zhou
    2000): p(x) ~= 1/(2K) sum_k p(x, z_k) / ((q(z_k) + q*(z_k)) / 2). The bound L_K with q alone (what
    :func:`pyrovae.evaluation.log_likelihood` computes) is also returned; where q is too narrow (PSIS k-hat
    > 0.7) its ratios have infinite variance and it can land far from log p(x) on either side, while
    the mixture's ratios are at most twice those of q*. All these estimates lie below log p(x) in
    expectation, by a bias that shrinks with K.

    Args:
        model: a trained model of a family with an amortized guide (``guide_features`` and
            ``guide_family``), left unchanged.
        *args: the programs' arguments, one row per data point (``x``; ``x, y`` for a CVAE), checked.
        steps: SVI steps (0: q* = q).
        lr: Adam's initial learning rate on h.
        num_particles: draws per image per SVI step.
        num_samples: draws per image for ELBO(q) and ELBO(q*).
        log_likelihood_samples: K for log p(x).
        elbo: the name of the objective (see :func:`pyrovae.inference.make_elbo`).
        seed: seeds the SVI and, identically, both ELBO evaluations.
        max_chunk: the largest number of (sample, image) pairs per pass in the ELBO evaluations.

    Returns:
        dict of ``(n,)`` tensors in nats per image: ``elbo``, ``elbo_optimized``, ``log_likelihood``
        (the mixture estimate; ``log_likelihood_amortized`` and ``log_likelihood_optimized``: L_K with q
        alone and with q* alone),
        ``inference_gap``, ``amortization_gap``, ``approximation_gap``, and the Monte Carlo standard
        errors ``elbo_stderr``, ``elbo_optimized_stderr``, ``amortization_gap_stderr``; also
        ``optimized_params`` (``model.guide_family.params`` of q*, e.g. ``loc`` and ``scale``
        ``(n, z_dim)``) and ``history`` ``(steps,)``, the SVI estimate of the mean ELBO per image at each step.

    Raises:
        ConfigError: ``steps < 0``; ``lr <= 0``; ``num_particles``, ``num_samples`` or
            ``log_likelihood_samples`` < 1; an unknown ``elbo``.
        UnsupportedError: a family without an amortized guide's per-data-point parameters (M2's guide
            draws a label first).
    """
    steps, lr = checks.integer(steps, "steps", 0), checks.positive_number(lr, "lr")
    num_particles = checks.positive_int(num_particles, "num_particles")
    num_samples = checks.positive_int(num_samples, "num_samples")
    log_likelihood_samples = checks.positive_int(log_likelihood_samples, "log_likelihood_samples")
    objective = make_elbo(elbo, num_particles=num_particles)
    n = check_arguments(args)
    args = tuple(a.to(device_of(model)) for a in args)
    site = model.latent_site
    with frozen(model):
        with torch.no_grad():
            local = LocalGuide(model.guide_family, model.guide_features(*args), site)
        optimizer = torch.optim.Adam([local.h], lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1))))
        history = torch.empty(steps)
        pyro.set_rng_seed(seed)
        for step in range(steps):
            optimizer.zero_grad()
            loss = objective.differentiable_loss(model.model, local, *args)
            loss.backward()
            optimizer.step()
            schedule.step()
            history[step] = -loss.detach() / n
        with torch.no_grad():
            pyro.set_rng_seed(seed)
            log_w_q = draws(model.model, model.guide, args, num_samples, max_chunk, site=site)["log_w"]
            pyro.set_rng_seed(seed)
            log_w_star = draws(model.model, local, args, num_samples, max_chunk, site=site)["log_w"]
            params = {k: v.detach().cpu() for k, v in model.guide_family.params(local.h).items()}
            from_q = draws(model.model, model.guide, args, log_likelihood_samples, max_chunk, site=site,
                           other=lambda start, stop: model.guide_family(local.h[start:stop]))
            from_star = draws(model.model, local, args, log_likelihood_samples, max_chunk, site=site,
                              other=lambda start, stop: model.guide_family(
                                  model.guide_features(*(a[start:stop] for a in args))))
    log_px, log_px_q, log_px_star = _log_likelihoods(from_q, from_star)
    elbo_q, se_q = _mean_and_stderr(log_w_q)
    elbo_star, se_star = _mean_and_stderr(log_w_star)
    _, se_gap = _mean_and_stderr(log_w_star - log_w_q)
    return {
        "elbo": elbo_q, "elbo_optimized": elbo_star, "log_likelihood": log_px,
        "log_likelihood_amortized": log_px_q, "log_likelihood_optimized": log_px_star,
        "inference_gap": log_px - elbo_q, "amortization_gap": elbo_star - elbo_q,
        "approximation_gap": log_px - elbo_star,
        "elbo_stderr": se_q, "elbo_optimized_stderr": se_star, "amortization_gap_stderr": se_gap,
        "optimized_params": params, "history": history,
    }


