"""Evaluation: the ELBO and the importance-sampled log-likelihood, per image, in nats.

For each image x the estimate of Burda, Grosse & Salakhutdinov (2016) is

    log p(x) ~= L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k | x),    z_k ~ q(z | x),

a stochastic lower bound that does not decrease in expectation with K and tends to log p(x). The
ELBO is estimated from the same draws as the mean of the log weights. Weights are computed from Pyro
traces of ``vae.guide`` and ``vae.model`` (replayed on the guide's z), so any prior, likelihood and
guide family plugged into the model is evaluated without extra code.
"""

from __future__ import annotations

import math
import time

import pyro
import pyro.poutine as poutine
import torch
from tqdm.auto import tqdm

from .models import VAE


def _site_log_prob_sum(trace, observed: bool | None = None) -> torch.Tensor:
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        if observed is not None and bool(site["is_observed"]) != observed:
            continue
        total = total + site["log_prob"]
    return total


@torch.no_grad()
def log_importance_weights(vae: VAE, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k | x) for ``num_samples`` draws z_k ~ q(z|x) per image.

    Args:
        vae: the model.
        x: ``(batch, *x_shape)``, already checked (see :meth:`VAE.check_data`).
        num_samples: K, the number of draws per image (vectorized in one pass).

    Returns:
        ``(num_samples, batch)`` log weights in nats.
    """
    with pyro.plate("particles", num_samples, dim=-2), pyro.validation_enabled(False):
        guide_trace = poutine.trace(vae.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    log_w = _site_log_prob_sum(model_trace) - _site_log_prob_sum(guide_trace, observed=False)
    return log_w.expand(num_samples, x.shape[0])


@torch.no_grad()
def log_likelihood(vae: VAE, x: torch.Tensor, num_samples: int = 5000, max_chunk: int = 65536,
                   device: torch.device | str | None = None, progress: bool | None = None) -> dict:
    """Importance-sampled log p(x) and the ELBO for every image of ``x``, in nats.

    Work is chunked so that at most ``max_chunk`` (sample, image) pairs go through the decoder at once:
    memory stays bounded for any K (about 10 KB per pair for the default MLP on MNIST, so the default
    needs under 1 GB) while the log-sum-exp over samples is accumulated exactly across chunks.

    Args:
        vae: the model (its parameters are not changed).
        x: ``(num_images, *x_shape)`` data in the likelihood's support.
        num_samples: K, importance samples per image.
        max_chunk: the largest number of (sample, image) pairs evaluated in one pass.
        device: where to compute (default: where the model is).
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        dict with ``log_likelihood`` and ``elbo``: ``(num_images,)`` tensors in nats per image, on the CPU.

    Raises:
        ValueError: ``x`` has the wrong shape or dtype, NaN, or values outside the likelihood's support;
            ``num_samples < 1``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    vae.check_data(x)
    device = device if device is not None else next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    n = x.shape[0]
    samples_per_pass = min(num_samples, max_chunk)
    images_per_pass = max(1, max_chunk // samples_per_pass)
    ll, elbo = torch.empty(n), torch.empty(n)
    bar = tqdm(total=n, desc=f"log p(x), K={num_samples}", leave=False,
               disable=None if progress is None else not progress)
    for start in range(0, n, images_per_pass):
        xb = x[start:start + images_per_pass].to(device)
        lse = torch.full((xb.shape[0],), -math.inf, device=device)
        mean = torch.zeros(xb.shape[0], device=device)
        for done in range(0, num_samples, samples_per_pass):
            k = min(samples_per_pass, num_samples - done)
            log_w = log_importance_weights(vae, xb, k)
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
            mean += log_w.sum(0)
        ll[start:start + xb.shape[0]] = (lse - math.log(num_samples)).cpu()
        elbo[start:start + xb.shape[0]] = (mean / num_samples).cpu()
        bar.update(xb.shape[0])
    bar.close()
    vae.train(was_training)
    return {"log_likelihood": ll, "elbo": elbo}


def summarize(values: torch.Tensor) -> dict:
    """``{"mean", "stderr"}`` of per-image values: stderr = std / sqrt(n) over images."""
    n = values.numel()
    stderr = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": values.mean().item(), "stderr": stderr}


def evaluate(vae: VAE, x: torch.Tensor, num_samples: int = 5000, max_chunk: int = 65536,
             device: torch.device | str | None = None, progress: bool | None = None) -> dict:
    """Test metrics of ``vae`` on ``x``: what ``pyrovae evaluate`` writes to ``metrics.json``.

    Returns:
        dict with ``log_likelihood_nats`` and ``elbo_nats`` (means over images, nats per image),
        their ``*_stderr`` over images, ``log_likelihood_bits_per_dim``, ``num_samples``,
        ``num_images`` and ``seconds``.

    Raises:
        ValueError: see :func:`log_likelihood`.
    """
    t0 = time.perf_counter()
    out = log_likelihood(vae, x, num_samples, max_chunk, device, progress)
    ll, elbo = summarize(out["log_likelihood"]), summarize(out["elbo"])
    dims = math.prod(x.shape[1:])
    return {
        "log_likelihood_nats": ll["mean"], "log_likelihood_stderr": ll["stderr"],
        "elbo_nats": elbo["mean"], "elbo_stderr": elbo["stderr"],
        "log_likelihood_bits_per_dim": -ll["mean"] / (dims * math.log(2)),
        "num_samples": num_samples, "num_images": int(x.shape[0]), "seconds": time.perf_counter() - t0,
    }
