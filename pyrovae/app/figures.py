"""The pictures of a run folder, by model family: what ``pyrovae train`` draws at the end and what
``pyrovae sample`` draws from a run folder alone.

:data:`FIGURES` and :data:`SAMPLERS` map a family's ``kind`` to its drawing functions; a family of one's
own registers its own with :func:`register_figures` (without one, a run draws its training curves, and
``sample`` draws from a model's ``sample(n)`` when it has one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pyro
import torch

from .. import plots
from ..data.mnist import ImageDataset
from ..errors import ConfigError, UnsupportedError
from ..evaluation.samplers import encode_all
from ..models import CVAE, M2, VAE, Family, StructuredCVAE
from ..models.structured import split_quadrants
from ..torchtools import device_of

COMPLETIONS = "completions.png"
BY_DIGIT_TITLE = "mean of p(x | z, y): one row per digit y, one z ~ p(z) per column"


def draw_curves(history: list[dict], run_dir: Path) -> list[Path]:
    """``elbo.png`` (the last stage's curves for a family trained in stages), where the history has them."""
    if not history or not any(k in history[-1] for k in ("train_elbo", "train_objective")):
        return []
    return [plots.plot_elbo_curves(history, run_dir / "elbo.png", stage=history[-1].get("stage"))]


def display_scale(test: ImageDataset) -> float:
    """What divides image values for display in [0, 1] (1 for binary and grey values, 16 for digits' levels)."""
    top = float(test.images[:1000].max()) if len(test) else 1.0
    return top if top > 1 else 1.0


@torch.no_grad()
def _latent_means(model, test: ImageDataset) -> torch.Tensor:
    return encode_all(model, test)


@torch.no_grad()
def draw_table_figures(vae: VAE, test: ImageDataset, run_dir: Path) -> list[Path]:
    """Data that is not images: per-feature histograms of the test data, its reconstructions (the mean of p(x|z)
    at the mean of q(z|x)) and draws x ~ p(x|z), z ~ p(z), and their correlation matrices, all in the data's
    own units; for count data (integer values, no transform) also the mean-variance plot of data and draws. With
    missing entries the encoder reads the observed ones, and the data's histograms and correlations count only
    those (missing entries are NaN there)."""
    device = device_of(vae)
    x = test.images[:2000].to(device)
    n = len(x)
    mask = None if getattr(test, "mask", None) is None else test.mask[:n].to(device)
    data = test.in_data_units(x).flatten(1).cpu().numpy()
    code = (vae.encode(x) if mask is None else vae.encode(x, mask))["loc"]
    recon = test.in_data_units(vae.decode(code).mean).flatten(1).cpu().numpy()
    if mask is not None:
        data[mask.flatten(1).cpu().numpy() == 0] = float("nan")
    draws = vae.decode(vae.prior().sample((n,)).to(device)).sample()  # x ~ p(x | z), z ~ p(z)
    samples = test.in_data_units(draws).flatten(1).cpu().numpy()
    written = [plots.plot_feature_histograms(data, recon, samples, run_dir / "features.png", test.feature_names),
               plots.plot_correlations(data, samples, run_dir / "correlations.png")]
    if test.fitted is None and bool((x == x.round()).all()) and bool((x >= 0).all()):
        written.append(plots.plot_mean_variance(data, samples, run_dir / "mean_variance.png"))
    return written


@torch.no_grad()
def draw_vae_figures(vae: VAE, test: ImageDataset, history: list[dict], run_dir: Path, seed: int = 0) -> list[Path]:
    """Images (``x_shape`` (C, H, W)): reconstructions and prior samples; other data: see
    :func:`draw_table_figures`. Then the curves and, for z_dim = 2, the latent scatter of the test set (coloured
    by label where the data has labels) and, for images, the 30x30 decoded manifold over [-4, 4]^2."""
    device = device_of(vae)
    pyro.set_rng_seed(seed)
    images = len(vae.x_shape) == 3
    if images:
        scale = display_scale(test)
        x = test.images[:64].to(device)
        written = [plots.plot_reconstructions(x / scale, vae.reconstruct(x) / scale, run_dir / "reconstructions.png"),
                   plots.plot_samples(vae.sample(64) / scale, run_dir / "samples.png")]
    else:
        written = draw_table_figures(vae, test, run_dir)
    written += draw_curves(history, run_dir)
    if vae.z_dim == 2:
        if test.labels is not None:
            written.append(plots.plot_latent_scatter(_latent_means(vae, test), test.labels,
                                                     run_dir / "latent_scatter.png", test.label_names))
        if images:
            decoded = vae.decode(plots.manifold_grid(30, 4.0).to(device)).mean / scale
            written.append(plots.plot_latent_manifold(decoded, 30, 4.0, run_dir / "latent_manifold.png"))
    return written


@torch.no_grad()
def samples_by_digit(cvae: CVAE | M2, per_digit: int) -> torch.Tensor:
    """``per_digit`` draws z ~ p(z), each decoded with every label: ``(num_classes * per_digit, *x_shape)``,
    label-major, so that a column of the grid shares its z (its "style")."""
    device = device_of(cvae)
    z = cvae.prior().sample((per_digit,)).to(device).repeat(cvae.num_classes, 1)
    labels = torch.arange(cvae.num_classes, device=device).repeat_interleave(per_digit)
    decoded = cvae.generate(labels, z) if isinstance(cvae, M2) else cvae.decode(z, labels).mean
    return decoded.cpu()


@torch.no_grad()
def conditional_manifold(cvae: CVAE, digit: int, path: Path) -> Path:
    """The decoded latent manifold of p(x | z, y = digit) over [-4, 4]^2 (z_dim = 2)."""
    decoded = cvae.decode(plots.manifold_grid(30, 4.0).to(device_of(cvae)), digit).mean
    return plots.plot_latent_manifold(decoded.cpu(), 30, 4.0, path)


@torch.no_grad()
def draw_cvae_figures(cvae: CVAE, test: ImageDataset, history: list[dict], run_dir: Path, seed: int = 0,
                      manifold_digit: int = 0) -> list[Path]:
    """Reconstructions given the true labels, ``samples_by_digit.png`` (one row of 10 prior draws per label,
    the same 10 z in every row), the curves and, for z_dim = 2, the scatter of the means of q(z | x, y)
    and the decoded manifold of p(x | z, y = ``manifold_digit``) (``latent_manifold_digit{D}.png``)."""
    device = device_of(cvae)
    pyro.set_rng_seed(seed)
    x, y = test.images[:64].to(device), test.labels[:64].to(device)
    written = [plots.plot_reconstructions(x, cvae.reconstruct(x, y), run_dir / "reconstructions.png"),
               plots.plot_samples_by_label(samples_by_digit(cvae, 10), 10, run_dir / "samples_by_digit.png",
                                           title=BY_DIGIT_TITLE),
               *draw_curves(history, run_dir)]
    if cvae.z_dim == 2:
        means = torch.cat([cvae.encode(test.images[i:i + 2000].to(device), test.labels[i:i + 2000].to(device))["loc"]
                           for i in range(0, len(test), 2000)])
        written.append(plots.plot_latent_scatter(means, test.labels, run_dir / "latent_scatter.png"))
        path = run_dir / f"latent_manifold_digit{manifold_digit}.png"
        written.append(conditional_manifold(cvae, manifold_digit, path))
    return written


@torch.no_grad()
def draw_m2_figures(m2: M2, test: ImageDataset, history: list[dict], run_dir: Path, seed: int = 0) -> list[Path]:
    """``samples_by_digit.png`` (one row per digit, one z ~ p(z) per column, so a column is one "style"),
    ``analogies.png`` (ten test images, each one's style with every label) and ``accuracy.png`` (test and
    validation accuracy per epoch)."""
    pyro.set_rng_seed(seed)
    x = test.images[:10].to(device_of(m2))
    written = [
        plots.plot_samples_by_label(samples_by_digit(m2, 10), 10, run_dir / "samples_by_digit.png",
                                    title="M2: mean of p(x | y, z), one row per digit y, one z ~ p(z) per column"),
        plots.plot_analogies(x.cpu(), m2.analogies(x).cpu(), run_dir / "analogies.png"),
    ]
    if history and "test_accuracy" in history[-1]:
        written.append(plots.plot_accuracy_curves(history, run_dir / "accuracy.png"))
    return written


@torch.no_grad()
def draw_completions(cvae: StructuredCVAE, images: torch.Tensor, path: str | os.PathLike,
                     num_samples: int = 5, seed: int = 0) -> Path:
    """The completion figure: for each of ``images (n, 1, 28, 28)`` (binarized), its input, the truth,
    the baseline's prediction and ``num_samples`` CVAE completions (z ~ p(z | x)); see
    :func:`pyrovae.plots.plot_completions`."""
    visible = cvae.visible
    x, _ = split_quadrants(images, visible)
    x = x.to(device_of(cvae))
    pyro.set_rng_seed(seed)
    samples = cvae.sample_completions(x, num_samples)
    return plots.plot_completions(x.cpu(), images.cpu(), cvae.baseline.predict(x).cpu(), samples.cpu(), path,
                                  title=f"quadrant completion, {visible} visible quadrant{'s' * (visible > 1)}")


def draw_structured_figures(cvae: StructuredCVAE, test: ImageDataset, history: list[dict], run_dir: Path,
                            seed: int = 0) -> list[Path]:
    """``completions.png`` for the first ten test images, and the CVAE stage's curves."""
    return [draw_completions(cvae, test.images[:10], run_dir / COMPLETIONS, seed=seed), *draw_curves(history, run_dir)]


def draw_generic_figures(model: Family, test: ImageDataset, history: list[dict], run_dir: Path,
                         seed: int = 0) -> list[Path]:
    """What any family gets: its training curves."""
    return draw_curves(history, run_dir)


@torch.no_grad()
def draw_hierarchical_figures(model: Family, test: ImageDataset, history: list[dict], run_dir: Path,
                              seed: int = 0) -> list[Path]:
    """A hierarchical VAE's: for images, reconstructions (at the guide's means) and top-down prior samples; then
    the curves."""
    written = []
    if len(model.x_shape) == 3:
        pyro.set_rng_seed(seed)
        scale, x = display_scale(test), test.images[:64].to(device_of(model))
        written = [plots.plot_reconstructions(x / scale, model.reconstruct(x) / scale, run_dir / "reconstructions.png"),
                   plots.plot_samples(model.sample(64) / scale, run_dir / "samples.png")]
    return written + draw_curves(history, run_dir)


#: ``kind -> draw(model, test, history, run_dir, seed) -> [paths]``: the figures at the end of training.
FIGURES: dict[str, Callable] = {"vae": draw_vae_figures, "autoencoder": draw_vae_figures,
                                "cvae": draw_cvae_figures, "m2": draw_m2_figures,
                                "structured-cvae": draw_structured_figures, "hierarchical": draw_hierarchical_figures}


def draw_figures(model: Family, test: ImageDataset, history: list[dict], run_dir: str | os.PathLike,
                 seed: int = 0) -> list[Path]:
    """The figures of a run of any family (see :data:`FIGURES`), written to ``run_dir``. The label-conditional
    families draw images; on other data (tables, counts) they draw their curves."""
    draw = FIGURES.get(model.kind, draw_generic_figures)
    if model.kind in ("cvae", "m2", "structured-cvae") and len(getattr(model, "x_shape", ())) != 3:
        draw = draw_generic_figures
    return draw(model, test, history, Path(run_dir), seed)


# --- pyrovae sample ---------------------------------------------------------------------------------------


def sample_vae(vae: VAE, run_dir: Path, n: int, seed: int, out: str | None, test: ImageDataset | None,
               digit: int | None = None, manifold: bool = False) -> Path:
    """Images: a PNG grid of ``n`` prior samples (the mean of p(x|z)). Other data: a CSV of ``n`` draws
    x ~ p(x|z), z ~ p(z), one row each, in the data's own units (the training split's transform undone) with
    the feature names as its header."""
    if digit is not None or manifold:
        raise ConfigError(f"{run_dir} holds an unconditional VAE; --digit and --manifold need a run trained with "
                          "--conditional (or an M2 run, for --digit)")
    pyro.set_rng_seed(seed)
    if len(vae.x_shape) == 3:
        path = Path(out) if out else run_dir / f"samples_n{n}_seed{seed}.png"
        scale = display_scale(test) if test is not None else 1.0
        return plots.plot_samples(vae.sample(n).cpu() / scale, path)
    path = Path(out) if out else run_dir / f"samples_n{n}_seed{seed}.csv"
    with torch.no_grad():
        draws = vae.decode(vae.prior().sample((n,)).to(device_of(vae))).sample()
    return write_csv(draws, test, path)


def sample_cvae(cvae: CVAE | M2, run_dir: Path, n: int, seed: int, out: str | None, test: ImageDataset | None,
                digit: int | None = None, manifold: bool = False) -> Path:
    """With ``digit``, ``n`` draws of that digit; with ``digit`` and ``manifold`` (a CVAE with z_dim = 2), the
    decoded latent manifold of p(x | z, y = digit); with neither, one row per digit of ceil(n / num_classes)
    draws (one z per column)."""
    last = cvae.num_classes - 1
    if len(cvae.x_shape) != 3:
        return _sample_table_by_label(cvae, run_dir, n, seed, out, test, digit)
    if digit is not None and not 0 <= digit <= last:
        raise ConfigError(f"--digit {digit} is outside 0..{last}, the labels this run was trained on")
    pyro.set_rng_seed(seed)
    if manifold:
        if digit is None:
            raise ConfigError("--manifold needs --digit D: it draws the latent manifold of p(x | z, y = D)")
        if not isinstance(cvae, CVAE) or cvae.z_dim != 2:
            raise ConfigError(f"--manifold needs a CVAE run with z_dim = 2, this one is a {cvae.kind} with z_dim = "
                              f"{cvae.z_dim}")
        return conditional_manifold(cvae, digit, Path(out) if out else run_dir / f"latent_manifold_digit{digit}.png")
    if digit is not None:
        path = Path(out) if out else run_dir / f"samples_digit{digit}_n{n}_seed{seed}.png"
        labels = torch.full((n,), digit, dtype=torch.long, device=device_of(cvae))
        drawn = cvae.generate(labels) if isinstance(cvae, M2) else cvae.sample(digit, n)
        return plots.plot_samples(drawn.cpu(), path, title=f"samples of digit {digit} (mean of p(x | z, y))")
    per = -(-n // cvae.num_classes)
    path = Path(out) if out else run_dir / f"samples_by_digit_n{per}_seed{seed}.png"
    return plots.plot_samples_by_label(samples_by_digit(cvae, per), per, path, title=BY_DIGIT_TITLE)


def write_csv(values: torch.Tensor, test: ImageDataset | None, path: Path, label=None, label_names=None) -> Path:
    """``values (n, *x_shape)`` in the data's units as CSV (feature names as the header; a label column); a
    mixed-type table's (``test.schema``) in its own types: category labels, integers for counts and binary."""
    import pandas as pd

    from ..files import atomic_write_text
    values = (test.in_data_units(values) if test is not None else values).flatten(1).cpu().numpy()
    names = (test.feature_names if test is not None and test.feature_names else
             [f"feature_{j}" for j in range(values.shape[1])])
    if getattr(test, "schema", None):  # a mixed-type table: category labels, whole counts
        from ..data.schema import decode_table
        frame = decode_table(values, test.schema)
        frame.columns = list(names)
    else:
        frame = pd.DataFrame(values, columns=list(names))
    if label is not None:
        codes = label.cpu().numpy()
        frame.insert(0, "label", [label_names[c] for c in codes] if label_names else codes)
    atomic_write_text(path, frame.to_csv(index=False))
    return path


@torch.no_grad()
def _sample_table_by_label(cvae, run_dir: Path, n: int, seed: int, out: str | None, test: ImageDataset | None,
                           digit: int | None) -> Path:
    """Data that is not images: ``n`` draws x ~ p(x | z, y) per label (or of label ``digit``) as CSV."""
    if digit is not None and not 0 <= digit < cvae.num_classes:
        raise ConfigError(f"--digit {digit} is outside 0..{cvae.num_classes - 1}, the labels this run was trained on")
    pyro.set_rng_seed(seed)
    device = device_of(cvae)
    labels = (torch.full((n,), digit) if digit is not None else torch.arange(cvae.num_classes).repeat_interleave(n))
    labels = labels.to(device)
    z = cvae.prior().sample((len(labels),)).to(device)
    draws = (cvae.decode(z, labels) if isinstance(cvae, CVAE) else cvae.likelihood_of(z, labels)).sample()
    path = Path(out) if out else run_dir / (f"samples_label{digit}_n{n}_seed{seed}.csv" if digit is not None
                                            else f"samples_by_label_n{n}_seed{seed}.csv")
    return write_csv(draws, test, path, labels, test.label_names if test is not None else None)


def sample_structured(cvae: StructuredCVAE, run_dir: Path, n: int, seed: int, out: str | None,
                      test: ImageDataset | None, digit: int | None = None, manifold: bool = False) -> Path:
    """Completions of the first ``n`` test images (z ~ p(z | x))."""
    if digit is not None or manifold:
        raise ConfigError("--digit and --manifold need a CVAE or M2 run; a structured-output run draws completions")
    path = Path(out) if out else run_dir / f"completions_n{n}_seed{seed}.png"
    return draw_completions(cvae, test.images[:n], path, seed=seed)


def sample_generic(model: Family, run_dir: Path, n: int, seed: int, out: str | None, test: ImageDataset | None,
                   digit: int | None = None, manifold: bool = False) -> Path:
    """A grid of ``model.sample(n)`` (images of any size and channel count)."""
    if not hasattr(model, "sample") or digit is not None or manifold:
        raise UnsupportedError(f"a {model.kind} run has no sampler: give the family a sample(n) method or register "
                               "one with pyrovae.app.figures.register_figures")
    pyro.set_rng_seed(seed)
    path = Path(out) if out else run_dir / f"samples_n{n}_seed{seed}.png"
    return plots.plot_samples(model.sample(n).cpu(), path)


#: ``kind -> sample(model, run_dir, n, seed, out, test, digit, manifold) -> path``: ``pyrovae sample``.
SAMPLERS: dict[str, Callable] = {"vae": sample_vae, "autoencoder": sample_vae, "cvae": sample_cvae,
                                 "m2": sample_cvae, "structured-cvae": sample_structured}

#: The kinds whose sampler needs the run's test data.
SAMPLERS_NEED_DATA = {"structured-cvae"}


def sample_suffix(model: Family) -> str:
    """What ``pyrovae sample`` writes for ``model``: ``".csv"`` (a table of draws in the data's units) for a VAE,
    CVAE or M2 of data that is not images, else ``".png"``."""
    sampler = SAMPLERS.get(model.kind, sample_generic)
    if sampler in (sample_vae, sample_cvae) and len(getattr(model, "x_shape", (1, 1, 1))) != 3:
        return ".csv"
    return ".png"


def register_figures(kind: str, figures: Callable | None = None, sampler: Callable | None = None,
                     sampler_needs_data: bool = False) -> None:
    """Register the end-of-training figures and the ``pyrovae sample`` drawing of a family of one's own (see
    :data:`FIGURES` and :data:`SAMPLERS` for the signatures)."""
    if figures is not None:
        FIGURES[kind] = figures
    if sampler is not None:
        SAMPLERS[kind] = sampler
        if sampler_needs_data:
            SAMPLERS_NEED_DATA.add(kind)
