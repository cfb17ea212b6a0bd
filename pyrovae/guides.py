"""Guide families q(z|x): modules that turn an encoder's features into a Pyro distribution over z.

The contract: ``num_features(z_dim)`` says how many encoder outputs the family reads; ``forward(h)``
with ``h (*batch, num_features)`` returns a distribution with batch shape ``*batch`` and event shape
``(z_dim,)``; ``params(h)`` returns the named parameters of q (what :meth:`pyrovae.VAE.encode` gives).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F


class DiagonalNormal(nn.Module):
    """q(z|x) = N(mu(x), diag(sigma(x)^2)), with sigma = softplus(raw) + ``min_scale``.

    The softplus keeps gradients finite where exp would overflow; ``min_scale`` keeps log q finite.
    """

    def __init__(self, z_dim: int, min_scale: float = 1e-4):
        super().__init__()
        self.z_dim, self.min_scale = z_dim, min_scale

    @staticmethod
    def num_features(z_dim: int) -> int:
        return 2 * z_dim

    def params(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """``h (*batch, 2 z_dim) -> {"loc": (*batch, z_dim), "scale": (*batch, z_dim)}``."""
        loc, raw = h.split(self.z_dim, dim=-1)
        return {"loc": loc, "scale": F.softplus(raw) + self.min_scale}

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        p = self.params(h)
        return dist.Normal(p["loc"], p["scale"], validate_args=False).to_event(1)


GUIDES = {"diagonal_normal": DiagonalNormal}
