r"""Hierarchical VAEs: several stochastic layers as one Pyro ``model`` + ``guide`` pair.

Generative model, for each data point in the data plate, with latent sizes ``layers = (d_1, ..., d_L)``
(bottom to top)::

    z_L ~ p(z_L)                                        (the prior plug-in: standard_normal, vamp, flow, ...)
    z_l ~ N(mu_l(z_{l+1}), diag sigma_l(z_{l+1})^2)      for l = L-1, ..., 1 (the top-down networks)
    x   ~ p(x | decoder(z_1))                           (the likelihood plug-in)

Sites ``"z1"`` ... ``"zL"`` and ``"x"`` all lie in the data plate, so the trainer's KL weight (beta, warm-up)
reaches every latent layer, IWAE and the importance-sampled evaluator weigh all layers jointly, and
:class:`~pyrovae.inference.FreeBitsELBO` floors each dimension of each layer (one lambda for all layers).

Two guides (``ladder``):

* ``ladder=False``: Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*, ICLR: the
  inference network runs bottom-up, q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}), each a diagonal Normal.
* ``ladder=True``: Sonderby, Raiko, Maaloe, Sonderby & Winther (2016), *Ladder Variational Autoencoders*,
  NeurIPS: a deterministic bottom-up pass d_l = f_l(d_{l-1}) (d_0 = x) gives an estimate
  N(mu_hat_l, sigma_hat_l^2) per layer; the top layer is q(z_L | x) = N(mu_hat_L, sigma_hat_L^2), and a top-down
  pass samples z_l from the precision-weighted merge (:func:`precision_weighted_merge`) of the estimate with the
  generative p(z_l | z_{l+1}) (whose networks the guide shares with the model).

Not (yet) here: batch normalization, skip connections and IAF layers (Kingma et al. 2016); a convolutional
network is available for the bottom layer (``network="conv"``: the VAE's conv encoder/decoder).
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
import pyro
import pyro.distributions as dist
import torch
from pydantic import Field, PositiveInt
from torch import nn

from .. import checks
from ..components.guides import DiagonalNormal
from ..components.nets import build_networks, mlp
from ..components.plugins import build_plugin, check_plugin
from ..components.priors import check_prior
from ..errors import ArgumentTypeError, ConfigError, UnsupportedError
from .base import Family, ModelConfig, data_plate, register_family
from .vae import check_data


def precision_weighted_merge(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                             sigma2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The normalized product of two diagonal Gaussians, N(mu1, sigma1^2) N(mu2, sigma2^2) / Z = N(mu, sigma^2):

        1 / sigma^2 = 1 / sigma1^2 + 1 / sigma2^2,    mu = (mu1 / sigma1^2 + mu2 / sigma2^2) sigma^2

    (Sonderby et al. 2016, eq. 17-18: the ladder VAE's merge of the bottom-up estimate and the top-down prior).

    Args:
        mu1, sigma1, mu2, sigma2: tensors that broadcast together, scales > 0 (not checked: called at every step).

    Returns:
        ``(mu, sigma)`` of the broadcast shape; sigma <= min(sigma1, sigma2).
    """
    p1, p2 = sigma1.pow(-2), sigma2.pow(-2)
    var = 1.0 / (p1 + p2)
    return (mu1 * p1 + mu2 * p2) * var, var.sqrt()


class HierarchicalConfig(ModelConfig):
    """What :class:`HierarchicalVAE` is built from (``pyrovae hierarchical`` takes each field as a flag)."""

    kind: Literal["hierarchical"] = "hierarchical"
    layers: tuple[PositiveInt, ...] = Field((64, 32), description="latent sizes, bottom (z1) to top (zL)")
    ladder: bool = Field(False, description="the ladder VAE's guide (Sonderby et al. 2016) instead of the "
                                            "bottom-up one (Burda et al. 2016)")
    network: Literal["mlp", "conv"] = Field("mlp", description="the networks between x and z1")
    hidden: tuple[PositiveInt, ...] = Field((512, 512), description="MLP hidden sizes between x and z1")
    latent_hidden: tuple[PositiveInt, ...] = Field((256, 256), description="MLP hidden sizes between latent "
                                                                           "layers")
    x_shape: tuple[PositiveInt, ...] = Field((1, 28, 28), description="shape of one data point")
    prior: str = Field("standard_normal", description="the prior plug-in p(zL) of the top layer")
    prior_options: dict[str, Any] = Field(default_factory=dict, description="options of the prior")
    likelihood: str = Field("bernoulli", description="the likelihood plug-in p(x|z1)")
    likelihood_options: dict[str, Any] = Field(default_factory=dict, description="options of the likelihood")

    @pydantic.model_validator(mode="after")
    def _valid(self):  # ConfigErrors (ValueErrors): pydantic reports them naming the config
        if not self.layers:
            raise ConfigError("layers is empty; give at least one latent size, e.g. layers=(64, 32)")
        if not self.x_shape:
            raise ConfigError("x_shape is empty; give the shape of one data point, e.g. (1, 28, 28)")
        if self.ladder and not self.hidden:
            raise ConfigError("ladder=True needs at least one hidden size (its bottom-up pass is made of hidden "
                              "layers); give hidden, e.g. 512,512, or use ladder=False")
        for what in ("prior", "likelihood"):
            check_plugin(what, getattr(self, what), getattr(self, f"{what}_options"))
        return self


