"""Guide families q(z|x): modules that turn an encoder's features into a Pyro distribution over z.

The contract: ``num_features(z_dim)`` says how many encoder outputs the family reads; ``forward(h)``
with ``h (*batch, num_features)`` returns a distribution with batch shape ``*batch`` and event shape
``(z_dim,)``; ``params(h)`` returns the named parameters of q (what :meth:`pyrovae.VAE.encode` gives).

:class:`pyrovae.VAE` calls ``num_features`` on the instance (``guide_family.num_features(z_dim)``), so
a family whose feature count depends on its options (rank, context size) makes it a method; every
family's ``params`` holds ``"loc"``, the point in latent space that :meth:`pyrovae.VAE.reconstruct`
decodes. The distributions are reparameterized (``rsample``), as the ELBO's pathwise gradient needs.

The families here (registered in :data:`GUIDES`): :class:`DiagonalNormal` (``"diagonal_normal"``),
:class:`LowRankNormal` (``"low_rank_normal"``) and :class:`IAF` (``"iaf"``). Log densities in nats.
"""

from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.nn import functional as F

from .. import checks
from ..errors import ConfigError


class DiagonalNormal(nn.Module):
    """q(z|x) = N(mu(x), diag(sigma(x)^2)), with sigma = softplus(raw) + ``min_scale``.

    The softplus keeps gradients finite where exp would overflow; ``min_scale`` keeps log q finite.
    """

    def __init__(self, z_dim: int, min_scale: float = 1e-4):
        super().__init__()
        self.z_dim, self.min_scale = z_dim, min_scale

    @staticmethod
    def num_features(z_dim: int) -> int:
        return 2 * z_dim

    def params(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """``h (*batch, 2 z_dim) -> {"loc": (*batch, z_dim), "scale": (*batch, z_dim)}``."""
        loc, raw = h.split(self.z_dim, dim=-1)
        return {"loc": loc, "scale": F.softplus(raw) + self.min_scale}

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        p = self.params(h)
        return dist.Normal(p["loc"], p["scale"], validate_args=False).to_event(1)


def _check_z_dim(family: nn.Module, z_dim: int | None) -> None:
    if z_dim is not None and int(z_dim) != family.z_dim:
        raise ConfigError(f"the guide family {type(family).__name__} was built for z_dim = {family.z_dim}, "
                          f"but the VAE has z_dim = {z_dim}")


class LowRankNormal(nn.Module):
    r"""q(z|x) = N(mu(x), W(x) W(x)^T + diag(d(x))): a Gaussian with low-rank plus diagonal covariance.

    The encoder gives, per data point, ``z_dim`` means, ``z_dim * rank`` entries of the factor
    W (z_dim, rank) and ``z_dim`` raw diagonal entries, d = softplus(raw) + ``min_diag`` (a variance floor
    that keeps the covariance positive definite and log q finite). ``rank`` correlated directions let q
    capture posterior correlations that a diagonal Gaussian cannot (Rezende, Mohamed & Wierstra 2014
    use a rank-1 version). Uses ``pyro.distributions.LowRankMultivariateNormal``, whose log density
    (nats) and sampling cost O(z_dim rank^2).

    Args:
        z_dim: latent dimension.
        rank: columns of W (default 2; 1 <= rank).
        min_diag: floor on the diagonal variances d (default 1e-4).

    Shapes: ``h (*batch, z_dim (2 + rank))`` -> batch shape ``*batch``, event shape ``(z_dim,)``;
    ``params(h)`` gives ``loc (*batch, z_dim)`` (the mean), ``cov_factor (*batch, z_dim, rank)`` and
    ``cov_diag (*batch, z_dim)``.

    Raises:
        ValueError: ``rank < 1`` or ``min_diag < 0``; ``num_features`` with another ``z_dim``.
    """

    def __init__(self, z_dim: int, rank: int = 2, min_diag: float = 1e-4):
        super().__init__()
        if rank < 1:
            raise ConfigError(f"rank must be at least 1, got {rank!r}")
        if min_diag < 0:
            raise ConfigError(f"min_diag must be non-negative, got {min_diag!r}")
        self.z_dim, self.rank, self.min_diag = int(z_dim), int(rank), float(min_diag)

    def num_features(self, z_dim: int | None = None) -> int:
        _check_z_dim(self, z_dim)
        return self.z_dim * (2 + self.rank)

    def params(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, factor, raw = h.split([self.z_dim, self.z_dim * self.rank, self.z_dim], dim=-1)
        return {"loc": loc, "cov_factor": factor.unflatten(-1, (self.z_dim, self.rank)),
                "cov_diag": F.softplus(raw) + self.min_diag}

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        p = self.params(h)
        return dist.LowRankMultivariateNormal(p["loc"], p["cov_factor"], p["cov_diag"], validate_args=False)


class _ContextARN:
    """A MADE network with its context bound, broadcasting the input and the context batch shapes
    against each other (Pyro's own conditioning only expands the context to the input's shape, which
    fails when the components of a mixture carry the context, as in a VampPrior of IAF guides)."""

    def __init__(self, net: ConditionalAutoRegressiveNN, context: torch.Tensor):
        self.net, self.context = net, context
        self.permutation = net.permutation

    def batch_shape(self, x: torch.Tensor) -> torch.Size:
        return torch.broadcast_shapes(x.shape[:-1], self.context.shape[:-1])

    def __call__(self, x: torch.Tensor):
        shape = self.batch_shape(x)
        return self.net(x.expand(*shape, x.shape[-1]), self.context.expand(*shape, self.context.shape[-1]))

    def get_permutation(self) -> torch.Tensor:
        return self.permutation


class _IAFStep(AffineAutoregressive):
    """One IAF step with a bound context; its inverse first broadcasts y against the context, and
    caches (x, y) on the y it was given (so ``log_abs_det_jacobian(x, y)`` finds the cached scale)."""

    def _inv_call(self, y: torch.Tensor) -> torch.Tensor:
        x_old, y_old = self._cached_x_y
        if y is y_old:
            return x_old
        shape = self.arn.batch_shape(y)
        x = self._inverse(y.expand(*shape, y.shape[-1]))
        self._cached_x_y = x, y
        return x


class IAF(nn.Module):
    r"""q(z|x): a diagonal Gaussian followed by inverse autoregressive flow steps (Kingma et al. 2016).

    The encoder gives mu(x), raw sigma(x) (sigma = softplus(raw) + ``min_scale``) and a context h(x)
    of ``context_dim`` numbers. Then (Kingma et al. 2016, Algorithm 1 and eq. 14, the numerically stable
    "LSTM-type" step)::

        z_0 = mu + sigma * eps,   eps ~ N(0, I)
        for t = 1..T:  (m_t, s_t) = MADE_t(z_{t-1}, h);   g_t = sigmoid(s_t + 2)
                       z_t = g_t * z_{t-1} + (1 - g_t) * m_t
        log q(z_T | x) = log N(z_0; mu, sigma^2) - sum_t sum_d log g_{t,d}      (nats)

    where MADE_t is autoregressive in z (output d depends on z_{<d} in that step's ordering; steps
    alternate the identity and the reversed ordering) and sees all of h. With ``stable=False`` the step
    is z_t = exp(s_t) z_{t-1} + m_t (log-scale clipped to [-5, 3]). ``context_dim=0`` drops h: the flow is
    then shared by all x and only the base Gaussian is amortized.

    Sampling (``rsample``) is one network pass per step. ``log_prob`` of the distribution's own sample
    reuses the cached base draw and scales (exact and cheap: all that the ELBO and
    :func:`pyrovae.evaluation.log_likelihood` need); ``log_prob`` of any other z inverts each step in
    ``z_dim`` sequential passes. The KL term is always Monte Carlo.

    ``params(h)`` gives ``base_loc`` and ``base_scale`` (mu, sigma: ``(*batch, z_dim)``), ``context``
    ``(*batch, context_dim)``, and ``loc``: the base mean mu pushed through the flow, z_T at eps = 0.
    That is a deterministic summary of q (what :meth:`pyrovae.VAE.encode` and ``reconstruct`` use), not
    its mean, which has no closed form.

    Args:
        z_dim: latent dimension (at least 2 for the flow to couple dimensions).
        num_flows: T, the number of steps (default 2).
        hidden: hidden sizes of each MADE (each at least ``z_dim``; default ``(3 z_dim + 1,)``).
        context_dim: size of h (default ``z_dim``; 0 for no context).
        stable: the gated step above (default) or the plain affine step.
        min_scale: floor on sigma (default 1e-4).

    Shapes: ``h (*batch, 2 z_dim + context_dim)`` -> batch shape ``*batch``, event shape ``(z_dim,)``.

    Raises:
        ValueError: ``num_flows < 1``, ``context_dim < 0``, a hidden size below ``z_dim``;
            ``num_features`` with another ``z_dim``.
    """

    def __init__(self, z_dim: int, num_flows: int = 2, hidden: Sequence[int] | None = None,
                 context_dim: int | None = None, stable: bool = True, min_scale: float = 1e-4):
        super().__init__()
        self.z_dim = int(z_dim)
        if num_flows < 1:
            raise ConfigError(f"num_flows must be at least 1, got {num_flows!r}")
        self.context_dim = self.z_dim if context_dim is None else int(context_dim)
        if self.context_dim < 0:
            raise ConfigError(f"context_dim must be non-negative, got {context_dim!r}")
        self.hidden = tuple(int(n) for n in (hidden if hidden is not None else (3 * self.z_dim + 1,)))
        if any(n < self.z_dim for n in self.hidden):
            raise ConfigError(f"hidden sizes {self.hidden} must each be at least z_dim = {self.z_dim}")
        self.num_flows, self.stable, self.min_scale = int(num_flows), bool(stable), float(min_scale)
        checks.trainable_in_memory(  # Pyro's autoregressive networks cannot be sized on the meta device
            self.num_flows * checks.dense_parameters([self.z_dim + self.context_dim, *self.hidden, 2 * self.z_dim]),
            f"guide iaf: z_dim={self.z_dim}, hidden={self.hidden}", hint="choose a smaller z_dim or hidden")
        order = torch.arange(self.z_dim)
        self.nets = nn.ModuleList(
            ConditionalAutoRegressiveNN(self.z_dim, self.context_dim, list(self.hidden),
                                        permutation=order if t % 2 == 0 else order.flip(0))
            for t in range(self.num_flows))

    def num_features(self, z_dim: int | None = None) -> int:
        _check_z_dim(self, z_dim)
        return 2 * self.z_dim + self.context_dim

    def _split(self, h: torch.Tensor):
        loc, raw, context = h.split([self.z_dim, self.z_dim, self.context_dim], dim=-1)
        return loc, F.softplus(raw) + self.min_scale, context

    def steps(self, context: torch.Tensor) -> list:
        """Fresh Pyro transforms z_{t-1} -> z_t bound to ``context (*batch, context_dim)``."""
        return [_IAFStep(_ContextARN(net, context), stable=self.stable) for net in self.nets]

    def params(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, scale, context = self._split(h)
        z = loc
        for step in self.steps(context):
            z = step(z)
        return {"loc": z, "base_loc": loc, "base_scale": scale, "context": context}

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc, scale, context = self._split(h)
        base = dist.Normal(loc, scale, validate_args=False).to_event(1)
        return dist.TransformedDistribution(base, self.steps(context), validate_args=False)


GUIDES = {"diagonal_normal": DiagonalNormal, "low_rank_normal": LowRankNormal, "iaf": IAF}
