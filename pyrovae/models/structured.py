r"""Structured-output prediction with a conditional VAE: MNIST quadrant completion.

The task of Sohn, Lee & Yan (2015) and of Pyro's CVAE tutorial: each binarized MNIST digit is cut into
four 14x14 quadrants; 1, 2 or 3 of them are visible (the input x) and the others are hidden (the
output y to predict). Visible quadrants, as in the tutorial::

    visible = 1: bottom-left             hidden: the other three
    visible = 2: left half               hidden: the right half
    visible = 3: all but bottom-right    hidden: bottom-right

Both x and y are full ``(batch, 1, 28, 28)`` images: x holds the visible pixels and :data:`MASK_VALUE`
(-1, the tutorial's convention) at hidden ones; y holds the hidden pixels and -1 at visible ones (see
:func:`split_quadrants`). Only hidden pixels count in every likelihood, loss and metric here.

Two predictors, each a Pyro program:

* :class:`BaselineNet`, a deterministic network f(x) giving the Bernoulli logits of the hidden pixels,
  trained by maximum likelihood (its negative conditional log-likelihood is exact).
* :class:`StructuredCVAE`, the conditional VAE of Sohn et al.::

      z ~ p(z | x) = N(mu(x, y_hat), sigma(x, y_hat)^2)      prior network (learned, not N(0, I))
      y ~ p(y | x, z) = Bernoulli(g(x, z)) on hidden pixels   generation network
      q(z | x, y) = N(mu'(x, y), sigma'(x, y)^2)              recognition network (the guide)

  where y_hat = sigmoid(f(x)) is the frozen baseline's prediction. Feeding it to the prior network is
  what the tutorial does (after the paper's use of a baseline's initial guess): the prior and
  recognition networks both see a full image, x with its hidden pixels filled by y_hat and by y
  respectively. Unlike the tutorial, whose generation network sees z only, ours sees x as well, as
  p(y | x, z) in the paper.

Evaluation reports the negative conditional log-likelihood -log p(y | x) in nats per image over the
hidden pixels: exact for the baseline (:meth:`StructuredCVAE.test_metrics`), and for the CVAE the
importance-sampled estimate with which Sohn et al. (2015) report their CLL (what
:func:`pyrovae.evaluation.log_likelihood` computes on ``(cvae.model, cvae.guide, x, y)``)::

    log p(y | x) ~= log (1/K) sum_k p(y | x, z_k) p(z_k | x) / q(z_k | x, y),   z_k ~ q(z | x, y),

a stochastic lower bound that does not decrease in expectation with K (Burda et al. 2016). The
tutorial's table reports a 10-sample ELBO instead, and on grey-valued (not binarized) pixels; see
``benchmarks/structured_output.py``.

Training is two stages of the one trainer (:meth:`StructuredCVAE.stages`): the baseline on its exact
negative log-likelihood, then, with the baseline frozen, the CVAE on the ELBO.

References:
    Sohn, Lee & Yan (2015), Learning structured output representation using deep conditional
    generative models, NeurIPS. Pyro CVAE tutorial, https://pyro.ai/examples/cvae.html.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pydantic import Field, PositiveInt
from torch import nn
from torch.nn import functional as F

from .. import checks
from ..components.guides import DiagonalNormal
from ..components.nets import mlp
from ..errors import ConfigError, DataError
from ..torchtools import parameter_count
from .base import Family, LossRecord, ModelConfig, Stage, data_plate, register_family
from .vae import check_dtype

#: The value of hidden pixels in x and of visible pixels in y (the tutorial's convention).
MASK_VALUE = -1.0
VISIBLE_CHOICES = (1, 2, 3)


# --- the task: which pixels are seen -------------------------------------------------------------


def _check_visible(visible) -> int:
    if isinstance(visible, bool) or not isinstance(visible, int) or visible not in VISIBLE_CHOICES:
        raise ConfigError(f"visible={visible!r} is not a number of visible quadrants; choose 1, 2 or 3")
    return visible


def quadrant_masks(visible: int, image_shape: Sequence[int] = (1, 28, 28)) -> tuple[torch.Tensor, torch.Tensor]:
    """The visible and hidden pixels when ``visible`` quadrants are seen (the tutorial's layout: 1 =
    bottom-left, 2 = left half, 3 = all but bottom-right).

    Args:
        visible: 1, 2 or 3.
        image_shape: ``(C, H, W)``; quadrants split at ``H // 2`` and ``W // 2``.

    Returns:
        ``(visible_mask, hidden_mask)``: boolean ``image_shape`` tensors that partition the image.

    Raises:
        ConfigError: ``visible`` is not 1, 2 or 3.
    """
    visible = _check_visible(visible)
    _, h, w = image_shape
    top, left = torch.zeros(h, w, dtype=torch.bool), torch.zeros(h, w, dtype=torch.bool)
    top[: h // 2, :] = True
    left[:, : w // 2] = True
    seen = {1: ~top & left, 2: left, 3: top | left}[visible]
    seen = seen.expand(tuple(image_shape)).clone()
    return seen, ~seen


def check_images(images: torch.Tensor) -> None:
    """Raise :class:`~pyrovae.errors.DataError` unless ``images`` is a float ``(batch, C, H, W)`` tensor of 0s
    and 1s."""
    if not isinstance(images, torch.Tensor):
        raise DataError(f"images must be a torch.Tensor (batch, 1, 28, 28), got {type(images).__name__}")
    if images.dim() != 4:
        raise DataError(f"images have shape {tuple(images.shape)}; expected (batch, 1, 28, 28): reshape "
                        "them, e.g. images.view(-1, 1, 28, 28)")
    if not images.is_floating_point():
        raise DataError(f"images have dtype {images.dtype}; expected float 0s and 1s (binarize grey values "
                        "with pyrovae.data.binarize or load_mnist(binarization='static'))")
    if not ((images == 0) | (images == 1)).all():
        raise DataError("images must be binarized (values in {0, 1}, no NaN); the Bernoulli likelihood of "
                        "the hidden pixels is defined on binary pixels only. Use pyrovae.data.binarize or "
                        "load_mnist(binarization='dynamic' or 'static')")


def split_quadrants(images: torch.Tensor, visible: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut binarized images into the input x (visible quadrants) and the output y (hidden ones).

    Args:
        images: ``(batch, 1, H, W)``, values in {0, 1}.
        visible: 1, 2 or 3 visible quadrants (see :func:`quadrant_masks`).

    Returns:
        ``(x, y)``, each ``(batch, 1, H, W)``: x equals ``images`` on visible pixels and
        :data:`MASK_VALUE` (-1) on hidden ones; y the other way round. ``torch.where(x == -1, y, x)``
        gives ``images`` back.

    Raises:
        ConfigError: bad ``visible``. DataError: bad ``images`` (see :func:`check_images`).
    """
    _check_visible(visible)
    check_images(images)
    _, hidden = quadrant_masks(visible, images.shape[1:])
    hidden = hidden.to(images.device)
    masked = torch.full_like(images, MASK_VALUE)
    return torch.where(hidden, masked, images), torch.where(hidden, images, masked)


