"""Run folders: train, evaluate, sample and draw, each from a run folder alone.

A run folder holds ``config.json``, ``checkpoint.pt`` (see :mod:`pyrovae.checkpoint`), ``metrics.json``
(the per-epoch history and test metrics) and PNG figures.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyro
import torch

from . import plots
from .checkpoint import CONFIG, load_run
from .conditional import CVAE, evaluate_given_labels
from .config import RunConfig
from .data import ImageDataset, load_mnist
from .distributed import init_distributed, is_main_process
from .evaluate import evaluate
from .models import VAE
from .train import fit, load_data, resolve_device, write_metrics
from .semisupervised import M2, M2Config, fit_m2, load_m2_data
from .structured import (FIGURE as COMPLETIONS_FIGURE, StructuredConfig, StructuredCVAE, evaluate_structured,
                         fit_structured, load_structured_data, split_quadrants)

log = logging.getLogger(__name__)


def _test_set(config: RunConfig, data_dir: str | None) -> ImageDataset:
    data_dir = data_dir if data_dir is not None else (os.environ.get("PYROVAE_DATA") or config.data_dir)
    return load_mnist(data_dir, config.binarization, 0, seed=config.seed)[2]


def draw_figures(vae: VAE, test: ImageDataset, history: list[dict], run_dir: str | os.PathLike,
                 seed: int = 0) -> list[Path]:
    """Write the run's figures: reconstructions, prior samples, ELBO curves and, for z_dim = 2, the
    latent scatter of the test set and the 30x30 decoded manifold over [-4, 4]^2."""
    run_dir = Path(run_dir)
    device = next(vae.parameters()).device
    pyro.set_rng_seed(seed)
    x = test.images[:64].to(device)
    written = [
        plots.plot_reconstructions(x, vae.reconstruct(x), run_dir / "reconstructions.png"),
        plots.plot_samples(vae.sample(64), run_dir / "samples.png"),
    ]
    if history:
        written.append(plots.plot_elbo_curves(history, run_dir / "elbo.png"))
    if vae.z_dim == 2:
        with torch.no_grad():
            means = torch.cat([vae.encode(test.images[i:i + 2000].to(device))["loc"]
                               for i in range(0, len(test), 2000)])
            decoded = vae.decode(plots.manifold_grid(30, 4.0).to(device)).mean
        written.append(plots.plot_latent_scatter(means, test.labels, run_dir / "latent_scatter.png"))
        written.append(plots.plot_latent_manifold(decoded, 30, 4.0, run_dir / "latent_manifold.png"))
    return written


def train_run(config: RunConfig, run_dir: str | os.PathLike, resume: bool = False,
              progress: bool | None = None) -> dict:
    """``pyrovae train``: fit, then evaluate on the test set with ``config.eval_num_samples`` importance
    samples, draw the figures, and return ``metrics.json``'s content (for a conditional run, log p(x | y)
    under ``*_given_label_*`` keys and the figures of :func:`draw_conditional_figures`). Under torchrun
    (data-parallel training, see :mod:`pyrovae.distributed`) only rank 0 does all after ``fit``; the others return
    ``{}``."""
    data = load_data(config)
    vae, history = fit(config, run_dir, resume=resume, data=data, progress=progress)
    if not is_main_process():
        return {}
    config = RunConfig.load(Path(run_dir) / "config.json")
    test = data[2]
    if isinstance(vae, CVAE):  # reports log p(x | y) given the true test labels
        return _finish_conditional_run(vae, config, test, history, run_dir, progress)
    metrics = evaluate(vae, test.images, config.eval_num_samples, progress=progress)
    log.info("test log-likelihood %.2f +- %.2f nats (K=%d), ELBO %.2f", metrics["log_likelihood_nats"],
             metrics["log_likelihood_stderr"], config.eval_num_samples, metrics["elbo_nats"])
    draw_figures(vae, test, history, run_dir, seed=config.seed)
    return write_metrics(run_dir, {"test": {**metrics, "binarization": _test_binarization(config)}})


def _test_binarization(config: RunConfig) -> str:
    return {"none": "none (grey values k/255)",
            "dequantize": "dequantized once, seed 0: (k + u) / 256"}.get(config.binarization,
                                                                    "static, seed 0 (test set binarized once)")


def evaluate_run(run_dir: str | os.PathLike, num_samples: int = 5000, data_dir: str | None = None,
                 device: str = "cpu", max_chunk: int | None = None, progress: bool | None = None, *,
                 max_memory_gb: float = 4.0, probe: bool = True, probe_train_size: int = 10_000,
                 latent_statistics: bool = True, test_size: int | None = None) -> dict:
    """``pyrovae evaluate``: the K-sample test log-likelihood, the ELBO with its reconstruction and KL
    terms, the per-dimension KL, the active units and a linear probe (see :func:`pyrovae.evaluate.evaluate`),
    written to ``metrics.json`` under ``test_K{num_samples}`` (``test_K{num_samples}_n{test_size}`` on
    the first ``test_size`` test images). The probe is trained on the first ``probe_train_size``
    training images (binarized once with the run's seed when the run binarizes dynamically). For a
    conditional run: log p(x | y) given the true test labels (keys ``*_given_label_*``, see
    :func:`pyrovae.conditional.evaluate_given_labels`).

    Under ``torchrun`` (``torchrun --nproc_per_node W -m pyrovae evaluate RUN_DIR``) the W processes
    share the test images of the log-likelihood, each with its own seed; rank 0 computes the rest,
    writes ``metrics.json`` and returns the metrics, the other ranks return ``{}``.

    Raises:
        ValueError: a non-positive ``test_size`` or ``probe_train_size``; see also
            :func:`pyrovae.evaluate.evaluate`.
    """
    for name, value in (("test_size", test_size), ("probe_train_size", probe_train_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} must be a positive integer")
    context = init_distributed(resolve_device(device))
    vae, config, _ = load_run(run_dir, context.device)
    data_dir = data_dir if data_dir is not None else (os.environ.get("PYROVAE_DATA") or config.data_dir)
    train, _, test = load_mnist(data_dir, config.binarization, 0, seed=config.seed, train_size=probe_train_size)
    x, y = test.images[:test_size], test.labels[:test_size]
    pyro.set_rng_seed(context.seed(config.seed))
    if isinstance(vae, CVAE):  # log p(x | y) given the true test labels; not shared out among processes
        metrics = context.on_main(lambda: evaluate_given_labels(vae, x, y, num_samples, max_chunk=max_chunk,
                                                                progress=progress, max_memory_gb=max_memory_gb))
    else:
        probe_train = None
        if probe and context.is_main:
            probe_train = (train.get(torch.arange(len(train)), torch.Generator().manual_seed(config.seed)),
                           train.labels)
        metrics = evaluate(vae, x, num_samples, max_chunk=max_chunk, progress=progress,
                           max_memory_gb=max_memory_gb, labels=y, probe_train=probe_train,
                           latent_statistics=latent_statistics, context=context)
    if not context.is_main:
        return {}
    metrics["binarization"] = _test_binarization(config)
    key = f"test_K{num_samples}" + (f"_n{len(x)}" if test_size is not None else "")
    write_metrics(run_dir, {key: metrics})
    return metrics


def diagnose_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, data_dir: str | None = None,
                 device: str = "cpu", **options) -> dict:
    """``pyrovae diagnose``: posterior diagnostics of a run on its test set (PSIS k-hat, NUTS reference
    posteriors, amortization gap, KL per dimension, active units; see :func:`pyrovae.diagnostics.diagnose`,
    which takes ``options``), written to ``out`` (default: the run folder) as ``diagnostics.*`` files.
    Nothing else in the folder is changed.

    Raises:
        ValueError: a conditional run; see also :func:`pyrovae.diagnostics.diagnose`.
    """
    from .diagnostics import diagnose  # imports ArviZ, which only this command needs

    vae, config, _ = load_run(run_dir, resolve_device(device))
    if isinstance(vae, CVAE):
        raise ValueError(f"{run_dir} is a conditional run; pyrovae diagnose works on unconditional VAE runs")
    test = _test_set(config, data_dir)
    return diagnose(vae, test.images, out if out is not None else run_dir, **options)


def sample_run(run_dir: str | os.PathLike, n: int = 64, seed: int = 0, out: str | None = None,
               device: str = "cpu", digit: int | None = None, manifold: bool = False) -> Path:
    """``pyrovae sample``: ``n`` images from the prior through the decoder, as a PNG grid.

    For a conditional run (``pyrovae train --conditional``): with ``digit``, ``n`` draws of that digit;
    with ``digit`` and ``manifold`` (z_dim = 2), the decoded latent manifold of p(x | z, y = digit);
    with neither, one row per digit of ceil(n / num_classes) draws (one z per column).

    Raises:
        ValueError: ``n < 1``; ``digit`` or ``manifold`` for an unconditional run; ``digit`` outside the
            run's labels; ``manifold`` without ``digit`` or with z_dim != 2.
    """
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    vae, _, _ = load_run(run_dir, resolve_device(device))
    if isinstance(vae, CVAE) or digit is not None or manifold:
        return _sample_conditional(vae, run_dir, n, seed, out, digit, manifold)
    pyro.set_rng_seed(seed)
    path = Path(out) if out else Path(run_dir) / f"samples_n{n}_seed{seed}.png"
    return plots.plot_samples(vae.sample(n).cpu(), path)


# --- label-conditional runs (pyrovae train --conditional) ---------------------------------------------


def draw_conditional_figures(cvae: CVAE, test: ImageDataset, history: list[dict], run_dir: str | os.PathLike,
                             seed: int = 0, manifold_digit: int = 0) -> list[Path]:
    """Write a conditional run's figures: reconstructions given the true labels, ``samples_by_digit.png``
    (one row of 10 prior draws per label, the same 10 z in every row), ELBO curves and, for z_dim = 2,
    the scatter of the means of q(z | x, y) and the decoded manifold of p(x | z, y = ``manifold_digit``)
    over [-4, 4]^2 (``latent_manifold_digit{D}.png``)."""
    run_dir = Path(run_dir)
    device = next(cvae.parameters()).device
    pyro.set_rng_seed(seed)
    x, y = test.images[:64].to(device), test.labels[:64].to(device)
    written = [
        plots.plot_reconstructions(x, cvae.reconstruct(x, y), run_dir / "reconstructions.png"),
        plots.plot_samples_by_label(_samples_by_digit(cvae, 10), 10, run_dir / "samples_by_digit.png",
                                    title=_BY_DIGIT_TITLE),
    ]
    if history:
        written.append(plots.plot_elbo_curves(history, run_dir / "elbo.png"))
    if cvae.z_dim == 2:
        with torch.no_grad():
            means = torch.cat([cvae.encode(test.images[i:i + 2000].to(device),
                                           test.labels[i:i + 2000].to(device))["loc"]
                               for i in range(0, len(test), 2000)])
        written.append(plots.plot_latent_scatter(means, test.labels, run_dir / "latent_scatter.png"))
        written.append(_conditional_manifold(cvae, manifold_digit,
                                             run_dir / f"latent_manifold_digit{manifold_digit}.png"))
    return written


_BY_DIGIT_TITLE = "mean of p(x | z, y): one row per digit y, one z ~ p(z) per column"


@torch.no_grad()
def _samples_by_digit(cvae: CVAE, per_digit: int) -> torch.Tensor:
    """``per_digit`` draws z ~ p(z), each decoded with every label: ``(num_classes * per_digit, *x_shape)``,
    label-major, so that a column of the grid shares its z (its "style")."""
    device = next(cvae.parameters()).device
    z = cvae.prior().sample((per_digit,)).repeat(cvae.num_classes, 1)
    labels = torch.arange(cvae.num_classes, device=device).repeat_interleave(per_digit)
    return cvae.decode(z, labels).mean.cpu()


def _conditional_manifold(cvae: CVAE, digit: int, path: Path) -> Path:
    device = next(cvae.parameters()).device
    decoded = cvae.decode(plots.manifold_grid(30, 4.0).to(device), digit).mean
    return plots.plot_latent_manifold(decoded.cpu(), 30, 4.0, path)


def _finish_conditional_run(cvae: CVAE, config: RunConfig, test: ImageDataset, history: list[dict],
                            run_dir: str | os.PathLike, progress: bool | None) -> dict:
    """The end of :func:`train_run` for a CVAE: test log p(x | y) given the true labels, and figures."""
    metrics = evaluate_given_labels(cvae, test.images, test.labels, config.eval_num_samples, progress=progress)
    log.info("test log p(x|y) %.2f +- %.2f nats (K=%d), ELBO %.2f", metrics["log_likelihood_given_label_nats"],
             metrics["log_likelihood_given_label_stderr"], config.eval_num_samples,
             metrics["elbo_given_label_nats"])
    draw_conditional_figures(cvae, test, history, run_dir, seed=config.seed)
    return write_metrics(run_dir, {"test": {**metrics, "binarization": _test_binarization(config)}})


def _sample_conditional(vae, run_dir: str | os.PathLike, n: int, seed: int, out: str | None,
                        digit: int | None, manifold: bool) -> Path:
    """:func:`sample_run` for ``--digit``/``--manifold`` or a conditional run (see there)."""
    if not isinstance(vae, CVAE):
        raise ValueError(f"{run_dir} holds an unconditional VAE; --digit and --manifold need a run trained "
                         "with --conditional")
    last = vae.num_classes - 1
    if digit is not None and not 0 <= digit <= last:
        raise ValueError(f"--digit {digit} is outside 0..{last}, the labels this run was trained on")
    pyro.set_rng_seed(seed)
    if manifold:
        if digit is None:
            raise ValueError("--manifold needs --digit D: it draws the latent manifold of p(x | z, y = D)")
        if vae.z_dim != 2:
            raise ValueError(f"--manifold needs a run with z_dim = 2, this one has z_dim = {vae.z_dim}")
        return _conditional_manifold(vae, digit, Path(out) if out else
                                     Path(run_dir) / f"latent_manifold_digit{digit}.png")
    if digit is not None:
        path = Path(out) if out else Path(run_dir) / f"samples_digit{digit}_n{n}_seed{seed}.png"
        return plots.plot_samples(vae.sample(digit, n).cpu(), path,
                                  title=f"samples of digit {digit} (mean of p(x | z, y))")
    per = -(-n // vae.num_classes)
    path = Path(out) if out else Path(run_dir) / f"samples_by_digit_n{per}_seed{seed}.png"
    return plots.plot_samples_by_label(_samples_by_digit(vae, per), per, path, title=_BY_DIGIT_TITLE)


# --- semi-supervised M2 runs (pyrovae semisupervised) ----------------------------------------------------


def draw_m2_figures(m2: M2, test: ImageDataset, history: list[dict], run_dir: str | os.PathLike,
                    seed: int = 0) -> list[Path]:
    """Write an M2 run's figures: ``samples_by_digit.png`` (one row per digit, one z ~ p(z) per column,
    so a column is one "style"), ``analogies.png`` (ten test images, each one's style with every label)
    and ``accuracy.png`` (test and validation accuracy per epoch)."""
    run_dir = Path(run_dir)
    device = next(m2.parameters()).device
    pyro.set_rng_seed(seed)
    per = 10
    with torch.no_grad():
        z = m2.prior().sample((per,)).to(device).repeat(m2.num_classes, 1)
        labels = torch.arange(m2.num_classes, device=device).repeat_interleave(per)
        samples = m2.generate(labels, z).cpu()
    x = test.images[:10].to(device)
    written = [
        plots.plot_samples_by_label(samples, per, run_dir / "samples_by_digit.png",
                                    title="M2: mean of p(x | y, z), one row per digit y, one z ~ p(z) per column"),
        plots.plot_analogies(x.cpu(), m2.analogies(x).cpu(), run_dir / "analogies.png"),
    ]
    if history:
        written.append(plots.plot_accuracy_curves(history, run_dir / "accuracy.png"))
    return written


def semisupervised_run(config: M2Config, run_dir: str | os.PathLike, resume: bool = False,
                       progress: bool | None = None) -> dict:
    """``pyrovae semisupervised``: train M2 on ``config.num_labels`` labelled images and the rest of the
    training set unlabelled (:func:`pyrovae.semisupervised.fit_m2`), draw the figures and return
    ``metrics.json``'s content (per-epoch history, ``final_test_accuracy``, ...)."""
    data = load_m2_data(config)
    m2, history = fit_m2(config, run_dir, resume=resume, data=data, progress=progress)
    draw_m2_figures(m2, data[2], history, run_dir, seed=config.seed)
    return write_metrics(run_dir, {"test_binarization": "none (grey values)" if config.binarization == "none"
                                   else "static, seed 0 (test set binarized once)"})


# --- structured-output CVAE runs (pyrovae structured) ---------------------------------------------------


def draw_completions(cvae: StructuredCVAE, images: torch.Tensor, visible: int, path: str | os.PathLike,
                     num_samples: int = 5, seed: int = 0) -> Path:
    """The completion figure: for each of ``images (n, 1, 28, 28)`` (binarized), its input, the truth,
    the baseline's prediction and ``num_samples`` CVAE completions (z ~ p(z | x)); see
    :func:`pyrovae.plots.plot_completions`."""
    device = next(cvae.parameters()).device
    x, _ = split_quadrants(images, visible)
    x = x.to(device)
    pyro.set_rng_seed(seed)
    samples = cvae.sample_completions(x, num_samples)
    return plots.plot_completions(x.cpu(), images.cpu(), cvae.baseline.predict(x).cpu(), samples.cpu(), path,
                                  title=f"quadrant completion, {visible} visible quadrant{'s' * (visible > 1)}")


def structured_run(config: StructuredConfig, run_dir: str | os.PathLike, resume: bool = False,
                   progress: bool | None = None, num_figure_images: int = 10) -> dict:
    """``pyrovae structured``: train the baseline and the CVAE, evaluate both on the test set (K =
    ``config.eval_num_samples``), draw ``completions.png``, and return ``metrics.json``'s content
    (``history`` and ``test``, see :func:`evaluate_structured`)."""
    data = load_structured_data(config)
    cvae, _ = fit_structured(config, run_dir, resume=resume, data=data, progress=progress)
    config = StructuredConfig.load(Path(run_dir) / CONFIG)  # on resume, the run's own settings
    test = data[2]
    pyro.set_rng_seed(config.seed)
    metrics = evaluate_structured(cvae.baseline, cvae, test.images, config.visible, config.eval_num_samples,
                                  progress=progress)
    metrics["binarization"] = (f"train {config.binarization}; test binarized once (seed 0), "
                               f"{metrics['num_images']} images")
    log.info("test -log p(y|x): baseline %.2f, CVAE %.2f +- %.2f nats (K=%d)", metrics["baseline_neg_cll_nats"],
             metrics["cvae_neg_cll_nats"], metrics["cvae_neg_cll_stderr"], config.eval_num_samples)
    draw_completions(cvae, test.images[:num_figure_images], config.visible, Path(run_dir) / COMPLETIONS_FIGURE,
                     seed=config.seed)
    return write_metrics(run_dir, {"test": metrics})
