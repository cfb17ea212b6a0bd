"""The importance-sampled log-likelihood of any model and guide, with the ELBO and its parts.

For each data point x the estimate of Burda, Grosse & Salakhutdinov (2016) is

    log p(x) ~= L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k | x),    z_k ~ q(z | x),

a stochastic lower bound that does not decrease in expectation with K and tends to log p(x). The
ELBO is estimated from the same draws as the mean of the log weights, and split into

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))      (reconstruction - KL, nats per data point),

with the KL in closed form where ``kl_divergence`` has a rule for every latent site's guide and prior
pair, else by Monte Carlo from the same K draws. The weights come from Pyro traces of the guide and of
the model replayed on its draws (:func:`pyrovae.inference.importance_weights`), so this one estimator
serves every family: ``log_likelihood(vae.model, vae.guide, x)`` is log p(x),
``log_likelihood(cvae.model, cvae.guide, x, y)`` is log p(x | y), the same call on the structured-output
CVAE's programs and its ``(x, y)`` pairs is log p(y | x), and :func:`label_posterior` gives M2's
(or a CVAE's) posterior over labels from log p(x, y = k). Work is chunked under a memory cap
(:mod:`pyrovae.evaluation.memory`).
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from .. import checks
from ..errors import DataError
from ..inference.objectives import analytic_kl
from ..torchtools import rng_kept
from .memory import LogWeightPass, importance_pass, plan as plan_passes
from .programs import check_arguments, evaluating, program_device


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
    ``max_chunk`` pairs when that is given). Used by :func:`log_likelihood` and :func:`label_posterior`.

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
        ConfigError: ``num_samples``, ``max_chunk`` or ``max_memory_gb`` not positive; no data points; a
            cap too small for one (sample, data point) pair.
    """
    device = torch.device(device)
    plan = plan_passes(log_weight_pass, tensors, num_samples, max_memory_gb, max_chunk, device)
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


def summarize(values: torch.Tensor) -> dict:
    """``{"mean", "stderr"}`` of per-data-point values: stderr = std / sqrt(n) over data points (NaN for one)."""
    n = values.numel()
    values = values.double()
    stderr = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": values.mean().item(), "stderr": stderr}


@torch.no_grad()
def log_likelihood(model, guide, *args, num_samples: int = 5000, max_chunk: int | None = None,
                   device: torch.device | str | None = None, progress: bool | None = None,
                   max_memory_gb: float = 4.0, context=None, proposal=None) -> dict:
    """Importance-sampled log-likelihood, the ELBO, and the ELBO's reconstruction and KL terms for every
    data point, in nats.

    Work is chunked (see :func:`pyrovae.evaluation.plan_chunks`) so that one vectorized pass over
    (sample, data point) pairs stays under ``max_memory_gb`` (or under ``max_chunk`` pairs when that is
    given), while the log-sum-exp over samples is accumulated exactly across chunks. Results depend on
    the chunking only through the order of the random draws.

    Under ``torchrun`` (a ``context`` with several processes, see
    :func:`pyrovae.training.init_distributed`) every process is given the same arguments, works on the
    data points ``rank, rank + W, ...`` with its own random draws (seed each process differently), and
    every process returns the results for all of them, in order: the same estimate as one process, W
    times as fast. ``max_memory_gb`` is then the cap of each process.

    The reconstruction term E_q[log p(x|z)] is the mean over the K draws of the model's observed sites.
    The KL term is KL(q(z|x) || p(z)) in closed form when ``kl_divergence`` has a rule for every latent
    site's pair (``kl_method == "analytic"``; then reconstruction - KL equals the ELBO up to Monte Carlo
    error), else the Monte Carlo mean of log q(z_k|x) - log p(z_k) over the same draws
    (``"monte_carlo"``; then reconstruction - KL equals the ELBO exactly).

    Args:
        model, guide: Pyro programs (e.g. ``vae.model``, ``vae.guide``), every sample site in a data plate at
            ``dim=-1``; their modules are held in eval mode and left unchanged.
        *args: the programs' arguments, tensors with one row per data point (``x``; ``x, y`` for a
            CVAE), in the model's support (check them with the family's ``check_data`` first).
        num_samples: K, importance samples per data point.
        max_chunk: the largest number of (sample, data point) pairs per pass; overrides ``max_memory_gb``.
        device: where to compute (default: where the model's module is).
        progress: show a progress bar (default: when stderr is a terminal).
        max_memory_gb: memory cap for one pass, in GB (10^9 bytes; default 4).
        context: a :class:`pyrovae.training.DistributedContext`; with several processes the data points
            are shared out among them (a collective: every process must call this with the same
            arguments).
        proposal: a guide to draw z from instead of ``guide`` (e.g. a prior network's: the naive Monte
            Carlo estimate); the KL terms are then those of the proposal.

    Returns:
        dict with ``log_likelihood``, ``elbo``, ``reconstruction`` and ``kl``: ``(n,)`` tensors in nats per
        data point, on the CPU; ``kl_method`` (``"analytic"`` or ``"monte_carlo"``); ``chunk``, the
        (sample, data point) pairs per pass; ``plan``, :meth:`ChunkPlan.as_dict`; ``seconds``, the
        wall-clock time; and ``processes``, the number of processes that shared it.

    Raises:
        ConfigError: ``num_samples``, ``max_chunk`` or ``max_memory_gb`` not positive; a cap too small for
            one pair. DataError: no data points, arguments of different lengths, float arguments of another
            dtype than the model's parameters (float64 for a float32 model: convert with ``x.float()``), or
            fewer data points than processes.
        ArgumentTypeError: an argument that is not a tensor.
    """
    t0 = time.perf_counter()
    n = check_arguments(args, model)
    guide = proposal if proposal is not None else guide
    if context is not None and context.enabled:
        if n < context.world_size:
            raise DataError(f"{n} data point(s) cannot be shared among {context.world_size} processes; "
                            "evaluate more data points or start fewer processes")
        mine = log_likelihood(model, guide, *(context.shard_rows(a) for a in args), num_samples=num_samples,
                              max_chunk=max_chunk, device=device, progress=progress if context.is_main else False,
                              max_memory_gb=max_memory_gb)
        out = {k: context.gather_rows(mine[k], n) for k in ("log_likelihood", "elbo", "reconstruction", "kl")}
        methods = context.all_gather_object(mine["kl_method"])
        kl_method = "monte_carlo" if "monte_carlo" in methods else "analytic"
        if kl_method == "monte_carlo":  # one estimator for every data point
            out["kl"] = out["reconstruction"] - out["elbo"]
        return {**out, "kl_method": kl_method, "chunk": mine["chunk"], "plan": mine["plan"],
                "seconds": time.perf_counter() - t0, "processes": context.world_size}
    num_samples = checks.positive_int(num_samples, "num_samples")
    device = program_device(model, device)
    with evaluating(model, guide):
        sampled = importance_sampled(importance_pass(model, guide), args, num_samples, device, max_memory_gb,
                                     max_chunk, "log-likelihood", progress)
        plan = sampled["plan"]
        elbo, reconstruction = sampled["means"]
        out = {"log_likelihood": sampled["log_likelihood"], "elbo": elbo, "reconstruction": reconstruction}
        kl_method, kl = "analytic", []
        for start in range(0, n, plan.images_per_pass):  # one guide pass per chunk: cheap
            chunk = tuple(a[start:start + plan.images_per_pass].to(device) for a in args)
            with rng_kept(device):  # the importance-sampling draws stay what they were
                chunk_kl = analytic_kl(model, guide, *chunk)
            if chunk_kl is None:
                kl_method = "monte_carlo"
                break
            kl.append(chunk_kl.cpu())
    # no closed form: the same draws' estimate, reconstruction - ELBO
    out["kl"] = torch.cat(kl) if kl_method == "analytic" else reconstruction - elbo
    return {**out, "kl_method": kl_method, "chunk": plan.pairs, "plan": plan.as_dict(),
            "seconds": time.perf_counter() - t0, "processes": 1}


