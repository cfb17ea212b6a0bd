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
from .structured import StructuredConfig
from .semisupervised import M2Config
from .train import RunDirError, flush_denormals

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
    t.add_argument("--conditional", action="store_true",
                   help="a label-conditional VAE (CVAE): p(z) p(x|z,y) with guide q(z|x,y), y the digit label; "
                        "the test metrics are then log p(x|y)")
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
                   help="TraceMeanField_ELBO uses the analytic KL; IWAE is the importance-weighted bound "
                        "with K = --num-particles")
    t.add_argument("--num-particles", type=int, default=DEFAULTS.num_particles,
                   help="samples per image (K for IWAE)")
    t.add_argument("--free-bits", type=float, default=DEFAULTS.free_bits,
                   help="floor on each latent dimension's KL, in nats per dimension (0: off; not with IWAE)")
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
    e.add_argument("--max-memory-gb", type=float, default=4.0,
                   help="memory cap of one importance-sampling pass (GB); the chunk size is measured to fit it")
    e.add_argument("--max-chunk", type=int, default=None,
                   help="largest number of (sample, image) pairs per pass; overrides --max-memory-gb")
    e.add_argument("--test-size", type=int, default=None, help="evaluate on the first N test images only")
    e.add_argument("--probe-train-size", type=int, default=10_000,
                   help="training images for the linear probe on the posterior means")
    e.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    e.add_argument("--no-latent-stats", action="store_true", help="skip the per-dimension KL and active units")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--device", default="cpu")
    e.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sample", help="draw images from the prior of a trained run")
    s.add_argument("run_dir")
    s.add_argument("-n", type=int, default=64, help="number of images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/samples_n<N>_seed<S>.png)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--digit", type=int, default=None,
                   help="conditional runs: draw N images of this digit (without it: one row per digit)")
    s.add_argument("--manifold", action="store_true",
                   help="conditional runs with z_dim 2: the decoded latent manifold of --digit")

    g = sub.add_parser("diagnose", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="posterior diagnostics of a trained run: PSIS k-hat, NUTS reference posteriors, "
                            "amortization gap, active units; a report in the run folder")
    g.add_argument("run_dir")
    g.add_argument("--num-images", type=int, default=16, help="the first N test images get k-hat and the gaps")
    g.add_argument("--num-samples", type=int, default=1000, help="draws of q(z|x) per image (for k-hat, ELBO)")
    g.add_argument("--mcmc-images", type=int, default=2, help="how many of them get a NUTS reference (0: none)")
    g.add_argument("--mcmc-samples", type=int, default=500, help="NUTS draws per chain")
    g.add_argument("--mcmc-warmup", type=int, default=500, help="NUTS warm-up steps per chain")
    g.add_argument("--num-chains", type=int, default=2, help="NUTS chains (>= 2, for R-hat)")
    g.add_argument("--gap-steps", type=int, default=300, help="SVI steps for the per-image optimum q* (0: no gaps)")
    g.add_argument("--gap-lr", type=float, default=0.02, help="Adam learning rate for q*")
    g.add_argument("--gap-particles", type=int, default=8, help="draws per image per SVI step")
    g.add_argument("--ll-samples", type=int, default=1000, help="importance samples K for log p(x)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-jit", action="store_true", help="run NUTS without the PyTorch JIT")
    g.add_argument("--nuts-workers", type=int, default=None,
                   help="processes for the NUTS chains (default: one per chain up to the CPU cores; 1 on a GPU)")
    g.add_argument("--out", default=None, help="folder for the outputs (default: RUN_DIR)")
    g.add_argument("--data-dir", default=None)
    g.add_argument("--device", default="cpu")

    q = sub.add_parser("structured", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="quadrant completion (Sohn et al. 2015): train a baseline net and a CVAE, "
                            "evaluate -log p(y|x) and draw completions")
    qd = StructuredConfig.model_fields
    q.add_argument("--visible", type=int, choices=(1, 2, 3), required=True, help="number of visible quadrants")
    q.add_argument("--epochs", type=int, default=qd["epochs"].default, help="CVAE epochs")
    q.add_argument("--baseline-epochs", type=int, default=None, help="baseline epochs (None: as many as --epochs)")
    q.add_argument("--z-dim", type=int, default=qd["z_dim"].default)
    q.add_argument("--hidden", type=_hidden, default=qd["hidden"].default, help="hidden sizes of every net")
    q.add_argument("--batch-size", type=int, default=qd["batch_size"].default)
    q.add_argument("--lr", type=float, default=qd["lr"].default, help="Adam learning rate")
    q.add_argument("--binarization", choices=("dynamic", "static"), default=qd["binarization"].default)
    q.add_argument("--train-size", type=int, default=None, help="train on the first N training images only")
    q.add_argument("--test-size", type=int, default=None, help="evaluate on the first N test images only")
    q.add_argument("--num-samples", "-k", type=int, default=qd["eval_num_samples"].default,
                   help="importance samples K for the CVAE's -log p(y|x)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    q.add_argument("--data-dir", default=None, help="MNIST root (None: $PYROVAE_DATA, else ~/.cache/pyrovae)")
    q.add_argument("--out", default=None, help="run folder (None: runs/<time>-structured-q<visible>)")
    q.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")

    m2 = sub.add_parser("semisupervised", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        help="semi-supervised M2 (Kingma et al. 2014): classify MNIST from a few labels")
    md = M2Config.model_fields
    m2.add_argument("--labels", type=int, default=md["num_labels"].default,
                    help="labelled training images, equal per digit (100, 600, 1000, 3000); the rest unlabelled")
    m2.add_argument("--epochs", type=int, default=md["epochs"].default,
                    help="passes over the unlabelled images; 100 labels need about 300 to reach the Pyro "
                         "tutorial's 0.932 (22-50 s each on one CPU thread)")
    m2.add_argument("--z-dim", type=int, default=md["z_dim"].default)
    m2.add_argument("--hidden", type=_hidden, default=md["hidden"].default, help="hidden sizes of every net")
    m2.add_argument("--likelihood", choices=tuple(LIKELIHOODS), default=md["likelihood"].default)
    m2.add_argument("--aux-loss-multiplier", type=float, default=None,
                    help="weight on -log q(y|x) per labelled image; unset: Kingma et al.'s alpha = 0.1 N "
                         "(N training images) on every one; 0.1 N / labels is their weighting of the mean, "
                         "46 the Pyro tutorial's")
    m2.add_argument("--batch-size", type=int, default=md["batch_size"].default, help="unlabelled images per step")
    m2.add_argument("--labelled-batch-size", type=int, default=md["labelled_batch_size"].default,
                    help="labelled images per step")
    m2.add_argument("--lr", type=float, default=md["lr"].default, help="Adam learning rate")
    m2.add_argument("--lr-schedule", choices=("constant", "cosine"), default=md["lr_schedule"].default,
                    help="constant, or a half cosine from --lr to --lr times --final-lr-ratio over --epochs")
    m2.add_argument("--final-lr-ratio", type=float, default=md["final_lr_ratio"].default,
                    help="the cosine schedule's last learning rate over its first")
    m2.add_argument("--binarization", choices=("dynamic", "static", "none"), default=md["binarization"].default,
                    help="none: grey values, which need a likelihood on [0, 1] such as continuous_bernoulli")
    m2.add_argument("--validation-size", type=int, default=md["validation_size"].default,
                    help="training images held out for a validation accuracy")
    m2.add_argument("--train-size", type=int, default=None, help="use the first N training images only")
    m2.add_argument("--seed", type=int, default=0, help="seed of the labelled subset, the weights and the data order")
    m2.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    m2.add_argument("--data-dir", default=None, help="MNIST root (default: $PYROVAE_DATA, else ~/.cache/pyrovae)")
    m2.add_argument("--out", default=None, help="run folder (default: runs/<time>-m2-<labels>labels)")
    m2.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    m2.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _train_config(args) -> RunConfig:
    model = make_config(ModelConfig, network=args.network, z_dim=args.z_dim, hidden=args.hidden,
                        prior=args.prior, prior_options=dict(args.prior_option),
                        likelihood=args.likelihood, likelihood_options=dict(args.likelihood_option),
                        guide=args.guide, guide_options=dict(args.guide_option), conditional=args.conditional)
    return make_config(
        RunConfig, model=model, elbo=args.elbo, num_particles=args.num_particles, free_bits=args.free_bits,
        beta=args.beta,
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


def _summary(metrics: dict) -> dict:
    """What the terminal gets: the scalar metrics (per-dimension lists and nested tables stay in the run
    folder's metrics.json)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}


def _default_run_dir(name: str) -> str:
    """``runs/<YYYYmmdd-HHMMSS>-<name>``: the run folder when ``--out`` is not given."""
    return f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{name}"


@flush_denormals()  # evaluation and diagnostics on trained networks meet subnormals too
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    from . import distributed, runs  # imported late so that --help stays fast

    try:
        if args.command == "train":
            config = _train_config(args)
            kind = "cvae-" if config.model.conditional else ""
            out = args.out or _default_run_dir(f"{kind}{config.model.network}-z{config.model.z_dim}")
            metrics = runs.train_run(config, out, resume=args.resume, progress=False if args.no_progress else None)
            if metrics:  # {} on the ranks other than 0 of a torchrun launch
                print(json.dumps(_summary({"run_dir": out, **metrics["test"]}), indent=2))
        elif args.command == "evaluate":
            metrics = runs.evaluate_run(args.run_dir, args.num_samples, args.data_dir, args.device,
                                        args.max_chunk, progress=False if args.no_progress else None,
                                        max_memory_gb=args.max_memory_gb, probe=not args.no_probe,
                                        probe_train_size=args.probe_train_size,
                                        latent_statistics=not args.no_latent_stats, test_size=args.test_size)
            if metrics:  # {} on the ranks other than 0 of a torchrun launch
                print(json.dumps(_summary(metrics), indent=2))
        elif args.command == "sample":
            print(runs.sample_run(args.run_dir, args.n, args.seed, args.out, args.device, digit=args.digit,
                                  manifold=args.manifold))
        elif args.command == "diagnose":
            result = runs.diagnose_run(
                args.run_dir, args.out, args.data_dir, args.device, num_images=args.num_images,
                num_samples=args.num_samples, mcmc_images=args.mcmc_images, mcmc_samples=args.mcmc_samples,
                mcmc_warmup=args.mcmc_warmup, num_chains=args.num_chains, gap_steps=args.gap_steps,
                gap_lr=args.gap_lr, gap_particles=args.gap_particles, log_likelihood_samples=args.ll_samples,
                seed=args.seed, jit_compile=not args.no_jit, nuts_workers=args.nuts_workers)
            print(json.dumps({"out": args.out or args.run_dir, "summary": result["summary"],
                              "files": result["files"]}, indent=2))
        elif args.command == "structured":
            config = make_config(
                StructuredConfig, visible=args.visible, epochs=args.epochs, baseline_epochs=args.baseline_epochs,
                z_dim=args.z_dim, hidden=args.hidden, batch_size=args.batch_size, lr=args.lr,
                binarization=args.binarization, train_size=args.train_size, test_size=args.test_size,
                eval_num_samples=args.num_samples, seed=args.seed, device=args.device, data_dir=args.data_dir)
            out = args.out or _default_run_dir(f"structured-q{args.visible}")
            metrics = runs.structured_run(config, out, resume=args.resume, progress=False if args.no_progress else None)
            print(json.dumps({"run_dir": out, **metrics["test"]}, indent=2))
        elif args.command == "semisupervised":
            config = make_config(
                M2Config, num_labels=args.labels, epochs=args.epochs, z_dim=args.z_dim, hidden=args.hidden,
                likelihood=args.likelihood, aux_loss_multiplier=args.aux_loss_multiplier,
                batch_size=args.batch_size, labelled_batch_size=args.labelled_batch_size, lr=args.lr,
                lr_schedule=args.lr_schedule, final_lr_ratio=args.final_lr_ratio,
                binarization=args.binarization, validation_size=args.validation_size, train_size=args.train_size,
                seed=args.seed, device=args.device, data_dir=args.data_dir)
            out = args.out or _default_run_dir(f"m2-{args.labels}labels")
            metrics = runs.semisupervised_run(config, out, resume=args.resume,
                                              progress=False if args.no_progress else None)
            print(json.dumps({"run_dir": out, **{k: v for k, v in metrics.items() if k != "history"}}, indent=2))
    except (ConfigError, DataError, CheckpointError, RunDirError, ValueError) as e:
        print(f"pyrovae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint (if any) is intact: continue with --resume", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()  # under torchrun: leave the process group now, not at interpreter exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
