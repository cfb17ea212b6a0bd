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
from ..data.config import load_data
from ..data.mnist import ImageDataset
from ..evaluation.metrics import evaluate
from ..training.checkpoint import CONFIG, load_run, write_metrics
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


def _data_config(config: RunConfig, data_dir: str | None, **changes):
    data_dir = data_dir if data_dir is not None else (os.environ.get("PYROVAE_DATA") or config.data.data_dir)
    return config.data.replace(data_dir=data_dir, **changes)


def train_run(config: RunConfig, run_dir: str | os.PathLike, resume: bool = False,
              progress: bool | None = None) -> dict:
    """``pyrovae train`` (any family): fit, then evaluate on the test split with
    ``config.evaluation.num_samples`` importance samples (seeded with the run's seed), draw the figures,
    and return ``metrics.json``'s content. Under torchrun (data-parallel training, see
    :mod:`pyrovae.training.distributed`) only rank 0 does all after ``fit``; the others return ``{}``."""
    data = load_data(config.data, config.trainer.seed)
    model, history = fit(config, run_dir, resume=resume, data=data, progress=progress)
    if not is_main_process():
        return {}
    config = RunConfig.load(Path(run_dir) / CONFIG)  # on resume, the run's own settings
    test = data[2]
    pyro.set_rng_seed(config.trainer.seed)
    metrics = evaluate(model, test, config.evaluation.num_samples, progress=progress)
    if "log_likelihood_nats" in metrics:
        log.info("test %s %.2f +- %.2f nats (K=%d), ELBO %.2f", model.log_likelihood_of, metrics["log_likelihood_nats"],
                 metrics["log_likelihood_stderr"], config.evaluation.num_samples, metrics["elbo_nats"])
    draw_figures(model, test, history, run_dir, seed=config.trainer.seed)
    return write_metrics(run_dir, {"test": {**metrics, "binarization": test_binarization(config.data.binarization)}})


def evaluate_run(run_dir: str | os.PathLike, num_samples: int = 5000, data_dir: str | None = None,
                 device: str = "cpu", max_chunk: int | None = None, progress: bool | None = None, *,
                 max_memory_gb: float = 4.0, probe: bool = True, probe_train_size: int = 10_000,
                 latent_statistics: bool = True, test_size: int | None = None, which: str = "last") -> dict:
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
    train, _, test = load_data(_data_config(config, data_dir, validation_size=0, train_size=probe_train_size,
                                            test_size=test_size), seed)
    pyro.set_rng_seed(context.seed(seed))
    probe_train = None
    if probe and context.is_main:  # binarized once with the run's seed
        probe_train = ImageDataset(train.get(torch.arange(len(train)), torch.Generator().manual_seed(seed)),
                                   train.labels, "static" if train.binarization != "dequantize" else "none")
    metrics = evaluate(model, test, num_samples, max_chunk=max_chunk, progress=progress, max_memory_gb=max_memory_gb,
                       probe_train=probe_train, latent_statistics=latent_statistics, context=context)
    if not context.is_main:
        return {}
    metrics["binarization"] = test_binarization(config.data.binarization)
    key = f"test_K{num_samples}" + (f"_n{len(test)}" if test_size is not None else "") + \
        ("_best" if which == "best" else "")
    write_metrics(run_dir, {key: metrics})
    return metrics


def _test_set(config: RunConfig, data_dir: str | None) -> ImageDataset:
    return load_data(_data_config(config, data_dir, validation_size=0, train_size=None), config.trainer.seed)[2]


def diagnose_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, data_dir: str | None = None,
                 device: str = "cpu", which: str = "last", **options) -> dict:
    """``pyrovae diagnose`` (any family): posterior diagnostics of a run on its test split (PSIS k-hat, NUTS
    reference posteriors, amortization gap, KL per dimension, active units; see
    :func:`pyrovae.diagnostics.diagnose`, which takes ``options``; parts a family does not support are
    skipped with the reason), written to ``out`` (default: the run folder) as ``diagnostics.*`` files.
    Nothing else in the folder is changed."""
    from ..diagnostics import diagnose  # imports ArviZ, which only this command needs

    model, config, _ = load_run(run_dir, resolve_device(device), which)
    return diagnose(model, _test_set(config, data_dir), out if out is not None else run_dir, **options)


def sample_run(run_dir: str | os.PathLike, n: int = 64, seed: int = 0, out: str | None = None,
               device: str = "cpu", digit: int | None = None, manifold: bool = False,
               data_dir: str | None = None) -> Path:
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
    test = _test_set(config, data_dir) if model.kind in SAMPLERS_NEED_DATA else None
    sampler = SAMPLERS.get(model.kind, sample_generic)
    return sampler(model, Path(run_dir), n, seed, out, test, digit=digit, manifold=manifold)
