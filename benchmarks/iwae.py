"""VAE (ELBO) against IWAE (K = 5, 50) on dynamically binarized MNIST: test log-likelihood and active units.

Burda, Grosse & Salakhutdinov (2016, Table 1) train the same network on the ELBO and on the K-sample
importance-weighted bound and compare the test log-likelihood L_5000 (IWAE k=50 gains about 2 nats
over the VAE for 1 stochastic layer) and the number of active units. This script trains the default
50-d MLP VAE of ``RunConfig`` once per objective, with the same epochs, seed, data and settings, and
evaluates each on the MNIST test images (binarized once, seed 0) with K importance samples. Runs are
checkpointed under ``--out``: a second call resumes unfinished runs and re-evaluates finished ones.
Prints a markdown table and writes JSON.

    python benchmarks/iwae.py --epochs 10 --k 5000 --test-size 10000
    python benchmarks/iwae.py --epochs 1 --train-size 500 --k 10 --test-size 50   # smoke test (seconds)
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
from pyrovae.training import RunConfig, TrainerConfig, fit

OBJECTIVES = {"elbo": {"elbo": "TraceMeanField_ELBO", "num_particles": 1},
              "iwae5": {"elbo": "IWAE", "num_particles": 5},
              "iwae50": {"elbo": "IWAE", "num_particles": 50}}


def _active_units(vae, x, metrics: dict) -> int:
    """The active-unit count (Burda et al. 2016, threshold 0.01), from ``evaluate``'s metrics where it
    reports them, else from :func:`pyrovae.evaluation.active_units`."""
    if isinstance(metrics.get("active_units"), int):
        return metrics["active_units"]
    return int(evaluation.active_units(vae.model, vae.guide, x)["num_active"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="training epochs, the same for every objective")
    p.add_argument("--objectives", default="elbo,iwae50",
                   help=f"comma-separated, from {', '.join(OBJECTIVES)}")
    p.add_argument("--k", type=int, default=5000, help="importance samples for the test log-likelihood")
    p.add_argument("--test-size", type=int, default=10000, help="the first N MNIST test images")
    p.add_argument("--train-size", type=int, default=None, help="train on the first N training images")
    p.add_argument("--kl-warmup-epochs", type=float, default=TrainerConfig().kl_warmup_epochs,
                   help="linear KL warm-up (inside each IWAE weight: beta on log p(z) - log q(z|x)); "
                        "Burda et al. used none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench-iwae")
    p.add_argument("--json", default="benchmarks/results/iwae.json")
    args = p.parse_args()
    names = [n for n in args.objectives.split(",") if n]
    unknown = sorted(set(names) - set(OBJECTIVES))
    if unknown:
        p.error(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVES)}")
    if args.k < 1 or args.test_size < 1:
        p.error("--k and --test-size must be positive")

    base = RunConfig(trainer={"epochs": args.epochs, "seed": args.seed, "kl_warmup_epochs": args.kl_warmup_epochs},
                     data=DataConfig(train_size=args.train_size, data_dir=args.data_dir))
    data = load_data(base.data, base.trainer.seed)
    test = data[2].images[:args.test_size]
    rows, histories = [], {}
    for name in names:
        config = base.model_copy(update={"trainer": base.trainer.replace(**OBJECTIVES[name])})
        run_dir = Path(args.out) / name
        t0 = time.perf_counter()
        vae, history = fit(config, run_dir, resume=(run_dir / "checkpoint.pt").exists(), data=data)
        train_seconds = time.perf_counter() - t0
        pyro.set_rng_seed(0)
        m = evaluation.evaluate(vae, test, args.k, progress=False)
        rows.append({
            "objective": name, "elbo": config.trainer.elbo, "num_particles": config.trainer.num_particles,
            "nll_nats": -m["log_likelihood_nats"], "nll_stderr": m["log_likelihood_stderr"],
            "neg_elbo_nats": -m["elbo_nats"], "active_units": _active_units(vae, test, m),
            # the objective trained on (the IWAE bound for IWAE, the beta-weighted ELBO during warm-up):
            # what the old history's train_elbo held, now train_objective
            "final_train_objective_nats": history[-1]["train_objective"],
            "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
            "train_seconds_this_call": train_seconds, "eval_seconds": m["seconds"],
        })
        histories[name] = history
        print(json.dumps(rows[-1]), flush=True)

    print(f"\nTest NLL (nats), default {base.model.z_dim}-d MLP VAE, {args.epochs} epochs, dynamic binarization "
          f"of the training images, {len(test)} test images binarized once (seed 0), L_{args.k}\n")
    print("| objective | NLL | +- | -ELBO | active units | s/epoch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        label = "ELBO" if r["elbo"] != "IWAE" else f"IWAE k={r['num_particles']}"
        au = "n/a" if r["active_units"] is None else f"{r['active_units']} / {base.model.z_dim}"
        print(f"| {label} | {r['nll_nats']:.2f} | {r['nll_stderr']:.2f} | {r['neg_elbo_nats']:.2f} | {au} "
              f"| {r['seconds_per_epoch']:.1f} |")
    result = {
        "setting": {"binarization": "dynamic (training); test set binarized once with seed 0",
                    "eval_num_samples": args.k, "test_size": len(test), "epochs": args.epochs,
                    "train_size": len(data[0]), "active_units_threshold": 0.01},
        "config": base.to_dict(), "torch_threads": torch.get_num_threads(), "rows": rows, "history": histories,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
