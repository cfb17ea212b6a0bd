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
them one-hot. The prior, likelihood and guide family are the plug-ins of :mod:`pyrovae.priors`,
:mod:`pyrovae.likelihoods` and :mod:`pyrovae.guides`, used exactly as :class:`pyrovae.VAE` uses them, and
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

Code written for the unconditional :class:`pyrovae.VAE` interface (``model(x)``, ``guide(x)``,
``encoder(x)``: :func:`pyrovae.evaluate.log_importance_weights`, :func:`pyrovae.priors.kl_mode`,
:func:`pyrovae.train.train_step`) runs on ``cvae.with_labels(y)``, a view with the labels bound.
:func:`log_likelihood_given_labels` and :func:`evaluate_given_labels` are the importance-sampled
log p(x | y) (Burda, Grosse & Salakhutdinov 2016) through those Pyro traces.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Sequence

import pyro
import torch
from pyro.poutine.util import is_validation_enabled
from torch import nn
from torch.nn import functional as F

from .evaluate import eval_mode, importance_sampled, log_importance_weights, summarize
from .guides import DiagonalNormal
from .likelihoods import Bernoulli
from .models import _scaled, data_plate
from .nets import NETWORKS, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from .priors import StandardNormal, check_prior

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _broadcast(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand ``a (*A, m)`` and ``b (*B, n)`` to the common batch shape ``broadcast(A, B)``."""
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return a.expand(*batch, a.shape[-1]), b.expand(*batch, b.shape[-1])


# --- conditional networks: plain nn.Modules, as in pyrovae.nets ---------------------------------------


class ConditionalMLPEncoder(nn.Module):
    """``(x (*batch, *x_shape), y (*batch, num_classes) one-hot) -> (*batch, out_features)``: a
    :class:`pyrovae.nets.MLPEncoder` on ``[flatten(x), y]``. Batch shapes of x and y broadcast."""

    def __init__(self, x_shape: Sequence[int], num_classes: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.net = MLPEncoder((math.prod(self.x_shape) + num_classes,), hidden, out_features)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat(_broadcast(x.flatten(start_dim=x.dim() - len(self.x_shape)), y), dim=-1))


class ConditionalConvEncoder(nn.Module):
    """``(x (*batch, C, H, W), y (*batch, num_classes) one-hot) -> (*batch, out_features)``: a
    :class:`pyrovae.nets.ConvEncoder` on the image with ``num_classes`` extra channels, each the
    constant y_c broadcast over H x W (see the module docstring for why)."""

    def __init__(self, x_shape: Sequence[int], num_classes: int, out_features: int,
                 channels: Sequence[int] = (32, 64)):
        super().__init__()
        c, h, w = x_shape
        self.x_shape = tuple(x_shape)
        self.net = ConvEncoder((c + num_classes, h, w), out_features, channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(x.shape[:-3], y.shape[:-1])
        maps = y[..., None, None].expand(*batch, y.shape[-1], *self.x_shape[1:])
        return self.net(torch.cat([x.expand(*batch, *self.x_shape), maps], dim=-3))


class ConditionalDecoder(nn.Module):
    """``(z (*batch, z_dim), y (*batch, num_classes) one-hot) -> decoder([z, y])``, for any decoder of
    :mod:`pyrovae.nets` built with input size ``z_dim + num_classes`` (output
    ``(*batch, num_params, *x_shape)``). Batch shapes of z and y broadcast."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.net = decoder

    @property
    def output_layer(self) -> nn.Module:
        """The last layer (its bias is set from the data mean by ``likelihood.init_bias``)."""
        return self.net.output_layer

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat(_broadcast(z, y.to(z.dtype)), dim=-1))


