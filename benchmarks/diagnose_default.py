"""Posterior diagnostics of the default 50-d MLP VAE: the table of pyrovae issue 5.

Loads a trained run (default ``runs/bench-loglik-warmup``, the default model trained 100 epochs; it is
only read: its checkpoint and config are copied to ``--out`` and every output is written there) and
runs :func:`pyrovae.diagnostics.diagnose` on the first ``--num-images`` test images (test set
binarized once with seed 0, whatever the run's seed): log p(x) (importance sampled from the mixture of q and the
per-image optimum q*), ELBO, inference / amortization / approximation gaps (Cremer et al. 2018),
active units (Burda et al. 2016), the share of images with PSIS k-hat > 0.7 (Yao et al. 2018), the
linear-probe accuracy on the posterior means (:func:`pyrovae.evaluation.linear_probe`) and the
wall time of NUTS on one image's 50-d posterior. Prints a table and writes JSON.

    python benchmarks/diagnose_default.py --run runs/bench-loglik-warmup --out runs/bench-diagnose
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from pyrovae.data import load_mnist
from pyrovae.diagnostics import diagnose
from pyrovae.evaluation import linear_probe
from pyrovae.training import CHECKPOINT, CONFIG, load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/bench-loglik-warmup", help="trained run folder (read only)")
    p.add_argument("--out", default="runs/bench-diagnose", help="where the copy and the diagnostics go")
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--num-samples", type=int, default=1000, help="draws of q(z|x) per image (k-hat, ELBO)")
    p.add_argument("--mcmc-images", type=int, default=2)
    p.add_argument("--mcmc-samples", type=int, default=500)
    p.add_argument("--mcmc-warmup", type=int, default=500)
    p.add_argument("--gap-steps", type=int, default=300)
    p.add_argument("--ll-samples", type=int, default=5000, help="K per proposal for log p(x)")
    p.add_argument("--probe-train-size", type=int, default=10_000)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default="benchmarks/results/diagnose_default.json")
    args = p.parse_args()

    run, out = Path(args.run), Path(args.out)
    if out.resolve() == run.resolve():
        raise SystemExit("--out must differ from --run: the trained run is read only")
    out.mkdir(parents=True, exist_ok=True)
    for name in (CHECKPOINT, CONFIG):
        if (run / name).exists():
            shutil.copyfile(run / name, out / name)
    vae, config, _ = load_run(out)
    data_dir = args.data_dir or os.environ.get("PYROVAE_DATA") or config.data.data_dir
    seed = config.trainer.seed
    train, _, test = load_mnist(data_dir, config.data.binarization, 0, seed=seed, train_size=args.probe_train_size)

    t0 = time.perf_counter()
    result = diagnose(vae, test.images, out, num_images=args.num_images, num_samples=args.num_samples,
                      mcmc_images=args.mcmc_images, mcmc_samples=args.mcmc_samples, mcmc_warmup=args.mcmc_warmup,
                      gap_steps=args.gap_steps, log_likelihood_samples=args.ll_samples, seed=seed)
    seconds = time.perf_counter() - t0
    s = result["summary"]

    train_x = train.get(torch.arange(len(train)), torch.Generator().manual_seed(seed))
    probe = linear_probe(vae.model, vae.guide, (train_x,), train.labels, (test.images,), test.labels)

    rows = [(f"log p(x), IS K={args.ll_samples} x 2 (nats)", s.get("log_likelihood_nats")),
            ("ELBO (nats)", s.get("elbo_nats")),
            ("ELBO(q*), per-image optimum (nats)", s.get("elbo_optimized_nats")),
            ("inference gap (nats)", s.get("inference_gap_nats")),
            ("amortization gap (nats)", s.get("amortization_gap_nats")),
            ("approximation gap (nats)", s.get("approximation_gap_nats"))]
    print(f"\nPosterior diagnostics, {args.run}, first {s['num_images']} test images (binarized once, seed 0)")
    for label, value in rows:
        if value is not None:
            print(f"{label:<42} {value['mean']:>9.2f} +- {value['stderr']:.2f}")
    print(f"{'active units (of ' + str(s['z_dim']) + ')':<42} {s['active_units']:>9d}")
    print(f"{'share of images with k-hat > 0.7':<42} {s['share_khat_above_0.7']:>9.2f}")
    print(f"{'median k-hat':<42} {s['median_khat'] if s['median_khat'] is not None else float('-inf'):>9.2f}")
    print(f"{'linear probe accuracy (10,000 test images)':<42} {probe['accuracy']:>9.4f}   "
          f"(chance {probe['chance_accuracy']:.2f}, {probe['num_train']} training images)")
    if "nuts_seconds_per_image" in s:
        print(f"{'NUTS seconds, one image (2 chains x ' + str(args.mcmc_warmup + args.mcmc_samples) + ')':<42} "
              f"{s['nuts_seconds_per_image']:>9.1f}   (max R-hat {s['nuts_max_rhat']:.3f})")

    record = {"run": str(run), "out": str(out), "settings": vars(args), "summary": s, "linear_probe": probe,
              "mcmc": [{k: m[k] for k in ("image", "seconds", "max_rhat", "min_ess_bulk", "min_ess_tail",
                                          "divergences", "step_size", "khat")} for m in result["mcmc"]],
              "seconds": {**result["seconds"], "wall": seconds}, "torch_threads": torch.get_num_threads()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    print(f"\nreport: {out / 'diagnostics.md'}; JSON: {args.json}")


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    main()
