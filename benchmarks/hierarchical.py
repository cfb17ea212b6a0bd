"""One stochastic layer (the default VAE), two (Burda et al. 2016) and the ladder VAE (Sonderby et al. 2016) on
dynamically binarized MNIST at equal budgets (issue 23): test NLL, seconds per epoch, active units per layer.

Every model trains with the same trainer settings, seed and data; one complete run (its own cosine schedule and
KL warm-up) per epoch budget, checkpointed under ``--out`` (a second call resumes unfinished runs and
re-evaluates finished ones). The test images are binarized once (seed 0) and evaluated with K importance samples
over all latent layers jointly. Prints a markdown table and writes JSON.

    python benchmarks/hierarchical.py                                    # the issue's: 10/30/100 epochs, K = 5000,
                                                                         # all 10,000 test images (CPU: many hours)
    python benchmarks/hierarchical.py --epochs 5 --train-size 10000 --k 500 --test-images 1000   # minutes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

from pyrovae import evaluation
from pyrovae.data import DataConfig, load_data
from pyrovae.models import HierarchicalConfig, VAEConfig
from pyrovae.training import RunConfig, TrainerConfig, fit

MODELS = {"one-layer": lambda a: VAEConfig(),
          "two-layer": lambda a: HierarchicalConfig(layers=a.layers),
          "ladder": lambda a: HierarchicalConfig(layers=a.layers, ladder=True)}


def _active_units(metrics: dict, model) -> str:
    """``"a1 / d1, a2 / d2"`` bottom to top, from ``evaluate``'s per-layer (or single-layer) counts."""
    sites = getattr(model, "latent_sites", None)
    if not sites:
        return f"{metrics['active_units']} / {model.z_dim}"
    return ", ".join(f"{metrics[f'active_units_{s}']} / {d}" for s, d in zip(sites, model.layers))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", default="10,30,100", help="comma-separated epoch budgets, one complete run each")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--layers", default="64,32", help="the hierarchical models' latent sizes, bottom to top")
    p.add_argument("--k", type=int, default=5000, help="importance samples K for the test log-likelihood")
    p.add_argument("--test-images", type=int, default=10000, help="the first N MNIST test images")
    p.add_argument("--train-size", type=int, default=None, help="train on the first N training images")
    p.add_argument("--kl-warmup-epochs", type=float, default=TrainerConfig().kl_warmup_epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench-hierarchical")
    p.add_argument("--json", default="benchmarks/results/hierarchical.json")
    args = p.parse_args()
    args.layers = tuple(int(s) for s in args.layers.split(","))
    budgets = [int(s) for s in args.epochs.split(",")]
    names = [n for n in args.models.split(",") if n]
    if set(names) - set(MODELS):
        p.error(f"unknown model(s) {', '.join(sorted(set(names) - set(MODELS)))}; choose from {', '.join(MODELS)}")
    if args.k < 1 or args.test_images < 1 or min(budgets) < 1:
        p.error("--k, --test-images and every epoch budget must be positive")

    data_config = DataConfig(train_size=args.train_size, data_dir=args.data_dir)
    data = load_data(data_config, args.seed)
    test = data[2].images[:args.test_images]
    rows = []
    for epochs in budgets:
        for name in names:
            config = RunConfig(model=MODELS[name](args), data=data_config,
                               trainer={"epochs": epochs, "seed": args.seed, "kl_warmup_epochs": args.kl_warmup_epochs})
            run_dir = Path(args.out) / f"{name}-{epochs}"
            model, history = fit(config, run_dir, resume=(run_dir / "checkpoint.pt").exists(), data=data,
                                 progress=False)
            pyro.set_rng_seed(0)
            t0 = time.perf_counter()
            m = evaluation.evaluate(model, test, args.k, progress=False)
            rows.append({"model": name, "epochs": epochs, "nll_nats": -m["log_likelihood_nats"],
                         "nll_stderr": m["log_likelihood_stderr"], "neg_elbo_nats": -m["elbo_nats"],
                         "kl_nats": m["kl_nats"], "active_units": _active_units(m, model),
                         "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
                         "eval_seconds": time.perf_counter() - t0,
                         "parameters": sum(q.numel() for q in model.parameters())})
            print(json.dumps(rows[-1]), flush=True)

    print(f"\nTest NLL (nats) on {len(test)} MNIST test images binarized once (seed 0), L_{args.k}; training on "
          f"{len(data[0])} dynamically binarized images, seed {args.seed}, KL warm-up {args.kl_warmup_epochs:g} "
          f"epochs; {torch.get_num_threads()} torch thread(s)\n")
    print("| model | epochs | NLL | +- | -ELBO | KL | active units (bottom to top) | s/epoch | parameters |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['epochs']} | {r['nll_nats']:.2f} | {r['nll_stderr']:.2f} "
              f"| {r['neg_elbo_nats']:.2f} | {r['kl_nats']:.2f} | {r['active_units']} "
              f"| {r['seconds_per_epoch']:.1f} | {r['parameters']:,} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"setting": vars(args) | {"layers": list(args.layers)},
                                           "train_size": len(data[0]), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
