"""Posterior diagnostics: how close is the amortized guide q(z|x) to the posterior p(z|x), image by image?

* **PSIS k-hat** (Yao, Vehtari, Simpson & Gelman 2018): the importance ratios p(x, z) / q(z|x), z ~ q(z|x),
  are heavy-tailed when q misses mass of the posterior. The shape k of a generalized Pareto fitted to
  their largest min(S/5, 3 sqrt(S)) values (ArviZ's ``psislw``) measures how heavy: k < 0.5 good, 0.5 to
  0.7 usable, k > 0.7 the importance-sampled log p(x) (and anything else weighted by these ratios) is
  unreliable. Also the importance-sampling effective sample size (sum w)^2 / sum w^2.
* **A reference posterior by NUTS** (Hoffman & Gelman 2014): Pyro's NUTS on p(z | x_i) with the trained
  decoder, several chains, with R-hat and effective sample sizes from ArviZ, to compare q(z|x_i) against.
* **Inference, amortization and approximation gaps** (Cremer, Li & Duvenaud 2018): q* is the best member
  of the guide family for one image, found by SVI on per-image guide parameters started at the
  encoder's output; log p(x) - ELBO(q) = [ELBO(q*) - ELBO(q)] + [log p(x) - ELBO(q*)], with log p(x)
  importance sampled from the mixture of q and q*.
* **Posterior collapse**: the KL of each latent dimension and the active units (Burda, Grosse &
  Salakhutdinov 2016), and latent traversals along the active dimensions.
* **ArviZ**: all of it as an ``arviz.InferenceData`` saved as NetCDF.

:func:`diagnose` runs everything on a trained model and writes ``diagnostics.nc``, ``diagnostics.json``,
figures and the one-page report ``diagnostics.md`` (what ``pyrovae diagnose RUN_DIR`` does). All
log-densities, ELBOs and gaps are in nats per image.

The functions here follow :class:`pyrovae.VAE`'s layout: one latent sample site ``"z"`` of event shape
``(z_dim,)`` inside a data plate at ``dim=-1``, and a guide family whose per-image parameters all come
from the encoder's output vector.

References:
    Yao, Vehtari, Simpson & Gelman (2018), *Yes, but Did It Work?: Evaluating Variational Inference*, ICML.
    Vehtari, Simpson, Gelman, Yao & Gabry (2024), *Pareto Smoothed Importance Sampling*, JMLR 25(72).
    Hoffman & Gelman (2014), *The No-U-Turn Sampler*, JMLR 15.
    Cremer, Li & Duvenaud (2018), *Inference Suboptimality in Variational Autoencoders*, ICML.
    Owen & Zhou (2000), *Safe and Effective Importance Sampling*, JASA 95(449).
    Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*, ICLR.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import pickle
import tempfile
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from torch import nn
from torch.distributions.transforms import identity_transform

from .checkpoint import atomic_write_text
from .evaluate import active_units, kl_per_dimension, posterior_means
from .models import VAE
from .objectives import log_weights_from_traces, make_elbo, particle_traces


def _import_arviz():
    """ArviZ 0.2x announces its coming refactor on import (a FutureWarning, and INFO log lines about
    optional packages): nothing a pyrovae user can act on, so both are held back during the import."""
    preview_log = logging.getLogger("arviz.preview")
    level = preview_log.level
    preview_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    finally:
        preview_log.setLevel(level)
    return arviz


az = _import_arviz()

KHAT_GOOD = 0.5
"""Below this PSIS k-hat, importance sampling with q(z|x) is reliable (Yao et al. 2018)."""
KHAT_BAD = 0.7
"""Above this PSIS k-hat, importance-sampled estimates from q(z|x) are unreliable (Yao et al. 2018)."""
ACTIVE_UNIT_THRESHOLD = 0.01
"""Burda et al. (2016): dimension d is active when Cov_x(E_q[z_d]) exceeds this."""

LATENT_SITE = "z"

NETCDF, JSON, REPORT = "diagnostics.nc", "diagnostics.json", "diagnostics.md"
FIG_KHAT, FIG_KL, FIG_Q_VS_NUTS, FIG_TRAVERSALS = (
    "diagnostics_khat.png", "diagnostics_kl_per_dimension.png", "diagnostics_q_vs_nuts.png",
    "diagnostics_traversals.png")


def _pair_figure(image_id: int) -> str:
    return f"diagnostics_pair_image{image_id}.png"


# --- input checks ----------------------------------------------------------------------------------------


def _count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


@contextlib.contextmanager
def _frozen(vae: nn.Module):
    """Eval mode and no parameter gradients for the duration (NUTS and the per-image SVI differentiate
    with respect to z or the guide's local parameters only), then the module's state as it was."""
    was_training = vae.training
    flags = [(p, p.requires_grad) for p in vae.parameters()]
    vae.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield vae
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        vae.train(was_training)


def _device(vae: nn.Module) -> torch.device:
    p = next(vae.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# --- samples of q(z|x) and their importance weights -------------------------------------------------------


def _draws(model, guide, x: torch.Tensor, num_samples: int, max_chunk: int, other=None) -> dict:
    """S = ``num_samples`` guide draws per image with their log densities, chunked so that at most
    ``max_chunk`` (sample, image) pairs go through the decoder at once; on the CPU.

    Returns ``z (S, n, z_dim)``, ``log_w (S, n)`` = log p(x, z) - log q(z|x) and ``log_q (S, n)`` =
    log q(z|x) for the guide's own draws; with ``other``, a function ``(start, stop) -> distribution`` over
    z for the images ``x[start:stop]``, also ``log_other (S, n)``, that distribution's log density at the
    same draws. A guide with per-image parameters (:class:`LocalGuide`) is restricted to each chunk's
    images through its ``rows(start, stop)``."""
    n = x.shape[0]
    samples_per_pass = min(num_samples, max_chunk)
    images_per_pass = max(1, max_chunk // samples_per_pass)
    columns = {"z": [], "log_w": [], "log_q": [], "log_other": []}
    for start in range(0, n, images_per_pass):
        xb = x[start:start + images_per_pass]
        chunk_guide = guide.rows(start, start + xb.shape[0]) if hasattr(guide, "rows") else guide
        rows = {key: [] for key in columns}
        for done in range(0, num_samples, samples_per_pass):
            k = min(samples_per_pass, num_samples - done)
            with pyro.validation_enabled(False):
                model_trace, guide_trace = particle_traces(model, chunk_guide, k, xb)
            if LATENT_SITE not in guide_trace.nodes:
                raise ValueError(f"the guide has no sample site {LATENT_SITE!r}; pyrovae.diagnostics works with "
                                 "pyrovae.VAE's layout (one latent site 'z' inside the data plate)")
            site = guide_trace.nodes[LATENT_SITE]
            z = site["value"].detach()
            z = z.expand(k, xb.shape[0], z.shape[-1])
            rows["z"].append(z.cpu())
            rows["log_w"].append(log_weights_from_traces(model_trace, guide_trace, k).detach().cpu())
            rows["log_q"].append(site["unscaled_log_prob"].detach().expand(k, xb.shape[0]).cpu())
            if other is not None:
                rows["log_other"].append(other(start, start + xb.shape[0]).log_prob(z).detach().cpu())
        for key, parts in rows.items():
            if parts:
                columns[key].append(torch.cat(parts, 0))
    return {key: torch.cat(parts, 1) for key, parts in columns.items() if parts}


@torch.no_grad()
def posterior_samples(vae: VAE, x: torch.Tensor, num_samples: int = 1000, max_chunk: int = 65536) -> dict:
    r"""Draws z_k ~ q(z | x) and their log importance weights log p(x, z_k) - log q(z_k | x), per image.

    The weights come from Pyro traces of ``vae.guide`` and of ``vae.model`` replayed on the guide's draws
    (:func:`pyrovae.objectives.particle_traces`), so any prior, likelihood and guide family is covered.
    Seed with ``pyro.set_rng_seed`` for reproducible draws.

    Args:
        vae: a trained model (left unchanged).
        x: ``(n, *x_shape)`` images in the likelihood's support.
        num_samples: S, draws per image.
        max_chunk: the largest number of (sample, image) pairs evaluated in one pass (bounds memory;
            the result itself holds S * n * z_dim numbers).

    Returns:
        dict with ``z`` ``(S, n, z_dim)`` and ``log_weights`` ``(S, n)`` (nats), on the CPU.

    Raises:
        ValueError: ``x`` has the wrong shape, dtype or values; ``num_samples`` or ``max_chunk`` < 1.
    """
    num_samples, max_chunk = _count("num_samples", num_samples), _count("max_chunk", max_chunk)
    vae.check_data(x)
    with _frozen(vae):
        draws = _draws(vae.model, vae.guide, x.to(_device(vae)), num_samples, max_chunk)
    return {"z": draws["z"], "log_weights": draws["log_w"]}


# --- PSIS k-hat and importance-sampling ESS -----------------------------------------------------------------


def psis_khat(log_weights: torch.Tensor | np.ndarray) -> dict:
    r"""PSIS k-hat and the importance-sampling effective sample size, per image.

    For each image, the S log importance ratios log w_k = log p(x, z_k) - log q(z_k | x), z_k ~ q(z|x),
    go through ArviZ's ``psislw`` (Vehtari et al. 2024), which fits a generalized Pareto distribution to
    the largest min(S/5, 3 sqrt(S)) ratios; its shape k-hat is the diagnostic of Yao et al. (2018):
    below :data:`KHAT_GOOD` (0.5) q is a good importance proposal, between 0.5 and :data:`KHAT_BAD` (0.7)
    it is usable, above 0.7 importance-sampled estimates (such as the test log-likelihood) are
    unreliable. k > 0.5 means the chi-square divergence of p(z|x) from q is infinite, k > 1 that
    KL(p || q) is. When all of an image's log ratios agree to within float rounding (q equals the
    posterior) there is no tail to fit and k-hat is reported as -inf.

    The effective sample size is ESS = (sum_k w_k)^2 / sum_k w_k^2 in [1, S] (Kong 1992); ``ess_fraction``
    = ESS / S in [1/S, 1] is 1 when q is the posterior.

    Args:
        log_weights: ``(S, n)``: S log ratios (nats) for each of n images, as :func:`posterior_samples`
            gives them; S >= 25 (use S >= 1000 for a k-hat worth reading).

    Returns:
        dict of ``(n,)`` float64 tensors: ``khat``, ``ess`` and ``ess_fraction``.

    Raises:
        ValueError: ``log_weights`` is not 2-dimensional, has fewer than 25 samples, or holds NaN or +inf.

    References:
        Yao, Vehtari, Simpson & Gelman (2018), *Yes, but Did It Work?: Evaluating Variational Inference*.
        Vehtari, Simpson, Gelman, Yao & Gabry (2024), *Pareto Smoothed Importance Sampling*, JMLR.
    """
    lw = torch.as_tensor(log_weights)
    if lw.dim() != 2:
        raise ValueError(f"log_weights must be (num_samples, num_images), got shape {tuple(lw.shape)}; "
                         "for one image use log_weights[:, None]")
    if lw.shape[0] < 25:
        raise ValueError(f"log_weights has {lw.shape[0]} samples per image; PSIS fits a Pareto tail to the "
                         "largest min(S/5, 3 sqrt(S)) of them and needs S >= 25 (use S >= 1000)")
    if not lw.is_floating_point() or torch.isnan(lw).any() or (lw == math.inf).any():
        raise ValueError("log_weights must be floating point without NaN or +inf; check the model's "
                         "log-densities for the images concerned")
    # rounding error of a log ratio computed in lw's precision: below it the ratios are constant
    tolerance = 64 * torch.finfo(lw.dtype).eps * (1 + torch.where(lw.isfinite(), lw.abs(), 0).amax(0))
    constant = (lw.amax(0) - lw.amin(0)) <= tolerance
    lw64 = lw.double()
    with warnings.catch_warnings():
        # ArviZ warns about k-hat > 0.7 itself; here that is the measurement, reported to the caller
        warnings.simplefilter("ignore")
        _, khat = az.psislw(lw64.T.contiguous().numpy())
    khat = torch.as_tensor(np.asarray(khat, dtype=np.float64)).reshape(lw.shape[1])
    khat[constant] = -math.inf
    ess = torch.exp(2 * torch.logsumexp(lw64, 0) - torch.logsumexp(2 * lw64, 0))
    return {"khat": khat, "ess": ess, "ess_fraction": ess / lw.shape[0]}


# --- NUTS reference posterior ------------------------------------------------------------------------------


def _init_uniform(site: dict) -> torch.Tensor:
    """Pyro's ``init_to_uniform`` for a real-valued latent: uniform in [-2, 2] per dimension. (Pyro's own
    maps through ``transform_to(support)``, which a mixture prior's support constraint does not have.)"""
    value = site["fn"].sample().detach()
    return torch.rand_like(value) * 4 - 2


