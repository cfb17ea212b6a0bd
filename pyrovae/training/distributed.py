"""Data-parallel training with PyTorch's DistributedDataParallel (DDP), launched by ``torchrun``.

Each of W processes holds a replica of the model (any family), draws its own shard of every mini-batch
and its own random numbers (dynamic binarization, z ~ q(z|x)), and backpropagates its part of the loss; DDP
all-reduces (averages) the gradients during ``backward``, so every replica takes the same optimizer
step. The step is the single-process step on the *global* batch:

* global batch = per-process batch (``TrainerConfig.batch_size``) x W. Each epoch one permutation of the
  data, identical on every process (it comes from a generator seeded with ``RunConfig.seed``), is
  padded to a multiple of W by repeating its first images (as ``torch.utils.data.DistributedSampler``
  does; at most W - 1 images per epoch) and dealt out by striding, so that the shards of step i are
  a partition of the i-th global batch of the padded permutation and all have the same size.
* each process's loss is the stage's loss on its shard (the negative ELBO per image for a VAE,
  ``differentiable_loss(..., num_data=N) / N``); DDP averages the W equal-size shard gradients, which is
  the gradient of the loss of the global batch, exactly what one process computes on it. M2's paired
  batches shard both the unlabelled and the labelled stream.
* metrics are all-reduced: an epoch's ``train_*`` terms are the means over every image that every
  process drew; validation metrics are computed on strided shards of the validation set and summed.
* only rank 0 writes (``config.json``, ``checkpoint.pt``, ``metrics.json``, figures), atomically.
  The checkpoint holds the unwrapped model's ``state_dict``, so single-process code
  (:func:`pyrovae.training.load_run`) reloads it; it also holds every process's RNG states, so a
  resume with the same W continues exactly as if it had not stopped.

Pyro's ELBOs call ``model.model`` and ``model.guide``, never the module's ``forward``, but DDP arms its
gradient hooks in ``forward``: without a forward call ``backward`` would silently skip the all-reduce.
:class:`LossModule` is the forward that DDP wraps: ``LossModule(model, stage.loss)(batch)`` is the
stage's :class:`~pyrovae.models.LossRecord` of the batch.

Process groups are set up from the environment that ``torchrun`` exports (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): the ``gloo`` backend on CPU, ``nccl`` on CUDA with
one GPU per process (``cuda:LOCAL_RANK``).

References:
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020.
    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017 (the global batch
    and its learning rate).
"""

from __future__ import annotations

import atexit
import gc
import logging
import math
import os
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.mnist import ImageDataset
from ..errors import ConfigError
from .checkpoint import restore_rng_state, rng_state

log = logging.getLogger(__name__)

#: The variables torchrun sets for every process, and which :func:`init_distributed` reads.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = ("gloo", "nccl", "mpi")

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"the environment variable {name}={value!r} is not an integer; it is set by torchrun, "
                          "launch with `torchrun --nproc_per_node N -m pyrovae train ...`") from None


def env_world_size() -> int:
    """``$WORLD_SIZE`` (the number of processes torchrun started), 1 when unset."""
    return _env_int("WORLD_SIZE", 1)


def derive_seed(*keys: int) -> int:
    """A 32-bit seed drawn from ``numpy.random.SeedSequence(keys)``: distinct, well-mixed seeds for
    distinct keys such as ``(seed, rank, stream)`` (valid for ``pyro.set_rng_seed``)."""
    return int(np.random.SeedSequence([k % 2**64 for k in keys]).generate_state(1)[0])