def build_conditional_networks(network: str, x_shape: Sequence[int], num_classes: int, z_dim: int,
                               encoder_features: int, decoder_params: int,
                               hidden: Sequence[int] = (512, 512)) -> tuple[nn.Module, nn.Module]:
    """The conditional encoder/decoder pair named ``network`` (``"mlp"`` or ``"conv"``): the networks of
    :func:`pyrovae.nets.build_networks` with the one-hot label as an extra input.

    Raises:
        ValueError: unknown ``network``, or a conv network on images whose sides are not divisible by 4.
    """
    if network == "mlp":
        return (ConditionalMLPEncoder(x_shape, num_classes, hidden, encoder_features),
                ConditionalDecoder(MLPDecoder(z_dim + num_classes, hidden, x_shape, decoder_params)))
    if network == "conv":
        if len(x_shape) != 3 or x_shape[1] % 4 or x_shape[2] % 4:
            raise ValueError(f"network='conv' needs images (C, H, W) with H and W divisible by 4, got {tuple(x_shape)}")
        return (ConditionalConvEncoder(x_shape, num_classes, encoder_features),
                ConditionalDecoder(ConvDecoder(z_dim + num_classes, x_shape, decoder_params)))
    raise ValueError(f"network={network!r} is unknown; choose one of {', '.join(NETWORKS)}")


# --- the model -------------------------------------------------------------------------------------


