"""Evaluation: the importance-sampled log-likelihood, the ELBO and its parts, and latent statistics.

For each image x the estimate of Burda, Grosse & Salakhutdinov (2016) is

    log p(x) ~= L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k | x),    z_k ~ q(z | x),

a stochastic lower bound that does not decrease in expectation with K and tends to log p(x). The
ELBO is estimated from the same draws as the mean of the log weights, and split into

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))      (reconstruction - KL, nats per image),

with the KL in closed form where ``kl_divergence`` has a rule for the guide and prior pair (as
``pyro.infer.TraceMeanField_ELBO`` does), else by Monte Carlo from the same K draws. Weights are computed
from Pyro traces of ``vae.guide`` and ``vae.model`` (replayed on the guide's z), so any prior,
likelihood and guide family plugged into the model is evaluated without extra code.

Work is chunked over (sample, image) pairs to stay under a memory cap (:func:`plan_chunks`, which
measures what one pair costs), so a prior's per-pair temporaries (a VampPrior over a low-rank guide
broadcasts (pairs, components, z_dim)) are accounted for as well as the decoder's activations.

Latent statistics: :func:`kl_per_dimension` (the KL term split over latent dimensions),
:func:`active_units` (Burda et al. 2016, Appendix C) and :func:`linear_probe` (logistic regression on
the posterior means).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.poutine.util import site_is_subsample
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm

from .distributed import DistributedContext
from .models import VAE
from .objectives import NoClosedFormKLError, kl_per_dim, log_weights_from_traces, particle_traces

#: Share of the memory cap that the plan fills: room for kernels' internal scratch buffers, which the
#: CPU measurement cannot see.
HEADROOM = 0.9


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Hold ``module`` in eval mode for the duration, then restore its training flag."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _rng_kept(device: torch.device):
    """Random draws inside leave the caller's random state (CPU, and ``device`` if CUDA) as it was."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


# --- the log weights ------------------------------------------------------------------------------


def _site_log_prob_sum(trace, observed: bool | None = None) -> torch.Tensor:
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if observed is not None and bool(site["is_observed"]) != observed:
            continue
        total = total + site["log_prob"]
    return total