@torch.no_grad()
def label_posterior(model, guide, x: torch.Tensor, num_classes: int, num_samples: int = 1000,
                    log_prior: torch.Tensor | None = None, **options) -> dict:
    r"""The posterior over labels of a model with a label argument, ``model(x, y)``, from its
    importance-sampled joint: for each class k,

    .. math::

        \log p(x, y=k) \approx \log \frac{1}{K} \sum_j \frac{p(x, y=k, z_j)}{q(z_j | x, y=k)},

    then p(y | x) = softmax_k log p(x, y=k) and log p(x) = logsumexp_k log p(x, y=k), all with the one
    estimator of :func:`log_likelihood`. For M2 (whose model has the label's prior p(y) as a site) this
    is its generative classifier, to set against the guide's q(y | x); for a CVAE, whose model is
    p(x | y), pass ``log_prior`` (``(num_classes,)``, log p(y); uniform when None: a constant that the
    softmax drops, but log p(x) then lacks it).

    Args:
        model, guide: programs taking ``(x, y)`` with ``y (n,)`` integer labels.
        x: ``(n, *x_shape)`` data.
        num_classes: the labels 0 .. num_classes - 1.
        num_samples: K per data point and class.
        log_prior: ``(num_classes,)`` log p(y) to add (models without a label site).
        **options: passed to :func:`log_likelihood` (``max_memory_gb``, ``device``, ...).

    Returns:
        dict with ``log_joint`` ``(n, num_classes)``, ``probabilities`` ``(n, num_classes)``,
        ``log_likelihood`` ``(n,)`` (log p(x)) and ``prediction`` ``(n,)`` (the most probable label), on
        the CPU.

    Raises:
        ConfigError: ``num_classes < 2`` or a bad option; see :func:`log_likelihood`.
    """
    num_classes = checks.integer(num_classes, "num_classes", 2)
    joint = torch.stack([
        log_likelihood(model, guide, x, torch.full((x.shape[0],), k, dtype=torch.long), num_samples=num_samples,
                       **options)["log_likelihood"] for k in range(num_classes)], dim=-1)
    if log_prior is not None:
        joint = joint + torch.as_tensor(log_prior, dtype=joint.dtype)
    log_px = torch.logsumexp(joint, dim=-1)
    return {"log_joint": joint, "probabilities": torch.softmax(joint, dim=-1), "log_likelihood": log_px,
            "prediction": joint.argmax(dim=-1)}
