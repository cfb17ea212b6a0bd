"""Checkpoints and run folders: written atomically, read back by one loader that picks the family from
the checkpoint's ``kind``.

A run folder holds ``config.json`` (the :class:`~pyrovae.training.RunConfig`), ``checkpoint.pt`` (the
last epoch's model, optimizer, schedule, RNG states, history and the family's own state),
``best.pt`` (with a validation split: the epoch of the best validation metric), ``metrics.json`` (the
history and test metrics) and figures. Every file is written to a temporary name and renamed
(:mod:`pyrovae.files`), so a run stopped at any moment keeps its last good checkpoint.

What a user had is never overwritten or mixed: a new run goes only into a new or empty folder
(:func:`check_run_dir`); every command that writes to a run folder holds its lock (:func:`run_dir_lock`,
the file ``.pyrovae.lock`` with the owner's process id and host); a run folder's own files are read only
when they are files inside it, never through a symbolic link (:func:`own_file`).

Checkpoints written before the one-protocol trainer (format ``pyrovae-checkpoint-v1``: a VAE's without
``kind``, M2's and the structured-output CVAE's with theirs) are read through :func:`upgrade_v1` and
load, evaluate and resume like new ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import pickletools
import socket
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..data.config import DataInfo
from ..errors import CheckpointError, ConfigError, DataError, RunDirError
from ..files import atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from ..models.base import Family, family_for
from .config import RunConfig

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
DATA = "data.json"
LOCK = ".pyrovae.lock"
#: The files of a run folder that no output of a command may replace.
OWN_FILES = (CHECKPOINT, BEST, CONFIG, METRICS, DATA, LOCK, "metrics.csv")
FORMAT = "pyrovae-checkpoint-v2"
FORMAT_V1 = "pyrovae-checkpoint-v1"

log = logging.getLogger(__name__)


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


def own_file(run_dir: str | os.PathLike, name: str) -> Path:
    """``run_dir/name``, a file of the run folder itself: pyrovae reads a run folder's files only inside it.

    Raises:
        RunDirError: ``run_dir/name`` is a symbolic link, or lies outside ``run_dir`` once resolved (its
            content would be another file's, merged into the run's).
    """
    path = Path(run_dir) / name
    if path.is_symlink():
        raise RunDirError(f"{path} is a symbolic link (to {os.readlink(path)}); pyrovae follows no links out of a "
                          "run folder. Put the file itself there, or remove the link")
    if path.exists() and path.resolve().parent != Path(run_dir).resolve():
        raise RunDirError(f"{path} lies outside its run folder ({path.resolve()}); pyrovae follows no links out of "
                          "a run folder")
    return path


def check_run_dir(run_dir: str | os.PathLike, resume: bool) -> None:
    """Refuse a folder that a new run (``resume`` False) or a resumed one would lose work in; reads nothing
    but the folder's listing, writes nothing.

    Raises:
        RunDirError: ``run_dir`` is a file; ``resume`` and no checkpoint; not ``resume`` and ``run_dir``
            holds a run (a checkpoint) or anything else (a user's files, a config or pictures left
            without a checkpoint): a new run goes only into a new or empty folder.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a folder; choose a folder for the run (--out)")
    ckpt = run_dir / CHECKPOINT
    if resume:
        if not ckpt.exists() and not ckpt.is_symlink():
            raise RunDirError(f"--resume given but {run_dir} holds no {CHECKPOINT}; start a new run without --resume")
        own_file(run_dir, CHECKPOINT)
        return
    if ckpt.exists() or ckpt.is_symlink():
        raise RunDirError(f"{run_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it or "
                          "choose another output folder")
    if run_dir.is_dir():
        others = sorted(e.name for e in os.scandir(run_dir) if e.name != LOCK)
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise RunDirError(f"{run_dir} is not empty ({shown}) and holds no run to resume (no {CHECKPOINT}); a "
                              "new run goes only into a new or empty folder, so that nothing there is replaced. "
                              "Choose another output folder (--out), or empty this one")


