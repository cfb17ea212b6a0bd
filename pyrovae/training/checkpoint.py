"""Checkpoints and run folders: written atomically, read back by one loader that picks the family from
the checkpoint's ``kind``.

A run folder holds ``config.json`` (the :class:`~pyrovae.training.RunConfig`), ``checkpoint.pt`` (the
last epoch's model, optimizer, schedule, RNG states, history and the family's own state),
``best.pt`` (with a validation split: the epoch of the best validation metric), ``metrics.json`` (the
history and test metrics) and figures. Every file is written to a temporary name and renamed
(:mod:`pyrovae.files`), so a run stopped at any moment keeps its last good checkpoint.

Checkpoints written before the one-protocol trainer (format ``pyrovae-checkpoint-v1``: a VAE's without
``kind``, M2's and the structured-output CVAE's with theirs) are read through :func:`upgrade_v1` and
load, evaluate and resume like new ones.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Callable

import torch

from ..data.config import DataInfo
from ..errors import CheckpointError, ConfigError, DataError, RunDirError
from ..files import atomic_write_bytes, atomic_write_text
from ..models.base import Family, family_for
from .config import RunConfig

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
DATA = "data.json"
FORMAT = "pyrovae-checkpoint-v2"
FORMAT_V1 = "pyrovae-checkpoint-v1"


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` ``state`` (plus the format tag) atomically to ``path``."""
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
    """Read a checkpoint written by :func:`save_checkpoint` (or by pyrovae before it, see
    :func:`upgrade_v1`).

    Returns:
        dict with ``format``, ``kind``, ``config`` (a :class:`RunConfig` dict), ``stage`` (index) and
        ``stage_name``, ``epoch`` (done in that stage), ``stopped``, ``model``, ``optimizer``,
        ``scheduler``, ``history``, ``rng``, ``family_state``, ``monitor`` and ``world_size``.

    Only tensors and plain values are unpickled (``torch.load(weights_only=True)``): a checkpoint never runs
    code, and a file that holds other pickled objects (classes, functions) is refused, never loaded another way.

    Raises:
        CheckpointError: the file is missing, unreadable (truncated or corrupt), holds pickled objects other
            than tensors and plain values, or is not a pyrovae checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train a run first (pyrovae train --out DIR)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        objects = _pickled_objects(path) if isinstance(e, pickle.UnpicklingError) else None
        if objects is not None:  # a well-formed file that weights_only refused: never quote torch's advice
            named = f" ({', '.join(objects[:5])})" if objects else ""
            raise CheckpointError(
                f"{path} holds pickled Python objects that pyrovae will not unpickle{named}: "
                "loading them could run code, and pyrovae never executes code from a checkpoint. pyrovae's own "
                "checkpoints hold tensors and plain values only; use one that pyrovae wrote, or train the run "
                "again") from None
        detail = "" if isinstance(e, pickle.UnpicklingError) else f": {str(e).split('. ')[0]}"
        raise CheckpointError(f"cannot read the checkpoint {path} ({type(e).__name__}{detail}); it is truncated "
                              "or corrupt. Restore it from a copy or train the run again") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, FORMAT_V1):
        raise CheckpointError(f"{path} is not a pyrovae checkpoint (expected format {FORMAT})")
    if state["format"] == FORMAT_V1:
        state = upgrade_v1(state)
    return state


#: Modules whose names a checkpoint's pickle may reference (what ``torch.save`` of tensors, containers and plain
#: values writes); any other is code that ``weights_only`` refuses to import.
_PLAIN_MODULES = ("torch", "collections", "builtins", "__builtin__", "_codecs")


def _pickled_objects(path: Path) -> list[str] | None:
    """The ``module.name`` globals other than torch's and plain containers' that the pickle of a well-formed
    torch checkpoint (a zip archive) references, read with :mod:`pickletools` (which parses the opcodes and
    executes nothing); None when the file is not a well-formed archive with a complete pickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return None
            data = archive.read(name)
        found, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif opcode.name in ("GLOBAL", "INST"):
                found.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError):  # not an archive, or a broken pickle
        return None
    return sorted({g for g in found if g.split(".")[0] not in _PLAIN_MODULES})


# --- checkpoints of pyrovae before the one trainer -------------------------------------------------------

_V1_TRAINER = ("epochs", "batch_size", "lr", "lr_schedule", "final_lr_ratio", "elbo", "num_particles", "free_bits",
               "beta", "kl_warmup_epochs", "seed", "device")
