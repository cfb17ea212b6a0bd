"""Priors, guides and likelihoods side by side at an equal training budget (issue 3).

Two suites, each training one run per variant with everything else at the defaults (50-d MLP VAE
784-512-512-50, TraceMeanField_ELBO with the KL analytic where it can be and Monte Carlo elsewhere,
Adam 1e-3 cosine, batch 100, KL warm-up, seed 0) for the same number of epochs, then evaluating the
importance-sampled test log-likelihood with K samples:

* ``--suite priors``: dynamically binarized MNIST, Bernoulli likelihood; the standard Normal, mixture
  (10 components), VampPrior (500 pseudo-inputs) and flow priors with the diagonal Normal guide, and
  the low-rank Normal and IAF guides with the standard Normal prior. Comparable with each other (the
  table's "gain" column is the paired difference on the same test images) and with the literature's
  dynamic-binarization numbers at the same K (Burda et al. 2016: VAE 86.76 nats). Tomczak & Welling's
  VampPrior 85.57 nats is on *static* MNIST, about 2 nats harder, after up to 2000 epochs: not comparable.
* ``--suite grey``: 8-bit grey-value MNIST. Continuous Bernoulli, Beta and Normal (learned scale)
  densities are fitted to uniformly dequantized grey levels (k + u) / 256 (``binarization="dequantize"``;
  without it the exact zeros of the background let a learned scale collapse and the density diverge),
  and the discretized logistic to the levels k / 255 themselves. Reported in nats per image and in bits
  per dimension of the 8-bit data: for the dequantized densities D log 256 is added (an upper bound on
  the discrete model's bits/dim, Theis et al. 2016), which makes all four rows comparable with each
  other. None of them is comparable with binarized-MNIST numbers, and the nats column is comparable
  only among the three dequantized rows.

    python benchmarks/plugins.py --suite priors --epochs 100 --k 5000 --data-dir ../shared/data
    python benchmarks/plugins.py --suite grey --epochs 30 --k 1000 --test-size 2000 --data-dir ../shared/data

Prints a table and writes ``benchmarks/results/plugins-<suite>.json``. Each run folder is kept under
``--out`` and resumed when the script is started again.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

import pyro
import torch

from pyrovae.data import DataConfig, load_data
from pyrovae.evaluation import log_likelihood, summarize
from pyrovae.models import VAEConfig
from pyrovae.training import RunConfig, fit, read_metrics

PRIOR_SUITE = {
    "standard_normal / diagonal_normal": dict(),
    "mixture(10) / diagonal_normal": dict(prior="mixture", prior_options={"num_components": 10}),
    "vamp(500) / diagonal_normal": dict(prior="vamp", prior_options={"num_components": 500}),
    "flow(spline x2) / diagonal_normal": dict(prior="flow", prior_options={"num_flows": 2, "kind": "spline"}),
    "standard_normal / low_rank_normal(2)": dict(guide="low_rank_normal", guide_options={"rank": 2}),
    "standard_normal / iaf(2)": dict(guide="iaf", guide_options={"num_flows": 2}),
}
#: variant -> (VAEConfig fields, data transform). Continuous densities see uniformly dequantized grey
#: levels (k + u) / 256; the discretized logistic sees the 8-bit levels k / 255 themselves.
GREY_SUITE = {
    "continuous_bernoulli": (dict(likelihood="continuous_bernoulli"), "dequantize"),
    "beta": (dict(likelihood="beta"), "dequantize"),
    "normal (learned scale)": (dict(likelihood="normal", likelihood_options={"learned_scale": True}), "dequantize"),
    "discretized_logistic (8-bit)": (dict(likelihood="discretized_logistic"), "none"),
}
DIMS = 784


def bits_per_dim(log_likelihood_nats: float, binarization: str) -> float:
    """Bits per dimension of the 8-bit (or binary) data. For a density on dequantized levels (k + u) / 256
    this adds D log 256 (the change of variables from [0, 256)^D to [0, 1)^D): an upper bound on the
    discrete model's bits/dim, comparable with discrete likelihoods (Theis et al. 2016)."""
    shift = DIMS * math.log(256) if binarization == "dequantize" else 0.0
    return (-log_likelihood_nats + shift) / (DIMS * math.log(2))


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
    names = [n for n in suite if args.only is None or n in args.only.split(",")]
    rows, per_image = [], {}
    for name in names:
        fields, binarization = suite[name] if args.suite == "grey" else (suite[name], "dynamic")
        config = RunConfig(model=VAEConfig(**fields), trainer={"epochs": args.epochs},
                           data=DataConfig(binarization=binarization, data_dir=args.data_dir,
                                           train_size=args.train_size))
        data = load_data(config.data, config.trainer.seed)
        run_dir = Path(args.out) / args.suite / re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        vae, history = fit(config, run_dir, resume=(run_dir / "checkpoint.pt").exists(), data=data)
        # the median epoch: robust to a run resumed, or paused by a busy machine, part of the way through
        epoch_seconds = statistics.median(row["seconds"] for row in history)
        test = data[2].images[:args.test_size].float()
        per_image_path = run_dir / f"test-loglik-K{args.k}-n{len(test)}.pt"
        if per_image_path.exists():  # cached by an earlier call; its "seconds" (if recorded) came with it
            out = torch.load(per_image_path)
        else:
            pyro.set_rng_seed(0)
            out = log_likelihood(vae.model, vae.guide, test, num_samples=args.k, max_chunk=args.max_chunk,
                                 progress=False)
            torch.save(out, per_image_path)
        ll, elbo = summarize(out["log_likelihood"]), summarize(out["elbo"])
        # Paired gains are taken on the log-probability of the data as stored (binary or 8-bit levels).
        per_image[name] = out["log_likelihood"] - (DIMS * math.log(256) if binarization == "dequantize" else 0.0)
        first = per_image[names[0]]
        paired = summarize(per_image[name] - first) if name != names[0] else {"mean": 0.0, "stderr": 0.0}
        # how the ELBO's KL term was computed (analytic / monte_carlo): recorded by fit in metrics.json
        kl_term = read_metrics(run_dir).get("training", {}).get("kl_term")
        rows.append({"variant": name, "config": RunConfig.load(run_dir / "config.json").to_dict(),
                     "kl_term": kl_term,
                     "log_likelihood_nats": ll["mean"], "stderr": ll["stderr"],
                     "gain_over_first_nats": paired["mean"], "gain_stderr": paired["stderr"],
                     "elbo_nats": elbo["mean"], "bits_per_dim": bits_per_dim(ll["mean"], binarization),
                     "epoch_seconds_median": epoch_seconds, "eval_seconds": out.get("seconds")})  # absent in caches older than it
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "config"}), flush=True)

    what = ("dynamically binarized MNIST, Bernoulli likelihood" if args.suite == "priors" else
            "8-bit grey MNIST; densities on dequantized (k + u) / 256, discretized logistic on k / 255; "
            "bits/dim of the 8-bit data")
    print(f"\nTest log-likelihood, {what}; {args.epochs} epochs each; K = {args.k}; "
          f"{args.test_size or 10000} test images")
    print("Gain = paired difference against the first row on the same images (+- its stderr), in nats of "
          + ("the binary data" if args.suite == "priors" else "the 8-bit data (dequantized densities - D log 256)"))
    print(f"| {'variant':<40} | {'KL term':>11} | {'log p(x) (nats)':>15} | {'+-':>5} | {'gain':>6} | {'+-':>5} "
          f"| {'ELBO':>8} | {'bits/dim':>8} |")
    print(f"|{'-' * 42}|{'-' * 12}:|{'-' * 16}:|{'-' * 6}:|{'-' * 7}:|{'-' * 6}:|{'-' * 9}:|{'-' * 9}:|")
    for r in rows:
        print(f"| {r['variant']:<40} | {str(r['kl_term']):>11} | {r['log_likelihood_nats']:>15.2f} | "
              f"{r['stderr']:>5.2f} | {r['gain_over_first_nats']:>6.2f} | {r['gain_stderr']:>5.2f} "
              f"| {r['elbo_nats']:>8.2f} | {r['bits_per_dim']:>8.4f} |")
    path = Path(f"benchmarks/results/plugins-{args.suite}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"suite": args.suite, "epochs": args.epochs, "K": args.k,
                                   "test_images": args.test_size or 10000, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
