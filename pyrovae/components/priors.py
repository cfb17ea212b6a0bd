"""Priors p(z): small modules that return a Pyro distribution over z.

The contract (what :class:`pyrovae.VAE` relies on, and all a user's own prior must do):

* a prior is a :class:`torch.nn.Module` (so learned parameters train and save with the model and
  buffers follow ``.to(device)``) with an attribute ``z_dim``;
* calling it with no arguments returns a :class:`pyro.distributions.TorchDistribution` with
  ``event_shape == (z_dim,)`` and empty ``batch_shape``; the model samples it inside its data plate,
  which broadcasts it over the batch.
* optionally ``attach(vae)``: called once by :class:`pyrovae.VAE` after its encoder and guide family
  exist, for priors defined through them (the VampPrior's mixture of q(z|u_k)). Keep a plain reference
  (``object.__setattr__``), not a submodule, so the encoder's parameters are not registered twice.

Example, a Student-t prior with learned degrees of freedom::

    class StudentTPrior(torch.nn.Module):
        def __init__(self, z_dim):
            super().__init__()
            self.z_dim = z_dim
            self.raw_df = torch.nn.Parameter(torch.zeros(()))
            self.register_buffer("zeros", torch.zeros(z_dim))

        def forward(self):
            df = torch.nn.functional.softplus(self.raw_df) + 1.0
            return dist.StudentT(df, self.zeros, 1.0).to_event(1)

The priors here (registered in :data:`PRIORS` under the names in brackets):

* :class:`StandardNormal` (``"standard_normal"``): N(0, I);
* :class:`LearnedNormal` (``"learned_normal"``): N(mu, diag(sigma^2)) with learned mu, sigma;
* :class:`MixtureOfGaussians` (``"mixture"``): K learned diagonal Gaussians with learned weights;
* :class:`VampPrior` (``"vamp"``): the mixture of the guide at K learned pseudo-inputs (Tomczak &
  Welling 2018);
* :class:`FlowPrior` (``"flow"``): N(0, I) through learned autoregressive flows.

All log densities are in nats. :func:`kl_is_analytic` says whether an ELBO computes KL(q || p) in
closed form or by Monte Carlo (a single-sample estimate of log q(z|x) - log p(z) when
``kl_divergence`` has no rule for the pair); :func:`pyrovae.inference.kl_method` says it for a whole
model and guide.
"""

from __future__ import annotations

import math
from typing import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive, SplineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch import nn
from torch.distributions import kl_divergence
from torch.nn import functional as F

from .. import checks
from ..errors import ConfigError
from ..torchtools import eval_mode, inverse_softplus