_V1_DATA = ("data_dir", "binarization", "validation_size", "train_size", "test_size")


def _split_v1(old: dict, model: dict, trainer_defaults: dict) -> dict:
    trainer = {**trainer_defaults, **{k: old[k] for k in _V1_TRAINER if k in old}}
    data = {k: old[k] for k in _V1_DATA if k in old}
    evaluation = {"num_samples": old["eval_num_samples"]} if "eval_num_samples" in old else {}
    return {"model": model, "trainer": trainer, "data": data, "evaluation": evaluation}


def upgrade_v1(state: dict) -> dict:
    """A checkpoint of format ``pyrovae-checkpoint-v1`` in today's layout: its flat config split into the
    model (of the kind it holds: a VAE's checkpoint has no ``kind``, a conditional one is a CVAE), trainer,
    data and evaluation configs; its stage and epoch; M2's labelled indices as the family's state.
    The weights, optimizer, schedule, RNG states and history are kept as they are.

    Raises:
        CheckpointError: a kind this version cannot read.
    """
    old, kind = dict(state["config"]), state.get("kind")
    if kind is None:  # a VAE or CVAE of `pyrovae train`
        model = dict(old["model"])
        conditional = model.pop("conditional", False)
        num_classes = model.pop("num_classes", 10)
        model = {"kind": "cvae", **model, "num_classes": num_classes} if conditional else {"kind": "vae", **model}
        config = _split_v1(old, model, {})
        stage, stage_name, family_state = 0, "train", {}
    elif kind == "m2":
        model = {"kind": "m2", **{k: old[k] for k in ("num_labels", "z_dim", "hidden", "likelihood",
                                                      "likelihood_options", "aux_loss_multiplier",
                                                      "labelled_batch_size") if k in old},
                 "x_shape": list(state.get("x_shape", (1, 28, 28)))}
        old.setdefault("lr_schedule", "constant")
        config = _split_v1(old, model, {"kl_warmup_epochs": 0.0})
        stage, stage_name = 0, "train"
        family_state = {"labelled_indices": state.get("labelled_indices")}
    elif kind == "structured-cvae":
        model = {"kind": "structured-cvae",
                 **{k: old[k] for k in ("visible", "z_dim", "hidden", "baseline_epochs") if k in old}}
        config = _split_v1({**old, "lr_schedule": "constant"}, model, {"kl_warmup_epochs": 0.0})
        stage_name = state.get("stage", "baseline")
        stage, family_state = (0 if stage_name == "baseline" else 1), {}
    else:
        raise CheckpointError(f"a v1 checkpoint of kind {kind!r}, which this version of pyrovae cannot read")
    return {"format": FORMAT, "upgraded_from": FORMAT_V1, "kind": config["model"]["kind"], "config": config,
            "stage": stage, "stage_name": stage_name, "epoch": int(state["epoch"]), "stopped": False,
            "model": state["model"], "optimizer": state.get("optimizer"), "scheduler": state.get("scheduler"),
            "history": list(state.get("history", [])), "rng": state.get("rng"), "family_state": family_state,
            "monitor": None, "world_size": state.get("world_size", 1)}


# --- run folders ------------------------------------------------------------------------------------------


def read_run_dir(run_dir: Path, resume: bool, load: Callable[[Path], dict] = load_checkpoint) -> dict | None:
    """The checkpoint to resume from, read with ``load`` (None for a new run).

    Raises:
        RunDirError: ``run_dir`` holds a checkpoint and ``resume`` is False, or ``resume`` is True and
            it holds none.
    """
    ckpt_path = Path(run_dir) / CHECKPOINT
    if resume:
        if not ckpt_path.exists():
            raise RunDirError(f"--resume given but {run_dir} holds no {CHECKPOINT}; start a new run without --resume")
        return load(ckpt_path)
    if ckpt_path.exists():
        raise RunDirError(f"{run_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it or "
                          "choose another output folder")
    return None


def read_metrics(run_dir: str | os.PathLike) -> dict:
    """``run_dir/metrics.json`` ({} when absent).

    Raises:
        RunDirError: the file exists but is not a JSON object (truncated, not UTF-8, another JSON value); the
            message names the file.
    """
    path = Path(run_dir) / METRICS
    if not path.exists():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError (truncated), UnicodeDecodeError
        raise RunDirError(f"{path} cannot be read ({e}); restore it from a copy or delete it") from e
    if not isinstance(metrics, dict):
        raise RunDirError(f"{path} holds a JSON {type(metrics).__name__}, not the JSON object of metrics pyrovae "
                          "writes; restore it from a copy or delete it")
    return metrics


