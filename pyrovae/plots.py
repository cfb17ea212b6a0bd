"""Figures with matplotlib. Functions take arrays and results and write a PNG; none of them trains."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .checkpoint import atomic_write_bytes  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def tile(images: torch.Tensor | np.ndarray, rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """Tile ``(n, 1, H, W)`` or ``(n, H, W)`` images (n <= rows * cols) into one ``(rows*(H+pad), cols*(W+pad))``
    grey array, row-major."""
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    a = a.reshape(a.shape[0], a.shape[-2], a.shape[-1])
    h, w = a.shape[1:]
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad), dtype=np.float32)
    for i, img in enumerate(a[: rows * cols]):
        r, c = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = img
    return out


def _image(array: np.ndarray, title: str, path, size: float = 6.0) -> Path:
    fig, ax = plt.subplots(figsize=(size, size * array.shape[0] / array.shape[1]))
    ax.imshow(array, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return _save(fig, path)


def plot_reconstructions(x: torch.Tensor, recon: torch.Tensor, path, cols: int = 16) -> Path:
    """Pairs of rows: inputs ``x (n, 1, H, W)`` above their reconstructions (pixel probabilities)."""
    n = (x.shape[0] // cols) * cols
    rows = []
    for r in range(0, n, cols):
        rows += [x[r:r + cols], recon[r:r + cols]]
    stacked = torch.cat(rows)
    return _image(tile(stacked, len(rows), cols), "inputs (odd rows) and reconstructions (even rows)", path)


def plot_samples(samples: torch.Tensor, path, title: str = "samples from the prior (mean of p(x|z))") -> Path:
    """A square grid of ``samples (n, 1, H, W)``."""
    side = int(np.ceil(np.sqrt(samples.shape[0])))
    return _image(tile(samples, side, side), title, path)


def plot_elbo_curves(history: Sequence[dict], path) -> Path:
    """Training (and validation) ELBO in nats per image against epoch."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_elbo"] for h in history], label="train ELBO")
    if history and "validation_elbo" in history[0]:
        ax.plot(epochs, [h["validation_elbo"] for h in history], label="validation ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per image)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_latent_scatter(z_mean: torch.Tensor, labels: torch.Tensor, path) -> Path:
    """Encoded means ``z_mean (n, 2)`` of test images, coloured by digit ``labels (n,)``."""
    z, y = z_mean.cpu().numpy(), labels.cpu().numpy()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sc = ax.scatter(z[:, 0], z[:, 1], c=y, cmap="tab10", s=2, alpha=0.6, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("mean of q(z|x) for test images")
    return _save(fig, path)


def plot_latent_manifold(decoded: torch.Tensor, grid: int, extent: float, path) -> Path:
    """``decoded (grid*grid, 1, H, W)``: images decoded on a ``grid x grid`` lattice over
    [-extent, extent]^2, z[0] along columns, z[1] increasing upwards."""
    image = tile(decoded, grid, grid, pad=0)
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=(-extent, extent, -extent, extent))
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("decoded latent manifold")
    return _save(fig, path)


def manifold_grid(grid: int = 30, extent: float = 4.0) -> torch.Tensor:
    """The ``(grid*grid, 2)`` lattice of z for :func:`plot_latent_manifold`, row-major from the top row."""
    values = torch.linspace(-extent, extent, grid)
    z1, z0 = torch.meshgrid(values.flip(0), values, indexing="ij")
    return torch.stack([z0.reshape(-1), z1.reshape(-1)], dim=-1)
