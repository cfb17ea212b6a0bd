"""Training: stochastic variational inference on the ELBO, with atomic per-epoch checkpoints and resume.

Each step minimizes ``elbo.differentiable_loss(vae.model, vae.guide, x, num_data=N) / N`` (the negative
ELBO in nats per image of a mini-batch) with Adam over ``vae.parameters()``. This is the pattern Pyro
documents for pairing its ELBOs with PyTorch optimizers: gradients are those of ``pyro.infer.SVI``, but
the parameters stay in the module instead of Pyro's global param store, so models never share them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import pyro
import torch
from tqdm.auto import tqdm

from .checkpoint import (CHECKPOINT, CONFIG, METRICS, atomic_write_text, load_checkpoint, restore_rng_state,
                         rng_state, save_checkpoint)
from .config import RunConfig, build_model
from .data import RANDOM_TRANSFORMS, ImageDataset, load_mnist
from .distributed import init_distributed
from .models import VAE
from .objectives import make_elbo
from .priors import kl_mode

log = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    """The run folder is in a state that would lose work (an existing run without ``--resume``, or
    ``--resume`` with nothing to resume)."""


def resolve_device(device: str) -> torch.device:
    """``torch.device(device)``; raises ``ValueError`` when CUDA is asked for and absent."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available on this machine; use --device cpu")
    return torch.device(device)


def _flushing_denormals() -> bool:
    """Whether this thread's CPU kernels now flush subnormal floats to zero (probed: PyTorch has no getter)."""
    return (torch.full((8,), 1e-39) * 1.0).max().item() == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Flush subnormal ("denormal") float32 values to zero on the CPU inside the block (also a decorator);
    the previous setting is restored afterwards.

    As an M2 or structured-output CVAE trains, its backward pass comes to produce gradients below
    float32's smallest normal number (1.2e-38). x86 CPUs compute on such subnormals through a slow
    microcode path, so training slowed down as it went (M2 at lr 3e-3: 22 s per epoch at first, 200 s
    after 40 epochs). On that checkpoint a training step takes 0.70 s computing subnormals and 0.09 s
    flushing them, the backward pass 0.65 s against 0.05 s, one thread on real MNIST
    (``benchmarks/denormals.py``). Flushing changes only values below 1.2e-38, far under anything that
    reaches the loss. No effect on CUDA, or on a CPU without a flush-to-zero
    mode (``torch.set_flush_denormal`` returns False there).
    """
    was = _flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was)


def make_optimizer(params, lr: float) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015) over ``params``, using PyTorch's fused kernel where it applies
    (floating-point parameters on CPU or CUDA).

    The fused kernel computes the same update as the default per-parameter loop (equal to float
    rounding; a test checks it) in one pass over all parameters: on the default MLP VAE it cuts the
    optimizer step on 2 CPU cores from about 1.8 ms to 0.6 ms (``benchmarks/throughput.py``).
    """
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused)


