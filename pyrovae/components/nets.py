"""Encoder and decoder networks: plain ``torch.nn`` modules, nothing probabilistic.

Shapes: an encoder maps images ``(*batch, C, H, W)`` to features ``(*batch, out_features)`` (the raw
parameters of q(z|x), read by a guide family in :mod:`pyrovae.components.guides`). A decoder maps latents
``(*batch, z_dim)`` to ``(*batch, num_params, C, H, W)``: ``num_params`` numbers per data dimension,
read by a likelihood in :mod:`pyrovae.components.likelihoods` (1 for Bernoulli logits). Any number of leading
batch dimensions is allowed (Pyro's particle dimensions come first).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

NETWORKS = ("mlp", "conv")


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation`` between them (none
    after the last): ``(*batch, sizes[0]) -> (*batch, sizes[-1])``."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """``x (*batch, *x_shape) -> features (*batch, out_features)`` through ReLU hidden layers.

    With ``masked_inputs`` (for data with missing entries) it reads the zero-filled ``x`` concatenated with
    its ``mask (*batch, *x_shape)`` (1 observed, 0 missing; all ones when not given), so that its input layer
    has twice the inputs and tells a missing entry from an observed 0 (Mattei & Frellsen 2019; Nazabal et al.
    2020).
    """

    def __init__(self, x_shape: Sequence[int], hidden: Sequence[int], out_features: int, masked_inputs: bool = False):
        super().__init__()
        self.x_shape, self.masked_inputs = tuple(x_shape), bool(masked_inputs)
        self.net = mlp([math.prod(self.x_shape) * (2 if self.masked_inputs else 1), *hidden, out_features])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        flat = x.flatten(start_dim=x.dim() - len(self.x_shape))
        if self.masked_inputs:
            m = torch.ones_like(flat) if mask is None else mask.to(flat.dtype).flatten(start_dim=mask.dim() -
                                                                                     len(self.x_shape))
            flat = torch.cat([flat, m.expand_as(flat)], -1)
        return self.net(flat)


class MLPDecoder(nn.Module):
    """``z (*batch, z_dim) -> (*batch, num_params, *x_shape)``; hidden sizes mirror the encoder's."""

    def __init__(self, z_dim: int, hidden: Sequence[int], x_shape: Sequence[int], num_params: int = 1):
        super().__init__()
        self.x_shape, self.num_params = tuple(x_shape), num_params
        self.net = mlp([z_dim, *reversed(tuple(hidden)), num_params * math.prod(self.x_shape)])

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


def _check_conv_shape(x_shape: Sequence[int]) -> None:
    if len(x_shape) != 3 or x_shape[1] % 4 or x_shape[2] % 4:
        raise ConfigError(f"network='conv' needs images (C, H, W) with H and W divisible by 4, got {tuple(x_shape)}")


def build_networks(network: str, x_shape: Sequence[int], z_dim: int, encoder_features: int,
                   decoder_params: int, hidden: Sequence[int] = (512, 512),
                   masked_inputs: bool = False,
                   input_shape: Sequence[int] | None = None) -> tuple[nn.Module, nn.Module]:
    """The encoder/decoder pair named ``network`` (``"mlp"`` or ``"conv"``); ``masked_inputs``: the MLP
    encoder also reads the missing-value mask (see :class:`MLPEncoder`); ``input_shape``: the MLP encoder's
    input shape when it is not ``x_shape`` (a likelihood with ``encoder_inputs``, e.g. one-hot categories).

    Raises:
        ConfigError: unknown ``network``, or a conv network on images whose sides are not divisible by 4;
            ``masked_inputs`` with the conv network.
    """
    if masked_inputs and network != "mlp":
        raise ConfigError(f"masked_inputs (an encoder that reads the missing-value mask) is for network='mlp', not "
                          f"{network!r}")
    if network == "mlp":
        return (MLPEncoder(input_shape or x_shape, hidden, encoder_features, masked_inputs),
                MLPDecoder(z_dim, hidden, x_shape, decoder_params))
    if network == "conv":
        _check_conv_shape(x_shape)
        return ConvEncoder(x_shape, encoder_features), ConvDecoder(z_dim, x_shape, decoder_params)
    raise ConfigError(f"network={network!r} is unknown; choose one of {', '.join(NETWORKS)}")


# --- networks that also read a label ---------------------------------------------------------------------


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Labels ``y (*batch,)`` (integers, trusted) -> ``(*batch, num_classes)`` one-hot of ``dtype``."""
    return F.one_hot(y.long(), num_classes).to(dtype)


def _broadcast(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand ``a (*A, m)`` and ``b (*B, n)`` to the common batch shape ``broadcast(A, B)``."""
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return a.expand(*batch, a.shape[-1]), b.expand(*batch, b.shape[-1])


class ConditionalMLPEncoder(nn.Module):
    """``(x (*batch, *x_shape), y (*batch, num_classes) one-hot) -> (*batch, out_features)``: an
    :class:`MLPEncoder` on ``[flatten(x), y]``. Batch shapes of x and y broadcast."""

    def __init__(self, x_shape: Sequence[int], num_classes: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.net = MLPEncoder((math.prod(self.x_shape) + num_classes,), hidden, out_features)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat(_broadcast(x.flatten(start_dim=x.dim() - len(self.x_shape)), y), dim=-1))


