"""Memory: measure what one importance-sampling pass costs, and plan the chunks under a memory cap.

One pass over m data points with s samples each is modelled as

    peak bytes = fixed + m * (bytes_per_image + s * bytes_per_pair),

fitted from three small probe passes (:func:`measure_pass_memory`), and :func:`plan_chunks` solves it
for the largest pass under the cap. A prior's per-pair temporaries (a VampPrior over a low-rank guide
broadcasts (pairs, components, z_dim)) are accounted for as well as the decoder's activations. Every
importance-sampled estimate of pyrovae (the log-likelihood of any family, the label posterior) plans
its chunks here.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass
from typing import Callable

import pyro
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .. import checks
from ..errors import ConfigError, DataError
from ..inference.traces import importance_weights
from ..torchtools import rng_kept

#: Share of the memory cap that the plan fills: room for kernels' internal scratch buffers, which the
#: CPU measurement cannot see.
HEADROOM = 0.9

#: A log-weight pass: ``fn(tensors, num_samples)`` takes one chunk of the per-data-point tensors (the
#: programs' arguments), each ``(batch, ...)`` on the device, and returns ``(log_w, *terms)``, each
#: ``(num_samples, batch)`` in nats: the log importance weights of ``num_samples`` fresh draws per data
#: point and any other per-draw terms whose mean over draws is wanted.
LogWeightPass = Callable[[tuple, int], tuple]


def importance_pass(model, guide) -> LogWeightPass:
    """The log-weight pass of ``(model, guide)``: ``(log_w, log p(x | z))`` from
    :func:`pyrovae.inference.importance_weights` (the reconstruction term is the observed sites')."""

    def run(tensors: tuple, num_samples: int):
        with pyro.validation_enabled(False):  # the data were checked once at the public entry point
            weights = importance_weights(model, guide, num_samples, *tensors)
        return weights.log_weights, weights.log_likelihood_terms

    return run


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


@torch.no_grad()
def _measure(log_weight_pass: LogWeightPass, tensors: tuple, device: torch.device) -> dict:
    """:func:`measure_pass_memory` for any log-weight pass over ``tensors`` (each ``(n, ...)``)."""
    index = torch.arange(32) % tensors[0].shape[0]
    small, large = tuple(t[index[:16]].to(device) for t in tensors), tuple(t[index].to(device) for t in tensors)
    with rng_kept(device):
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
def measure_pass_memory(model, guide, *args, device: torch.device | str | None = None) -> dict:
    """Measure the memory that the log-weight computation of :func:`pyrovae.evaluation.log_likelihood` needs.

    One pass over m images with s samples each is modelled as

        peak bytes = fixed + m * (bytes_per_image + s * bytes_per_pair),

    fitted from three small probe passes (s, m) = (1, 16), (8, 16) and (1, 32) on data points of ``args``
    (repeated if there are fewer than 32). ``fixed`` holds what does not grow with the pass (e.g. a
    VampPrior encoding its pseudo-inputs), ``bytes_per_image`` the encoder's activations and
    ``bytes_per_pair`` everything evaluated per (sample, image) pair: the decoder's activations, the
    likelihood's log-densities, and a prior's per-pair temporaries.

    On CUDA the peaks are read from ``torch.cuda.max_memory_allocated``; elsewhere they are the peak
    bytes of tensors alive at once, counted by a ``TorchFunctionMode`` over every torch function of
    the pass (on the CPU this matches the growth of the process's peak resident memory to about 1%).
    The random draws of the probes do not disturb the caller's random state.

    Args:
        model, guide: the Pyro programs (their modules in eval mode for a faithful measurement).
        *args: their per-data-point arguments, each ``(n, ...)``, already checked, n >= 1.
        device: where the passes will run (default: where the model's module is).

    Returns:
        dict with ``fixed_bytes``, ``bytes_per_image``, ``bytes_per_pair`` (floats) and ``method``.
    """
    device = torch.device(device) if device is not None else args[0].device
    return _measure(importance_pass(model, guide), args, device)


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


@torch.no_grad()
def plan_chunks(model, guide, *args, num_samples: int, max_memory_gb: float = 4.0, max_chunk: int | None = None,
                device: torch.device | str | None = None) -> ChunkPlan:
    """Choose how many samples and data points :func:`pyrovae.evaluation.log_likelihood` evaluates per pass.

    With ``max_chunk`` (an explicit override): ``min(num_samples, max_chunk)`` samples per pass and as
    many images as fit in ``max_chunk`` (sample, image) pairs. Otherwise the cost model of
    :func:`measure_pass_memory` is solved for the largest pass whose predicted peak stays under
    :data:`HEADROOM` x ``max_memory_gb``: first as many samples per pass as fit with one image (all K
    when they fit), then as many images as fit with those samples; both are then evened out so that
    the passes have equal sizes. The cap bounds the memory of the passes, on top of what the model and
    the data already hold.

    Args:
        model, guide: the Pyro programs; *args: their per-data-point arguments, each ``(n, ...)``
            (already checked).
        num_samples: K, importance samples per image.
        max_memory_gb: the cap in GB (10^9 bytes).
        max_chunk: the largest number of (sample, image) pairs per pass; overrides the cap.
        device: where the passes run (default: where the model is).

    Returns:
        a :class:`ChunkPlan`.

    Raises:
        ConfigError: a non-positive ``num_samples``, ``max_chunk`` or ``max_memory_gb``; no data points; a
            cap too small for one (sample, data point) pair.
    """
    device = torch.device(device) if device is not None else args[0].device
    return plan(importance_pass(model, guide), args, num_samples, max_memory_gb, max_chunk, device)


def plan(log_weight_pass: LogWeightPass, tensors: tuple, num_samples: int, max_memory_gb: float,
          max_chunk: int | None, device: torch.device) -> ChunkPlan:
    """:func:`plan_chunks` for any log-weight pass over ``tensors`` (each ``(n, ...)``)."""
    num_samples = checks.positive_int(num_samples, "num_samples")
    n = int(tensors[0].shape[0])
    if n < 1:
        raise DataError(f"the data hold no data points (shape {tuple(tensors[0].shape)}); pass at least one")
    if max_chunk is not None:
        max_chunk = checks.positive_int(max_chunk, "max_chunk")
        samples = min(num_samples, max_chunk)
        return ChunkPlan(samples, max(1, min(n, max_chunk // samples)), "max_chunk")
    cap = checks.positive_number(max_memory_gb, "max_memory_gb", hint="gigabytes, e.g. 4")
    cost = _measure(log_weight_pass, tensors, device)
    budget = HEADROOM * cap * 1e9
    fixed, per_image, per_pair = cost["fixed_bytes"], cost["bytes_per_image"], cost["bytes_per_pair"]
    samples = min(num_samples, math.floor((budget - fixed - per_image) / per_pair))
    if samples < 1:
        need = (fixed + per_image + per_pair) / HEADROOM / 1e9
        raise ConfigError(f"max_memory_gb={max_memory_gb!r} is too small for this model: one (sample, image) "
                         f"pair needs about {need:.3g} GB; raise max_memory_gb (--max-memory-gb) or set "
                         f"max_chunk (--max-chunk) by hand")
    samples = _balanced(num_samples, samples)
    images = max(1, min(n, math.floor((budget - fixed) / (per_image + samples * per_pair))))
    images = _balanced(n, images)
    return ChunkPlan(samples, images, "max_memory_gb", cap, fixed, per_image, per_pair,
                     fixed + images * (per_image + samples * per_pair))


