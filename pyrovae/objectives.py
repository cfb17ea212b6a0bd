"""Objectives: Pyro's ELBO estimators by name, the importance-weighted bound (IWAE) and free bits.

Every objective here has the interface of a Pyro ELBO: ``differentiable_loss(model, guide, *args,
**kwargs)`` returns the negative bound in nats, summed over the data points of the batch and scaled by
``num_data / batch`` when the model's data plate subsamples (as Pyro's ELBOs scale it), so
:func:`pyrovae.train.train_step` trains with any of them unchanged.

* ``Trace_ELBO``, ``TraceMeanField_ELBO``: Pyro's own (Monte Carlo KL; analytic KL where Pyro has it).
* :class:`IWAE` (``"IWAE"``): the K-sample importance-weighted bound of Burda, Grosse & Salakhutdinov
  (2016), with the log-sum-exp taken per data point.
* :class:`FreeBitsELBO`: the ELBO with the KL term of each latent dimension floored at ``free_bits`` nats
  (Kingma et al. 2016).

The model and guide follow :class:`pyrovae.VAE`'s layout: every sample site inside one data plate at
``dim=-1``; the objectives here add a ``pyro.plate("particles", K, dim=-2)`` around both.

References:
    Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*, ICLR.
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), *Improved Variational Inference
    with Inverse Autoregressive Flow*, NeurIPS (free bits: Appendix C.8).
"""

from __future__ import annotations

import math
import numbers

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import Distribution, Independent, kl_divergence

PARTICLES = "particles"
PARTICLE_DIM = -2
DATA_DIM = -1


# --- traces over vectorized particles -----------------------------------------------------------------


def particle_traces(model, guide, num_particles: int, *args, **kwargs):
    """``(model_trace, guide_trace)`` for ``num_particles`` draws from the guide, vectorized.

    The guide runs inside ``pyro.plate("particles", num_particles, dim=-2)`` and the model is replayed
    on its draws, so a site inside the data plate (``dim=-1``) has batch shape
    ``(num_particles, batch)``. Both traces have their log-densities computed (``site["log_prob"]`` as
    Pyro scales it, ``site["unscaled_log_prob"]``) and their subsample sites pruned. Gradients flow
    through reparameterized draws.
    """
    with pyro.plate(PARTICLES, num_particles, dim=PARTICLE_DIM):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return model_trace, guide_trace


def _data_frame(site):
    return next((f for f in site["cond_indep_stack"] if f.dim == DATA_DIM), None)


def _plate_scale(site) -> float:
    """The product of ``full_size / size`` over the site's subsampling plates: the factor by which
    Pyro scales a mini-batch's log-density up to the whole data set."""
    scale = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size:
            scale = scale * frame.full_size / frame.size
    return scale


def _weighted_log_prob(site) -> torch.Tensor:
    """The site's log-density with its ``poutine.scale`` weight (e.g. beta) and mask, but without the
    data plate's ``num_data / batch`` factor: ``(num_particles, batch)`` or broadcastable to it."""
    plate_scale = _plate_scale(site)
    inner = site["scale"] if plate_scale == 1.0 else site["scale"] / plate_scale
    return scale_and_mask(site["unscaled_log_prob"], inner, site["mask"])


def _sample_sites(trace, observed: bool | None = None):
    for site in trace.nodes.values():
        if site["type"] == "sample" and (observed is None or bool(site["is_observed"]) == observed):
            yield site


def _data_scale(trace):
    """``num_data / batch`` of the trace's data plate (1 when it does not subsample)."""
    for site in _sample_sites(trace):
        frame = _data_frame(site)
        if frame is not None and frame.full_size is not None:
            return frame.full_size / frame.size
    return 1.0


def _data_size(trace) -> int | None:
    for site in _sample_sites(trace):
        frame = _data_frame(site)
        if frame is not None:
            return frame.size
    return None


