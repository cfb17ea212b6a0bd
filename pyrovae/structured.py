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

Evaluation (:func:`evaluate_structured`) reports the negative conditional log-likelihood
-log p(y | x) in nats per image over the hidden pixels: exact for the baseline, and for the CVAE the
importance-sampled estimate with which Sohn et al. (2015) report their CLL::

    log p(y | x) ~= log (1/K) sum_k p(y | x, z_k) p(z_k | x) / q(z_k | x, y),   z_k ~ q(z | x, y),

a stochastic lower bound that does not decrease in expectation with K (Burda et al. 2016). The
tutorial's table reports a 10-sample ELBO instead, and on grey-valued (not binarized) pixels; see
``benchmarks/structured_output.py``.

References:
    Sohn, Lee & Yan (2015), Learning structured output representation using deep conditional
    generative models, NeurIPS. Pyro CVAE tutorial, https://pyro.ai/examples/cvae.html.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import pydantic
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import (CHECKPOINT, CONFIG, CheckpointError, load_checkpoint, restore_rng_state, rng_state,
                         save_checkpoint)
from .config import Device, SavedConfig
from .data import ImageDataset, load_mnist
from .evaluate import eval_mode, importance_sampled
from .models import data_plate
from .nets import _mlp
from .objectives import make_elbo
from .train import flush_denormals, make_optimizer, read_run_dir, resolve_device, write_metrics

log = logging.getLogger(__name__)

#: The value of hidden pixels in x and of visible pixels in y (the tutorial's convention).
MASK_VALUE = -1.0
VISIBLE_CHOICES = (1, 2, 3)
#: What a structured run folder's checkpoint says it holds (pyrovae.checkpoint.load_run reads VAEs only).
RUN_KIND = "structured-cvae"
FIGURE = "completions.png"


# --- the task: which pixels are seen -------------------------------------------------------------


def _check_visible(visible) -> int:
    if isinstance(visible, bool) or not isinstance(visible, int) or visible not in VISIBLE_CHOICES:
        raise ValueError(f"visible={visible!r} is not a number of visible quadrants; choose 1, 2 or 3")
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
        ValueError: ``visible`` is not 1, 2 or 3.
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
    """Raise ``ValueError`` unless ``images`` is a float ``(batch, C, H, W)`` tensor of 0s and 1s."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (batch, 1, 28, 28), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images have shape {tuple(images.shape)}; expected (batch, 1, 28, 28): reshape "
                         "them, e.g. images.view(-1, 1, 28, 28)")
    if not images.is_floating_point():
        raise ValueError(f"images have dtype {images.dtype}; expected float 0s and 1s (binarize grey values "
                         "with pyrovae.data.binarize or load_mnist(binarization='static'))")
    if not ((images == 0) | (images == 1)).all():
        raise ValueError("images must be binarized (values in {0, 1}, no NaN); the Bernoulli likelihood of "
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
        ValueError: bad ``visible`` or bad ``images`` (see :func:`check_images`).
    """
    _check_visible(visible)
    check_images(images)
    _, hidden = quadrant_masks(visible, images.shape[1:])
    hidden = hidden.to(images.device)
    masked = torch.full_like(images, MASK_VALUE)
    return torch.where(hidden, masked, images), torch.where(hidden, images, masked)


