"""Likelihoods p(x|z): small modules that turn a decoder's output into a Pyro distribution over x.

The contract (what :class:`pyrovae.VAE` relies on, and all a user's own likelihood must do):

* ``num_params``: how many decoder outputs it needs per data dimension (1 for Bernoulli logits,
  2 for a Normal's location and scale, ...). The decoder then outputs ``(*batch, num_params, *x_shape)``.
* ``forward(params)`` returns a distribution with ``batch_shape == params.shape[:-1-len(x_shape)]``
  and ``event_shape == x_shape`` (use ``.to_event(len(x_shape))``).
* ``check_support(x)`` raises ``ValueError`` with an actionable message when data ``x`` lies outside
  the distribution's support; the model calls it once per public entry point, not per step.
* optionally ``init_bias(output_layer, x)`` sets the decoder's output bias from the data mean.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


def _check_finite(x: torch.Tensor) -> None:
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert it with x.float()")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"x holds {bad} NaN or infinite values; clean the data before training or evaluating")


class Bernoulli(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(logit_d)) for binary images, ``num_params = 1``.

    Log-likelihoods are in nats per image (summed over all ``x_shape`` dimensions).
    """

    num_params = 1

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, 1, *x_shape)`` logits -> distribution with event shape ``x_shape``."""
        return dist.Bernoulli(logits=params.squeeze(-1 - len(self.x_shape)),
                              validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``x`` is not finite floats in {0, 1}."""
        _check_finite(x)
        if not ((x == 0) | (x == 1)).all():
            lo, hi = x.min().item(), x.max().item()
            raise ValueError(f"the Bernoulli likelihood needs x in {{0, 1}}, got values in [{lo:g}, {hi:g}]; "
                             "binarize the data (binarization='dynamic' or 'static') or use a likelihood for "
                             "continuous values")

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Set the decoder's output bias to the logit of the mean of ``x`` (per pixel where the layer
        allows), so training starts from the data's marginal instead of p = 0.5."""
        mean = x.float().mean(0).clamp(1e-3, 1 - 1e-3)
        logit = torch.log(mean) - torch.log1p(-mean)
        bias = output_layer.bias
        if bias.numel() == logit.numel():
            bias.copy_(logit.reshape(bias.shape))
        else:  # a conv layer has one bias per channel
            bias.fill_(logit.mean().item())


LIKELIHOODS = {"bernoulli": Bernoulli}
