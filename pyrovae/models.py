"""The VAE as a Pyro ``model`` + ``guide`` pair (Kingma & Welling 2014; Rezende, Mohamed & Wierstra 2014).

Generative model, for each image n in the data plate::

    z_n ~ p(z)                       (the prior plug-in)
    x_n ~ p(x | decoder(z_n))        (the likelihood plug-in)

Guide (amortized variational posterior)::

    z_n ~ q(z | encoder(x_n))        (the guide-family plug-in)

Parameters live in the :class:`VAE` module itself and never in Pyro's global param store, so any
number of models can coexist in one process. Train it with a Pyro ELBO's ``differentiable_loss`` and
any torch optimizer over ``vae.parameters()`` (what :func:`pyrovae.train.fit` does).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import pyro
import torch
from pyro import poutine
from torch import nn

from .guides import DiagonalNormal
from .likelihoods import Bernoulli
from .nets import build_networks
from .priors import StandardNormal, check_prior


def _scaled(beta: float):
    """``poutine.scale(scale=beta)``, or nothing at beta = 1 (saves a handler per step)."""
    if beta == 1.0:
        return contextlib.nullcontext()
    if not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    return poutine.scale(scale=beta)


def data_plate(x: torch.Tensor, num_data: int | None, name: str = "data") -> pyro.plate:
    """The plate (dim -1) over the batch ``x (batch, ...)``; when ``num_data`` is the size of the data
    set that ``x`` is a mini-batch of, log-densities inside it are scaled by ``num_data / batch``, so an
    ELBO over the batch estimates the ELBO of the whole set."""
    batch = x.shape[0]
    if num_data is None or num_data == batch:
        return pyro.plate(name, batch, dim=-1)
    return pyro.plate(name, num_data, subsample=torch.arange(batch, device=x.device), dim=-1)


def check_data(x: torch.Tensor, x_shape: tuple[int, ...], likelihood) -> None:
    """Raise ``ValueError`` unless ``x`` is a ``(batch, *x_shape)`` tensor in ``likelihood``'s support
    (its ``check_support`` checks dtype, finiteness and values): the data check of every model."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (batch, {', '.join(map(str, x_shape))}), "
                         f"got {type(x).__name__}")
    if x.dim() != 1 + len(x_shape) or tuple(x.shape[1:]) != tuple(x_shape):
        raise ValueError(f"x has shape {tuple(x.shape)}; this model takes (batch, "
                         f"{', '.join(map(str, x_shape))}): reshape it, e.g. x.view(-1, "
                         f"{', '.join(map(str, x_shape))})")
    likelihood.check_support(x)


class VAE(nn.Module):
    r"""A variational autoencoder whose prior, likelihood and guide family are plug-ins.

    Args:
        z_dim: latent dimension (default 50).
        x_shape: shape of one data point (default ``(1, 28, 28)``).
        network: ``"mlp"`` or ``"conv"``, the encoder/decoder pair built when ``encoder``/``decoder``
            are not given (see :mod:`pyrovae.nets`).
        hidden: hidden-layer sizes of the MLP encoder; the decoder mirrors them (default ``(512, 512)``).
        prior: p(z), see :mod:`pyrovae.priors` (default :class:`~pyrovae.priors.StandardNormal`).
        likelihood: p(x|z), see :mod:`pyrovae.likelihoods` (default :class:`~pyrovae.likelihoods.Bernoulli`).
        guide_family: q(z|x), see :mod:`pyrovae.guides` (default :class:`~pyrovae.guides.DiagonalNormal`).
        encoder, decoder: networks of your own, with the shapes of :mod:`pyrovae.nets`.

    Raises:
        ValueError: the prior's event shape is not ``(z_dim,)``, or an unknown ``network``.

    Example::

        vae = VAE(z_dim=50)
        loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    """

    def __init__(self, z_dim: int = 50, x_shape: Sequence[int] = (1, 28, 28), network: str = "mlp",
                 hidden: Sequence[int] = (512, 512), prior: nn.Module | None = None,
                 likelihood: nn.Module | None = None, guide_family: nn.Module | None = None,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__()
        self.z_dim, self.x_shape = int(z_dim), tuple(x_shape)
        self.prior = prior if prior is not None else StandardNormal(self.z_dim)
        self.likelihood = likelihood if likelihood is not None else Bernoulli(self.x_shape)
        self.guide_family = guide_family if guide_family is not None else DiagonalNormal(self.z_dim)
        check_prior(self.prior, self.z_dim)
        if encoder is None or decoder is None:
            built = build_networks(network, self.x_shape, self.z_dim,
                                   self.guide_family.num_features(self.z_dim), self.likelihood.num_params, hidden)
            encoder = encoder if encoder is not None else built[0]
            decoder = decoder if decoder is not None else built[1]
        self.encoder, self.decoder = encoder, decoder
        if hasattr(self.prior, "attach"):  # priors built from the encoder (VampPrior) get it here
            self.prior.attach(self)

    # --- the Pyro program -------------------------------------------------------------------------

    def model(self, x: torch.Tensor, num_data: int | None = None, beta: float = 1.0) -> torch.Tensor:
        """p(z) p(x|z) for a batch ``x (batch, *x_shape)``; ``num_data`` is the data-set size when
        ``x`` is a mini-batch of it (scales the ELBO to the whole set). ``beta`` weighs the latent site
        (``poutine.scale``), so that an ELBO over model and guide weighs its KL term by ``beta``
        (beta-VAE, Higgins et al. 2017; KL warm-up, Sonderby et al. 2016); 1 is the ELBO itself.
        Returns z ``(batch, z_dim)``."""
        with data_plate(x, num_data):
            with _scaled(beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    def guide(self, x: torch.Tensor, num_data: int | None = None, beta: float = 1.0) -> torch.Tensor:
        """q(z|x) for a batch ``x (batch, *x_shape)``, with the latent site weighed by ``beta`` as in
        :meth:`model`. Returns z ``(batch, z_dim)``."""
        with data_plate(x, num_data):
            with _scaled(beta):
                return pyro.sample("z", self.guide_family(self.encoder(x)))

    # --- what users call ----------------------------------------------------------------------------

    def check_data(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(batch, *x_shape)``, floating point, finite and in the
        likelihood's support. Called once at public entry points, never per training step."""
        check_data(x, self.x_shape, self.likelihood)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters of q(z|x): for the default guide ``{"loc", "scale"}``, each ``(batch, z_dim)``."""
        self.check_data(x)
        return self.guide_family.params(self.encoder(x))

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
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws z ~ p(z) decoded to the mean of p(x|z): ``(n, *x_shape)``. Seed with
        ``pyro.set_rng_seed`` for reproducible draws."""
        z = self.prior().sample((n,))
        return self.decode(z).mean
