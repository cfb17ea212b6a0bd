r"""Objectives: the ELBO with its terms, the importance-weighted bound (IWAE) and free bits.

Every objective here is a ``pyro.infer.ELBO``: ``differentiable_loss(model, guide, *args, **kwargs)``
returns the negative bound in nats, summed over the data points of the batch and scaled by
``num_data / batch`` when the model's data plate subsamples (as Pyro's ELBOs scale it), and ``loss`` /
``loss_and_grads`` follow, so ``pyro.infer.SVI`` takes them too. Each also has ``loss_terms``, which
returns the loss with its named terms from the same pass (the trainer records them):

* :class:`ELBO` (``"TraceMeanField_ELBO"``, ``"Trace_ELBO"`` by :func:`make_elbo`): the ELBO split into
  reconstruction and KL, with the KL in closed form where ``kl_divergence`` has it (as Pyro's
  ``TraceMeanField_ELBO``) or by Monte Carlo (as Pyro's ``Trace_ELBO``).
* :class:`IWAE` (``"IWAE"``): the K-sample importance-weighted bound of Burda, Grosse & Salakhutdinov
  (2016), with the log-sum-exp taken per data point.
* :class:`FreeBitsELBO`: the ELBO with the KL term of each latent dimension floored at ``free_bits``
  nats (Kingma et al. 2016).

The model and guide follow the layout of :mod:`pyrovae.inference.traces`: every sample site inside one
data plate at ``dim=-1``.

References:
    Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*, ICLR.
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), *Improved Variational Inference
    with Inverse Autoregressive Flow*, NeurIPS (free bits: Appendix C.8).
"""

from __future__ import annotations

import math
import numbers

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO as PyroELBO
from torch.distributions import Distribution, Independent, kl_divergence

from .. import checks
from ..errors import ConfigError, UnsupportedError
from .traces import (check_layout, data_size, importance_weights, particle_traces, plate_scale, sample_sites,
                     trace_pair)


