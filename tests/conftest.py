"""Shared fixtures: the real MNIST files, and a linear-Gaussian VAE (probabilistic PCA) whose marginal
likelihood and posterior are known in closed form."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrovae import VAE
from pyrovae.data import MNIST_FILES, ImageDataset


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """$PYROVAE_DATA (CI points it at ../shared/data). Missing data skips locally and fails on CI."""
    root = os.environ.get("PYROVAE_DATA")
    if root and all((Path(root) / "MNIST" / "raw" / f).exists() or (Path(root) / f).exists()
                    for f in MNIST_FILES):
        return Path(root)
    message = f"MNIST not found under $PYROVAE_DATA={root!r}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def random_binary_data(n: int = 256, seed: int = 0) -> tuple[ImageDataset, None, ImageDataset]:
    """A small (train, None, test) split of random binary 'images' with some structure (two prototypes
    with flipped pixels), for training tests that must not depend on MNIST."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(2, 1, 28, 28, generator=g) < 0.3).float()
    labels = torch.randint(0, 2, (n,), generator=g)
    flips = (torch.rand(n, 1, 28, 28, generator=g) < 0.05).float()
    x = (protos[labels] + flips) % 2
    half = n // 2
    return (ImageDataset(x[:half], labels[:half], "static"), None,
            ImageDataset(x[half:], labels[half:], "static"))


# --- probabilistic PCA: z ~ N(0, I), x ~ N(W z + b, s^2 I) -------------------------------------------


class NormalLikelihood(nn.Module):
    """x ~ N(loc, scale^2 I) on vectors: a user-written likelihood following the plug-in contract."""

    num_params = 1

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, params):
        return dist.Normal(params.squeeze(-2), self.scale).to_event(1)

    def check_support(self, x):
        if not torch.isfinite(x).all():
            raise ValueError("x holds NaN or infinite values")


class LinearDecoder(nn.Module):
    def __init__(self, W, b):
        super().__init__()
        self.W, self.b = nn.Parameter(W.clone()), nn.Parameter(b.clone())

    def forward(self, z):
        return (z @ self.W.T + self.b).unsqueeze(-2)


class PosteriorEncoder(nn.Module):
    """Outputs the raw parameters of DiagonalNormal for the exact pPCA posterior (diagonal when the
    columns of W are orthogonal), optionally shifted and scaled to make a deliberately bad guide."""

    def __init__(self, W, b, s, shift: float = 0.0, scale_factor: float = 1.0):
        super().__init__()
        d = W.shape[1]
        cov = torch.linalg.inv(torch.eye(d) + W.T @ W / s**2)
        self.register_buffer("A", cov @ W.T / s**2)
        self.register_buffer("b", b)
        sd = cov.diagonal().sqrt() * scale_factor
        self.register_buffer("raw", torch.log(torch.expm1(sd - 1e-4)))
        self.shift = shift

    def forward(self, x):
        loc = (x - self.b) @ self.A.T + self.shift
        return torch.cat([loc, self.raw.expand_as(loc)], dim=-1)


def ppca(z_dim: int = 3, x_dim: int = 8, s: float = 0.5, shift: float = 0.0, scale_factor: float = 1.0,
         seed: int = 0):
    """``(vae, x, exact_log_px)``: a pPCA VAE with orthogonal-column W, 64 data points drawn from it,
    and the exact log p(x) = log N(x; b, W W^T + s^2 I) per point."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(x_dim, z_dim, generator=g))
    W = q * torch.linspace(2.0, 0.5, z_dim)
    b = torch.randn(x_dim, generator=g)
    vae = VAE(z_dim=z_dim, x_shape=(x_dim,), likelihood=NormalLikelihood(s),
              encoder=PosteriorEncoder(W, b, s, shift, scale_factor), decoder=LinearDecoder(W, b))
    marginal = dist.MultivariateNormal(b, W @ W.T + s**2 * torch.eye(x_dim))
    x = marginal.sample((64,))
    return vae, x, marginal.log_prob(x)


@pytest.fixture
def small_vae() -> VAE:
    return VAE(z_dim=4, hidden=(32,))


def logmeanexp(x, dim=0):
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])
