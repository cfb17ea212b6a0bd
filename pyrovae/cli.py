"""``pyrovae`` command line: argument parsing only; every command calls the public API in
:mod:`pyrovae.runs`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .checkpoint import CheckpointError
from .config import ConfigError, ModelConfig, RunConfig, make_config
from .data import BINARIZATIONS, DataError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .nets import NETWORKS
from .objectives import ELBOS
from .priors import PRIORS
from .train import RunDirError

DEFAULTS = RunConfig()


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers like 512,512, got {text!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyrovae", description="Variational autoencoders as Pyro programs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a VAE on MNIST, then evaluate it and draw its figures",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = DEFAULTS.model
    t.add_argument("--network", choices=NETWORKS, default=m.network)
    t.add_argument("--z-dim", type=int, default=m.z_dim, help="latent dimension")
    t.add_argument("--hidden", type=_hidden, default=m.hidden, help="MLP hidden sizes, e.g. 512,512")
    for what, registry, default in (("prior", PRIORS, m.prior), ("likelihood", LIKELIHOODS, m.likelihood),
                                    ("guide", GUIDES, m.guide)):
        t.add_argument(f"--{what}", choices=tuple(registry), default=default, help=f"the {what} plug-in")
        t.add_argument(f"--{what}-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                       help=f"an option of the {what} (repeatable), e.g. num_components=500")
    t.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    t.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    t.add_argument("--lr", type=float, default=DEFAULTS.lr, help="Adam learning rate")
    t.add_argument("--lr-schedule", choices=("cosine", "constant"), default=DEFAULTS.lr_schedule)
    t.add_argument("--elbo", choices=tuple(ELBOS), default=DEFAULTS.elbo,
                   help="TraceMeanField_ELBO uses the analytic KL")
    t.add_argument("--num-particles", type=int, default=DEFAULTS.num_particles)
    t.add_argument("--beta", type=float, default=DEFAULTS.beta,
                   help="weight on the KL term (1: the ELBO; beta-VAE otherwise)")
    t.add_argument("--kl-warmup-epochs", type=float, default=DEFAULTS.kl_warmup_epochs,
                   help="epochs over which the KL weight rises linearly to --beta")
    t.add_argument("--binarization", choices=BINARIZATIONS, default=DEFAULTS.binarization)
    t.add_argument("--validation-size", type=int, default=DEFAULTS.validation_size,
                   help="training images held out for a validation ELBO")
    t.add_argument("--train-size", type=int, default=None,
                   help="train on the first N training images only (quick experiments)")
    t.add_argument("--seed", type=int, default=DEFAULTS.seed)
    t.add_argument("--device", default=DEFAULTS.device, help="cpu, cuda or cuda:N")
    t.add_argument("--data-dir", default=None, help="MNIST root (default: $PYROVAE_DATA, else ~/.cache/pyrovae)")
    t.add_argument("--eval-num-samples", type=int, default=DEFAULTS.eval_num_samples,
                   help="importance samples K for the test log-likelihood at the end")
    t.add_argument("--out", default=None, help="run folder (default: runs/<time>-<network>-z<z_dim>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")

    e = sub.add_parser("evaluate", help="test log-likelihood of a trained run (importance sampling)")
    e.add_argument("run_dir")
    e.add_argument("--num-samples", "-k", type=int, default=5000, help="importance samples K per image")
    e.add_argument("--max-chunk", type=int, default=65536,
                   help="largest number of (sample, image) pairs per pass; bounds memory")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--device", default="cpu")
    e.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sample", help="draw images from the prior of a trained run")
    s.add_argument("run_dir")
    s.add_argument("-n", type=int, default=64, help="number of images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/samples_n<N>_seed<S>.png)")
    s.add_argument("--device", default="cpu")
    return parser


def _train_config(args) -> RunConfig:
    model = make_config(ModelConfig, network=args.network, z_dim=args.z_dim, hidden=args.hidden,
                        prior=args.prior, prior_options=dict(args.prior_option),
                        likelihood=args.likelihood, likelihood_options=dict(args.likelihood_option),
                        guide=args.guide, guide_options=dict(args.guide_option))
    return make_config(
        RunConfig, model=model, elbo=args.elbo, num_particles=args.num_particles, beta=args.beta,
        kl_warmup_epochs=args.kl_warmup_epochs, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, binarization=args.binarization,
        validation_size=args.validation_size, train_size=args.train_size, seed=args.seed, device=args.device,
        data_dir=args.data_dir, eval_num_samples=args.eval_num_samples)


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE``, the value read as JSON where it parses (numbers, true/false, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"options are KEY=VALUE, e.g. num_components=500; got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    from . import runs  # imported late so that --help stays fast

    try:
        if args.command == "train":
            config = _train_config(args)
            out = args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.model.network}-z{config.model.z_dim}"
            metrics = runs.train_run(config, out, resume=args.resume, progress=False if args.no_progress else None)
            print(json.dumps({"run_dir": out, **metrics["test"]}, indent=2))
        elif args.command == "evaluate":
            metrics = runs.evaluate_run(args.run_dir, args.num_samples, args.data_dir, args.device,
                                        args.max_chunk, progress=False if args.no_progress else None)
            print(json.dumps(metrics, indent=2))
        elif args.command == "sample":
            print(runs.sample_run(args.run_dir, args.n, args.seed, args.out, args.device))
    except (ConfigError, DataError, CheckpointError, RunDirError, ValueError) as e:
        print(f"pyrovae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint (if any) is intact: continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