class StandardNormal(nn.Module):
    """p(z) = N(0, I) over ``z_dim`` dimensions (Kingma & Welling 2014)."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        """``Normal(0, 1).to_event(1)``: batch shape ``()``, event shape ``(z_dim,)``."""
        return dist.Normal(self.loc, self.scale).to_event(1)


class LearnedNormal(nn.Module):
    r"""p(z) = N(mu, diag(sigma^2)) with learned ``mu`` and ``sigma = softplus(raw) + min_scale``.

    log p(z) = sum_d [-(z_d - mu_d)^2 / (2 sigma_d^2) - log sigma_d - log(2 pi) / 2]  (nats).

    Starts at N(0, I). With a learned decoder this prior is no more expressive than N(0, I) (an affine
    layer of the decoder can absorb mu and sigma), but it is the simplest learned prior and keeps the
    KL term analytic against a Normal guide.

    Args:
        z_dim: latent dimension.
        min_scale: floor on sigma, keeps log p(z) finite (default 1e-4).

    Returns (``forward()``): ``Normal(mu, sigma).to_event(1)``, batch shape ``()``, event ``(z_dim,)``.
    """

    def __init__(self, z_dim: int, min_scale: float = 1e-4):
        super().__init__()
        if not 0 <= min_scale < 1:
            raise ConfigError(f"min_scale must be in [0, 1), got {min_scale!r}")
        self.z_dim, self.min_scale = int(z_dim), float(min_scale)
        self.loc = nn.Parameter(torch.zeros(self.z_dim))
        self.raw_scale = nn.Parameter(torch.full((self.z_dim,), inverse_softplus(1.0 - self.min_scale)))

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class DiagonalNormalMixture(dist.MixtureSameFamily):
    r"""A mixture of K diagonal Gaussians whose ``log_prob`` is two matrix products.

    For components ``Normal(mu, sigma).to_event(1)`` with batch shape ``(K,)`` and event ``(D,)``,
    expanding the square gives, for N points z (nats),

        log N(z; mu_k, sigma_k) = -1/2 (z*z) . (1/sigma_k^2) + z . (mu_k/sigma_k^2)
                                  - 1/2 sum_d mu_kd^2/sigma_kd^2 - sum_d log sigma_kd - D/2 log 2 pi,

    an ``(N, D) @ (D, K)`` product instead of the ``(N, K, D)`` broadcast of
    ``torch.distributions.MixtureSameFamily``: memory O(N K) rather than O(N K D), and a BLAS call. The
    products run in float64 so that the expansion's cancellation (terms of order z^2/sigma^2 that cancel
    to (z - mu)^2/sigma^2) costs no precision in float32 models; the result has the input's dtype.
    Components of any other family (low-rank, flows) fall back to the parent's broadcast ``log_prob``,
    which this equals (tested).

    Args, shapes and sampling: as ``pyro.distributions.MixtureSameFamily``. The matrix products use one
    set of K components shared by every point: a mixture built with batch shape ``()``, or one that a
    plate expanded from it (``expand`` keeps the unexpanded mixture); any other batch shape falls back.
    """

    def expand(self, batch_shape, _instance=None):
        # A plate (pyro.plate, the data plate of every model) expands the prior to the plate's batch
        # shape. The expanded copy keeps the unexpanded mixture, whose (K, D) parameters the matrix
        # products need; its log_prob is then broadcast to the batch shape.
        new = super().expand(batch_shape, _instance)
        new._unexpanded = self if self.batch_shape == () else getattr(self, "_unexpanded", None)
        return new

    def _matmul_ready(self) -> bool:
        comp = self.component_distribution
        return (isinstance(comp, torch.distributions.Independent) and comp.reinterpreted_batch_ndims == 1
                and isinstance(comp.base_dist, torch.distributions.Normal))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        source = self if self.batch_shape == () else getattr(self, "_unexpanded", None)
        if source is None or not source._matmul_ready() or value.shape[-1:] != self.event_shape:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        out = source._matmul_log_prob(value)
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))

    def _matmul_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(value) for ``value (..., D)``: ``(...)``, from the (K, D) parameters of this unexpanded
        mixture."""
        base = self.component_distribution.base_dist
        wide = torch.float64
        loc, scale = base.loc.to(wide), base.scale.to(wide)                      # (K, D)
        precision = scale.reciprocal().square()
        z = value.reshape(-1, value.shape[-1]).to(wide)                          # (N, D)
        const = (-0.5 * (loc.square() * precision).sum(-1) - scale.log().sum(-1)
                 - 0.5 * loc.shape[-1] * math.log(2 * math.pi))                  # (K,)
        log_comp = -0.5 * z.square() @ precision.T + z @ (loc * precision).T + const   # (N, K)
        log_weights = torch.log_softmax(self.mixture_distribution.logits.to(wide), dim=-1)
        out = torch.logsumexp(log_comp + log_weights, dim=-1)
        return out.reshape(value.shape[:-1]).to(value.dtype)


class MixtureOfGaussians(nn.Module):
    r"""p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)): K learned diagonal Gaussians.

    log p(z) = logsumexp_k [log pi_k + log N(z; mu_k, diag(sigma_k^2))]  (nats), with
    pi = softmax(logits), sigma_k = softplus(raw_k) + ``min_scale``. The means start at independent
    N(0, ``init_spread``^2) draws (spread out, so the components do not all collapse onto one), the
    scales at ``init_scale`` and the weights uniform. The KL term against any guide is Monte Carlo
    (there is no closed form for KL(q || mixture)).

    Args:
        z_dim: latent dimension.
        num_components: K (default 10).
        init_spread: standard deviation of the initial means (default 1).
        init_scale: initial component scale (default 1).
        min_scale: floor on the component scales (default 1e-4).

    Returns (``forward()``): a :class:`DiagonalNormalMixture` over ``Normal(mu, sigma).to_event(1)``
    components ``(K, z_dim)``: batch shape ``()``, event shape ``(z_dim,)``.

    Raises:
        ValueError: ``num_components < 1`` or non-positive scales.
    """

    def __init__(self, z_dim: int, num_components: int = 10, init_spread: float = 1.0,
                 init_scale: float = 1.0, min_scale: float = 1e-4):
        super().__init__()
        if num_components < 1:
            raise ConfigError(f"num_components must be at least 1, got {num_components!r}")
        if not init_scale > min_scale >= 0:
            raise ConfigError(f"need init_scale > min_scale >= 0, got init_scale={init_scale!r}, "
                              f"min_scale={min_scale!r}")
        self.z_dim, self.num_components, self.min_scale = int(z_dim), int(num_components), float(min_scale)
        self.locs = nn.Parameter(init_spread * torch.randn(self.num_components, self.z_dim))
        self.raw_scales = nn.Parameter(torch.full((self.num_components, self.z_dim),
                                                  inverse_softplus(init_scale - self.min_scale)))
        self.logits = nn.Parameter(torch.zeros(self.num_components))

    @property
    def scales(self) -> torch.Tensor:
        return F.softplus(self.raw_scales) + self.min_scale

    def forward(self) -> dist.TorchDistribution:
        components = dist.Normal(self.locs, self.scales).to_event(1)
        return DiagonalNormalMixture(dist.Categorical(logits=self.logits), components)


