"""Priors, guides and likelihoods side by side at an equal training budget (issue 3).

Two suites, each training one run per variant with everything else at the defaults (50-d MLP VAE
784-512-512-50, TraceMeanField_ELBO with the KL analytic where it can be and Monte Carlo elsewhere,
Adam 1e-3 cosine, batch 100, KL warm-up, seed 0) for the same number of epochs, then evaluating the
importance-sampled test log-likelihood with K samples:

* ``--suite priors``: dynamically binarized MNIST, Bernoulli likelihood; the standard Normal, mixture
  (10 components), VampPrior (500 pseudo-inputs) and flow priors with the diagonal Normal guide, and
  the low-rank Normal and IAF guides with the standard Normal prior. Comparable with each other and
  with the literature's dynamic-binarization numbers at the same K (Tomczak & Welling 2018: VampPrior
  85.57 nats, K = 5000, one stochastic layer, far longer training).
* ``--suite grey``: grey-value MNIST (binarization none, values k/255), continuous Bernoulli, Beta
  (values clamped to [1e-3, 1 - 1e-3]) and Normal (learned scale) likelihoods. Reported in nats per image
  and bits per dimension. These are densities of continuous values, comparable only among models of
  the same data transform: the Beta's clamped data is not the others' data, and none of them is
  comparable with a discrete 8-bit likelihood or with binarized-MNIST numbers.

    python benchmarks/plugins.py --suite priors --epochs 100 --k 5000 --data-dir ../shared/data
    python benchmarks/plugins.py --suite grey --epochs 30 --k 1000 --data-dir ../shared/data

Prints a table and writes ``benchmarks/results/plugins-<suite>.json``. Each run folder is kept under
``--out`` and resumed when the script is started again.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import pyro
import torch

from pyrovae.config import ModelConfig, RunConfig
from pyrovae.data import ImageDataset
from pyrovae.evaluate import log_likelihood, summarize
from pyrovae.train import fit, load_data

PRIOR_SUITE = {
    "standard_normal / diagonal_normal": dict(),
    "mixture(10) / diagonal_normal": dict(prior="mixture", prior_options={"num_components": 10}),
    "vamp(500) / diagonal_normal": dict(prior="vamp", prior_options={"num_components": 500}),
    "flow(spline x2) / diagonal_normal": dict(prior="flow", prior_options={"num_flows": 2, "kind": "spline"}),
    "standard_normal / low_rank_normal(2)": dict(guide="low_rank_normal", guide_options={"rank": 2}),
    "standard_normal / iaf(2)": dict(guide="iaf", guide_options={"num_flows": 2}),
}
GREY_SUITE = {
    "continuous_bernoulli": dict(likelihood="continuous_bernoulli"),
    "beta (data clamped to [1e-3, 1-1e-3])": dict(likelihood="beta"),
    "normal (learned scale)": dict(likelihood="normal", likelihood_options={"learned_scale": True}),
}


def clamp(data: ImageDataset, eps: float = 1e-3) -> ImageDataset:
    return ImageDataset(data.images.float().clamp(eps, 1 - eps), data.labels, "none")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("priors", "grey"), required=True)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--max-chunk", type=int, default=8192,
                   help="(sample, image) pairs per pass; the VampPrior needs K_components times more memory")
    p.add_argument("--test-size", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--train-size", type=int, default=None, help="train on the first N images (smoke tests)")
    p.add_argument("--only", default=None, help="comma-separated variant names to run")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench-plugins")
    args = p.parse_args()

    suite = PRIOR_SUITE if args.suite == "priors" else GREY_SUITE
    binarization = "dynamic" if args.suite == "priors" else "none"
    names = [n for n in suite if args.only is None or n in args.only.split(",")]
    rows, per_image = [], {}
    for name in names:
        config = RunConfig(epochs=args.epochs, binarization=binarization, data_dir=args.data_dir,
                           train_size=args.train_size,
                           model=ModelConfig(**suite[name]))
        data = load_data(config)
        if config.model.likelihood == "beta":
            data = (clamp(data[0]), None, clamp(data[2]))
        run_dir = Path(args.out) / args.suite / re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        t0 = time.perf_counter()
        vae, history = fit(config, run_dir, resume=(run_dir / "checkpoint.pt").exists(), data=data)
        train_seconds = time.perf_counter() - t0
        test = data[2].images[:args.test_size].float()
        per_image_path = run_dir / f"test-loglik-K{args.k}-n{len(test)}.pt"
        t0 = time.perf_counter()
        if per_image_path.exists():
            out = torch.load(per_image_path)
        else:
            pyro.set_rng_seed(0)
            out = log_likelihood(vae, test, args.k, max_chunk=args.max_chunk, progress=False)
            torch.save(out, per_image_path)
        ll, elbo = summarize(out["log_likelihood"]), summarize(out["elbo"])
        per_image[name] = out["log_likelihood"]
        first = per_image[names[0]]
        paired = summarize(out["log_likelihood"] - first) if name != names[0] else {"mean": 0.0, "stderr": 0.0}
        rows.append({"variant": name, "config": RunConfig.load(run_dir / "config.json").to_dict(),
                     "log_likelihood_nats": ll["mean"], "stderr": ll["stderr"],
                     "gain_over_first_nats": paired["mean"], "gain_stderr": paired["stderr"],
                     "elbo_nats": elbo["mean"], "bits_per_dim": -ll["mean"] / (784 * math.log(2)),
                     "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t0})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "config"}), flush=True)

    what = ("dynamically binarized MNIST, Bernoulli likelihood" if args.suite == "priors" else
            "grey-value MNIST (k/255; binarization none)")
    print(f"\nTest log-likelihood, {what}; {args.epochs} epochs each; K = {args.k}; "
          f"{args.test_size or 10000} test images")
    print(f"Gain = paired difference in log p(x) against the first row on the same images (+- its stderr)")
    print(f"| {'variant':<40} | {'KL term':>11} | {'log p(x) (nats)':>15} | {'+-':>5} | {'gain':>6} | {'+-':>5} "
          f"| {'ELBO':>8} | {'bits/dim':>8} |")
    print(f"|{'-' * 42}|{'-' * 12}:|{'-' * 16}:|{'-' * 6}:|{'-' * 7}:|{'-' * 6}:|{'-' * 9}:|{'-' * 9}:|")
    for r in rows:
        print(f"| {r['variant']:<40} | {r['config']['kl_term']:>11} | {r['log_likelihood_nats']:>15.2f} | "
              f"{r['stderr']:>5.2f} | {r['gain_over_first_nats']:>6.2f} | {r['gain_stderr']:>5.2f} "
              f"| {r['elbo_nats']:>8.2f} | {r['bits_per_dim']:>8.4f} |")
    path = Path(f"benchmarks/results/plugins-{args.suite}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"suite": args.suite, "epochs": args.epochs, "K": args.k,
                                   "test_images": args.test_size or 10000, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