class CVAE(nn.Module):
    r"""A label-conditional VAE: p(z) p(x | z, y) with guide q(z | x, y); prior, likelihood and guide
    family are the plug-ins of :class:`pyrovae.VAE`.

    Args:
        z_dim: latent dimension (default 50).
        x_shape: shape of one data point (default ``(1, 28, 28)``).
        num_classes: number of labels; labels are integers in ``0 .. num_classes - 1`` (default 10).
        network: ``"mlp"`` or ``"conv"``, the conditional networks built when ``encoder``/``decoder`` are
            not given (see :func:`build_conditional_networks`).
        hidden: hidden-layer sizes of the MLP encoder; the decoder mirrors them (default ``(512, 512)``).
        prior: p(z), see :mod:`pyrovae.priors` (default :class:`~pyrovae.priors.StandardNormal`).
        likelihood: p(x|z, y), see :mod:`pyrovae.likelihoods` (default :class:`~pyrovae.likelihoods.Bernoulli`).
        guide_family: q(z|x, y), see :mod:`pyrovae.guides` (default :class:`~pyrovae.guides.DiagonalNormal`).
        encoder, decoder: networks of your own: ``encoder(x, y_one_hot) -> (*batch, num_features)`` and
            ``decoder(z, y_one_hot) -> (*batch, num_params, *x_shape)``, with ``y_one_hot (*batch, num_classes)``.

    Raises:
        ValueError: the prior's event shape is not ``(z_dim,)``; a prior built from the encoder (the
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
        loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(cvae.model, cvae.guide, x, y)
        threes = cvae.sample(3, n=8)          # (8, 1, 28, 28)
    """

    def __init__(self, z_dim: int = 50, x_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 network: str = "mlp", hidden: Sequence[int] = (512, 512), prior: nn.Module | None = None,
                 likelihood: nn.Module | None = None, guide_family: nn.Module | None = None,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes!r}")
        self.z_dim, self.x_shape, self.num_classes = int(z_dim), tuple(x_shape), int(num_classes)
        self.prior = prior if prior is not None else StandardNormal(self.z_dim)
        if hasattr(self.prior, "attach"):
            raise ValueError(f"the prior {type(self.prior).__name__} is built from the encoder of an "
                             "unconditional VAE (q(z|u) at pseudo-inputs u), but a CVAE's encoder needs a label; "
                             "use a prior that stands alone (standard_normal, learned_normal, mixture, flow)")
        self.likelihood = likelihood if likelihood is not None else Bernoulli(self.x_shape)
        self.guide_family = guide_family if guide_family is not None else DiagonalNormal(self.z_dim)
        check_prior(self.prior, self.z_dim)
        if encoder is None or decoder is None:
            built = build_conditional_networks(network, self.x_shape, self.num_classes, self.z_dim,
                                               self.guide_family.num_features(self.z_dim),
                                               self.likelihood.num_params, hidden)
            encoder = encoder if encoder is not None else built[0]
            decoder = decoder if decoder is not None else built[1]
        self.encoder, self.decoder = encoder, decoder

    # --- the Pyro program -------------------------------------------------------------------------

    def one_hot(self, y: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Labels ``y (*batch,)`` (integers, trusted) -> ``(*batch, num_classes)`` one-hot of ``dtype``."""
        return F.one_hot(y.long(), self.num_classes).to(dtype)

    def model(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None,
              beta: float = 1.0) -> torch.Tensor:
        """p(z) p(x|z, y) for a batch ``x (batch, *x_shape)`` with labels ``y (batch,)`` (integers). As
        :meth:`pyrovae.VAE.model`: ``num_data`` scales a mini-batch to the data set, ``beta`` weighs the
        latent site (``poutine.scale``), hence the KL term of an ELBO. The labels are checked (see
        :meth:`check_labels`) while Pyro's validation is enabled; training turns it off.
        Returns z ``(batch, z_dim)``."""
        if is_validation_enabled():
            self.check_labels(y, x)
        with data_plate(x, num_data):
            with _scaled(beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z, self.one_hot(y, z.dtype))), obs=x)
        return z

    def guide(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None,
              beta: float = 1.0) -> torch.Tensor:
        """q(z|x, y) for a batch ``x (batch, *x_shape)`` with labels ``y (batch,)``, with the latent site
        weighed by ``beta`` as in :meth:`model`. Returns z ``(batch, z_dim)``."""
        if is_validation_enabled():
            self.check_labels(y, x)
        with data_plate(x, num_data):
            with _scaled(beta):
                return pyro.sample("z", self.guide_family(self.encoder(x, self.one_hot(y, x.dtype))))

    # --- checks at the public boundary ------------------------------------------------------------

    def check_data(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(batch, *x_shape)``, floating point, finite and in the
        likelihood's support (as :meth:`pyrovae.VAE.check_data`)."""
        shape = ", ".join(map(str, self.x_shape))
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor of shape (batch, {shape}), got {type(x).__name__}")
        if x.dim() != 1 + len(self.x_shape) or tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; this model takes (batch, {shape}): reshape it, "
                             f"e.g. x.view(-1, {shape})")
        self.likelihood.check_support(x)

    def check_labels(self, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        """Raise one ``ValueError`` unless ``y`` is a ``(batch,)`` integer tensor with values in
        ``0 .. num_classes - 1`` and, when ``x`` is given, ``batch == x.shape[0]``."""
        accepted = f"a (batch,) integer tensor of labels in 0..{self.num_classes - 1}"
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"y must be {accepted}, got {type(y).__name__}; convert it with "
                             "torch.as_tensor(y, dtype=torch.long)")
        if y.dtype not in _INTEGER_DTYPES:
            raise ValueError(f"y has dtype {y.dtype}; labels must be {accepted}: convert whole-number labels "
                             "with y.long()")
        if y.dim() != 1 or (x is not None and y.shape[0] != x.shape[0]):
            wanted = f"({x.shape[0]},), one label per image of x" if x is not None else "(batch,)"
            raise ValueError(f"y has shape {tuple(y.shape)}; labels must have shape {wanted}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            bad = y[(y < 0) | (y >= self.num_classes)].unique()[:5].tolist()
            raise ValueError(f"y holds labels {bad} outside 0..{self.num_classes - 1}; this model was built "
                             f"with num_classes={self.num_classes}")

    def _labels(self, y: int | torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``y`` as a checked ``(batch,)`` label tensor on the model's device; one int (or 0-d integer
        tensor) is repeated for every image of ``x`` (once when ``x`` is None)."""
        device = next(self.parameters()).device
        if isinstance(y, torch.Tensor) and y.dim() == 0 and y.dtype in _INTEGER_DTYPES:
            y = int(y)
        if isinstance(y, numbers.Integral) and not isinstance(y, bool):
            if not 0 <= int(y) < self.num_classes:
                raise ValueError(f"digit {y} is outside 0..{self.num_classes - 1}; this model was built with "
                                 f"num_classes={self.num_classes}")
            return torch.full((1 if x is None else x.shape[0],), int(y), dtype=torch.long, device=device)
        self.check_labels(y, x)
        return y.to(device)

    # --- what users call ----------------------------------------------------------------------------

    def with_labels(self, y: int | torch.Tensor) -> "LabeledView":
        """This model with its labels bound: a :class:`LabeledView` with the interface of an
        unconditional :class:`pyrovae.VAE` (``model(x)``, ``guide(x)``, ``encoder(x)``, ...). ``y`` is
        ``(batch,)`` labels (trusted, not checked) or one label (int or 0-d tensor) for every image."""
        return LabeledView(self, y)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: int | torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters of q(z|x, y) for ``x (batch, *x_shape)`` and labels ``y (batch,)`` (or one int
        for all): for the default guide ``{"loc", "scale"}``, each ``(batch, z_dim)``.

        Raises:
            ValueError: bad ``x`` (see :meth:`check_data`) or ``y`` (see :meth:`check_labels`).
        """
        self.check_data(x)
        y = self._labels(y, x)
        return self.guide_family.params(self.encoder(x, self.one_hot(y, x.dtype)))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: int | torch.Tensor) -> torch.distributions.Distribution:
        """p(x|z, y) for ``z (*batch, z_dim)`` and labels ``y (batch,)`` or one int: a distribution with
        event shape ``x_shape`` and batch shape ``*batch``.

        Raises:
            ValueError: bad labels (see :meth:`check_labels`).
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
            ValueError: ``n < 1``; a label outside ``0 .. num_classes - 1``, non-integer or not 1-d.
        """
        if not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n={n!r} must be a positive integer (draws per label)")
        y = self._labels(y).repeat_interleave(int(n))
        z = self.prior().sample((y.shape[0],))
        return self.decode(z, y).mean