_SQUASHES = ("sigmoid", "hardtanh", "none")


class VampPrior(nn.Module):
    r"""The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k).

    ``u_1..u_K`` are learned pseudo-inputs of the data's shape and q is the VAE's own guide (encoder +
    guide family), so the prior is the aggregate posterior of K learned "images":

        log p(z) = logsumexp_k log q(z | u_k) - log K   (nats).

    The pseudo-inputs live in the data range through ``squash``: ``"sigmoid"`` (default, u = sigmoid(raw),
    for data in [0, 1] such as binarized MNIST; never has zero gradient), ``"hardtanh"`` (u = clamp of raw to
    [0, 1], the paper's choice) or ``"none"`` (real-valued data). They start at ``init_mean`` plus
    N(0, ``init_std``^2) noise in data space (the paper uses small noise around a constant); use
    :meth:`set_pseudo_inputs` to start them at data points instead.

    Construction is in two steps, because the prior is made of the VAE's encoder: ``VampPrior(z_dim, K)``
    makes the module, and ``VAE(prior=...)`` calls :meth:`attach`, which keeps a plain (unregistered)
    reference to the VAE and creates the pseudo-input parameter ``raw_pseudo_inputs`` with shape
    ``(K, *vae.x_shape)``. The state dict therefore holds the pseudo-inputs once under ``prior.`` and the
    encoder once under ``encoder.``; loading it into a fresh ``VAE(prior=VampPrior(z_dim, K))`` restores
    the prior.

    Cost: each call encodes the K pseudo-inputs, and ``log_prob`` of N points evaluates N x K component
    densities. With the diagonal-Normal guide that is two (N, z_dim) @ (z_dim, K) products
    (:class:`DiagonalNormalMixture`); other guide families broadcast temporaries of N K z_dim numbers
    (:func:`pyrovae.evaluation.log_likelihood` measures this cost and sizes its chunks to its memory cap).
    With a guide family whose log q needs an inverse flow (:class:`pyrovae.components.guides.IAF`) each density
    costs ``z_dim`` network passes.

    Args:
        z_dim: latent dimension (must equal the VAE's).
        num_components: K, the number of pseudo-inputs (default 500, the paper's MNIST setting).
        squash: ``"sigmoid"``, ``"hardtanh"`` or ``"none"`` (see above).
        init_mean, init_std: initial pseudo-inputs in data space (default 0.5 and 0.01).

    Returns (``forward()``): a :class:`DiagonalNormalMixture` (a ``MixtureSameFamily``) with uniform
    weights over the guide family's distribution at the pseudo-inputs (batch shape ``(K,)``): batch
    shape ``()``, event ``(z_dim,)``.

    Raises:
        RuntimeError: called (or :meth:`set_pseudo_inputs`) before :meth:`attach`; attached to a second VAE.
        ValueError: bad options; in :meth:`attach`, a VAE with another ``z_dim``, or a guide family whose
            distribution cannot serve as mixture components (batch shape not ``(K,)``, event shape not
            ``(z_dim,)``, or a ``log_prob`` that does not broadcast over the components).
    """

    def __init__(self, z_dim: int, num_components: int = 500, squash: str = "sigmoid",
                 init_mean: float = 0.5, init_std: float = 0.01):
        super().__init__()
        if num_components < 1:
            raise ConfigError(f"num_components must be at least 1, got {num_components!r}")
        if squash not in _SQUASHES:
            raise ConfigError(f"squash={squash!r} is unknown; choose one of {', '.join(_SQUASHES)}")
        if squash != "none" and not 0 < init_mean < 1:
            raise ConfigError(f"init_mean={init_mean!r} must be inside (0, 1) with squash={squash!r}")
        self.z_dim, self.num_components, self.squash = int(z_dim), int(num_components), squash
        self.init_mean, self.init_std = float(init_mean), float(init_std)
        self.register_parameter("raw_pseudo_inputs", None)  # created by attach(vae), shape (K, *x_shape)
        object.__setattr__(self, "_vae", None)

    @property
    def is_attached(self) -> bool:
        return self._vae is not None

    # --- pseudo-inputs in data space <-> the unconstrained parameter ------------------------------

    def _squash(self, raw: torch.Tensor) -> torch.Tensor:
        if self.squash == "sigmoid":
            return torch.sigmoid(raw)
        if self.squash == "hardtanh":
            return F.hardtanh(raw, 0.0, 1.0)
        return raw

    def _unsquash(self, u: torch.Tensor) -> torch.Tensor:
        if self.squash == "sigmoid":
            eps = torch.finfo(u.dtype).eps ** 0.5
            return torch.logit(u.clamp(eps, 1 - eps))
        if self.squash == "hardtanh":
            return u.clamp(0.0, 1.0)
        return u

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """u_1..u_K in data space: ``(K, *x_shape)``."""
        self._require_attached()
        return self._squash(self.raw_pseudo_inputs)

    @torch.no_grad()
    def set_pseudo_inputs(self, u: torch.Tensor) -> None:
        """Set the pseudo-inputs to ``u (K, *x_shape)`` in data space (e.g. K training images), clamped
        inside the squash's range (sigmoid: [sqrt(eps), 1 - sqrt(eps)])."""
        self._require_attached()
        if tuple(u.shape) != tuple(self.raw_pseudo_inputs.shape):
            raise ConfigError(f"pseudo-inputs must have shape {tuple(self.raw_pseudo_inputs.shape)}, "
                              f"got {tuple(u.shape)}")
        self.raw_pseudo_inputs.copy_(self._unsquash(u.to(self.raw_pseudo_inputs)))

    # --- the hook ---------------------------------------------------------------------------------

    def _require_attached(self) -> None:
        if self._vae is None:
            raise RuntimeError("this VampPrior is not attached to a VAE yet: it is the mixture of the VAE's "
                               "guide at learned pseudo-inputs, so build it as VAE(prior=VampPrior(z_dim, K), "
                               "...), which calls prior.attach(vae)")

    def attach(self, vae: nn.Module) -> None:
        """Keep a plain reference to ``vae`` (its ``encoder``, ``guide_family`` and ``x_shape``) and create
        the pseudo-inputs ``(K, *vae.x_shape)`` on the encoder's device; then check that the guide family's
        distribution at the pseudo-inputs works as mixture components."""
        if self._vae is vae:
            return
        if self._vae is not None:
            raise RuntimeError("this VampPrior is already attached to another VAE; make a new VampPrior "
                               "for each VAE")
        if int(vae.z_dim) != self.z_dim:
            raise ConfigError(f"the prior {type(self).__name__} has z_dim {self.z_dim} but the VAE has z_dim "
                              f"{vae.z_dim}: the prior must give event shape (z_dim,) = ({vae.z_dim},)")
        param = next(vae.encoder.parameters(), None)
        factory = {"device": param.device, "dtype": param.dtype} if param is not None else {}
        u = self.init_mean + self.init_std * torch.randn(self.num_components, *vae.x_shape, **factory)
        if self.squash != "none":
            u = u.clamp(0.0, 1.0)
        self.raw_pseudo_inputs = nn.Parameter(self._unsquash(u))
        object.__setattr__(self, "_vae", vae)
        try:
            self._check_components()
        except Exception:
            object.__setattr__(self, "_vae", None)
            self.raw_pseudo_inputs = None
            raise

    @torch.no_grad()
    def _check_components(self) -> None:
        family = type(self._vae.guide_family).__name__
        with eval_mode(self._vae.encoder):  # a probe: leave e.g. batch-norm statistics as they are
            q = self._vae.guide_family(self._vae.encoder(self.pseudo_inputs))
        where = (f"the guide family {family} gives, at the {self.num_components} pseudo-inputs, "
                 f"{type(q).__name__}")
        if not isinstance(q, torch.distributions.Distribution):
            raise ConfigError(f"{where}, not a torch Distribution: it cannot serve as VampPrior mixture "
                              f"components")
        if tuple(q.batch_shape) != (self.num_components,) or tuple(q.event_shape) != (self.z_dim,):
            raise ConfigError(f"{where} with batch shape {tuple(q.batch_shape)} and event shape "
                              f"{tuple(q.event_shape)}; VampPrior mixture components need batch shape "
                              f"({self.num_components},) and event shape ({self.z_dim},)")
        probe = torch.zeros(3, 2, self.z_dim, device=self.raw_pseudo_inputs.device,
                            dtype=self.raw_pseudo_inputs.dtype)
        try:
            lp = self._mixture(q).log_prob(probe)
        except Exception as e:  # any failure here means log q(z | u_k) does not broadcast over k
            raise ConfigError(f"{where}, whose log_prob fails as VampPrior mixture components "
                              f"(log q(z | u_k) must broadcast z (..., 1, z_dim) against the K "
                              f"components): {type(e).__name__}: {e}") from e
        if tuple(lp.shape) != (3, 2):
            raise ConfigError(f"{where}, whose log_prob as VampPrior mixture components has shape "
                              f"{tuple(lp.shape)} for z of shape (3, 2, {self.z_dim}); expected (3, 2)")

    def _mixture(self, components: torch.distributions.Distribution) -> dist.TorchDistribution:
        weights = torch.zeros(self.num_components, device=self.raw_pseudo_inputs.device,
                              dtype=self.raw_pseudo_inputs.dtype)
        return DiagonalNormalMixture(dist.Categorical(logits=weights), components)

    def forward(self) -> dist.TorchDistribution:
        vae = self._vae
        if vae is None:
            self._require_attached()
        return self._mixture(vae.guide_family(vae.encoder(self.pseudo_inputs)))


