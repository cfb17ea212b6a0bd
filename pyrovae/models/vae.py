"""The VAE as a Pyro ``model`` + ``guide`` pair (Kingma & Welling 2014; Rezende, Mohamed & Wierstra 2014).

Generative model, for each data point n in the data plate::

    z_n ~ p(z)                       (the prior plug-in)
    x_n ~ p(x | decoder(z_n))        (the likelihood plug-in)

Guide (amortized variational posterior)::

    z_n ~ q(z | encoder(x_n))        (the guide-family plug-in)

Parameters live in the :class:`VAE` module itself and never in Pyro's global param store, so any
number of models can coexist in one process. Train it with :func:`pyrovae.fit`, or with a Pyro ELBO's
``differentiable_loss`` and any torch optimizer over ``vae.parameters()``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import pydantic
import pyro
import torch
from pydantic import Field, PositiveInt
from torch import nn

from .. import checks
from ..components.guides import DiagonalNormal
from ..components.likelihoods import Bernoulli, masked
from ..components.nets import build_networks
from ..components.plugins import build_plugin, check_plugin, fitting_likelihoods
from ..components.priors import StandardNormal, check_prior
from ..errors import ArgumentTypeError, DataError
from ..torchtools import parameter_count
from .base import Batch, Family, ModelConfig, data_plate, register_family


def check_dtype(x: torch.Tensor, model: nn.Module) -> None:
    """Raise :class:`~pyrovae.errors.DataError` when floating-point ``x`` has another dtype than ``model``'s
    parameters (float64 data for a float32 model): pyrovae does not convert data, which would copy it silently,
    but says how."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None and x.is_floating_point() and x.dtype != dtype:
        raise DataError(f"x is {x.dtype}; this model's parameters are {dtype}: convert the data with "
                        f"{'x.float()' if dtype == torch.float32 else f'x.to({dtype})'}")


def check_data(x: torch.Tensor, x_shape: tuple[int, ...], likelihood, model: nn.Module | None = None) -> None:
    """Raise :class:`~pyrovae.errors.DataError` unless ``x`` is a non-empty ``(batch, *x_shape)`` tensor in
    ``likelihood``'s support (its ``check_support`` checks dtype, finiteness and values) and, when ``model``
    is given, of its parameters' floating-point dtype (see :func:`check_dtype`); a non-tensor raises
    :class:`~pyrovae.errors.ArgumentTypeError`. The data check of every model."""
    shape = ", ".join(map(str, x_shape))
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"x must be a torch.Tensor of shape (batch, {shape}), got {type(x).__name__}")
    if x.dim() != 1 + len(x_shape) or tuple(x.shape[1:]) != tuple(x_shape):
        raise DataError(f"x has shape {tuple(x.shape)}; this model takes (batch, {shape}): reshape it, e.g. "
                        f"x.view(-1, {shape})")
    if x.shape[0] == 0:
        raise DataError(f"x has shape {tuple(x.shape)}: no data points; pass at least one")
    if model is not None:
        check_dtype(x, model)
    try:
        likelihood.check_support(x)
    except DataError as e:
        if not torch.isfinite(x).all():
            raise
        fits = fitting_likelihoods(x, x_shape)
        names = ", ".join(fits) if fits else "none of the built-in ones"
        raise DataError(f"{e}. Likelihoods that fit this data: {names} (--likelihood NAME)") from None


class PlugInConfig(ModelConfig):
    """Settings shared by the families built from plug-ins: the prior, the likelihood and the guide family
    by name, with their options (constructor keyword arguments), and the data's shape."""

    z_dim: PositiveInt = Field(50, description="latent dimension")
    x_shape: tuple[PositiveInt, ...] = Field((1, 28, 28), description="shape of one data point")
    prior: str = Field("standard_normal", description="the prior plug-in p(z)")
    prior_options: dict[str, Any] = Field(default_factory=dict, description="options of the prior")
    likelihood: str = Field("bernoulli", description="the likelihood plug-in p(x|z)")
    likelihood_options: dict[str, Any] = Field(default_factory=dict, description="options of the likelihood")
    guide: str = Field("diagonal_normal", description="the guide family q(z|x)")
    guide_options: dict[str, Any] = Field(default_factory=dict, description="options of the guide family")

    #: The plug-ins this config names (an autoencoder's guide is not one).
    plugin_kinds: ClassVar[tuple[str, ...]] = ("prior", "likelihood", "guide")

    @pydantic.model_validator(mode="after")
    def _known_plugins(self):
        for what in self.plugin_kinds:  # a ConfigError (ValueError): pydantic reports it
            check_plugin(what, getattr(self, what), getattr(self, f"{what}_options"))
        return self

    def build_plugins(self) -> dict:
        """``{"prior", "likelihood", "guide_family"}`` built from the names and options."""
        return {"prior": build_plugin("prior", self.prior, self.z_dim, self.prior_options),
                "likelihood": build_plugin("likelihood", self.likelihood, tuple(self.x_shape), self.likelihood_options),
                "guide_family": build_plugin("guide", self.guide, self.z_dim, self.guide_options)}


