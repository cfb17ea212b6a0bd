"""Test metrics of any model family: what ``pyrovae evaluate`` and the end of ``pyrovae train`` write to
``metrics.json``. Nothing here depends on the family: its programs' arguments come from
:meth:`pyrovae.models.Family.program_args`, its own per-data-point metrics (M2's accuracy, the
structured-output baseline's exact likelihood) from ``test_metrics``."""

from __future__ import annotations

import time

import torch

from .. import checks
from ..data.mnist import ImageDataset
from ..errors import ArgumentTypeError, UnsupportedError
from ..models.base import Family
from ..torchtools import device_of
from .latents import active_units, kl_per_dimension, linear_probe
from .likelihood import log_likelihood, summarize


def as_batch(data) -> dict[str, torch.Tensor]:
    """``data`` (an :class:`~pyrovae.data.ImageDataset`, a batch dict, or a tensor of data points) as one
    batch of all of it: ``{"x": ..., "y": labels where known}``. An image set with a random transform
    is drawn once with seed 0 (held-out splits are stored transformed already).

    Raises:
        ArgumentTypeError: anything else.
    """
    if isinstance(data, ImageDataset):
        return data.batch(torch.arange(len(data)), torch.Generator().manual_seed(0))
    if isinstance(data, dict):
        return dict(data)
    if isinstance(data, torch.Tensor):
        return {"x": data}
    raise ArgumentTypeError(f"data must be an ImageDataset, a batch dict or a tensor, got {type(data).__name__}")


def program_arguments(model: Family, data) -> tuple:
    """The model's programs' arguments for all of ``data`` (checked: :class:`~pyrovae.errors.DataError`
    for data the model cannot take), on the model's device."""
    if isinstance(data, ImageDataset):
        model.check_dataset(data)
    batch = as_batch(data)
    if not isinstance(data, ImageDataset):
        model.check_data(batch["x"])
    device = device_of(model)
    return model.program_args({k: v.to(device) for k, v in batch.items()})


def _layer_statistics(model: Family, args: tuple, site: str, threshold: float, device) -> dict:
    """``kl_nats_<site>`` (nats per data point; for a layer below the top, KL(q(z_l | ...) || p(z_l | z_{l+1})) at
    one draw of the layers above, so the layers' values add up to the KL term), ``kl_per_dimension_nats_<site>``
    and ``active_units_<site>`` of one latent site."""
    out = {}
    try:
        per_dim = kl_per_dimension(model.model, model.guide, *args, device=device, site=site)
        out[f"kl_nats_{site}"], out[f"kl_per_dimension_nats_{site}"] = float(per_dim.sum()), per_dim.tolist()
    except UnsupportedError:  # a top-layer prior with no per-dimension split (VampPrior, flow)
        out[f"kl_per_dimension_nats_{site}"] = None
    au = active_units(model.model, model.guide, *args, threshold=threshold, device=device, site=site)
    out[f"active_units_{site}"] = au["num_active"]
    return out