class LabeledView:
    """A :class:`CVAE` with labels bound: the interface of an unconditional :class:`pyrovae.VAE`, for
    code written for it (:func:`pyrovae.evaluate.log_importance_weights`, :func:`pyrovae.priors.kl_mode`,
    :func:`pyrovae.train.train_step`). ``model(x, num_data, beta)`` is ``cvae.model(x, y, num_data,
    beta)``, likewise ``guide``; ``encoder(x)`` and ``decoder(z)`` see the one-hot labels; every other
    attribute (``parameters``, ``prior``, ``likelihood``, ``guide_family``, ``z_dim``, ``train()``, ...)
    is the CVAE's own. Nothing is copied: training through the view trains the CVAE.

    Args:
        cvae: the model.
        y: ``(batch,)`` integer labels, or one label (int or 0-d tensor) repeated for any batch. Not
            checked here; :meth:`CVAE.check_labels` them first.
    """

    def __init__(self, cvae: CVAE, y: int | torch.Tensor):
        self.cvae = cvae
        self.y = torch.as_tensor(y, dtype=torch.long, device=next(cvae.parameters()).device) \
            if not isinstance(y, torch.Tensor) else y

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("cvae", "y"):
            raise AttributeError(name)
        return getattr(self.cvae, name)

    def labels(self, batch: int) -> torch.Tensor:
        """The bound labels for a batch of ``batch`` images: ``(batch,)``."""
        return self.y.expand(batch) if self.y.dim() == 0 else self.y

    def model(self, x: torch.Tensor, num_data: int | None = None, beta: float = 1.0) -> torch.Tensor:
        return self.cvae.model(x, self.labels(x.shape[0]), num_data, beta)

    def guide(self, x: torch.Tensor, num_data: int | None = None, beta: float = 1.0) -> torch.Tensor:
        return self.cvae.guide(x, self.labels(x.shape[0]), num_data, beta)

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        return self.cvae.encoder(x, self.cvae.one_hot(self.y, x.dtype))

    def decoder(self, z: torch.Tensor) -> torch.Tensor:
        return self.cvae.decoder(z, self.cvae.one_hot(self.y, z.dtype))


# --- log p(x | y) by importance sampling -------------------------------------------------------------