#: What a new run writes before its first checkpoint (removed again when it stops before one).
START_FILES = (CONFIG, DATA, METRICS, "metrics.csv")


def remove_start_files(run_dir: str | os.PathLike) -> None:
    """Remove what a new run wrote at its start (:data:`START_FILES`, its TensorBoard folder) when it stopped
    before its first checkpoint: the folder was empty when it began (see :func:`check_run_dir`), so this leaves
    it as it was, and the same command can start again (there is nothing to ``--resume``)."""
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT).exists():
        return
    for name in START_FILES:
        path = run_dir / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    board = run_dir / "tensorboard"
    if board.is_dir() and not board.is_symlink():
        import shutil
        shutil.rmtree(board, ignore_errors=True)


def read_run_dir(run_dir: Path, resume: bool, load: Callable[[Path], dict] = load_checkpoint) -> dict | None:
    """The checkpoint to resume from, read with ``load`` (None for a new run); see :func:`check_run_dir`.

    Raises:
        RunDirError: ``run_dir`` holds a checkpoint, or anything else, and ``resume`` is False; ``resume``
            is True and it holds no checkpoint; the checkpoint is a symbolic link.
    """
    check_run_dir(run_dir, resume)
    return load(own_file(run_dir, CHECKPOINT)) if resume else None


# --- the lock of a run folder -----------------------------------------------------------------------------

#: The run folders this process holds the lock of (their real paths), with how many times it took each.
_HELD: dict[str, int] = {}


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), None where that cannot be read:
    it tells a live owner from another process that was given its id later."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool | None:
    """Whether the lock's owner still runs: None when it cannot be told (another host)."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False  # this process does not hold it (see _HELD), so it was left by an earlier one
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return None
    started = owner.get("started")
    return started is None or _process_start(pid) in (None, started)


def _read_lock(path: Path) -> tuple[str | None, dict | None]:
    """The lock file's text and the owner it names (None for a file being written or garbled)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        if os.path.isdir(path):
            os.close(fd)
            raise IsADirectoryError(21, "is a folder", str(path))
    except FileNotFoundError:
        return None, None
    except OSError as e:
        raise RunDirError(f"{path} cannot be read as pyrovae's lock ({e}); remove it if no pyrovae command runs on "
                          f"{path.parent}") from e
    with os.fdopen(fd, "rb") as f:
        text = f.read(4096).decode(errors="replace")
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        return text, None
    return text, owner if isinstance(owner, dict) else None


def _take_over(path: Path, seen: str) -> None:
    """Remove the stale lock whose text is ``seen``; a lock another process has taken meanwhile (other text)
    is put back."""
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        if aside.read_text(errors="replace") != seen:
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
    finally:
        aside.unlink()


def _acquire(run_dir: Path, command: str) -> str:
    """Create ``run_dir/.pyrovae.lock`` (O_CREAT | O_EXCL: exactly one process succeeds), taking over a
    stale one; returns the lock's token."""
    path = run_dir / LOCK
    token = uuid.uuid4().hex
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid()),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command, "token": token})
    for _ in range(100):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileExistsError:
            pass
        except OSError as e:  # a read-only or foreign folder: the lock cannot be taken
            raise RunDirError(f"cannot take the lock of {run_dir} ({e.strerror or e}): the folder cannot be written; "
                              "write elsewhere (sample and diagnose take --out)") from None
        else:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            return token
        seen, owner = _read_lock(path)
        if seen is None:
            continue  # released meanwhile
        if owner is None:  # being written by its owner, or left garbled by a process killed while writing it
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < 5:
                time.sleep(0.05)
                continue
            log.warning("taking over the unreadable lock %s (%.0f s old)", path, age)
            _take_over(path, seen)
            continue
        alive = _alive(owner)
        if alive is False:
            log.warning("taking over the stale lock of %s: process %s on %s (%s, since %s) no longer runs",
                        run_dir, owner.get("pid"), owner.get("host"), owner.get("command"), owner.get("since"))
            _take_over(path, seen)
            continue
        where = "" if alive else " (another machine: pyrovae cannot tell whether it still runs)"
        raise RunDirError(f"{run_dir} is in use by process {owner.get('pid')} on {owner.get('host')}{where}: "
                          f"pyrovae {owner.get('command')}, since {owner.get('since')}. Wait for it to end; if no "
                          f"such process runs, delete {path}")
    raise RunDirError(f"cannot take the lock {path}: other processes keep taking it; try again")