def check_pair(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` (and ``y``) are what :func:`split_quadrants` returns: float
    ``(batch, C, H, W)`` tensors with values in {-1, 0, 1}, some pixels hidden (-1 in x), and y equal to
    -1 exactly where x is not."""
    for name, t in (("x", x), ("y", y)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a float tensor (batch, 1, 28, 28), got {got}; make x and y "
                             "with pyrovae.structured.split_quadrants")
        if not ((t == 0) | (t == 1) | (t == MASK_VALUE)).all():
            raise ValueError(f"{name} holds values other than 0, 1 and -1 (the mask value) or NaN; make x "
                             "and y from binarized images with pyrovae.structured.split_quadrants")
    if not (x == MASK_VALUE).any(dim=(1, 2, 3)).all():
        raise ValueError("some images of x have no hidden pixel (no -1): there is nothing to predict")
    if y is not None:
        if y.shape != x.shape:
            raise ValueError(f"x has shape {tuple(x.shape)} but y has {tuple(y.shape)}; they must match")
        if not torch.equal(x == MASK_VALUE, y != MASK_VALUE):
            raise ValueError("y must hold a pixel value exactly where x holds -1 (and -1 elsewhere); make x "
                             "and y with pyrovae.structured.split_quadrants")


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
        self.net = _mlp([d, *hidden, d])

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
            ValueError: ``x``/``y`` are not a pair from :func:`split_quadrants`.
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
        self.net = _mlp([math.prod(image_shape), *hidden, 2 * z_dim])

    def forward(self, x: torch.Tensor, fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, fill (batch, C, H, W)`` -> ``(loc, scale)``, each ``(batch, z_dim)``; the pixels where x
        is -1 are read from ``fill``."""
        full = torch.where(x == MASK_VALUE, fill, x)
        loc, raw = self.net(full.flatten(1)).chunk(2, dim=-1)
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
            raise ValueError("GenerationNet needs at least one hidden layer; got hidden=()")
        self.image_shape = tuple(image_shape)
        self.from_x = nn.Linear(math.prod(self.image_shape), hidden[0])
        self.from_z = nn.Linear(z_dim, hidden[0], bias=False)
        self.rest = _mlp([*hidden, math.prod(self.image_shape)])

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x (batch, C, H, W)``, ``z (*sample, batch, z_dim)`` -> logits ``(*sample, batch, C, H, W)``."""
        h = torch.relu(self.from_x(x.flatten(1)) + self.from_z(z))
        return self.rest(h).unflatten(-1, self.image_shape)


# --- the CVAE -------------------------------------------------------------------------------------


class StructuredCVAE(nn.Module):
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
            one when None (train it before the CVAE, as :func:`fit_structured` does).
        image_shape: ``(C, H, W)`` (default ``(1, 28, 28)``).
        prior_net, recognition_net, generation_net: networks of your own with the call signatures of
            :class:`ConditionalGaussianNet` and :class:`GenerationNet`.

    Example::

        x, y = split_quadrants(images, visible=2)
        loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(cvae.model, cvae.guide, x, y)
    """

    def __init__(self, z_dim: int = 200, hidden: Sequence[int] = (500, 500), baseline: BaselineNet | None = None,
                 image_shape: Sequence[int] = (1, 28, 28), prior_net: nn.Module | None = None,
                 recognition_net: nn.Module | None = None, generation_net: nn.Module | None = None):
        super().__init__()
        self.z_dim, self.image_shape = int(z_dim), tuple(image_shape)
        self.baseline = baseline if baseline is not None else BaselineNet(hidden, image_shape)
        self.prior_net = prior_net if prior_net is not None else ConditionalGaussianNet(z_dim, hidden, image_shape)
        self.recognition_net = (recognition_net if recognition_net is not None
                                else ConditionalGaussianNet(z_dim, hidden, image_shape))
        self.generation_net = (generation_net if generation_net is not None
                               else GenerationNet(z_dim, hidden, image_shape))

    def cvae_parameters(self):
        """The parameters the CVAE's ELBO trains: all but the frozen baseline's."""
        skip = {id(p) for p in self.baseline.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def prior(self, x: torch.Tensor) -> dist.Distribution:
        """p(z | x): a Normal with batch shape ``(batch,)`` and event shape ``(z_dim,)``."""
        with torch.no_grad():
            y_hat = torch.sigmoid(self.baseline(x))
        return dist.Normal(*self.prior_net(x, y_hat)).to_event(1)

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
            raise ValueError("the guide q(z | x, y) needs the output y; to predict y from x alone run the "
                             "model, which draws z from the prior network p(z | x)")
        with data_plate(x, num_data):
            return pyro.sample("z", dist.Normal(*self.recognition_net(x, y)).to_event(1))

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
            ValueError: bad ``x`` or ``num_samples < 1``.
        """
        check_pair(x)
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be at least 1")
        z = self.prior(x).sample((num_samples,))
        probs = torch.sigmoid(self.generation_net(x, z))
        return torch.where(x == MASK_VALUE, probs, x)


# --- evaluation -----------------------------------------------------------------------------------

PROPOSALS = ("recognition", "prior")


@torch.no_grad()
def log_importance_weights(cvae: StructuredCVAE, x: torch.Tensor, y: torch.Tensor, num_samples: int,
                           proposal: str = "recognition") -> torch.Tensor:
    """log p(y, z_k | x) - log r(z_k) for ``num_samples`` draws z_k ~ r per image.

    With ``proposal="recognition"``, r = q(z | x, y) (the guide); with ``"prior"``, r = p(z | x) and the
    weight is p(y | x, z_k) (the prior-sampling estimate). Computed from Pyro traces of the guide and of
    the model replayed on the guide's z, vectorized over a ``particles`` plate.

    Args:
        x, y: ``(batch, C, H, W)``, already checked (see :func:`check_pair`).
        num_samples: K.
        proposal: ``"recognition"`` or ``"prior"``.

    Returns:
        ``(num_samples, batch)`` log weights in nats.
    """
    with pyro.plate("particles", num_samples, dim=-2), pyro.validation_enabled(False):
        if proposal == "recognition":
            guide_trace = poutine.trace(cvae.guide).get_trace(x, y)
            model_trace = poutine.trace(poutine.replay(cvae.model, trace=guide_trace)).get_trace(x, y)
        else:
            model_trace = poutine.trace(cvae.model).get_trace(x, y)
    model_trace.compute_log_prob()
    log_w = model_trace.nodes["y"]["log_prob"]
    if proposal == "recognition":
        guide_trace.compute_log_prob()
        log_w = log_w + model_trace.nodes["z"]["log_prob"] - guide_trace.nodes["z"]["log_prob"]
    return log_w.expand(num_samples, x.shape[0])


@torch.no_grad()
def conditional_log_likelihood(cvae: StructuredCVAE, x: torch.Tensor, y: torch.Tensor, num_samples: int = 1000,
                               proposal: str = "recognition", max_chunk: int | None = None,
                               progress: bool | None = None, max_memory_gb: float = 4.0) -> dict:
    """Importance-sampled log p(y | x) and the ELBO for every image, in nats over the hidden pixels.

    log p(y | x) ~= log (1/K) sum_k w_k with w_k = p(y | x, z_k) p(z_k | x) / q(z_k | x, y),
    z_k ~ q(z | x, y) (Sohn et al. 2015); the ELBO is the mean of log w_k over the same draws,
    so the estimate is never below it. The draws run in the chunks of
    :func:`pyrovae.evaluate.importance_sampled`, sized by the measured memory model of
    :func:`pyrovae.evaluate.plan_chunks`: under ``max_memory_gb`` per pass, or at most ``max_chunk``
    (sample, image) pairs when that is given.

    Args:
        cvae: the model (left unchanged).
        x, y: ``(num_images, C, H, W)``, as :func:`split_quadrants` makes them.
        num_samples: K.
        proposal: ``"recognition"`` (the estimate above) or ``"prior"`` (z_k ~ p(z | x), w_k =
            p(y | x, z_k): the naive Monte Carlo estimate, much noisier for the same K).
        max_chunk: the largest number of (sample, image) pairs per pass; overrides ``max_memory_gb``.
        progress: show a progress bar (default: when stderr is a terminal).
        max_memory_gb: memory cap for one pass, in GB (10^9 bytes; default 4).

    Returns:
        dict with ``log_likelihood`` and ``elbo``, ``(num_images,)`` tensors in nats per image, on the CPU;
        ``plan``, the chunking (:meth:`pyrovae.evaluate.ChunkPlan.as_dict`).

    Raises:
        ValueError: bad ``x``/``y``, an unknown ``proposal``; ``num_samples``, ``max_chunk`` or
            ``max_memory_gb`` not positive.
    """
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal={proposal!r} is unknown; choose one of {', '.join(PROPOSALS)}")
    check_pair(x, y)
    device = next(cvae.parameters()).device

    def log_weight_pass(chunk, s):
        return (log_importance_weights(cvae, *chunk, s, proposal),)

    with eval_mode(cvae):
        out = importance_sampled(log_weight_pass, (x, y), num_samples, device, max_memory_gb, max_chunk,
                                 "log p(y|x)", progress)
    return {"log_likelihood": out["log_likelihood"], "elbo": out["means"][0], "plan": out["plan"].as_dict()}


def _mean_stderr(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    return values.mean().item(), (values.std().item() / math.sqrt(n) if n > 1 else float("nan"))


@torch.no_grad()
def evaluate_structured(baseline: BaselineNet, cvae: StructuredCVAE, images: torch.Tensor, visible: int,
                        num_samples: int = 1000, max_chunk: int | None = None, progress: bool | None = None,
                        max_memory_gb: float = 4.0) -> dict:
    """Test metrics of the quadrant-completion task: negative conditional log-likelihoods in nats per
    image, counted over the hidden pixels only.

    Args:
        baseline: the trained baseline (its NLL is exact).
        cvae: the trained CVAE (its NLL is importance-sampled with ``num_samples`` draws from q(z|x,y)).
        images: ``(n, 1, 28, 28)`` binarized test images.
        visible: 1, 2 or 3 visible quadrants.
        num_samples: K.
        max_chunk, progress, max_memory_gb: see :func:`conditional_log_likelihood`.

    Returns:
        dict with ``baseline_neg_cll_nats``, ``cvae_neg_cll_nats`` (-log p(y|x), importance-sampled),
        ``cvae_neg_elbo_nats`` (from the same draws), each with a ``*_stderr`` over images;
        ``gap_nats`` (baseline minus CVAE, per image) with its paired ``gap_stderr``; ``visible``,
        ``hidden_pixels`` (per image), ``num_samples``, ``num_images`` and ``seconds``.

    Raises:
        ValueError: bad ``visible``, ``images`` or ``num_samples``.
    """
    t0 = time.perf_counter()
    x, y = split_quadrants(images, visible)
    device = next(baseline.parameters()).device
    baseline_nll = torch.cat([_baseline_nll(baseline, x[i:i + 1000].to(device), y[i:i + 1000].to(device)).cpu()
                              for i in range(0, x.shape[0], 1000)])
    cvae_out = conditional_log_likelihood(cvae, x, y, num_samples, max_chunk=max_chunk, progress=progress,
                                          max_memory_gb=max_memory_gb)
    cvae_nll, cvae_neg_elbo = -cvae_out["log_likelihood"], -cvae_out["elbo"]
    metrics = {"visible": visible, "hidden_pixels": int((x[0] == MASK_VALUE).sum())}
    for name, values in (("baseline_neg_cll", baseline_nll), ("cvae_neg_cll", cvae_nll),
                         ("cvae_neg_elbo", cvae_neg_elbo), ("gap", baseline_nll - cvae_nll)):
        mean, stderr = _mean_stderr(values)
        metrics[f"{name}_nats"] = mean
        metrics[f"{name}_stderr"] = stderr
    metrics.update(num_samples=num_samples, num_images=int(x.shape[0]), seconds=time.perf_counter() - t0)
    return metrics


# --- configuration, training and run folders ------------------------------------------------------


class StructuredConfig(SavedConfig):
    """Every setting of a quadrant-completion run; saved as ``config.json`` and in the checkpoint, so a
    run folder alone rebuilds its networks (:func:`load_structured_run`).

    The baseline trains first for ``baseline_epochs`` epochs (default: ``epochs``) on the Bernoulli NLL
    of the hidden pixels, then is frozen while the CVAE trains for ``epochs`` epochs on the ELBO
    (``elbo``, ``num_particles``). Both use Adam at a constant ``lr`` and mini-batches of
    ``batch_size`` (the tutorial's 1e-3 and 128). Training images are binarized dynamically (a fresh
    Bernoulli draw at every pass) or statically; the test set is binarized once with seed 0 (see
    :func:`pyrovae.data.load_mnist`). ``test_size`` keeps the first N test images for evaluation.
    """

    visible: Literal[1, 2, 3]
    z_dim: PositiveInt = 200
    hidden: tuple[PositiveInt, ...] = (500, 500)
    epochs: PositiveInt = 50
    baseline_epochs: Optional[PositiveInt] = None
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    elbo: Literal["TraceMeanField_ELBO", "Trace_ELBO"] = "TraceMeanField_ELBO"
    num_particles: PositiveInt = 1
    binarization: Literal["dynamic", "static"] = "dynamic"
    train_size: Optional[PositiveInt] = None
    test_size: Optional[PositiveInt] = None
    eval_num_samples: PositiveInt = 1000
    seed: int = 0
    device: Device = "cpu"
    data_dir: Optional[str] = None

    @pydantic.field_validator("hidden")
    @classmethod
    def _hidden(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("needs at least one hidden layer, e.g. (500, 500)")
        return v


def build_structured(config: StructuredConfig) -> StructuredCVAE:
    """The untrained :class:`StructuredCVAE` (with its baseline) that ``config`` describes."""
    return StructuredCVAE(config.z_dim, config.hidden)


def load_structured_data(config: StructuredConfig) -> tuple[ImageDataset, None, ImageDataset]:
    """``(train, None, test)``: MNIST as :func:`pyrovae.data.load_mnist` gives it, the test set cut to
    ``config.test_size`` images."""
    train, _, test = load_mnist(config.data_dir, config.binarization, 0, seed=config.seed,
                                train_size=config.train_size)
    if config.test_size is not None:
        test = ImageDataset(test.images[:config.test_size], test.labels[:config.test_size], test.binarization)
    return train, None, test


@flush_denormals()
def fit_structured(config: StructuredConfig, run_dir: str | os.PathLike, resume: bool = False,
                   data: tuple[ImageDataset, object, ImageDataset] | None = None, progress: bool | None = None,
                   on_epoch_end: Callable[[str, int, Path], None] | None = None) -> tuple[StructuredCVAE, list[dict]]:
    """Train (or resume) the baseline, then the CVAE, of the run in ``run_dir``.

    Writes ``config.json`` at the start and, after every epoch of either stage, ``checkpoint.pt`` (the
    networks, the optimizer, the stage, RNG states, config and history) and ``metrics.json``, each
    atomically (:mod:`pyrovae.checkpoint`). Resuming restores every RNG state, so a resumed run goes on
    as if it had not stopped.

    Args:
        config: the run's settings. On ``resume`` the checkpoint's config is used, except ``epochs``
            (so the CVAE stage can be extended) and ``device``.
        run_dir: the run folder (created if missing).
        resume: continue from ``run_dir/checkpoint.pt``.
        data: ``(train, ignored, test)`` datasets; loaded from ``config.data_dir`` when None.
        progress: show progress bars (default: when stderr is a terminal).
        on_epoch_end: called as ``on_epoch_end(stage, epoch, checkpoint_path)`` after each checkpoint.

    Returns:
        the trained :class:`StructuredCVAE` (its ``baseline`` attribute is the trained baseline) in eval
        mode, and the history: dicts with ``stage`` (``"baseline"`` or ``"cvae"``), ``epoch``,
        ``train_neg_cll`` (baseline) or ``train_elbo`` (CVAE), in nats per image over hidden pixels,
        and ``seconds``.

    Raises:
        RunDirError: ``run_dir`` holds a checkpoint and ``resume`` is False, or ``resume`` is True and
            it holds none.
        CheckpointError: the checkpoint is unreadable or not a structured run's.
        ValueError: non-binary training images; unavailable device.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    state = read_run_dir(run_dir, resume, load=_load_structured_checkpoint)
    if state is not None:
        saved = StructuredConfig.from_dict(state["config"])
        config = saved.model_copy(update={"epochs": config.epochs, "device": config.device})
    if config.baseline_epochs is None:
        config = config.model_copy(update={"baseline_epochs": config.epochs})
    device = resolve_device(config.device)
    run_dir.mkdir(parents=True, exist_ok=True)

    pyro.set_rng_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train = (data if data is not None else load_structured_data(config))[0]
    if train.binarization != "dynamic":
        check_images(train.images)
    _, hidden = quadrant_masks(config.visible, train.x_shape)
    hidden = hidden.to(device)

    cvae = build_structured(config).to(device)
    history: list[dict] = []
    stage, done = "baseline", 0
    if state is not None:
        cvae.load_state_dict(state["model"])
        history, stage, done = list(state["history"]), state["stage"], int(state["epoch"])
        restore_rng_state(state["rng"], generator, device)
    config.save(run_dir / CONFIG)

    n = len(train)
    steps = -(-n // config.batch_size)
    elbo = make_elbo(config.elbo, config.num_particles)
    disable = None if progress is None else not progress
    for stage_name, epochs in (("baseline", config.baseline_epochs), ("cvae", config.epochs)):
        if stage_name == "baseline" and stage == "cvae":
            continue
        start = done if stage_name == stage else 0
        if start >= epochs:
            continue
        params = cvae.baseline.parameters() if stage_name == "baseline" else cvae.cvae_parameters()
        optimizer = make_optimizer(params, config.lr)
        if state is not None and stage_name == stage:
            optimizer.load_state_dict(state["optimizer"])
        for epoch in range(start + 1, epochs + 1):
            cvae.train()
            t0 = time.perf_counter()
            total = torch.zeros((), device=device)
            bar = tqdm(train.batches(config.batch_size, generator=generator), total=steps, leave=False,
                       desc=f"{stage_name} epoch {epoch}/{epochs}", disable=disable)
            with pyro.validation_enabled(False):
                for images, _ in bar:
                    images = images.to(device, non_blocking=True)
                    x = torch.where(hidden, torch.full_like(images, MASK_VALUE), images)
                    y = torch.where(hidden, images, torch.full_like(images, MASK_VALUE))
                    if stage_name == "baseline":
                        loss = _baseline_nll(cvae.baseline, x, y).mean()
                    else:
                        loss = elbo.differentiable_loss(cvae.model, cvae.guide, x, y, num_data=n) / n
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach() * images.shape[0]
            key = "train_neg_cll" if stage_name == "baseline" else "train_elbo"
            value = total.item() / n
            row = {"stage": stage_name, "epoch": epoch, key: value if stage_name == "baseline" else -value,
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            log.info("%s epoch %d: %s %.2f nats", stage_name, epoch, key, row[key])
            save_checkpoint(ckpt_path, {
                "kind": RUN_KIND, "config": config.to_dict(), "stage": stage_name, "epoch": epoch,
                "model": cvae.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                "rng": rng_state(generator, device),
            })
            write_metrics(run_dir, {"history": history})
            if on_epoch_end is not None:
                on_epoch_end(stage_name, epoch, ckpt_path)
        stage, done = stage_name, epochs
    return cvae.eval(), history


def _load_structured_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    state = load_checkpoint(path, map_location)
    if state.get("kind") != RUN_KIND:
        raise CheckpointError(f"{path} is not a quadrant-completion run (pyrovae structured); load it with "
                              "pyrovae.checkpoint.load_run")
    return state


def load_structured_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu"
                        ) -> tuple[StructuredCVAE, StructuredConfig, dict]:
    """Rebuild a run's trained CVAE (and its baseline, ``cvae.baseline``) from its checkpoint alone.

    Returns:
        ``(cvae, config, state)``, the CVAE in eval mode on ``device``.

    Raises:
        CheckpointError: missing, unreadable or foreign checkpoint, or weights that do not fit the config.
    """
    path = Path(run_dir) / CHECKPOINT
    state = _load_structured_checkpoint(path, device)
    config = StructuredConfig.from_dict(state["config"])
    cvae = build_structured(config)
    try:
        cvae.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not match the networks its config describes ({e})") from e
    return cvae.to(device).eval(), config, state


__all__ = [
    "MASK_VALUE", "VISIBLE_CHOICES", "quadrant_masks", "split_quadrants", "check_images", "check_pair",
    "hidden_pixel_likelihood", "BaselineNet", "ConditionalGaussianNet", "GenerationNet", "StructuredCVAE",
    "log_importance_weights", "conditional_log_likelihood", "evaluate_structured", "StructuredConfig",
    "build_structured", "load_structured_data", "fit_structured", "load_structured_run",
]