def shard_batches(data: ImageDataset, batch_size: int, rank: int, world_size: int,
                  generator: torch.Generator | None = None,
                  sample_generator: torch.Generator | None = None) -> Iterator[dict]:
    """This process's shards of one epoch of global mini-batches of ``batch_size * world_size`` images.

    The permutation is drawn from ``generator`` (at the call), which must be in the same state on
    every process;
    it is padded to ``padded_size(len(data), world_size)`` with its first images and dealt out with
    stride ``world_size``, so that at every step the shards of all processes are equally large and
    together make up that step's global batch. Dynamic binarization draws from ``sample_generator``
    (this process's own; default ``generator``).

    Yields:
        batches ``{"x": (b, *x_shape) float32, "y": (b,) int64}``, b <= ``batch_size``, the same b on
        every process at a given step; ``num_batches(len(data), batch_size, world_size)`` of them.

    Raises:
        ConfigError: ``batch_size`` or ``world_size`` below 1, ``rank`` outside ``[0, world_size)``, or an
            empty dataset.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need batch_size >= 1, world_size >= 1 and 0 <= rank < world_size; got batch_size="
                          f"{batch_size}, rank={rank}, world_size={world_size}")
    n = len(data)
    if n == 0:
        raise ConfigError("the dataset is empty: there is nothing to shard")
    order = torch.randperm(n, generator=generator)
    total = padded_size(n, world_size)
    if total > n:
        order = order.repeat(math.ceil(total / n))[:total]
    return _gather(data, order[rank::world_size], batch_size,
                   sample_generator if sample_generator is not None else generator)


def _gather(data: ImageDataset, index: torch.Tensor, batch_size: int,
            generator: torch.Generator | None) -> Iterator[dict]:
    for start in range(0, len(index), batch_size):
        yield data.batch(index[start:start + batch_size], generator)


def padded_size(n: int, world_size: int) -> int:
    """Images per epoch over all processes: ``n`` rounded up to a multiple of ``world_size``."""
    return -(-n // world_size) * world_size


def num_batches(n: int, batch_size: int, world_size: int = 1) -> int:
    """Steps per epoch: ``ceil(ceil(n / world_size) / batch_size)`` (``ceil(n / batch_size)`` for one
    process)."""
    return -(-(padded_size(n, world_size) // world_size) // batch_size)


class LossModule(nn.Module):
    """A stage's loss as a module's ``forward``, so that DistributedDataParallel can wrap it.

    ``LossModule(model, loss)(batch)`` returns ``(record.loss, record.terms, record.num_observations)``
    for ``record = loss(batch)`` (a :class:`pyrovae.models.LossRecord`). Its parameters are the model's.

    Args:
        model: the model family whose parameters the loss uses.
        loss: ``batch -> LossRecord`` (a :class:`pyrovae.models.Stage`'s ``loss``).
    """

    def __init__(self, model: nn.Module, loss):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict):
        record = self.loss(batch)
        return record.loss, record.terms, record.num_observations


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a data-parallel run, and the operations training needs from it.

    With ``world_size == 1`` (the default) every method is the single-process operation: batches are
    ``data.batches(...)``, reductions return their input, :meth:`on_main` just calls its function and
    :meth:`wrap` returns None. Build one with :func:`init_distributed`.

    Attributes:
        rank: this process's index in ``[0, world_size)``; rank 0 writes files.
        world_size: the number of processes W.
        local_rank: the index on this machine (selects the GPU ``cuda:local_rank``).
        device: where this process's replica lives.
        backend: ``"gloo"``, ``"nccl"`` or ``"mpi"``; None without a process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and logs."""
        return self.rank == 0

    # --- randomness -------------------------------------------------------------------------------------

    def seed(self, seed: int, stream: int = 0) -> int:
        """This process's seed: ``seed`` itself for one process, else distinct per ``(rank, stream)``."""
        return seed if not self.enabled and stream == 0 else derive_seed(seed, self.rank, stream)

    def rng_states(self, sample_generator: torch.Generator) -> list[dict] | None:
        """Every process's RNG states (torch, its ``sample_generator``, CUDA), gathered on all ranks;
        None for one process. A collective: every rank must call it."""
        if not self.enabled:
            return None
        return self.all_gather_object(rng_state(sample_generator, self.device, key="sample"))

    def restore_rng_states(self, states: list[dict] | None, sample_generator: torch.Generator, seed: int,
                           epoch: int) -> None:
        """Restore this process's RNG states from ``states`` (see :meth:`rng_states`). When they were
        saved by another number of processes, seed this process afresh from ``(seed, rank, epoch)``:
        training goes on with the same meaning, but not draw for draw."""
        if not self.enabled:
            return
        if states is not None and len(states) == self.world_size:
            restore_rng_state(states[self.rank], sample_generator, self.device, key="sample")
            return
        if self.is_main:
            log.warning("the checkpoint was written by %s process(es), this run has %d: each process is "
                        "seeded afresh", "1" if states is None else len(states), self.world_size)
        torch.manual_seed(derive_seed(seed, self.rank, 0, epoch))
        sample_generator.manual_seed(derive_seed(seed, self.rank, 1, epoch))

    # --- data -------------------------------------------------------------------------------------------

    def padded_size(self, n: int) -> int:
        """Images drawn per epoch over all processes (``n`` for one process)."""
        return padded_size(n, self.world_size)

    def num_batches(self, n: int, batch_size: int) -> int:
        """Steps per epoch, the same on every process."""
        return num_batches(n, batch_size, self.world_size)

    def batches(self, data: ImageDataset, batch_size: int, generator: torch.Generator,
                sample_generator: torch.Generator | None = None) -> Iterator[dict]:
        """One epoch of this process's batch shards: :func:`shard_batches`, or
        ``data.batches(batch_size, generator=generator)`` (shuffling and binarization from one
        generator, as in single-process training) for one process."""
        if not self.enabled:
            return data.batches(batch_size, generator=generator)
        return shard_batches(data, batch_size, self.rank, self.world_size, generator, sample_generator)

    def shard(self, data: ImageDataset) -> ImageDataset:
        """Every ``world_size``-th image of ``data`` from ``rank`` on (for evaluation; no padding)."""
        if not self.enabled:
            return data
        return data.subset(slice(self.rank, None, self.world_size))

    def mean_over_shards(self, fn: Callable[[ImageDataset], dict], data: ImageDataset) -> dict:
        """The means over all of ``data`` of the per-image means ``fn(shard) -> {name: value}`` computed on
        each process's :meth:`shard` (weighted by shard size and all-reduced); ``fn(data)`` for one
        process. A collective: every rank must call it, and ``fn`` must give the same names on each."""
        if not self.enabled:
            return fn(data)
        shard = self.shard(data)
        values = fn(shard) if len(shard) else {}
        names = self.all_gather_object(sorted(values))[0]
        totals = torch.tensor([values.get(k, 0.0) * len(shard) for k in names], dtype=torch.float64,
                              device=self.device)
        return dict(zip(names, (self.all_reduce_sum(totals) / len(data)).tolist()))

    def shard_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Rows ``rank, rank + W, ...`` of ``x`` (all of ``x`` for one process): this process's share of
        per-image work such as the test log-likelihood; :meth:`gather_rows` puts the results back."""
        return x[self.rank::self.world_size] if self.enabled else x

    # --- collectives ------------------------------------------------------------------------------------

    def gather_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """The inverse of :meth:`shard_rows`: every process's ``rows`` (its share of ``n`` per-image
        results, first dimension ``len(range(rank, n, W))``) put back in the order of the ``n`` images,
        on every process and on the device of ``rows``. A collective: every rank must call it.

        Raises:
            ConfigError: ``rows`` does not have this process's share of ``n`` rows.
        """
        if not self.enabled:
            return rows
        mine = len(range(self.rank, n, self.world_size))
        if rows.shape[0] != mine:
            raise ConfigError(f"rank {self.rank} holds {rows.shape[0]} rows, but its share of {n} is {mine}")
        comm = self.device if self.backend == "nccl" else torch.device("cpu")
        most = -(-n // self.world_size)
        padded = torch.zeros((most, *rows.shape[1:]), dtype=rows.dtype, device=comm)
        padded[:mine] = rows.to(comm)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        out = torch.empty((n, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        for rank, part in enumerate(parts):
            out[rank::self.world_size] = part[:len(range(rank, n, self.world_size))].to(rows.device)
        return out

    def all_gather_object(self, obj: T) -> list[T]:
        """Every process's ``obj`` (picklable), in rank order, on every process; ``[obj]`` for one."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all processes (a new tensor; ``tensor`` itself for one process)."""
        if not self.enabled:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def on_main(self, fn: Callable[[], T]) -> T:
        """Call ``fn()`` on rank 0 only and return its result on every rank; when it raises, the same
        exception is raised on every rank (so no process waits for a peer that has failed). The
        broadcast also synchronizes the processes. Used for everything that touches the run folder."""
        if not self.enabled:
            return fn()
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload[0] = (True, fn())
            except Exception as e:  # sent to the other ranks, then raised here too
                payload[0] = (False, e if _picklable(e) else RuntimeError(f"{type(e).__name__}: {e}"))
                failure = e
        dist.broadcast_object_list(payload, src=0, device=self.device if self.backend == "nccl" else None)
        ok, value = payload[0]
        if not ok:
            if self.is_main:
                raise failure
            raise value
        return value

    def barrier(self) -> None:
        """Wait for every process (nothing for one process)."""
        if self.enabled:
            dist.barrier(device_ids=[self.device.index] if self.backend == "nccl" else None)

    # --- the model ----------------------------------------------------------------------------------------

    def wrap(self, model: nn.Module, loss, find_unused_parameters: bool = False) -> nn.Module | None:
        """``DistributedDataParallel(LossModule(model, loss))`` for several processes, None for one.

        Building it broadcasts rank 0's parameters and buffers to every replica, so replicas start
        equal whatever their initialization; calling it on a batch (instead of ``loss(batch)``) makes
        ``backward`` average the gradients of the model's trainable parameters over the processes. Pass
        ``find_unused_parameters=True`` for a loss that leaves some trainable parameters unused.
        """
        if not self.enabled:
            return None
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(LossModule(model, loss), device_ids=device_ids,
                                       find_unused_parameters=find_unused_parameters)


