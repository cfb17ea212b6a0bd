"""Semi-supervised MNIST with M2 (Kingma et al. 2014): classify digits from 100 labels and unlabelled images.

The label of an unlabelled image is summed out exactly (TraceEnum_ELBO over the guide's enumerated y site);
the 100 labels also train the classifier q(y|x) directly through Kingma et al.'s classification term.
With the defaults below (10,000 training images, a small network, 4 epochs) it runs in about 20 s on two
CPU cores; for the published setting use ``pyrovae semisupervised --labels 100 --epochs 50``.

    PYROVAE_DATA=/path/to/data .venv/bin/python examples/semisupervised_m2.py --out runs/m2-example

It trains with the KL term of z weighed by beta = 4 (``--beta``): after a few epochs on the plain ELBO
(``--beta 1``) the decoder draws the digit that z carries whatever the label says (every row of the grid
alike), since z is cheap enough to hold the digit too; a costlier z leaves the digit to y, as in
``examples/conditional_vae.py``. It prints the test accuracy after each epoch and how often M2's own
classifier reads the label asked for in its samples, and writes ``samples_by_digit.png`` (one row per
digit, one style z per column), ``analogies.png`` (test images, each one's style with every label) and
``accuracy.png`` to ``--out``. A folder that already holds a run is resumed (up to ``--epochs``), never
overwritten.
"""

import argparse
import logging
from pathlib import Path

import pyro
import torch

from pyrovae import DataConfig, M2Config, RunConfig, TrainerConfig, fit
from pyrovae.app.figures import draw_m2_figures, samples_by_digit
from pyrovae.data import load_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--labels", type=int, default=100, help="labelled images, equal per digit")
    parser.add_argument("--train-size", type=int, default=10_000, help="training images (labelled + unlabelled)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--beta", type=float, default=4.0, help="weight on the KL term of z (1: the ELBO)")
    parser.add_argument("--data-dir", default=None, help="MNIST root (default: $PYROVAE_DATA)")
    parser.add_argument("--out", default="runs/m2-example", help="the run folder, with the pictures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    config = RunConfig(model=M2Config(num_labels=args.labels, z_dim=16, hidden=(256,)),
                       trainer=TrainerConfig(epochs=args.epochs, batch_size=100, lr=1e-3, beta=args.beta,
                                             kl_warmup_epochs=0),
                       data=DataConfig(train_size=args.train_size, data_dir=args.data_dir))
    resume = (Path(args.out) / "checkpoint.pt").exists()  # never delete a folder: continue the run in it
    data = load_data(config.data, config.trainer.seed)
    m2, history = fit(config, args.out, resume=resume, data=data, progress=False)
    for row in history:
        print(f"epoch {row['epoch']}: test accuracy {row['test_accuracy']:.4f}, "
              f"unlabelled ELBO {row['train_unlabelled_elbo']:.1f} nats")

    test = data[2]
    x, y = test.images[:8], test.labels[:8]
    print("true labels     ", y.tolist())
    print("M2.classify(x)  ", m2.classify(x).tolist())
    print("q(y|x) of the first image:", [round(p, 3) for p in m2.predict_proba(x[:1])[0].tolist()])
    # What the generator learned: M2's classifier reads its draws of each label as that label this often.
    pyro.set_rng_seed(0)
    drawn = torch.bernoulli(samples_by_digit(m2, 10).clamp(0, 1))  # label-major: 10 draws of 0, then of 1, ...
    asked = torch.arange(m2.num_classes).repeat_interleave(10)
    print(f"samples read as the label asked for: {(m2.classify(drawn) == asked).float().mean().item():.2f}")
    torch.manual_seed(0)
    for path in draw_m2_figures(m2, test, history, Path(args.out)):
        print("wrote", path)


if __name__ == "__main__":
    main()
