"""The optimizer and the schedules of training: Adam (fused where it applies), the learning-rate factor,
the KL weight during warm-up, flushing subnormal floats, and the device."""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch

from ..errors import ConfigError


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``.

    Raises:
        ConfigError: CUDA is asked for and absent.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} but CUDA is not available on this machine; use --device cpu")
    return device


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
    reaches the loss. No effect on CUDA, or on a CPU without a flush-to-zero mode
    (``torch.set_flush_denormal`` returns False there).
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


def lr_factor(schedule: str, final_lr_ratio: float, total_steps: int) -> Callable[[int], float]:
    """The learning rate's factor at each optimizer step (0-based), for ``torch.optim.lr_scheduler.LambdaLR``.

    ``"constant"``: 1 throughout; ``"cosine"``: a half cosine from 1 to ``final_lr_ratio`` over
    ``total_steps`` steps (Loshchilov & Hutter 2017, without restarts), held at ``final_lr_ratio``
    after that.

    Raises:
        ConfigError: an unknown ``schedule``.
    """
    total = max(1, total_steps)
    if schedule == "constant":
        return lambda step: 1.0
    if schedule != "cosine":
        raise ConfigError(f"lr_schedule={schedule!r} is unknown; choose cosine or constant")
    r = final_lr_ratio
    return lambda step: r + (1 - r) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def kl_weight_at(beta: float, warmup_epochs: float, step: int, steps_per_epoch: int) -> float:
    """The weight on the KL term at training ``step`` (0-based): ``beta`` after a linear warm-up over
    ``warmup_epochs`` epochs, ``beta * (step + 1) / warmup_steps`` until then (Sonderby et al. 2016;
    Bowman et al. 2016)."""
    warmup = warmup_epochs * steps_per_epoch
    if warmup <= 0 or step + 1 >= warmup:
        return beta
    return beta * (step + 1) / warmup
