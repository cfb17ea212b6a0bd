"""What the estimators need to know about the Pyro programs they are given: the module a program belongs
to (held in eval mode while it is evaluated, and telling the device), and the checks of the programs'
per-data-point arguments."""

from __future__ import annotations

import contextlib

import torch

from ..errors import ArgumentTypeError, DataError
from ..models.vae import check_dtype
from ..torchtools import device_of, eval_mode


def program_module(program) -> torch.nn.Module | None:
    """The module a Pyro program belongs to (a bound method's ``__self__``), or None."""
    owner = getattr(program, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


@contextlib.contextmanager
def evaluating(*programs):
    """Hold the modules of ``programs`` in eval mode for the duration, then restore their training flags."""
    with contextlib.ExitStack() as stack:
        seen = set()
        for program in programs:
            module = program_module(program)
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                stack.enter_context(eval_mode(module))
        yield


def program_device(program, device: torch.device | str | None = None) -> torch.device:
    """``device`` if given, else where the program's module lives (the CPU for a plain function)."""
    if device is not None:
        return torch.device(device)
    module = program_module(program)
    return device_of(module) if module is not None else torch.device("cpu")


def check_arguments(args: tuple, program=None) -> int:
    """The number of data points of the programs' per-data-point arguments ``args`` (at least one); with
    ``program``, floating-point arguments must have the dtype of its module's parameters (float64 data for a
    float32 model is refused with the conversion to use, not converted).

    Raises:
        ArgumentTypeError: an argument is not a tensor.
        DataError: no arguments, no data points, first dimensions that differ, or another float dtype than the
            program's.
    """
    if not args:
        raise DataError("pass the programs' arguments, e.g. log_likelihood(vae.model, vae.guide, x)")
    for a in args:
        if not isinstance(a, torch.Tensor):
            raise ArgumentTypeError(f"the programs' arguments must be tensors with one row per data point, got "
                                    f"{type(a).__name__}")
    sizes = {int(a.shape[0]) if a.dim() else -1 for a in args}
    if len(sizes) != 1 or -1 in sizes:
        raise DataError(f"the programs' arguments must have the same first dimension (one row per data point), got "
                        f"shapes {[tuple(a.shape) for a in args]}")
    n = sizes.pop()
    if n == 0:
        raise DataError(f"the data hold no data points (shapes {[tuple(a.shape) for a in args]}); pass at least one")
    module = program_module(program)
    if module is not None:
        for a in args:
            check_dtype(a, module)
    return n


def chunks(args: tuple, batch_size: int, device: torch.device):
    """The arguments in consecutive chunks of ``batch_size`` data points, on ``device``."""
    n = int(args[0].shape[0])
    for start in range(0, n, batch_size):
        yield tuple(a[start:start + batch_size].to(device) for a in args)