def _nuts_chain(vae: VAE, x1: torch.Tensor, num_samples: int, warmup: int, seed: int, jit_compile: bool,
                max_tree_depth: int, progress: bool) -> tuple[torch.Tensor, float, int]:
    """One NUTS chain on p(z | x1), seeded with ``seed``: ``(z (num_samples, z_dim) on the CPU, adapted
    step size, divergent transitions after warmup)``. Module level, so that worker processes can run it."""
    with _frozen(vae), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated",
                                category=DeprecationWarning)
        pyro.set_rng_seed(seed)
        kernel = NUTS(vae.model, jit_compile=jit_compile, ignore_jit_warnings=True,
                      max_tree_depth=max_tree_depth, max_plate_nesting=1, init_strategy=_init_uniform,
                      transforms={LATENT_SITE: identity_transform})
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, num_chains=1,
                    disable_progbar=not progress)
        mcmc.run(x1)
        z = mcmc.get_samples()[LATENT_SITE].detach().reshape(num_samples, -1).cpu()
        divergences = len(mcmc.diagnostics().get("divergences", {}).get("chain 0", []))
    return z, float(kernel.step_size), divergences


def _init_chain_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _default_workers(num_chains: int) -> int:
    """One process per chain, as many as there are cores (on the CPU; a GPU keeps one process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(num_chains, cores))


def mcmc_reference(vae: VAE, x_i: torch.Tensor, num_samples: int = 500, warmup: int = 500, num_chains: int = 2,
                   seed: int = 0, jit_compile: bool = True, max_tree_depth: int = 10,
                   progress: bool = False, num_workers: int | None = None) -> dict:
    r"""Samples of the exact posterior p(z | x_i) by NUTS, to hold q(z | x_i) against.

    Pyro's NUTS (Hoffman & Gelman 2014) runs on ``vae.model`` for the one image x_i (the model observes
    x through the likelihood site, so the target is p(z) p(x_i | z) with the trained decoder), with step
    size and a diagonal mass matrix adapted during ``warmup``. Chain c is seeded with ``seed + c`` and
    started at a uniform draw in [-2, 2]^z_dim (as Pyro's ``init_to_uniform``; overdispersed relative to
    a VAE posterior), so that R-hat can detect chains that disagree. z is sampled on the real line as it
    is (every prior of :mod:`pyrovae.priors` is a density on R^z_dim). R-hat (rank-normalized split R-hat)
    and the bulk and tail effective sample sizes are ArviZ's.

    On the CPU the chains run in parallel worker processes (``num_workers``, default one per chain up to
    the number of cores; started with ``spawn``, each with ``torch.get_num_threads() // num_workers``
    threads), each chain the same computation it is in one process: at equal threads per chain the draws
    depend on ``seed`` and not on the number of workers. (Another thread count changes the rounding of
    multi-threaded kernels, which NUTS's chaotic trajectories turn into other, equally valid, chains.)
    On a GPU the chains always run in this process. Scripts that call this with
    workers must guard their entry point with ``if __name__ == "__main__":`` (Python's ``spawn`` rule);
    if the workers cannot start (or the model cannot be pickled), the chains run in this process with a
    warning; an error raised by a chain itself is raised as it is.

    Cost: with the defaults, one MNIST image's 50-d posterior under the default 784-512-512-50 decoder
    takes about 35 gradient evaluations per draw; the two default chains took 33-35 s in two worker
    processes of one thread each, and 51-52 s one after the other on two threads
    (``benchmarks/nuts_speed.py``); about twice that without ``jit_compile``.

    Args:
        vae: a trained model (left unchanged; its parameters are frozen while NUTS runs).
        x_i: one image, ``x_shape`` or ``(1, *x_shape)``.
        num_samples: draws kept per chain.
        warmup: adaptation steps per chain (discarded).
        num_chains: at least 2 (R-hat compares chains).
        seed: chain c uses ``pyro.set_rng_seed(seed + c)`` (in this process, this sets the global RNGs).
        jit_compile: trace the potential energy with the PyTorch JIT (faster for MLP decoders).
        max_tree_depth: NUTS's maximum tree depth (at most 2^depth leapfrog steps per draw).
        progress: show Pyro's progress bar (only with ``num_workers=1``).
        num_workers: processes for the chains; 1 runs them one after another in this process. Default:
            see above (always 1 on a GPU).

    Returns:
        dict with ``z`` ``(num_chains, num_samples, z_dim)``; ``mean`` and ``sd`` ``(z_dim,)`` over all
        draws; ``rhat``, ``ess_bulk`` and ``ess_tail`` ``(z_dim,)``; ``divergences`` (total number of
        divergent transitions after warmup); ``step_size`` (per chain); ``seconds`` (wall time);
        ``num_workers`` (processes used).

    Raises:
        ValueError: ``x_i`` is not one image of the model's shape or not in the likelihood's support;
            ``num_chains < 2``; ``num_samples``, ``warmup``, ``max_tree_depth`` or ``num_workers`` < 1.

    References:
        Hoffman & Gelman (2014), *The No-U-Turn Sampler*, JMLR 15.
        Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), *Rank-Normalization, Folding, and
        Localization: An Improved R-hat*, Bayesian Analysis.
    """
    num_samples, warmup = _count("num_samples", num_samples), _count("warmup", warmup)
    num_chains, max_tree_depth = _count("num_chains", num_chains, 2), _count("max_tree_depth", max_tree_depth)
    if not isinstance(x_i, torch.Tensor) or tuple(x_i.shape) not in (vae.x_shape, (1, *vae.x_shape)):
        got = tuple(x_i.shape) if isinstance(x_i, torch.Tensor) else type(x_i).__name__
        raise ValueError(f"x_i must be one image of shape {vae.x_shape} or (1, "
                         f"{', '.join(map(str, vae.x_shape))}), got {got}; pass x[i], not a batch")
    device = _device(vae)
    workers = (_default_workers(num_chains) if num_workers is None
               else min(_count("num_workers", num_workers), num_chains))
    if device.type != "cpu":
        workers = 1  # the chains share the GPU in this process; CUDA state does not cross spawn cheaply
    x1 = x_i.reshape(1, *vae.x_shape).to(device)
    vae.check_data(x1)
    args = [(num_samples, warmup, seed + c, jit_compile, max_tree_depth, progress and workers == 1)
            for c in range(num_chains)]
    t0 = time.perf_counter()
    results = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback

        threads = max(1, torch.get_num_threads() // workers)
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_chain_worker, initargs=(threads,)) as pool:
                results = list(pool.map(_nuts_chain, *zip(*[(vae, x1, *a) for a in args])))
        except (BrokenProcessPool, pickle.PicklingError, AttributeError, TypeError, OSError) as e:
            if isinstance(e.__cause__, _RemoteTraceback):
                raise  # the chain itself failed in its worker: running it again here would fail the same way
            warnings.warn(f"NUTS worker processes failed ({type(e).__name__}: {e}); running the "
                          f"{num_chains} chains one after another in this process", RuntimeWarning)
            workers = 1
    if results is None:
        results = [_nuts_chain(vae, x1, *a) for a in args]
    seconds = time.perf_counter() - t0
    z = torch.stack([r[0] for r in results])
    ref = az.convert_to_dataset({"z": z.double().numpy()}, coords={"z_dim": np.arange(z.shape[-1])},
                                dims={"z": ["z_dim"]})
    flat = z.reshape(-1, z.shape[-1])
    return {
        "z": z, "mean": flat.mean(0), "sd": flat.std(0),
        "rhat": torch.as_tensor(az.rhat(ref)["z"].values),
        "ess_bulk": torch.as_tensor(az.ess(ref, method="bulk")["z"].values),
        "ess_tail": torch.as_tensor(az.ess(ref, method="tail")["z"].values),
        "divergences": sum(r[2] for r in results), "step_size": [r[1] for r in results],
        "seconds": seconds, "num_workers": workers,
    }


# --- amortization gap ---------------------------------------------------------------------------------------


class LocalGuide(nn.Module):
    r"""q(z | x_n) = ``guide_family(h_n)`` with one free parameter vector h_n per image: the guide family
    without its encoder, the non-amortized guide of Cremer, Li & Duvenaud (2018).

    Args:
        guide_family: a guide family of :mod:`pyrovae.guides` (its own parameters, such as an IAF's
            MADE weights, are shared by all images and not optimized here).
        h: ``(n, num_features)`` the initial parameters, e.g. ``vae.encoder(x)``.

    Call it as a Pyro guide with the images ``x (n, *x_shape)`` it was built for.
    """

    def __init__(self, guide_family: nn.Module, h: torch.Tensor):
        super().__init__()
        self.guide_family = guide_family
        self.h = nn.Parameter(h.detach().clone())

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """Samples z ``(n, z_dim)`` in the data plate of :meth:`pyrovae.VAE.model` (called with ``x`` alone);
        ``h`` (default: all of :attr:`h`) are the parameters of the images ``x``.

        Raises:
            ValueError: ``x`` and the parameters are for different numbers of images.
        """
        h = self.h if h is None else h
        if x.shape[0] != h.shape[0]:
            raise ValueError(f"LocalGuide: {x.shape[0]} images but parameters for {h.shape[0]}; "
                             "use .rows(start, stop) for a slice of the images it was built for")
        with pyro.plate("data", x.shape[0], dim=-1):
            return pyro.sample(LATENT_SITE, self.guide_family(h))

    def rows(self, start: int, stop: int):
        """This guide restricted to the images ``x[start:stop]`` it was built for (a Pyro guide)."""
        return lambda x: self(x, self.h[start:stop])


def _mean_and_stderr(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return log_w.mean(0), log_w.std(0) / math.sqrt(log_w.shape[0])


def _log_likelihoods(from_q: dict, from_star: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(x) estimated from K draws of q and K of q*: with the mixture (q + q*) / 2 as the proposal
    (deterministic-mixture multiple importance sampling, Owen & Zhou 2000), with q alone and with q*
    alone. Each is log of an unbiased estimate of p(x); the mixture's ratios p / ((q + q*) / 2) are at
    most twice those of the better of the two, so one heavy-tailed proposal does not spoil it."""
    def mixture_log_weights(draws, own_is_q):
        log_q, log_star = ((draws["log_q"], draws["log_other"]) if own_is_q
                           else (draws["log_other"], draws["log_q"]))
        log_joint = draws["log_w"] + draws["log_q"]
        return log_joint - (torch.logaddexp(log_q, log_star) - math.log(2))

    def logmeanexp(log_w):
        return (torch.logsumexp(log_w.double(), 0) - math.log(log_w.shape[0])).float()

    mixed = torch.cat([mixture_log_weights(from_q, True), mixture_log_weights(from_star, False)])
    return logmeanexp(mixed), logmeanexp(from_q["log_w"]), logmeanexp(from_star["log_w"])


def amortization_gap(vae: VAE, x: torch.Tensor, steps: int = 300, lr: float = 0.02, num_particles: int = 8,
                     num_samples: int = 1000, log_likelihood_samples: int = 1000, elbo: str = "TraceMeanField_ELBO",
                     seed: int = 0, max_chunk: int = 65536) -> dict:
    r"""The inference gap of each image split into its amortization and approximation parts.

    Following Cremer, Li & Duvenaud (2018), with q = q(z|x) the amortized guide and q* the best member of
    the same guide family for the single image x::

        inference gap      log p(x) - ELBO(q)     = amortization gap + approximation gap
        amortization gap   ELBO(q*) - ELBO(q)     (>= 0: the price of sharing one encoder)
        approximation gap  log p(x) - ELBO(q*)    (>= 0: the price of the family)

    q* is found by SVI: the encoder's output vector h(x) (all the per-image parameters the guide family
    reads: loc and raw scale for the diagonal Normal) becomes a free parameter per image
    (:class:`LocalGuide`), started at h(x) and moved by Adam on the ELBO (Pyro's ``elbo`` estimator with
    ``num_particles`` draws, the learning rate annealed from ``lr`` to 0 by a cosine over ``steps``). The
    model's parameters stay fixed. The images are optimized together, but as Adam's update is
    elementwise and the ELBO a sum over images, each image's parameters move as if alone.

    ELBO(q) and ELBO(q*) are the means of ``num_samples`` log importance weights drawn with the same
    random numbers (the same base noise for reparameterized families), so their difference, the
    amortization gap, has a much smaller Monte Carlo error than either.

    log p(x) is importance sampled from K = ``log_likelihood_samples`` draws of q and K of q*, with their
    mixture (q + q*) / 2 as the proposal (deterministic-mixture multiple importance sampling, Owen & Zhou
    2000): p(x) ~= 1/(2K) sum_k p(x, z_k) / ((q(z_k) + q*(z_k)) / 2). The bound L_K with q alone (what
    :func:`pyrovae.evaluate.log_likelihood` computes) is also returned; where q is too narrow (PSIS k-hat
    > 0.7) its ratios have infinite variance and it can land far from log p(x) on either side, while
    the mixture's ratios are at most twice those of q*. All these estimates lie below log p(x) in
    expectation, by a bias that shrinks with K.

    Args:
        vae: a trained model (left unchanged).
        x: ``(n, *x_shape)`` images.
        steps: SVI steps (0: q* = q).
        lr: Adam's initial learning rate on h.
        num_particles: draws per image per SVI step.
        num_samples: draws per image for ELBO(q) and ELBO(q*).
        log_likelihood_samples: K for log p(x).
        elbo: the name of the objective (see :func:`pyrovae.objectives.make_elbo`).
        seed: seeds the SVI and, identically, both ELBO evaluations.
        max_chunk: the largest number of (sample, image) pairs per pass in the ELBO evaluations.

    Returns:
        dict of ``(n,)`` tensors in nats per image: ``elbo``, ``elbo_optimized``, ``log_likelihood``
        (the mixture estimate; ``log_likelihood_amortized`` and ``log_likelihood_optimized``: L_K with q
        alone and with q* alone),
        ``inference_gap``, ``amortization_gap``, ``approximation_gap``, and the Monte Carlo standard
        errors ``elbo_stderr``, ``elbo_optimized_stderr``, ``amortization_gap_stderr``; also
        ``optimized_params`` (``vae.guide_family.params`` of q*, e.g. ``loc`` and ``scale``
        ``(n, z_dim)``) and ``history`` ``(steps,)``, the SVI estimate of the mean ELBO per image at each step.

    Raises:
        ValueError: bad ``x``; ``steps < 0``; ``lr <= 0``; ``num_particles``, ``num_samples`` or
            ``log_likelihood_samples`` < 1; an unknown ``elbo``.

    References:
        Cremer, Li & Duvenaud (2018), *Inference Suboptimality in Variational Autoencoders*, ICML.
        Owen & Zhou (2000), *Safe and Effective Importance Sampling*, JASA 95(449).
    """
    steps, lr = _count("steps", steps, 0), _positive("lr", lr)
    num_particles, num_samples = _count("num_particles", num_particles), _count("num_samples", num_samples)
    log_likelihood_samples = _count("log_likelihood_samples", log_likelihood_samples)
    objective = make_elbo(elbo, num_particles=num_particles)
    vae.check_data(x)
    x = x.to(_device(vae))
    n = x.shape[0]
    with _frozen(vae):
        with torch.no_grad():
            local = LocalGuide(vae.guide_family, vae.encoder(x))
        optimizer = torch.optim.Adam([local.h], lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1))))
        history = torch.empty(steps)
        pyro.set_rng_seed(seed)
        for step in range(steps):
            optimizer.zero_grad()
            loss = objective.differentiable_loss(vae.model, local, x)
            loss.backward()
            optimizer.step()
            schedule.step()
            history[step] = -loss.detach() / n
        with torch.no_grad():
            pyro.set_rng_seed(seed)
            log_w_q = _draws(vae.model, vae.guide, x, num_samples, max_chunk)["log_w"]
            pyro.set_rng_seed(seed)
            log_w_star = _draws(vae.model, local, x, num_samples, max_chunk)["log_w"]
            params = {k: v.detach().cpu() for k, v in vae.guide_family.params(local.h).items()}
            from_q = _draws(vae.model, vae.guide, x, log_likelihood_samples, max_chunk,
                            other=lambda start, stop: vae.guide_family(local.h[start:stop]))
            from_star = _draws(vae.model, local, x, log_likelihood_samples, max_chunk,
                               other=lambda start, stop: vae.guide_family(vae.encoder(x[start:stop])))
    log_px, log_px_q, log_px_star = _log_likelihoods(from_q, from_star)
    elbo_q, se_q = _mean_and_stderr(log_w_q)
    elbo_star, se_star = _mean_and_stderr(log_w_star)
    _, se_gap = _mean_and_stderr(log_w_star - log_w_q)
    return {
        "elbo": elbo_q, "elbo_optimized": elbo_star, "log_likelihood": log_px,
        "log_likelihood_amortized": log_px_q, "log_likelihood_optimized": log_px_star,
        "inference_gap": log_px - elbo_q, "amortization_gap": elbo_star - elbo_q,
        "approximation_gap": log_px - elbo_star,
        "elbo_stderr": se_q, "elbo_optimized_stderr": se_star, "amortization_gap_stderr": se_gap,
        "optimized_params": params, "history": history,
    }