def _picklable(obj) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:
        return False


def _context_from_group(device: torch.device) -> DistributedContext:
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = _env_int("LOCAL_RANK", rank)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    return DistributedContext(rank, world, local_rank, device, dist.get_backend())


def init_distributed(device: str | torch.device = "cpu", enabled: bool | None = None,
                     backend: str | None = None, timeout: timedelta | None = None) -> DistributedContext:
    """Join the process group that torchrun describes in the environment, and say where this process
    stands in it.

    Args:
        device: ``"cpu"``, ``"cuda"`` or a ``torch.device``. With several processes a CUDA device
            becomes ``cuda:LOCAL_RANK``: one GPU per process.
        enabled: True to require a process group, False for single-process training even under
            torchrun, None (default) for a process group when ``$WORLD_SIZE > 1`` or one is already
            initialized.
        backend: the ``torch.distributed`` backend; default ``nccl`` on CUDA and ``gloo`` on CPU.
        timeout: how long collectives wait for a peer (torch's default, 30 minutes for gloo, when None).

    Returns:
        a :class:`DistributedContext`. A process group already initialized (by the caller) is used
        as it is; one created here is destroyed when the process exits (or by :func:`cleanup`).

    Raises:
        ConfigError: ``enabled`` is True but torchrun's variables are missing or malformed, an unknown
            ``backend``, or CUDA asked for and absent or with fewer GPUs than ``LOCAL_RANK`` needs.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} but CUDA is not available on this machine; use --device cpu")
    if enabled is False:
        return DistributedContext(device=device)
    if dist.is_available() and dist.is_initialized():
        return _context_from_group(device)
    world = env_world_size()
    if enabled is None and world <= 1:
        return DistributedContext(device=device)
    missing = [v for v in ENV_VARS if v != "LOCAL_RANK" and not os.environ.get(v)]
    if missing:
        raise ConfigError(f"distributed training needs the environment variables {', '.join(ENV_VARS[:2])}, "
                          f"MASTER_ADDR and MASTER_PORT, which torchrun sets; {', '.join(missing)} missing. "
                          "Launch with `torchrun --nproc_per_node N -m pyrovae train ...`")
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; install one that has it")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                              "start at most one process per GPU (torchrun --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    kwargs = {"timeout": timeout} if timeout is not None else {}
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    atexit.register(cleanup)
    return DistributedContext(rank, world, local_rank, device, backend)


def is_main_process() -> bool:
    """True unless this process is a rank other than 0 of a process group (initialized, or announced by
    torchrun's ``$RANK``): the test for work that only one process should do."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_world_size() <= 1 or _env_int("RANK", 0) == 0


def cleanup() -> None:
    """Destroy the default process group, if there is one. Call it when training is over (``pyrovae``'s
    command line does): torchrun's processes then leave the group while the interpreter is whole. The
    exit handler that :func:`init_distributed` registers is a fallback; with DDP in use, gloo has been
    seen to abort a process that left it to that handler ("terminate called without an active
    exception"), and torchrun then stops every other process."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # DDP wrappers in reference cycles release the group before it goes
        dist.destroy_process_group()
