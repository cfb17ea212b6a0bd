"""Small torch helpers that every layer uses: eval mode for a while, frozen parameters, a module's
device, the inverse softplus that learned scales start from, and the size of networks before they are
built."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .errors import PyroVAEError


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Hold ``module`` in eval mode for the duration, then restore its training flag."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Eval mode and no parameter gradients for the duration (for computations that differentiate with
    respect to something else, such as z in NUTS), then the module's state as it was."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with eval_mode(module):
            yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s first parameter (or buffer) lives; the CPU for a module with neither."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def parameter_count(build) -> int | None:
    """The number of parameters of the module(s) that ``build()`` returns (one module or a tuple of them),
    built on the meta device: shapes only, no memory and no initialisation (distributions' argument checks are
    off meanwhile, as they read values), so a model far too large for memory is measured before it is
    allocated (:func:`pyrovae.checks.trainable_in_memory`).

    Returns None when ``build`` cannot run on the meta device (code that reads tensor values, e.g. Pyro's
    autoregressive networks); the errors pyrovae raises on purpose (a bad setting) propagate.
    """
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        with torch.device("meta"):
            built = build()
    except PyroVAEError:
        raise
    except Exception:  # not meta-safe: the caller's real build, with its own checks, goes on
        return None
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    modules = built if isinstance(built, (tuple, list)) else (built,)
    return sum(p.numel() for m in modules if isinstance(m, nn.Module) for p in m.parameters())


def inverse_softplus(y: float | torch.Tensor) -> float | torch.Tensor:
    """x with softplus(x) = y, for y > 0, computed without overflow for large y: y + log(-expm1(-y))."""
    if isinstance(y, torch.Tensor):
        return y + torch.log(-torch.expm1(-y))
    return y + math.log(-math.expm1(-y))


def rng_kept(device: torch.device):
    """A context in which random draws leave the caller's random state (CPU, and ``device`` if CUDA) as
    it was (``torch.random.fork_rng``)."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
