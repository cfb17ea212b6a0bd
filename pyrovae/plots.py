"""Figures with matplotlib. Functions take arrays and results and write a PNG; none of them trains."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .files import atomic_write_bytes  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure to ``path`` as PNG, atomically, and close it."""
    return _save(fig, path)


def tile(images: torch.Tensor | np.ndarray, rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """Tile ``(n, C, H, W)`` (C = 1 or 3) or ``(n, H, W)`` images (n <= rows * cols) into one grey
    ``(rows*(H+pad), cols*(W+pad))`` array, or an RGB one with a last axis of 3, row-major."""
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    channels = a.shape[1] if a.ndim == 4 else 1
    a = a.reshape(a.shape[0], channels, a.shape[-2], a.shape[-1]).transpose(0, 2, 3, 1)
    h, w = a.shape[1:3]
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, channels), dtype=np.float32)
    for i, img in enumerate(a[: rows * cols]):
        r, c = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = img
    return out[..., 0] if channels == 1 else out


def _image(array: np.ndarray, title: str, path, size: float = 6.0) -> Path:
    fig, ax = plt.subplots(figsize=(size, size * array.shape[0] / array.shape[1]))
    if array.ndim == 3:
        ax.imshow(np.clip(array, 0, 1), interpolation="nearest")
    else:
        ax.imshow(array, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return _save(fig, path)


def plot_reconstructions(x: torch.Tensor, recon: torch.Tensor, path, cols: int = 16) -> Path:
    """Pairs of rows: inputs ``x (n, 1, H, W)`` above their reconstructions (pixel probabilities)."""
    cols = min(cols, x.shape[0])
    n = (x.shape[0] // cols) * cols
    rows = []
    for r in range(0, n, cols):
        rows += [x[r:r + cols], recon[r:r + cols]]
    stacked = torch.cat(rows)
    return _image(tile(stacked, len(rows), cols), "inputs (odd rows) and reconstructions (even rows)", path)


def plot_samples(samples: torch.Tensor, path, title: str = "samples from the prior (mean of p(x|z))") -> Path:
    """A square grid of ``samples (n, 1, H, W)``."""
    side = int(np.ceil(np.sqrt(samples.shape[0])))
    return _image(tile(samples, side, side), title, path)


#: The history's curves that :func:`plot_elbo_curves` draws, with their labels.
CURVES = (("train_elbo", "train ELBO (beta = 1)"),
          ("train_objective", "train objective (beta-weighted, or the IWAE bound)"),
          ("validation_elbo", "validation ELBO"), ("validation_objective", "validation bound"))


def warmup_extent(rows: Sequence[dict]) -> tuple[float, bool] | None:
    """``(end, finished)`` of a linear KL warm-up read from history rows' ``beta`` (the KL weight at each
    epoch's last step): the weight after epoch e is beta * e / W during a warm-up of W epochs, so W is the
    final weight over the first epoch's. None when the weight never changed (no warm-up)."""
    betas = [h.get("beta") for h in rows]
    if len(betas) < 2 or any(b is None for b in betas) or not betas[0] > 0 or betas[-1] <= betas[0]:
        return None
    rising = betas[-1] > betas[-2] * (1 + 1e-9)
    end = min(rows[-1]["epoch"], rows[0]["epoch"] * betas[-1] / betas[0])
    return end, not rising


def plot_elbo_curves(history: Sequence[dict], path, stage: str | None = None,
                     kl_warmup_epochs: float | None = None) -> Path:
    """The ELBO (beta = 1; training, and validation where recorded) and the training objective in nats per
    data point against epoch, from a run's history rows (those of ``stage`` for a run trained in stages). The
    objective (dashed) is drawn apart from the ELBO only where they differ (KL warm-up, beta, IWAE, free
    bits). The epochs of the KL warm-up are shaded: ``kl_warmup_epochs`` epochs, or by default as read from
    the rows' ``beta`` (:func:`warmup_extent`)."""
    rows = [h for h in history if stage is None or h.get("stage") == stage]
    epochs = [h["epoch"] for h in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    if kl_warmup_epochs is not None:
        extent = (min(kl_warmup_epochs, epochs[-1]), kl_warmup_epochs <= epochs[-1]) if kl_warmup_epochs > 0 and \
            epochs else None
    else:
        extent = warmup_extent(rows)
    if extent is not None:
        end, finished = extent
        ax.axvspan(0, end, color="0.85", alpha=0.6, lw=0,
                   label="KL warm-up (objective discounts the KL)" if finished else
                   "KL warm-up, not finished at the last epoch")
    drawn = []
    for key, label in CURVES:
        values = [h.get(key) for h in rows]
        if any(v is None for v in values) or not values:
            continue
        twin = {"train_objective": "train_elbo", "validation_objective": "validation_elbo"}.get(key)
        if twin in drawn and np.allclose(values, [h[twin] for h in rows]):
            continue  # the same curve
        ax.plot(epochs, values, label=label, linestyle="--" if "objective" in key else "-")
        drawn.append(key)
    ax.set_xlabel("epoch" if stage is None else f"epoch ({stage})")
    ax.set_ylabel("nats per data point")
    if extent is not None:
        ax.set_xlim(left=0)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_latent_scatter(z_mean: torch.Tensor, labels: torch.Tensor, path, label_names: Sequence[str] | None = None,
                        what: str = "test images") -> Path:
    """Encoded means ``z_mean (n, 2)``, coloured by class ``labels (n,)`` (digits for MNIST)."""
    z, y = z_mean.cpu().numpy(), labels.cpu().numpy()
    k = int(y.max()) + 1 if len(y) else 1
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = "tab10" if k <= 10 else "tab20" if k <= 20 else "viridis"
    sc = ax.scatter(z[:, 0], z[:, 1], c=y, cmap=cmap, s=2 if len(z) > 2000 else 8, alpha=0.6, vmin=-0.5,
                    vmax=max(k, 10 if k <= 10 else k) - 0.5)
    bar = fig.colorbar(sc, ax=ax, ticks=range(k), label="digit" if label_names is None else "class")
    if label_names is not None:
        bar.ax.set_yticklabels([str(n)[:20] for n in label_names][:k])
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(f"mean of q(z|x) for {what}")
    return _save(fig, path)


def plot_feature_histograms(data: np.ndarray, reconstructions: np.ndarray, samples: np.ndarray, path,
                            names: Sequence[str] | None = None, max_features: int = 16) -> Path:
    """Per-feature histograms of ``data``, its ``reconstructions`` and model ``samples`` (each ``(n, d)``, in the
    data's own units), for the first ``max_features`` features."""
    d = min(data.shape[1], max_features)
    cols = min(d, 4)
    rows = -(-d // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for j, ax in enumerate(axes.flat):
        if j >= d:
            ax.set_axis_off()
            continue
        values = np.concatenate([data[:, j], reconstructions[:, j], samples[:, j]])
        values = values[np.isfinite(values)]  # missing entries (NaN) of the data are left out
        lo, hi = np.percentile(values, [0.5, 99.5])
        bins = np.linspace(lo, hi + 1e-9, 30)
        for a, label, style in ((data, "test data", "stepfilled"), (reconstructions, "reconstructions", "step"),
                                (samples, "draws of p(x)", "step")):
            column = a[:, j][np.isfinite(a[:, j])]
            ax.hist(column, bins=bins, density=True, histtype=style, alpha=0.4 if style == "stepfilled" else 1,
                    label=label)
        ax.set_title(str(names[j])[:28] if names is not None else f"feature {j}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"data vs reconstructions vs samples (first {d} of {data.shape[1]} features)")
    fig.tight_layout()
    return _save(fig, path)


def plot_correlations(data: np.ndarray, samples: np.ndarray, path) -> Path:
    """The feature correlation matrices of ``data`` and of model ``samples`` (each ``(n, d)``) side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, a, title in ((axes[0], data, "test data"), (axes[1], samples, "draws of p(x)")):
        import pandas as pd
        c = np.nan_to_num(pd.DataFrame(a).corr().to_numpy())  # pairwise over observed entries (NaN: missing)
        im = ax.imshow(c, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"correlations: {title}")
    fig.colorbar(im, ax=axes, shrink=0.8)
    return _save(fig, path)


def plot_mean_variance(data: np.ndarray, samples: np.ndarray, path) -> Path:
    """Per-feature mean against variance for count ``data`` and model ``samples`` (log-log), with the Poisson
    line variance = mean: over-dispersion shows above it."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for a, label in ((data, "test data"), (samples, "samples of p(x)")):
        m, v = a.mean(0), a.var(0)
        keep = (m > 0) & (v > 0)
        ax.scatter(m[keep], v[keep], s=6, alpha=0.6, label=label)
    m = data.mean(0)
    lo, hi = max(m[m > 0].min(), 1e-3) if (m > 0).any() else 1e-3, max(m.max(), 1e-2)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="variance = mean (Poisson)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean per feature")
    ax.set_ylabel("variance per feature")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_latent_manifold(decoded: torch.Tensor, grid: int, extent: float, path) -> Path:
    """``decoded (grid*grid, 1, H, W)``: images decoded on a ``grid x grid`` lattice over
    [-extent, extent]^2, z[0] along columns, z[1] increasing upwards."""
    image = tile(decoded, grid, grid, pad=0)
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=(-extent, extent, -extent, extent))
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("decoded latent manifold")
    return _save(fig, path)


def manifold_grid(grid: int = 30, extent: float = 4.0) -> torch.Tensor:
    """The ``(grid*grid, 2)`` lattice of z for :func:`plot_latent_manifold`, row-major from the top row."""
    values = torch.linspace(-extent, extent, grid)
    z1, z0 = torch.meshgrid(values.flip(0), values, indexing="ij")
    return torch.stack([z0.reshape(-1), z1.reshape(-1)], dim=-1)


def plot_completions(inputs: torch.Tensor, truth: torch.Tensor, baseline: torch.Tensor, samples: torch.Tensor,
                     path, title: str = "quadrant completion", hidden_value: float = -1.0) -> Path:
    """Structured-output predictions, one column per test image: the input (hidden pixels drawn
    mid-grey), the truth, the baseline's prediction and each CVAE sample, one row each.

    Args:
        inputs: ``(n, 1, H, W)``, ``hidden_value`` at hidden pixels.
        truth: ``(n, 1, H, W)`` the whole images.
        baseline: ``(n, 1, H, W)`` pixel probabilities (visible pixels copied from the input).
        samples: ``(S, n, 1, H, W)`` CVAE completions (pixel probabilities).
        path: the PNG to write.
    """
    n, s = inputs.shape[0], samples.shape[0]
    shown = torch.where(inputs == hidden_value, torch.full_like(inputs, 0.5), inputs)
    rows = [shown, truth, baseline, *samples]
    h = inputs.shape[-2]
    image = tile(torch.cat([r.reshape(n, 1, *r.shape[-2:]).float() for r in rows]), len(rows), n)
    fig, ax = plt.subplots(figsize=(0.6 * n + 1.2, 0.6 * len(rows)))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([(h + 1) * i + h / 2 for i in range(len(rows))],
                  ["input", "truth", "baseline", *[f"CVAE {k + 1}" for k in range(s)]])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title)
    return _save(fig, path)


def plot_samples_by_label(samples: torch.Tensor, num_per_label: int, path, labels: Sequence | None = None,
                          title: str = "samples of p(x | z, y), one row per label (mean of p(x|z,y))",
                          ylabel: str = "label y") -> Path:
    """A grid with one row per label: ``samples (rows * num_per_label, 1, H, W)`` label-major (as
    :meth:`pyrovae.CVAE.sample` returns them), each row marked with its label (default
    0, 1, ...)."""
    rows = samples.shape[0] // num_per_label
    image = tile(samples, rows, num_per_label)
    labels = list(range(rows)) if labels is None else list(labels)
    h = samples.shape[-2] + 1
    fig, ax = plt.subplots(figsize=(0.6 * num_per_label + 0.6, 0.6 * rows + 0.4))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([r * h + (h - 1) / 2 for r in range(rows)], [str(v) for v in labels])
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


ANALOGIES_TITLE = "analogies: each row keeps the style z of its image (left), one column per label"


def plot_analogies(x: torch.Tensor, analogies: torch.Tensor, path, title: str = ANALOGIES_TITLE) -> Path:
    """The M2 analogy figure (Kingma et al. 2014, Figure 1): one row per image ``x (n, 1, H, W)``, the
    image first, then ``analogies (n, num_classes, 1, H, W)``, its style decoded with each label."""
    n, k = analogies.shape[:2]
    rows = torch.cat([x.reshape(n, 1, *x.shape[-2:]).float().cpu(),
                      analogies.reshape(n, k, *analogies.shape[-2:]).float().cpu()], dim=1)
    image = tile(rows.reshape(n * (k + 1), *rows.shape[-2:]), n, k + 1)
    w = x.shape[-1] + 1
    fig, ax = plt.subplots(figsize=(0.6 * (k + 1) + 0.4, 0.6 * n + 0.6))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([c * w + (w - 1) / 2 for c in range(k + 1)], ["x", *[str(c) for c in range(k)]])
    ax.set_yticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel("label y")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_accuracy_curves(history: Sequence[dict], path) -> Path:
    """Test (and, where recorded, validation) classification accuracy against epoch."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["test_accuracy"] for h in history], marker=".", label="test")
    if history and "validation_accuracy" in history[0]:
        ax.plot(epochs, [h["validation_accuracy"] for h in history], marker=".", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy of argmax q(y|x)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --- posterior diagnostics (figures of pyrovae.diagnostics) ---------------------------------------------


def plot_khat_histogram(khat, path, good: float = 0.5, bad: float = 0.7) -> Path:
    """Histogram of PSIS k-hat over images ``khat (n,)``, with the thresholds ``good`` (0.5) and ``bad``
    (0.7) of Yao et al. (2018) marked. Images with k-hat = -inf (constant importance weights: q(z|x) is
    the posterior) are counted in the title."""
    k = np.asarray(torch.as_tensor(khat, dtype=torch.float64))
    finite = k[np.isfinite(k)]
    fig, ax = plt.subplots(figsize=(6, 4))
    if finite.size:
        lo, hi = min(finite.min(), 0.0) - 0.05, max(finite.max(), 1.0) + 0.05
        ax.hist(finite, bins=np.linspace(lo, hi, 31), color="0.4")
    ax.axvline(good, color="tab:orange", linestyle="--", label=f"{good}: good below")
    ax.axvline(bad, color="tab:red", linestyle="--", label=f"{bad}: unreliable above")
    share = float(np.mean(k > bad)) if k.size else float("nan")
    constant = int(np.sum(k == -np.inf))
    ax.set_title(f"PSIS k-hat of p(x,z)/q(z|x), {k.size} images: {share:.0%} above {bad}"
                 + (f" ({constant} with constant weights)" if constant else ""), fontsize=9)
    ax.set_xlabel("k-hat")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_kl_per_dimension(kl, active, path,
                          ylabel: str = "KL(q(z_d|x) || p(z_d)) (nats, mean over images)") -> Path:
    """Bars of the KL of each latent dimension ``kl (z_dim,)`` (nats, mean over images; or another
    per-dimension statistic named by ``ylabel``), active dimensions (``active (z_dim,)`` bool) in colour
    and collapsed ones in grey."""
    kl = np.asarray(torch.as_tensor(kl, dtype=torch.float64))
    active = np.asarray(torch.as_tensor(active, dtype=torch.bool))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.14 * kl.size + 2), 4))
    ax.bar(np.arange(kl.size), kl, color=np.where(active, "tab:blue", "0.7"))
    ax.set_xlabel("latent dimension")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(f"per latent dimension: {int(active.sum())} of {kl.size} active (blue)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_posterior_comparison(q_mean, q_sd, ref_mean, ref_sd, path, labels: Sequence[str] | None = None) -> Path:
    """Two scatter panels, the guide against a reference posterior (NUTS), one point per latent dimension:
    posterior means and posterior standard deviations, with the line y = x.

    Args:
        q_mean, q_sd: ``(m, z_dim)`` mean and sd of q(z|x) for m images.
        ref_mean, ref_sd: ``(m, z_dim)`` the same for the reference.
        labels: m legend entries (default "image 0", ...).
    """
    arrays = [np.asarray(torch.as_tensor(a, dtype=torch.float64)) for a in (q_mean, q_sd, ref_mean, ref_sd)]
    m = arrays[0].shape[0]
    labels = list(labels) if labels is not None else [f"image {i}" for i in range(m)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, (q, ref), what in zip(axes, ((arrays[0], arrays[2]), (arrays[1], arrays[3])), ("mean", "sd")):
        for i in range(m):
            ax.scatter(ref[i], q[i], s=12, alpha=0.7, label=labels[i])
        lo, hi = min(q.min(), ref.min()), max(q.max(), ref.max())
        ax.plot([lo, hi], [lo, hi], color="0.3", linewidth=0.8)
        ax.set_xlabel(f"NUTS posterior {what}")
        ax.set_ylabel(f"q(z|x) {what}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("q(z|x) against NUTS on p(z|x), one point per latent dimension", fontsize=10)
    return _save(fig, path)


def plot_pair_overlay(idata, image: int, dims: Sequence[int], path) -> Path:
    """ArviZ pair plot of the ``dims`` of z for one ``image``: draws of q(z|x) (group ``posterior``, blue)
    over NUTS draws of p(z|x) (group ``reference_posterior``, orange); ``idata`` as
    :func:`pyrovae.diagnostics.to_inference_data` builds it."""
    import warnings

    import arviz as az  # a heavy import, needed by this figure only

    dims = [int(d) for d in dims]
    if len(dims) < 2:
        raise ValueError(f"a pair plot needs at least 2 dimensions, got {dims}")
    side = len(dims) - 1
    fig, axes = plt.subplots(side, side, figsize=(2.4 * side + 1, 2.4 * side + 1), squeeze=False)
    coords = {"image": [int(image)], "z_dim": dims}
    for group, colour in (("posterior", "tab:blue"), ("reference_posterior", "tab:orange")):
        with warnings.catch_warnings():  # ArviZ 0.2x calls a matplotlib helper deprecated in 3.11
            warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
            az.plot_pair(idata, group=group, var_names=["z"], coords=coords, ax=axes if side > 1 else axes[0, 0],
                         scatter_kwargs={"color": colour, "alpha": 0.3, "marker": "o", "s": 5}, textsize=8)
    for r in range(side):
        for c in range(side):
            if c <= r:
                axes[r, c].set_xlabel(f"z[{dims[c]}]" if r == side - 1 else "")
                axes[r, c].set_ylabel(f"z[{dims[r + 1]}]" if c == 0 else "")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=l)
               for c, l in (("tab:blue", "q(z|x)"), ("tab:orange", "NUTS p(z|x)"))]
    fig.legend(handles=handles, loc="upper right", fontsize=9)
    fig.suptitle(f"test image {image}: q(z|x) over the NUTS posterior", fontsize=10)
    return _save(fig, path)


def plot_traversals(decoded: torch.Tensor, dims: Sequence[int], offsets: Sequence[float], path,
                    title: str = "latent traversals") -> Path:
    """A grid of ``decoded (len(dims), len(offsets), 1, H, W)`` images (pixel probabilities), one row per
    latent dimension moved, one column per offset, rows labelled ``z[d]`` and columns by the offset."""
    rows, cols = decoded.shape[:2]
    image = tile(decoded.reshape(rows * cols, *decoded.shape[-2:]), rows, cols)
    h, w = decoded.shape[-2] + 1, decoded.shape[-1] + 1
    fig, ax = plt.subplots(figsize=(0.6 * cols + 1.0, 0.6 * rows + 0.8))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([r * h + (h - 1) / 2 for r in range(rows)], [f"z[{int(d)}]" for d in dims])
    ax.set_xticks([c * w + (w - 1) / 2 for c in range(cols)], [f"{o:+.1f}" for o in offsets])
    ax.tick_params(length=0, labelsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("offset from the posterior mean")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
