"""Structured output with a conditional VAE: complete MNIST digits from some of their quadrants.

The task of Sohn, Lee & Yan (2015) and of Pyro's CVAE tutorial. Each binarized digit is cut into four
quadrants; ``--visible`` of them (1, 2 or 3) are the input x and the rest are the output y to predict.
A deterministic baseline network predicts one blurry average; the CVAE draws a latent z from a learned
prior p(z | x) and decodes distinct, sharp completions from it. The script spells out what
``pyrovae structured`` does, on a slice of MNIST:

1. train the baseline f(x) on the Bernoulli NLL of the hidden pixels;
2. freeze it and train the CVAE (prior net, recognition net, generation net) on the ELBO with Pyro;
3. report -log p(y | x) on test images in nats over the hidden pixels: exact for the baseline,
   importance-sampled with K draws from q(z | x, y) for the CVAE;
4. draw inputs, truths, the baseline's prediction and CVAE samples to ``OUT/completions.png``.

Run it (about a minute on 2 CPU cores; MNIST from $PYROVAE_DATA or --data-dir)::

    OMP_NUM_THREADS=1 .venv/bin/python examples/structured_output.py --visible 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

from pyrovae.app.figures import draw_completions
from pyrovae.data import load_mnist
from pyrovae.evaluation import evaluate
from pyrovae.models.structured import BaselineNet, StructuredCVAE, split_quadrants
from pyrovae.training import make_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--visible", type=int, choices=(1, 2, 3), default=2, help="visible quadrants")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each network")
    p.add_argument("--train-size", type=int, default=10000, help="training images (of 60,000)")
    p.add_argument("--test-size", type=int, default=1000, help="test images (of 10,000)")
    p.add_argument("--k", type=int, default=100, help="importance samples per test image")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/example-structured")
    args = p.parse_args()

    pyro.set_rng_seed(0)
    # Dynamic binarization: a fresh Bernoulli draw of every training pixel at every pass; the test set
    # is binarized once (seed 0).
    train, _, test = load_mnist(args.data_dir, "dynamic", train_size=args.train_size)
    generator = torch.Generator().manual_seed(0)

    def batches():
        for batch in train.batches(128, generator=generator):
            yield split_quadrants(batch["x"], args.visible)  # x: -1 on hidden pixels; y: -1 on visible ones

    # 1. The baseline: maximum likelihood of the hidden pixels given the visible ones.
    baseline = BaselineNet(hidden=(500, 500))
    optimizer = make_optimizer(baseline.parameters(), 1e-3)
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        total = 0.0
        for x, y in batches():
            loss = baseline.neg_log_likelihood(x, y).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * x.shape[0]
        print(f"baseline epoch {epoch}: train -log p(y|x) {total / len(train):.2f} nats")

    # 2. The CVAE on top of the frozen baseline, whose prediction feeds the prior net p(z | x).
    cvae = StructuredCVAE(z_dim=200, hidden=(500, 500), baseline=baseline, visible=args.visible)
    optimizer = make_optimizer(cvae.cvae_parameters(), 1e-3)
    elbo = TraceMeanField_ELBO(max_plate_nesting=1)  # the KL between the two Normals in closed form
    for epoch in range(1, args.epochs + 1):
        total = 0.0
        for x, y in batches():
            loss = elbo.differentiable_loss(cvae.model, cvae.guide, x, y, num_data=len(train)) / len(train)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * x.shape[0]
        print(f"CVAE epoch {epoch}: train ELBO {-total / len(train):.2f} nats")
    print(f"trained in {time.perf_counter() - t0:.0f} s")

    # 3. -log p(y | x) on test images, hidden pixels only: the importance-sampled estimate over the CVAE's
    # programs with the cut images as their arguments, and the baseline's exact value.
    cvae.eval()
    m = evaluate(cvae, test.subset(slice(0, args.test_size)), num_samples=args.k, progress=False,
                 latent_statistics=False)
    print(f"\n-log p(y|x), nats per image over the hidden pixels, {m['num_images']} test images:")
    print(f"  baseline          {m['baseline_neg_cll']:7.2f} +- {m['baseline_neg_cll_stderr']:.2f}")
    print(f"  CVAE (K={args.k:<5})    {-m['log_likelihood_nats']:7.2f} +- {m['log_likelihood_stderr']:.2f}"
          f"   (-ELBO {-m['elbo_nats']:.2f})")

    # 4. The figure, in the folder --out names.
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(draw_completions(cvae, test.images[:10], out / "completions.png"))


if __name__ == "__main__":
    main()
