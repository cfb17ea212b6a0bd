r"""Semi-supervised learning with the M2 model (Kingma, Rezende, Mohamed & Welling 2014), as Pyro programs.

Generative model, for each image n (the label y_n is observed when known, a latent variable otherwise)::

    y_n ~ Categorical(1/10, ..., 1/10)      (p(y): uniform over the digits)
    z_n ~ N(0, I)                           (p(z): the "style", the prior plug-in)
    x_n ~ p(x | decoder(y_n, z_n))          (the likelihood plug-in; Bernoulli by default)

Guide::

    y_n ~ q(y | x_n) = Categorical(softmax(classifier(x_n)))    only where y_n is not observed
    z_n ~ q(z | x_n, y_n) = N(mu(x_n, y_n), diag(sigma(x_n, y_n)^2))

Objective (Kingma et al. 2014, eq. 9), maximized; all terms in nats:

    L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)]          <= log p(x, y)
    U(x)    = sum_y q(y|x) [L(x, y) - log q(y|x)]                                  <= log p(x)
    J^alpha = sum_labelled L(x, y) + sum_unlabelled U(x) + alpha * mean_labelled log q(y|x)

``U(x)`` sums the label out exactly: the guide's ``y`` site is marked for parallel enumeration
(:func:`pyro.infer.config_enumerate`) and ``TraceEnum_ELBO(max_plate_nesting=1)`` computes the sum over
the ten labels in one vectorized pass. The classification term (without it q(y|x) learns from the
unlabelled data only) is a Pyro program of its own, :meth:`M2.classification_model`, in which the
labelled y is observed under q(y|x) inside ``poutine.scale``, as in Pyro's SS-VAE tutorial.

The weight alpha: Kingma et al. put alpha = 0.1 N (N the number of training images) on the *mean* of
-log q(y|x) over the labelled images (their eq. 9); per labelled image that is ``0.1 N / N_labelled``
(``beta = alpha * n_tot / n_labeled`` in dpkingma/nips14-ssl), only 50 for 100 labels of 50,000 images.
pyrovae's default puts alpha = 0.1 N on *every* labelled image (``aux_loss_multiplier`` 5000 for 50,000
images), measured better (``benchmarks/RESULTS.md``): at 100 labels (20 epochs, lr 4.2e-4) Kingma et
al.'s weighting left q(y|x) at a test accuracy of 0.63, below the same network trained on the labels
alone (0.77), and 5000 gave 0.79; at 3000 labels 5000 and the Pyro tutorial's 46 did equally (0.938,
50 epochs). ``aux_loss_multiplier=0.1 * N / N_labelled`` gives Kingma et al.'s weighting, 46 the
tutorial's. With the defaults (lr 3e-3, see :class:`M2Config`) and 50 epochs, test accuracy at the
epoch of best validation accuracy is 0.899 / 0.947 / 0.952 / 0.955 at 100 / 600 / 1000 / 3000 labels
(seed 0), against the Pyro tutorial's reported 0.932 / 0.944 / 0.949 / 0.958 and Kingma et al.'s 0.880
/ 0.951 / 0.964 / 0.961. M2 at 100 labels keeps improving long after 50 epochs: 0.910 after 100,
0.926 after 200 and 0.9335 after 300 epochs (seed 0; seed 1: 0.900 / 0.917 after 100 / 200), and at
3000 labels 0.960 after 100, so with enough epochs seed 0 is above the tutorial's table at every label
count (``benchmarks/semisupervised_epochs.py``). The tutorial's own example, re-run with Pyro 1.9
(seed 0, 50 epochs), gives 0.71 / 0.88 / 0.91 / 0.947: its table does not reproduce from its code.

Data: MNIST with dynamic binarization by default (every training image re-binarized at each draw,
the test set binarized once with a fixed seed; see :func:`pyrovae.data.load_mnist`), so the Bernoulli
likelihood is a true likelihood and the ELBO is in nats of binarized MNIST. The Pyro tutorial instead
fits a Bernoulli to grey values, which is not a density. Grey values (``binarization="none"``) work
here with a likelihood for [0, 1] such as ``"continuous_bernoulli"``.

References:
    Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised learning with deep generative models",
    NeurIPS. The Pyro SS-VAE tutorial, https://pyro.ai/examples/ss-vae.html. Obermeyer et al. (2019),
    "Tensor variable elimination for plated factor graphs", ICML (the enumeration in TraceEnum_ELBO).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import pydantic
import pyro
import pyro.distributions as dist
import torch
from pydantic import Field, PositiveFloat, PositiveInt
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO, config_enumerate
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .checkpoint import CHECKPOINT, CONFIG, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .config import Device, SavedConfig
from .data import ImageDataset, load_mnist
from .guides import DiagonalNormal
from .likelihoods import LIKELIHOODS, Bernoulli
from .models import check_data, data_plate
from .priors import StandardNormal, check_prior
from .train import flush_denormals, lr_factor, make_optimizer, read_run_dir, resolve_device, write_metrics

log = logging.getLogger(__name__)

NUM_CLASSES = 10
#: Kingma et al. (2014): alpha = 0.1 N, N the number of training images.
KINGMA_ALPHA_FRACTION = 0.1


# --- labels ------------------------------------------------------------------------------------------


def check_labels(y: Any, batch: int | None = None, num_classes: int = NUM_CLASSES) -> None:
    """Raise one ``ValueError`` unless ``y`` is a ``(batch,)`` integer tensor of classes in
    ``[0, num_classes)``.

    Args:
        y: the labels.
        batch: the number of images they label; checked when given.
        num_classes: the number of classes (10 for MNIST digits).

    Raises:
        ValueError: not a tensor, a floating-point or bool dtype, not one-dimensional, a length other
            than ``batch``, or a value outside ``[0, num_classes)`` (e.g. 10 or -1); the message says which.
    """
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor of int64 classes in [0, {num_classes}), got "
                         f"{type(y).__name__}; convert them with torch.as_tensor(y, dtype=torch.long)")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must have an integer dtype (torch.int64), got {y.dtype}; pass class "
                         f"indices in [0, {num_classes}), not one-hot vectors or probabilities "
                         "(convert with y.long() if they hold whole numbers)")
    expected = f"({batch},)" if batch is not None else "(batch,)"
    if y.dim() != 1:
        raise ValueError(f"labels must have shape {expected}, one class index per image, got shape "
                         f"{tuple(y.shape)}; pass class indices, not one-hot vectors (y.argmax(-1) "
                         "converts them)")
    if batch is not None and y.shape[0] != batch:
        raise ValueError(f"got {y.shape[0]} labels for {batch} images; pass one label per image")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)]
        raise ValueError(f"labels must be in [0, {num_classes}), got {bad.numel()} outside it (e.g. "
                         f"{bad[0].item()}); digit classes are 0, 1, ..., {num_classes - 1}")


def balanced_labelled_subset(labels: torch.Tensor, num_labels: int, seed: int = 0,
                             num_classes: int = NUM_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a training set into a class-balanced labelled subset and the unlabelled rest.

    ``num_labels / num_classes`` images of each class are drawn at random without replacement
    (numpy's ``default_rng(seed)``), the same ones for the same ``labels`` and ``seed``.

    Args:
        labels: ``(n,)`` integer classes of the training images.
        num_labels: the size of the labelled subset; a multiple of ``num_classes`` (100, 600, 1000 and
            3000 in Kingma et al. 2014).
        seed: the seed of the draw.
        num_classes: the number of classes.

    Returns:
        ``(labelled, unlabelled)``: sorted int64 index tensors into ``labels``, disjoint, covering all n.

    Raises:
        ValueError: bad ``labels`` (see :func:`check_labels`), ``num_labels`` not a positive multiple
            of ``num_classes``, or a class with fewer than ``num_labels / num_classes`` images.
    """
    check_labels(labels, num_classes=num_classes)
    if not isinstance(num_labels, (int, np.integer)) or num_labels < 1 or num_labels % num_classes:
        raise ValueError(f"num_labels={num_labels!r} must be a positive multiple of {num_classes}, so that "
                         f"every class gets the same number of labelled images (e.g. 100, 600, 1000, 3000)")
    per_class = num_labels // num_classes
    y = labels.cpu().numpy()
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() < per_class:
        c = int(counts.argmin())
        raise ValueError(f"num_labels={num_labels} needs {per_class} images of every class, but class {c} "
                         f"has only {counts[c]} of the {len(y)} training images; use fewer labels or more "
                         "training images")
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                             for c in range(num_classes)])
    mask = np.zeros(len(y), dtype=bool)
    mask[chosen] = True
    return torch.from_numpy(np.flatnonzero(mask)), torch.from_numpy(np.flatnonzero(~mask))