def check_pair(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Raise :class:`~pyrovae.errors.DataError` unless ``x`` (and ``y``) are what :func:`split_quadrants` returns: float
    ``(batch, C, H, W)`` tensors with values in {-1, 0, 1}, some pixels hidden (-1 in x), and y equal to
    -1 exactly where x is not."""
    for name, t in (("x", x), ("y", y)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise DataError(f"{name} must be a float tensor (batch, 1, 28, 28), got {got}; make x and y "
                            "with pyrovae.models.structured.split_quadrants")
        if not ((t == 0) | (t == 1) | (t == MASK_VALUE)).all():
            raise DataError(f"{name} holds values other than 0, 1 and -1 (the mask value) or NaN; make x "
                            "and y from binarized images with pyrovae.models.structured.split_quadrants")
    if not (x == MASK_VALUE).any(dim=(1, 2, 3)).all():
        raise DataError("some images of x have no hidden pixel (no -1): there is nothing to predict")
    if y is not None:
        if y.shape != x.shape:
            raise DataError(f"x has shape {tuple(x.shape)} but y has {tuple(y.shape)}; they must match")
        if not torch.equal(x == MASK_VALUE, y != MASK_VALUE):
            raise DataError("y must hold a pixel value exactly where x holds -1 (and -1 elsewhere); make x "
                            "and y with pyrovae.models.structured.split_quadrants")


def hidden_pixel_likelihood(logits: torch.Tensor, hidden: torch.Tensor) -> dist.Distribution:
    """Independent Bernoulli pixels masked to the hidden ones: ``log_prob`` sums over hidden pixels only.

    Args:
        logits: ``(*batch, C, H, W)`` Bernoulli logits.
        hidden: ``(batch, C, H, W)`` boolean, broadcastable to ``logits``.

    Returns:
        a distribution with event shape ``(C, H, W)`` whose ``log_prob`` is in nats per image.
    """
    return dist.Bernoulli(logits=logits).mask(hidden).to_event(3)


def _observed(y: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
    # Visible pixels of y are -1, outside the Bernoulli support; they are masked out of the likelihood,
    # so any value in the support stands in for them.
    return None if y is None else torch.where(hidden, y, torch.zeros_like(y))


# --- networks ---------------------------------------------------------------------------------


class BaselineNet(nn.Module):
    r"""The deterministic baseline: an MLP f(x) giving the Bernoulli logits of every pixel, of which the
    hidden ones are the prediction, p(y | x) = prod_{hidden i} Bernoulli(y_i; sigmoid(f(x)_i)).

    As a Pyro program, :meth:`model` has one observed site and no latent variable, so any Pyro ELBO of
    ``(model, guide)`` is exactly log p(y | x).

    Args:
        hidden: hidden-layer sizes (default ``(500, 500)``, the tutorial's).
        image_shape: ``(C, H, W)`` (default ``(1, 28, 28)``).
    """

    def __init__(self, hidden: Sequence[int] = (500, 500), image_shape: Sequence[int] = (1, 28, 28)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        d = math.prod(self.image_shape)
        self.net = mlp([d, *hidden, d])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, C, H, W)`` with -1 at hidden pixels -> logits ``(batch, C, H, W)``."""
        return self.net(x.flatten(1)).view(x.shape)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """p(y | x) for a batch; samples y when ``y`` is None. Returns the completed images
        ``(batch, C, H, W)``: x on visible pixels, y on hidden ones."""
        hidden = x == MASK_VALUE
        with data_plate(x, num_data):
            y = pyro.sample("y", hidden_pixel_likelihood(self(x), hidden), obs=_observed(y, hidden))
        return torch.where(hidden, y, x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None) -> None:
        """No latent variables: the empty guide."""

    def neg_log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-log p(y | x) in nats per image, over the hidden pixels: ``(batch,)``.

        Raises:
            DataError: ``x``/``y`` are not a pair from :func:`split_quadrants`.
        """
        check_pair(x, y)
        return _baseline_nll(self, x, y)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities on hidden pixels, x on visible ones: ``(batch, C, H, W)``."""
        check_pair(x)
        return torch.where(x == MASK_VALUE, torch.sigmoid(self(x)), x)


def _baseline_nll(baseline: BaselineNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    hidden = x == MASK_VALUE
    return -hidden_pixel_likelihood(baseline(x), hidden).log_prob(_observed(y, hidden))


class ConditionalGaussianNet(nn.Module):
    """A diagonal Normal over z from a full image: x with its hidden pixels filled in.

    Serves as the prior network p(z | x) (filled with the baseline's prediction y_hat) and as the
    recognition network q(z | x, y) (filled with y), as in the tutorial.

    Args:
        z_dim: latent dimension.
        hidden: hidden-layer sizes.
        image_shape: ``(C, H, W)``.
    """

    def __init__(self, z_dim: int, hidden: Sequence[int] = (500, 500), image_shape: Sequence[int] = (1, 28, 28)):
        super().__init__()
        self.net = mlp([math.prod(image_shape), *hidden, 2 * z_dim])

    def features(self, x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """``x, fill (batch, C, H, W)`` -> ``(batch, 2 z_dim)``, the loc and raw scale that a
        :class:`~pyrovae.components.guides.DiagonalNormal` reads; the pixels where x is -1 are read from
        ``fill``."""
        return self.net(torch.where(x == MASK_VALUE, fill, x).flatten(1))

    def forward(self, x: torch.Tensor, fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, fill (batch, C, H, W)`` -> ``(loc, scale)``, each ``(batch, z_dim)``, scale = softplus(raw)
        + 1e-4."""
        loc, raw = self.features(x, fill).chunk(2, dim=-1)
        return loc, F.softplus(raw) + 1e-4


class GenerationNet(nn.Module):
    """The generation network of p(y | x, z): ``(x, z) -> `` Bernoulli logits of every pixel.

    The first layer is split into an x part and a z part, so that x is projected once per image and
    broadcast over any number of leading sample dimensions of z (K importance samples cost K small
    products, not K copies of x).

    Args:
        z_dim: latent dimension.
        hidden: hidden-layer sizes (at least one).
        image_shape: ``(C, H, W)``.
    """

    def __init__(self, z_dim: int, hidden: Sequence[int] = (500, 500), image_shape: Sequence[int] = (1, 28, 28)):
        super().__init__()
        if not hidden:
            raise ConfigError("GenerationNet needs at least one hidden layer; got hidden=()")
        self.image_shape = tuple(image_shape)
        self.from_x = nn.Linear(math.prod(self.image_shape), hidden[0])
        self.from_z = nn.Linear(z_dim, hidden[0], bias=False)
        self.rest = mlp([*hidden, math.prod(self.image_shape)])

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x (batch, C, H, W)``, ``z (*sample, batch, z_dim)`` -> logits ``(*sample, batch, C, H, W)``."""
        h = torch.relu(self.from_x(x.flatten(1)) + self.from_z(z))
        return self.rest(h).unflatten(-1, self.image_shape)


# --- the CVAE -------------------------------------------------------------------------------------


class StructuredConfig(ModelConfig):
    """What :meth:`StructuredCVAE.from_config` needs: the task (how many quadrants are visible) and the
    networks. The baseline trains first for ``baseline_epochs`` epochs (None: as many as the CVAE), then
    is frozen while the CVAE trains on the ELBO for the trainer's epochs."""

    kind: Literal["structured-cvae"] = "structured-cvae"
    visible: Literal[1, 2, 3] = Field(2, description="number of visible quadrants (1: bottom-left, 2: left "
                                                     "half, 3: all but bottom-right)")
    z_dim: PositiveInt = Field(200, description="latent dimension")
    hidden: tuple[PositiveInt, ...] = Field((500, 500), min_length=1, description="hidden sizes of every network")
    baseline_epochs: Optional[PositiveInt] = Field(None, description="baseline epochs (None: as many as the "
                                                                     "CVAE's)")
    x_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = Field((1, 28, 28), description="image shape (C, H, W)")


@register_family
class StructuredCVAE(Family):
    r"""The conditional VAE of Sohn, Lee & Yan (2015) for structured output, as a Pyro ``model`` +
    ``guide`` pair.

    Model, for each image n in the data plate, given the input x_n::

        y_hat_n = sigmoid(baseline(x_n))                    (frozen: no gradient reaches it)
        z_n ~ Normal(prior_net(x_n, y_hat_n))               p(z | x), diagonal, learned
        y_n ~ Bernoulli(logits=generation_net(x_n, z_n))    p(y | x, z), hidden pixels only

    Guide: ``z_n ~ Normal(recognition_net(x_n, y_n))``, q(z | x, y).

    Args:
        z_dim: latent dimension (default 200, the tutorial's).
        hidden: hidden-layer sizes of all three networks (default ``(500, 500)``).
        baseline: the trained :class:`BaselineNet` whose prediction feeds the prior network; a fresh
            one when None (train it before the CVAE, as the first of :meth:`stages` does).
        image_shape: ``(C, H, W)`` (default ``(1, 28, 28)``).
        prior_net, recognition_net: networks of your own with :class:`ConditionalGaussianNet`'s
            ``features(x, fill) -> (batch, 2 z_dim)`` (the loc and raw scale of a diagonal Normal);
        generation_net: a network of your own with :class:`GenerationNet`'s call signature.
        visible: the number of visible quadrants of the batches it trains on (see
            :meth:`program_args`); None for a model used on given ``(x, y)`` pairs only.

    Example::

        x, y = split_quadrants(images, visible=2)
        loss = pyrovae.inference.ELBO().differentiable_loss(cvae.model, cvae.guide, x, y)
    """

    kind = "structured-cvae"
    config_class = StructuredConfig
    log_likelihood_of = "log p(y | x)"
    #: The tutorial's: Adam at a constant 1e-3, batches of 128, no KL warm-up, 50 epochs.
    trainer_defaults = {"epochs": 50, "batch_size": 128, "lr": 1e-3, "lr_schedule": "constant",
                        "kl_warmup_epochs": 0.0}

    def __init__(self, z_dim: int = 200, hidden: Sequence[int] = (500, 500), baseline: BaselineNet | None = None,
                 image_shape: Sequence[int] = (1, 28, 28), prior_net: nn.Module | None = None,
                 recognition_net: nn.Module | None = None, generation_net: nn.Module | None = None,
                 visible: int | None = None):
        super().__init__()
        self.config = None
        self.z_dim, self.image_shape = checks.positive_int(z_dim, "z_dim"), checks.sizes(image_shape, "image_shape", 1)
        hidden = checks.sizes(hidden, "hidden", 1, hint="hidden-layer sizes, e.g. (500, 500)")
        self.x_shape = self.image_shape
        self.visible = None if visible is None else _check_visible(visible)
        z_dim, image_shape = self.z_dim, self.image_shape

        def networks():
            return (baseline if baseline is not None else BaselineNet(hidden, image_shape),
                    prior_net if prior_net is not None else ConditionalGaussianNet(z_dim, hidden, image_shape),
                    recognition_net if recognition_net is not None else ConditionalGaussianNet(z_dim, hidden,
                                                                                               image_shape),
                    generation_net if generation_net is not None else GenerationNet(z_dim, hidden, image_shape))

        checks.trainable_in_memory(parameter_count(networks), f"z_dim={z_dim}, hidden={hidden}",
                                   hint="choose smaller hidden sizes or a smaller z_dim")
        self.baseline, self.prior_net, self.recognition_net, self.generation_net = networks()
        self.guide_family = DiagonalNormal(self.z_dim)
        if self.visible is not None:  # not saved: it follows from the config
            self.register_buffer("hidden_mask", quadrant_masks(self.visible, image_shape)[1], persistent=False)

    @classmethod
    def from_config(cls, config: StructuredConfig) -> "StructuredCVAE":
        cvae = cls(config.z_dim, config.hidden, image_shape=config.x_shape, visible=config.visible)
        cvae.config = config
        return cvae

    def cvae_parameters(self):
        """The parameters the CVAE's ELBO trains: all but the frozen baseline's."""
        skip = {id(p) for p in self.baseline.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def prior(self, x: torch.Tensor) -> dist.Distribution:
        """p(z | x): a Normal with batch shape ``(batch,)`` and event shape ``(z_dim,)``."""
        with torch.no_grad():
            y_hat = torch.sigmoid(self.baseline(x))
        return self.guide_family(self.prior_net.features(x, y_hat))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """p(z | x) p(y | x, z) for inputs ``x (batch, C, H, W)`` (-1 at hidden pixels) and, when
        observed, outputs ``y (batch, C, H, W)`` (-1 at visible pixels); ``num_data`` is the data-set
        size when the batch is a mini-batch of it. Returns the completed images ``(batch, C, H, W)``:
        x on visible pixels, y (observed or sampled) on hidden ones."""
        hidden = x == MASK_VALUE
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior(x))
            y = pyro.sample("y", hidden_pixel_likelihood(self.generation_net(x, z), hidden),
                            obs=_observed(y, hidden))
        return torch.where(hidden, y, x)

    def guide(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """q(z | x, y) for a batch; returns z ``(batch, z_dim)``."""
        if y is None:
            raise ConfigError("the guide q(z | x, y) needs the output y; to predict y from x alone run the "
                              "model, which draws z from the prior network p(z | x)")
        with data_plate(x, num_data):
            return pyro.sample("z", self.guide_family(self.guide_features(x, y)))

    def prior_proposal(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """A guide that draws z from the prior network p(z | x): as the proposal of an importance-sampled
        log p(y | x), its weights are p(y | x, z) (the naive Monte Carlo estimate, much noisier than with
        :meth:`guide` for the same number of draws)."""
        with data_plate(x, num_data):
            return pyro.sample("z", self.prior(x))

    def guide_features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The recognition network's output ``(batch, 2 z_dim)`` that the guide's diagonal Normal reads."""
        return self.recognition_net.features(x, y)

    # --- the protocol ------------------------------------------------------------------------------------------

    def program_args(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: the batch's binarized images cut into their visible and hidden quadrants (see
        :func:`split_quadrants`; the number of visible quadrants is the model's ``visible``)."""
        images = batch["x"]
        if self.visible is None:
            raise ConfigError("this StructuredCVAE was built without visible=1|2|3, so it cannot cut images into "
                              "inputs and outputs; build it with visible or from a StructuredConfig")
        masked = torch.full_like(images, MASK_VALUE)
        return torch.where(self.hidden_mask, masked, images), torch.where(self.hidden_mask, images, masked)

    def num_observed_dims(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """The hidden pixels of one image: what p(y | x) is a distribution over."""
        return int((x[0] == MASK_VALUE).sum())

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`~pyrovae.errors.DataError` unless ``x`` holds binarized images (see
        :func:`check_images`) of the model's dtype."""
        check_images(x)
        check_dtype(x, self)

    def init_from_data(self, train) -> None:
        """Nothing: the networks start as PyTorch initializes them (as in the tutorial)."""

    def stages(self, plan, objective, held_out_objective, epochs: int) -> list[Stage]:
        """The baseline for ``baseline_epochs`` (default ``epochs``) on its exact negative log-likelihood,
        then the CVAE (the baseline frozen) for ``epochs`` on ``objective``."""
        baseline_epochs = (self.config.baseline_epochs if self.config is not None else None) or epochs
        return [
            Stage("baseline", baseline_epochs, list(self.baseline.parameters()), loss=self._baseline_record,
                  validate=self._baseline_held_out, monitor="neg_cll", mode="min", weighted_sites=()),
            Stage("cvae", epochs, self.cvae_parameters(),
                  loss=lambda batch: self.objective_record(objective, batch, plan.num_data),
                  validate=lambda data: self.held_out_terms(held_out_objective, data)),
        ]

    def _baseline_record(self, batch: dict) -> LossRecord:
        x, y = self.program_args(batch)
        loss = _baseline_nll(self.baseline, x, y).mean()
        return LossRecord(loss, {"objective": -loss.detach(), "neg_cll": loss.detach()}, int(x.shape[0]))

    @torch.no_grad()
    def _baseline_held_out(self, data) -> dict[str, float]:
        per_image = self.test_metrics(data)["baseline_neg_cll"]
        return {"objective": -per_image.mean().item(), "neg_cll": per_image.mean().item()}

    @torch.no_grad()
    def test_metrics(self, data, batch_size: int = 1000) -> dict[str, torch.Tensor]:
        """``{"baseline_neg_cll": (n,)}``: the baseline's exact -log p(y | x) per image of ``data``, nats
        over the hidden pixels, on the CPU."""
        device = next(self.parameters()).device
        out = []
        for batch in data.batches(batch_size, shuffle=False):
            x, y = self.program_args({"x": batch["x"].to(device)})
            out.append(_baseline_nll(self.baseline, x, y).cpu())
        return {"baseline_neg_cll": torch.cat(out)}

    @torch.no_grad()
    def sample_completions(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Predictions from the model alone: z ~ p(z | x), then the mean of p(y | x, z).

        Args:
            x: ``(batch, C, H, W)`` inputs, -1 at hidden pixels.
            num_samples: draws of z per input.

        Returns:
            ``(num_samples, batch, C, H, W)``: pixel probabilities on hidden pixels, x on visible ones.
            Seed with ``pyro.set_rng_seed`` for reproducible draws.

        Raises:
            DataError: bad ``x``. ConfigError: ``num_samples < 1``.
        """
        check_pair(x)
        if num_samples < 1:
            raise ConfigError(f"num_samples={num_samples} must be at least 1")
        z = self.prior(x).sample((num_samples,))
        probs = torch.sigmoid(self.generation_net(x, z))
        return torch.where(x == MASK_VALUE, probs, x)


