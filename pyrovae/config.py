"""Run configuration: every setting of a run, validated, and serialized to JSON with its checkpoint so
that a run folder alone is enough to rebuild the model (the pattern of pythae's config dataclasses)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pydantic
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .priors import PRIORS


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the field and what it accepts."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_device(v: str) -> str:
    if v != "cpu" and not v.startswith("cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {v!r}")
    return v


#: A device name: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
Device = Annotated[str, pydantic.AfterValidator(_check_device)]


class SavedConfig(_Strict):
    """A frozen, strict config that round-trips through JSON: the base of every run's ``config.json``
    (:class:`RunConfig`, and the M2 and structured-output configs)."""

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict):
        """Raises :class:`ConfigError` naming each bad field."""
        return make_config(cls, **d)

    def save(self, path: str | Path) -> None:
        from .checkpoint import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path):
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the run config ({e})") from e
        return cls.from_dict(d)


class ModelConfig(_Strict):
    """What :func:`pyrovae.config.build_model` needs to rebuild a :class:`pyrovae.VAE`, or with
    ``conditional`` a label-conditional :class:`pyrovae.conditional.CVAE` (p(z) p(x | z, y), labels y in
    ``0 .. num_classes - 1``)."""

    network: Literal["mlp", "conv"] = "mlp"
    z_dim: PositiveInt = 50
    hidden: tuple[PositiveInt, ...] = (512, 512)
    x_shape: tuple[PositiveInt, ...] = (1, 28, 28)
    prior: str = "standard_normal"
    prior_options: dict[str, Any] = Field(default_factory=dict)
    likelihood: str = "bernoulli"
    likelihood_options: dict[str, Any] = Field(default_factory=dict)
    guide: str = "diagonal_normal"
    guide_options: dict[str, Any] = Field(default_factory=dict)
    conditional: bool = False
    num_classes: int = Field(10, ge=2)

    @pydantic.field_validator("prior")
    @classmethod
    def _known_prior(cls, v: str) -> str:
        return _known(v, PRIORS, "prior")

    @pydantic.field_validator("likelihood")
    @classmethod
    def _known_likelihood(cls, v: str) -> str:
        return _known(v, LIKELIHOODS, "likelihood")

    @pydantic.field_validator("guide")
    @classmethod
    def _known_guide(cls, v: str) -> str:
        return _known(v, GUIDES, "guide")

    @pydantic.model_validator(mode="after")
    def _known_options(self) -> "ModelConfig":
        for what, registry in (("prior", PRIORS), ("likelihood", LIKELIHOODS), ("guide", GUIDES)):
            _check_options(registry[getattr(self, what)], getattr(self, f"{what}_options"), what)
        return self

    @pydantic.model_validator(mode="after")
    def _conditional_prior(self) -> "ModelConfig":
        if self.conditional and hasattr(PRIORS[self.prior], "attach"):
            raise ValueError(f"prior {self.prior!r} is built from an unconditional encoder, which a conditional "
                             "model does not have; choose another prior or drop conditional")
        return self


def _check_options(cls: type, options: dict, what: str) -> None:
    """Raise ``ValueError`` naming the options that ``cls``'s constructor does not take."""
    params = list(inspect.signature(cls).parameters.values())[1:]  # the first is z_dim or x_shape
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{what} {cls.__name__} has no option {', '.join(map(repr, unknown))}; it takes "
                         f"{', '.join(accepted) or 'no options'}")


def _known(value: str, registry: dict, what: str) -> str:
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(registry)}")
    return value


class RunConfig(SavedConfig):
    """Everything a training run depends on. Defaults are the 50-d MLP VAE of the README.

    The optimizer is Adam at ``lr``, annealed by a cosine schedule to ``lr * final_lr_ratio`` over
    ``epochs`` when ``lr_schedule == "cosine"``. The KL term is weighed by ``beta`` (1: the ELBO;
    beta-VAE otherwise), reached by a linear warm-up from 0 over ``kl_warmup_epochs`` epochs.
    ``kl_term`` states how the KL term is computed: :func:`pyrovae.train.fit` fills it in (``analytic``
    where ``elbo`` is ``TraceMeanField_ELBO`` and the guide and prior have a closed-form KL, else
    ``monte_carlo``); a value given by hand is replaced.
    ``elbo="IWAE"`` trains on the importance-weighted bound with K = ``num_particles`` (Burda et al.
    2016); ``free_bits > 0`` (nats per latent dimension; 0 = off) floors each latent dimension's
    batch-averaged KL at that value (Kingma et al. 2016; :class:`pyrovae.objectives.FreeBitsELBO`), and
    is refused with ``IWAE``, which has no separate KL term.
    """

    model: ModelConfig = Field(default_factory=ModelConfig)
    elbo: Literal["TraceMeanField_ELBO", "Trace_ELBO", "IWAE"] = "TraceMeanField_ELBO"
    num_particles: PositiveInt = 1
    free_bits: float = Field(0.0, ge=0, allow_inf_nan=False)
    epochs: PositiveInt = 100
    beta: float = Field(1.0, gt=0)
    kl_warmup_epochs: float = Field(10.0, ge=0)
    batch_size: PositiveInt = 100
    lr: PositiveFloat = 1e-3
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    final_lr_ratio: float = Field(0.01, gt=0, le=1)
    binarization: Literal["dynamic", "static", "none", "dequantize"] = "dynamic"
    validation_size: int = Field(0, ge=0)
    train_size: Optional[PositiveInt] = None
    seed: int = 0
    device: Device = "cpu"
    data_dir: Optional[str] = None
    eval_num_samples: PositiveInt = 1000
    kl_term: Optional[Literal["analytic", "monte_carlo"]] = None

    @pydantic.model_validator(mode="after")
    def _free_bits_needs_an_elbo(self) -> "RunConfig":
        if self.free_bits > 0 and self.elbo == "IWAE":
            raise ValueError(f"free_bits={self.free_bits} floors the ELBO's KL term, which the IWAE bound does "
                             "not have; use free_bits=0 with elbo='IWAE', or free bits with TraceMeanField_ELBO")
        return self


def make_config(cls: type[BaseModel], **values) -> BaseModel:
    """``cls(**values)``, with pydantic's errors turned into one :class:`ConfigError` that names each bad
    field, the value it got and what it accepts."""
    try:
        return cls(**values)
    except pydantic.ValidationError as e:
        lines = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"]) or "config"
            got = err.get("input")
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown option"
            lines.append(f"{field}: {msg}" if isinstance(got, dict) else f"{field}={got!r}: {msg}")
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None


def build_model(config: ModelConfig):
    """The :class:`pyrovae.VAE` (or, with ``config.conditional``, the :class:`pyrovae.conditional.CVAE`)
    that ``config`` describes."""
    from .models import VAE
    if config.conditional:
        from .conditional import CVAE
        return CVAE(
            z_dim=config.z_dim, x_shape=config.x_shape, num_classes=config.num_classes, network=config.network,
            hidden=config.hidden, prior=PRIORS[config.prior](config.z_dim, **config.prior_options),
            likelihood=LIKELIHOODS[config.likelihood](config.x_shape, **config.likelihood_options),
            guide_family=GUIDES[config.guide](config.z_dim, **config.guide_options),
        )
    return VAE(
        z_dim=config.z_dim, x_shape=config.x_shape, network=config.network, hidden=config.hidden,
        prior=PRIORS[config.prior](config.z_dim, **config.prior_options),
        likelihood=LIKELIHOODS[config.likelihood](config.x_shape, **config.likelihood_options),
        guide_family=GUIDES[config.guide](config.z_dim, **config.guide_options),
    )
