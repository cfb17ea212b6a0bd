"""Test log-likelihood of the default 50-d MLP VAE on dynamically binarized MNIST, over one training run.

Trains one run with the default config (or the options given) and evaluates snapshots taken at chosen
epochs: K = 1000 importance samples at every snapshot (comparable with the issue's pure-PyTorch scale,
which used K = 1000) and K = 5000 at the last epoch (the number papers report). The test set is the
10,000 MNIST test images binarized once with seed 0. Prints a table and writes JSON.

    python benchmarks/mnist_loglik.py --epochs 100 --snapshots 10,30 --out runs/bench-loglik
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pyro
import torch

from pyrovae.data import DataConfig, load_data
from pyrovae.evaluation import evaluate
from pyrovae.training import RunConfig, fit, load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--snapshots", default="10,30", help="epochs (besides the last) to evaluate")
    p.add_argument("--k-final", type=int, default=5000)
    p.add_argument("--k-snapshot", type=int, default=1000)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench-loglik")
    p.add_argument("--json", default="benchmarks/results/mnist_loglik.json")
    args = p.parse_args()

    out = Path(args.out)
    snapshots = sorted({int(e) for e in args.snapshots.split(",") if e} - {args.epochs})
    config = RunConfig(trainer={"epochs": args.epochs}, data=DataConfig(data_dir=args.data_dir))
    data = load_data(config.data, config.trainer.seed)

    def snapshot(vae, row, ckpt):
        if row["epoch"] in snapshots:
            shutil.copyfile(ckpt, out / f"checkpoint-epoch{row['epoch']}.pt")

    t0 = time.perf_counter()
    if (out / "checkpoint.pt").exists():
        vae, history = fit(config, out, resume=True, data=data, on_epoch_end=snapshot)
    else:
        vae, history = fit(config, out, data=data, on_epoch_end=snapshot)
    train_seconds = time.perf_counter() - t0

    rows = []
    for epoch in snapshots + [args.epochs]:
        path = out / (f"checkpoint-epoch{epoch}.pt" if epoch != args.epochs else "checkpoint.pt")
        tmp = out / f"_eval{epoch}"
        tmp.mkdir(exist_ok=True)
        shutil.copyfile(path, tmp / "checkpoint.pt")
        vae, _, _ = load_run(tmp)
        for k in [args.k_snapshot] + ([args.k_final] if epoch == args.epochs else []):
            pyro.set_rng_seed(0)
            m = evaluate(vae, data[2].images, k, progress=False)
            rows.append({"epoch": epoch, "K": k, "nll_nats": -m["log_likelihood_nats"],
                         "stderr": m["log_likelihood_stderr"], "neg_elbo_nats": -m["elbo_nats"],
                         "eval_seconds": m["seconds"]})
            print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(tmp)

    print("\nTest NLL (nats), default 50-d MLP VAE, dynamic binarization, test set binarized once (seed 0)")
    print(f"{'epoch':>6} {'K':>6} {'NLL':>8} {'+-':>6} {'-ELBO':>8}")
    for r in rows:
        print(f"{r['epoch']:>6} {r['K']:>6} {r['nll_nats']:>8.2f} {r['stderr']:>6.2f} {r['neg_elbo_nats']:>8.2f}")
    result = {"config": config.to_dict(), "train_seconds": train_seconds, "torch_threads": torch.get_num_threads(),
              "rows": rows, "history": history}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
