"""Run folders: train, evaluate, sample and draw, each from a run folder alone.

A run folder holds ``config.json``, ``checkpoint.pt`` (see :mod:`pyrovae.checkpoint`), ``metrics.json``
(the per-epoch history and test metrics) and PNG figures.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyro
import torch

from . import plots
from .checkpoint import load_run
from .config import RunConfig
from .data import ImageDataset, load_mnist
from .evaluate import evaluate
from .models import VAE
from .train import fit, load_data, resolve_device, write_metrics

log = logging.getLogger(__name__)


def _test_set(config: RunConfig, data_dir: str | None) -> ImageDataset:
    data_dir = data_dir if data_dir is not None else (os.environ.get("PYROVAE_DATA") or config.data_dir)
    return load_mnist(data_dir, config.binarization, 0, seed=config.seed)[2]


def draw_figures(vae: VAE, test: ImageDataset, history: list[dict], run_dir: str | os.PathLike,
                 seed: int = 0) -> list[Path]:
    """Write the run's figures: reconstructions, prior samples, ELBO curves and, for z_dim = 2, the
    latent scatter of the test set and the 30x30 decoded manifold over [-4, 4]^2."""
    run_dir = Path(run_dir)
    device = next(vae.parameters()).device
    pyro.set_rng_seed(seed)
    x = test.images[:64].to(device)
    written = [
        plots.plot_reconstructions(x, vae.reconstruct(x), run_dir / "reconstructions.png"),
        plots.plot_samples(vae.sample(64), run_dir / "samples.png"),
    ]
    if history:
        written.append(plots.plot_elbo_curves(history, run_dir / "elbo.png"))
    if vae.z_dim == 2:
        with torch.no_grad():
            means = torch.cat([vae.encode(test.images[i:i + 2000].to(device))["loc"]
                               for i in range(0, len(test), 2000)])
            decoded = vae.decode(plots.manifold_grid(30, 4.0).to(device)).mean
        written.append(plots.plot_latent_scatter(means, test.labels, run_dir / "latent_scatter.png"))
        written.append(plots.plot_latent_manifold(decoded, 30, 4.0, run_dir / "latent_manifold.png"))
    return written


def train_run(config: RunConfig, run_dir: str | os.PathLike, resume: bool = False,
              progress: bool | None = None) -> dict:
    """``pyrovae train``: fit, then evaluate on the test set with ``config.eval_num_samples`` importance
    samples, draw the figures, and return ``metrics.json``'s content."""
    data = load_data(config)
    vae, history = fit(config, run_dir, resume=resume, data=data, progress=progress)
    config = RunConfig.load(Path(run_dir) / "config.json")
    test = data[2]
    metrics = evaluate(vae, test.images, config.eval_num_samples, progress=progress)
    log.info("test log-likelihood %.2f +- %.2f nats (K=%d), ELBO %.2f", metrics["log_likelihood_nats"],
             metrics["log_likelihood_stderr"], config.eval_num_samples, metrics["elbo_nats"])
    draw_figures(vae, test, history, run_dir, seed=config.seed)
    return write_metrics(run_dir, {"test": {**metrics, "binarization": _test_binarization(config)}})


def _test_binarization(config: RunConfig) -> str:
    return {"none": "none (grey values k/255)",
            "dequantize": "dequantized once, seed 0: (k + u) / 256"}.get(config.binarization,
                                                                    "static, seed 0 (test set binarized once)")


def evaluate_run(run_dir: str | os.PathLike, num_samples: int = 5000, data_dir: str | None = None,
                 device: str = "cpu", max_chunk: int = 65536, progress: bool | None = None) -> dict:
    """``pyrovae evaluate``: the K-sample test log-likelihood and ELBO of a run, written to
    ``metrics.json`` under ``test_K{num_samples}``."""
    vae, config, _ = load_run(run_dir, resolve_device(device))
    test = _test_set(config, data_dir)
    pyro.set_rng_seed(config.seed)
    metrics = evaluate(vae, test.images, num_samples, max_chunk=max_chunk, progress=progress)
    metrics["binarization"] = _test_binarization(config)
    write_metrics(run_dir, {f"test_K{num_samples}": metrics})
    return metrics


def sample_run(run_dir: str | os.PathLike, n: int = 64, seed: int = 0, out: str | None = None,
               device: str = "cpu") -> Path:
    """``pyrovae sample``: ``n`` images from the prior through the decoder, as a PNG grid."""
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    vae, _, _ = load_run(run_dir, resolve_device(device))
    pyro.set_rng_seed(seed)
    path = Path(out) if out else Path(run_dir) / f"samples_n{n}_seed{seed}.png"
    return plots.plot_samples(vae.sample(n).cpu(), path)
