"""Run folders: train, evaluate, sample and diagnose, each from a run folder alone, for any model family.

A run folder holds ``config.json``, ``checkpoint.pt`` (and ``best.pt`` with a validation split; see
:mod:`pyrovae.training.checkpoint`), ``metrics.json`` (the history, training facts and test metrics)
and figures. Every command reads the family from the checkpoint's ``kind``, so none of them branches on
it beyond the pictures (:mod:`pyrovae.app.figures`). Every command that writes to a run folder holds its
lock while it runs (:func:`~pyrovae.training.checkpoint.run_dir_lock`); an output path never names one of
a run folder's own files (:func:`check_sample_path`, :func:`check_output_folder`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import pyro
import torch

from .. import checks, plots
from ..data.config import DataInfo, prepare_data
from ..data.dataset import ArrayDataset, ImageDataset
from ..errors import ConfigError, DataError, RunDirError, UnsupportedError
from ..evaluation.metrics import evaluate
from ..evaluation.samplers import fit_latent_gmm, sample_gmm
from ..files import ensure_writable_dir
from ..training.checkpoint import (CHECKPOINT, CONFIG, OWN_FILES, check_run_dir, check_same_data, load_run,
                                  own_file, read_data_info, read_run_config, run_dir_lock, write_metrics)
from ..training.config import RunConfig
from ..training.distributed import init_distributed, is_main_process
from ..training.optim import resolve_device
from ..training.trainer import fit
from .figures import (SAMPLERS, SAMPLERS_NEED_DATA, display_scale, draw_figures, sample_generic, sample_suffix,
                      write_csv)

log = logging.getLogger(__name__)


def test_binarization(binarization: str) -> str:
    """How the test split of a run with this training ``binarization`` is stored, for metrics.json."""
    return {"none": "none (grey values k/255)",
            "dequantize": "dequantized once, seed 0: (k + u) / 256"}.get(binarization,
                                                                    "static, seed 0 (test set binarized once)")


def _test_description(info: DataInfo) -> dict:
    """How the test split was made, for metrics.json: its binarization (images) or transform (other data)."""
    if info.binarization is not None:
        return {"binarization": test_binarization(info.binarization)}
    return {"data": info.source, "transform": (info.transform or {}).get("kind", "none"),
            "test_size": info.sizes["test"]}


def _data_config(config: RunConfig, data_dir: str | None, **changes):
    data_dir = data_dir if data_dir is not None else (os.environ.get("PYROVAE_DATA") or config.data.data_dir)
    return config.data.replace(data_dir=data_dir, **changes)


def run_data(run_dir: str | os.PathLike, config: RunConfig | None = None, data=None, data_dir: str | None = None,
             **changes) -> tuple[ArrayDataset, ArrayDataset | None, ArrayDataset, DataInfo]:
    """The data of a run folder: its config's data settings (with ``changes``), split as recorded and
    transformed with the transform fitted at training time (``data.json``).

    Args:
        run_dir: the run folder. config: its config (read from it when None).
        data: the data passed in Python for a run trained on data passed in Python; or a path: where the run's
            data file or folder is now (it must be the same data: its sha256 is checked). By default the
            config's source, else the path recorded in ``data.json`` when the source has moved.
        data_dir: another MNIST root.

    Raises:
        DataError: the run was trained on data passed in Python and ``data`` is None; the data file has changed
            since training; the test split drawn now is not the recorded one.
    """
    config = config if config is not None else read_run_config(run_dir)
    recorded = read_data_info(run_dir)
    if isinstance(data, (str, os.PathLike)):
        changes["source"], data = str(data), None
    elif data is None and recorded is not None:
        if recorded.source.startswith("python:"):
            raise DataError(f"{run_dir} was trained on data passed in Python ({recorded.source[7:]}), which the run "
                            "folder does not hold: pass the same data (evaluate_run(run_dir, data=...)) or train on a "
                            "file")
        recorded_path = recorded.provenance.get("path")
        if recorded_path and not Path(config.data.source).exists() and Path(recorded_path).exists():
            changes["source"] = recorded_path
    train, validation, test, info = prepare_data(_data_config(config, data_dir, **changes), config.trainer.seed,
                                                 data=data, fitted=None if recorded is None else recorded.fitted)
    check_same_data(recorded, info)
    return train, validation, test, info


def train_run(config: RunConfig, run_dir: str | os.PathLike, resume: bool = False,
              progress: bool | None = None, data=None) -> dict:
    """``pyrovae train`` (any family): fit, then evaluate on the test split with
    ``config.evaluation.num_samples`` importance samples (seeded with the run's seed), draw the figures,
    and return ``metrics.json``'s content. ``data``: data passed in Python (see :func:`pyrovae.fit`) instead of
    ``config.data.source``. Under torchrun (data-parallel training, see :mod:`pyrovae.training.distributed`)
    only rank 0 does all after ``fit``; the others return ``{}``.

    Raises:
        RunDirError: see :func:`pyrovae.fit`; the lock (rank 0's) is held from the start to the last file."""
    context = init_distributed(resolve_device(config.trainer.device))
    context.on_main(lambda: ensure_writable_dir(run_dir, create=False))  # an unwritable path: one RunDirError
    context.on_main(lambda: check_run_dir(run_dir, resume))  # a refused folder is not even locked
    with contextlib.ExitStack() as lock:
        context.on_main(lambda: lock.enter_context(run_dir_lock(run_dir, "train", create=True)) and None)
        return _train_run(config, run_dir, resume, progress, data)


def _train_run(config: RunConfig, run_dir: str | os.PathLike, resume: bool, progress: bool | None, data) -> dict:
    if resume:  # the run's own data settings and transform
        own = read_run_config(run_dir).data
        if "source" in config.data.model_fields_set and config.data.source != own.source:
            raise ConfigError(f"--resume continues the run on its own data ({own.source}); --data "
                              f"{config.data.source} differs: leave --data out, or start a new run")
        train, validation, test, info = run_data(run_dir, data=data, data_dir=config.data.data_dir)
    else:
        train, validation, test, info = prepare_data(config.data, config.trainer.seed, data=data)
    model, history = fit(config, run_dir, resume=resume, data=(train, validation, test), progress=progress,
                         data_info=info)
    if not is_main_process():
        return {}
    config = RunConfig.load(own_file(run_dir, CONFIG))  # on resume, the run's own settings
    pyro.set_rng_seed(config.trainer.seed)
    metrics = evaluate(model, test, config.evaluation.num_samples, progress=progress)
    if "log_likelihood_nats" in metrics:
        log.info("test %s %.2f +- %.2f nats (K=%d), ELBO %.2f", model.log_likelihood_of, metrics["log_likelihood_nats"],
                 metrics["log_likelihood_stderr"], config.evaluation.num_samples, metrics["elbo_nats"])
    draw_figures(model, test, history, run_dir, seed=config.trainer.seed)
    return write_metrics(run_dir, {"test": {**metrics, **_test_description(info)}})


#: What each file of a run folder holds, for the list ``pyrovae train`` prints at the end.
RUN_FILES = {
    "checkpoint.pt": "the last epoch: model, optimizer, RNG states (evaluate, sample, diagnose, --resume)",
    "best.pt": "the epoch of the best validation metric (evaluate --which best)",
    "config.json": "the settings (pyrovae train --config FILE repeats or varies the run)",
    "data.json": "the data: source and checksum, split, fitted transform",
    "metrics.json": "the history per epoch, training facts and warnings, test metrics",
    "metrics.csv": "the history, one row per epoch (spreadsheets, pandas)",
    "tensorboard": "TensorBoard event files (tensorboard --logdir RUN_DIR)",
    "elbo.png": "the ELBO and the training objective per epoch, the KL warm-up shaded",
    "reconstructions.png": "test inputs above their reconstructions",
    "samples.png": "draws from the prior, decoded",
    "samples_by_digit.png": "one row per label, one z per column",
    "analogies.png": "test images, each one's style with every label",
    "accuracy.png": "test and validation accuracy per epoch",
    "completions.png": "inputs, truths, the baseline's prediction and CVAE completions",
    "latent_scatter.png": "the test set's posterior means, by label",
    "latent_manifold.png": "images decoded over a grid of the 2-d latent space",
    "features.png": "per-feature histograms of data, reconstructions and draws",
    "correlations.png": "correlation matrices of data and draws",
    "mean_variance.png": "mean against variance per feature, data and draws",
}


def run_files(run_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """``(name, what it holds)`` for each file and folder in ``run_dir`` (hidden ones left out), sorted."""
    entries = sorted(p for p in Path(run_dir).iterdir() if not p.name.startswith("."))
    return [(p.name + ("/" if p.is_dir() else ""), RUN_FILES.get(p.name, "")) for p in entries]


def evaluate_run(run_dir: str | os.PathLike, num_samples: int = 5000, data_dir: str | None = None,
                 device: str = "cpu", max_chunk: int | None = None, progress: bool | None = None, *,
                 max_memory_gb: float = 4.0, probe: bool = True, probe_train_size: int = 10_000,
                 latent_statistics: bool = True, test_size: int | None = None, which: str = "last", data=None) -> dict:
    """``pyrovae evaluate`` (any family): the K-sample test log-likelihood of the family's programs
    (log p(x), log p(x | y), log p(y | x)), the ELBO with its reconstruction and KL terms, the family's own
    test metrics, the per-dimension KL, the active units and a linear probe (see
    :func:`pyrovae.evaluation.evaluate`), written to ``metrics.json`` under ``test_K{num_samples}``
    (``..._n{test_size}`` on the first ``test_size`` test images; ``..._best`` for ``which="best"``). The
    probe is trained on the first ``probe_train_size`` training images (binarized once with the run's
    seed when the run binarizes dynamically).

    Under ``torchrun`` (``torchrun --nproc_per_node W -m pyrovae evaluate RUN_DIR``) the W processes share
    the test images of the log-likelihood, each with its own seed; rank 0 computes the rest, writes
    ``metrics.json`` and returns the metrics, the other ranks return ``{}``.

    Raises:
        ConfigError: a non-positive ``test_size`` or ``probe_train_size``; see also
            :func:`pyrovae.evaluation.evaluate`.
    """
    for name, value in (("test_size", test_size), ("probe_train_size", probe_train_size)):
        if value is not None:
            checks.positive_int(value, name)
    context = init_distributed(resolve_device(device))
    with contextlib.ExitStack() as lock:  # it writes metrics.json: rank 0 holds the run folder's lock
        context.on_main(lambda: lock.enter_context(run_dir_lock(run_dir, "evaluate")) and None)
        return _evaluate_run(run_dir, num_samples, data_dir, context, max_chunk, progress, max_memory_gb, probe,
                             probe_train_size, latent_statistics, test_size, which, data)


def _evaluate_run(run_dir, num_samples, data_dir, context, max_chunk, progress, max_memory_gb, probe,
                  probe_train_size, latent_statistics, test_size, which, data) -> dict:
    model, config, _ = load_run(run_dir, context.device, which)
    seed = config.trainer.seed
    train, _, test, info = run_data(run_dir, config, data, data_dir, validation_size=0, train_size=None,
                                    test_size=test_size)
    train = train.subset(slice(0, probe_train_size))  # at most probe_train_size: fewer in a smaller data set
    pyro.set_rng_seed(context.seed(seed))
    probe_train = None
    if probe and context.is_main and train.labels is not None:  # binarized once with the run's seed
        probe_train = ImageDataset(train.get(torch.arange(len(train)), torch.Generator().manual_seed(seed)),
                                   train.labels, "static" if train.binarization != "dequantize" else "none",
                                   mask=train.mask)
    metrics = evaluate(model, test, num_samples, max_chunk=max_chunk, progress=progress, max_memory_gb=max_memory_gb,
                       probe_train=probe_train, latent_statistics=latent_statistics, context=context)
    if not context.is_main:
        return {}
    metrics.update(_test_description(info))
    key = f"test_K{num_samples}" + (f"_n{len(test)}" if test_size is not None else "") + \
        ("_best" if which == "best" else "")
    write_metrics(run_dir, {key: metrics})
    return metrics


def units_of(info: DataInfo) -> ArrayDataset:
    """A stand-in for a run's data that holds no data points, only what ``data.json`` says of their units: the
    fitted transform (to report samples in the data's units), feature and class names, and, as its one data
    point, the largest value of the training split (for the display scale of images)."""
    top = torch.full((1, *info.x_shape), float(info.max_value if info.max_value is not None else 1.0))
    return ArrayDataset(top, None, info.binarization or "none", feature_names=info.feature_names,
                        label_names=info.label_names, fitted=info.fitted, schema=info.schema)


def _test_set(run_dir, config: RunConfig, data_dir: str | None, data=None) -> ImageDataset:
    return run_data(run_dir, config, data, data_dir, validation_size=0, train_size=None)[2]


def diagnose_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, data_dir: str | None = None,
                 device: str = "cpu", which: str = "last", data=None, **options) -> dict:
    """``pyrovae diagnose`` (any family): posterior diagnostics of a run on its test split (PSIS k-hat, NUTS
    reference posteriors, amortization gap, KL per dimension, active units; see
    :func:`pyrovae.diagnostics.diagnose`, which takes ``options``; parts a family does not support are
    skipped with the reason), written to ``out`` (default: the run folder) as ``diagnostics.*`` files.
    Nothing else in the folder is changed. Writing into a run folder, it holds the folder's lock.

    Raises:
        ConfigError: ``out`` is a file, or one of a run folder's own files (see :func:`check_output_folder`).
        RunDirError: another process holds the lock of the run folder written to."""
    from ..diagnostics import diagnose  # imports ArviZ, which only this command needs

    out = check_output_folder(out, run_dir)
    with _lock_if_run_folder(out, run_dir, "diagnose"):
        model, config, _ = load_run(run_dir, resolve_device(device), which)
        return diagnose(model, _test_set(run_dir, config, data_dir, data), out, **options)


def sample_run(run_dir: str | os.PathLike, n: int = 64, seed: int = 0, out: str | None = None,
               device: str = "cpu", digit: int | None = None, manifold: bool = False,
               data_dir: str | None = None, data=None, sampler: str = "prior") -> Path:
    """``pyrovae sample`` (any family): draws from a run folder as a PNG grid: prior samples of a VAE (or of an
    autoencoder: its decoder fed z ~ N(0, I)); with ``sampler="gmm"``, a VAE's or an autoencoder's decoder fed
    draws of a 10-component Gaussian mixture fitted to the codes of (up to) 10,000 training data points
    (:func:`pyrovae.evaluation.samplers.fit_latent_gmm`, Ghosh et al. 2020); for a
    CVAE or M2, ``n`` draws of ``digit`` or one row per digit (with ``manifold`` and z_dim = 2, a CVAE's
    decoded latent manifold of that digit); for a structured-output CVAE, completions of the first ``n``
    test images.

    ``out`` (default: a new name in the run folder) must end in ``.png`` (``.csv`` for samples of data that is
    not images) and never be a run folder's own file (see :func:`check_sample_path`). Writing into a run
    folder, it holds the folder's lock.

    Raises:
        UnsupportedError: ``sampler="gmm"`` for a family that is not a VAE or an autoencoder.
        ConfigError: an unknown ``sampler``; ``n < 1``; a ``seed`` outside [0, 2**32 - 1]; ``digit`` or
            ``manifold`` for a family without labels; ``digit`` outside the run's labels; ``manifold`` without
            ``digit`` or with z_dim != 2; ``out`` of another kind.
        RunDirError: ``out`` would replace a run folder's own file or a file that is not an image; it cannot be
            written (a folder, under a file, a name too long, a read-only file system); another process holds
            the lock of the run folder written to.
    """
    checks.positive_int(n, "n")
    checks.seed(seed)
    if sampler not in ("prior", "gmm"):
        raise ConfigError(f"sampler={sampler!r} is unknown; choose prior or gmm")
    if out is not None:
        ensure_writable_dir(Path(out).parent, Path(out).name)
        if Path(out).is_dir():
            raise RunDirError(f"--out {out} is a folder; sample writes one file: give its path, e.g. "
                              f"{Path(out) / 'samples.png'}")
    model, config, _ = load_run(run_dir, resolve_device(device))
    if out is not None:
        out = str(check_sample_path(out, run_dir, sample_suffix(model)))
    with _lock_if_run_folder(Path(out).parent if out is not None else Path(run_dir), run_dir, "sample"):
        test = None
        if model.kind in SAMPLERS_NEED_DATA:
            test = _test_set(run_dir, config, data_dir, data)
        elif (info := read_data_info(run_dir)) is not None and info.source != "mnist":
            test = units_of(info)  # the data's units and names come from data.json alone
        if sampler == "gmm":
            return _sample_gmm(model, config, Path(run_dir), n, seed, out, test, data_dir, data, digit, manifold)
        draw = SAMPLERS.get(model.kind, sample_generic)
        return draw(model, Path(run_dir), n, seed, out, test, digit=digit, manifold=manifold)


def _sample_gmm(model, config: RunConfig, run_dir: Path, n: int, seed: int, out: str | None, test, data_dir, data,
                digit, manifold) -> Path:
    if model.kind not in ("vae", "autoencoder"):
        raise UnsupportedError(f"--sampler gmm takes a VAE or an autoencoder run; {run_dir} holds a {model.kind} run")
    if digit is not None or manifold:
        raise ConfigError("--digit and --manifold are for CVAE and M2 runs, not --sampler gmm")
    train = run_data(run_dir, config, data, data_dir, validation_size=0)[0]
    train = train.subset(slice(0, min(len(train), 10_000)))
    drawn = sample_gmm(model, fit_latent_gmm(model, train, 10, seed), n, seed).cpu()
    if len(model.x_shape) != 3:
        return write_csv(drawn, test, Path(out) if out else run_dir / f"samples_gmm_n{n}_seed{seed}.csv")
    path = Path(out) if out else run_dir / f"samples_gmm_n{n}_seed{seed}.png"
    scale = display_scale(test) if test is not None else 1.0
    return plots.plot_samples(drawn / scale, path, title="decoded draws of a Gaussian mixture fitted to the codes")


def _is_run_folder(folder: Path) -> bool:
    return (folder / CHECKPOINT).exists() or (folder / CONFIG).exists()


def _lock_if_run_folder(folder: Path, run_dir: str | os.PathLike, command: str):
    """The lock of ``folder`` when it is ``run_dir`` or another run folder (it holds a checkpoint or config);
    nothing for a folder of the user's own."""
    folder = Path(folder)
    if folder.exists() and (_is_run_folder(folder) or os.path.realpath(folder) == os.path.realpath(run_dir)):
        return run_dir_lock(folder, command)
    return contextlib.nullcontext()


def _own_file_of_a_run(path: Path) -> bool:
    return path.name in OWN_FILES and (path.parent.is_dir() and _is_run_folder(path.parent))


def check_sample_path(out: str | os.PathLike, run_dir: str | os.PathLike, suffix: str) -> Path:
    """``out`` as ``pyrovae sample --out`` may write it: a file name ending in ``suffix`` (``.png``; ``.csv`` for
    samples of data that is not images), not one of a run folder's own files (checkpoint, config, metrics, data),
    not a folder or a link, and, where it exists, a PNG image (``.png``) or not the run's own data file (``.csv``):
    a write goes only where an image (or a table of samples) was asked for.

    Raises:
        ConfigError: another suffix; a folder.
        RunDirError: a run folder's own file, a link, an existing file of another kind, or the run's data.
    """
    path = Path(out)
    if path.name in OWN_FILES:
        raise RunDirError(f"--out {out} is a run folder's own file ({path.name}); sample writes only pictures "
                          f"(or tables of samples): give a new file name ending in {suffix}")
    if path.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name ending in {suffix}")
    if path.suffix.lower() != suffix:
        raise ConfigError(f"--out {out}: this run's samples are written as {suffix[1:].upper()} "
                          f"({'a table' if suffix == '.csv' else 'an image'}); give a file name ending in {suffix}")
    if path.is_symlink():
        raise RunDirError(f"--out {out} is a symbolic link; give the path of a new or an image file")
    if path.exists():
        if suffix == ".png":
            with open(path, "rb") as f:
                if f.read(8) != b"\x89PNG\r\n\x1a\n":
                    raise RunDirError(f"--out {out} exists and is not a PNG image; sample replaces only an image: "
                                      "give a new file name")
        else:
            info = read_data_info(run_dir)
            source = None if info is None else info.provenance.get("path")
            if source and os.path.exists(source) and os.path.samefile(source, path):
                raise RunDirError(f"--out {out} is the data this run was trained on; give a new file name")
    return path


def check_output_folder(out: str | os.PathLike | None, run_dir: str | os.PathLike) -> Path:
    """The folder ``diagnose`` writes to (``run_dir`` when ``out`` is None): new or a folder, never a file or one
    of a run folder's own files' names.

    Raises:
        ConfigError: ``out`` is a file, or named like a run folder's own file inside a run folder.
    """
    if out is None:
        return Path(run_dir)
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} is a file; diagnose writes a folder of files (diagnostics.json, "
                          "diagnostics.md, figures): give a folder")
    if _own_file_of_a_run(path):
        raise ConfigError(f"--out {out} is named as a run folder's own file ({path.name}); give another folder")
    return path


#: Cell texts a table reader takes for a missing value (pandas' defaults, the ones tables commonly use).
_MISSING_TEXTS = ("", "NA", "N/A", "NaN", "nan", "-nan", "NULL", "null", "None", "n/a", "<NA>")


def impute_run(run_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, multiple: int = 0,
               num_samples: int = 1000, seed: int = 0, which: str = "last", device: str = "cpu") -> dict:
    """``pyrovae impute``: fill the missing cells of a table with a trained VAE (see
    :func:`pyrovae.evaluation.imputation.impute`), in the data's own units.

    The table (``.csv``, ``.tsv``) must hold the run's feature columns (``data.json``'s names; other columns, a
    label column say, are copied as they are). Its missing cells (empty, ``NA``, ``NaN``, ...) are replaced by
    the importance-weighted conditional mean, transformed back to the data's units with the transform fitted at
    training time; every other cell is written back with the text it had, byte for byte (a run on a mixed-type
    table, ``data.json``'s ``schema``, reads and writes category labels, the most probable class, and writes
    counts and binary cells as integers). With ``multiple`` = M,
    M more tables ``<out stem>.1<suffix>`` ... ``.M`` hold draws of the missing cells (sampling importance
    resampling), for multiple-imputation analyses.

    Returns:
        ``{"out": [paths], "rows", "filled": {column: number of cells filled}, "effective_sample_size": median}``.

    Raises:
        UnsupportedError: the run's model takes no mask, or it was not trained on a table (no feature names).
        DataError: the table cannot be read, lacks feature columns, or has non-numeric observed cells.
        ConfigError, RunDirError: ``out`` as for :func:`check_sample_path` (a new ``.csv`` or ``.tsv`` file, not a
            run folder's own file or the run's data).
    """
    import pandas as pd

    from ..evaluation.imputation import impute

    path = Path(data)
    suffix = Path(out).suffix.lower()
    ensure_writable_dir(Path(out).parent, Path(out).name, create=False)  # a path that cannot be written: now
    out = check_sample_path(out, run_dir, suffix if suffix in (".csv", ".tsv") else ".csv")
    model, config, _ = load_run(run_dir, resolve_device(device), which)
    info = read_data_info(run_dir)
    if info is None or not info.feature_names:
        raise UnsupportedError(f"{run_dir} was not trained on a table with named columns; impute fills tables "
                               "(use pyrovae.evaluation.imputation.impute on tensors)")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        text = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read it as a table ({str(e).strip()})") from e
    features = list(info.feature_names)
    absent = [c for c in features if c not in text.columns]
    if absent:
        raise DataError(f"{path}: no column(s) {', '.join(absent[:5])} of the {len(features)} this run was trained "
                        f"on; its columns are {', '.join(map(str, text.columns[:8]))}")
    cells = text[features]
    missing = cells.isin(_MISSING_TEXTS).to_numpy()
    if info.schema is not None:  # mixed types: category labels to codes, one DataError naming a bad column
        from ..data.schema import encode_frame
        values = encode_frame(cells.mask(missing), info.schema, str(path))[0]
    else:
        try:
            values = cells.mask(missing).astype(np.float32).to_numpy()
        except ValueError as e:
            raise DataError(f"{path}: a feature column holds text that is not a number ({e})") from None
    x = torch.from_numpy(values).reshape(len(values), *info.x_shape)
    mask = torch.from_numpy(~missing).reshape(x.shape).float()
    fitted = info.fitted
    seen = fitted(x) if fitted is not None else x
    result = impute(model, seen.masked_fill(mask == 0, 0.0), mask, num_samples=num_samples,
                    num_imputations=multiple, seed=seed)

    def write(filled: torch.Tensor, target: Path) -> None:
        units = (fitted.inverse(filled) if fitted is not None else filled).reshape(len(values), -1).numpy()
        table = text.copy()
        if info.schema is not None:  # category labels, whole counts
            from ..data.schema import cell_texts
            texts = cell_texts(units, info.schema)
        for j, column in enumerate(features):
            rows = missing[:, j]
            if rows.any():
                table.loc[rows, column] = ([texts[j][i] for i in np.flatnonzero(rows)] if info.schema is not None
                                           else [format(float(v), ".7g") for v in units[rows, j]])
        table.to_csv(target, sep="\t" if target.suffix.lower() == ".tsv" else ",", index=False)

    write(result["imputed"], out)
    paths = [str(out)]
    for m in range(multiple):
        target = out.with_name(f"{out.stem}.{m + 1}{out.suffix}")
        write(result["draws"][m], target)
        paths.append(str(target))
    return {"out": paths, "rows": len(values),
            "filled": {c: int(missing[:, j].sum()) for j, c in enumerate(features)},
            "effective_sample_size": float(result["ess"].median())}