_FLOW_KINDS = ("spline", "affine")


class FlowPrior(nn.Module):
    r"""p(z): N(0, I) pushed through ``num_flows`` learned autoregressive bijections.

    The networks define a map u = T(z) = T_L(...T_1(z)) from latent space to the base space, so that

        log p(z) = log N(T(z); 0, I) + log |det dT/dz|(z)   (nats)

    costs one network pass per layer (the direction training needs: the ELBO scores the guide's z
    under the prior), while sampling z = T^{-1}(u), u ~ N(0, I), inverts each layer in ``z_dim``
    sequential passes (this is the masked autoregressive flow arrangement, Papamakarios et al. 2017).
    Layers alternate the identity and the reversed ordering of the latent dimensions.

    * ``kind="spline"`` (default): monotonic rational-quadratic splines on [-bound, bound] with
      ``count_bins`` bins, identity outside (neural spline flows, Durkan et al. 2019), parameters from a
      MADE network (``pyro.distributions.transforms.SplineAutoregressive``). Default hidden sizes
      ``(10 z_dim, 10 z_dim)``.
    * ``kind="affine"``: T_l(z)_d = exp(s_d(z_<d)) z_d + m_d(z_<d) (Pyro's ``AffineAutoregressive``,
      log-scale clipped to [-5, 3]), log |det| = sum_d s_d. Default hidden sizes ``(3 z_dim + 1,)``.

    The MADE networks are registered in ``self.nets`` (an ``nn.ModuleList``), so they train, move and
    save with the model; the Pyro transform objects are rebuilt at each call, so no cached value
    outlives an optimizer step. The KL term is always Monte Carlo.

    Args:
        z_dim: latent dimension (at least 2 for the flow to couple dimensions; 1 works, with Pyro's
            warning, as an elementwise flow).
        num_flows: L, the number of layers (default 2).
        kind: ``"spline"`` or ``"affine"``.
        hidden: hidden sizes of each MADE network (each at least ``z_dim``).
        count_bins, bound: the spline's bins and box (spline only; default 8 and 3.0).

    Returns (``forward()``): a ``TransformedDistribution``, batch shape ``()``, event ``(z_dim,)``.

    Raises:
        ValueError: unknown ``kind``, ``num_flows < 1``, or a hidden size below ``z_dim``.
    """

    def __init__(self, z_dim: int, num_flows: int = 2, kind: str = "spline",
                 hidden: Sequence[int] | None = None, count_bins: int = 8, bound: float = 3.0):
        super().__init__()
        if kind not in _FLOW_KINDS:
            raise ConfigError(f"kind={kind!r} is unknown; choose one of {', '.join(_FLOW_KINDS)}")
        if num_flows < 1:
            raise ConfigError(f"num_flows must be at least 1, got {num_flows!r}")
        self.z_dim, self.num_flows, self.kind = int(z_dim), int(num_flows), kind
        self.count_bins, self.bound = int(count_bins), float(bound)
        if hidden is None:
            hidden = (10 * self.z_dim, 10 * self.z_dim) if kind == "spline" else (3 * self.z_dim + 1,)
        self.hidden = tuple(int(h) for h in hidden)
        if any(h < self.z_dim for h in self.hidden):
            raise ConfigError(f"hidden sizes {self.hidden} must each be at least z_dim = {self.z_dim}")
        param_dims = ([self.count_bins, self.count_bins, self.count_bins - 1, self.count_bins]
                      if kind == "spline" else [1, 1])
        checks.trainable_in_memory(  # Pyro's autoregressive networks cannot be sized on the meta device
            self.num_flows * checks.dense_parameters([self.z_dim, *self.hidden, self.z_dim * sum(param_dims)]),
            f"prior flow: z_dim={self.z_dim}, hidden={self.hidden}", hint="choose a smaller z_dim or hidden")
        order = torch.arange(self.z_dim)
        self.nets = nn.ModuleList(
            AutoRegressiveNN(self.z_dim, list(self.hidden), param_dims=param_dims,
                             permutation=order if i % 2 == 0 else order.flip(0))
            for i in range(self.num_flows))
        self.register_buffer("loc", torch.zeros(self.z_dim))
        self.register_buffer("scale", torch.ones(self.z_dim))

    def layers(self) -> list:
        """Fresh Pyro transforms T_1, ..., T_L (latent space -> base space), sharing ``self.nets``."""
        if self.kind == "spline":
            return [SplineAutoregressive(self.z_dim, net, count_bins=self.count_bins, bound=self.bound)
                    for net in self.nets]
        return [AffineAutoregressive(net) for net in self.nets]

    def forward(self) -> dist.TorchDistribution:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        # TransformedDistribution maps base samples through its list in order: T_L^{-1}, ..., T_1^{-1}.
        return dist.TransformedDistribution(base, [t.inv for t in reversed(self.layers())])