# --- networks ----------------------------------------------------------------------------------------


def _softplus_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of ``sizes`` with softplus between them (Kingma et al. 2014), none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.Softplus())
    return nn.Sequential(*layers)


class LabelConditionedMLP(nn.Module):
    """An MLP on the concatenation ``[inputs, one_hot(y)]``, with softplus hidden layers.

    The first layer is one ``nn.Linear(in_features + num_classes, hidden[0])``; its product with the
    one-hot part is a column lookup, ``W [u, one_hot(y)] = W_u u + W[:, in_features + y]``, so no one-hot
    tensor is built and, under parallel enumeration (``y`` of shape ``(num_classes, 1)``), ``W_u u`` is
    computed once per image instead of once per label.

    Args:
        in_features: size of ``inputs``' last dimension.
        num_classes: number of labels.
        hidden: hidden-layer sizes (at least one).
        out_features: output size.

    Shapes: ``inputs (*batch_a, in_features)`` and ``y (*batch_b)`` int64, broadcastable, give
    ``(*broadcast(batch_a, batch_b), out_features)``.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        hidden = tuple(hidden)
        if not hidden:
            raise ValueError("LabelConditionedMLP needs at least one hidden layer, got hidden=()")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.first = nn.Linear(self.in_features + self.num_classes, hidden[0])
        self.rest = nn.Sequential(nn.Softplus(), _softplus_mlp([*hidden, out_features]))

    @property
    def output_layer(self) -> nn.Linear:
        return self.rest[-1][-1]

    def forward(self, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w_inputs, w_labels = self.first.weight.split([self.in_features, self.num_classes], dim=1)
        h = F.linear(inputs, w_inputs, self.first.bias) + w_labels.t()[y]
        return self.rest(h)


class Classifier(nn.Module):
    """q(y|x): an MLP with softplus hidden layers from an image to class logits.

    Shapes: ``x (*batch, *x_shape) -> logits (*batch, num_classes)``.
    """

    def __init__(self, x_shape: Sequence[int], hidden: Sequence[int], num_classes: int = NUM_CLASSES):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.net = _softplus_mlp([math.prod(self.x_shape), *hidden, num_classes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(start_dim=x.dim() - len(self.x_shape)))


# --- the model -----------------------------------------------------------------------------------------


class M2(nn.Module):
    r"""The M2 semi-supervised VAE of Kingma et al. (2014) as a Pyro ``model`` + ``guide`` pair.

    See the module docstring for the generative model, the guide and the objective. ``model`` and
    ``guide`` take ``(x, y=None, num_data=None)``: with ``y`` the label is observed (the labelled
    ELBO ``L(x, y)``), without it the guide draws it from ``q(y|x)``, or, wrapped in
    ``config_enumerate`` and run under ``TraceEnum_ELBO`` (see :attr:`enumerated_guide` and
    :class:`M2Objective`), sums it out (``U(x)``). Parameters live in the module, never in Pyro's
    param store.

    Args:
        z_dim: dimension of the style latent z (default 50, as in the Pyro tutorial).
        x_shape: shape of one image (default ``(1, 28, 28)``).
        hidden: hidden-layer sizes of the classifier, the encoder q(z|x,y) and (reversed) the decoder
            (default ``(500,)``: one layer of 500 softplus units, as in Kingma et al. and the tutorial).
        num_classes: number of labels (default 10).
        likelihood: p(x|y,z), see :mod:`pyrovae.likelihoods` (default
            :class:`~pyrovae.likelihoods.Bernoulli`, for binarized images).
        prior: p(z) (default :class:`~pyrovae.priors.StandardNormal`).
        guide_family: the family of q(z|x,y) (default :class:`~pyrovae.guides.DiagonalNormal`).
        classifier: a q(y|x) network of your own, ``x (batch, *x_shape) -> logits (batch, num_classes)``.

    Attributes:
        classifier: the q(y|x) network (logits); :meth:`classify` and :meth:`predict_proba` use it.
        encoder: ``(x flattened, y) -> features of q(z|x,y)``, a :class:`LabelConditionedMLP`.
        decoder: ``(z, y) -> parameters of p(x|y,z)``, a :class:`LabelConditionedMLP`.

    Raises:
        ValueError: the prior's event shape is not ``(z_dim,)``, or ``hidden`` is empty.

    Example::

        m2 = M2()
        objective = M2Objective(aux_loss_multiplier=50.0)
        terms = objective(m2, x_unlabelled, x_labelled, y_labelled, num_unlabelled=49900, num_labelled=100)
        (terms["loss"] / 50000).backward()
        m2.classify(x_test)        # (batch,) int64 predicted digits
    """

    def __init__(self, z_dim: int = 50, x_shape: Sequence[int] = (1, 28, 28), hidden: Sequence[int] = (500,),
                 num_classes: int = NUM_CLASSES, likelihood: nn.Module | None = None,
                 prior: nn.Module | None = None, guide_family: nn.Module | None = None,
                 classifier: nn.Module | None = None):
        super().__init__()
        self.z_dim, self.x_shape, self.num_classes = int(z_dim), tuple(x_shape), int(num_classes)
        hidden = tuple(hidden)
        if not hidden:
            raise ValueError("hidden must name at least one hidden-layer size, e.g. (500,)")
        self.likelihood = likelihood if likelihood is not None else Bernoulli(self.x_shape)
        self.prior = prior if prior is not None else StandardNormal(self.z_dim)
        self.guide_family = guide_family if guide_family is not None else DiagonalNormal(self.z_dim)
        check_prior(self.prior, self.z_dim)
        x_dim = math.prod(self.x_shape)
        self.classifier = classifier if classifier is not None else Classifier(self.x_shape, hidden, num_classes)
        self.encoder = LabelConditionedMLP(x_dim, num_classes, hidden,
                                           self.guide_family.num_features(self.z_dim))
        self.decoder = LabelConditionedMLP(self.z_dim, num_classes, tuple(reversed(hidden)),
                                           self.likelihood.num_params * x_dim)

    # --- the Pyro programs ----------------------------------------------------------------------------

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(start_dim=x.dim() - len(self.x_shape))

    def likelihood_of(self, z: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """p(x|y,z) for ``z (*batch, z_dim)`` and ``y (*batch)`` (broadcastable): event shape ``x_shape``."""
        params = self.decoder(z, y)
        return self.likelihood(params.unflatten(-1, (self.likelihood.num_params, *self.x_shape)))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """p(y) p(z) p(x|y,z) for images ``x (batch, *x_shape)`` and, where known, labels ``y (batch,)``
        int64 (observed; None leaves ``y`` latent). ``num_data`` is the size of the set that ``x`` is a
        mini-batch of (scales the log densities to the whole set). Returns z."""
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior())
            prior_y = dist.Categorical(logits=x.new_zeros(self.num_classes))
            y = pyro.sample("y", prior_y, obs=y)
            pyro.sample("x", self.likelihood_of(z, y), obs=x)
        return z

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """q(y|x) (only where ``y`` is None) and q(z|x,y), for ``x (batch, *x_shape)``. Returns z: ``(batch,
        z_dim)``, or ``(num_classes, batch, z_dim)`` when ``y`` is enumerated in parallel."""
        with data_plate(x, num_data):
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.classifier(x)))
            return pyro.sample("z", self.guide_family(self.encoder(self._flat(x), y)))

    @property
    def enumerated_guide(self) -> Callable:
        """:meth:`guide` with its ``y`` site enumerated in parallel (``config_enumerate``), for
        ``TraceEnum_ELBO``: the ELBO then sums over the labels exactly instead of sampling one."""
        return config_enumerate(self.guide, default="parallel", expand=False)

    def classification_model(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None,
                             multiplier: float = 1.0) -> None:
        """The classification term of Kingma et al.'s objective as a Pyro program: the labels ``y
        (batch,)`` observed under q(y|x), weighed by ``multiplier`` per image with ``poutine.scale``.
        With the empty :meth:`classification_guide`, an ELBO over this pair is ``multiplier * sum log
        q(y|x)`` (nats), scaled to ``num_data`` images."""
        with data_plate(x, num_data, name="labelled"), poutine.scale(scale=multiplier):
            pyro.sample("y_aux", dist.Categorical(logits=self.classifier(x)), obs=y)

    def classification_guide(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None,
                             multiplier: float = 1.0) -> None:
        """The guide of :meth:`classification_model`: it has no latent variables."""

    # --- what users call ------------------------------------------------------------------------------

    def check_data(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(batch, *x_shape)``, floating point, finite and in the
        likelihood's support (``{0, 1}`` for the default Bernoulli)."""
        check_data(x, self.x_shape, self.likelihood)

    def check_labels(self, y: Any, batch: int | None = None) -> None:
        """:func:`check_labels` with this model's number of classes."""
        check_labels(y, batch, self.num_classes)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|x) for images ``x (batch, *x_shape)``: class probabilities ``(batch, num_classes)``.

        Raises:
            ValueError: see :meth:`check_data`.
        """
        self.check_data(x)
        return torch.softmax(self.classifier(x), dim=-1)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable label under q(y|x) for images ``x (batch, *x_shape)``: ``(batch,)`` int64.

        Raises:
            ValueError: see :meth:`check_data`.
        """
        self.check_data(x)
        return self.classifier(x).argmax(dim=-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The parameters of q(z|x,y) (``{"loc", "scale"}``, each ``(batch, z_dim)`` for the default
        family), with ``y`` the predicted label where it is not given.

        Raises:
            ValueError: see :meth:`check_data` and :func:`check_labels`.
        """
        self.check_data(x)
        if y is None:
            y = self.classifier(x).argmax(dim=-1)
        else:
            self.check_labels(y, x.shape[0])
        return self.guide_family.params(self.encoder(self._flat(x), y))

    @torch.no_grad()
    def generate(self, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p(x|y,z) (pixel probabilities for Bernoulli): ``(batch, *x_shape)``.

        Args:
            y: ``(batch,)`` labels.
            z: ``(batch, z_dim)`` styles; drawn from p(z) when None (seed with ``pyro.set_rng_seed``).

        Raises:
            ValueError: bad labels, or ``z`` of the wrong shape.
        """
        self.check_labels(y)
        if z is None:
            z = self.prior().sample((y.shape[0],)).to(y.device)
        elif tuple(z.shape) != (y.shape[0], self.z_dim):
            raise ValueError(f"z must have shape ({y.shape[0]}, {self.z_dim}) for {y.shape[0]} labels, "
                             f"got {tuple(z.shape)}")
        return self.likelihood_of(z, y).mean

    @torch.no_grad()
    def analogies(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's style with every label: ``(batch, num_classes, *x_shape)``, entry ``[n, k]``
        the mean of p(x | y=k, z_n) with z_n the mean of q(z | x_n, predicted label) (Kingma et al.
        2014, Figure 1).

        Raises:
            ValueError: see :meth:`check_data`.
        """
        z = self.encode(x)["loc"]
        labels = torch.arange(self.num_classes, device=x.device)
        return self.likelihood_of(z.unsqueeze(1), labels).mean


class M2Objective:
    r"""The negative of Kingma et al.'s J^alpha on one labelled and one unlabelled mini-batch, in nats.

    Three Pyro ELBOs over three program pairs, each scaled to its whole set through the plates'
    ``num_data``:

    * unlabelled: ``TraceEnum_ELBO(max_plate_nesting=1)`` over ``M2.model`` / ``M2.enumerated_guide``:
      ``-sum U(x)``, the label summed out exactly;
    * labelled: ``TraceMeanField_ELBO`` over ``M2.model`` / ``M2.guide`` with y observed:
      ``-sum L(x, y)`` (the KL term of z in closed form where it has one);
    * classification: ``Trace_ELBO`` over ``M2.classification_model`` / ``classification_guide``:
      ``aux_loss_multiplier * sum -log q(y|x)``.

    Args:
        aux_loss_multiplier: the weight on ``-log q(y|x)`` per labelled image, relative to that image's
            ELBO (Pyro's name). Kingma et al.'s alpha = 0.1 N is ``0.1 * N / N_labelled`` here, what
            :func:`fit_m2` uses by default; the Pyro tutorial uses 46.
        num_particles: z samples per image and label (vectorized).

    Returns (``__call__``): dict of scalar tensors ``loss`` (the sum of the three, to minimize),
    ``unlabelled`` (``-sum U``), ``labelled`` (``-sum L``) and ``classification``, each scaled to the
    whole set (divide by the number of training images for nats per image).
    """

    def __init__(self, aux_loss_multiplier: float, num_particles: int = 1):
        if not aux_loss_multiplier >= 0:
            raise ValueError(f"aux_loss_multiplier must be a non-negative number, got {aux_loss_multiplier!r}")
        self.aux_loss_multiplier = float(aux_loss_multiplier)
        vectorize = num_particles > 1
        self.enum_elbo = TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=vectorize,
                                        max_plate_nesting=1)
        self.labelled_elbo = TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=vectorize,
                                                 max_plate_nesting=1)
        self.classification_elbo = Trace_ELBO(max_plate_nesting=1)

    def __call__(self, m2: M2, x_unlabelled: torch.Tensor, x_labelled: torch.Tensor, y_labelled: torch.Tensor,
                 num_unlabelled: int | None = None, num_labelled: int | None = None) -> dict[str, torch.Tensor]:
        unlabelled = self.enum_elbo.differentiable_loss(m2.model, m2.enumerated_guide, x_unlabelled,
                                                        num_data=num_unlabelled)
        labelled = self.labelled_elbo.differentiable_loss(m2.model, m2.guide, x_labelled, y_labelled,
                                                          num_data=num_labelled)
        classification = x_labelled.new_zeros(())
        if self.aux_loss_multiplier > 0:
            classification = self.classification_elbo.differentiable_loss(
                m2.classification_model, m2.classification_guide, x_labelled, y_labelled,
                num_data=num_labelled, multiplier=self.aux_loss_multiplier)
        return {"loss": unlabelled + labelled + classification, "unlabelled": unlabelled,
                "labelled": labelled, "classification": classification}


# --- configuration ---------------------------------------------------------------------------------------


class M2Config(SavedConfig):
    """Every setting of an M2 run, serialized to ``config.json`` and the checkpoint.

    Defaults follow the Pyro SS-VAE tutorial where it states them (z_dim 50, one hidden layer of 500
    softplus units, Adam with beta1 0.9, unlabelled batches of 200, 50 epochs), except the learning
    rate: 3e-3, chosen on validation accuracy (``benchmarks/RESULTS.md``). M2 is still far from
    converged after 50 epochs at the tutorial's nominal 4.2e-4 or at 1e-3: at 100 labels, 3e-3 reaches
    in 17 epochs the validation accuracy 1e-3 reaches in 50, and at every label count it ends higher.
    (The tutorial's example also trains faster than its nominal rate: it steps its auxiliary SVI on
    every mini-batch, and on unlabelled ones that zero loss still lets Adam step every parameter, which
    halves Adam's second-moment estimate and moves the parameters about sqrt(2) times as far.)
    ``lr_schedule="cosine"`` anneals the rate by a half cosine to ``lr * final_lr_ratio`` over ``epochs``
    (:func:`pyrovae.train.lr_factor`; resumed runs continue it where they stopped; extending ``epochs``
    on resume stretches the schedule, so the rate jumps up); the default holds it constant, under
    which the first E epochs of a longer run are exactly the E-epoch run. At 100 labels and 100 epochs
    the cosine schedule ended 1.0-1.3 points below the constant rate on two seeds (``benchmarks/RESULTS.md``):
    accuracy keeps rising at a constant 3e-3 for hundreds of epochs, and annealing stops that. The
    labels' weight defaults to Kingma et al.'s alpha = 0.1 N on every labelled image (see the module
    docstring). One epoch is
    one pass over the unlabelled images; every step also takes a labelled batch of
    ``labelled_batch_size``, cycling through the labelled subset (reshuffled at each pass). Kingma et
    al.'s code and the tutorial instead visit each labelled image once per epoch; both are unbiased
    estimates of the same J^alpha (the plates scale each batch to its set), and a labelled batch at
    every step gives the classification term lower variance.
    """

    num_labels: PositiveInt = 100
    z_dim: PositiveInt = 50
    hidden: tuple[PositiveInt, ...] = Field((500,), min_length=1)
    likelihood: str = "bernoulli"
    likelihood_options: dict[str, Any] = Field(default_factory=dict)
    binarization: Literal["dynamic", "static", "none"] = "dynamic"
    aux_loss_multiplier: Optional[float] = Field(None, ge=0)
    epochs: PositiveInt = 50
    batch_size: PositiveInt = 200
    labelled_batch_size: PositiveInt = 100
    lr: PositiveFloat = 3e-3
    lr_schedule: Literal["cosine", "constant"] = "constant"
    final_lr_ratio: float = Field(0.01, gt=0, le=1)
    validation_size: int = Field(0, ge=0)
    train_size: Optional[PositiveInt] = None
    seed: int = 0
    device: Device = "cpu"
    data_dir: Optional[str] = None

    @pydantic.field_validator("num_labels")
    @classmethod
    def _balanced(cls, v: int) -> int:
        if v % NUM_CLASSES:
            raise ValueError(f"must be a multiple of {NUM_CLASSES} (an equal number per digit), "
                             "e.g. 100, 600, 1000 or 3000")
        return v

    @pydantic.field_validator("likelihood")
    @classmethod
    def _known_likelihood(cls, v: str) -> str:
        if v not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {v!r}; choose one of {', '.join(LIKELIHOODS)}")
        return v


def build_m2(config: M2Config, x_shape: Sequence[int] = (1, 28, 28)) -> M2:
    """The :class:`M2` that ``config`` describes, for images of ``x_shape``.

    Raises:
        ValueError: the likelihood does not take the given options.
    """
    try:
        likelihood = LIKELIHOODS[config.likelihood](tuple(x_shape), **config.likelihood_options)
    except TypeError as e:
        raise ValueError(f"likelihood {config.likelihood!r} does not take the options "
                         f"{config.likelihood_options}: {e}") from e
    return M2(z_dim=config.z_dim, x_shape=x_shape, hidden=config.hidden, likelihood=likelihood)


# --- training --------------------------------------------------------------------------------------------


def _subset(data: ImageDataset, index: torch.Tensor) -> ImageDataset:
    return ImageDataset(data.images[index], data.labels[index], data.binarization)


def _cycle(data: ImageDataset, batch_size: int,
           generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from data.batches(batch_size, generator=generator)


@torch.no_grad()
def accuracy(m2: M2, data: ImageDataset, batch_size: int = 2000) -> float:
    """The fraction of ``data``'s images whose label :meth:`M2.classify` predicts correctly, in [0, 1]."""
    device = next(m2.parameters()).device
    was_training = m2.training
    m2.eval()
    correct = 0
    try:
        for x, y in data.batches(batch_size, shuffle=False):
            correct += (m2.classifier(x.to(device)).argmax(-1).cpu() == y).sum().item()
    finally:
        m2.train(was_training)
    return correct / len(data)


def aux_loss_multiplier(config: M2Config, num_images: int) -> float:
    """The weight on -log q(y|x) per labelled image: ``config.aux_loss_multiplier`` when set, else
    Kingma et al.'s alpha = 0.1 N on every labelled image, ``0.1 * num_images`` (see the module
    docstring for why not on their mean)."""
    if config.aux_loss_multiplier is not None:
        return float(config.aux_loss_multiplier)
    return KINGMA_ALPHA_FRACTION * num_images


def load_m2_data(config: M2Config) -> tuple[ImageDataset, ImageDataset | None, ImageDataset]:
    """The ``(train, validation, test)`` MNIST datasets that ``config`` describes (see
    :func:`pyrovae.data.load_mnist`)."""
    return load_mnist(config.data_dir, config.binarization, config.validation_size, seed=config.seed,
                      train_size=config.train_size)


@flush_denormals()
def fit_m2(config: M2Config, run_dir: str | os.PathLike, resume: bool = False,
           data: tuple[ImageDataset, ImageDataset | None, ImageDataset] | None = None,
           progress: bool | None = None,
           on_epoch_end: Callable[[int, M2, Path], None] | None = None) -> tuple[M2, list[dict]]:
    """Train (or resume) an M2 run in ``run_dir`` on a class-balanced labelled subset; returns ``(m2, history)``.

    The training set is split by :func:`balanced_labelled_subset` (``config.num_labels`` images with
    labels, seed ``config.seed``; the rest without). Each step takes ``config.batch_size`` unlabelled
    images and ``config.labelled_batch_size`` labelled ones and does one Adam step on
    :class:`M2Objective`'s loss divided by the number of training images N (nats per image). After
    every epoch (a pass over the unlabelled images) the test (and validation) accuracy is measured and
    ``checkpoint.pt`` (model, optimizer, RNG states, config, history, labelled indices) and
    ``metrics.json`` are written atomically; resuming restores every RNG state, so a resumed run
    continues exactly as if it had not stopped.

    Args:
        config: the run's settings; on ``resume`` the checkpoint's, except ``epochs`` and ``device``.
        run_dir: the run folder (created if missing).
        resume: continue from ``run_dir/checkpoint.pt``.
        data: ``(train, validation or None, test)``; loaded with :func:`load_m2_data` when None. Only
            the labels of the labelled subset are used for training.
        progress: show a progress bar (default: when stderr is a terminal).
        on_epoch_end: called as ``on_epoch_end(epoch, m2, checkpoint_path)`` after each checkpoint.

    Returns:
        the trained :class:`M2` (eval mode) and the history: per epoch a dict with ``epoch``,
        ``loss`` (-J^alpha / N, nats per image), ``unlabelled_elbo`` and ``labelled_elbo`` (nats per
        image of each subset), ``classification_loss`` (mean -log q(y|x) on the labelled batches,
        nats), ``test_accuracy``, ``validation_accuracy`` (with a validation set) and ``seconds``.

    Raises:
        RunDirError: ``run_dir`` holds a checkpoint and ``resume`` is False, or ``resume`` is True and
            it holds none.
        CheckpointError: the checkpoint to resume from is unreadable.
        ValueError: bad images (shape, NaN, values outside the likelihood's support), bad labels (see
            :func:`check_labels`), too few images of a class for ``num_labels``, or a bad device.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    state = read_run_dir(run_dir, resume)
    if state is not None:
        saved = M2Config.from_dict(state["config"])
        config = saved.model_copy(update={"epochs": config.epochs, "device": config.device})
    device = resolve_device(config.device)

    if data is None:
        data = load_m2_data(config)
    train, validation, test = data
    for subset in (train, validation, test):
        if subset is not None:
            check_labels(subset.labels, len(subset))
    labelled_idx, unlabelled_idx = balanced_labelled_subset(train.labels, config.num_labels, seed=config.seed)
    if state is not None and not torch.equal(state["labelled_indices"], labelled_idx):
        raise ValueError(f"the training data differ from those the run in {run_dir} started with (another "
                         "labelled subset came out); resume with the same data, train_size and seed")
    if len(unlabelled_idx) == 0:
        raise ValueError(f"all {len(train)} training images are labelled (num_labels={config.num_labels}); "
                         "M2 needs unlabelled images too: use fewer labels or more training images")
    labelled, unlabelled = _subset(train, labelled_idx), _subset(train, unlabelled_idx)

    pyro.set_rng_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    m2 = build_m2(config, train.x_shape)
    m2.check_data(train.get(torch.arange(min(len(train), 1000)), torch.Generator().manual_seed(config.seed)))
    if train.binarization != "dynamic":
        m2.check_data(train.images)
    for held_out in (validation, test):
        if held_out is not None:
            m2.check_data(held_out.images)
    if state is None and hasattr(m2.likelihood, "init_bias"):
        m2.likelihood.init_bias(m2.decoder.output_layer,
                                train.images.float() / (255.0 if train.images.dtype == torch.uint8 else 1.0))
    run_dir.mkdir(parents=True, exist_ok=True)
    m2.to(device)
    n_l, n_u = len(labelled), len(unlabelled)
    n = n_l + n_u
    multiplier = aux_loss_multiplier(config, n)
    objective = M2Objective(multiplier)
    labelled_batch = min(config.labelled_batch_size, n_l)
    steps = -(-n_u // config.batch_size)

    optimizer = make_optimizer(m2.parameters(), config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps))
    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        m2.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # runs saved before M2 had a schedule ran at a constant rate
            scheduler.load_state_dict(state["scheduler"])
            scheduler.lr_lambdas[0] = lr_factor(config, steps)  # over the (possibly extended) epochs
        history, start_epoch = list(state["history"]), int(state["epoch"])
        restore_rng_state(state["rng"], generator, device)
        for group in optimizer.param_groups:  # the schedule's rate at the step resumed from
            group.setdefault("initial_lr", config.lr)  # absent from runs saved before M2 had a schedule
            group["lr"] = group["initial_lr"] * scheduler.lr_lambdas[0](scheduler.last_epoch)
    config.save(run_dir / CONFIG)
    log.info("M2: %d labelled and %d unlabelled images, aux_loss_multiplier %.4g", n_l, n_u, multiplier)

    for epoch in range(start_epoch + 1, config.epochs + 1):
        m2.train()
        t0 = time.perf_counter()
        totals = torch.zeros(4, device=device)
        labelled_batches = _cycle(labelled, labelled_batch, generator)
        bar = tqdm(unlabelled.batches(config.batch_size, generator=generator), total=steps, leave=False,
                   desc=f"epoch {epoch}/{config.epochs}", disable=None if progress is None else not progress)
        with pyro.validation_enabled(False):
            for x_u, _ in bar:  # the unlabelled images' labels are never used
                x_l, y_l = next(labelled_batches)
                x_u, x_l, y_l = x_u.to(device), x_l.to(device), y_l.to(device)
                terms = objective(m2, x_u, x_l, y_l, num_unlabelled=n_u, num_labelled=n_l)
                optimizer.zero_grad(set_to_none=True)
                (terms["loss"] / n).backward()
                optimizer.step()
                scheduler.step()
                w = x_u.shape[0] / n_u  # this batch's share of an epoch
                totals += w * torch.stack([terms[k].detach() for k in ("loss", "unlabelled", "labelled",
                                                                        "classification")])
        loss, unlabelled_loss, labelled_loss, classification = totals.tolist()
        row = {"epoch": epoch, "loss": loss / n, "unlabelled_elbo": -unlabelled_loss / n_u,
               "labelled_elbo": -labelled_loss / n_l,
               "classification_loss": classification / (n_l * multiplier) if multiplier > 0 else float("nan"),
               "test_accuracy": accuracy(m2, test)}
        if validation is not None:
            row["validation_accuracy"] = accuracy(m2, validation)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        save_checkpoint(ckpt_path, {
            "kind": "m2", "config": config.to_dict(), "epoch": epoch, "model": m2.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
            "labelled_indices": labelled_idx,
            "x_shape": list(train.x_shape),
            "rng": rng_state(generator, device),
        })
        write_metrics(run_dir, {"history": history, **summarize_history(history),
                                "num_labelled": n_l, "num_unlabelled": n_u, "aux_loss_multiplier": multiplier})
        if on_epoch_end is not None:
            on_epoch_end(epoch, m2, ckpt_path)
    return m2.eval(), history


def summarize_history(history: list[dict]) -> dict:
    """``final_test_accuracy`` (last epoch) and, with a validation set, ``best_validation_accuracy``,
    its ``best_validation_epoch`` and ``test_accuracy_at_best_validation`` (the Pyro tutorial's
    protocol). The test set is never used to choose an epoch."""
    if not history:
        return {}
    out = {"final_test_accuracy": history[-1]["test_accuracy"]}
    if "validation_accuracy" in history[-1]:
        best = max(history, key=lambda h: h["validation_accuracy"])  # first epoch among ties
        out.update(best_validation_accuracy=best["validation_accuracy"], best_validation_epoch=best["epoch"],
                   test_accuracy_at_best_validation=best["test_accuracy"])
    return out


def load_m2_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[M2, M2Config, dict]:
    """Rebuild the trained :class:`M2` of a run folder from its checkpoint alone.

    Returns:
        ``(m2, config, state)``: the model in eval mode on ``device``, its :class:`M2Config` and the raw
        checkpoint dict.

    Raises:
        CheckpointError: see :func:`pyrovae.checkpoint.load_checkpoint`; also when the folder holds a
            run of another kind or the weights do not fit the config.
    """
    from .checkpoint import CheckpointError

    path = Path(run_dir) / CHECKPOINT
    state = load_checkpoint(path, map_location=device)
    if state.get("kind") != "m2":
        raise CheckpointError(f"{path} is not an M2 run (train one with `pyrovae semisupervised`)")
    config = M2Config.from_dict(state["config"])
    m2 = build_m2(config, tuple(state.get("x_shape", (1, 28, 28))))
    try:
        m2.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not match the model its config describes ({e})") from e
    return m2.to(device).eval(), config, state