def lr_factor(config, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate's factor at each optimizer step (0-based), for ``torch.optim.lr_scheduler.LambdaLR``.

    ``config`` is any config with ``epochs``, ``lr_schedule`` and ``final_lr_ratio`` (:class:`RunConfig`,
    :class:`pyrovae.semisupervised.M2Config`): 1 throughout for ``"constant"``; for ``"cosine"`` a half
    cosine from 1 to ``final_lr_ratio`` over ``epochs * steps_per_epoch`` steps (Loshchilov & Hutter
    2017, without restarts), held at ``final_lr_ratio`` after that.
    """
    total = max(1, config.epochs * steps_per_epoch)
    if config.lr_schedule == "constant":
        return lambda step: 1.0
    r = config.final_lr_ratio
    return lambda step: r + (1 - r) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def kl_weight(config: RunConfig, step: int, steps_per_epoch: int) -> float:
    """The weight on the KL term at training ``step`` (0-based): ``config.beta`` after a linear warm-up
    over ``config.kl_warmup_epochs`` epochs, ``beta * (step + 1) / warmup_steps`` until then
    (Sonderby et al. 2016; Bowman et al. 2016)."""
    warmup = config.kl_warmup_epochs * steps_per_epoch
    if warmup <= 0 or step + 1 >= warmup:
        return config.beta
    return config.beta * (step + 1) / warmup


@torch.no_grad()
def elbo_per_image(vae: VAE, data: ImageDataset, elbo, batch_size: int = 1000,
                   device: torch.device | str = "cpu") -> float:
    """The ELBO in nats per image, averaged over ``data`` (one pass, no gradients); for a
    label-conditional model, the ELBO of log p(x | y) given each image's label."""
    total = 0.0
    for x, y in data.batches(batch_size, shuffle=False):
        m = given_labels(vae, y, device)
        total -= elbo.differentiable_loss(m.model, m.guide, x.to(device)).item()
    return total / len(data)


def given_labels(vae: VAE, y: torch.Tensor, device: torch.device | str = "cpu"):
    """``vae`` itself, or for a label-conditional model (one with ``with_labels``, such as
    :class:`pyrovae.conditional.CVAE`) the view with the batch's labels ``y (batch,)`` bound, whose
    ``model(x, ...)``/``guide(x, ...)`` are ``model(x, y, ...)``/``guide(x, y, ...)``."""
    return vae.with_labels(y.to(device, non_blocking=True)) if hasattr(vae, "with_labels") else vae


def load_data(config: RunConfig) -> tuple[ImageDataset, ImageDataset | None, ImageDataset]:
    """The ``(train, validation, test)`` MNIST datasets that ``config`` describes (see
    :func:`pyrovae.data.load_mnist`)."""
    return load_mnist(config.data_dir, config.binarization, config.validation_size, seed=config.seed,
                      train_size=config.train_size)


def train_step(vae: VAE, elbo, optimizer: torch.optim.Optimizer, x: torch.Tensor, num_data: int,
               beta: float = 1.0, ddp: torch.nn.Module | None = None) -> torch.Tensor:
    """One SVI step on a mini-batch ``x (batch, *x_shape)`` of a data set of ``num_data`` images, with
    the KL term weighed by ``beta`` (see :meth:`pyrovae.VAE.model`).

    With ``ddp``, the DistributedDataParallel wrapper of ``vae`` (see
    :meth:`pyrovae.distributed.DistributedContext.wrap`), ``x`` is this process's shard of the global
    batch and the loss goes through the wrapper, so that ``backward`` averages the gradients over the
    processes (equal shards: the gradient of the global batch).

    Returns the detached loss: the negative (beta-weighted) ELBO of the batch in nats per image.
    """
    if ddp is None:
        loss = elbo.differentiable_loss(vae.model, vae.guide, x, num_data=num_data, beta=beta) / num_data
    else:
        loss = ddp(x, num_data=num_data, beta=beta, program=vae) / num_data
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@flush_denormals()
def fit(config: RunConfig, run_dir: str | os.PathLike, resume: bool = False,
        data: tuple[ImageDataset, ImageDataset | None, ImageDataset] | None = None,
        progress: bool | None = None,
        on_epoch_end: Callable[[int, VAE, Path], None] | None = None,
        distributed: bool | None = None) -> tuple[VAE, list[dict]]:
    """Train (or resume) the run in ``run_dir``; returns ``(vae, history)``.

    Writes ``config.json`` at the start and, after every epoch, ``checkpoint.pt`` (model, optimizer and
    schedule state, RNG states, config, epoch, history) and ``metrics.json``, each atomically. Resuming
    restores every RNG state, so a resumed run continues exactly as if it had not stopped. A
    label-conditional model (``config.model.conditional``) trains on each batch's labels, and its ELBOs
    bound log p(x | y).

    Args:
        config: the run's settings. On ``resume`` the checkpoint's config is used, except ``epochs``
            (so a finished run can be extended) and ``device``.
        run_dir: the run folder (created if missing).
        resume: continue from ``run_dir/checkpoint.pt``.
        data: ``(train, validation, test)`` datasets; loaded from ``config.data_dir`` when None.
        progress: show a progress bar (default: when stderr is a terminal).
        on_epoch_end: called as ``on_epoch_end(epoch, vae, checkpoint_path)`` after each epoch's
            checkpoint is written (for snapshots or custom logging), on every process.
        distributed: data-parallel training over the processes that torchrun started (see
            :mod:`pyrovae.distributed`): the global batch is ``config.batch_size`` x their number,
            rank 0 alone writes to ``run_dir``, and ``train_elbo`` is the mean over all processes.
            None (default): when ``$WORLD_SIZE > 1`` or a process group is initialized.

    Returns:
        the trained :class:`pyrovae.VAE` and the per-epoch history: dicts with ``epoch``,
        ``train_elbo`` (the objective, its KL term weighed by ``beta``), ``beta`` (the weight at the
        epoch's last step), with a validation split ``validation_elbo`` (nats per image: the ELBO, or
        L_K for ``elbo="IWAE"``, at beta = 1 and without free bits), ``lr`` and
        ``seconds``.

    Raises:
        RunDirError: ``run_dir`` holds a checkpoint and ``resume`` is False, or ``resume`` is True and
            it holds none.
        CheckpointError: the checkpoint to resume from is unreadable.
        ValueError: bad data (shape, NaN, values outside the likelihood's support) or device.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    ctx = init_distributed(resolve_device(config.device), distributed)
    device = ctx.device
    state = ctx.on_main(lambda: read_run_dir(run_dir, resume))  # rank 0 reads; every rank gets it
    if state is not None:
        saved = RunConfig.from_dict(state["config"])
        config = saved.model_copy(update={"epochs": config.epochs, "device": config.device})

    pyro.set_rng_seed(ctx.seed(config.seed))
    generator = torch.Generator().manual_seed(config.seed)  # shuffles; the same on every process
    sample_generator = torch.Generator().manual_seed(ctx.seed(config.seed, stream=1))  # each process's own
    if data is None:
        data = load_data(config)
    train, validation, _ = data

    vae = build_model(config.model)
    first = train.get(torch.arange(min(len(train), 1000)), torch.Generator().manual_seed(config.seed))
    vae.check_data(first)
    if train.binarization not in RANDOM_TRANSFORMS:
        vae.check_data(train.images)
    if validation is not None:
        vae.check_data(validation.images)
    if hasattr(vae, "check_labels"):  # label-conditional models: labels checked once, here
        for split in (train, validation) if validation is not None else (train,):
            vae.check_labels(split.labels, split.images)
    if state is None and hasattr(vae.likelihood, "init_bias"):
        vae.likelihood.init_bias(vae.decoder.output_layer, train.images.float() /
                                 (255.0 if train.images.dtype == torch.uint8 else 1.0))
    vae.to(device)

    elbo = make_elbo(config.elbo, config.num_particles, config.free_bits)
    validation_elbo = make_elbo(config.elbo, config.num_particles)  # the bound itself, not floored by free bits
    optimizer = make_optimizer(vae.parameters(), config.lr)
    steps = ctx.num_batches(len(train), config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps))
    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.lr_lambdas[0] = lr_factor(config, steps)
        history, start_epoch = list(state["history"]), int(state["epoch"])
        restore_rng_state(state["rng"], generator, device)
        ctx.restore_rng_states(state["rng"].get("ranks"), sample_generator, config.seed, start_epoch)
    ddp = ctx.wrap(vae, elbo)  # None for one process
    kl_term = (kl_mode(given_labels(vae, torch.zeros((), dtype=torch.long), device))
               if config.elbo == "TraceMeanField_ELBO" else "monte_carlo")
    config = config.model_copy(update={"kl_term": kl_term})

    def write_config():
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG)

    ctx.on_main(write_config)  # rank 0 alone writes to run_dir

    n = len(train)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        vae.train()
        t0 = time.perf_counter()
        total = torch.zeros((), device=device)
        bar = tqdm(ctx.batches(train, config.batch_size, generator, sample_generator), total=steps, leave=False,
                   desc=f"epoch {epoch}/{config.epochs}",
                   disable=True if not ctx.is_main else None if progress is None else not progress)
        with pyro.validation_enabled(False):
            for i, (x, y) in enumerate(bar):
                x = x.to(device, non_blocking=True)
                beta = kl_weight(config, (epoch - 1) * steps + i, steps)
                total += train_step(given_labels(vae, y, device), elbo, optimizer, x, n, beta, ddp) * x.shape[0]
                scheduler.step()
        row = {"epoch": epoch, "train_elbo": -ctx.all_reduce_sum(total).item() / ctx.padded_size(n), "beta": beta,
               "lr": optimizer.param_groups[0]["lr"]}
        if validation is not None:
            vae.eval()
            row["validation_elbo"] = ctx.mean_over_shards(
                lambda shard: elbo_per_image(vae, shard, validation_elbo, device=device), validation)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if ctx.is_main:
            log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        rng = rng_state(generator, device)
        if ctx.enabled:
            rng["ranks"] = ctx.rng_states(sample_generator)  # a collective: every rank takes part

        def write_epoch():
            save_checkpoint(ckpt_path, {
                "config": config.to_dict(), "epoch": epoch, "model": vae.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
                "rng": rng, "world_size": ctx.world_size,
            })
            write_metrics(run_dir, {"history": history})

        ctx.on_main(write_epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch, vae, ckpt_path)
    return vae.eval(), history


def read_run_dir(run_dir: Path, resume: bool, load: Callable[[Path], dict] = load_checkpoint) -> dict | None:
    """The checkpoint to resume from, read with ``load`` (None for a new run). Every kind of run folder
    (VAE, M2, structured output) starts through this check.

    Raises:
        RunDirError: ``run_dir`` holds a checkpoint and ``resume`` is False, or ``resume`` is True and
            it holds none.
    """
    ckpt_path = run_dir / CHECKPOINT
    if resume:
        if not ckpt_path.exists():
            raise RunDirError(f"--resume given but {run_dir} holds no {CHECKPOINT}; start a new run without --resume")
        return load(ckpt_path)
    if ckpt_path.exists():
        raise RunDirError(f"{run_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it or "
                          "choose another output folder")
    return None


def write_metrics(run_dir: str | os.PathLike, update: dict) -> dict:
    """Merge ``update`` into ``run_dir/metrics.json`` (written atomically) and return the result."""
    path = Path(run_dir) / METRICS
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics.update(update)
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return metrics