def evaluate(model: Family, data, num_samples: int = 5000, *, max_chunk: int | None = None,
             device: torch.device | str | None = None, progress: bool | None = None, max_memory_gb: float = 4.0,
             probe_train=None, active_threshold: float = 0.01, latent_statistics: bool = True,
             context=None, per_image: bool = False) -> dict:
    """Test metrics of ``model`` on ``data``.

    Args:
        model: a model of any family.
        data: the test data: an :class:`~pyrovae.data.ImageDataset` (its labels feed the probe), a batch
            dict or a tensor of data points.
        num_samples: K, importance samples per data point (0: no importance-sampled log-likelihood).
        max_chunk, device, progress, max_memory_gb, context: see :func:`pyrovae.evaluation.log_likelihood`.
        probe_train: an :class:`~pyrovae.data.ImageDataset` to train a linear probe on the posterior means
            (see :func:`pyrovae.evaluation.linear_probe`), tested on ``data``'s labels.
        active_threshold: the threshold of :func:`pyrovae.evaluation.active_units`.
        latent_statistics: compute the per-dimension KL and the active units (default True).
        per_image: also return ``per_image``, a dict of ``(n,)`` tensors (``log_likelihood``, ``elbo``,
            ``reconstruction``, ``kl`` and the family's own metrics), for paired comparisons between models on
            the same data points (not JSON: leave it out of what you write).

    Returns:
        dict (JSON-ready) with

        * ``log_likelihood_of`` (what is estimated: ``"log p(x)"``, ``"log p(x | y)"``, ``"log p(y | x)"``),
          ``log_likelihood_nats`` and ``elbo_nats`` (means over data points, nats per data point), their
          ``*_stderr`` over data points, ``log_likelihood_bits_per_dim`` (over the observed dimensions);
        * ``reconstruction_nats`` and ``kl_nats`` with ``*_stderr`` and ``kl_method``: reconstruction - KL
          = ELBO;
        * ``num_samples``, ``num_images``, ``seconds``, ``log_likelihood_seconds``, ``chunk``, ``memory``
          (the chunk plan) and ``processes``;
        * the family's own test metrics (e.g. ``accuracy`` of M2, ``baseline_neg_cll`` of the
          structured-output CVAE), each with ``*_stderr``;
        * with ``latent_statistics``: ``kl_per_dimension_nats`` (or None with the reason in
          ``kl_per_dimension_note``), ``active_units``, ``active_units_threshold``,
          ``active_units_variance``; for a family with several latent layers (``model.latent_sites``), each
          layer's ``active_units_<site>``, ``kl_nats_<site>`` and ``kl_per_dimension_nats_<site>``;
        * with ``probe_train``: ``linear_probe``.

        With several processes (``context``) the other ranks than 0 return the log-likelihood part only.

    Raises:
        DataError: data the model cannot take. ConfigError: bad options (see ``log_likelihood``).
    """
    t0 = time.perf_counter()
    num_samples = checks.integer(num_samples, "num_samples", 0, hint="importance samples per data point; 0: skip")
    args = program_arguments(model, data)
    metrics = {"log_likelihood_of": model.log_likelihood_of}
    if num_samples and model.defines_likelihood:
        out = log_likelihood(model.model, model.guide, *args, num_samples=num_samples, max_chunk=max_chunk,
                             device=device, progress=progress, max_memory_gb=max_memory_gb, context=context)
        if per_image:
            metrics["per_image"] = {k: out[k] for k in ("log_likelihood", "elbo", "reconstruction", "kl")}
        ll, elbo = summarize(out["log_likelihood"]), summarize(out["elbo"])
        rec, kl = summarize(out["reconstruction"]), summarize(out["kl"])
        dims = model.num_observed_dims(*args)
        metrics.update({
            "log_likelihood_nats": ll["mean"], "log_likelihood_stderr": ll["stderr"],
            "elbo_nats": elbo["mean"], "elbo_stderr": elbo["stderr"],
            "log_likelihood_bits_per_dim": -ll["mean"] / (dims * torch.log(torch.tensor(2.0)).item()),
            "reconstruction_nats": rec["mean"], "reconstruction_stderr": rec["stderr"],
            "kl_nats": kl["mean"], "kl_stderr": kl["stderr"], "kl_method": out["kl_method"],
            "num_samples": num_samples, "chunk": out["chunk"], "memory": out["plan"],
            "log_likelihood_seconds": out["seconds"], "processes": out["processes"]})
    metrics["num_images"] = int(args[0].shape[0])
    if context is not None and not context.is_main:
        return metrics
    if isinstance(data, ImageDataset) and hasattr(model, "test_metrics"):
        for name, values in model.test_metrics(data).items():
            summary = summarize(values)
            metrics.update({name: summary["mean"], f"{name}_stderr": summary["stderr"]})
            if per_image:
                metrics.setdefault("per_image", {})[name] = values
    if latent_statistics:
        try:
            metrics["kl_per_dimension_nats"] = kl_per_dimension(model.model, model.guide, *args, device=device,
                                                                site=model.latent_site).tolist()
        except UnsupportedError as e:  # no per-dimension split for this prior or guide
            metrics["kl_per_dimension_nats"], metrics["kl_per_dimension_note"] = None, str(e)
        au = active_units(model.model, model.guide, *args, threshold=active_threshold, device=device,
                          site=model.latent_site)
        metrics.update(active_units=au["num_active"], active_units_threshold=au["threshold"],
                       active_units_variance=au["variance"].tolist())
        for site in getattr(model, "latent_sites", ()):  # a hierarchical model: every layer's own
            metrics.update(_layer_statistics(model, args, site, active_threshold, device))
            if site == model.latent_site:  # the same statistics as above, not a second Monte Carlo draw of them
                metrics[f"active_units_{site}"] = au["num_active"]
    if probe_train is not None and isinstance(data, ImageDataset):
        train_args = program_arguments(model, probe_train)
        metrics["linear_probe"] = linear_probe(model.model, model.guide, train_args, probe_train.labels, args,
                                               data.labels, device=device, site=model.latent_site)
    metrics["seconds"] = time.perf_counter() - t0
    return metrics