def check_prior(prior: nn.Module, z_dim: int) -> None:
    """Raise ``ValueError`` unless ``prior()`` has event shape ``(z_dim,)`` and no batch shape.

    A prior with ``is_attached == False`` (:class:`VampPrior` before :meth:`VampPrior.attach`) cannot
    build its distribution yet; it is skipped here and checks itself when attached."""
    if getattr(prior, "is_attached", True) is False:
        return
    d = prior()
    if tuple(d.event_shape) != (z_dim,) or tuple(d.batch_shape) != ():
        raise ConfigError(f"the prior {type(prior).__name__} gives a distribution with batch shape "
                          f"{tuple(d.batch_shape)} and event shape {tuple(d.event_shape)}; a prior must "
                          f"give batch shape () and event shape (z_dim,) = ({z_dim},)")


def kl_is_analytic(guide_dist: torch.distributions.Distribution,
                   prior_dist: torch.distributions.Distribution) -> bool:
    """Whether ``torch.distributions.kl_divergence(guide_dist, prior_dist)`` has a closed form, tried
    on the actual distributions (with the prior broadcast to the guide's batch shape, as a Pyro plate
    does). True means ``TraceMeanField_ELBO`` uses the exact KL; False means it falls back to the
    Monte Carlo estimate log q(z|x) - log p(z) at the guide's sample. Other errors (e.g. mismatched
    event shapes) propagate."""
    prior = prior_dist
    if tuple(prior_dist.batch_shape) != tuple(guide_dist.batch_shape):
        try:
            prior = prior_dist.expand(guide_dist.batch_shape)
        except (NotImplementedError, RuntimeError, ValueError):
            prior = prior_dist
    try:
        kl_divergence(guide_dist, prior)
    except NotImplementedError:
        return False
    return True


PRIORS = {"standard_normal": StandardNormal, "learned_normal": LearnedNormal, "mixture": MixtureOfGaussians,
          "vamp": VampPrior, "flow": FlowPrior}
