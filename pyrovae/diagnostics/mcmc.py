"""A reference posterior by NUTS (Hoffman & Gelman 2014): Pyro's NUTS on p(z | x_i) with the trained
model, several chains, with R-hat and effective sample sizes from ArviZ, to hold q(z | x_i) against.

Pyro's multi-chain ``MCMC`` (``num_chains > 1``) runs its chains in worker processes of its own making;
here each chain is its own single-chain ``MCMC``, run in worker processes that pyrovae sizes and threads
(one thread per worker on the CPU) and that falls back to running the chains in this process when
workers cannot start, so that the draws depend on the seed and not on the number of workers.

The workers are fresh interpreters (``python -c``) that read the model from a file and never import the
caller's main module (multiprocessing's ``spawn`` re-runs a script without an ``if __name__ == "__main__":``
guard in every worker). Only a model that uses classes defined in the main module itself needs it: a guarded
script is imported in the workers (as ``spawn`` does), an unguarded one (or a notebook) runs the chains in
this process.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

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


# --- worker processes that never import the caller's main module -------------------------------------------

#: What a worker runs: read the header (plain data), take the caller's sys.path, then hand over to
#: :func:`_worker_main`. Nothing of the caller's ``__main__`` is imported unless the header says so.
_BOOT = ("import pickle, sys\n"
         "f = open(sys.argv[1], 'rb')\n"
         "header = pickle.load(f)\n"
         "sys.path[:] = header['sys_path']\n"
         "from pyrovae.diagnostics.mcmc import _worker_main\n"
         "_worker_main(header, f, int(sys.argv[2]), sys.argv[3])\n")


class _MainFinder(pickle.Pickler):
    """A pickler that notes whether anything it pickles is defined in ``__main__``."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.uses_main = False

    def reducer_override(self, obj):
        if not self.uses_main and isinstance(obj, (type, types.FunctionType)) and obj.__module__ == "__main__":
            self.uses_main = True
        return NotImplemented


def _is_main_test(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
            and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides))


def main_is_guarded() -> bool:
    """The main module is a file whose top level holds ``if __name__ == "__main__":`` (so importing it in a
    worker, as multiprocessing's ``spawn`` does, does not run the script)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path:
        return False
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.If) and _is_main_test(node.test) for node in tree.body)


def _main_preparation() -> dict:
    """How a worker imports the main module when the model needs it: multiprocessing's own preparation data
    (``init_main_from_name`` or ``init_main_from_path``), which ``multiprocessing.spawn.prepare`` follows."""
    from multiprocessing import spawn

    data = spawn.get_preparation_data("pyrovae-nuts")
    return {k: v for k, v in data.items() if k in ("init_main_from_name", "init_main_from_path")}


def _worker_main(header: dict, f, worker: int, result_path: str) -> None:
    """A worker: import the main module only if the header says so, read the chains' arguments, run this
    worker's chains, write ``("ok", results)`` or ``("error", exception, traceback)`` (a chain failed) or
    ``("startup", message)`` (the payload could not be read) to ``result_path``."""
    import traceback

    try:
        if header.get("main"):
            from multiprocessing import spawn
            spawn.prepare(header["main"])
        torch.set_num_threads(header["threads"])
        model, args, site, chains = pickle.load(f)
    except BaseException as e:  # noqa: BLE001 - reported to the caller, which runs the chains itself
        outcome = ("startup", f"{type(e).__name__}: {e}")
    else:
        try:
            outcome = ("ok", [(c, _nuts_chain(model, args, site, *a)) for c, a in chains[worker::header["workers"]]])
        except BaseException as e:  # noqa: BLE001
            tb = traceback.format_exc()
            try:
                pickle.dumps(e)
            except Exception:  # noqa: BLE001
                e = RuntimeError(f"{type(e).__name__}: {e}")
            outcome = ("error", e, tb)
    with open(result_path, "wb") as out:
        pickle.dump(outcome, out)


class _WorkersFailed(Exception):
    """Worker processes could not run the chains (not a failure of a chain itself)."""


def _run_in_workers(model, args: tuple, site: str, chain_args: list, workers: int, threads: int) -> list:
    """The chains' results, computed in ``workers`` fresh worker processes (see :data:`_BOOT`).

    Raises:
        _WorkersFailed: the model cannot be pickled or needs the main module of an unguarded script, or a
            worker could not start or read it.
        Exception: a chain's own error, as the worker raised it.
    """
    buffer = io.BytesIO()
    finder = _MainFinder(buffer)
    try:
        finder.dump((model, args, site, list(enumerate(chain_args))))
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise _WorkersFailed(f"the model cannot be pickled ({type(e).__name__}: {e})") from None
    main = {}
    if finder.uses_main:
        if not main_is_guarded():
            raise _WorkersFailed("the model uses classes defined in the main module, which has no "
                                 "'if __name__ == \"__main__\":' guard (a worker would run the whole script "
                                 "again); define them in a module, or guard the script, to run chains in parallel")
        main = _main_preparation()
    header = {"sys_path": list(sys.path), "main": main, "threads": threads, "workers": workers}
    with tempfile.TemporaryDirectory(prefix="pyrovae-nuts-") as tmp:
        payload = Path(tmp) / "payload.pkl"
        results, procs = {}, []
        try:
            try:
                with open(payload, "wb") as f:
                    pickle.dump(header, f, protocol=pickle.HIGHEST_PROTOCOL)
                    f.write(buffer.getvalue())
                for w in range(workers):
                    procs.append(subprocess.Popen([sys.executable, "-c", _BOOT, str(payload), str(w),
                                                   str(Path(tmp) / f"result{w}.pkl")], stdin=subprocess.DEVNULL))
            except OSError as e:
                raise _WorkersFailed(f"the workers could not start ({type(e).__name__}: {e})") from None
            for w, proc in enumerate(procs):
                proc.wait()
                path = Path(tmp) / f"result{w}.pkl"
                if not path.exists():
                    raise _WorkersFailed(f"worker {w} ended with exit status {proc.returncode} and no result")
                with open(path, "rb") as f:
                    outcome = pickle.load(f)
                if outcome[0] == "error":
                    raise outcome[1]
                if outcome[0] == "startup":
                    raise _WorkersFailed(f"worker {w} could not read the model: {outcome[1]}")
                results.update(outcome[1])
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return [results[c] for c in range(len(chain_args))]


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
    the number of cores; fresh interpreters, each with ``torch.get_num_threads() // num_workers``
    threads), each chain the same computation it is in one process: at equal threads per chain the draws
    depend on ``seed`` and not on the number of workers. (Another thread count changes the rounding of
    multi-threaded kernels, which NUTS's chaotic trajectories turn into other, equally valid, chains.)
    On a GPU the chains always run in this process. The workers never import the caller's main module, so
    a script without ``if __name__ == "__main__":`` is not run again; only a model built from classes
    defined in the main module itself needs it in the workers: imported there when the script has the
    guard, otherwise the chains run in this process (with a warning), as they do when the workers cannot
    start or the model cannot be pickled; an error raised by a chain itself is raised as it is.

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
        threads = max(1, torch.get_num_threads() // workers)
        try:
            results = _run_in_workers(model, args, site, chain_args, workers, threads)
        except _WorkersFailed as e:  # a chain's own error is raised as it is
            warnings.warn(f"NUTS worker processes were not used ({e}); running the {num_chains} chains one after "
                          "another in this process", RuntimeWarning)
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