def log_weights_from_traces(model_trace, guide_trace, num_particles: int) -> torch.Tensor:
    r"""log w_{k,n} = log p(x_n, z_{k,n}) - log q(z_{k,n} | x_n) from :func:`particle_traces`.

    Each site's log-density is summed over its event dimensions but not over the data plate. A site
    weighed by ``poutine.scale`` (the VAE's ``beta`` on z) enters with that weight; the data plate's
    ``num_data / batch`` factor is left out (it belongs outside the log-sum-exp).

    Returns:
        ``(num_particles, batch)`` log weights in nats.
    """
    log_w = 0.0
    for site in _sample_sites(model_trace):
        log_w = log_w + _weighted_log_prob(site)
    for site in _sample_sites(guide_trace, observed=False):
        log_w = log_w - _weighted_log_prob(site)
    log_w = torch.as_tensor(log_w)
    size = _data_size(model_trace)
    if size is None:  # no data plate: the batch is whatever the sites' log-densities broadcast to
        size = log_w.shape[-1] if log_w.dim() >= 2 else 1
    return log_w.expand(num_particles, size)


def particle_log_weights(model, guide, num_particles: int, *args, **kwargs) -> tuple[torch.Tensor, float]:
    r"""Importance log weights of ``num_particles`` guide draws per data point, and the data scale.

    For each data point x_n and draw z_{k,n} ~ q(z | x_n), ``log w[k, n] = log p(x_n, z_{k,n}) -
    log q(z_{k,n} | x_n)`` (nats), with sites weighed by ``poutine.scale`` entering with their weight
    (see :func:`log_weights_from_traces`): the weights of :class:`IWAE` and of
    :func:`pyrovae.evaluate.log_importance_weights`, which share :func:`particle_traces` and
    :func:`log_weights_from_traces`.

    Args:
        model, guide: Pyro programs taking ``*args, **kwargs``, every sample site inside a data plate at
            ``dim=-1`` (as :meth:`pyrovae.VAE.model` and :meth:`pyrovae.VAE.guide`).
        num_particles: K, draws per data point (one vectorized pass).

    Returns:
        ``(log_w, data_scale)``: ``log_w (num_particles, batch)`` in nats, differentiable through
        reparameterized draws; ``data_scale = num_data / batch`` when the data plate subsamples, else 1.
    """
    model_trace, guide_trace = particle_traces(model, guide, num_particles, *args, **kwargs)
    return log_weights_from_traces(model_trace, guide_trace, num_particles), _data_scale(model_trace)


def _check_num_particles(num_particles) -> int:
    if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    return int(num_particles)


def _check_layout(model_trace, guide_trace, objective: str) -> None:
    """One ValueError for a model/guide pair that ``objective`` cannot handle."""
    for trace, what in ((model_trace, "model"), (guide_trace, "guide")):
        for site in _sample_sites(trace):
            extra = [f for f in site["cond_indep_stack"] if f.dim not in (DATA_DIM, PARTICLE_DIM)]
            if _data_frame(site) is None or extra:
                raise ValueError(
                    f"{objective} needs every sample site inside one data plate at dim=-1 (the per-data-point "
                    f"bound is taken over it); the {what}'s site {site['name']!r} is in plates "
                    f"{[(f.name, f.dim) for f in site['cond_indep_stack'] if f.name != PARTICLES]}")
    for site in _sample_sites(guide_trace, observed=False):
        if not site["fn"].has_rsample:
            raise ValueError(
                f"{objective} uses reparameterized (pathwise) gradients, but the guide's site {site['name']!r} "
                f"has a {type(site['fn']).__name__} distribution without rsample; use a reparameterizable "
                f"guide family (e.g. Normal) or a score-function estimator such as pyro.infer.TraceGraph_ELBO")
    for site in _sample_sites(model_trace, observed=False):
        if site["name"] not in guide_trace.nodes:
            raise ValueError(f"the model's latent site {site['name']!r} has no guide site; {objective} "
                             "needs the guide to sample every latent site of the model")


# --- the importance-weighted bound ----------------------------------------------------------------------


