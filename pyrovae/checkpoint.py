"""Atomic files and checkpoints: a run interrupted at any moment keeps its last good checkpoint.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over the
old one (``os.replace`` is atomic on POSIX and Windows), so a reader sees the old file or the new one,
never half of either.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch

from .config import RunConfig, build_model

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
FORMAT = "pyrovae-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, or not one that pyrovae wrote."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` ``state`` (plus a format tag) atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def rng_state(generator: torch.Generator, device: torch.device, key: str = "data") -> dict:
    """The RNG states a resumed run needs to go on draw for draw: torch's CPU generator, the data
    ``generator`` (stored under ``key``) and, on a CUDA ``device``, its generator (None otherwise)."""
    return {"torch": torch.get_rng_state(), key: generator.get_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng_state(saved: dict, generator: torch.Generator, device: torch.device, key: str = "data") -> None:
    """Restore the states :func:`rng_state` returned. The CUDA state is restored only on a CUDA
    ``device`` and when one was saved (a run may move between CPU and GPU)."""
    torch.set_rng_state(saved["torch"])
    generator.set_state(saved[key])
    if device.type == "cuda" and saved.get("cuda") is not None:
        torch.cuda.set_rng_state(saved["cuda"], device)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        dict with ``config`` (a :class:`RunConfig` dict), ``epoch``, ``model``, ``optimizer``,
        ``scheduler``, ``history`` and ``rng``.

    Raises:
        CheckpointError: the file is missing, unreadable (truncated or corrupt) or not a pyrovae
            checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train a run first (pyrovae train --out DIR)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"cannot read the checkpoint {path} ({type(e).__name__}: {e}); it is truncated "
                              "or corrupt. Restore it from a copy or train the run again") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyrovae checkpoint (expected format {FORMAT})")
    return state


#: The ``kind`` that the checkpoints of other run folders carry, and what to call them in errors.
OTHER_RUN_KINDS = {"m2": "semi-supervised M2 (`pyrovae semisupervised`)",
                   "structured-cvae": "structured-output CVAE (`pyrovae structured`)"}


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the trained model of a run folder from its checkpoint alone.

    Returns:
        ``(vae, config, state)``: the :class:`pyrovae.VAE` (a :class:`pyrovae.conditional.CVAE` for a
        conditional run) in eval mode on ``device``, its :class:`RunConfig`, and the raw checkpoint dict.

    Raises:
        CheckpointError: see :func:`load_checkpoint`; also when the weights do not fit the config, or
            the folder holds an M2 or structured-output run (they have their own loaders).
    """
    path = Path(run_dir) / CHECKPOINT
    state = load_checkpoint(path, map_location=device)
    kind = state.get("kind")
    if kind in OTHER_RUN_KINDS:
        raise CheckpointError(f"{run_dir} is a {OTHER_RUN_KINDS[kind]} run, not a VAE or CVAE run: this command "
                              "works on runs of `pyrovae train`; its test metrics are in its metrics.json")
    config = RunConfig.from_dict(state["config"])
    vae = build_model(config.model)
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not match the model its config describes ({e})") from e
    return vae.to(device).eval(), config, state
