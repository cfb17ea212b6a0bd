"""``pyrovae compare RUN_DIR ...``: several run folders on the same data, in one report.

For each run (any family with ``encode`` and ``decode``: VAEs and autoencoders): the test reconstruction error in
the likelihood's own loss and in squared error, the test log-likelihood where the model defines one (from the
run's ``metrics.json``, with its K), the linear-probe accuracy of the codes, and samples (the prior's and, for
every model, a Gaussian mixture fitted to the training codes) read by a classifier trained on the training images
(confidence, class coverage, nearest-training-image distance). Figures: the 2-D codes side by side (z_dim = 2),
interpolations between the same test pairs, samples. Written to ``OUT/report.md`` and ``OUT/*.png``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyro
import torch

from .. import checks, plots
from ..errors import ConfigError, UnsupportedError
from ..evaluation.samplers import SampleReader, encode_all, fit_latent_gmm, sample_codes
from ..files import atomic_write_text
from ..torchtools import device_of
from ..errors import RunDirError
from ..files import ensure_writable_dir
from ..training.checkpoint import CHECKPOINT, CONFIG, load_run, read_data_info, read_metrics, read_run_config
from .runs import run_data

PAIRS = ((0, 1), (2, 3), (4, 5))


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    return float(v.mean()), float(v.std() / len(v) ** 0.5) if len(v) > 1 else float("nan")


@torch.no_grad()
def compare_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike, test_size: int = 2000,
                 probe_train_size: int = 10_000, num_samples: int = 1000, seed: int = 0,
                 device: str = "cpu") -> dict:
    """Compare run folders trained on the same data; see the module docstring.

    Args:
        run_dirs: two or more run folders. out: the report's folder (created).
        test_size: test data points for the reconstruction error and the codes (the first ones; all runs alike).
        probe_train_size: training data points for the probe, the classifier and the mixture.
        num_samples: samples per model and sampler.

    Returns:
        ``{"rows": [...], "files": [...]}``, also written to ``out/report.md``.

    Raises:
        ConfigError: fewer than two runs, or runs on different data (another source or test split).
        UnsupportedError: a family without ``encode``/``decode`` (the label-conditional ones).
    """
    if len(run_dirs) < 2:
        raise ConfigError("compare takes two or more run folders")
    checks.positive_int(test_size, "test_size")
    ensure_writable_dir(out)
    if any((Path(out) / name).exists() for name in (CONFIG, CHECKPOINT)):
        raise RunDirError(f"--out {out} is a run folder; the report goes into a folder of its own")
    infos = [read_data_info(d) for d in run_dirs]
    keys = {(i.source, i.test_rows_sha256, json.dumps(i.transform, sort_keys=True), i.binarization,
             tuple(i.x_shape)) if i is not None else ("mnist",) for i in infos}
    same = ("source", "data_options", "binarization", "transform", "test_fraction", "split_seed", "missing")
    configs = {json.dumps({k: v for k, v in read_run_config(d).data.to_dict().items() if k in same}, sort_keys=True)
               for d in run_dirs}
    if len(keys) > 1 or len(configs) > 1:
        raise ConfigError("the runs were trained on different data (source, split, transform or binarization "
                          "differ): compare runs on the same data and split")
    if any(read_run_config(d).data.missing == "mask" for d in run_dirs):
        raise UnsupportedError("compare does not take runs trained with missing entries (--missing mask) yet")
    models = []
    for d in run_dirs:
        model, config, _ = load_run(d, device)
        if not (hasattr(model, "encode") and hasattr(model, "decode")) or model.kind not in ("vae", "autoencoder"):
            raise UnsupportedError(f"{d} holds a {model.kind} run; compare takes VAEs and autoencoders")
        models.append((Path(d).name, model, config))
    train, _, test, info = run_data(run_dirs[0], models[0][2], validation_size=0)
    train = train.subset(slice(0, min(len(train), probe_train_size)))
    x = test.get(torch.arange(min(test_size, len(test))), torch.Generator().manual_seed(0))
    xt = train.get(torch.arange(len(train)), torch.Generator().manual_seed(seed))
    labels = None if test.labels is None else test.labels[:len(x)].numpy()
    reader = None
    if train.labels is not None:
        reader = SampleReader(xt.flatten(1).numpy(), train.labels.numpy(), x[:1000].flatten(1).numpy(),
                              info.num_classes or int(train.labels.max()) + 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, codes, prior_draws, gmm_draws = [], {}, [], []
    for run_dir, (name, model, config) in zip(run_dirs, models):
        dev = device_of(model)
        errors = model.reconstruction_error(x.to(dev))
        code_test, code_train = encode_all(model, x), encode_all(model, xt)
        row = {"run": name, "kind": model.kind, "variant": getattr(model, "variant", None), "z_dim": model.z_dim,
               "reconstruction_nll": _mean_se(errors["reconstruction_nll"].cpu()),
               "squared_error": _mean_se(errors["squared_error"].cpu())}
        test_metrics = read_metrics(run_dir).get("test", {})
        if model.defines_likelihood and "log_likelihood_nats" in test_metrics:
            row["log_likelihood"] = (test_metrics["log_likelihood_nats"], test_metrics["log_likelihood_stderr"],
                                     test_metrics.get("num_samples"))
        if labels is not None:
            from sklearn.linear_model import LogisticRegression
            probe = LogisticRegression(max_iter=500).fit(code_train.numpy(), train.labels.numpy())
            row["probe_accuracy"] = float(probe.score(code_test.numpy(), labels))
        pyro.set_rng_seed(seed)
        prior = model.sample(num_samples).cpu()
        gmm = fit_latent_gmm(model, xt, 10, seed)
        mixture = model.decode(sample_codes(gmm, num_samples, seed).to(dev)).mean.cpu()
        if reader is not None:
            row["prior_samples"], row["gmm_samples"] = (reader.read(s.flatten(1).numpy()) for s in (prior, mixture))
        rows.append(row)
        codes[name] = code_test
        prior_draws.append(prior[:10])
        gmm_draws.append(mixture[:10])
    files = _figures(models, x, labels, codes, prior_draws, gmm_draws, out)
    report = _report(rows, info, len(x), reader, files)
    atomic_write_text(out / "report.md", report)
    return {"rows": rows, "files": [str(f) for f in [out / "report.md", *files]]}


def _figures(models, x, labels, codes, prior_draws, gmm_draws, out: Path) -> list[Path]:
    files = []
    images = x.dim() == 4
    if all(c.shape[1] == 2 for c in codes.values()) and labels is not None:
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(codes), figsize=(4.6 * len(codes), 4.2), squeeze=False)
        for ax, (name, c) in zip(axes[0], codes.items()):
            ax.scatter(c[:, 0], c[:, 1], c=labels, cmap="tab10", s=3)
            ax.set_title(name, fontsize=9)
        files.append(plots.save_figure(fig, out / "codes.png"))
    if images:
        t = torch.linspace(0, 1, 10)[:, None]
        rows, names = [], []
        for name, model, _ in models:
            dev = device_of(model)
            for a, b in PAIRS:
                za, zb = (model.encode(x[i:i + 1].to(dev))["loc"] for i in (a, b))
                rows.append(model.decode(za + t.to(dev) * (zb - za)).mean.cpu())
                names.append(f"{name} {a}-{b}")
        files.append(plots.plot_samples_by_label(torch.cat(rows), 10, out / "interpolations.png", labels=names,
                                                 title="decoded along the line between two test codes", ylabel=""))
        rows = [d for pair in zip(prior_draws, gmm_draws) for d in pair]
        names = [f"{name}, {kind}" for name, _, _ in models for kind in ("z ~ prior", "z ~ GMM")]
        files.append(plots.plot_samples_by_label(torch.cat(rows), 10, out / "samples.png", labels=names,
                                                 title="samples (mean of p(x|z))", ylabel=""))
    return files


def _cell(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return f"{v[0]:.{digits}f} +- {v[1]:.{digits}f}"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _report(rows, info, n_test, reader, files) -> str:
    lines = [f"# pyrovae compare: {len(rows)} runs on {info.source}", "",
             f"Test data: the first {n_test} test data points of the runs' common split. Reconstruction at the code "
             "(the mean of q for a VAE): -log p(x | z) in nats and the squared error. Log-likelihood: the run's own "
             "importance-sampled estimate (metrics.json), only for models that define one.", "",
             "| run | kind | z_dim | -log p(x given z) | squared error | log-likelihood (K) | probe accuracy | "
             "prior samples: confidence / coverage / nearest | GMM samples: confidence / coverage / nearest |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        ll = r.get("log_likelihood")
        ll_text = "-" if ll is None else f"{ll[0]:.2f} +- {ll[1]:.2f} ({ll[2]})"
        samples = [("-" if r.get(k) is None else f"{r[k]['confidence']:.2f} / {r[k]['coverage']} / "
                    f"{r[k]['nearest_train_distance']:.2f}") for k in ("prior_samples", "gmm_samples")]
        kind = r["kind"] + (f" ({r['variant']})" if r.get("variant") else "")
        lines.append(f"| {r['run']} | {kind} | {r['z_dim']} | {_cell(r['reconstruction_nll'])} | "
                     f"{_cell(r['squared_error'])} | {ll_text} | {_cell(r.get('probe_accuracy'), 3)} | {samples[0]} | "
                     f"{samples[1]} |")
    if reader is not None:
        lines += ["", "Samples are read by a logistic regression on the training images; coverage counts the classes "
                      f"that get at least 5% of the samples (of {reader.num_classes}); nearest: the mean distance to "
                      f"the nearest training image (held-out images: {reader.reference:.2f})."]
    lines += ["", *[f"![{Path(f).stem}]({Path(f).name})" for f in files], ""]
    return "\n".join(lines)