class _TopEncoder(nn.Module):
    """x -> the features of q(z_L | x) that a VampPrior reads (see :meth:`HierarchicalVAE.top_features`). It
    keeps a plain reference to its model, so no parameter is registered twice."""

    def __init__(self, model: "HierarchicalVAE"):
        super().__init__()
        object.__setattr__(self, "_model", model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._model.top_features(x)


class _TopView:
    """What a prior's ``attach`` (the VampPrior's) reads of a VAE, for the top layer: ``z_dim``, ``x_shape``,
    ``encoder`` (x -> features) and ``guide_family`` (features -> q(z_L | x))."""

    def __init__(self, model: "HierarchicalVAE"):
        self.z_dim, self.x_shape = model.layers[-1], model.x_shape
        self.encoder, self.guide_family = _TopEncoder(model), model.families[-1]


@register_family
class HierarchicalVAE(Family):
    r"""A VAE with ``L = len(layers)`` stochastic layers (see the module docstring for the programs).

    Args:
        config: a :class:`HierarchicalConfig`; or its fields as keyword arguments
            (``HierarchicalVAE(layers=(64, 32), ladder=True)``).

    Networks (ReLU MLPs): the bottom pair is the VAE's (``network``, ``hidden``: x -> 2 d_1 features of
    q(z_1 | x) and z_1 -> the likelihood's parameters); ``down[l]``: z_{l+2} -> (mu, raw sigma) of
    p(z_{l+1} | z_{l+2}) and, bottom-up, ``up[l]``: z_{l+1} -> q(z_{l+2} | z_{l+1}), both with ``latent_hidden``.
    The ladder replaces the bottom-up guide by ``trunks`` (x -> hidden[-1] features, then hidden[-1] ->
    hidden[-1] per layer, ReLU) with a linear head per layer. Scales are softplus(raw) + 1e-4. With
    ``hidden=()`` and ``latent_hidden=()`` every network of the Burda model is linear.

    Shapes: ``model(x)``/``guide(x)`` take ``x (batch, *x_shape)``; site ``"zl"`` has event shape ``(d_l,)``.

    Raises:
        ConfigError: empty ``layers``, a size below 1, a ladder without hidden sizes, an unknown plug-in, a
            prior whose event shape is not ``(d_L,)``, a conv network on images whose sides are not divisible by 4.
        ArgumentTypeError: ``config`` not a :class:`HierarchicalConfig`, or both a config and fields.
    """

    kind = "hierarchical"
    config_class = HierarchicalConfig
    latent_site = "z1"

    def __init__(self, config: HierarchicalConfig | None = None, **fields):
        super().__init__()
        if config is None:
            config = HierarchicalConfig(**fields)
        elif fields or not isinstance(config, HierarchicalConfig):
            raise ArgumentTypeError(f"pass a HierarchicalConfig or its fields, not both; got {type(config).__name__}"
                                    f"{' and ' + ', '.join(fields) if fields else ''}")
        self.config = config
        self.layers, self.x_shape = tuple(config.layers), tuple(config.x_shape)
        self.ladder, self.z_dim = bool(config.ladder), self.layers[-1]
        self.latent_sites = tuple(f"z{i + 1}" for i in range(len(self.layers)))
        self.prior = build_plugin("prior", config.prior, self.z_dim, config.prior_options)
        self.likelihood = build_plugin("likelihood", config.likelihood, self.x_shape, config.likelihood_options)
        check_prior(self.prior, self.z_dim)
        self.families = [DiagonalNormal(d) for d in self.layers]  # no parameters: a plain list
        d, hid = self.layers, tuple(config.latent_hidden)
        self.down = nn.ModuleList(mlp([d[i + 1], *hid, 2 * d[i]]) for i in range(len(d) - 1))
        num_params = self.likelihood.num_params
        if not self.ladder:
            self.encoder, self.decoder = build_networks(config.network, self.x_shape, d[0], 2 * d[0], num_params,
                                                        config.hidden)
            self.up = nn.ModuleList(mlp([d[i], *hid, 2 * d[i + 1]]) for i in range(len(d) - 1))
        else:
            width = config.hidden[-1]
            first = build_networks(config.network, self.x_shape, d[0], width, num_params, config.hidden[:-1])[0]
            self.decoder = build_networks(config.network, self.x_shape, d[0], 2 * d[0], num_params,
                                          config.hidden)[1]
            self.trunks = nn.ModuleList([nn.Sequential(first, nn.ReLU()),
                                         *(nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in d[1:])])
            self.heads = nn.ModuleList(nn.Linear(width, 2 * k) for k in d)
        if hasattr(self.prior, "attach"):  # the VampPrior: a mixture of q(z_L | u_k)
            self.prior.attach(_TopView(self))

    @classmethod
    def from_config(cls, config: HierarchicalConfig) -> "HierarchicalVAE":
        return cls(config)

    # --- the Pyro programs ------------------------------------------------------------------------------

    def model(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """p(z_L) prod_l p(z_l | z_{l+1}) p(x | z_1) for ``x (batch, *x_shape)``. Returns z_1."""
        with data_plate(x, num_data):
            z = pyro.sample(self.latent_sites[-1], self.prior())
            for i in reversed(range(len(self.layers) - 1)):
                z = pyro.sample(self.latent_sites[i], self.families[i](self.down[i](z)))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """q(z_1, ..., z_L | x) for ``x (batch, *x_shape)``: bottom-up (Burda) or ladder. Returns z_1."""
        with data_plate(x, num_data):
            if not self.ladder:
                z = pyro.sample(self.latent_sites[0], self.families[0](self.encoder(x)))
                for i in range(1, len(self.layers)):
                    z = pyro.sample(self.latent_sites[i], self.families[i](self.up[i - 1](z)))
                return z
            estimates = self.bottom_up(x)
            loc, scale = estimates[-1]
            z = pyro.sample(self.latent_sites[-1], dist.Normal(loc, scale).to_event(1))
            for i in reversed(range(len(self.layers) - 1)):
                prior = self.families[i].params(self.down[i](z))
                loc, scale = precision_weighted_merge(*estimates[i], prior["loc"], prior["scale"])
                z = pyro.sample(self.latent_sites[i], dist.Normal(loc, scale).to_event(1))
            return z

    def bottom_up(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ladder's deterministic pass: ``[(mu_hat_l, sigma_hat_l)]`` for l = 1..L, each ``(batch, d_l)``."""
        out, h = [], x
        for i, (trunk, head) in enumerate(zip(self.trunks, self.heads)):
            h = trunk(h)
            p = self.families[i].params(head(h))
            out.append((p["loc"], p["scale"]))
        return out

    def top_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, 2 d_L)`` features of a Gaussian over z_L given x (what a VampPrior's components read): the
        ladder's top estimate; for the bottom-up guide, q(z_L | z_{L-1}) along the chain of guide means."""
        if self.ladder:
            h = x
            for trunk in self.trunks:
                h = trunk(h)
            return self.heads[-1](h)
        h = self.encoder(x)
        for up, family in zip(self.up, self.families):
            h = up(family.params(h)["loc"])
        return h

    @property
    def guide_family(self):
        """Not one: the guide has a Gaussian per layer, so the diagnostics' per-image optimum q* over one site (the
        amortization gap) does not apply; raises :class:`~pyrovae.errors.UnsupportedError`, which
        :func:`pyrovae.diagnostics.diagnose` reports as skipped."""
        raise UnsupportedError(f"the hierarchical model's guide has {len(self.layers)} latent layers, each its own "
                               "Gaussian; the amortization gap optimizes a per-image guide over one latent site only")

    def guide_features(self, *args) -> torch.Tensor:
        return self.guide_family

    # --- what users call --------------------------------------------------------------------------------

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`~pyrovae.errors.DataError` unless ``x`` is ``(batch, *x_shape)`` in the likelihood's
        support, of the parameters' dtype (as :meth:`pyrovae.VAE.check_data`)."""
        check_data(x, self.x_shape, self.likelihood, self)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The guide's means, each layer's given the means of the layers the guide drew before it:
        ``{"z1": (batch, d_1), ...}``, and ``"loc"`` = the bottom layer's."""
        self.check_data(x)
        means = {}
        if not self.ladder:
            h = self.encoder(x)
            for i, site in enumerate(self.latent_sites):
                means[site] = self.families[i].params(h)["loc"]
                if i + 1 < len(self.layers):
                    h = self.up[i](means[site])
        else:
            estimates = self.bottom_up(x)
            z = means[self.latent_sites[-1]] = estimates[-1][0]
            for i in reversed(range(len(self.layers) - 1)):
                prior = self.families[i].params(self.down[i](z))
                z = means[self.latent_sites[i]] = precision_weighted_merge(*estimates[i], prior["loc"],
                                                                           prior["scale"])[0]
        return {**means, "loc": means[self.latent_sites[0]]}

    @torch.no_grad()
    def decode(self, z1: torch.Tensor) -> torch.distributions.Distribution:
        """p(x | z_1) for ``z1 (*batch, d_1)``."""
        return self.likelihood(self.decoder(z1))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z_1) at the guide's means (:meth:`encode`): ``(batch, *x_shape)``."""
        return self.decode(self.encode(x)["loc"]).mean

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws top-down, z_L ~ p(z_L), z_l ~ p(z_l | z_{l+1}), decoded to the mean of p(x | z_1):
        ``(n, *x_shape)``. Seed with ``pyro.set_rng_seed``.

        Raises:
            ConfigError: ``n < 1``. ArgumentTypeError: ``n`` not an integer.
        """
        n = checks.positive_int(n, "n", hint="the number of draws")
        z = self.prior().sample((n,))
        for i in reversed(range(len(self.layers) - 1)):
            z = self.families[i](self.down[i](z)).sample()
        return self.decode(z).mean


__all__ = ["HierarchicalConfig", "HierarchicalVAE", "precision_weighted_merge"]
