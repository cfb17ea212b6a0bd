"""Priors p(z): small modules that return a Pyro distribution over z.

The contract (what :class:`pyrovae.VAE` relies on, and all a user's own prior must do):

* a prior is a :class:`torch.nn.Module` (so learned parameters train and save with the model and
  buffers follow ``.to(device)``) with an attribute ``z_dim``;
* calling it with no arguments returns a :class:`pyro.distributions.TorchDistribution` with
  ``event_shape == (z_dim,)`` and empty ``batch_shape``; the model samples it inside its data plate,
  which broadcasts it over the batch.
* optionally ``attach(vae)``: called once by :class:`pyrovae.VAE` after its encoder and guide family
  exist, for priors defined through them (the VampPrior's mixture of q(z|u_k)). Keep a plain reference
  (``object.__setattr__``), not a submodule, so the encoder's parameters are not registered twice.

Example, a Student-t prior with learned degrees of freedom::

    class StudentTPrior(torch.nn.Module):
        def __init__(self, z_dim):
            super().__init__()
            self.z_dim = z_dim
            self.raw_df = torch.nn.Parameter(torch.zeros(()))
            self.register_buffer("zeros", torch.zeros(z_dim))

        def forward(self):
            df = torch.nn.functional.softplus(self.raw_df) + 1.0
            return dist.StudentT(df, self.zeros, 1.0).to_event(1)
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StandardNormal(nn.Module):
    """p(z) = N(0, I) over ``z_dim`` dimensions (Kingma & Welling 2014)."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        """``Normal(0, 1).to_event(1)``: batch shape ``()``, event shape ``(z_dim,)``."""
        return dist.Normal(self.loc, self.scale).to_event(1)


def check_prior(prior: nn.Module, z_dim: int) -> None:
    """Raise ``ValueError`` unless ``prior()`` has event shape ``(z_dim,)`` and no batch shape."""
    d = prior()
    if tuple(d.event_shape) != (z_dim,) or tuple(d.batch_shape) != ():
        raise ValueError(f"the prior {type(prior).__name__} gives a distribution with batch shape "
                         f"{tuple(d.batch_shape)} and event shape {tuple(d.event_shape)}; a prior must "
                         f"give batch shape () and event shape (z_dim,) = ({z_dim},)")


PRIORS = {"standard_normal": StandardNormal}
