r"""The label-conditional VAE (CVAE) as a Pyro ``model`` + ``guide`` pair.

Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised learning with deep generative models"
(the generative model of M2 with the label always observed); Sohn, Lee & Yan (2015), "Learning
structured output representation using deep conditional generative models". For each image n with
digit label y_n in {0, ..., num_classes - 1}, in the data plate::

    z_n ~ p(z)                            (the prior plug-in; it does not depend on y)
    x_n ~ p(x | decoder(z_n, y_n))        (the likelihood plug-in)

Guide::

    z_n ~ q(z | encoder(x_n, y_n))        (the guide-family plug-in)

The label is an input that both programs condition on, not a random variable: it is not a Pyro sample
site, so the ELBO is a bound on log p(x | y). Labels are integer tensors ``(batch,)``; the networks see
them one-hot. The prior, likelihood and guide family are the plug-ins of :mod:`pyrovae.components.priors`,
:mod:`pyrovae.components.likelihoods` and :mod:`pyrovae.components.guides`, used exactly as
:class:`pyrovae.VAE` uses them, and
``beta`` weighs the latent site as in :meth:`pyrovae.VAE.model` (beta-CVAE).

How the networks see the label (:func:`build_conditional_networks`):

* MLP: the encoder reads ``[flatten(x), one_hot(y)]``, the decoder ``[z, one_hot(y)]``.
* conv: the encoder reads the image with ``num_classes`` extra constant channels, the one-hot label
  broadcast over H x W (channel y is all ones, the others all zeros). A single extra channel could hold
  the label only as a number, imposing an order on the digits; ten channels keep it categorical. In
  the first convolution these channels add a learned per-class map to every filter's output (a
  per-class bias, apart from the zero-padded border), which is as expressive as a learned per-class
  28x28 input map fed through that convolution, without extra parameters. The decoder reads
  ``[z, one_hot(y)]`` in its first linear layer.

Labels are arguments of both programs, as Pyro would pass them to an ELBO: an objective over
``(cvae.model, cvae.guide, x, y)`` bounds log p(x | y), and the importance-sampled log p(x | y) of
:func:`pyrovae.evaluation.log_likelihood` takes the same arguments (Burda, Grosse & Salakhutdinov 2016).
"""

from __future__ import annotations

import numbers
from typing import Literal, Sequence

import pydantic
import pyro
import torch
from pydantic import Field
from pyro.poutine.util import is_validation_enabled
from torch import nn

from .. import checks
from ..components.nets import build_conditional_networks, one_hot
from ..components.plugins import REGISTRIES
from ..errors import ConfigError, DataError
from .base import check_labels, data_plate, register_family
from .vae import VAE, VAEConfig

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class CVAEConfig(VAEConfig):
    """What :meth:`CVAE.from_config` needs to rebuild a :class:`CVAE`: a :class:`~pyrovae.models.VAEConfig`
    and the number of labels."""

    kind: Literal["cvae"] = "cvae"
    num_classes: int = Field(10, ge=2, description="number of labels; labels are integers 0..num_classes-1")

    @pydantic.model_validator(mode="after")
    def _conditional_prior(self):
        if hasattr(REGISTRIES["prior"][self.prior], "attach"):
            raise ValueError(f"prior {self.prior!r} is built from an unconditional encoder, which a conditional "
                             "model does not have; choose another prior")
        return self


# --- the model -------------------------------------------------------------------------------------


