"""The exceptions pyrovae raises: one base class, :class:`PyroVAEError`, and a subclass per kind of problem.

Catch ``PyroVAEError`` to handle every error pyrovae itself diagnoses (the command line does, and prints
its message). Each message says what was wrong and what to do. The subclasses also derive from the
built-in exception that fits (``ValueError`` for a bad value, ``TypeError`` for a wrong type,
``NotImplementedError`` for a capability a model does not have), so code that catches those keeps
working. Nothing in pyrovae decides anything by matching an error message's text: it catches a class.

* :class:`ConfigError`: a setting or argument has a bad value (names the field, the value, what it accepts).
* :class:`ArgumentTypeError`: an argument has the wrong type (a string where a number belongs).
* :class:`DataError`: data that cannot be used: a missing, truncated or corrupt file, or tensors of the
  wrong shape or dtype, with NaN, or outside the likelihood's support.
* :class:`CheckpointError`: a checkpoint is missing, unreadable, or not one pyrovae wrote.
* :class:`RunDirError`: a run folder is in a state where going on would lose work.
* :class:`UnsupportedError`: the model (or its prior or guide) does not have what an operation needs,
  e.g. a per-dimension KL of a mixture prior, or NUTS on a discrete latent.
"""

from __future__ import annotations


class PyroVAEError(Exception):
    """The base of every error that pyrovae raises on purpose."""


class ConfigError(PyroVAEError, ValueError):
    """A setting, option or argument has a value pyrovae does not accept; the message names it, the
    value it got and what it accepts."""


class ArgumentTypeError(PyroVAEError, TypeError):
    """An argument has the wrong type; the message names it and the type it needs."""


class DataError(PyroVAEError, ValueError):
    """Data pyrovae cannot use: a data file that is missing, truncated or corrupt, or tensors of the wrong
    shape or dtype, with NaN or infinite values, or outside the likelihood's support."""


class CheckpointError(PyroVAEError):
    """A checkpoint is missing, truncated, not one that pyrovae wrote, or does not fit its config."""


class RunDirError(PyroVAEError):
    """The run folder is in a state that would lose work (an existing run without ``--resume``, or
    ``--resume`` with nothing to resume)."""


class UnsupportedError(PyroVAEError, NotImplementedError):
    """The model does not support this operation (for example a KL split per latent dimension with a
    prior that does not factorize, or the amortization gap of a model without an amortized encoder)."""


__all__ = ["PyroVAEError", "ConfigError", "ArgumentTypeError", "DataError", "CheckpointError", "RunDirError",
           "UnsupportedError"]
