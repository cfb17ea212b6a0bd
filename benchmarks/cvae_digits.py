"""Does a label-conditional VAE draw the digit it is asked for? A classifier decides.

1. Trains a classifier on the MNIST training pixels (grey values k/255): scikit-learn's multinomial
   ``LogisticRegression`` (default) or ``--classifier mlp`` (``MLPClassifier``, one hidden layer of 256),
   and reports its accuracy on the 10,000 test images.
2. For each KL weight in ``--beta`` (default ``1,4``: the ELBO itself and a beta-CVAE), trains a CVAE
   (``pyrovae train --conditional``'s loop: dynamic binarization, Bernoulli likelihood, no KL warm-up by
   default) for ``--epochs``, and reports its test log p(x | y) (K importance samples, the 10,000 test
   images binarized once with seed 0, each with its true label; for beta != 1 the model was trained on
   another objective, but log p(x | y) is still a proper estimate).
3. Draws ``--per-digit`` samples for every digit d: z ~ p(z) decoded to the mean of p(x | z, y = d),
   the pixel probabilities (``--draws mean``, default: a grey image like those the classifier was trained
   on), or one binary draw x ~ p(x | z, y = d) (``--draws binary``). Reports the rate at which the
   classifier labels them d, per digit and overall (target: at least 90%). A model that ignored y would
   score about 10%.

Why no warm-up and why beta = 4: while the KL weight is small, z is free to carry the digit's identity,
and a decoder that learned to read the class from z then draws the class of z whatever y says. In
short runs (8 epochs on 10,000 images, z_dim 16) the rate was 0.35 with a 2-epoch warm-up, 0.56 without,
and 0.99 at beta = 4; z_dim = 2 reached 0.92 at beta = 1.

Prints a markdown table and writes JSON (``--json``). Full run (about 3 minutes for the classifier and
6-10 s per epoch and beta on 2 CPU cores for the default MLP, so about 10 minutes in all)::

    python benchmarks/cvae_digits.py --epochs 20 --network mlp --data-dir $PYROVAE_DATA

Smoke test (seconds)::

    python benchmarks/cvae_digits.py --epochs 1 --train-size 2000 --classifier-train-size 2000 \\
        --per-digit 20 --eval-num-samples 5 --out /tmp/bench-cvae --json /tmp/cvae_digits.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from pyrovae.data import DataConfig, load_data, load_mnist_arrays
from pyrovae.evaluation import evaluate
from pyrovae.models import CVAEConfig
from pyrovae.training import RunConfig, fit


def train_classifier(arrays: dict, kind: str, train_size: int | None, seed: int):
    """A scikit-learn classifier of grey MNIST pixels in [0, 1]; returns ``(classifier, test accuracy)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    n = train_size or len(arrays["train_labels"])
    x = arrays["train_images"][:n].reshape(n, -1).astype(np.float32) / 255.0
    y = arrays["train_labels"][:n].astype(np.int64)
    if kind == "logistic":
        clf = LogisticRegression(max_iter=300, C=0.1, random_state=seed)
    else:
        clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=20, early_stopping=True, random_state=seed)
    clf.fit(x, y)
    x_test = arrays["test_images"].reshape(len(arrays["test_labels"]), -1).astype(np.float32) / 255.0
    return clf, float((clf.predict(x_test) == arrays["test_labels"]).mean())