class _DifferentiableELBO(PyroELBO):
    """An ELBO defined by :meth:`loss_terms`; ``differentiable_loss``, ``loss`` and ``loss_and_grads``
    (what ``pyro.infer.SVI`` calls) follow from it."""

    def loss_terms(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        """``{"loss": ..., "objective": ..., <other terms>}``: scalar tensors in nats, summed over the batch
        and scaled to ``num_data`` like the loss; ``loss`` is ``-objective``, differentiable."""
        raise NotImplementedError

    def _get_trace(self, model, guide, args, kwargs):
        """One (model, guide) trace pair with K particles vectorized (Pyro's ``ELBO`` asks for it; the
        objectives here compute their terms from :mod:`pyrovae.inference.traces` themselves)."""
        return particle_traces(model, guide, self.num_particles, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative bound (nats, scaled to the whole data set): a scalar tensor to minimize."""
        return self.loss_terms(model, guide, *args, **kwargs)["loss"]

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The value of :meth:`differentiable_loss` as a float (no gradients)."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """:meth:`loss`, after backpropagating it (for ``pyro.infer.SVI``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward(retain_graph=self.retain_graph)
        return loss.item()


def _scaled_sum(value: torch.Tensor, scale, mask) -> torch.Tensor:
    return scale_and_mask(value, scale, mask).sum()


def _is_plate_scale(scale, outer: float) -> bool:
    """Whether a site's scale is its plates' ``num_data / batch`` alone (no beta on it), to float rounding."""
    return isinstance(scale, numbers.Real) and abs(scale - outer) <= 1e-12 * abs(outer)


class ELBO(_DifferentiableELBO):
    r"""The evidence lower bound, split into its reconstruction and KL terms from one pass.

    .. math::

        \mathrm{ELBO}(x) = \mathbb{E}_{q(z|x)}[\log p(x | z)] - \mathrm{KL}(q(z | x) \,\|\, p(z)) \le \log p(x)

    in nats. Each latent site's KL is in closed form where ``torch.distributions.kl_divergence`` has a
    rule for the guide and prior pair and ``analytic_kl`` is set (Pyro's ``TraceMeanField_ELBO``), else
    the Monte Carlo estimate log q(z|x) - log p(z) at the guide's draws (Pyro's ``Trace_ELBO``); its
    ``differentiable_loss`` equals theirs on the same draws (tested). A latent site weighed by
    ``poutine.scale`` (beta, see :func:`pyrovae.inference.kl_weight`) weighs its KL in the objective;
    the ``kl`` and ``elbo`` terms are the unweighted ones (beta = 1), from the same pass.

    Why not Pyro's classes themselves: they return the bound alone, while the trainer records the
    reconstruction and the KL of the same draws (so that a beta-weighted run still reports its ELBO),
    and they compute every site's log-density, also the prior's and the guide's where the KL is in
    closed form and does not need them.

    Args:
        num_particles: draws of z per data point, vectorized in one pass (default 1).
        analytic_kl: use the closed-form KL where it exists (default True).

    ``loss_terms`` returns ``loss`` (-objective), ``objective`` (the beta-weighted ELBO), ``elbo``,
    ``reconstruction`` and ``kl``, each summed over the batch and scaled to ``num_data``, averaged over
    the particles.

    References:
        Kingma & Welling (2014), *Auto-Encoding Variational Bayes*, ICLR.
        Rezende, Mohamed & Wierstra (2014), *Stochastic Backpropagation and Approximate Inference in
        Deep Generative Models*, ICML.
    """

    def __init__(self, num_particles: int = 1, analytic_kl: bool = True):
        num_particles = checks.positive_int(num_particles, "num_particles")
        super().__init__(num_particles=num_particles, max_plate_nesting=1, vectorize_particles=num_particles > 1)
        self.analytic_kl = bool(analytic_kl)

    def _kl(self, model_site, guide_site) -> torch.Tensor | None:
        if not self.analytic_kl:
            return None
        try:
            return kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            return None

    def loss_terms(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        model_trace, guide_trace = trace_pair(model, guide, *args, num_particles=self.num_particles, **kwargs)
        reconstruction, kl, weighted_kl = 0.0, 0.0, 0.0
        for model_site in sample_sites(model_trace):
            if model_site["is_observed"]:
                log_p = model_site["fn"].log_prob(model_site["value"])
                reconstruction = reconstruction + _scaled_sum(log_p, model_site["scale"], model_site["mask"])
                continue
            guide_site = guide_trace.nodes[model_site["name"]]
            scale, outer = guide_site["scale"], plate_scale(guide_site)
            weighted = not _is_plate_scale(scale, outer)  # beta != 1 on this site
            kl_site = self._kl(model_site, guide_site)
            if kl_site is not None:
                kl_site = kl_site.expand(guide_site["fn"].batch_shape)
                site_weighted = _scaled_sum(kl_site, scale, guide_site["mask"])
                site_kl = _scaled_sum(kl_site, outer, guide_site["mask"]) if weighted else site_weighted
            else:
                log_q = guide_site["fn"].log_prob(guide_site["value"])
                log_p = model_site["fn"].log_prob(model_site["value"])
                site_weighted = (_scaled_sum(log_q, scale, guide_site["mask"])
                                 - _scaled_sum(log_p, model_site["scale"], model_site["mask"]))
                site_kl = (_scaled_sum(log_q, outer, guide_site["mask"])
                           - _scaled_sum(log_p, plate_scale(model_site), model_site["mask"])) if weighted \
                    else site_weighted
            kl = kl + site_kl
            weighted_kl = weighted_kl + site_weighted
        k = self.num_particles
        objective = (reconstruction - weighted_kl) / k if k > 1 else reconstruction - weighted_kl
        reconstruction, kl = torch.as_tensor(reconstruction) / k, torch.as_tensor(kl) / k
        return {"loss": -objective, "objective": objective, "elbo": reconstruction - kl,
                "reconstruction": reconstruction, "kl": kl}


class IWAE(_DifferentiableELBO):
    r"""The importance-weighted bound (Burda, Grosse & Salakhutdinov 2016) as a training objective.

    For each data point x_n, with z_{1..K} ~ q(z | x_n) drawn independently,

    .. math::

        \mathcal{L}_K(x_n) = \log \frac{1}{K} \sum_{k=1}^K \frac{p(x_n, z_k)}{q(z_k | x_n)}
        \le \log p(x_n),

    a bound (nats) that equals the ELBO at K = 1, does not decrease in expectation with K, and tends
    to log p(x_n) as K grows. The log-sum-exp is taken per data point, never over the mini-batch:
    ``differentiable_loss`` returns ``-(num_data / batch) * sum_n L_K(x_n)``. Gradients are the plain
    reparameterized ones (autograd through the log-sum-exp, which weighs each particle's gradient by
    its normalized importance weight), so every latent site of the guide must have ``rsample``.

    **beta < 1** (beta-VAE, KL warm-up): a latent site weighed by ``poutine.scale(beta)`` in both
    model and guide (:func:`pyrovae.inference.kl_weight`) enters each log weight with that weight, so

    .. math::

        \log w_k = \log p(x_n | z_k) + \beta \, [\log p(z_k) - \log q(z_k | x_n)],

    which is the beta-weighted ELBO at K = 1 and the IWAE bound at beta = 1. For beta != 1 it is not a
    bound on log p(x).

    Why not ``pyro.infer.RenyiELBO(alpha=0)``: on a full batch whose sites all lie in the data plate it
    gives this same per-data-point bound (a test checks it, draw for draw), but it applies each site's
    full scale inside the log weights, so with a subsampled data plate every weight is raised to the
    power num_data / batch before the log-sum-exp instead of the bound being scaled after it; it has no
    ``differentiable_loss`` (which the trainer uses); and its ``loss_and_grads`` backpropagates only when
    the traces hold ``pyro.param`` sites, which pyrovae's models have none of.

    Args:
        num_particles: K, importance samples per data point (default 5; one vectorized pass).

    ``loss_terms`` returns ``loss`` and ``objective`` (the bound, summed and scaled to ``num_data``) and
    ``reconstruction`` (the mean over the K draws of log p(x | z)).

    Raises (``differentiable_loss``, ``loss``):
        ConfigError: a guide site without ``rsample``; a sample site outside a data plate at ``dim=-1``
            or inside another plate; a model latent site absent from the guide.

    References:
        Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*, ICLR.
    """

    def __init__(self, num_particles: int = 5):
        super().__init__(num_particles=checks.positive_int(num_particles, "num_particles"), max_plate_nesting=1,
                         vectorize_particles=True)

    def _weights(self, model, guide, args, kwargs):
        weights = importance_weights(model, guide, self.num_particles, *args, **kwargs)
        check_layout(weights.model_trace, weights.guide_trace, "IWAE")
        return weights

    def bound(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """L_K(x_n) for each data point of the batch: ``(batch,)`` in nats, differentiable, without the
        data plate's ``num_data / batch`` factor."""
        log_w = self._weights(model, guide, args, kwargs).log_weights
        return torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)

    def loss_terms(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        weights = self._weights(model, guide, args, kwargs)
        bound = torch.logsumexp(weights.log_weights, dim=0) - math.log(self.num_particles)
        objective = weights.data_scale * bound.sum()
        reconstruction = weights.data_scale * weights.log_likelihood_terms.mean(0).sum()
        return {"loss": -objective, "objective": objective, "reconstruction": reconstruction}


# --- KL per latent dimension ------------------------------------------------------------------------------


def _factors(d: Distribution) -> Distribution | None:
    """The elementwise factors of ``d`` (stripping ``Independent`` wrappers), or None when ``d`` does
    not factorize over its event dimensions."""
    while isinstance(d, Independent):
        d = d.base_dist
    return d if tuple(d.event_shape) == () else None


class NotFactorizedError(UnsupportedError):
    """Raised by :func:`kl_per_dim` when the prior or the guide does not factorize over the dimensions of
    z, so the KL term has no per-dimension split."""


class NoClosedFormKLError(UnsupportedError):
    """Raised by :func:`kl_per_dim` when the KL has no closed form and no draw ``z`` was given for the
    Monte Carlo estimate."""


def kl_per_dim(guide_dist: Distribution, prior_dist: Distribution, z: torch.Tensor | None = None,
               analytic: bool = True) -> torch.Tensor:
    r"""KL(q(z_j | x) || p(z_j)) for each latent dimension j, in nats.

    Where both the guide and the prior factorize over the dimensions of z (``Independent`` wrappers of
    elementwise distributions, e.g. ``Normal(loc, scale).to_event(1)``), KL(q || p) = sum_j KL_j. With
    ``analytic`` and a closed form for the factors (``torch.distributions.kl_divergence``, e.g. Normal
    against Normal), KL_j is exact; otherwise it is the one-sample Monte Carlo estimate
    log q_j(z_j) - log p_j(z_j) at ``z`` (a draw from q, so that its expectation is KL_j).

    Args:
        guide_dist: q(z|x), batch shape ``batch``, event shape ``(z_dim,)`` (or any event shape; its
            dimensions are flattened).
        prior_dist: p(z), batch shape broadcastable to ``batch``, same event shape.
        z: ``(*sample, *batch, z_dim)``, draws from ``guide_dist``; needed for the Monte Carlo estimate.
        analytic: use the closed form where ``kl_divergence`` has one (default).

    Returns:
        ``(*batch, z_dim)`` (analytic) or ``(*sample, *batch, z_dim)`` (Monte Carlo): KL_j in nats.

    Raises:
        NotFactorizedError: the prior or the guide does not factorize over the dimensions of z (mixture,
            VampPrior, flow prior; low-rank or flow guide).
        NoClosedFormKLError: the Monte Carlo estimate is needed and ``z`` is None.
    """
    for d, what in ((prior_dist, "prior"), (guide_dist, "guide")):
        if _factors(d) is None:
            raise NotFactorizedError(
                f"the {what} {type(d).__name__} does not factorize over the latent dimensions, so the KL term "
                f"has no per-dimension split; free bits and the KL per dimension need a factorized "
                f"(Independent, e.g. Normal(...).to_event(1)) {what}, such as the standard_normal or "
                f"learned_normal prior and the diagonal_normal guide (active units work for every model)")
    q, p = _factors(guide_dist), _factors(prior_dist)
    event_shape = guide_dist.event_shape
    kl = None
    if analytic:
        try:
            kl = kl_divergence(q, p)
        except NotImplementedError:
            kl = None
    if kl is None:
        if z is None:
            raise NoClosedFormKLError(f"KL({type(q).__name__} || {type(p).__name__}) has no closed form; pass z, "
                                      "a draw from the guide, for the Monte Carlo estimate")
        kl = q.log_prob(z) - p.log_prob(z)
    shape = torch.broadcast_shapes(kl.shape, guide_dist.batch_shape + event_shape,
                                   prior_dist.batch_shape + event_shape)
    return kl.expand(shape).reshape(*shape[:len(shape) - len(event_shape)], math.prod(event_shape))


def analytic_kl(model, guide, *args, **kwargs) -> torch.Tensor | None:
    """KL(q(z|x) || p(z)) per data point, ``(batch,)`` in nats, summed over the latent sites in closed
    form, from one trace of ``guide`` and of ``model`` replayed on it; None when ``kl_divergence`` has no
    rule for some site's guide and prior pair (the KL then needs Monte Carlo)."""
    with pyro.validation_enabled(False):
        model_trace, guide_trace = trace_pair(model, guide, *args, **kwargs)
    total = None
    for site in sample_sites(guide_trace, observed=False):
        try:
            kl = kl_divergence(site["fn"], model_trace.nodes[site["name"]]["fn"])
        except NotImplementedError:
            return None
        total = kl if total is None else total + kl
    return total


def kl_method(model, guide, *args, **kwargs) -> str:
    """``"analytic"`` when every latent site's KL has a closed form (what :class:`ELBO` with
    ``analytic_kl`` then uses), else ``"monte_carlo"``; from one trace of the programs on ``args``."""
    with torch.no_grad():
        return "analytic" if analytic_kl(model, guide, *args, **kwargs) is not None else "monte_carlo"


# --- free bits ------------------------------------------------------------------------------------------


def _check_free_bits(free_bits) -> float:
    return checks.number(free_bits, "free_bits", 0.0, hint="nats per latent dimension, 0: off")


def free_bits_kl(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    r"""The free-bits KL term of a mini-batch: ``batch * sum_j max(free_bits, mean_n KL_{n,j})`` (nats).

    The KL of dimension j, averaged over the mini-batch, is replaced by max(lambda, KL_j) (Kingma et
    al. 2016, Appendix C.8): a dimension whose average KL is below lambda contributes the constant
    lambda and gets no gradient, so the optimizer has no reason to push it further towards the prior.
    At ``free_bits = 0`` (and for dimensions above the floor) it is the plain KL term sum_{n,j} KL_{n,j}.

    Args:
        kl: ``(batch, z_dim)`` per-dimension KL in nats (see :func:`kl_per_dim`).
        free_bits: lambda, in nats per latent dimension (>= 0).

    Returns:
        a scalar tensor in nats (summed over the batch).

    Raises:
        ConfigError: ``kl`` is not 2-dimensional, or ``free_bits`` is negative or not finite.
    """
    free_bits = _check_free_bits(free_bits)
    if kl.dim() != 2:
        raise ConfigError(f"kl must be (batch, z_dim), got shape {tuple(kl.shape)}")
    return kl.shape[0] * kl.mean(0).clamp(min=free_bits).sum()


class FreeBitsELBO(_DifferentiableELBO):
    r"""The ELBO with free bits (Kingma et al. 2016): each latent dimension's KL floored at lambda nats.

    For a mini-batch of B data points,

    .. math::

        \tilde{\mathcal{L}} = \sum_{n=1}^{B} \mathbb{E}_{q(z|x_n)}[\log p(x_n | z)]
            - \beta \, B \sum_j \max\big(\lambda, \tfrac{1}{B} \textstyle\sum_n \mathrm{KL}(q(z_j|x_n) \| p(z_j))\big),

    in nats, scaled by num_data / B when the data plate subsamples (``differentiable_loss`` returns
    its negative). ``free_bits`` = lambda is in **nats per latent dimension** (per data point):
    ``free_bits = 0.25`` with 50 latent dimensions lets the KL term keep up to 12.5 nats per image
    without penalty. Dimensions whose batch-averaged KL is below lambda get no KL gradient (the
    reconstruction term still moves them). Beta (``poutine.scale`` on the latent site, see
    :func:`pyrovae.inference.kl_weight`) multiplies the floored term; lambda = 0 gives the
    (beta-weighted) ELBO.

    The per-dimension KL is analytic where the guide's and prior's factors have a closed form and
    ``analytic_kl`` (Normal against Normal: the default VAE), otherwise a Monte Carlo estimate
    log q_j(z_j) - log p_j(z_j) averaged over ``num_particles`` draws. The reconstruction term is the
    Monte Carlo average over the same draws. ``loss_terms`` also returns the plain ``elbo``,
    ``reconstruction`` and ``kl`` (not floored, beta = 1) of the same pass.

    Args:
        free_bits: lambda >= 0, nats per latent dimension.
        num_particles: draws per data point (vectorized; default 1).
        analytic_kl: use the closed-form KL per dimension where it exists (default True; False: Monte
            Carlo, like ``Trace_ELBO``).

    Raises:
        ConfigError: at construction, a negative or non-finite ``free_bits``; in ``differentiable_loss``,
            a guide site without ``rsample``, a site outside the data plate, or a non-scalar
            ``poutine.scale`` on a latent site.
        NotFactorizedError: a prior or guide that does not factorize over the latent dimensions
            (mixture, VampPrior or flow prior; low-rank or IAF guide).

    References:
        Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), *Improved Variational
        Inference with Inverse Autoregressive Flow*, NeurIPS, Appendix C.8.
    """

    def __init__(self, free_bits: float = 0.0, num_particles: int = 1, analytic_kl: bool = True):
        super().__init__(num_particles=checks.positive_int(num_particles, "num_particles"), max_plate_nesting=1,
                         vectorize_particles=True)
        self.free_bits = _check_free_bits(free_bits)
        self.analytic_kl = bool(analytic_kl)

    def loss_terms(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        weights = importance_weights(model, guide, self.num_particles, *args, **kwargs)
        model_trace, guide_trace = weights.model_trace, weights.guide_trace
        check_layout(model_trace, guide_trace, "FreeBitsELBO")
        k = self.num_particles
        reconstruction = 0.0
        for site in sample_sites(model_trace, observed=True):
            reconstruction = reconstruction + site["log_prob"].sum() / k
        objective, kl_total = reconstruction, 0.0
        for guide_site in sample_sites(guide_trace, observed=False):
            model_site = model_trace.nodes[guide_site["name"]]
            scale = torch.as_tensor(guide_site["scale"])
            if scale.numel() != 1 or guide_site["mask"] is not None:
                raise ConfigError(f"FreeBitsELBO needs one scalar poutine.scale and no mask on the latent site "
                                  f"{guide_site['name']!r}; got scale of shape {tuple(scale.shape)}"
                                  f"{' and a mask' if guide_site['mask'] is not None else ''}")
            kl = kl_per_dim(guide_site["fn"], model_site["fn"], guide_site["value"], self.analytic_kl)
            kl = kl.expand(k, data_size(model_trace), kl.shape[-1]).mean(0)  # average over the particles
            objective = objective - scale * free_bits_kl(kl, self.free_bits)
            kl_total = kl_total + plate_scale(guide_site) * kl.sum()
        objective, kl_total = torch.as_tensor(objective), torch.as_tensor(kl_total)
        reconstruction = torch.as_tensor(reconstruction)
        return {"loss": -objective, "objective": objective, "elbo": reconstruction - kl_total,
                "reconstruction": reconstruction, "kl": kl_total}


# --- by name --------------------------------------------------------------------------------------------

#: The objectives' names, as configs and the command line give them.
ELBOS = ("TraceMeanField_ELBO", "Trace_ELBO", "IWAE")


def make_elbo(name: str = "TraceMeanField_ELBO", num_particles: int = 1, free_bits: float = 0.0) -> PyroELBO:
    """An objective by name, vectorized over ``num_particles``.

    ``Trace_ELBO`` estimates the whole ELBO by Monte Carlo; ``TraceMeanField_ELBO`` computes the KL
    term in closed form where ``kl_divergence`` knows it (Normal guide against Normal prior) and falls
    back to Monte Carlo elsewhere (both :class:`ELBO`); ``IWAE`` is the importance-weighted bound
    :class:`IWAE` with K = ``num_particles``. With ``free_bits > 0`` (nats per latent dimension) an ELBO
    becomes :class:`FreeBitsELBO`, with the analytic per-dimension KL for ``TraceMeanField_ELBO`` and
    the Monte Carlo one for ``Trace_ELBO``. All give the bound in nats, negated as a loss.

    Raises:
        ConfigError: unknown name; ``num_particles < 1``; negative ``free_bits``; ``free_bits > 0`` with
            ``IWAE`` (the importance-weighted bound has no separate KL term to floor).
        ArgumentTypeError: ``num_particles`` or ``free_bits`` of the wrong type.
    """
    checks.one_of(name, "elbo", ELBOS)
    num_particles = checks.positive_int(num_particles, "num_particles")
    if _check_free_bits(free_bits) > 0:
        if name == "IWAE":
            raise ConfigError("free_bits applies to the ELBO's KL term, which the IWAE bound does not have; "
                              "use free_bits=0 with IWAE, or elbo='TraceMeanField_ELBO' with free bits")
        return FreeBitsELBO(free_bits, num_particles, analytic_kl=name == "TraceMeanField_ELBO")
    if name == "IWAE":
        return IWAE(num_particles)
    return ELBO(num_particles, analytic_kl=name == "TraceMeanField_ELBO")
