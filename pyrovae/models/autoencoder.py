"""Autoencoders as Pyro programs, beside the VAE: the same networks, likelihood plug-ins, trainer and run folders.

A deterministic autoencoder is the VAE's pair of programs with a point mass for the guide and no prior term:

    model:  z_n ~ p(z), masked out of the log density;   x_n ~ p(x | decoder(z_n))
    guide:  z_n ~ Delta(encoder(x~_n))

so the ELBO is exactly log p(x | z = encoder(x~)): the cross-entropy for a Bernoulli likelihood, a scaled squared
error for a Normal one (``normal`` with a fixed scale s: -||x - x_hat||^2 / 2 s^2 + const), with no KL term. The
variants differ in what the encoder reads and what is added to the loss (per data point, nats-like units of
the reconstruction term):

* ``plain``: x~ = x.
* ``denoising`` (Vincent, Larochelle, Bengio & Manzagol 2008): x~ is a corruption of x drawn afresh at every
  training step (``masking``: a fraction of the inputs set to 0; ``gaussian``: N(0, level^2) noise added;
  ``salt_and_pepper``: a fraction set to 0 or 1 at random); the likelihood scores the clean x. The corruption
  acts in the guide only, and only in training mode: never on the target, never at test time.
* ``sparse``: + weight * sum_j |z_j| (``sparsity="l1"``), or + weight * sum_j KL(rho || rho_hat_j) with rho_hat_j the
  batch mean of sigmoid(z_j) (``sparsity="kl"``, Ng 2011).
* ``contractive`` (Rifai, Vincent, Muller, Glorot & Bengio 2011): + weight * ||d encoder(x) / dx||_F^2, computed with
  ``z_dim`` vector-Jacobian products batched in one backward pass (:func:`jacobian_frobenius`).

An autoencoder defines no likelihood of x (``defines_likelihood = False``): the evaluator reports its
reconstruction error, not an importance-sampled log p(x). ``sample(n)`` decodes z ~ N(0, I), which is what the
question "why can an autoencoder not generate?" is about; :func:`pyrovae.evaluation.samplers.fit_latent_gmm`
fits a mixture to the codes instead (Ghosh et al. 2020).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pydantic
import pyro
import pyro.distributions as dist
import torch
from pydantic import Field

from ..components.plugins import build_plugin
from ..errors import ConfigError
from .base import LossRecord, data_plate, register_family
from .vae import VAE, VAEConfig


class PointMass(torch.nn.Module):
    """The guide family of an autoencoder: q(z | x) = Delta(h(x)), with ``num_features(z_dim) = z_dim``."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    @staticmethod
    def num_features(z_dim: int) -> int:
        return z_dim

    def params(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """``h (*batch, z_dim) -> {"loc": h}``: the code itself."""
        return {"loc": h}

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Delta(h, event_dim=1)


class AutoencoderConfig(VAEConfig):
    """What :meth:`Autoencoder.from_config` needs (the VAE's settings, less the guide family, plus the variant)."""

    kind: Literal["autoencoder"] = "autoencoder"
    variant: Literal["plain", "denoising", "sparse", "contractive"] = Field(
        "plain", description="plain, denoising (corrupted input, clean target), sparse (penalty on the codes) or "
                             "contractive (penalty on the encoder's Jacobian)")
    corruption: Literal["masking", "gaussian", "salt_and_pepper"] = Field(
        "masking", description="denoising: how the input is corrupted")
    corruption_level: float = Field(0.3, ge=0, description="denoising: the fraction of inputs corrupted (masking, "
                                                           "salt_and_pepper) or the noise's standard deviation")
    sparsity: Literal["l1", "kl"] = Field("l1", description="sparse: an L1 penalty on the codes, or the KL from "
                                                            "rho to the mean of sigmoid(code)")
    sparsity_target: float = Field(0.05, gt=0, lt=1, description="sparse, kl: the target mean activation rho")
    penalty_weight: float = Field(0.1, ge=0, description="sparse and contractive: the penalty's weight")
    guide: Literal["point_mass"] = Field("point_mass", description="a point mass on the code (an autoencoder's)")
    guide_options: dict[str, Any] = Field(default_factory=dict, description="none: a point mass has no options")
    plugin_kinds: ClassVar[tuple[str, ...]] = ("prior", "likelihood")

    @pydantic.model_validator(mode="after")
    def _no_guide_options(self):
        if self.guide_options:
            raise ValueError(f"guide_options={self.guide_options!r}: an autoencoder's guide, a point mass on the "
                             "code, has no options")
        return self

    def build_plugins(self) -> dict:
        """``{"prior", "likelihood"}`` built from the names and options (the guide is the point mass)."""
        return {"prior": build_plugin("prior", self.prior, self.z_dim, self.prior_options),
                "likelihood": build_plugin("likelihood", self.likelihood, tuple(self.x_shape), self.likelihood_options)}


def corrupt(x: torch.Tensor, kind: str, level: float) -> torch.Tensor:
    """A corrupted copy of ``x (batch, *x_shape)`` (Vincent et al. 2008), drawn with torch's generator.

    ``masking``: each entry set to 0 with probability ``level``; ``gaussian``: + N(0, level^2) noise;
    ``salt_and_pepper``: each entry with probability ``level`` set to 0 or 1 with equal odds.
    """
    if kind == "masking":
        return x * (torch.rand_like(x) >= level).to(x.dtype)
    if kind == "gaussian":
        return x + level * torch.randn_like(x)
    if kind == "salt_and_pepper":
        hit = torch.rand_like(x) < level
        return torch.where(hit, (torch.rand_like(x) < 0.5).to(x.dtype), x)
    raise ConfigError(f"corruption {kind!r} is unknown; choose masking, gaussian or salt_and_pepper")


def jacobian_frobenius(encoder, x: torch.Tensor) -> torch.Tensor:
    """||d encoder(x) / dx||_F^2 per data point, ``(batch,)``, differentiable (for the contractive penalty).

    The rows of the Jacobian come from ``z_dim`` vector-Jacobian products, e_k^T J, batched into one backward
    pass (``is_grads_batched``), so the cost is that of ``z_dim`` backward passes through the encoder, not of
    one per input dimension. The encoder must treat data points independently (no batch norm in train mode).
    """
    x = x.detach().requires_grad_(True)
    h = encoder(x)
    z_dim = h.shape[-1]
    basis = torch.eye(z_dim, dtype=h.dtype, device=h.device).unsqueeze(1).expand(z_dim, *h.shape)
    (rows,) = torch.autograd.grad(h, x, grad_outputs=basis, is_grads_batched=True, create_graph=True)
    return rows.pow(2).flatten(2).sum(dim=(0, 2))


@register_family
class Autoencoder(VAE):
    """An autoencoder (plain, denoising, sparse or contractive) as a Pyro model and a point-mass guide; see the
    module docstring. Takes the VAE's arguments (``z_dim``, ``x_shape``, ``network``, ``hidden``, ``prior`` for
    ``sample``, ``likelihood``) and those of :class:`AutoencoderConfig`.

    Raises:
        ConfigError: an unknown variant or corruption.
    """

    kind = "autoencoder"
    config_class = AutoencoderConfig
    defines_likelihood: ClassVar[bool] = False
    weighted_sites: ClassVar[tuple] = ()  # no KL term: beta and the KL warm-up have nothing to weigh
    takes_mask: ClassVar[bool] = False
    log_likelihood_of: ClassVar[str] = "none (an autoencoder defines no density of x)"

    def __init__(self, *args, variant: str = "plain", corruption: str = "masking", corruption_level: float = 0.3,
                 sparsity: str = "l1", sparsity_target: float = 0.05, penalty_weight: float = 0.1, **kwargs):
        kwargs.pop("guide_family", None)
        z_dim = kwargs.get("z_dim", args[0] if args else 50)
        super().__init__(*args, guide_family=PointMass(int(z_dim)), **kwargs)
        if variant not in ("plain", "denoising", "sparse", "contractive"):
            raise ConfigError(f"variant {variant!r} is unknown; choose plain, denoising, sparse or contractive")
        if corruption not in ("masking", "gaussian", "salt_and_pepper"):
            raise ConfigError(f"corruption {corruption!r} is unknown; choose masking, gaussian or salt_and_pepper")
        self.variant, self.corruption, self.corruption_level = variant, corruption, float(corruption_level)
        self.sparsity, self.sparsity_target = sparsity, float(sparsity_target)
        self.penalty_weight = float(penalty_weight)

    @classmethod
    def from_config(cls, config: AutoencoderConfig) -> "Autoencoder":
        plugins = config.build_plugins()
        model = cls(z_dim=config.z_dim, x_shape=config.x_shape, network=config.network, hidden=config.hidden,
                    variant=config.variant, corruption=config.corruption, corruption_level=config.corruption_level,
                    sparsity=config.sparsity, sparsity_target=config.sparsity_target,
                    penalty_weight=config.penalty_weight, **plugins)
        model.config = config
        return model

    # --- the Pyro programs ---------------------------------------------------------------------------

    def model(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """p(x | z) for a batch ``x (batch, *x_shape)``; z's prior is in the program (for ``sample``) but masked
        out of the log density, so the ELBO is the reconstruction log-likelihood alone."""
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior().mask(False))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """z = encoder(x~), a point mass; x~ is x corrupted in training mode for the denoising variant."""
        if self.variant == "denoising" and self.training:
            x = corrupt(x, self.corruption, self.corruption_level)
        with data_plate(x, num_data):
            return pyro.sample("z", self.guide_family(self.guide_features(x)))

    # --- the loss ------------------------------------------------------------------------------------

    def penalty(self, x: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """The variant's penalty per data point ``(batch,)`` and its name (zeros and None for plain/denoising)."""
        if self.variant == "sparse":
            z = self.guide_features(x)
            if self.sparsity == "l1":
                return self.penalty_weight * z.abs().sum(-1), "sparsity"
            rho, rho_hat = self.sparsity_target, torch.sigmoid(z).mean(0).clamp(1e-6, 1 - 1e-6)
            kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
            return self.penalty_weight * kl.sum().expand(x.shape[0]), "sparsity"
        if self.variant == "contractive":
            return self.penalty_weight * jacobian_frobenius(self.guide_features, x), "contractive"
        return x.new_zeros(x.shape[0]), None

    def objective_record(self, objective, batch, num_data: int, model=None, guide=None) -> LossRecord:
        """The ELBO's record (its reconstruction term; the KL term is 0) plus the variant's penalty, per data
        point: ``loss = -log p(x | z = encoder(x~)) + penalty``."""
        record = super().objective_record(objective, batch, num_data, model, guide)
        penalty, name = self.penalty(batch["x"])
        if name is None:
            return record
        value = penalty.mean()
        terms = {**record.terms, name: value.detach(), "objective": record.terms["objective"] - value.detach()}
        return LossRecord(record.loss + value, terms, record.num_observations)

    # --- what the evaluator reports ---------------------------------------------------------------------

    @torch.no_grad()
    def test_metrics(self, data) -> dict[str, torch.Tensor]:
        """Per data point of ``data`` (an :class:`~pyrovae.data.ArrayDataset`): see
        :meth:`pyrovae.VAE.reconstruction_error`."""
        device = next(self.parameters()).device
        parts = [self.reconstruction_error(chunk.to(device)) for chunk in data.chunks(2000)]
        return {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}