@torch.no_grad()
def draw(cvae, per_digit: int, draws: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (10 per_digit, 784) in [0, 1], requested digits (10 per_digit,))``."""
    digits = torch.arange(cvae.num_classes).repeat_interleave(per_digit)
    z = cvae.prior().sample((digits.shape[0],))
    p_x = cvae.decode(z, digits)
    images = p_x.mean if draws == "mean" else p_x.sample()
    return images.reshape(len(digits), -1).cpu().numpy(), digits.numpy()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--network", choices=("mlp", "conv"), default="mlp")
    p.add_argument("--z-dim", type=int, default=16)
    p.add_argument("--hidden", default="512,512", help="MLP hidden sizes")
    p.add_argument("--beta", default="1,4", help="comma-separated KL weights: one CVAE per value")
    p.add_argument("--kl-warmup-epochs", type=float, default=0.0)
    p.add_argument("--train-size", type=int, default=None, help="first N training images (default: all)")
    p.add_argument("--classifier", choices=("logistic", "mlp"), default="logistic")
    p.add_argument("--classifier-train-size", type=int, default=None, help="default: all 60,000")
    p.add_argument("--per-digit", type=int, default=1000, help="samples drawn per digit")
    p.add_argument("--draws", choices=("mean", "binary"), default="mean",
                   help="classify the mean of p(x|z,y) or one binary draw from it")
    p.add_argument("--eval-num-samples", type=int, default=100, help="K for the test log p(x|y)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="run folders go under here (default: runs/bench-cvae-<network>)")
    p.add_argument("--json", default="benchmarks/results/cvae_digits.json")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    clf, clf_accuracy = train_classifier(load_mnist_arrays(args.data_dir), args.classifier,
                                         args.classifier_train_size, args.seed)
    classifier_seconds = time.perf_counter() - t0
    print(f"classifier: {args.classifier} on {args.classifier_train_size or 60000} training images, "
          f"test accuracy {clf_accuracy:.4f} ({classifier_seconds:.0f} s)", flush=True)

    rows = []
    for beta in (float(b) for b in args.beta.split(",")):
        config = RunConfig(model=CVAEConfig(network=args.network, z_dim=args.z_dim,
                                            hidden=tuple(int(h) for h in args.hidden.split(","))),
                           trainer={"epochs": args.epochs, "beta": beta, "kl_warmup_epochs": args.kl_warmup_epochs,
                                    "seed": args.seed},
                           data=DataConfig(train_size=args.train_size, data_dir=args.data_dir))
        out = Path(args.out or f"runs/bench-cvae-{args.network}") / f"beta{beta:g}"
        data = load_data(config.data, config.trainer.seed)
        t0 = time.perf_counter()
        cvae, history = fit(config, out, resume=(out / "checkpoint.pt").exists(), data=data)
        train_seconds = time.perf_counter() - t0

        pyro.set_rng_seed(args.seed)
        test = data[2]
        # log p(x | y): the CVAE's log_likelihood_of; each test image with its true label
        loglik = evaluate(cvae, test, args.eval_num_samples, latent_statistics=False)
        pyro.set_rng_seed(args.seed)
        images, digits = draw(cvae, args.per_digit, args.draws)
        predicted = clf.predict(images)
        per_digit = {int(d): float((predicted[digits == d] == d).mean()) for d in range(cvae.num_classes)}
        rows.append({"beta": beta, "config": config.to_dict(), "run_dir": str(out), "train_seconds": train_seconds,
                     "test_log_likelihood_given_label": loglik,
                     "rate_per_digit": per_digit, "rate_overall": float((predicted == digits).mean()),
                     "history": history})
        print(json.dumps({k: rows[-1][k] for k in ("beta", "rate_overall", "train_seconds")}), flush=True)

    print(f"\nCVAE ({args.network}, z_dim {args.z_dim}, {args.epochs} epochs, KL warm-up {args.kl_warmup_epochs:g} "
          f"epochs); classifier {args.classifier}, test accuracy {clf_accuracy:.4f}; {args.per_digit} samples per "
          f"digit ({args.draws} of p(x|z,y)); rate classified as the requested digit (target 0.9); test log p(x|y) "
          f"in nats, K = {args.eval_num_samples}\n")
    print("| beta | log p(x\\|y) | " + " | ".join(str(d) for d in range(10)) + " | all |")
    print("|---" * 13 + "|")
    for r in rows:
        ll = r["test_log_likelihood_given_label"]
        print(f"| {r['beta']:g} | {ll['log_likelihood_nats']:.2f} "
              f"+- {ll['log_likelihood_stderr']:.2f} | "
              + " | ".join(f"{v:.3f}" for v in r["rate_per_digit"].values()) + f" | **{r['rate_overall']:.3f}** |")

    result = {
        "torch_threads": torch.get_num_threads(),
        "classifier": {"kind": args.classifier, "train_size": args.classifier_train_size or 60000,
                       "test_accuracy": clf_accuracy, "seconds": classifier_seconds,
                       "inputs": "grey training pixels k/255"},
        "samples": {"per_digit": args.per_digit, "draws": args.draws,
                    "what": "mean of p(x|z,y), pixel probabilities" if args.draws == "mean"
                    else "one binary draw x ~ p(x|z,y)"},
        "target_rate": 0.9,
        "test_set": "10,000 MNIST test images binarized once (seed 0), each with its true label",
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