def write_metrics(run_dir: str | os.PathLike, update: dict) -> dict:
    """Merge ``update`` into ``run_dir/metrics.json`` (written atomically) and return the result."""
    metrics = {**read_metrics(run_dir), **update}
    atomic_write_text(Path(run_dir) / METRICS, json.dumps(metrics, indent=2) + "\n")
    return metrics


def write_data_info(run_dir: str | os.PathLike, info: DataInfo) -> None:
    """Write ``run_dir/data.json``: the source, its provenance, the split and the fitted transform."""
    atomic_write_text(Path(run_dir) / DATA, json.dumps(info.to_dict(), indent=2) + "\n")


def read_data_info(run_dir: str | os.PathLike) -> DataInfo | None:
    """``run_dir/data.json`` as a :class:`~pyrovae.data.DataInfo` (None for runs on MNIST written before it
    existed).

    Raises:
        RunDirError: the file exists but cannot be read.
    """
    path = Path(run_dir) / DATA
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
        return DataInfo(**{**d, "x_shape": tuple(d["x_shape"])})
    except (OSError, ValueError, TypeError, KeyError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise RunDirError(f"{path} cannot be read ({type(e).__name__}: {e}); restore it from a copy") from e


def check_same_data(recorded: DataInfo | None, now: DataInfo) -> None:
    """Raise :class:`~pyrovae.errors.DataError` when a file or folder a run was trained on has changed since
    (its sha256 differs): its test split would not be the run's."""
    if recorded is None:
        return
    if recorded.test_rows_sha256 and now.test_rows_sha256 and recorded.test_rows_sha256 != now.test_rows_sha256:
        raise DataError("the test split drawn now is not the run's (its rows' hash differs: another split_seed, "
                        "test_fraction or numpy version?): test numbers would not be comparable")
    before, after = recorded.provenance.get("sha256"), now.provenance.get("sha256")
    if before and after and before != after:
        raise DataError(f"{now.provenance.get('path', now.source)} has changed since this run was trained (sha256 "
                        f"{after[:12]}..., the run's {before[:12]}...): its split and transform would not be the "
                        "run's. "
                        "Point --data at the file the run was trained on")


def run_config(state: dict) -> RunConfig:
    """The :class:`RunConfig` of a checkpoint read by :func:`load_checkpoint`.

    Raises:
        CheckpointError: the config is invalid, or of a family that is not registered.
    """
    try:
        return RunConfig.from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"the checkpoint's config cannot be read: {e}") from e


def read_run_config(run_dir: str | os.PathLike) -> RunConfig:
    """The :class:`RunConfig` of a run folder of any family: its ``config.json``, or, for a run folder written
    by pyrovae 0.1 (whose ``config.json`` has the old flat layout, see :func:`upgrade_v1`), its checkpoint's.

    Raises:
        ConfigError: an invalid ``config.json`` and no checkpoint to read instead.
        CheckpointError: see :func:`load_checkpoint`.
    """
    run_dir = Path(run_dir)
    try:
        return RunConfig.load(run_dir / CONFIG)
    except ConfigError:
        if not (run_dir / CHECKPOINT).exists():
            raise
    return run_config(load_checkpoint(run_dir / CHECKPOINT))


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu", which: str = "last"
             ) -> tuple[Family, RunConfig, dict]:
    """Rebuild the trained model of a run folder from its checkpoint alone, whatever its family.

    Args:
        run_dir: the run folder.
        device: where to put the model.
        which: ``"last"`` (``checkpoint.pt``, the last epoch) or ``"best"`` (``best.pt``, the epoch of the
            best validation metric; runs with a validation split).

    Returns:
        ``(model, config, state)``: the model (of the family its ``kind`` names) in eval mode on
        ``device``, its :class:`RunConfig`, and the raw checkpoint dict.

    Raises:
        CheckpointError: see :func:`load_checkpoint`; also when the weights do not fit the config.
        ConfigError: an unknown ``which``.
    """
    if which not in ("last", "best"):
        raise ConfigError(f"which={which!r} is unknown; choose last or best")
    path = Path(run_dir) / (CHECKPOINT if which == "last" else BEST)
    state = load_checkpoint(path, map_location=device)
    config = run_config(state)
    model = family_for(config.kind).from_config(config.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not match the model its config describes ({e})") from e
    return model.to(device).eval(), config, state
