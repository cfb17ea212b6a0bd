"""Wall time of the NUTS reference posterior on one MNIST image's 50-d posterior (pyrovae issue 5).

Runs :func:`pyrovae.diagnostics.mcmc_reference` with its defaults (2 chains x (500 warm-up + 500 draws),
JIT-compiled potential) on test images of a trained run (default ``runs/bench-loglik-warmup``, the
default 50-d MLP VAE; only read), once with the chains one after another in this process
(``num_workers=1``) and once with one worker process per chain, and prints wall seconds, R-hat, ESS and
step sizes per setting. Both use the same seeds, but this process runs ``torch.get_num_threads()``
threads and each worker its share of them, and the different rounding sends NUTS along other (equally
valid) trajectories: R-hat and ESS differ a little between the settings. Absolute seconds depend on the
machine and its load: the ratio is the result.

    python benchmarks/nuts_speed.py --run runs/bench-loglik-warmup --images 0 1
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from pyrovae.data import load_mnist
from pyrovae.diagnostics import mcmc_reference
from pyrovae.training import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/bench-loglik-warmup", help="trained run folder (read only)")
    p.add_argument("--images", type=int, nargs="+", default=[0], help="test image indices")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="num_workers settings to time")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default="benchmarks/results/nuts_speed.json")
    args = p.parse_args()

    vae, config, _ = load_run(args.run)
    data_dir = args.data_dir or os.environ.get("PYROVAE_DATA") or config.data.data_dir
    _, _, test = load_mnist(data_dir, config.data.binarization, 0, seed=config.trainer.seed, train_size=1)
    rows = []
    for i in args.images:
        for workers in args.workers:
            ref = mcmc_reference(vae.model, test.images[i:i + 1], num_samples=args.samples, warmup=args.warmup,
                                 num_chains=args.chains, seed=config.trainer.seed, num_workers=workers)
            rows.append({"image": i, "num_workers": ref["num_workers"], "seconds": ref["seconds"],
                         "max_rhat": ref["rhat"].max().item(), "min_ess_bulk": ref["ess_bulk"].min().item(),
                         "divergences": ref["divergences"], "step_size": ref["step_size"]})
    print(f"NUTS on one image's {vae.z_dim}-d posterior: {args.chains} chains x ({args.warmup} warm-up + "
          f"{args.samples} draws), torch threads in this process {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs\n")
    print("| image | workers | wall s | max R-hat | min ESS bulk | divergences | step sizes |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['image']} | {r['num_workers']} | {r['seconds']:.1f} | {r['max_rhat']:.3f} | "
              f"{r['min_ess_bulk']:.0f} | {r['divergences']} | {', '.join(f'{s:.3f}' for s in r['step_size'])} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