def _release(run_dir: Path, token: str) -> None:
    path = run_dir / LOCK
    seen, owner = _read_lock(path)
    if owner is not None and owner.get("token") == token:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    elif seen is not None:
        log.warning("%s no longer holds this process's lock (taken over by process %s); left as it is", path,
                    None if owner is None else owner.get("pid"))


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike, command: str = "", create: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of a run folder inside the block: every pyrovae command that writes to a run
    folder does, so that two of them never write the same folder at once.

    The lock is the file ``.pyrovae.lock`` in the folder, created atomically (``O_CREAT | O_EXCL``) with the
    owner's process id, host, start time and ``command``, and removed when the block ends (also on an
    exception). A lock whose process no longer runs on this host (killed, or its id given to another
    process since) is stale: it is taken over, with a warning. Once taken, the folder's own files are
    checked not to be symbolic links (:func:`own_file`) and the temporary files that interrupted atomic
    writes left in the folder are removed. The lock is reentrant within a process
    (``train_run`` holds it around ``fit``, which takes it too). Under torchrun, rank 0 alone takes it (it
    alone writes). With ``create``, a missing folder is created (and removed again when the block ends
    and it is still empty); without, a missing folder is not locked.

    Raises:
        RunDirError: another live process holds the lock (the message names its id and host), ``run_dir``
            is a file, or one of its own files is a symbolic link.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a folder; choose a folder for the run")
    created = []
    if create:
        for folder in (run_dir, *run_dir.parents):
            if folder.exists():
                break
            created.append(folder)
        run_dir.mkdir(parents=True, exist_ok=True)
    if not run_dir.is_dir():
        yield run_dir
        return
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield run_dir
        finally:
            _HELD[key] -= 1
        return
    try:
        token = _acquire(run_dir, command or " ".join(sys.argv[:2]))
    except BaseException:
        _remove_empty(created)
        raise
    _HELD[key] = 1
    try:
        for name in OWN_FILES:  # a link among them is refused before anything is computed or written
            if name != LOCK:
                own_file(run_dir, name)
        removed = remove_stale_temporaries(run_dir)
        if removed:
            log.info("removed %d temporary file(s) left by interrupted writes in %s: %s", len(removed), run_dir,
                     ", ".join(removed))
        yield run_dir
    finally:
        del _HELD[key]
        _release(run_dir, token)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a lock created (deepest first) where they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def read_metrics(run_dir: str | os.PathLike) -> dict:
    """``run_dir/metrics.json`` ({} when absent).

    Raises:
        RunDirError: the file exists but is not a JSON object (truncated, not UTF-8, another JSON value), or is
            a symbolic link (see :func:`own_file`); the message names the file.
    """
    path = own_file(run_dir, METRICS)
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
        RunDirError: the file exists but cannot be read, or is a symbolic link (see :func:`own_file`).
    """
    path = own_file(run_dir, DATA)
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
        return RunConfig.load(own_file(run_dir, CONFIG))
    except ConfigError:
        if not (run_dir / CHECKPOINT).exists():
            raise
    return run_config(load_checkpoint(own_file(run_dir, CHECKPOINT)))


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
        RunDirError: the checkpoint is a symbolic link (see :func:`own_file`).
    """
    if which not in ("last", "best"):
        raise ConfigError(f"which={which!r} is unknown; choose last or best")
    path = own_file(run_dir, CHECKPOINT if which == "last" else BEST)
    state = load_checkpoint(path, map_location=device)
    config = run_config(state)
    model = family_for(config.kind).from_config(config.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not match the model its config describes ({e})") from e
    return model.to(device).eval(), config, state