# --- posterior collapse -------------------------------------------------------------------------------------


def posterior_collapse(vae: VAE, x: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> dict:
    r"""Which latent dimensions carry information: KL per dimension and active units.

    Dimension d is active when the variance over images of its posterior mean, Cov_x(E_{q(z|x)}[z_d]),
    exceeds ``threshold`` (Burda, Grosse & Salakhutdinov 2016, who found 19-20 of 50 active for a
    one-layer VAE). A collapsed dimension has q(z_d|x) = p(z_d) for every x: KL 0 and variance 0.
    Computed by :func:`pyrovae.evaluate.kl_per_dimension` and :func:`pyrovae.evaluate.active_units`.

    Args:
        vae: a trained model.
        x: ``(n, *x_shape)`` images, n >= 2 (the whole test set is cheap: one encoder pass).
        threshold: the activity threshold on the variance.

    Returns:
        dict with ``kl_per_dimension`` ``(z_dim,)`` (nats, mean over images; None where the prior or the
        guide does not factorize over the dimensions, e.g. a VampPrior or an IAF guide, so that the KL
        has no per-dimension split), ``variance`` ``(z_dim,)``, ``active`` ``(z_dim,)`` bool and
        ``active_units`` (the count).

    Raises:
        ValueError: bad ``x``, fewer than 2 images, or a negative ``threshold``.
    """
    units = active_units(vae, x, threshold)
    try:
        kl = kl_per_dimension(vae, x).double()
    except ValueError as e:
        if "factoriz" not in str(e):
            raise
        kl = None
    return {"kl_per_dimension": kl, "variance": units["variance"].double(), "active": units["active"],
            "active_units": units["num_active"]}


@torch.no_grad()
def latent_traversal(vae: VAE, z: torch.Tensor, dims: Sequence[int], offsets: Sequence[float]) -> torch.Tensor:
    """Decode z with one dimension moved at a time: the mean of p(x | z + offset e_d) for each d in ``dims``
    and each offset.

    Args:
        vae: the model.
        z: ``(z_dim,)`` the centre, e.g. the posterior mean of one test image.
        dims: the latent dimensions to move (rows of the result).
        offsets: the displacements along each (columns), in units of z (the standard normal prior's sd).

    Returns:
        ``(len(dims), len(offsets), *x_shape)``: decoded means (pixel probabilities for Bernoulli).

    Raises:
        ValueError: ``z`` is not ``(z_dim,)``; a dimension out of range.
    """
    z = torch.as_tensor(z)
    if tuple(z.shape) != (vae.z_dim,):
        raise ValueError(f"z must be one latent vector of shape ({vae.z_dim},), got {tuple(z.shape)}")
    bad = [d for d in dims if not 0 <= int(d) < vae.z_dim]
    if bad:
        raise ValueError(f"dims {bad} are out of range for z_dim = {vae.z_dim}")
    offsets = torch.as_tensor(list(offsets), dtype=z.dtype, device=z.device)
    grid = z.expand(len(dims), len(offsets), vae.z_dim).clone()
    for row, d in enumerate(dims):
        grid[row, :, int(d)] += offsets
    with _frozen(vae):
        return vae.decode(grid.to(_device(vae))).mean.cpu()


# --- ArviZ --------------------------------------------------------------------------------------------------


def to_inference_data(samples: Mapping[str, torch.Tensor], image_ids: Sequence[int] | None = None,
                      psis: Mapping[str, torch.Tensor] | None = None,
                      reference: Mapping[int, Mapping] | None = None) -> "az.InferenceData":
    r"""q(z|x) draws, their importance weights and NUTS reference draws as one ``arviz.InferenceData``.

    Groups (each image labelled by its ``image`` coordinate, e.g. its index in the test set):

    * ``posterior``: ``z`` (chain, draw, image, z_dim), the draws of q(z|x) as one chain;
    * ``sample_stats``: ``log_weight`` (chain, draw, image), log p(x, z) - log q(z|x) in nats;
    * ``psis`` (with ``psis``): ``khat``, ``ess_fraction`` (image);
    * ``reference_posterior`` (with ``reference``): ``z`` (chain, draw, image, z_dim), NUTS draws of
      p(z|x) for the images in ``reference`` (``az.rhat(idata.reference_posterior)`` works on it).

    Save it with :func:`save_netcdf` (atomic) or ``idata.to_netcdf(path)``; read it back with
    ``arviz.from_netcdf(path)``.

    Args:
        samples: :func:`posterior_samples`' result: ``z`` ``(S, n, z_dim)``, ``log_weights`` ``(S, n)``.
        image_ids: n distinct integers naming the images (default 0..n-1).
        psis: :func:`psis_khat`'s result for the same images.
        reference: image id -> :func:`mcmc_reference`'s result; all with the same number of chains and
            draws.

    Returns:
        an ``arviz.InferenceData`` with the groups above (values in float64).

    Raises:
        ValueError: shapes that disagree, repeated image ids, or reference runs of different sizes.
    """
    z, log_w = torch.as_tensor(samples["z"]), torch.as_tensor(samples["log_weights"])
    if z.dim() != 3 or tuple(log_w.shape) != tuple(z.shape[:2]):
        raise ValueError(f"samples must hold z (S, n, z_dim) and log_weights (S, n); got z {tuple(z.shape)} and "
                         f"log_weights {tuple(log_w.shape)}")
    n, z_dim = z.shape[1], z.shape[2]
    ids = list(range(n)) if image_ids is None else [int(i) for i in image_ids]
    if len(ids) != n or len(set(ids)) != n:
        raise ValueError(f"image_ids must be {n} distinct integers (one per image of samples), got {list(image_ids)}")
    coords = {"image": ids, "z_dim": list(range(z_dim))}
    idata = az.from_dict(
        posterior={"z": z[None].double().numpy()}, sample_stats={"log_weight": log_w[None].double().numpy()},
        coords=coords, dims={"z": ["image", "z_dim"], "log_weight": ["image"]},
        attrs={"inference_library": "pyro", "description": "draws of the amortized guide q(z|x)"})
    groups = {}
    if psis is not None:
        groups["psis"] = az.dict_to_dataset(
            {k: torch.as_tensor(psis[k]).double().numpy() for k in ("khat", "ess_fraction")},
            coords={"image": ids}, dims={"khat": ["image"], "ess_fraction": ["image"]}, default_dims=[])
    if reference:
        ref_ids = [int(i) for i in reference]
        shapes = {tuple(torch.as_tensor(r["z"]).shape) for r in reference.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != z_dim:
            raise ValueError(f"every reference must hold z (num_chains, num_samples, {z_dim}) of one common shape, "
                             f"got shapes {sorted(shapes)}")
        ref_z = torch.stack([torch.as_tensor(reference[i]["z"]) for i in reference], dim=2)
        groups["reference_posterior"] = az.dict_to_dataset(
            {"z": ref_z.double().numpy()}, coords={"image": ref_ids, "z_dim": list(range(z_dim))},
            dims={"z": ["image", "z_dim"]}, attrs={"description": "NUTS draws of the exact posterior p(z|x)"})
    if groups:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # ArviZ notes that these group names are its extensions
            idata.add_groups(groups)
    return idata


def save_netcdf(idata: "az.InferenceData", path: str | os.PathLike) -> Path:
    """Write ``idata`` to ``path`` as NetCDF (h5netcdf) atomically: a reader sees the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# --- the whole report ---------------------------------------------------------------------------------------


def _jsonable(value):
    """Tensors and arrays to lists, non-finite floats to None (JSON has no inf or NaN)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (numbers.Integral,)):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value


def _summary(values: torch.Tensor) -> dict:
    v = values.double()
    n = v.numel()
    return {"mean": v.mean().item(), "stderr": v.std().item() / math.sqrt(n) if n > 1 else float("nan")}


def _mcmc_row(image: int, ref: dict, samples: dict, psis: dict, j: int) -> dict:
    """How q(z|x) of image ``image`` (column ``j`` of ``samples``) compares with its NUTS reference."""
    q_mean, q_sd = samples["z"][:, j].mean(0).double(), samples["z"][:, j].std(0).double()
    return {"image": image, "seconds": ref["seconds"], "num_workers": ref["num_workers"],
            "max_rhat": ref["rhat"].max().item(),
            "min_ess_bulk": ref["ess_bulk"].min().item(), "min_ess_tail": ref["ess_tail"].min().item(),
            "divergences": ref["divergences"], "step_size": ref["step_size"], "khat": psis["khat"][j].item(),
            "max_abs_mean_difference_in_nuts_sd": ((q_mean - ref["mean"]) .abs() / ref["sd"]).max().item(),
            "median_sd_ratio_q_over_nuts": (q_sd / ref["sd"]).median().item(),
            "nuts_mean": ref["mean"], "nuts_sd": ref["sd"], "rhat": ref["rhat"], "ess_bulk": ref["ess_bulk"]}


def _draw_figures(vae: VAE, x: torch.Tensor, image_ids: list[int], samples: dict, psis: dict, collapse: dict,
                  reference: dict, idata, run_dir: Path, pair_dims: int, traversal_dims: int) -> dict:
    """The figures of :func:`diagnose`; returns {key: file name} of those drawn."""
    from . import plots

    files = {"khat": FIG_KHAT, "kl_per_dimension": FIG_KL}
    plots.plot_khat_histogram(psis["khat"], run_dir / FIG_KHAT, good=KHAT_GOOD, bad=KHAT_BAD)
    kl = collapse["kl_per_dimension"]
    if kl is not None:
        plots.plot_kl_per_dimension(kl, collapse["active"], run_dir / FIG_KL)
    else:  # no per-dimension KL for this prior or guide: show what defines activity instead
        plots.plot_kl_per_dimension(collapse["variance"], collapse["active"], run_dir / FIG_KL,
                                    ylabel="Cov_x(E_q[z_d]) (variance of the posterior mean over images)")
    ranking = torch.argsort(kl if kl is not None else collapse["variance"], descending=True).tolist()
    if reference:
        columns = [image_ids.index(i) for i in reference]
        plots.plot_posterior_comparison(
            samples["z"][:, columns].mean(0), samples["z"][:, columns].std(0),
            torch.stack([r["mean"] for r in reference.values()]), torch.stack([r["sd"] for r in reference.values()]),
            run_dir / FIG_Q_VS_NUTS, labels=[f"image {i}" for i in reference])
        files["q_vs_nuts"] = FIG_Q_VS_NUTS
        dims = sorted(ranking[:min(pair_dims, vae.z_dim)])
        for i in reference:
            plots.plot_pair_overlay(idata, i, dims, run_dir / _pair_figure(i))
            files[f"pair_image{i}"] = _pair_figure(i)
    active_dims = [d for d in ranking if collapse["active"][d]][:traversal_dims]
    if active_dims and len(vae.x_shape) == 3:
        offsets = torch.linspace(-3, 3, 9)
        decoded = latent_traversal(vae, posterior_means(vae, x[:1])[0], active_dims, offsets)
        plots.plot_traversals(decoded, active_dims, offsets.tolist(), run_dir / FIG_TRAVERSALS,
                              title=f"latent traversals around the posterior mean of test image {image_ids[0]}")
        files["traversals"] = FIG_TRAVERSALS
    return files


def diagnose(vae: VAE, test_x: torch.Tensor, run_dir: str | os.PathLike, num_images: int = 16,
             num_samples: int = 1000, mcmc_images: int = 2, mcmc_samples: int = 500, mcmc_warmup: int = 500,
             num_chains: int = 2, gap_steps: int = 300, gap_lr: float = 0.02, gap_particles: int = 8,
             log_likelihood_samples: int = 1000, pair_dims: int = 4, traversal_dims: int = 10,
             image_ids: Sequence[int] | None = None, seed: int = 0, jit_compile: bool = True,
             nuts_workers: int | None = None) -> dict:
    r"""Every diagnostic of this module for a trained VAE, written to ``run_dir`` with a one-page report.

    For the first ``num_images`` test images (or those in ``image_ids``): ``num_samples`` draws of q(z|x),
    PSIS k-hat and ESS (:func:`psis_khat`), the ELBO, log p(x) and the inference, amortization and
    approximation gaps (:func:`amortization_gap`, skipped when ``gap_steps == 0``); for the first
    ``mcmc_images`` of them a NUTS reference posterior (:func:`mcmc_reference`); for all of ``test_x``
    the KL per dimension and the active units (:func:`posterior_collapse`).

    Writes (each file atomically; nothing else in ``run_dir`` is touched): ``diagnostics.nc``
    (:func:`to_inference_data`), ``diagnostics.json`` (all numbers), ``diagnostics.md`` (figures and
    numbers on one page), ``diagnostics_khat.png``, ``diagnostics_kl_per_dimension.png``,
    ``diagnostics_q_vs_nuts.png`` and ``diagnostics_pair_image{i}.png`` (with NUTS), and
    ``diagnostics_traversals.png`` (for image data with active dimensions).

    Args:
        vae: a trained model (left unchanged).
        test_x: ``(N, *x_shape)`` test images.
        run_dir: where to write (created if missing).
        num_images, num_samples: images and q draws per image for k-hat and the gaps (num_samples >= 25).
        mcmc_images, mcmc_samples, mcmc_warmup, num_chains: NUTS settings (0 images: no NUTS).
        gap_steps, gap_lr, gap_particles: SVI for q* (0 steps: no gaps).
        log_likelihood_samples: K for log p(x).
        pair_dims: latent dimensions (those of largest KL) in the q-vs-NUTS pair plots.
        traversal_dims: at most this many active dimensions in the traversal figure.
        image_ids: indices into ``test_x`` to diagnose instead of the first ``num_images``.
        seed: seeds every random step.
        jit_compile: JIT-compile NUTS's potential energy.
        nuts_workers: processes for the NUTS chains (see :func:`mcmc_reference`; default one per chain
            up to the number of cores on the CPU, 1 on a GPU).

    Returns:
        the content of ``diagnostics.json``: ``summary`` (the headline numbers), ``images``, ``psis``,
        ``gaps``, ``collapse``, ``mcmc``, ``settings``, ``seconds`` and ``files``.

    Raises:
        ValueError: bad ``test_x``; a count out of range (``num_samples < 25``, ``num_chains < 2`` with
            NUTS, ``mcmc_images > num_images``); image ids out of range.
    """
    t_start = time.perf_counter()
    vae.check_data(test_x)
    if image_ids is None:
        num_images = _count("num_images", num_images)
        if num_images > test_x.shape[0]:
            raise ValueError(f"num_images={num_images} but test_x holds only {test_x.shape[0]} images")
        image_ids = list(range(num_images))
    else:
        image_ids = [int(i) for i in image_ids]
        bad = [i for i in image_ids if not 0 <= i < test_x.shape[0]]
        if not image_ids or bad or len(set(image_ids)) != len(image_ids):
            raise ValueError(f"image_ids must be distinct indices into test_x (0..{test_x.shape[0] - 1}), "
                             f"got {image_ids}")
    num_samples = _count("num_samples", num_samples, 25)
    mcmc_images, gap_steps = _count("mcmc_images", mcmc_images, 0), _count("gap_steps", gap_steps, 0)
    if mcmc_images > len(image_ids):
        raise ValueError(f"mcmc_images={mcmc_images} exceeds the {len(image_ids)} images diagnosed; "
                         "raise num_images or lower mcmc_images")
    if mcmc_images:
        _count("num_chains", num_chains, 2), _count("mcmc_samples", mcmc_samples), _count("mcmc_warmup", mcmc_warmup)
    if gap_steps:
        _positive("gap_lr", gap_lr), _count("gap_particles", gap_particles)
        _count("log_likelihood_samples", log_likelihood_samples)
    pair_dims, traversal_dims = _count("pair_dims", pair_dims, 2), _count("traversal_dims", traversal_dims, 0)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    x = test_x[image_ids]
    seconds = {}

    t0 = time.perf_counter()
    pyro.set_rng_seed(seed)
    samples = posterior_samples(vae, x, num_samples)
    psis = psis_khat(samples["log_weights"])
    seconds["psis"] = time.perf_counter() - t0

    gaps = None
    if gap_steps:
        t0 = time.perf_counter()
        gaps = amortization_gap(vae, x, steps=gap_steps, lr=gap_lr, num_particles=gap_particles,
                                num_samples=num_samples, log_likelihood_samples=log_likelihood_samples, seed=seed)
        seconds["gaps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    collapse = posterior_collapse(vae, test_x)
    seconds["collapse"] = time.perf_counter() - t0

    reference = {}
    t0 = time.perf_counter()
    for i in image_ids[:mcmc_images]:
        reference[i] = mcmc_reference(vae, test_x[i], mcmc_samples, mcmc_warmup, num_chains, seed=seed,
                                      jit_compile=jit_compile, num_workers=nuts_workers)
    if reference:
        seconds["mcmc"] = time.perf_counter() - t0

    idata = to_inference_data(samples, image_ids, psis, reference)
    save_netcdf(idata, run_dir / NETCDF)

    files = {"netcdf": NETCDF, **_draw_figures(vae, x, image_ids, samples, psis, collapse, reference, idata,
                                                run_dir, pair_dims, traversal_dims)}
    mcmc_rows = [_mcmc_row(i, r, samples, psis, image_ids.index(i)) for i, r in reference.items()]
    khat = psis["khat"]
    summary = {
        "num_images": len(image_ids), "z_dim": vae.z_dim,
        "share_khat_above_0.7": (khat > KHAT_BAD).double().mean().item(),
        "share_khat_0.5_to_0.7": ((khat > KHAT_GOOD) & (khat <= KHAT_BAD)).double().mean().item(),
        "median_khat": khat.median().item(),
        "mean_ess_fraction": psis["ess_fraction"].mean().item(),
        "active_units": collapse["active_units"],
    }
    gap_json = None
    if gaps is not None:
        names = ("log_likelihood", "elbo", "elbo_optimized", "inference_gap", "amortization_gap", "approximation_gap")
        for name in names:
            summary[f"{name}_nats"] = _summary(gaps[name])
        gap_json = {name: gaps[name] for name in names + (
            "log_likelihood_amortized", "log_likelihood_optimized", "elbo_stderr", "elbo_optimized_stderr",
            "amortization_gap_stderr")}
        gap_json["svi_history_elbo"] = gaps["history"]
    if mcmc_rows:
        summary["nuts_seconds_per_image"] = sum(r["seconds"] for r in mcmc_rows) / len(mcmc_rows)
        summary["nuts_max_rhat"] = max(r["max_rhat"] for r in mcmc_rows)
    seconds["total"] = time.perf_counter() - t_start
    files.update({"json": JSON, "report": REPORT})
    result = {
        "summary": summary, "images": image_ids,
        "psis": {"khat": khat, "ess": psis["ess"], "ess_fraction": psis["ess_fraction"],
                 "thresholds": [KHAT_GOOD, KHAT_BAD],
                 "note": "khat null: -inf, all log weights equal (q(z|x) is the posterior)"},
        "gaps": gap_json,
        "collapse": {"kl_per_dimension": collapse["kl_per_dimension"],
                     "variance_of_posterior_mean": collapse["variance"], "active": collapse["active"],
                     "active_units": collapse["active_units"], "threshold": ACTIVE_UNIT_THRESHOLD,
                     "num_images": int(test_x.shape[0])},
        "mcmc": mcmc_rows,
        "settings": {"num_samples": num_samples, "mcmc_images": mcmc_images, "mcmc_samples": mcmc_samples,
                     "mcmc_warmup": mcmc_warmup, "num_chains": num_chains, "gap_steps": gap_steps, "gap_lr": gap_lr,
                     "gap_particles": gap_particles, "log_likelihood_samples": log_likelihood_samples,
                     "seed": seed, "jit_compile": jit_compile, "pair_dims": pair_dims,
                     "nuts_workers": nuts_workers},
        "seconds": seconds, "files": files,
    }
    result = _jsonable(result)
    atomic_write_text(run_dir / JSON, json.dumps(result, indent=2) + "\n")
    atomic_write_text(run_dir / REPORT, _report(result))
    return result


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _khat_text(value) -> str:
    """k-hat as JSON holds it: None stands for -inf (constant weights)."""
    return "-inf" if value is None else f"{value:.2f}"


def _report(r: dict) -> str:
    """The Markdown page of :func:`diagnose`: headline table, figures, per-image tables."""
    s, files = r["summary"], r["files"]
    out = ["# Posterior diagnostics\n",
           f"{s['num_images']} test images, {r['settings']['num_samples']} draws of q(z|x) each; "
           f"z_dim = {s['z_dim']}. All log-densities in nats per image. Numbers: `{JSON}`; draws (ArviZ "
           f"InferenceData): `{NETCDF}`.\n",
           "| quantity | value |", "|---|---|"]
    if r["gaps"] is not None:
        k = r["settings"]["log_likelihood_samples"]
        for key, label in (("log_likelihood_nats", f"log p(x) (IS from q and q*, K={k} each)"),
                           ("elbo_nats", "ELBO(q)"), ("elbo_optimized_nats", "ELBO(q*), per-image optimum"),
                           ("inference_gap_nats", "inference gap log p(x) - ELBO(q)"),
                           ("amortization_gap_nats", "amortization gap ELBO(q*) - ELBO(q)"),
                           ("approximation_gap_nats", "approximation gap log p(x) - ELBO(q*)")):
            out.append(f"| {label} | {s[key]['mean']:.2f} +- {_fmt(s[key]['stderr'])} |")
    out += [f"| share of images with PSIS k-hat > 0.7 | {s['share_khat_above_0.7']:.2f} |",
            f"| share with 0.5 < k-hat <= 0.7 | {s['share_khat_0.5_to_0.7']:.2f} |",
            f"| median k-hat | {_khat_text(s['median_khat'])} |",
            f"| mean IS efficiency ESS/S | {s['mean_ess_fraction']:.3f} |",
            f"| active units (Cov_x E[z_d] > {r['collapse']['threshold']}) | {s['active_units']} of {s['z_dim']} |"]
    if "nuts_seconds_per_image" in s:
        out.append(f"| NUTS seconds per image ({r['settings']['num_chains']} chains) | "
                   f"{s['nuts_seconds_per_image']:.1f} |")
    out.append("")
    if r["gaps"] is not None:
        out += ["+- is the standard error over images. Gaps follow Cremer, Li & Duvenaud (2018); q* is the guide "
                "family's best member for each image, found by SVI from the encoder's output.", ""]

    out += ["## PSIS k-hat", "",
            "Yao et al. (2018): k-hat < 0.5 good, 0.5-0.7 usable, > 0.7 importance sampling with q(z|x) alone (as "
            "`pyrovae evaluate` does for the test log-likelihood) is unreliable for that image.", "",
            f"![k-hat histogram]({files['khat']})", "",
            "| image | k-hat | ESS/S |" + (" ELBO(q) | log p(x) | amortization gap | approximation gap |"
                                          if r["gaps"] else ""),
            "|---|---|---|" + ("---|---|---|---|" if r["gaps"] else "")]
    for j, i in enumerate(r["images"]):
        row = f"| {i} | {_khat_text(r['psis']['khat'][j])} | {r['psis']['ess_fraction'][j]:.3f} |"
        if r["gaps"]:
            g = r["gaps"]
            row += (f" {g['elbo'][j]:.2f} | {g['log_likelihood'][j]:.2f} | {g['amortization_gap'][j]:.2f} |"
                    f" {g['approximation_gap'][j]:.2f} |")
        out.append(row)

    c = r["collapse"]
    out += ["", "## Posterior collapse", "",
            f"{c['active_units']} of {s['z_dim']} latent dimensions are active (Burda et al. 2016; over "
            f"{c['num_images']} test images). " + (
                "KL of each dimension, mean over images:" if c["kl_per_dimension"] is not None else
                "This prior or guide has no per-dimension KL; the figure shows Cov_x(E_q[z_d]) instead:"), "",
            f"![KL per dimension]({files['kl_per_dimension']})", ""]
    if "traversals" in files:
        out += [f"Latent traversals: each row moves one active dimension (largest KL first) from -3 to +3 "
                f"around the posterior mean of test image {r['images'][0]}.", "",
                f"![latent traversals]({files['traversals']})", ""]

    if r["mcmc"]:
        out += ["## q(z|x) against NUTS", "",
                "NUTS samples the exact posterior p(z|x) with the trained decoder. Means and standard deviations "
                "of q against NUTS, one point per latent dimension:", "", f"![q vs NUTS]({files['q_vs_nuts']})", "",
                "| image | k-hat | max R-hat | min bulk ESS | divergences | max abs(mean_q - mean_NUTS) / sd_NUTS "
                "| median sd_q / sd_NUTS | seconds |", "|---|---|---|---|---|---|---|---|"]
        for m in r["mcmc"]:
            out.append(f"| {m['image']} | {_khat_text(m['khat'])} | {m['max_rhat']:.3f} | {m['min_ess_bulk']:.0f} | "
                       f"{m['divergences']} | {m['max_abs_mean_difference_in_nuts_sd']:.2f} | "
                       f"{m['median_sd_ratio_q_over_nuts']:.2f} | {m['seconds']:.1f} |")
        out += ["", "R-hat above 1.01 or a bulk ESS below 100 per chain means the reference itself is not to be "
                "trusted. Pair plots (q in blue, NUTS in orange) for the dimensions of largest KL:", ""]
        for m in r["mcmc"]:
            figure = files[f"pair_image{m['image']}"]
            out += [f"![pair plot, image {m['image']}]({figure})", ""]
    return "\n".join(out) + "\n"
