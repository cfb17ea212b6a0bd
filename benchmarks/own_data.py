"""Your own data (issue 20): test log-likelihoods on real data that ships inside installed packages, against
baselines whose log-likelihood is exact, and one epoch on a .npy file larger than the memory it is trained in.

    OMP_NUM_THREADS=1 python benchmarks/own_data.py --json benchmarks/results/own_data.json
    OMP_NUM_THREADS=1 python benchmarks/own_data.py --only out_of_core --gb 4

Every table uses the split recorded by pyrovae (test_fraction 0.2, split_seed 0) and reports the mean test
log-likelihood in nats per data point with its standard error over test points. VAEs: K = 1000 importance
samples, the checkpoint of best validation ELBO (10% of the training rows, early stopping). Only numbers on
the same data (same values, same transform) are comparable: each table says which are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyro

import pyrovae
from pyrovae import DataConfig, RunConfig, TrainerConfig, VAEConfig
from pyrovae.data import prepare_data
from pyrovae.evaluation.baselines import GaussianMixtureBaseline, PerFeatureNegativeBinomial, ProbabilisticPCA

K = 1000


def _stats(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def vae_row(name: str, source: str, likelihood: str, out: Path, z_dim: int, hidden: tuple, epochs: int, seed: int,
            likelihood_options: dict | None = None, **data) -> dict:
    """Train with early stopping on 10% validation rows, evaluate the best checkpoint with K samples."""
    probe = prepare_data(DataConfig(source=source, **data), seed)
    n_train = probe[3].sizes["train"]
    config = RunConfig(model=VAEConfig(z_dim=z_dim, hidden=hidden, likelihood=likelihood,
                                       likelihood_options=likelihood_options or {}),
                       trainer=TrainerConfig(epochs=epochs, batch_size=64, lr=1e-3, seed=seed,
                                             early_stopping_patience=50),
                       data=DataConfig(source=source, validation_size=n_train // 10, **data))
    run_dir = out / name
    t0 = time.perf_counter()
    model, history = pyrovae.fit(config, run_dir, progress=False)
    seconds = time.perf_counter() - t0
    model, config, state = pyrovae.load_run(run_dir, which="best")
    _, _, test = pyrovae.data.load_data(config.data, config.trainer.seed)
    pyro.set_rng_seed(0)
    metrics = pyrovae.evaluate(model, test, K, per_image=True, latent_statistics=True)
    mean, se = _stats(metrics["per_image"]["log_likelihood"].cpu().numpy())
    best = max(history, key=lambda r: r.get("validation_elbo", -np.inf))
    return {"model": f"VAE, {likelihood}", "log_likelihood": mean, "stderr": se, "elbo": metrics["elbo_nats"],
            "active_units": metrics.get("active_units"), "kl_per_dim": metrics.get("kl_per_dimension_nats"),
            "best_epoch": best["epoch"], "epochs_run": len(history), "seconds": seconds, "n_test": len(test)}


def digits(out: Path, epochs: int, seed: int) -> list[dict]:
    """scikit-learn's digits (8x8, counts 0..16). Binomial(16) and a 17-way categorical model the same values
    (comparable); Normal on standardized values and Bernoulli on binarized values model other data."""
    common = dict(out=out, z_dim=8, hidden=(128, 128), epochs=epochs, seed=seed)
    rows = [vae_row("digits-binomial", "digits", "binomial", **common),
            vae_row("digits-categorical", "digits", "categorical", **common),
            vae_row("digits-normal", "digits", "normal", likelihood_options={"learned_scale": True},
                    transform="standardize", **common),
            vae_row("digits-bernoulli", "digits", "bernoulli", transform="binarize", **common)]
    for row, data in zip(rows, ("counts 0..16", "counts 0..16", "standardized (density)", "binarized at 8")):
        row["data"] = data
    return rows


def _exact(name: str, fitted, test_x: np.ndarray, data: str) -> dict:
    mean, se = _stats(fitted.log_likelihood(test_x))
    return {"model": name, "log_likelihood": mean, "stderr": se, "data": data, "n_test": len(test_x)}


def breast_cancer(out: Path, epochs: int, seed: int, z_dim: int = 5) -> list[dict]:
    """breast_cancer (569 x 30, real), standardized with the training split's statistics: every row models
    the same standardized values (comparable)."""
    rows = [vae_row(f"bc-{lik}", "breast_cancer", lik, out=out, z_dim=z_dim, hidden=(64, 64), epochs=epochs, seed=seed,
                    likelihood_options={"learned_scale": True})
            for lik in ("normal", "laplace", "student_t")]
    train, _, test, _ = prepare_data(DataConfig(source="breast_cancer"), seed)
    x, tx = train.x.numpy().astype(np.float64), test.x.numpy().astype(np.float64)
    rows.append(_exact(f"probabilistic PCA, q = {z_dim}", ProbabilisticPCA().fit(x, z_dim), tx, "standardized"))
    for k in (1, 2, 4):
        rows.append(_exact(f"Gaussian mixture, {k} full-covariance components",
                           GaussianMixtureBaseline(k, random_state=seed, reg_covar=1e-4).fit(x), tx, "standardized"))
    for row in rows:
        row.setdefault("data", "standardized")
    return rows


def pbmc(out: Path, epochs: int, seed: int) -> list[dict]:
    """pbmc68k_reduced raw UMI counts (scanpy's bundled data, the anndata extra): Poisson, NB, ZINB VAEs
    against an independent negative binomial per gene (no latents), on the same counts."""
    try:
        import scanpy  # noqa: F401
    except ImportError:
        return [{"model": "skipped: scanpy is not installed (pip install 'pyrovae[anndata]')"}]
    rows = [vae_row(f"pbmc-{lik}", "pbmc68k_reduced", lik, out=out, z_dim=10, hidden=(128,), epochs=epochs, seed=seed)
            for lik in ("poisson", "negative_binomial", "zero_inflated_negative_binomial")]
    train, _, test, _ = prepare_data(DataConfig(source="pbmc68k_reduced"), seed)
    rows.append(_exact("negative binomial per gene, no latents",
                       PerFeatureNegativeBinomial().fit(train.x.numpy()), test.x.numpy(), "counts"))
    rows += scvi_reference(train.x.numpy(), test.x.numpy(), seed)
    for row in rows:
        row.setdefault("data", "counts")
    return rows


def scvi_reference(train: np.ndarray, test: np.ndarray, seed: int, epochs: int = 400, n_latent: int = 10) -> list[dict]:
    """scvi-tools' SCVI on the same split, where it is installed: ``get_marginal_ll`` with 1000 importance
    samples per test cell. With a latent library size its value is log p(x) of the counts, comparable with the
    rows above; with the observed library size (scVI's default) it is log p(x | library size), not comparable.
    Settings: n_latent 10, batch 128, ``max_epochs`` 400, no early stopping (SCVI's defaults otherwise)."""
    try:
        import anndata
        import scvi
    except ImportError:
        return [{"model": "SCVI: skipped, scvi-tools is not installed"}]
    rows = []
    for likelihood, observed in (("nb", False), ("zinb", False), ("nb", True)):
        scvi.settings.seed = seed
        fit_on, score_on = anndata.AnnData(train.astype(np.float32)), anndata.AnnData(test.astype(np.float32))
        scvi.model.SCVI.setup_anndata(fit_on)
        model = scvi.model.SCVI(fit_on, n_latent=n_latent, gene_likelihood=likelihood,
                                use_observed_lib_size=observed)
        t0 = time.perf_counter()
        model.train(max_epochs=epochs, train_size=1.0, accelerator="cpu", devices=1, early_stopping=False,
                    enable_progress_bar=False, batch_size=128)
        scvi.model.SCVI.setup_anndata(score_on)
        per_cell = model.get_marginal_ll(score_on, n_mc_samples=K, return_mean=False, batch_size=len(test),
                                         n_mc_samples_per_pass=100)
        mean, se = _stats(np.asarray(per_cell, dtype=np.float64))
        library = "observed library size: log p(x | library), not comparable" if observed else "latent library size"
        rows.append({"model": f"SCVI {scvi.__version__}, {likelihood}, {library}", "log_likelihood": mean,
                     "stderr": se, "seconds": time.perf_counter() - t0, "n_test": len(test),
                     "settings": {"n_latent": n_latent, "max_epochs": epochs, "batch_size": 128}})
    return rows


def out_of_core(out: Path, gb: float, seed: int) -> dict:
    """Write a binary .npy file of ``gb`` GB (784 float32 columns: MNIST-sized rows, Bernoulli draws) in a
    child process, then train one epoch on it through `pyrovae train --data FILE` in another, and report the
    child's peak resident memory (ru_maxrss) against the file's size."""
    path = out / "big.npy"
    rows = int(gb * 1e9 / (784 * 4))
    if not path.exists() or os.path.getsize(path) < rows * 784 * 4:
        code = ("import numpy as np, sys\n"
                "path, rows = sys.argv[1], int(sys.argv[2])\n"
                "rng = np.random.default_rng(0)\n"
                "p = rng.uniform(0.05, 0.5, size=784).astype(np.float32)\n"
                "with open(path, 'wb') as f:\n"
                "    header = {'descr': '<f4', 'fortran_order': False, 'shape': (rows, 784)}\n"
                "    np.lib.format.write_array_header_1_0(f, header)\n"
                "    for start in range(0, rows, 50000):\n"
                "        n = min(50000, rows - start)\n"
                "        f.write((rng.random((n, 784), dtype=np.float32) < p).astype(np.float32).tobytes())\n")
        subprocess.run([sys.executable, "-c", code, str(path), str(rows)], check=True)
    size = os.path.getsize(path)
    run_dir = out / "out-of-core-run"
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    # The child reports its own peak resident memory (VmHWM of its address space after exec). getrusage's
    # RUSAGE_CHILDREN is not used: a child started by vfork/posix_spawn inherits the parent's high-water mark.
    peak_file = out / "out-of-core-peak.txt"
    child = ("import sys\nfrom pyrovae.app.cli import main\ncode = main(sys.argv[2:])\n"
             "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
             "open(sys.argv[1], 'w').write(hwm)\nsys.exit(code)\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", child, str(peak_file), "train", "--data", str(path), "--data-option",
                    "stream=true", "--test-fraction", "0.001", "--epochs", "1", "--batch-size", "1000",
                    "--eval-num-samples", "10", "--z-dim", "20", "--seed", str(seed), "--out", str(run_dir),
                    "--no-progress"], check=True)
    seconds = time.perf_counter() - t0
    peak = int(peak_file.read_text()) * 1024  # kB
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"file_bytes": size, "rows": rows, "peak_rss_bytes": peak, "seconds": seconds,
            "train_elbo": metrics["history"][-1]["train_elbo"],
            "test_log_likelihood": metrics["test"]["log_likelihood_nats"]}


def _table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n| model | data | test log-likelihood (nats per data point) | best epoch |")
    print("|---|---|---:|---:|")
    for r in rows:
        if "log_likelihood" not in r:
            print(f"| {r['model']} | | | |")
            continue
        print(f"| {r['model']} | {r.get('data', '')} | {r['log_likelihood']:.2f} +- {r['stderr']:.2f} | "
              f"{r.get('best_epoch', '-')} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=["digits", "breast_cancer", "pbmc", "out_of_core"])
    p.add_argument("--epochs", type=int, default=500, help="at most; early stopping on the validation ELBO")
    p.add_argument("--gb", type=float, default=4.0, help="size of the out-of-core file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="pyrovae-own-data-"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"settings": vars(args), "K": K}
    if "digits" in args.only:
        results["digits"] = digits(out, args.epochs, args.seed)
        _table("digits (scikit-learn, 1,797 8x8 images, counts 0..16)", results["digits"])
    if "breast_cancer" in args.only:
        results["breast_cancer"] = breast_cancer(out, args.epochs, args.seed)
        _table("breast_cancer (569 x 30, standardized)", results["breast_cancer"])
    if "pbmc" in args.only:
        results["pbmc"] = pbmc(out, args.epochs, args.seed)
        _table("pbmc68k_reduced (counts)", results["pbmc"])
    if "out_of_core" in args.only:
        r = results["out_of_core"] = out_of_core(out, args.gb, args.seed)
        print(f"\nout of core: {r['file_bytes'] / 1e9:.2f} GB file, {r['rows']} rows; one epoch + evaluation in "
              f"{r['seconds']:.0f} s; peak resident memory {r['peak_rss_bytes'] / 1e9:.2f} GB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