@register_family
class CVAE(VAE):
    r"""A label-conditional VAE: p(z) p(x | z, y) with guide q(z | x, y); prior, likelihood and guide
    family are the plug-ins of :class:`pyrovae.VAE`.

    Args:
        z_dim: latent dimension (default 50).
        x_shape: shape of one data point (default ``(1, 28, 28)``).
        num_classes: number of labels; labels are integers in ``0 .. num_classes - 1`` (default 10).
        network: ``"mlp"`` or ``"conv"``, the conditional networks built when ``encoder``/``decoder`` are
            not given (see :func:`build_conditional_networks`).
        hidden: hidden-layer sizes of the MLP encoder; the decoder mirrors them (default ``(512, 512)``).
        prior: p(z), see :mod:`pyrovae.components.priors` (default :class:`~pyrovae.components.priors.StandardNormal`).
        likelihood: p(x|z, y), see :mod:`pyrovae.components.likelihoods` (default ``Bernoulli``).
        guide_family: q(z|x, y), see :mod:`pyrovae.components.guides` (default ``DiagonalNormal``).
        encoder, decoder: networks of your own: ``encoder(x, y_one_hot) -> (*batch, num_features)`` and
            ``decoder(z, y_one_hot) -> (*batch, num_params, *x_shape)``, with ``y_one_hot (*batch, num_classes)``.

    Raises:
        ConfigError: the prior's event shape is not ``(z_dim,)``; a prior built from the encoder (the
            VampPrior: its pseudo-inputs carry no label); an unknown ``network``; ``num_classes < 2``.

    Note:
        Nothing forces z to leave the digit's identity to y. While the KL term is cheap (warm-up, or
        a large ``z_dim`` early in training) z carries the class too, and samples then follow z rather
        than the label asked for. Weighing the KL term more (``beta = 4``, no warm-up) makes the model
        leave the class to y: see ``benchmarks/cvae_digits.py``, which measures how often a classifier
        reads the requested digit in the samples.

    References:
        Kingma, Rezende, Mohamed & Welling (2014), Semi-supervised learning with deep generative models.
        Sohn, Lee & Yan (2015), Learning structured output representation using deep conditional
        generative models.

    Example::

        cvae = CVAE(z_dim=16)
        loss = pyrovae.inference.ELBO().differentiable_loss(cvae.model, cvae.guide, x, y)
        threes = cvae.sample(3, n=8)          # (8, 1, 28, 28)
    """

    kind = "cvae"
    config_class = CVAEConfig
    log_likelihood_of = "log p(x | y)"

    def __init__(self, z_dim: int = 50, x_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 network: str = "mlp", hidden: Sequence[int] = (512, 512), prior: nn.Module | None = None,
                 likelihood: nn.Module | None = None, guide_family: nn.Module | None = None,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if hasattr(prior, "attach"):
            raise ConfigError(f"the prior {type(prior).__name__} is built from the encoder of an unconditional "
                              "VAE (q(z|u) at pseudo-inputs u), but a CVAE's encoder needs a label; use a prior "
                              "that stands alone (standard_normal, learned_normal, mixture, flow)")
        object.__setattr__(self, "num_classes", int(num_classes))  # the networks VAE builds need it
        super().__init__(z_dim, x_shape, network, hidden, prior, likelihood, guide_family, encoder, decoder)

    def _networks(self, network: str, hidden: Sequence[int]) -> tuple[nn.Module, nn.Module]:
        return build_conditional_networks(network, self.x_shape, self.num_classes, self.z_dim,
                                          self.guide_family.num_features(self.z_dim), self.likelihood.num_params,
                                          hidden)

    @classmethod
    def from_config(cls, config: CVAEConfig) -> "CVAE":
        cvae = cls(z_dim=config.z_dim, x_shape=config.x_shape, num_classes=config.num_classes,
                   network=config.network, hidden=config.hidden, **config.build_plugins())
        cvae.config = config
        return cvae

    # --- the Pyro program -------------------------------------------------------------------------

    def one_hot(self, y: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Labels ``y (*batch,)`` (integers, trusted) -> ``(*batch, num_classes)`` one-hot of ``dtype``."""
        return one_hot(y, self.num_classes, dtype)

    def model(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """p(z) p(x|z, y) for a batch ``x (batch, *x_shape)`` with labels ``y (batch,)`` (integers). As
        :meth:`pyrovae.VAE.model`, ``num_data`` scales a mini-batch to the data set. The labels are checked
        (see :meth:`check_labels`) while Pyro's validation is enabled; training turns it off.
        Returns z ``(batch, z_dim)``."""
        if is_validation_enabled():
            self.check_labels(y, x)
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z, self.one_hot(y, z.dtype))), obs=x)
        return z

    def guide(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """q(z|x, y) for a batch ``x (batch, *x_shape)`` with labels ``y (batch,)``. Returns z
        ``(batch, z_dim)``."""
        if is_validation_enabled():
            self.check_labels(y, x)
        with data_plate(x, num_data):
            return pyro.sample("z", self.guide_family(self.encoder(x, self.one_hot(y, x.dtype))))

    def program_args(self, batch: dict) -> tuple:
        """``(x, y)``: the images and their labels."""
        return batch["x"], batch["y"]

    def guide_features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The encoder's output h(x, y) ``(batch, num_features)`` that the guide family reads."""
        return self.encoder(x, self.one_hot(y, x.dtype))

    # --- checks at the public boundary ------------------------------------------------------------

    def check_dataset(self, data, seed: int = 0) -> None:
        """:meth:`pyrovae.VAE.check_dataset`, and the split's labels (see :meth:`check_labels`)."""
        super().check_dataset(data, seed)
        check_labels(data.labels, len(data), self.num_classes)

    def check_labels(self, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        """Raise one :class:`~pyrovae.errors.DataError` unless ``y`` is a ``(batch,)`` integer tensor with
        values in ``0 .. num_classes - 1`` and, when ``x`` is given, ``batch == x.shape[0]`` (see
        :func:`pyrovae.models.check_labels`)."""
        check_labels(y, None if x is None else x.shape[0], self.num_classes)

    def _labels(self, y: int | torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``y`` as a checked ``(batch,)`` label tensor on the model's device; one int (or 0-d integer
        tensor) is repeated for every image of ``x`` (once when ``x`` is None)."""
        device = next(self.parameters()).device
        if isinstance(y, torch.Tensor) and y.dim() == 0 and y.dtype in _INTEGER_DTYPES:
            y = int(y)
        if isinstance(y, numbers.Integral) and not isinstance(y, bool):
            if not 0 <= int(y) < self.num_classes:
                raise DataError(f"digit {y} is outside 0..{self.num_classes - 1}; this model was built with "
                                f"num_classes={self.num_classes}")
            return torch.full((1 if x is None else x.shape[0],), int(y), dtype=torch.long, device=device)
        self.check_labels(y, x)
        return y.to(device)

    # --- what users call ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: int | torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters of q(z|x, y) for ``x (batch, *x_shape)`` and labels ``y (batch,)`` (or one int
        for all): for the default guide ``{"loc", "scale"}``, each ``(batch, z_dim)``.

        Raises:
            DataError: bad ``x`` (see :meth:`check_data`) or ``y`` (see :meth:`check_labels`).
        """
        self.check_data(x)
        y = self._labels(y, x)
        return self.guide_family.params(self.guide_features(x, y))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: int | torch.Tensor) -> torch.distributions.Distribution:
        """p(x|z, y) for ``z (*batch, z_dim)`` and labels ``y (batch,)`` or one int: a distribution with
        event shape ``x_shape`` and batch shape ``*batch``.

        Raises:
            DataError: bad labels (see :meth:`check_labels`).
        """
        y = self._labels(y)
        return self.likelihood(self.decoder(z, self.one_hot(y, z.dtype)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: int | torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z, y) at z = the ``loc`` of q(z|x, y) (pixel probabilities for Bernoulli):
        ``(batch, *x_shape)``."""
        self.check_data(x)
        y = self._labels(y, x)
        return self.decode(self.encode(x, y)["loc"], y).mean

    @torch.no_grad()
    def sample(self, y: int | torch.Tensor, n: int = 1) -> torch.Tensor:
        """``n`` draws z ~ p(z) per label, decoded to the mean of p(x|z, y) (pixel probabilities).

        Args:
            y: one digit (int) or labels ``(m,)``.
            n: draws per label (default 1).

        Returns:
            ``(m * n, *x_shape)``, label-major (``.view(m, n, *x_shape)`` gives one row per label); m = 1
            for one digit. Seed with ``pyro.set_rng_seed``: the same seed gives the same z for any labels.

        Raises:
            ConfigError: ``n < 1``. DataError: a label outside ``0 .. num_classes - 1``, non-integer or
            not 1-d.
        """
        n = checks.positive_int(n, "n", hint="draws per label")
        y = self._labels(y).repeat_interleave(int(n))
        z = self.prior().sample((y.shape[0],))
        return self.decode(z, y).mean