class ConditionalConvEncoder(nn.Module):
    """``(x (*batch, C, H, W), y (*batch, num_classes) one-hot) -> (*batch, out_features)``: a
    :class:`ConvEncoder` on the image with ``num_classes`` extra channels, each the constant y_c broadcast
    over H x W.

    A single extra channel could hold the label only as a number, imposing an order on the classes; one
    channel per class keeps it categorical. In the first convolution these channels add a learned
    per-class map to every filter's output (a per-class bias, apart from the zero-padded border), as
    expressive as a learned per-class input map fed through that convolution, without extra parameters.
    """

    def __init__(self, x_shape: Sequence[int], num_classes: int, out_features: int,
                 channels: Sequence[int] = (32, 64)):
        super().__init__()
        c, h, w = x_shape
        self.x_shape = tuple(x_shape)
        self.net = ConvEncoder((c + num_classes, h, w), out_features, channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(x.shape[:-3], y.shape[:-1])
        maps = y[..., None, None].expand(*batch, y.shape[-1], *self.x_shape[1:])
        return self.net(torch.cat([x.expand(*batch, *self.x_shape), maps], dim=-3))


class ConditionalDecoder(nn.Module):
    """``(z (*batch, z_dim), y (*batch, num_classes) one-hot) -> decoder([z, y])``, for any decoder of this
    module built with input size ``z_dim + num_classes`` (output ``(*batch, num_params, *x_shape)``).
    Batch shapes of z and y broadcast."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.net = decoder

    @property
    def output_layer(self) -> nn.Module:
        """The last layer (its bias is set from the data mean by ``likelihood.init_bias``)."""
        return self.net.output_layer

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat(_broadcast(z, y.to(z.dtype)), dim=-1))


def build_conditional_networks(network: str, x_shape: Sequence[int], num_classes: int, z_dim: int,
                               encoder_features: int, decoder_params: int,
                               hidden: Sequence[int] = (512, 512)) -> tuple[nn.Module, nn.Module]:
    """The conditional encoder/decoder pair named ``network`` (``"mlp"`` or ``"conv"``): the networks of
    :func:`build_networks` with the one-hot label as an extra input.

    Raises:
        ConfigError: unknown ``network``, or a conv network on images whose sides are not divisible by 4.
    """
    if network == "mlp":
        return (ConditionalMLPEncoder(x_shape, num_classes, hidden, encoder_features),
                ConditionalDecoder(MLPDecoder(z_dim + num_classes, hidden, x_shape, decoder_params)))
    if network == "conv":
        _check_conv_shape(x_shape)
        return (ConditionalConvEncoder(x_shape, num_classes, encoder_features),
                ConditionalDecoder(ConvDecoder(z_dim + num_classes, x_shape, decoder_params)))
    raise ConfigError(f"network={network!r} is unknown; choose one of {', '.join(NETWORKS)}")


class LabelConditionedMLP(nn.Module):
    """An MLP on the concatenation ``[inputs, one_hot(y)]``, with softplus hidden layers (Kingma et al. 2014).

    The first layer is one ``nn.Linear(in_features + num_classes, hidden[0])``; its product with the
    one-hot part is a column lookup, ``W [u, one_hot(y)] = W_u u + W[:, in_features + y]``, so no one-hot
    tensor is built and, under parallel enumeration (``y`` of shape ``(num_classes, 1)``), ``W_u u`` is
    computed once per data point instead of once per label.

    Args:
        in_features: size of ``inputs``' last dimension.
        num_classes: number of labels.
        hidden: hidden-layer sizes (at least one).
        out_features: output size.

    Shapes: ``inputs (*batch_a, in_features)`` and ``y (*batch_b)`` int64, broadcastable, give
    ``(*broadcast(batch_a, batch_b), out_features)``.

    Raises:
        ConfigError: ``hidden`` is empty.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        hidden = tuple(hidden)
        if not hidden:
            raise ConfigError("LabelConditionedMLP needs at least one hidden layer, got hidden=()")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.first = nn.Linear(self.in_features + self.num_classes, hidden[0])
        self.rest = nn.Sequential(nn.Softplus(), mlp([*hidden, out_features], nn.Softplus))

    @property
    def output_layer(self) -> nn.Linear:
        return self.rest[-1][-1]

    def forward(self, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w_inputs, w_labels = self.first.weight.split([self.in_features, self.num_classes], dim=1)
        h = F.linear(inputs, w_inputs, self.first.bias) + w_labels.t()[y]
        return self.rest(h)


class Classifier(nn.Module):
    """An MLP with softplus hidden layers from a data point to class logits:
    ``x (*batch, *x_shape) -> logits (*batch, num_classes)``."""

    def __init__(self, x_shape: Sequence[int], hidden: Sequence[int], num_classes: int):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.net = mlp([math.prod(self.x_shape), *hidden, num_classes], nn.Softplus)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(start_dim=x.dim() - len(self.x_shape)))