class _DifferentiableELBO(ELBO):
    """An ELBO defined by its ``differentiable_loss``; ``loss`` and ``loss_and_grads`` (what
    ``pyro.infer.SVI`` calls) follow from it."""

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The value of :meth:`differentiable_loss` as a float (no gradients)."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """:meth:`loss`, after backpropagating it (for ``pyro.infer.SVI``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward(retain_graph=self.retain_graph)
        return loss.item()


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
    model and guide (as :meth:`pyrovae.VAE.model` does with ``beta``) enters each log weight with that
    weight, so

    .. math::

        \log w_k = \log p(x_n | z_k) + \beta \, [\log p(z_k) - \log q(z_k | x_n)],

    which is the beta-weighted ELBO at K = 1 and the IWAE bound at beta = 1. For beta != 1 it is not a
    bound on log p(x).

    Why not ``pyro.infer.RenyiELBO(alpha=0)``: on a full batch whose sites all lie in the data plate it
    gives this same per-data-point bound (a test checks it, draw for draw), but it applies each site's
    full scale inside the log weights, so with a subsampled data plate every weight is raised to the
    power num_data / batch before the log-sum-exp instead of the bound being scaled after it; it has no
    ``differentiable_loss`` (which :func:`pyrovae.train.train_step` uses); and its ``loss_and_grads``
    backpropagates only when the traces hold ``pyro.param`` sites, which :class:`pyrovae.VAE` has none of.

    Args:
        num_particles: K, importance samples per data point (default 5; one vectorized pass).

    Raises (``differentiable_loss``, ``loss``):
        ValueError: a guide site without ``rsample``; a sample site outside a data plate at ``dim=-1``
            or inside another plate; a model latent site absent from the guide.

    References:
        Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*, ICLR.
    """

    def __init__(self, num_particles: int = 5):
        super().__init__(num_particles=_check_num_particles(num_particles), max_plate_nesting=1,
                         vectorize_particles=True)

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = particle_traces(model, guide, self.num_particles, *args, **kwargs)
        _check_layout(model_trace, guide_trace, "IWAE")
        return model_trace, guide_trace

    def _bound_and_scale(self, model, guide, args, kwargs) -> tuple[torch.Tensor, float]:
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        log_w = log_weights_from_traces(model_trace, guide_trace, self.num_particles)
        return torch.logsumexp(log_w, dim=0) - math.log(self.num_particles), _data_scale(model_trace)

    def bound(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """L_K(x_n) for each data point of the batch: ``(batch,)`` in nats, differentiable, without the
        data plate's ``num_data / batch`` factor."""
        return self._bound_and_scale(model, guide, args, kwargs)[0]

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-(num_data / batch) * sum_n L_K(x_n)``: a scalar tensor in nats, to minimize."""
        bound, data_scale = self._bound_and_scale(model, guide, args, kwargs)
        return -data_scale * bound.sum()


# --- free bits ------------------------------------------------------------------------------------------


def _factors(d: Distribution) -> Distribution | None:
    """The elementwise factors of ``d`` (stripping ``Independent`` wrappers), or None when ``d`` does
    not factorize over its event dimensions."""
    while isinstance(d, Independent):
        d = d.base_dist
    return d if tuple(d.event_shape) == () else None


class NoClosedFormKLError(ValueError):
    """Raised by :func:`kl_per_dim` when the KL has no closed form and no draw ``z`` was given for the
    Monte Carlo estimate (a ``ValueError``, so callers that catch that keep working)."""


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
        ValueError: the prior or the guide does not factorize over the dimensions of z (mixture,
            VampPrior, flow prior; low-rank or flow guide).
        NoClosedFormKLError: the Monte Carlo estimate is needed and ``z`` is None.
    """
    for d, what in ((prior_dist, "prior"), (guide_dist, "guide")):
        if _factors(d) is None:
            raise ValueError(
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


def _check_free_bits(free_bits) -> float:
    if isinstance(free_bits, bool) or not isinstance(free_bits, numbers.Real) or not math.isfinite(free_bits) \
            or free_bits < 0:
        raise ValueError(f"free_bits must be a finite number of nats per latent dimension >= 0 (0: off), "
                         f"got {free_bits!r}")
    return float(free_bits)


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
        ValueError: ``kl`` is not 2-dimensional, or ``free_bits`` is negative or not finite.
    """
    free_bits = _check_free_bits(free_bits)
    if kl.dim() != 2:
        raise ValueError(f"kl must be (batch, z_dim), got shape {tuple(kl.shape)}")
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
    :meth:`pyrovae.VAE.model`) multiplies the floored term; lambda = 0 gives the (beta-weighted) ELBO.

    The per-dimension KL is analytic where the guide's and prior's factors have a closed form and
    ``analytic_kl`` (Normal against Normal: the default VAE), otherwise a Monte Carlo estimate
    log q_j(z_j) - log p_j(z_j) averaged over ``num_particles`` draws. The reconstruction term is the
    Monte Carlo average over the same draws.

    Args:
        free_bits: lambda >= 0, nats per latent dimension.
        num_particles: draws per data point (vectorized; default 1).
        analytic_kl: use the closed-form KL per dimension where it exists (default True; False: Monte
            Carlo, like ``Trace_ELBO``).

    Raises:
        ValueError: at construction, a negative or non-finite ``free_bits``; in ``differentiable_loss``,
            a prior or guide that does not factorize over the latent dimensions (mixture, VampPrior or
            flow prior; low-rank or IAF guide), a guide site without ``rsample``, a site outside the
            data plate, or a non-scalar ``poutine.scale`` on a latent site.

    References:
        Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), *Improved Variational
        Inference with Inverse Autoregressive Flow*, NeurIPS, Appendix C.8.
    """

    def __init__(self, free_bits: float = 0.0, num_particles: int = 1, analytic_kl: bool = True):
        super().__init__(num_particles=_check_num_particles(num_particles), max_plate_nesting=1,
                         vectorize_particles=True)
        self.free_bits = _check_free_bits(free_bits)
        self.analytic_kl = bool(analytic_kl)

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = particle_traces(model, guide, self.num_particles, *args, **kwargs)
        _check_layout(model_trace, guide_trace, "FreeBitsELBO")
        return model_trace, guide_trace

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative free-bits ELBO of the batch (nats, scaled by num_data / batch): a scalar tensor."""
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        k = self.num_particles
        elbo = 0.0
        for site in _sample_sites(model_trace, observed=True):
            elbo = elbo + site["log_prob"].sum() / k
        for guide_site in _sample_sites(guide_trace, observed=False):
            model_site = model_trace.nodes[guide_site["name"]]
            scale = torch.as_tensor(guide_site["scale"])
            if scale.numel() != 1 or guide_site["mask"] is not None:
                raise ValueError(f"FreeBitsELBO needs one scalar poutine.scale and no mask on the latent site "
                                 f"{guide_site['name']!r}; got scale of shape {tuple(scale.shape)}"
                                 f"{' and a mask' if guide_site['mask'] is not None else ''}")
            kl = kl_per_dim(guide_site["fn"], model_site["fn"], guide_site["value"], self.analytic_kl)
            kl = kl.expand(k, _data_size(model_trace), kl.shape[-1]).mean(0)  # average over the particles
            elbo = elbo - scale * free_bits_kl(kl, self.free_bits)
        return -torch.as_tensor(elbo)


# --- by name --------------------------------------------------------------------------------------------

ELBOS = {"Trace_ELBO": Trace_ELBO, "TraceMeanField_ELBO": TraceMeanField_ELBO, "IWAE": IWAE}


def make_elbo(name: str = "TraceMeanField_ELBO", num_particles: int = 1, free_bits: float = 0.0) -> ELBO:
    """An objective by name, vectorized over ``num_particles``.

    ``Trace_ELBO`` estimates the whole ELBO by Monte Carlo; ``TraceMeanField_ELBO`` computes the KL
    term in closed form where Pyro knows it (Normal guide against Normal prior) and falls back to
    Monte Carlo elsewhere; ``IWAE`` is the importance-weighted bound :class:`IWAE` with K =
    ``num_particles``. With ``free_bits > 0`` (nats per latent dimension) an ELBO becomes
    :class:`FreeBitsELBO`, with the analytic per-dimension KL for ``TraceMeanField_ELBO`` and the Monte
    Carlo one for ``Trace_ELBO``. All give the bound in nats, negated as a loss.

    Raises:
        ValueError: unknown name; ``num_particles < 1``; negative ``free_bits``; ``free_bits > 0`` with
            ``IWAE`` (the importance-weighted bound has no separate KL term to floor).
    """
    if name not in ELBOS:
        raise ValueError(f"elbo={name!r} is unknown; choose one of {', '.join(ELBOS)}")
    num_particles = _check_num_particles(num_particles)
    if _check_free_bits(free_bits) > 0:
        if name == "IWAE":
            raise ValueError("free_bits applies to the ELBO's KL term, which the IWAE bound does not have; "
                             "use free_bits=0 with IWAE, or elbo='TraceMeanField_ELBO' with free bits")
        return FreeBitsELBO(free_bits, num_particles, analytic_kl=name == "TraceMeanField_ELBO")
    if name == "IWAE":
        return IWAE(num_particles)
    return ELBOS[name](num_particles=num_particles, vectorize_particles=num_particles > 1,
                       max_plate_nesting=1)