@torch.no_grad()
def log_likelihood_given_labels(cvae: CVAE, x: torch.Tensor, y: torch.Tensor, num_samples: int = 5000,
                                max_chunk: int | None = None, device: torch.device | str | None = None,
                                progress: bool | None = None, max_memory_gb: float = 4.0) -> dict:
    """Importance-sampled log p(x | y) and the ELBO for every image of ``x`` with its label, in nats.

    L_K(x, y) = log (1/K) sum_k p(x, z_k | y) / q(z_k | x, y),  z_k ~ q(z | x, y)  (Burda, Grosse &
    Salakhutdinov 2016), a stochastic lower bound on log p(x | y) that does not decrease in expectation
    with K; the ELBO is the mean log weight of the same draws. The weights come from Pyro traces of
    ``cvae.guide`` and ``cvae.model`` (:func:`pyrovae.evaluate.log_importance_weights` on
    :meth:`CVAE.with_labels`), in the chunks of :func:`pyrovae.evaluate.importance_sampled`, sized by
    the same measured memory model as :func:`pyrovae.evaluate.log_likelihood`: under ``max_memory_gb``
    per pass, or at most ``max_chunk`` (sample, image) pairs when that is given.

    Args:
        cvae: the model (its parameters are not changed).
        x: ``(num_images, *x_shape)`` data in the likelihood's support.
        y: ``(num_images,)`` integer labels.
        num_samples: K, importance samples per image.
        max_chunk: the largest number of (sample, image) pairs per pass; overrides ``max_memory_gb``.
        device: where to compute (default: where the model is).
        progress: show a progress bar (default: when stderr is a terminal).
        max_memory_gb: memory cap for one pass, in GB (10^9 bytes; default 4).

    Returns:
        dict with ``log_likelihood`` and ``elbo``: ``(num_images,)`` tensors in nats per image, on the CPU;
        ``plan``, the chunking (:meth:`pyrovae.evaluate.ChunkPlan.as_dict`).

    Raises:
        ValueError: bad ``x`` (shape, dtype, NaN, support) or ``y`` (see :meth:`CVAE.check_labels`);
            ``num_samples``, ``max_chunk`` or ``max_memory_gb`` not positive.
    """
    cvae.check_data(x)
    cvae.check_labels(y, x)
    device = torch.device(device) if device is not None else next(cvae.parameters()).device

    def log_weight_pass(chunk, s):
        xb, yb = chunk
        return (log_importance_weights(cvae.with_labels(yb), xb, s),)

    with eval_mode(cvae):
        out = importance_sampled(log_weight_pass, (x, y), num_samples, device, max_memory_gb, max_chunk,
                                 "log p(x|y)", progress)
    return {"log_likelihood": out["log_likelihood"], "elbo": out["means"][0], "plan": out["plan"].as_dict()}


def evaluate_given_labels(cvae: CVAE, x: torch.Tensor, y: torch.Tensor, num_samples: int = 5000,
                          max_chunk: int | None = None, device: torch.device | str | None = None,
                          progress: bool | None = None, max_memory_gb: float = 4.0) -> dict:
    """Test metrics of ``cvae`` on images ``x`` with their labels ``y``: what ``pyrovae train
    --conditional`` and ``pyrovae evaluate`` write to ``metrics.json`` for a conditional run.

    Returns:
        dict with ``log_likelihood_given_label_nats`` and ``elbo_given_label_nats`` (means over images
        of log p(x | y) and of its ELBO, nats per image), their ``*_stderr`` over images,
        ``log_likelihood_given_label_bits_per_dim``, ``num_samples``, ``num_images`` and ``seconds``.
        Do not rank these against an unconditional log p(x): for one joint distribution,
        log p(x | y) = log p(x) + log p(y | x) - log p(y), up to log 10 = 2.30 nats more with 10
        equally likely labels.

    Args: as :func:`log_likelihood_given_labels`.

    Raises:
        ValueError: see :func:`log_likelihood_given_labels`.
    """
    t0 = time.perf_counter()
    out = log_likelihood_given_labels(cvae, x, y, num_samples, max_chunk, device, progress, max_memory_gb)
    ll, elbo = summarize(out["log_likelihood"]), summarize(out["elbo"])
    dims = math.prod(x.shape[1:])
    return {
        "log_likelihood_given_label_nats": ll["mean"], "log_likelihood_given_label_stderr": ll["stderr"],
        "elbo_given_label_nats": elbo["mean"], "elbo_given_label_stderr": elbo["stderr"],
        "log_likelihood_given_label_bits_per_dim": -ll["mean"] / (dims * math.log(2)),
        "num_samples": num_samples, "num_images": int(x.shape[0]), "seconds": time.perf_counter() - t0,
    }
