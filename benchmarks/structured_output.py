"""Quadrant completion (Sohn, Lee & Yan 2015; Pyro's CVAE tutorial): baseline network vs CVAE with 1, 2
and 3 visible quadrants.

For each number of visible quadrants, trains one run (the training of ``pyrovae structured``,
:func:`pyrovae.training.fit` on a :class:`pyrovae.models.StructuredConfig`: the baseline for
``--epochs`` epochs, then the CVAE for ``--epochs`` epochs on top of the frozen baseline; Adam 1e-3,
batch 128, z_dim 200, 500-500 MLPs, as the tutorial) and evaluates on the MNIST test set the negative
conditional log-likelihood -log p(y | x) in nats per image, counted over the hidden pixels only: exact
for the baseline (``StructuredCVAE.test_metrics``), importance-sampled with ``--k`` draws from
q(z | x, y) for the CVAE (:func:`pyrovae.evaluation.log_likelihood` on its programs; with the -ELBO
from the same draws beside it), and their difference image by image (baseline - CVAE, with its paired
standard error). Training images are binarized dynamically; test images once (seed 0). Writes these
test metrics to the run folder's ``metrics.json`` (``test``) with its figures, prints a markdown table
and writes JSON. A run folder that holds a checkpoint is resumed (a larger ``--epochs`` then extends the
CVAE stage only; the baseline keeps the epochs it was started with).

    python benchmarks/structured_output.py --epochs 50 --k 1000 --out runs/bench-structured

The tutorial's numbers (baseline 100.4 / 61.9 / 25.4, CVAE 71.8 / 51.0 / 24.2 nats) are not directly
comparable: they are 10-sample ELBOs (an upper bound on -log p(y|x) for the CVAE), on grey-valued pixels
(the tutorial does not binarize: its Bernoulli "likelihood" is the cross-entropy with grey targets), after
early stopping on the test set itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

from pyrovae.app.figures import draw_figures
from pyrovae.data import DataConfig, load_data
from pyrovae.evaluation import evaluate, summarize
from pyrovae.models import StructuredConfig
from pyrovae.models.structured import MASK_VALUE, split_quadrants
from pyrovae.training import CONFIG, RunConfig, fit, write_metrics

#: Pyro CVAE tutorial, 50 epochs, -(10-sample ELBO) on grey-valued test pixels (ANCHORS.md).
TUTORIAL = {1: {"baseline": 100.4, "cvae": 71.8}, 2: {"baseline": 61.9, "cvae": 51.0},
            3: {"baseline": 25.4, "cvae": 24.2}}


def quadrant_metrics(model, test, num_samples: int) -> dict:
    """-log p(y | x) on the test images, nats per image over the hidden pixels: ``baseline_neg_cll``
    (exact), ``cvae_neg_cll`` (importance-sampled, K = ``num_samples``), ``cvae_neg_elbo`` (from the same
    draws) and ``gap`` (baseline - CVAE, image by image: its stderr is the paired one), each as
    ``*_nats`` with ``*_stderr`` over images; ``visible``, ``hidden_pixels`` (per image),
    ``num_samples``, ``num_images``, ``seconds``."""
    t0 = time.perf_counter()
    per_image = evaluate(model, test, num_samples, progress=False, latent_statistics=False,
                         per_image=True)["per_image"]  # log p(y|x) of the CVAE's programs; the baseline's exact
    baseline, cvae = per_image["baseline_neg_cll"], per_image["log_likelihood"]
    x, _ = split_quadrants(test.images[:1], model.visible)
    metrics = {"visible": model.visible, "hidden_pixels": int((x[0] == MASK_VALUE).sum())}
    for name, values in (("baseline_neg_cll", baseline), ("cvae_neg_cll", -cvae),
                         ("cvae_neg_elbo", -per_image["elbo"]), ("gap", baseline + cvae)):
        summary = summarize(values)
        metrics.update({f"{name}_nats": summary["mean"], f"{name}_stderr": summary["stderr"]})
    metrics.update(num_samples=num_samples, num_images=len(test), seconds=time.perf_counter() - t0)
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=50, help="epochs of the baseline and then of the CVAE")
    p.add_argument("--k", type=int, default=1000, help="importance samples per test image")
    p.add_argument("--visible", default="1,2,3", help="comma-separated numbers of visible quadrants")
    p.add_argument("--z-dim", type=int, default=200)
    p.add_argument("--hidden", default="500,500")
    p.add_argument("--train-size", type=int, default=None, help="first N training images (smoke tests)")
    p.add_argument("--test-size", type=int, default=None, help="first N test images (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench-structured")
    p.add_argument("--json", default="benchmarks/results/structured_output.json")
    args = p.parse_args()

    rows, histories = [], {}
    for visible in [int(v) for v in args.visible.split(",") if v]:
        config = RunConfig(
            model=StructuredConfig(visible=visible, z_dim=args.z_dim,
                                   hidden=tuple(int(h) for h in args.hidden.split(","))),
            trainer={"epochs": args.epochs, "seed": args.seed, "device": args.device},
            data=DataConfig(train_size=args.train_size, test_size=args.test_size, data_dir=args.data_dir),
            evaluation={"num_samples": args.k})
        run_dir = Path(args.out) / f"q{visible}"
        t0 = time.perf_counter()
        data = load_data(config.data, config.trainer.seed)
        model, history = fit(config, run_dir, resume=(run_dir / "checkpoint.pt").exists(), data=data, progress=False)
        saved = RunConfig.load(run_dir / CONFIG)  # on resume, the run's own settings
        pyro.set_rng_seed(saved.trainer.seed)
        test = quadrant_metrics(model, data[2], args.k)
        test["binarization"] = (f"train {saved.data.binarization}; test binarized once (seed 0), "
                                f"{test['num_images']} images")
        write_metrics(run_dir, {"test": test})
        draw_figures(model, data[2], history, run_dir, seed=saved.trainer.seed)
        rows.append({**test, "train_seconds": sum(h["seconds"] for h in history),
                     "wall_seconds": time.perf_counter() - t0, "run_dir": str(run_dir),
                     "tutorial_baseline_nats": TUTORIAL[visible]["baseline"],
                     "tutorial_cvae_nats": TUTORIAL[visible]["cvae"]})
        histories[visible] = history
        print(json.dumps(rows[-1]), flush=True)

    n_test = rows[0]["num_images"] if rows else 0
    print(f"\n-log p(y|x), nats per test image over the hidden pixels; {args.epochs} epochs per network; "
          f"training images binarized dynamically, {n_test} test images binarized once (seed 0); CVAE "
          f"importance-sampled with K = {args.k}. Tutorial: 10-sample -ELBO on grey pixels, not comparable.\n")
    print("| visible | hidden px | baseline | CVAE (IS) | CVAE -ELBO | baseline - CVAE "
          "| tutorial baseline | tutorial CVAE |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['visible']} | {r['hidden_pixels']} "
              f"| {r['baseline_neg_cll_nats']:.2f} +- {r['baseline_neg_cll_stderr']:.2f} "
              f"| {r['cvae_neg_cll_nats']:.2f} +- {r['cvae_neg_cll_stderr']:.2f} | {r['cvae_neg_elbo_nats']:.2f} "
              f"| {r['gap_nats']:.2f} +- {r['gap_stderr']:.2f} "
              f"| {r['tutorial_baseline_nats']} | {r['tutorial_cvae_nats']} |")
    result = {
        "settings": {"epochs": args.epochs, "num_samples_K": args.k, "test_images": n_test,
                     "train_images": args.train_size or 60000, "z_dim": args.z_dim, "hidden": args.hidden,
                     "binarization": "training: dynamic (fresh Bernoulli draw per pass); test: binarized once, seed 0",
                     "pixels_counted": "hidden quadrants only", "torch_threads": torch.get_num_threads(),
                     "tutorial_note": "tutorial numbers: 10-sample ELBO on grey-valued pixels, early stopping "
                                      "on the test set; not comparable"},
        "rows": rows, "history": histories,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
