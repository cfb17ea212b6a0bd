"""The run config: a model config (one per family), the trainer's config, the data config and the
evaluation settings, composed; it is saved as ``config.json`` and in every checkpoint, so a run folder
alone rebuilds its model (:func:`pyrovae.training.load_run`).

A family can change the trainer's defaults (M2 trains with a constant learning rate of 3e-3 and
unlabelled batches of 200, see :attr:`pyrovae.models.Family.trainer_defaults`): a trainer setting not
given explicitly takes the family's default.
"""

from __future__ import annotations

from typing import Literal, Optional

import pydantic
from pydantic import Field, PositiveFloat, PositiveInt, SerializeAsAny

from ..data.config import DataConfig
from ..errors import ConfigError
from ..inference.objectives import ELBOS
from ..models.base import FAMILIES, ModelConfig, family_for
from ..models.vae import VAEConfig
from ..settings import Device, Seed, Settings, describe


class TrainerConfig(Settings):
    """How the one trainer (:func:`pyrovae.fit`) trains any family.

    The optimizer is Adam at ``lr``, annealed by a cosine schedule to ``lr * final_lr_ratio`` over each
    stage when ``lr_schedule == "cosine"``. The objective is ``elbo`` with ``num_particles`` draws
    (``"IWAE"``: the importance-weighted bound with K = ``num_particles``, Burda et al. 2016);
    ``free_bits > 0`` floors each latent dimension's batch-averaged KL at that many nats (Kingma et al.
    2016), refused with IWAE, which has no separate KL term. The KL term is weighed by ``beta`` (1: the
    ELBO; beta-VAE otherwise), reached by a linear warm-up from 0 over ``kl_warmup_epochs`` epochs.
    With a validation split, ``early_stopping_patience`` ends a stage after that many epochs without
    improvement of its monitored validation metric; the best checkpoint is kept as ``best.pt`` beside
    ``checkpoint.pt``. ``seed`` seeds the weights, the data order, every random draw and the splits.
    ``tensorboard`` also writes the history as TensorBoard event files (``metrics.csv`` is always written).
    """

    epochs: PositiveInt = Field(100, description="epochs (passes over the training data)")
    batch_size: PositiveInt = Field(100, description="mini-batch size (per process under torchrun)")
    lr: PositiveFloat = Field(1e-3, description="Adam learning rate")
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="constant, or a half cosine from lr to lr * final_lr_ratio over the run")
    final_lr_ratio: float = Field(0.01, gt=0, le=1, description="the cosine schedule's last learning rate over "
                                                                 "its first")
    elbo: Literal[ELBOS] = Field("TraceMeanField_ELBO",
                                 description="the objective: TraceMeanField_ELBO (analytic KL where it exists), "
                                             "Trace_ELBO (Monte Carlo KL) or IWAE (K = num_particles)")
    num_particles: PositiveInt = Field(1, description="draws of z per data point (K for IWAE)")
    free_bits: float = Field(0.0, ge=0,
                             description="floor on each latent dimension's KL, nats per dimension (0: off; not "
                                         "with IWAE)")
    beta: float = Field(1.0, gt=0, description="weight on the KL term (1: the ELBO)")
    kl_warmup_epochs: float = Field(10.0, ge=0,
                                    description="epochs over which the KL weight rises linearly to beta")
    early_stopping_patience: Optional[PositiveInt] = Field(
        None, description="end a stage after this many epochs without validation improvement (needs a "
                          "validation split; None: never)")
    seed: Seed = Field(0, description="seed of the weights, the data order, the splits and every draw")
    device: Device = Field("cpu", description="cpu, cuda or cuda:N")
    tensorboard: bool = Field(False, description="also write the history as TensorBoard event files to "
                                                 "RUN_DIR/tensorboard (pip install 'pyrovae[tensorboard]')")

    @pydantic.model_validator(mode="after")
    def _free_bits_needs_an_elbo(self) -> "TrainerConfig":
        if self.free_bits > 0 and self.elbo == "IWAE":
            raise ValueError(f"free_bits={self.free_bits} floors the ELBO's KL term, which the IWAE bound does "
                             "not have; use free_bits=0 with elbo='IWAE', or free bits with TraceMeanField_ELBO")
        return self


class EvaluationConfig(Settings):
    """What a run measures on its test split when training ends (``pyrovae train``)."""

    num_samples: int = Field(1000, ge=0, description="importance samples K for the test log-likelihood at the "
                                                     "end (0: skip it)")


def _with_defaults(trainer: TrainerConfig, defaults: dict) -> TrainerConfig:
    """``trainer`` with a family's ``defaults`` for the settings it was not given; those stay out of its
    ``model_fields_set``, which keeps saying what was given (``--resume`` compares only those)."""
    unset = {k: v for k, v in defaults.items() if k not in trainer.model_fields_set}
    if not unset:
        return trainer
    checked = TrainerConfig(**{**trainer.model_dump(), **unset})
    return TrainerConfig.model_construct(_fields_set=set(trainer.model_fields_set), **checked.model_dump())


class RunConfig(Settings):
    """Everything a run depends on: ``model`` (its ``kind`` picks the family), ``trainer``, ``data`` and
    ``evaluation``. Defaults: the 50-d MLP VAE of the README.

    Trainer settings not given explicitly take the family's defaults
    (:attr:`pyrovae.models.Family.trainer_defaults`); a model config may be given as a dict with its
    ``kind``.
    """

    model: SerializeAsAny[ModelConfig] = Field(default_factory=VAEConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _compose(cls, values):
        if not isinstance(values, dict):
            return values
        model = values.get("model")
        if model is None:
            model = VAEConfig()
        elif isinstance(model, dict):
            if "kind" not in model:
                raise ValueError(f"model needs a 'kind' naming its family ({', '.join(FAMILIES)}), got {model!r}")
            try:
                model = family_for(model["kind"]).config_class.model_validate(model)
            except pydantic.ValidationError as e:
                raise ValueError(describe(e, prefix="model.")) from None
        elif not isinstance(model, ModelConfig):
            raise ValueError(f"model must be a model config (e.g. pyrovae.VAEConfig()) or a dict with its kind, "
                             f"got {type(model).__name__}")
        data = values.get("data")
        missing = data.get("missing") if isinstance(data, dict) else getattr(data, "missing", None)
        if (missing == "mask" and "masked_inputs" in type(model).model_fields and model.kind == "vae"
                and "masked_inputs" not in model.model_fields_set and getattr(model, "network", "mlp") == "mlp"):
            # the encoder reads the mask beside the zero-filled data (model_copy: the fields set stay those given)
            model = model.model_copy(update={"masked_inputs": True})
        defaults = family_for(model.kind).trainer_defaults
        trainer = values.get("trainer")
        if trainer is None:
            trainer = _with_defaults(TrainerConfig(), defaults)
        elif isinstance(trainer, dict):
            try:
                trainer = _with_defaults(TrainerConfig(**trainer), defaults)
            except (pydantic.ValidationError, ConfigError):  # validated as the field: errors name trainer.<field>
                trainer = {**defaults, **trainer}
        elif isinstance(trainer, TrainerConfig):
            trainer = _with_defaults(trainer, defaults)
        return {**values, "model": model, "trainer": trainer}

    @property
    def kind(self) -> str:
        """The model family's kind."""
        return self.model.kind