def _traces(vae: VAE, x: torch.Tensor):
    """Traces of the guide and of the model replayed on the guide's latents."""
    with pyro.validation_enabled(False):
        guide_trace = poutine.trace(vae.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    return guide_trace, model_trace


def _log_weight_terms(vae: VAE, x: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_w, log_px_z)``, each ``(num_samples, batch)``: log p(x, z_k) - log q(z_k|x) and the
    reconstruction term log p(x | z_k) (the model's observed sites), from one vectorized pass of
    :func:`pyrovae.objectives.particle_traces`."""
    with pyro.validation_enabled(False):  # x was checked once at the public entry point
        model_trace, guide_trace = particle_traces(vae.model, vae.guide, num_samples, x)
    log_w = log_weights_from_traces(model_trace, guide_trace, num_samples)
    return log_w, torch.as_tensor(_site_log_prob_sum(model_trace, observed=True)).expand(log_w.shape)


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
    return _log_weight_terms(vae, x, num_samples)[0]


def _analytic_kl(vae: VAE, x: torch.Tensor) -> torch.Tensor | None:
    """KL(q(z|x) || p(z)) per image ``(batch,)`` in nats, summed over the latent sites, or None when
    ``kl_divergence`` has no closed form for some site's guide and prior pair."""
    guide_trace, model_trace = _traces(vae, x)
    total = None
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        try:
            kl = kl_divergence(site["fn"], model_trace.nodes[name]["fn"])
        except NotImplementedError:
            return None
        total = kl if total is None else total + kl
    return total


# --- memory: measure one pass, plan the chunks ---------------------------------------------------


class _TensorMemoryMeter(TorchFunctionMode):
    """Peak bytes of the tensors that the torch functions run under it allocate and that are alive at once.

    Every function's output whose storage is new is counted until the last tensor that shares the
    storage is garbage collected; views and in-place results add a holder to the storage they share.
    Tensors that existed before (parameters, the data) are not counted. Buffers that a kernel allocates
    and frees inside itself are invisible: :data:`HEADROOM` leaves room for them. (A
    ``TorchFunctionMode`` rather than a ``TorchDispatchMode``: the same counts here, without importing
    ``torch._dynamo``, which the latter costs seconds on first use.)"""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._holders: dict[int, list[int]] = {}  # storage address -> [live tensors, bytes]

    def _release(self, ptr: int) -> None:
        entry = self._holders[ptr]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._holders[ptr]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in self._holders:
                self._holders[ptr][0] += 1
            elif ptr in inputs or storage.nbytes() == 0:
                continue
            else:
                self._holders[ptr] = [1, storage.nbytes()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, ptr)
        return out


#: A log-weight pass: ``fn(tensors, num_samples)`` takes one chunk of the per-image tensors (``x``, and for
#: conditional models the labels or the conditioning input), each ``(batch, ...)`` on the device, and
#: returns ``(log_w, *terms)``, each ``(num_samples, batch)`` in nats: the log importance weights of
#: ``num_samples`` fresh draws per image and any other per-draw terms whose mean over draws is wanted.
LogWeightPass = Callable[[tuple, int], tuple]


def _vae_pass(vae: VAE) -> LogWeightPass:
    """The log-weight pass of an unconditional VAE: ``(log_w, log p(x | z))``."""
    return lambda tensors, num_samples: _log_weight_terms(vae, tensors[0], num_samples)


def _peak_bytes(log_weight_pass: LogWeightPass, tensors: tuple, num_samples: int) -> int:
    """Peak bytes that one ``log_weight_pass`` allocates on top of what exists."""
    device = tensors[0].device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = log_weight_pass(tensors, num_samples)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return peak
    meter = _TensorMemoryMeter()
    with meter:
        out = log_weight_pass(tensors, num_samples)
    del out
    return meter.peak


def _pass_peak_bytes(vae: VAE, x: torch.Tensor, num_samples: int) -> int:
    """Peak bytes that one pass of :func:`_log_weight_terms` allocates on top of what exists."""
    return _peak_bytes(_vae_pass(vae), (x,), num_samples)


@torch.no_grad()
def _measure(log_weight_pass: LogWeightPass, tensors: tuple, device: torch.device) -> dict:
    """:func:`measure_pass_memory` for any log-weight pass over ``tensors`` (each ``(n, ...)``)."""
    index = torch.arange(32) % tensors[0].shape[0]
    small, large = tuple(t[index[:16]].to(device) for t in tensors), tuple(t[index].to(device) for t in tensors)
    with _rng_kept(device):
        log_weight_pass(tuple(t[:1] for t in small), 1)  # warm-up: lazy initialization is not a per-pair cost
        p1 = _peak_bytes(log_weight_pass, small, 1)
        p2 = _peak_bytes(log_weight_pass, small, 8)
        p3 = _peak_bytes(log_weight_pass, large, 1)
    per_pair = (p2 - p1) / (16 * 7)
    if per_pair <= 0:  # allocator rounding can hide a tiny per-pair cost; fall back to the average
        per_pair = max(p2 / (16 * 8), 1.0)
    per_image = max((p3 - p1) / 16 - per_pair, 0.0)
    fixed = max(p1 - 16 * (per_image + per_pair), 0.0)
    method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "live tensor bytes (TorchFunctionMode)"
    return {"fixed_bytes": float(fixed), "bytes_per_image": float(per_image), "bytes_per_pair": float(per_pair),
            "method": method}


@torch.no_grad()
def measure_pass_memory(vae: VAE, x: torch.Tensor, device: torch.device | str | None = None) -> dict:
    """Measure the memory that the log-weight computation of :func:`log_likelihood` needs.

    One pass over m images with s samples each is modelled as

        peak bytes = fixed + m * (bytes_per_image + s * bytes_per_pair),

    fitted from three small probe passes (s, m) = (1, 16), (8, 16) and (1, 32) on images of ``x``
    (repeated if there are fewer than 32). ``fixed`` holds what does not grow with the pass (e.g. a
    VampPrior encoding its pseudo-inputs), ``bytes_per_image`` the encoder's activations and
    ``bytes_per_pair`` everything evaluated per (sample, image) pair: the decoder's activations, the
    likelihood's log-densities, and a prior's per-pair temporaries.

    On CUDA the peaks are read from ``torch.cuda.max_memory_allocated``; elsewhere they are the peak
    bytes of tensors alive at once, counted by a ``TorchFunctionMode`` over every torch function of
    the pass (on the CPU this matches the growth of the process's peak resident memory to about 1%).
    The random draws of the probes do not disturb the caller's random state.

    Args:
        vae: the model (in eval mode for a faithful measurement).
        x: ``(n, *x_shape)``, already checked, n >= 1.
        device: where the passes will run (default: where the model is).

    Returns:
        dict with ``fixed_bytes``, ``bytes_per_image``, ``bytes_per_pair`` (floats) and ``method``.
    """
    device = torch.device(device) if device is not None else next(vae.parameters()).device
    return _measure(_vae_pass(vae), (x,), device)


@dataclass(frozen=True)
class ChunkPlan:
    """How :func:`log_likelihood` splits its work: ``images_per_pass`` images with ``samples_per_pass``
    samples each go through one vectorized pass.

    Attributes:
        samples_per_pass, images_per_pass: the pass shape; ``pairs`` is their product (the chunk).
        source: ``"max_memory_gb"`` (measured, see :func:`plan_chunks`) or ``"max_chunk"`` (given).
        max_memory_gb: the cap, in GB of 10^9 bytes (None with ``max_chunk``).
        fixed_bytes, bytes_per_image, bytes_per_pair: the measured cost model (None with ``max_chunk``).
        estimated_peak_bytes: what the model predicts one pass of this shape needs (None with
            ``max_chunk``).
    """

    samples_per_pass: int
    images_per_pass: int
    source: str
    max_memory_gb: float | None = None
    fixed_bytes: float | None = None
    bytes_per_image: float | None = None
    bytes_per_pair: float | None = None
    estimated_peak_bytes: float | None = None

    @property
    def pairs(self) -> int:
        return self.samples_per_pass * self.images_per_pass

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, **asdict(self)}


def _balanced(total: int, most: int) -> int:
    """The per-pass size <= ``most`` that splits ``total`` into the fewest, most equal passes."""
    passes = -(-total // most)
    return -(-total // passes)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


def _check_memory_gb(max_memory_gb) -> float:
    if isinstance(max_memory_gb, bool) or not isinstance(max_memory_gb, numbers.Real) \
            or not math.isfinite(max_memory_gb) or max_memory_gb <= 0:
        raise ValueError(f"max_memory_gb={max_memory_gb!r} must be a positive number of gigabytes (e.g. 4)")
    return float(max_memory_gb)


@torch.no_grad()
def plan_chunks(vae: VAE, x: torch.Tensor, num_samples: int, max_memory_gb: float = 4.0,
                max_chunk: int | None = None, device: torch.device | str | None = None) -> ChunkPlan:
    """Choose how many samples and images :func:`log_likelihood` evaluates per pass.

    With ``max_chunk`` (an explicit override): ``min(num_samples, max_chunk)`` samples per pass and as
    many images as fit in ``max_chunk`` (sample, image) pairs. Otherwise the cost model of
    :func:`measure_pass_memory` is solved for the largest pass whose predicted peak stays under
    :data:`HEADROOM` x ``max_memory_gb``: first as many samples per pass as fit with one image (all K
    when they fit), then as many images as fit with those samples; both are then evened out so that
    the passes have equal sizes. The cap bounds the memory of the passes, on top of what the model and
    the data already hold.

    Args:
        vae: the model; x: ``(n, *x_shape)`` images (already checked).
        num_samples: K, importance samples per image.
        max_memory_gb: the cap in GB (10^9 bytes).
        max_chunk: the largest number of (sample, image) pairs per pass; overrides the cap.
        device: where the passes run (default: where the model is).

    Returns:
        a :class:`ChunkPlan`.

    Raises:
        ValueError: a non-positive ``num_samples``, ``max_chunk`` or ``max_memory_gb``; an empty ``x``; a
            cap too small for one (sample, image) pair.
    """
    device = torch.device(device) if device is not None else next(vae.parameters()).device
    return _plan(_vae_pass(vae), (x,), num_samples, max_memory_gb, max_chunk, device)


def _plan(log_weight_pass: LogWeightPass, tensors: tuple, num_samples: int, max_memory_gb: float,
          max_chunk: int | None, device: torch.device) -> ChunkPlan:
    """:func:`plan_chunks` for any log-weight pass over ``tensors`` (each ``(n, ...)``)."""
    num_samples = _check_positive_int(num_samples, "num_samples")
    n = int(tensors[0].shape[0])
    if n < 1:
        raise ValueError(f"x holds no images (shape {tuple(tensors[0].shape)}); pass at least one")
    if max_chunk is not None:
        max_chunk = _check_positive_int(max_chunk, "max_chunk")
        samples = min(num_samples, max_chunk)
        return ChunkPlan(samples, max(1, min(n, max_chunk // samples)), "max_chunk")
    cap = _check_memory_gb(max_memory_gb)
    cost = _measure(log_weight_pass, tensors, device)
    budget = HEADROOM * cap * 1e9
    fixed, per_image, per_pair = cost["fixed_bytes"], cost["bytes_per_image"], cost["bytes_per_pair"]
    samples = min(num_samples, math.floor((budget - fixed - per_image) / per_pair))
    if samples < 1:
        need = (fixed + per_image + per_pair) / HEADROOM / 1e9
        raise ValueError(f"max_memory_gb={max_memory_gb!r} is too small for this model: one (sample, image) "
                         f"pair needs about {need:.3g} GB; raise max_memory_gb (--max-memory-gb) or set "
                         f"max_chunk (--max-chunk) by hand")
    samples = _balanced(num_samples, samples)
    images = max(1, min(n, math.floor((budget - fixed) / (per_image + samples * per_pair))))
    images = _balanced(n, images)
    return ChunkPlan(samples, images, "max_memory_gb", cap, fixed, per_image, per_pair,
                     fixed + images * (per_image + samples * per_pair))


# --- the log-likelihood, the ELBO and its parts ---------------------------------------------------


@torch.no_grad()
def importance_sampled(log_weight_pass: LogWeightPass, tensors: tuple, num_samples: int,
                       device: torch.device | str, max_memory_gb: float = 4.0, max_chunk: int | None = None,
                       desc: str = "log p(x)", progress: bool | None = None) -> dict:
    """The chunked importance-sampling loop behind every log-likelihood estimate of pyrovae.

    For each image, ``num_samples`` = K log weights are drawn in passes of ``plan.samples_per_pass``
    draws over ``plan.images_per_pass`` images, and

        log_likelihood = log (1/K) sum_k exp(log_w_k)   (accumulated exactly with logaddexp),
        means[j]       = (1/K) sum_k term_j,k            (log_w first: the ELBO of the same draws),

    so the result depends on the chunking only through the order of the random draws. The pass shape
    comes from the measured memory model of :func:`plan_chunks` (under ``max_memory_gb``, or at most
    ``max_chunk`` pairs when that is given). Used by :func:`log_likelihood`,
    :func:`pyrovae.conditional.log_likelihood_given_labels` and
    :func:`pyrovae.structured.conditional_log_likelihood`.

    Args:
        log_weight_pass: see :data:`LogWeightPass`.
        tensors: the per-image tensors, each ``(n, ...)``; chunks of them go to the device once.
        num_samples: K.
        device: where the passes run.
        max_memory_gb, max_chunk: the memory cap of one pass in GB, or the pairs per pass (overrides).
        desc, progress: the progress bar's label, and whether to show it (default: when stderr is a
            terminal).

    Returns:
        dict with ``log_likelihood`` ``(n,)`` and ``means``, a list of ``(n,)`` (one per term the pass
        returns), in nats, on the CPU; and ``plan``, the :class:`ChunkPlan` used.

    Raises:
        ValueError: ``num_samples``, ``max_chunk`` or ``max_memory_gb`` not positive; no images; a cap
            too small for one (sample, image) pair.
    """
    device = torch.device(device)
    plan = _plan(log_weight_pass, tensors, num_samples, max_memory_gb, max_chunk, device)
    n = int(tensors[0].shape[0])
    log_likelihood, means = torch.empty(n), None
    bar = tqdm(total=n, desc=f"{desc}, K={num_samples}", leave=False,
               disable=None if progress is None else not progress)
    try:
        for start in range(0, n, plan.images_per_pass):
            chunk = tuple(t[start:start + plan.images_per_pass].to(device) for t in tensors)
            batch = chunk[0].shape[0]
            lse, sums = torch.full((batch,), -math.inf, device=device), None
            for done in range(0, num_samples, plan.samples_per_pass):
                terms = log_weight_pass(chunk, min(plan.samples_per_pass, num_samples - done))
                lse = torch.logaddexp(lse, torch.logsumexp(terms[0], dim=0))
                sums = [t.sum(0) for t in terms] if sums is None else [a + t.sum(0) for a, t in zip(sums, terms)]
                del terms
            if means is None:
                means = [torch.empty(n) for _ in sums]
            rows = slice(start, start + batch)
            log_likelihood[rows] = (lse - math.log(num_samples)).cpu()
            for mean, total in zip(means, sums):
                mean[rows] = (total / num_samples).cpu()
            bar.update(batch)
    finally:
        bar.close()
    return {"log_likelihood": log_likelihood, "means": means, "plan": plan}


@torch.no_grad()
def log_likelihood(vae: VAE, x: torch.Tensor, num_samples: int = 5000, max_chunk: int | None = None,
                   device: torch.device | str | None = None, progress: bool | None = None,
                   max_memory_gb: float = 4.0, context: DistributedContext | None = None) -> dict:
    """Importance-sampled log p(x), the ELBO, and the ELBO's reconstruction and KL terms for every image
    of ``x``, in nats.

    Work is chunked (see :func:`plan_chunks`) so that one vectorized pass over (sample, image) pairs
    stays under ``max_memory_gb`` (or under ``max_chunk`` pairs when that is given), while the
    log-sum-exp over samples is accumulated exactly across chunks. Results depend on the chunking
    only through the order of the random draws.

    Under ``torchrun`` (a ``context`` with several processes, see
    :func:`pyrovae.distributed.init_distributed`) every process is given the same ``x``, works on the
    images ``rank, rank + W, ...`` with its own random draws (seed each process differently), and
    every process returns the results for all of ``x``, in order: the same estimate as one process,
    W times as fast. ``max_memory_gb`` is then the cap of each process.

    The reconstruction term E_q[log p(x|z)] is the mean over the K draws. The KL term is
    KL(q(z|x) || p(z)) in closed form when ``kl_divergence`` has a rule for every latent site's pair
    (``kl_method == "analytic"``; then reconstruction - KL equals the ELBO up to Monte Carlo error),
    else the Monte Carlo mean of log q(z_k|x) - log p(z_k) over the same draws (``"monte_carlo"``; then
    reconstruction - KL equals the ELBO exactly).

    Args:
        vae: the model (its parameters are not changed).
        x: ``(num_images, *x_shape)`` data in the likelihood's support.
        num_samples: K, importance samples per image.
        max_chunk: the largest number of (sample, image) pairs per pass; overrides ``max_memory_gb``.
        device: where to compute (default: where the model is).
        progress: show a progress bar (default: when stderr is a terminal).
        max_memory_gb: memory cap for one pass, in GB (10^9 bytes; default 4).
        context: a :class:`pyrovae.distributed.DistributedContext`; with several processes the images
            are shared out among them (a collective: every process must call this with the same ``x``).

    Returns:
        dict with ``log_likelihood``, ``elbo``, ``reconstruction`` and ``kl``: ``(num_images,)``
        tensors in nats per image, on the CPU; ``kl_method`` (``"analytic"`` or ``"monte_carlo"``);
        ``chunk``, the (sample, image) pairs per pass; ``plan``, :meth:`ChunkPlan.as_dict`;
        ``seconds``, the wall-clock time; and ``processes``, the number of processes that shared it.

    Raises:
        ValueError: ``x`` has the wrong shape or dtype, NaN, or values outside the likelihood's support;
            ``num_samples``, ``max_chunk`` or ``max_memory_gb`` not positive; a cap too small for one pair;
            fewer images than processes.
    """
    t0 = time.perf_counter()
    if context is not None and context.enabled:
        return _sharded_log_likelihood(vae, x, num_samples, max_chunk, device, progress, max_memory_gb,
                                       context, t0)
    num_samples = _check_positive_int(num_samples, "num_samples")
    vae.check_data(x)
    device = torch.device(device) if device is not None else next(vae.parameters()).device
    with eval_mode(vae):
        sampled = importance_sampled(_vae_pass(vae), (x,), num_samples, device, max_memory_gb, max_chunk,
                                     "log p(x)", progress)
        plan = sampled["plan"]
        elbo, reconstruction = sampled["means"]
        out = {"log_likelihood": sampled["log_likelihood"], "elbo": elbo, "reconstruction": reconstruction}
        kl_method, kl = "analytic", []
        for start in range(0, x.shape[0], plan.images_per_pass):  # one guide pass per chunk: cheap
            with _rng_kept(device):  # the importance-sampling draws stay what they were
                chunk_kl = _analytic_kl(vae, x[start:start + plan.images_per_pass].to(device))
            if chunk_kl is None:
                kl_method = "monte_carlo"
                break
            kl.append(chunk_kl.cpu())
    # no closed form: the same draws' estimate, reconstruction - ELBO
    out["kl"] = torch.cat(kl) if kl_method == "analytic" else reconstruction - elbo
    return {**out, "kl_method": kl_method, "chunk": plan.pairs, "plan": plan.as_dict(),
            "seconds": time.perf_counter() - t0, "processes": 1}


def _sharded_log_likelihood(vae, x, num_samples, max_chunk, device, progress, max_memory_gb,
                            context: DistributedContext, t0: float) -> dict:
    """:func:`log_likelihood` with the images shared out among the processes of ``context``."""
    n = x.shape[0]
    if n < context.world_size:
        raise ValueError(f"{n} image(s) cannot be shared among {context.world_size} processes; "
                         "evaluate more images or start fewer processes")
    mine = log_likelihood(vae, context.shard_rows(x), num_samples, max_chunk, device,
                          progress if context.is_main else False, max_memory_gb)
    out = {k: context.gather_rows(mine[k], n) for k in ("log_likelihood", "elbo", "reconstruction", "kl")}
    methods = context.all_gather_object(mine["kl_method"])
    kl_method = "monte_carlo" if "monte_carlo" in methods else "analytic"
    if kl_method == "monte_carlo":  # one estimator for every image
        out["kl"] = out["reconstruction"] - out["elbo"]
    return {**out, "kl_method": kl_method, "chunk": mine["chunk"], "plan": mine["plan"],
            "seconds": time.perf_counter() - t0, "processes": context.world_size}


def summarize(values: torch.Tensor) -> dict:
    """``{"mean", "stderr"}`` of per-image values: stderr = std / sqrt(n) over images."""
    n = values.numel()
    stderr = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": values.mean().item(), "stderr": stderr}


# --- latent statistics ----------------------------------------------------------------------------


def _batches(x: torch.Tensor, batch_size: int, device):
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size].to(device)


def _latent_site(guide_trace, model_trace, site: str):
    if site not in guide_trace.nodes or guide_trace.nodes[site]["type"] != "sample":
        raise ValueError(f"the guide has no latent sample site {site!r}; name the site with site=...")
    return guide_trace.nodes[site]["fn"], model_trace.nodes[site]["fn"]


def _device_of(vae: VAE, device) -> torch.device:
    return torch.device(device) if device is not None else next(vae.parameters()).device


@torch.no_grad()
def kl_per_dimension(vae: VAE, x: torch.Tensor, batch_size: int = 1000, num_samples: int = 1000,
                     site: str = "z", device: torch.device | str | None = None) -> torch.Tensor:
    r"""KL(q(z_d | x) || p(z_d)) for each latent dimension d, averaged over the images of ``x``, in nats.

    For a guide and prior that both factorize over the dimensions (``Independent`` univariate
    distributions: the diagonal Normal guide with the standard or learned Normal prior) the KL term
    is a sum, KL(q(z|x) || p(z)) = sum_d KL(q(z_d|x) || p(z_d)), so the result sums to the KL term of
    the ELBO. Each term is in closed form where ``kl_divergence`` has a rule for the pair, else the
    Monte Carlo mean of log q(z_d|x) - log p(z_d) over ``num_samples`` draws. Dimensions with a KL near
    0 carry no information about x (posterior collapse; Burda et al. 2016 count "active units" instead,
    see :func:`active_units`).

    Non-factorized priors (mixture, VampPrior, flow) and guides (low-rank, IAF) are refused: their KL
    has no per-dimension split (a KL against each dimension's marginal prior would not sum to the KL
    term), so this reports nothing rather than a number that looks comparable and is not.

    Args:
        vae: the model.
        x: ``(n, *x_shape)`` data in the likelihood's support.
        batch_size: images per encoder pass.
        num_samples: Monte Carlo draws per image where there is no closed form.
        site: the latent sample site (default ``"z"``).
        device: where to compute (default: where the model is).

    Returns:
        ``(z_dim,)`` tensor on the CPU, nats per image.

    Raises:
        ValueError: bad ``x``; a guide or prior that does not factorize over the dimensions; no such site.
    """
    vae.check_data(x)
    batch_size = _check_positive_int(batch_size, "batch_size")
    num_samples = _check_positive_int(num_samples, "num_samples")
    device, was_training = _device_of(vae, device), vae.training
    vae.eval()
    try:
        total = 0.0
        for xb in _batches(x, batch_size, device):
            q, p = _latent_site(*_traces(vae, xb), site)
            try:  # the closed form; a prior or guide that does not factorize raises its own ValueError
                kl = kl_per_dim(q, p)
            except NoClosedFormKLError:  # none: the Monte Carlo mean over num_samples draws
                kl = kl_per_dim(q, p, z=q.sample((num_samples,)), analytic=False).mean(0)
            total = total + kl.reshape(-1, vae.z_dim).sum(0)
    finally:
        vae.train(was_training)
    return (total / x.shape[0]).cpu()


@torch.no_grad()
def posterior_means(vae: VAE, x: torch.Tensor, batch_size: int = 1000, num_samples: int = 256,
                    site: str = "z", device: torch.device | str | None = None) -> torch.Tensor:
    """E_{q(z|x)}[z] for every image: ``(n, z_dim)`` on the CPU.

    Exact where the guide's distribution has a ``mean`` (diagonal and low-rank Normal); for a guide
    without one (IAF) the Monte Carlo mean of ``num_samples`` draws.

    Raises:
        ValueError: bad ``x`` or no such site.
    """
    vae.check_data(x)
    batch_size = _check_positive_int(batch_size, "batch_size")
    num_samples = _check_positive_int(num_samples, "num_samples")
    device, was_training = _device_of(vae, device), vae.training
    vae.eval()
    means = []
    try:
        for xb in _batches(x, batch_size, device):
            with pyro.validation_enabled(False):
                guide_trace = poutine.trace(vae.guide).get_trace(xb)
            if site not in guide_trace.nodes:
                raise ValueError(f"the guide has no latent sample site {site!r}; name the site with site=...")
            q = guide_trace.nodes[site]["fn"]
            try:
                mean = q.mean
            except NotImplementedError:
                mean = q.sample((num_samples,)).mean(0)
            means.append(mean.reshape(xb.shape[0], -1).cpu())
    finally:
        vae.train(was_training)
    return torch.cat(means)


def active_units(vae: VAE, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 1000,
                 site: str = "z", device: torch.device | str | None = None) -> dict:
    r"""Active latent units (Burda, Grosse & Salakhutdinov 2016, Appendix C).

    Dimension d is active when A_d = Cov_x(E_{q(z|x)}[z_d]) > ``threshold``: the posterior mean moves
    with the data. A_d is the (unbiased) variance over the images of ``x`` of the posterior means from
    :func:`posterior_means`. Burda et al. use 0.01 and report 19-20 of 50 units active for a 1-layer
    VAE on MNIST. Works for any guide and prior.

    Args:
        vae: the model.
        x: ``(n, *x_shape)`` data, n >= 2.
        threshold: the activity threshold, >= 0 (default 0.01).
        batch_size: images per encoder pass.
        site: the latent sample site (default ``"z"``).
        device: where to compute (default: where the model is).

    Returns:
        dict with ``variance`` (``(z_dim,)`` A_d), ``active`` (``(z_dim,)`` bool), ``num_active`` (int)
        and ``threshold``.

    Raises:
        ValueError: bad ``x`` or fewer than 2 images; a negative or non-finite ``threshold``.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold) \
            or threshold < 0:
        raise ValueError(f"threshold={threshold!r} must be a finite number >= 0 (Burda et al. use 0.01)")
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] < 2:
        raise ValueError(f"active_units needs at least 2 images to take a variance over, got {x.shape[0]}")
    variance = posterior_means(vae, x, batch_size, site=site, device=device).var(dim=0, unbiased=True)
    active = variance > threshold
    return {"variance": variance, "active": active, "num_active": int(active.sum()), "threshold": float(threshold)}


def _labels(y, n: int, name: str, x_name: str) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be a 1-d array of {n} labels, one per image of {x_name}; got shape "
                         f"{tuple(y.shape)}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    return y


def linear_probe(vae: VAE, train_x: torch.Tensor, train_y, test_x: torch.Tensor, test_y, C: float = 1.0,
                 max_iter: int = 1000, batch_size: int = 1000, device: torch.device | str | None = None) -> dict:
    """Linear probe: how much of the labels a linear classifier reads off the posterior means.

    Fits scikit-learn's ``LogisticRegression`` (multinomial, L2 penalty of strength 1/``C``) on the
    standardized posterior means E_q[z|x] (:func:`posterior_means`; the scaler is fit on the training
    images) of ``train_x`` and reports its accuracy on ``test_x``. The encoder never sees the labels:
    a standard measure of how linearly separable the classes are in latent space.

    Args:
        vae: the model.
        train_x, test_x: ``(n, *x_shape)`` images in the likelihood's support.
        train_y, test_y: ``(n,)`` integer labels (torch tensors or numpy arrays).
        C: inverse regularization strength (default 1).
        max_iter: iterations of the solver (default 1000).
        batch_size: images per encoder pass; device: where to encode (default: where the model is).

    Returns:
        dict with ``accuracy`` (test, in [0, 1]), ``train_accuracy``, ``chance_accuracy`` (frequency of
        the most common test label), ``num_train``, ``num_test`` and ``num_classes``.

    Raises:
        ValueError: bad images; labels that are not 1-d integers matching the images; fewer than two
            classes among the training labels.
    """
    from sklearn.linear_model import LogisticRegression  # imported here: only the probe needs it
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_labels = _labels(train_y, len(train_x), "train_y", "train_x")
    test_labels = _labels(test_y, len(test_x), "test_y", "test_x")
    if np.unique(train_labels).size < 2:
        raise ValueError("train_y holds a single class; a linear probe needs at least two")
    features = [posterior_means(vae, x, batch_size, device=device).double().numpy() for x in (train_x, test_x)]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(features[0], train_labels)
    _, counts = np.unique(test_labels, return_counts=True)
    return {"accuracy": float(probe.score(features[1], test_labels)),
            "train_accuracy": float(probe.score(features[0], train_labels)),
            "chance_accuracy": float(counts.max() / test_labels.size),
            "num_train": int(train_labels.size), "num_test": int(test_labels.size),
            "num_classes": int(np.unique(train_labels).size)}


# --- everything at once ---------------------------------------------------------------------------


def evaluate(vae: VAE, x: torch.Tensor, num_samples: int = 5000, max_chunk: int | None = None,
             device: torch.device | str | None = None, progress: bool | None = None, *,
             max_memory_gb: float = 4.0, labels=None, probe_train: tuple | None = None,
             active_threshold: float = 0.01, latent_statistics: bool = True,
             context: DistributedContext | None = None) -> dict:
    """Test metrics of ``vae`` on ``x``: what ``pyrovae evaluate`` writes to ``metrics.json``.

    Args:
        vae, x, num_samples, max_chunk, device, progress, max_memory_gb: see :func:`log_likelihood`.
        labels: ``(n,)`` labels of ``x``, for the linear probe.
        probe_train: ``(train_x, train_y)``, the probe's training images and labels; the probe runs when
            this and ``labels`` are given (see :func:`linear_probe`).
        active_threshold: the threshold of :func:`active_units`.
        latent_statistics: compute the per-dimension KL and the active units (default True).
        context: several processes share the log-likelihood (see :func:`log_likelihood`); the latent
            statistics and the probe, which are cheap, are then computed by rank 0 alone, and the
            other ranks' metrics lack them.

    Returns:
        dict (JSON-ready) with

        * ``log_likelihood_nats`` and ``elbo_nats`` (means over images, nats per image), their
          ``*_stderr`` over images, ``log_likelihood_bits_per_dim``;
        * ``reconstruction_nats`` (E_q[log p(x|z)]) and ``kl_nats`` (KL(q(z|x) || p(z))), with
          ``*_stderr`` and ``kl_method``: reconstruction - KL = ELBO (see :func:`log_likelihood`);
        * ``num_samples``, ``num_images``, ``seconds`` (all of it), ``log_likelihood_seconds``,
          ``chunk`` ((sample, image) pairs per pass), ``memory`` (the :class:`ChunkPlan`) and
          ``processes`` (how many shared the log-likelihood);
        * with ``latent_statistics``: ``kl_per_dimension_nats`` (a list of z_dim numbers, or None with
          the reason in ``kl_per_dimension_note``), ``active_units`` (count), ``active_units_threshold``,
          ``active_units_variance`` (list of z_dim numbers);
        * with the probe: ``linear_probe`` (see :func:`linear_probe`).

    Raises:
        ValueError: see :func:`log_likelihood`; ``probe_train`` without ``labels``.
    """
    t0 = time.perf_counter()
    if probe_train is not None and labels is None:
        raise ValueError("probe_train needs labels, the labels of x (the probe's test images)")
    out = log_likelihood(vae, x, num_samples, max_chunk, device, progress, max_memory_gb=max_memory_gb,
                         context=context)
    ll, elbo = summarize(out["log_likelihood"]), summarize(out["elbo"])
    rec, kl = summarize(out["reconstruction"]), summarize(out["kl"])
    dims = math.prod(x.shape[1:])
    metrics = {
        "log_likelihood_nats": ll["mean"], "log_likelihood_stderr": ll["stderr"],
        "elbo_nats": elbo["mean"], "elbo_stderr": elbo["stderr"],
        "log_likelihood_bits_per_dim": -ll["mean"] / (dims * math.log(2)),
        "reconstruction_nats": rec["mean"], "reconstruction_stderr": rec["stderr"],
        "kl_nats": kl["mean"], "kl_stderr": kl["stderr"], "kl_method": out["kl_method"],
        "num_samples": num_samples, "num_images": int(x.shape[0]),
        "chunk": out["chunk"], "memory": out["plan"], "log_likelihood_seconds": out["seconds"],
        "processes": out["processes"],
    }
    if context is not None and not context.is_main:
        latent_statistics, probe_train = False, None
    if latent_statistics:
        try:
            metrics["kl_per_dimension_nats"] = kl_per_dimension(vae, x, device=device).tolist()
        except ValueError as e:  # the data passed log_likelihood's checks: this is "no per-dim split"
            metrics["kl_per_dimension_nats"], metrics["kl_per_dimension_note"] = None, str(e)
        au = active_units(vae, x, active_threshold, device=device)
        metrics.update(active_units=au["num_active"], active_units_threshold=au["threshold"],
                       active_units_variance=au["variance"].tolist())
    if probe_train is not None:
        metrics["linear_probe"] = linear_probe(vae, probe_train[0], probe_train[1], x, labels, device=device)
    metrics["seconds"] = time.perf_counter() - t0
    return metrics
