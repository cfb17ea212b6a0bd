r"""The model protocol: what every model family implements, so that one trainer, one evaluator and one
set of diagnostics serve them all, and a user's own family plugs in by implementing the same few methods.

A family is a ``torch.nn.Module`` subclass of :class:`Family` holding two Pyro programs,

* ``model(*args, num_data=None)``: the generative model p, whose sample sites all lie in one data
  plate at ``dim=-1`` (:func:`data_plate`);
* ``guide(*args, num_data=None)``: the amortized posterior q over the model's latent sites,

whose arguments are a batch's tensors (labels, visible quadrants and masks travel as arguments, as
they would to a Pyro ELBO), and

* :meth:`Family.program_args`: how a batch (a dict of tensors from :mod:`pyrovae.data`) becomes those
  arguments, said once, so that neither the trainer nor the evaluator branches on the family;
* :meth:`Family.check_data`: one clear error for data the model cannot take, called once at the public
  boundary (never per training step);
* :meth:`Family.init_from_data`: initialisation from the training data (the decoder's output bias);
* :meth:`Family.stages`: what the trainer optimizes: one :class:`Stage` by default (all parameters, the
  ELBO), several for a family trained in steps (the structured-output CVAE trains its baseline first);
  each stage's loss returns a :class:`LossRecord` (the loss, its named terms, the number of
  observations), by default from an objective's ``loss_terms`` (:mod:`pyrovae.inference`);
* :meth:`Family.batch_plan`: how an epoch of batches is drawn (:mod:`pyrovae.data.batches`); M2 draws
  labelled and unlabelled batches in pairs;
* ``kind`` and ``config_class``: the family's name in run folders and its config (a :class:`ModelConfig`),
  found through one registry (:func:`register_family`, :func:`family_for`), so that a run folder
  reloads with no other information.

Parameters live in the module (never in Pyro's global param store), so any number of models coexist.

A minimal family of one's own::

    class MyConfig(ModelConfig):
        kind: Literal["my-vae"] = "my-vae"
        z_dim: int = 10

    @register_family
    class MyVAE(Family):
        kind, config_class = "my-vae", MyConfig

        def __init__(self, config: MyConfig): ...
        def model(self, x, num_data=None): ...
        def guide(self, x, num_data=None): ...
        def check_data(self, x): ...

See ``examples/custom_model.py`` for a complete, runnable one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, Sequence

import pyro
import torch
from pydantic import Field
from torch import nn

from ..data.batches import Batch, BatchPlan, SingleStream
from ..data.mnist import RANDOM_TRANSFORMS, ImageDataset
from ..errors import ArgumentTypeError, ConfigError, DataError, UnsupportedError
from ..settings import Settings
from ..torchtools import eval_mode


class ModelConfig(Settings):
    """The base of every family's config: ``kind`` names the family (see :func:`register_family`); the
    other fields are the family's own. The config alone rebuilds an untrained model
    (``family_for(config.kind).from_config(config)``)."""

    kind: str = Field(description="the model family")


def data_plate(x: torch.Tensor, num_data: int | None, name: str = "data") -> pyro.plate:
    """The plate (dim -1) over the batch ``x (batch, ...)``; when ``num_data`` is the size of the data
    set that ``x`` is a mini-batch of, log-densities inside it are scaled by ``num_data / batch``, so an
    ELBO over the batch estimates the ELBO of the whole set."""
    batch = x.shape[0]
    if num_data is None or num_data == batch:
        return pyro.plate(name, batch, dim=-1)
    return pyro.plate(name, num_data, subsample=torch.arange(batch, device=x.device), dim=-1)


@dataclass
class LossRecord:
    """What one training step's loss returns.

    Attributes:
        loss: the scalar to minimize (differentiable): the negative objective in nats per observation,
            estimated from the batch (its mean over the batch for the usual data plate).
        terms: named terms in nats per observation, detached: ``objective`` (what the stage maximizes),
            and as the objective provides them ``elbo``, ``reconstruction``, ``kl`` or a family's own
            (M2's ``classification_loss``). History rows, progress lines and loggers read these.
        num_observations: the weight of this record in an epoch's mean (the batch size).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    num_observations: int


@dataclass
class Stage:
    """One thing the trainer optimizes for some epochs.

    Attributes:
        name: the stage's name (in history rows and checkpoints when a family has several).
        epochs: how many epochs it runs.
        parameters: the parameters its optimizer moves (the others are frozen while it runs).
        loss: ``batch -> LossRecord`` for a training batch (of the family's :meth:`Family.batch_plan`).
        validate: ``data -> {name: value}`` metrics on a held-out :class:`~pyrovae.data.ImageDataset`,
            computed after every epoch on the validation split (as ``validation_<name>``).
        monitor: the validated metric that early stopping and the best checkpoint follow.
        mode: ``"max"`` or ``"min"``: which way ``monitor`` improves.
        weighted_sites: the latent sites that the KL weight (beta and its warm-up) applies to; None for
            all latent sites, ``()`` for none.
    """

    name: str
    epochs: int
    parameters: list
    loss: Callable[[Batch], LossRecord]
    validate: Callable[[ImageDataset], dict] | None = None
    monitor: str = "objective"
    mode: Literal["max", "min"] = "max"
    weighted_sites: Sequence[str] | None = field(default=None)


class Family(nn.Module):
    """The base of every model family; see the module docstring for the protocol.

    Class attributes:
        kind: the family's name, stored in every run folder's checkpoint and config.
        config_class: its :class:`ModelConfig` subclass.
        latent_site: the name of the latent sample site that diagnostics examine (default ``"z"``).
        weighted_sites: the latent sites weighed by beta and the KL warm-up (None: all).
        test_each_epoch: whether the trainer also reports the held-out metrics of the test split after
            every epoch (M2 does, for the tutorial's protocol of the test accuracy at the epoch of best
            validation accuracy; the test split is never used to choose anything).
        takes_mask: whether its programs take a missing-value mask (data read with ``missing="mask"``); a
            family that does not is refused such data by :meth:`check_dataset`.
        log_likelihood_of: what the importance-sampled log-likelihood of its programs is, for reports
            (``"log p(x)"``, ``"log p(x | y)"``, ...).
        defines_likelihood: whether its programs define a density of the data (False for an autoencoder:
            the evaluator then reports no importance-sampled log-likelihood, only the family's own metrics).
        trainer_defaults: the trainer settings this family trains with unless told otherwise (see
            :class:`pyrovae.training.TrainerConfig`).
    """

    kind: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    latent_site: ClassVar[str] = "z"
    weighted_sites: ClassVar[Sequence[str] | None] = None
    test_each_epoch: ClassVar[bool] = False
    log_likelihood_of: ClassVar[str] = "log p(x)"
    defines_likelihood: ClassVar[bool] = True
    trainer_defaults: ClassVar[dict] = {}
    takes_mask: ClassVar[bool] = False

    config: ModelConfig

    @classmethod
    def from_config(cls, config: ModelConfig) -> "Family":
        """The untrained model that ``config`` describes (default: ``cls(config)``)."""
        return cls(config)

    # --- the Pyro programs: each family defines them ---------------------------------------------------

    def model(self, *args, num_data: int | None = None):
        raise NotImplementedError

    def guide(self, *args, num_data: int | None = None):
        raise NotImplementedError

    # --- batches -----------------------------------------------------------------------------------------

    def program_args(self, batch: Batch) -> tuple:
        """The arguments of :meth:`model` and :meth:`guide` for a batch; the first one's first dimension
        is the batch. Default ``(batch["x"],)``."""
        return (batch["x"],)

    def batch_plan(self, train: ImageDataset, batch_size: int, seed: int = 0,
                   resumed: dict | None = None) -> BatchPlan:
        """How an epoch of training batches is drawn (default: one shuffled pass over ``train``). ``seed``
        is the run's (for any split the plan draws); ``resumed`` is the family state of the checkpoint
        being resumed (see :meth:`family_state`)."""
        return SingleStream(train, batch_size)

    def training_info(self, plan: BatchPlan) -> dict:
        """Facts about the training set-up for ``metrics.json`` (M2: the sizes of its labelled and unlabelled
        subsets); default nothing."""
        return {}

    def family_state(self) -> dict:
        """Whatever besides the weights a checkpoint must keep to resume the family exactly (M2: its
        labelled subset); default nothing."""
        return {}

    # --- data ----------------------------------------------------------------------------------------------

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`~pyrovae.errors.DataError` unless ``x`` is data this model takes."""
        raise NotImplementedError

    def check_dataset(self, data: ImageDataset, seed: int = 0) -> None:
        """:meth:`check_data` on a split: on all of its data points when they are stored in memory as the
        model sees them, else on the first 1000 (after their random transform, drawn with a generator of its
        own, so the run's random draws are untouched; or as read from disk for a split streamed from a file,
        which is not read whole).

        Raises:
            UnsupportedError: the split has missing entries (a ``mask``) and the family takes no mask."""
        if getattr(data, "mask", None) is not None and not self.takes_mask:
            raise UnsupportedError(f"the {self.kind} model does not take missing values (data read with "
                                   "missing='mask'); train a VAE on it, or impute the data first")
        try:
            first = data.get(torch.arange(min(len(data), 1000)), torch.Generator().manual_seed(seed))
            self.check_data(first)
            if data.binarization not in RANDOM_TRANSFORMS and getattr(data, "in_memory", True):
                self.check_data(data.images)
        except DataError as e:
            fitted = getattr(data, "fitted", None)
            if fitted is None:
                raise
            raise DataError(f"{e} (these are the values after the transform {fitted.kind!r} fitted on the training "
                            "split; transform='none' keeps the data's own values)") from None

    def init_from_data(self, train: ImageDataset) -> None:
        """Initialise from the training data before the first step: by default the likelihood's
        ``init_bias`` sets the decoder's output bias from the data mean, where both exist."""
        likelihood, decoder = getattr(self, "likelihood", None), getattr(self, "decoder", None)
        if hasattr(likelihood, "init_bias") and hasattr(decoder, "output_layer"):
            likelihood.init_bias(decoder.output_layer, train.as_float())

    # --- training --------------------------------------------------------------------------------------------

    def stages(self, plan: BatchPlan, objective, held_out_objective, epochs: int) -> list[Stage]:
        """What the trainer optimizes (default: one stage of ``epochs`` on all parameters, the loss of
        ``objective``, validated by ``held_out_objective``'s terms)."""
        return [Stage("train", epochs, list(self.parameters()),
                      loss=lambda batch: self.objective_record(objective, batch, plan.num_data),
                      validate=lambda data: self.held_out_terms(held_out_objective, data),
                      weighted_sites=self.weighted_sites)]

    def objective_record(self, objective, batch: Batch, num_data: int, model=None, guide=None) -> LossRecord:
        """The :class:`LossRecord` of ``objective`` (a Pyro ELBO; with ``loss_terms``, its terms) over
        ``model`` and ``guide`` (default this family's) on a batch of a data set of ``num_data``."""
        model, guide = model or self.model, guide or self.guide
        args = self.program_args(batch)
        if hasattr(objective, "loss_terms"):
            terms = objective.loss_terms(model, guide, *args, num_data=num_data)
        else:
            terms = {"loss": objective.differentiable_loss(model, guide, *args, num_data=num_data)}
        loss = terms.pop("loss") / num_data
        terms = {k: v.detach() / num_data for k, v in terms.items()}
        terms.setdefault("objective", -loss.detach())
        return LossRecord(loss, terms, int(args[0].shape[0]))

    @torch.no_grad()
    def held_out_terms(self, objective, data: ImageDataset, batch_size: int = 1000) -> dict[str, float]:
        """The mean per observation of ``objective``'s terms over ``data`` (one pass in eval mode, no
        gradients, nats per observation): the default validation metrics."""
        device = next(self.parameters()).device
        sums: dict[str, float] = {}
        with eval_mode(self), pyro.validation_enabled(False):
            for batch in data.batches(batch_size, shuffle=False):
                batch = {k: v.to(device) for k, v in batch.items()}
                args = self.program_args(batch)
                if hasattr(objective, "loss_terms"):
                    terms = objective.loss_terms(self.model, self.guide, *args)
                else:
                    terms = {"loss": objective.differentiable_loss(self.model, self.guide, *args)}
                terms.setdefault("objective", -terms["loss"])
                for k, v in terms.items():
                    if k != "loss":
                        sums[k] = sums.get(k, 0.0) + v.item()
        return {k: v / len(data) for k, v in sums.items()}

    def num_observed_dims(self, *args) -> int:
        """How many numbers one data point's observed sites hold (for bits per dimension): by default all
        of the first argument's, ``prod(x.shape[1:])``; with a mask among the arguments (missing entries), the
        mean number of observed entries per data point."""
        x = args[0]
        mask = next((a for a in args[1:] if isinstance(a, torch.Tensor) and a.shape == x.shape
                     and a.is_floating_point()), None)
        if mask is not None and mask.numel():
            return float(mask.flatten(1).sum(1).mean())
        return math.prod(x.shape[1:])

    # --- optional capabilities -----------------------------------------------------------------------------

    def guide_features(self, *args) -> torch.Tensor:
        """The amortized guide's per-data-point parameters h (what its guide family reads), ``(batch,
        num_features)``: diagnostics replace them by free parameters per data point (the amortization
        gap). Raises :class:`~pyrovae.errors.UnsupportedError` for a family without them."""
        raise UnsupportedError(f"the {self.kind} model does not expose its guide's per-data-point parameters "
                               "(guide_features), which the amortization gap needs")


# --- the registry ---------------------------------------------------------------------------------------------

FAMILIES: dict[str, type[Family]] = {}


def register_family(cls: type[Family]) -> type[Family]:
    """Register a :class:`Family` subclass under its ``kind`` (use as a class decorator), so that run folders
    of that kind reload, evaluate, sample and are diagnosed. Registering a kind again replaces it.

    Raises:
        ConfigError: ``cls`` is not a Family subclass with a ``kind`` and a ``config_class``.
    """
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise ConfigError(f"register_family takes a subclass of pyrovae.models.Family, got {cls!r}")
    kind, config_class = getattr(cls, "kind", None), getattr(cls, "config_class", None)
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{cls.__name__} needs a class attribute kind, a non-empty string such as 'my-vae'")
    if not (isinstance(config_class, type) and issubclass(config_class, ModelConfig)):
        raise ConfigError(f"{cls.__name__} needs a class attribute config_class, a subclass of "
                          "pyrovae.models.ModelConfig")
    FAMILIES[kind] = cls
    return cls


def family_for(kind: str) -> type[Family]:
    """The family registered under ``kind``.

    Raises:
        ConfigError: no family of that kind is registered (naming those that are).
    """
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ConfigError(f"no model family of kind {kind!r} is registered; known kinds: {', '.join(FAMILIES)}. "
                          "A family of your own must be registered (pyrovae.register_family) before its run "
                          "folders are loaded") from None


def config_from_dict(d: dict) -> ModelConfig:
    """The model config that the dict ``d`` describes, of the class of its ``kind``.

    Raises:
        ConfigError: no ``kind``, an unknown kind, or invalid settings.
    """
    if not isinstance(d, dict) or "kind" not in d:
        raise ConfigError(f"a model config needs a 'kind' naming its family ({', '.join(FAMILIES)}), got {d!r}")
    return family_for(d["kind"]).config_class.from_dict(d)


def check_labels(y, batch: int | None = None, num_classes: int = 10) -> None:
    """Raise one :class:`~pyrovae.errors.DataError` unless ``y`` is a ``(batch,)`` integer tensor of classes
    in ``[0, num_classes)`` (:class:`~pyrovae.errors.ArgumentTypeError` when it is not a tensor): the
    label check of every family that takes labels.

    Args:
        y: the labels.
        batch: the number of data points they label; checked when given.
        num_classes: the number of classes (10 for MNIST digits).
    """
    if y is None:
        raise DataError("this model takes labels, and the data has none: give the source its labels (a table's "
                        "--data-option label=COLUMN, class sub-folders of images, 'y' in an .npz or .pt) or train an "
                        "unconditional VAE")
    if not isinstance(y, torch.Tensor):
        raise ArgumentTypeError(f"labels must be a torch.Tensor of int64 classes in [0, {num_classes}), got "
                                f"{type(y).__name__}; convert them with torch.as_tensor(y, dtype=torch.long)")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise DataError(f"labels must have an integer dtype (torch.int64), got {y.dtype}; pass class "
                        f"indices in [0, {num_classes}), not one-hot vectors or probabilities "
                        "(convert with y.long() if they hold whole numbers)")
    expected = f"({batch},)" if batch is not None else "(batch,)"
    if y.dim() != 1:
        raise DataError(f"labels must have shape {expected}, one class index per data point, got shape "
                        f"{tuple(y.shape)}; pass class indices, not one-hot vectors (y.argmax(-1) "
                        "converts them)")
    if batch is not None and y.shape[0] != batch:
        raise DataError(f"got {y.shape[0]} labels for {batch} data points; pass one label per data point")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)]
        raise DataError(f"labels must be in [0, {num_classes}), got {bad.numel()} outside it (e.g. "
                        f"{bad[0].item()}); the classes are 0, 1, ..., {num_classes - 1}")


__all__ = ["FAMILIES", "Family", "LossRecord", "ModelConfig", "Stage", "check_labels", "config_from_dict", "data_plate",
           "family_for", "register_family"]
