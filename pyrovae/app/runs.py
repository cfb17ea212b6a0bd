"""Run folders: train, evaluate, sample and diagnose, each from a run folder alone, for any model family.

A run folder holds ``config.json``, ``checkpoint.pt`` (and ``best.pt`` with a validation split; see
:mod:`pyrovae.training.checkpoint`), ``metrics.json`` (the history, training facts and test metrics)
and figures. Every command reads the family from the checkpoint's ``kind``, so none of them branches on
it beyond the pictures (:mod:`pyrovae.app.figures`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyro
import torch

from .. import checks
from ..data.config import DataInfo, prepare_data
from ..data.dataset import ArrayDataset, ImageDataset
from ..errors import ConfigError, DataError
from ..evaluation.metrics import evaluate
from ..training.checkpoint import (CONFIG, check_same_data, load_run, read_data_info, read_run_config,
                                  write_metrics)
from ..training.config import RunConfig
from ..training.distributed import init_distributed, is_main_process
from ..training.optim import resolve_device
from ..training.trainer import fit
from .figures import SAMPLERS, SAMPLERS_NEED_DATA, draw_figures, sample_generic

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
    only rank 0 does all after ``fit``; the others return ``{}``."""
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
    config = RunConfig.load(Path(run_dir) / CONFIG)  # on resume, the run's own settings
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
    model, config, _ = load_run(run_dir, context.device, which)
    seed = config.trainer.seed
    train, _, test, info = run_data(run_dir, config, data, data_dir, validation_size=0, train_size=probe_train_size,
                                    test_size=test_size)
    pyro.set_rng_seed(context.seed(seed))
    probe_train = None
    if probe and context.is_main and train.labels is not None:  # binarized once with the run's seed
        probe_train = ImageDataset(train.get(torch.arange(len(train)), torch.Generator().manual_seed(seed)),
                                   train.labels, "static" if train.binarization != "dequantize" else "none")
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
                        label_names=info.label_names, fitted=info.fitted)


def _test_set(run_dir, config: RunConfig, data_dir: str | None, data=None) -> ImageDataset:
    return run_data(run_dir, config, data, data_dir, validation_size=0, train_size=None)[2]


def diagnose_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, data_dir: str | None = None,
                 device: str = "cpu", which: str = "last", data=None, **options) -> dict:
    """``pyrovae diagnose`` (any family): posterior diagnostics of a run on its test split (PSIS k-hat, NUTS
    reference posteriors, amortization gap, KL per dimension, active units; see
    :func:`pyrovae.diagnostics.diagnose`, which takes ``options``; parts a family does not support are
    skipped with the reason), written to ``out`` (default: the run folder) as ``diagnostics.*`` files.
    Nothing else in the folder is changed."""
    from ..diagnostics import diagnose  # imports ArviZ, which only this command needs

    model, config, _ = load_run(run_dir, resolve_device(device), which)
    return diagnose(model, _test_set(run_dir, config, data_dir, data), out if out is not None else run_dir, **options)


def sample_run(run_dir: str | os.PathLike, n: int = 64, seed: int = 0, out: str | None = None,
               device: str = "cpu", digit: int | None = None, manifold: bool = False,
               data_dir: str | None = None, data=None) -> Path:
    """``pyrovae sample`` (any family): draws from a run folder as a PNG grid: prior samples of a VAE; for a
    CVAE or M2, ``n`` draws of ``digit`` or one row per digit (with ``manifold`` and z_dim = 2, a CVAE's
    decoded latent manifold of that digit); for a structured-output CVAE, completions of the first ``n``
    test images.

    Raises:
        ConfigError: ``n < 1``; ``digit`` or ``manifold`` for a family without labels; ``digit`` outside the
            run's labels; ``manifold`` without ``digit`` or with z_dim != 2.
    """
    checks.positive_int(n, "n")
    model, config, _ = load_run(run_dir, resolve_device(device))
    test = None
    if model.kind in SAMPLERS_NEED_DATA:
        test = _test_set(run_dir, config, data_dir, data)
    elif (info := read_data_info(run_dir)) is not None and info.source != "mnist":
        test = units_of(info)  # the data's units and names come from data.json alone
    sampler = SAMPLERS.get(model.kind, sample_generic)
    return sampler(model, Path(run_dir), n, seed, out, test, digit=digit, manifold=manifold)
