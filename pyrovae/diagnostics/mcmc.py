"""A reference posterior by NUTS (Hoffman & Gelman 2014): Pyro's NUTS on p(z | x_i) with the trained
model, several chains, with R-hat and effective sample sizes from ArviZ, to hold q(z | x_i) against.

Pyro's multi-chain ``MCMC`` (``num_chains > 1``) runs its chains in worker processes of its own making;
here each chain is its own single-chain ``MCMC``, run in a process pool that pyrovae sizes and threads
(one thread per worker on the CPU) and that falls back to running the chains in this process when
workers cannot start, so that the draws depend on the seed and not on the number of workers.
"""

from __future__ import annotations

import os
import pickle
import time
import warnings

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import MCMC, NUTS
from pyro.poutine.util import site_is_subsample
from torch.distributions.transforms import identity_transform

from .. import checks
from ..errors import DataError, UnsupportedError
from ..evaluation.programs import check_arguments, program_device
from ..torchtools import rng_kept
from .arviz_io import az
from .psis import frozen_programs


def _init_uniform(site: dict) -> torch.Tensor:
    """Pyro's ``init_to_uniform`` for a real-valued latent: uniform in [-2, 2] per dimension. (Pyro's own
    maps through ``transform_to(support)``, which a mixture prior's support constraint does not have.)"""
    value = site["fn"].sample().detach()
    return torch.rand_like(value) * 4 - 2


def _nuts_chain(model, args: tuple, site: str, num_samples: int, warmup: int, seed: int, jit_compile: bool,
                max_tree_depth: int, progress: bool) -> tuple[torch.Tensor, float, int]:
    """One NUTS chain on p(z | one data point's ``args``), seeded with ``seed``: ``(z (num_samples, z_dim) on
    the CPU, adapted step size, divergent transitions after warmup)``. Module level, so that worker processes
    can run it."""
    with frozen_programs(model), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated",
                                category=DeprecationWarning)
        pyro.set_rng_seed(seed)
        kernel = NUTS(model, jit_compile=jit_compile, ignore_jit_warnings=True,
                      max_tree_depth=max_tree_depth, max_plate_nesting=1, init_strategy=_init_uniform,
                      transforms={site: identity_transform})
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, num_chains=1,
                    disable_progbar=not progress)
        mcmc.run(*args)
        z = mcmc.get_samples()[site].detach().reshape(num_samples, -1).cpu()
        divergences = len(mcmc.diagnostics().get("divergences", {}).get("chain 0", []))
    return z, float(kernel.step_size), divergences