class VAEConfig(PlugInConfig):
    """What :meth:`VAE.from_config` needs to rebuild a :class:`VAE`."""

    kind: Literal["vae"] = "vae"
    network: Literal["mlp", "conv"] = Field("mlp", description="encoder/decoder pair")
    hidden: tuple[PositiveInt, ...] = Field((512, 512), description="MLP hidden sizes (the decoder mirrors them)")
    masked_inputs: bool = Field(False, description="the MLP encoder also reads the missing-value mask (on by default "
                                                   "when the data's missing='mask')")


@register_family
class VAE(Family):
    r"""A variational autoencoder whose prior, likelihood and guide family are plug-ins.

    Args:
        z_dim: latent dimension (default 50).
        x_shape: shape of one data point (default ``(1, 28, 28)``).
        network: ``"mlp"`` or ``"conv"``, the encoder/decoder pair built when ``encoder``/``decoder``
            are not given (see :mod:`pyrovae.components.nets`).
        hidden: hidden-layer sizes of the MLP encoder; the decoder mirrors them (default ``(512, 512)``).
        prior: p(z), see :mod:`pyrovae.components.priors` (default ``StandardNormal``).
        likelihood: p(x|z), see :mod:`pyrovae.components.likelihoods` (default ``Bernoulli``).
        guide_family: q(z|x), see :mod:`pyrovae.components.guides` (default ``DiagonalNormal``).
        encoder, decoder: networks of your own, with the shapes of :mod:`pyrovae.components.nets`.
        masked_inputs: the encoder also reads the missing-value mask: the MLP encoder's input doubles (x
            zero-filled, then the mask); an encoder of your own is called as ``encoder(x, mask)``.

    **Missing values.** ``model(x, mask)`` and ``guide(x, mask)`` take a mask ``(batch, *x_shape)`` (1
    observed, 0 missing; ``x`` holds any finite value, 0 by convention, where it is 0): the likelihood counts
    the observed entries only (:func:`pyrovae.components.likelihoods.masked`), a data point with nothing
    observed is masked out of the likelihood site (``poutine.mask``), so no value and no gradient comes from
    a missing entry. The ELBO is then that of the observed part, and the IWAE objective over these programs is
    MIWAE (Mattei & Frellsen 2019). Batches with a ``"mask"`` pass it (:meth:`program_args`).

    Raises:
        ConfigError: ``z_dim``, an ``x_shape`` entry or a ``hidden`` size below 1; the prior's event shape is
            not ``(z_dim,)``; an unknown ``network``; networks too large to train in the memory available (their
            size is measured before they are built, see :func:`pyrovae.checks.trainable_in_memory`).
        ArgumentTypeError: ``z_dim``, ``x_shape`` or ``hidden`` of the wrong type.

    The constructor and the methods users call (``encode``, ``reconstruct``, ``sample``, ...) check their
    arguments once; ``model`` and ``guide``, run at every training step, do not (check data once with
    :meth:`check_data`).

    Example::

        vae = VAE(z_dim=50)
        loss = pyrovae.inference.ELBO().differentiable_loss(vae.model, vae.guide, x)
    """

    kind = "vae"
    config_class = VAEConfig

    def __init__(self, z_dim: int = 50, x_shape: Sequence[int] = (1, 28, 28), network: str = "mlp",
                 hidden: Sequence[int] = (512, 512), prior: nn.Module | None = None,
                 likelihood: nn.Module | None = None, guide_family: nn.Module | None = None,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None, masked_inputs: bool = False):
        super().__init__()
        self.config = None
        self.masked_inputs = bool(masked_inputs)
        self.z_dim, self.x_shape = checks.positive_int(z_dim, "z_dim"), checks.sizes(x_shape, "x_shape", 1)
        hidden = checks.sizes(hidden, "hidden")
        self.prior = prior if prior is not None else StandardNormal(self.z_dim)
        self.likelihood = likelihood if likelihood is not None else Bernoulli(self.x_shape)
        self.guide_family = guide_family if guide_family is not None else DiagonalNormal(self.z_dim)
        check_prior(self.prior, self.z_dim)
        if encoder is None or decoder is None:
            own = sum(p.numel() for part in (self.prior, self.likelihood, self.guide_family) for p in part.parameters())
            checks.trainable_in_memory(parameter_count(lambda: self._networks(network, hidden)) + own,
                                       f"z_dim={self.z_dim}, x_shape={self.x_shape}, hidden={hidden}",
                                       hint="choose smaller hidden sizes or a smaller z_dim")
            built = self._networks(network, hidden)
            encoder = encoder if encoder is not None else built[0]
            decoder = decoder if decoder is not None else built[1]
        self.encoder, self.decoder = encoder, decoder
        if hasattr(self.prior, "attach"):  # priors built from the encoder (VampPrior) get it here
            self.prior.attach(self)

    def _networks(self, network: str, hidden: Sequence[int]) -> tuple[nn.Module, nn.Module]:
        return build_networks(network, self.x_shape, self.z_dim, self.guide_family.num_features(self.z_dim),
                              self.likelihood.num_params, hidden, self.masked_inputs,
                              getattr(self.likelihood, "input_shape", None))

    @classmethod
    def from_config(cls, config: VAEConfig) -> "VAE":
        vae = cls(z_dim=config.z_dim, x_shape=config.x_shape, network=config.network, hidden=config.hidden,
                  masked_inputs=config.masked_inputs, **config.build_plugins())
        vae.config = config
        return vae

    # --- the Pyro program -------------------------------------------------------------------------

    #: VAEs train on data with missing entries (a batch's ``"mask"``).
    takes_mask = True

    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """p(z) p(x|z) for a batch ``x (batch, *x_shape)``; ``mask`` ``(batch, *x_shape)`` (1 observed, 0
        missing; None: all observed) leaves the missing entries out of the likelihood; ``num_data`` is the
        data-set size when ``x`` is a mini-batch of it (scales the ELBO to the whole set). Weigh the KL term by
        beta with :func:`pyrovae.inference.kl_weight`. Returns z ``(batch, z_dim)``."""
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior())
            likelihood = masked(self.likelihood(self.decoder(z)), mask)
            if mask is None:
                pyro.sample("x", likelihood, obs=x)
            else:  # a data point with no observed entry has no likelihood term at all
                with pyro.poutine.mask(mask=mask.flatten(1).any(-1)):
                    pyro.sample("x", likelihood, obs=x)
        return z

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """q(z|x) for a batch ``x (batch, *x_shape)`` (with ``mask``, q(z | x_obs): the encoder reads the
        zero-filled x, and the mask too with ``masked_inputs``). Returns z ``(batch, z_dim)``."""
        if mask is not None:  # whatever a missing entry holds, the encoder reads 0 there
            x = x.masked_fill(mask == 0, 0.0)
        with data_plate(x, num_data):
            return pyro.sample("z", self.guide_family(self.guide_features(x, mask)))

    def guide_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output h(x) ``(batch, num_features)`` that the guide family reads. A likelihood with
        ``encoder_inputs(x, mask)`` (the mixed-type one: one-hot categories) makes the encoder's inputs."""
        if hasattr(self.likelihood, "encoder_inputs"):
            x, mask = self.likelihood.encoder_inputs(x, mask)
        return self.encoder(x, mask) if self.masked_inputs else self.encoder(x)

    def program_args(self, batch: Batch) -> tuple:
        """``(x,)``, or ``(x, mask)`` for a batch with missing entries."""
        return (batch["x"], batch["mask"]) if "mask" in batch and self.takes_mask else (batch["x"],)

    # --- what users call ----------------------------------------------------------------------------

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`~pyrovae.errors.DataError` unless ``x`` is ``(batch, *x_shape)``, floating point,
        finite and in the likelihood's support. Called once at public entry points, never per training
        step. Float data must have the parameters' dtype (float32 unless the model was converted): float64 is
        refused, not converted, so that no copy is made silently."""
        check_data(x, self.x_shape, self.likelihood, self)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The parameters of q(z|x): for the default guide ``{"loc", "scale"}``, each ``(batch, z_dim)``; with
        ``mask`` (1 observed, 0 missing, the shape of ``x``) the encoder reads the observed entries only."""
        self.check_data(x)
        return self.guide_family.params(self.guide_features(x, mask))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.distributions.Distribution:
        """p(x|z) for ``z (*batch, z_dim)``: a distribution with event shape ``x_shape``."""
        return self.likelihood(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z) at z = the mean of q(z|x) (pixel probabilities for Bernoulli):
        ``(batch, *x_shape)``."""
        return self.decode(self.encode(x)["loc"]).mean

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reconstruction error of ``x (batch, *x_shape)`` at z = the mean of q(z|x) (the code, for an
        autoencoder), per data point ``(batch,)``: ``reconstruction_nll`` = -log p(x | z) in the likelihood's own
        loss (nats; the binary cross-entropy for a Bernoulli) and ``squared_error`` = ||x - E[x | z]||^2."""
        decoded = self.decode(self.encode(x)["loc"])
        return {"reconstruction_nll": -decoded.log_prob(x),
                "squared_error": (x - decoded.mean).pow(2).flatten(1).sum(-1)}

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws z ~ p(z) decoded to the mean of p(x|z): ``(n, *x_shape)``. Seed with
        ``pyro.set_rng_seed`` for reproducible draws.

        Raises:
            ConfigError: ``n < 1``. ArgumentTypeError: ``n`` not an integer.
        """
        n = checks.positive_int(n, "n", hint="the number of draws")
        z = self.prior().sample((n,))
        return self.decode(z).mean
