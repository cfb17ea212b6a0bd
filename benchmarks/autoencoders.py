"""Autoencoders, PCA and the VAE side by side (issue 22), on MNIST at one training budget.

    OMP_NUM_THREADS=1 python benchmarks/autoencoders.py --data-dir ../shared/data \
        --json benchmarks/results/autoencoders.json

Contenders, each at z_dim 2 and 16: PCA (scikit-learn), probabilistic PCA (closed form), the autoencoder and its
denoising, sparse and contractive variants, the VAE and the beta-VAE (beta 4); the trained ones with the same
networks (MLP 784-256-256-z), the Bernoulli likelihood, dynamic binarization, Adam at 1e-3 (cosine), the same
epochs on the same training images, the KL warm-up over the first fifth of them (VAEs). The test set is
binarized once (seed 0). Per model and seed:

* reconstruction error on the test images at the code (the mean of q for the VAEs): binary cross-entropy and
  squared error, nats and squared pixels per image;
* linear-probe accuracy: a logistic regression on the codes of the training images, read on the test codes;
* test log-likelihood where the model defines one: the VAEs' by importance sampling (K = 1000, log p(x) of binary
  images, nats) and pPCA's exact Gaussian density of the same binary vectors (a density, not comparable);
* samples: prior samples N(0, I) (the VAEs' generative model; for the autoencoders just a decoder fed N(0, I))
  and GMM samples (a 10-component mixture fitted to the training codes, Ghosh et al. 2020) for all, read by a
  classifier trained on the training images: its mean confidence (the largest class probability), the class
  coverage (classes that receive at least 5% of the samples, of 10) and the nearest-training-image distance
  (Euclidean, in pixels; the test images' own is the reference: far below it is memorization).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture

import pyrovae
from pyrovae import DataConfig, RunConfig, TrainerConfig, VAEConfig
from pyrovae.evaluation.baselines import ProbabilisticPCA
from pyrovae.evaluation.samplers import SampleReader, encode_all, fit_latent_gmm, sample_codes
from pyrovae.models import AutoencoderConfig

TRAINED = {
    "AE": lambda z: AutoencoderConfig(z_dim=z, hidden=(256, 256)),
    "denoising AE (masking 0.3)": lambda z: AutoencoderConfig(z_dim=z, hidden=(256, 256), variant="denoising"),
    "sparse AE (L1 0.1)": lambda z: AutoencoderConfig(z_dim=z, hidden=(256, 256), variant="sparse"),
    "contractive AE (0.1)": lambda z: AutoencoderConfig(z_dim=z, hidden=(256, 256), variant="contractive"),
    "VAE": lambda z: VAEConfig(z_dim=z, hidden=(256, 256)),
    "beta-VAE (beta 4)": lambda z: VAEConfig(z_dim=z, hidden=(256, 256)),
}
EPS = 1e-6


def _bce(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(1)


def _summary(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def linear_row(name: str, z: int, train_x, test_x, train_y, test_y, reader: SampleReader, seed: int) -> dict:
    """PCA or pPCA: codes, reconstructions, GMM samples decoded through the same linear map."""
    if name == "PCA":
        pca = PCA(z, random_state=seed).fit(train_x)
        encode, decode = pca.transform, pca.inverse_transform
        ll = None
    else:
        ppca = ProbabilisticPCA().fit(train_x.astype(np.float64), z)
        m = ppca.W.T @ ppca.W + ppca.noise_variance * np.eye(z)
        encode = lambda x: np.linalg.solve(m, ppca.W.T @ (x - ppca.mean).T).T  # noqa: E731 (posterior mean)
        decode = lambda c: c @ ppca.W.T + ppca.mean  # noqa: E731
        ll = _summary(ppca.log_likelihood(test_x.astype(np.float64)))
    codes_train, codes_test = encode(train_x), encode(test_x)
    recon = decode(codes_test)
    gmm = GaussianMixture(10, random_state=seed, reg_covar=1e-6).fit(codes_train)
    gmm_samples = np.clip(decode(gmm.sample(1000)[0]), 0, 1)
    prior_samples = np.clip(decode(np.random.default_rng(seed).normal(size=(1000, z)) *
                                   codes_train.std(0, keepdims=True)), 0, 1) if name == "PCA" else \
        np.clip(decode(np.random.default_rng(seed).normal(size=(1000, z))), 0, 1)
    probe = LogisticRegression(max_iter=500).fit(codes_train, train_y).score(codes_test, test_y)
    return {"model": name, "z_dim": z, "seed": seed, "bce": _summary(_bce(test_x, recon)),
            "squared_error": _summary(((test_x - recon) ** 2).sum(1)), "probe": probe, "log_likelihood": ll,
            "prior_samples": reader.read(prior_samples), "gmm_samples": reader.read(gmm_samples)}


def trained_row(name: str, z: int, args, train_x, test_x, train_y, test_y, reader: SampleReader, seed: int) -> dict:
    beta = 4.0 if name.startswith("beta") else 1.0
    config = RunConfig(model=TRAINED[name](z), trainer=TrainerConfig(epochs=args.epochs, seed=seed, beta=beta,
                                                                     kl_warmup_epochs=args.epochs / 5),
                       data=DataConfig(data_dir=args.data_dir, train_size=args.train_size))
    run_dir = Path(args.out) / f"{name.split(' ')[0]}-z{z}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own workspace
    t0 = time.perf_counter()
    model, _ = pyrovae.fit(config, run_dir, progress=False)
    seconds = time.perf_counter() - t0
    test = torch.as_tensor(test_x, dtype=torch.float32).view(-1, 1, 28, 28)
    errors = model.reconstruction_error(test)
    codes_train = encode_all(model, torch.as_tensor(train_x, dtype=torch.float32).view(-1, 1, 28, 28))
    codes_test = encode_all(model, test)
    probe = LogisticRegression(max_iter=500).fit(codes_train.numpy(), train_y).score(codes_test.numpy(), test_y)
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        prior_samples = model.decode(torch.randn(1000, z)).mean.flatten(1).numpy()
    gmm = fit_latent_gmm(model, torch.as_tensor(train_x, dtype=torch.float32).view(-1, 1, 28, 28), 10, seed)
    with torch.no_grad():
        gmm_samples = model.decode(sample_codes(gmm, 1000, seed)).mean.flatten(1).numpy()
    ll = None
    if model.defines_likelihood:
        out = pyrovae.log_likelihood(model.model, model.guide, test[:args.ll_images], num_samples=1000)
        ll = _summary(out["log_likelihood"].numpy())
    return {"model": name, "z_dim": z, "seed": seed, "seconds": seconds,
            "bce": _summary(errors["reconstruction_nll"].numpy()),
            "squared_error": _summary(errors["squared_error"].numpy()), "probe": probe, "log_likelihood": ll,
            "prior_samples": reader.read(prior_samples), "gmm_samples": reader.read(gmm_samples)}


def summarize(results: dict) -> str:
    """The markdown table of a results JSON: per model and z_dim, the mean over seeds and, in brackets, the seeds'
    range (max - min); the standard errors over test images are in the JSON (about 0.3-0.5 nats for BCE)."""
    rows = results["rows"]
    keys = []
    for r in rows:
        if (r["z_dim"], r["model"]) not in keys:
            keys.append((r["z_dim"], r["model"]))
    lines = ["| z | model | BCE (nats) | squared error | probe acc. | test log-lik. (nats) | prior samples: conf. / "
             "coverage / nearest | GMM samples: conf. / coverage / nearest |", "|---:|---|---:|---:|---:|---:|---|---|"]

    def agg(values, digits=2):
        values = np.asarray(values, dtype=float)
        return f"{values.mean():.{digits}f} ({values.max() - values.min():.{digits}f})"

    for z, name in keys:
        group = [r for r in rows if r["z_dim"] == z and r["model"] == name]
        ll = [r["log_likelihood"][0] for r in group if r["log_likelihood"] is not None]
        samples = []
        for kind in ("prior_samples", "gmm_samples"):
            mean = {k: np.mean([r[kind][k] for r in group]) for k in ("confidence", "coverage",
                                                                         "nearest_train_distance")}
            samples.append(f"{mean['confidence']:.2f} / {mean['coverage']:.1f} / {mean['nearest_train_distance']:.2f}")
        bce, squared = agg([r["bce"][0] for r in group]), agg([r["squared_error"][0] for r in group])
        lines.append(f"| {z} | {name} | {bce} | {squared} | {agg([r['probe'] for r in group], 3)} | "
                     f"{agg(ll) if ll else '-'} | {samples[0]} | {samples[1]} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=20000, help="training images (the same for every model)")
    p.add_argument("--z-dims", type=int, nargs="+", default=[2, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ll-images", type=int, default=1000, help="test images of the K = 1000 log-likelihood")
    p.add_argument("--only", nargs="*", default=None, help="model names to run (default: all)")
    p.add_argument("--out", default="runs/bench-autoencoders")
    p.add_argument("--json", default=None)
    p.add_argument("--summarize", default=None, metavar="JSON", help="print the table of a results file and exit")
    args = p.parse_args()
    if args.summarize:
        print(summarize(json.loads(Path(args.summarize).read_text())))
        return
    train, _, test = pyrovae.data.load_data(DataConfig(data_dir=args.data_dir, binarization="static",
                                                       train_size=args.train_size))
    train_x, train_y = train.x.flatten(1).numpy(), train.labels.numpy()
    test_x, test_y = test.x.flatten(1).numpy(), test.labels.numpy()
    reader = SampleReader(train_x[:10000], train_y[:10000], test_x[:1000])
    print(f"sample reader: test accuracy {reader.classifier.score(test_x, test_y):.3f}, test images' nearest-train "
          f"distance {reader.reference:.2f}")
    rows = []
    names = ["PCA", "probabilistic PCA", *TRAINED]
    for z in args.z_dims:
        for name in names:
            if args.only and name not in args.only:
                continue
            for seed in args.seeds:
                if name in ("PCA", "probabilistic PCA"):
                    row = linear_row(name, z, train_x, test_x, train_y, test_y, reader, seed)
                else:
                    row = trained_row(name, z, args, train_x, test_x, train_y, test_y, reader, seed)
                rows.append(row)
                ll = row["log_likelihood"]
                print(f"z={z} {name:28s} seed {seed}: BCE {row['bce'][0]:7.2f}  SE {row['squared_error'][0]:6.2f}  "
                      f"probe {row['probe']:.3f}  LL {'-' if ll is None else f'{ll[0]:.2f}'}  prior samples "
                      f"{row['prior_samples']}  GMM {row['gmm_samples']}", flush=True)
    results = {"settings": vars(args), "reader_reference": reader.reference, "rows": rows}
    print(summarize(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