def _init_chain_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _default_workers(num_chains: int) -> int:
    """One process per chain, as many as there are cores (on the CPU; a GPU keeps one process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(num_chains, cores))


def check_nuts_target(model, *args, site: str = "z") -> None:
    """Raise :class:`~pyrovae.errors.UnsupportedError` unless the model's only latent site is ``site``, a
    continuous one on the real line (what :func:`mcmc_reference` samples by NUTS)."""
    with pyro.validation_enabled(False), torch.no_grad(), rng_kept(program_device(model)):
        trace = poutine.trace(model).get_trace(*args)
    latent = [s for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]
              and not site_is_subsample(s)]
    names = [s["name"] for s in latent]
    if names != [site]:
        raise UnsupportedError(f"the NUTS reference samples a model with one latent site, {site!r}; this model has "
                               f"{names}")
    if latent[0]["fn"].support.is_discrete:
        raise UnsupportedError(f"NUTS samples continuous latents; the prior of {site!r} is discrete")


def mcmc_reference(model, *args, num_samples: int = 500, warmup: int = 500, num_chains: int = 2,
                   seed: int = 0, jit_compile: bool = True, max_tree_depth: int = 10,
                   progress: bool = False, num_workers: int | None = None, site: str = "z") -> dict:
    r"""Samples of the exact posterior p(z | x_i) by NUTS, to hold q(z | x_i) against.

    Pyro's NUTS (Hoffman & Gelman 2014) runs on ``model`` for one data point, whose arguments ``args``
    (``x``; ``x, y`` for a CVAE) each have one row (the model observes x through the likelihood site,
    so the target is p(z) p(x_i | z) with the trained decoder), with step
    size and a diagonal mass matrix adapted during ``warmup``. Chain c is seeded with ``seed + c`` and
    started at a uniform draw in [-2, 2]^z_dim (as Pyro's ``init_to_uniform``; overdispersed relative to
    a VAE posterior), so that R-hat can detect chains that disagree. z is sampled on the real line as it
    is (every prior of :mod:`pyrovae.components.priors` is a density on R^z_dim). R-hat (rank-normalized split R-hat)
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
        model: the model program of a trained model (its module is left unchanged; its parameters are
            frozen while NUTS runs).
        *args: the model's arguments for one data point, each with a first dimension of 1.
        num_samples: draws kept per chain.
        warmup: adaptation steps per chain (discarded).
        num_chains: at least 2 (R-hat compares chains).
        seed: chain c uses ``pyro.set_rng_seed(seed + c)`` (in this process, this sets the global RNGs).
        jit_compile: trace the potential energy with the PyTorch JIT (faster for MLP decoders).
        max_tree_depth: NUTS's maximum tree depth (at most 2^depth leapfrog steps per draw).
        progress: show Pyro's progress bar (only with ``num_workers=1``).
        num_workers: processes for the chains; 1 runs them one after another in this process. Default:
            see above (always 1 on a GPU).
        site: the latent site (default ``"z"``; it must be the model's only one).

    Returns:
        dict with ``z`` ``(num_chains, num_samples, z_dim)``; ``mean`` and ``sd`` ``(z_dim,)`` over all
        draws; ``rhat``, ``ess_bulk`` and ``ess_tail`` ``(z_dim,)``; ``divergences`` (total number of
        divergent transitions after warmup); ``step_size`` (per chain); ``seconds`` (wall time);
        ``num_workers`` (processes used).

    Raises:
        DataError: ``args`` are not one data point's.
        ConfigError: ``num_chains < 2``; ``num_samples``, ``warmup``, ``max_tree_depth`` or ``num_workers`` < 1.
        UnsupportedError: the model has other latent sites than ``site``, or a discrete one.

    References:
        Hoffman & Gelman (2014), *The No-U-Turn Sampler*, JMLR 15.
        Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), *Rank-Normalization, Folding, and
        Localization: An Improved R-hat*, Bayesian Analysis.
    """
    num_samples, warmup = checks.positive_int(num_samples, "num_samples"), checks.positive_int(warmup, "warmup")
    num_chains = checks.integer(num_chains, "num_chains", 2, hint="R-hat compares chains")
    max_tree_depth = checks.positive_int(max_tree_depth, "max_tree_depth")
    if check_arguments(args) != 1:
        raise DataError(f"mcmc_reference samples the posterior of one data point; got arguments of shapes "
                        f"{[tuple(a.shape) for a in args]}: pass x[i:i+1], not a batch")
    device = program_device(model)
    workers = (_default_workers(num_chains) if num_workers is None
               else min(checks.positive_int(num_workers, "num_workers"), num_chains))
    if device.type != "cpu":
        workers = 1  # the chains share the GPU in this process; CUDA state does not cross spawn cheaply
    args = tuple(a.to(device) for a in args)
    check_nuts_target(model, *args, site=site)
    chain_args = [(num_samples, warmup, seed + c, jit_compile, max_tree_depth, progress and workers == 1)
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
                results = list(pool.map(_nuts_chain, *zip(*[(model, args, site, *a) for a in chain_args])))
        except (BrokenProcessPool, pickle.PicklingError, AttributeError, TypeError, OSError) as e:
            if isinstance(e.__cause__, _RemoteTraceback):
                raise  # the chain itself failed in its worker: running it again here would fail the same way
            warnings.warn(f"NUTS worker processes failed ({type(e).__name__}: {e}); running the "
                          f"{num_chains} chains one after another in this process", RuntimeWarning)
            workers = 1
    if results is None:
        results = [_nuts_chain(model, args, site, *a) for a in chain_args]
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


