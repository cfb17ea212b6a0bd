"""Encoder and decoder networks: plain ``torch.nn`` modules, nothing probabilistic.

Shapes: an encoder maps images ``(*batch, C, H, W)`` to features ``(*batch, out_features)`` (the raw
parameters of q(z|x), read by a guide family in :mod:`pyrovae.guides`). A decoder maps latents
``(*batch, z_dim)`` to ``(*batch, num_params, C, H, W)``: ``num_params`` numbers per data dimension,
read by a likelihood in :mod:`pyrovae.likelihoods` (1 for Bernoulli logits). Any number of leading
batch dimensions is allowed (Pyro's particle dimensions come first).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

NETWORKS = ("mlp", "conv")


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """``x (*batch, *x_shape) -> features (*batch, out_features)`` through ReLU hidden layers."""

    def __init__(self, x_shape: Sequence[int], hidden: Sequence[int], out_features: int):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.net = _mlp([math.prod(self.x_shape), *hidden, out_features])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(start_dim=x.dim() - len(self.x_shape)))


class MLPDecoder(nn.Module):
    """``z (*batch, z_dim) -> (*batch, num_params, *x_shape)``; hidden sizes mirror the encoder's."""

    def __init__(self, z_dim: int, hidden: Sequence[int], x_shape: Sequence[int], num_params: int = 1):
        super().__init__()
        self.x_shape, self.num_params = tuple(x_shape), num_params
        self.net = _mlp([z_dim, *reversed(tuple(hidden)), num_params * math.prod(self.x_shape)])

    @property
    def output_layer(self) -> nn.Linear:
        return self.net[-1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).unflatten(-1, (self.num_params, *self.x_shape))


class ConvEncoder(nn.Module):
    """Two stride-2 3x3 convolutions (32 and 64 filters, ReLU), then a linear layer.

    ``x (*batch, C, 28, 28) -> (*batch, out_features)``; H and W must be divisible by 4.
    """

    def __init__(self, x_shape: Sequence[int], out_features: int, channels: Sequence[int] = (32, 64)):
        super().__init__()
        c, h, w = x_shape
        self.x_shape = tuple(x_shape)
        self.conv = nn.Sequential(
            nn.Conv2d(c, channels[0], 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(channels[1] * (h // 4) * (w // 4), out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        h = self.conv(x.reshape(-1, *self.x_shape))
        return self.fc(h.flatten(1)).reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: a linear layer to 64x(H/4)x(W/4), then two stride-2 3x3
    transposed convolutions (64 -> 32 -> ``num_params * C``).

    ``z (*batch, z_dim) -> (*batch, num_params, C, H, W)``.
    """

    def __init__(self, z_dim: int, x_shape: Sequence[int], num_params: int = 1,
                 channels: Sequence[int] = (32, 64)):
        super().__init__()
        c, h, w = x_shape
        self.x_shape, self.num_params = tuple(x_shape), num_params
        self.base = (channels[1], h // 4, w // 4)
        self.fc = nn.Sequential(nn.Linear(z_dim, math.prod(self.base)), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(channels[1], channels[0], 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(channels[0], num_params * c, 3, stride=2, padding=1, output_padding=1),
        )

    @property
    def output_layer(self) -> nn.ConvTranspose2d:
        return self.deconv[-1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, *self.base)
        return self.deconv(h).reshape(*batch, self.num_params, *self.x_shape)


def build_networks(network: str, x_shape: Sequence[int], z_dim: int, encoder_features: int,
                   decoder_params: int, hidden: Sequence[int] = (512, 512)) -> tuple[nn.Module, nn.Module]:
    """The encoder/decoder pair named ``network`` (``"mlp"`` or ``"conv"``).

    Raises:
        ValueError: unknown ``network``, or a conv network on images whose sides are not divisible by 4.
    """
    if network == "mlp":
        return (MLPEncoder(x_shape, hidden, encoder_features),
                MLPDecoder(z_dim, hidden, x_shape, decoder_params))
    if network == "conv":
        if len(x_shape) != 3 or x_shape[1] % 4 or x_shape[2] % 4:
            raise ValueError(f"network='conv' needs images (C, H, W) with H and W divisible by 4, got {tuple(x_shape)}")
        return ConvEncoder(x_shape, encoder_features), ConvDecoder(z_dim, x_shape, decoder_params)
    raise ValueError(f"network={network!r} is unknown; choose one of {', '.join(NETWORKS)}")
