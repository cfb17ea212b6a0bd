"""``pyrovae`` command line: argument parsing only; every command calls the public API in
:mod:`pyrovae.app.runs`.

The training commands' flags are derived from the config schemas (:func:`config_flags`): every field of
the family's model config, of :class:`~pyrovae.training.TrainerConfig`, :class:`~pyrovae.data.DataConfig`
and :class:`~pyrovae.training.EvaluationConfig` (as ``--eval-<field>``) is a flag, with the field's
description as its help and the family's default, so the command line and the configs cannot drift (a
test checks both directions). A flag not given leaves the field to its default, the family's own for
the trainer (M2 trains at a constant 3e-3 unless told otherwise), or with ``--config FILE`` (a run folder's
``config.json``) to the file's value.

Every parser shows its defaults in ``--help`` and takes only whole option names (``allow_abbrev=False``: a
prefix such as ``--data`` is never read as another option such as ``--data-dir``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import typing
from dataclasses import dataclass
from typing import Any

from ..components.plugins import REGISTRIES, PluginNames, plugin_example
from ..data.config import DataConfig
from ..errors import ConfigError, PyroVAEError
from ..models import (AutoencoderConfig, CVAEConfig, HierarchicalConfig, M2Config, ModelConfig, StructuredConfig,
                      VAEConfig)
from ..settings import make_config
from ..training.config import EvaluationConfig, RunConfig, TrainerConfig
from ..training.optim import flush_denormals

#: The configs a training command composes, with the prefix of their flags.
GROUPS = (("trainer", TrainerConfig, ""), ("data", DataConfig, ""), ("evaluation", EvaluationConfig, "eval_"))
GROUP_PREFIX = {"model": "", **{group: prefix for group, _, prefix in GROUPS}}


@dataclass(frozen=True)
class TrainingCommand:
    """A command that trains one family: its model config(s) and extra names for some flags."""

    name: str
    help: str
    model_configs: tuple[type[ModelConfig], ...]
    aliases: dict  # field -> extra flags
    run_name: str


COMMANDS = {
    "train": TrainingCommand("train", "train a VAE (or with --conditional a label-conditional CVAE) on MNIST or your "
                                      "own data (--data), then evaluate it and draw its figures",
                             (VAEConfig, CVAEConfig), {"data.source": ["--data"]}, "{network}-z{z_dim}"),
    "structured": TrainingCommand("structured", "quadrant completion (Sohn et al. 2015): train a baseline net and a "
                                                "CVAE, evaluate -log p(y|x) and draw completions", (StructuredConfig,),
                                  {"evaluation.num_samples": ["--num-samples", "-k"], "data.source": ["--data"]},
                                  "structured-q{visible}"),
    "semisupervised": TrainingCommand("semisupervised", "semi-supervised M2 (Kingma et al. 2014): classify MNIST "
                                                        "from a few labels", (M2Config,),
                                      {"model.num_labels": ["--labels"], "data.source": ["--data"]},
                                      "m2-{num_labels}labels"),
    "autoencoder": TrainingCommand("autoencoder", "train an autoencoder (--variant plain, denoising, sparse or "
                                                  "contractive) with the VAE's networks and likelihoods, then report "
                                                  "its reconstruction error and draw its figures", (AutoencoderConfig,),
                                   {"data.source": ["--data"]}, "ae-{variant}-z{z_dim}"),
    "hierarchical": TrainingCommand("hierarchical", "train a VAE with several stochastic layers (--layers 64,32, "
                                                    "bottom to top; --ladder for the ladder VAE's guide), then "
                                                    "evaluate it and draw its figures", (HierarchicalConfig,),
                                    {"data.source": ["--data"]}, "hierarchical"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in the help (``(default: ...)``), except where the help already says its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default:" in text or "%(default)" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _parser_options(**kwargs) -> dict:
    """What every parser and sub-parser is made with."""
    return {"formatter_class": HelpFormatter, "allow_abbrev": False, **kwargs}


def _strip(annotation):
    """``annotation`` without ``Annotated`` and ``Optional``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _strip(typing.get_args(annotation)[0])
    if origin is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return annotation


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 512,512, got {text!r}") from None
    return sizes


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE``, the value read as JSON where it parses (numbers, true/false, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"options are KEY=VALUE, e.g. num_components=500; got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def config_flags(command: str) -> dict[str, str]:
    """``{"group.field": "--flag"}`` for every config field a training command exposes: the contract between
    the command line and the configs (``kind`` is the command itself)."""
    spec = COMMANDS[command]
    flags = {}
    for config in spec.model_configs:
        for name in config.model_fields:
            if name != "kind":
                flags[f"model.{name}"] = _flag(name)
    for group, config, prefix in GROUPS:
        for name in config.model_fields:
            flags[f"{group}.{name}"] = _flag(prefix + name)
    return flags


def _flag(name: str) -> str:
    if name.endswith("_options"):
        name = name[: -len("s")]
    return "--" + name.replace("_", "-")


def _add_field(parser, path: str, field, default, aliases: list[str]) -> None:
    group, name = path.split(".")
    flag, kind = _flag(GROUP_PREFIX[group] + name), _strip(field.annotation)
    kwargs: dict[str, Any] = {"dest": path, "default": argparse.SUPPRESS}
    shown = default
    if name.endswith("_options"):
        kwargs.update(type=_option, action="append", metavar="KEY=VALUE")
        what = name[: -len("_options")]
        example = plugin_example(what) if what in REGISTRIES else ""
        shown = "none; repeat the flag for several" + (f"; e.g. {example}" if example else "") + \
            f"; pyrovae plugins lists every {what}'s options"
    elif typing.get_origin(kind) is typing.Literal:
        choices = typing.get_args(kind)
        kwargs.update(choices=choices, type=type(choices[0]))
    elif typing.get_origin(kind) is tuple:
        kwargs.update(type=_sizes, metavar="N,N,...")
        shown = ",".join(map(str, default))
    elif kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind in (int, float, str):
        kwargs["type"] = kind
        if name in REGISTRIES:
            kwargs["choices"] = PluginNames(name)  # a package's plug-ins (entry points) are found too
        else:
            kwargs["metavar"] = name.upper()
    else:
        raise TypeError(f"config field {path} has a type the command line cannot parse: {field.annotation}")
    parser.add_argument(flag, *aliases, help=f"{field.description or ''} (default: {shown})", **kwargs)


def _add_training_command(sub, spec: TrainingCommand) -> None:
    p = sub.add_parser(spec.name, **_parser_options(help=spec.help, description=spec.help))
    defaults = RunConfig(model=spec.model_configs[0]())
    if spec.name == "train":
        p.add_argument("--conditional", action="store_true",
                       help="a label-conditional VAE (CVAE): p(z) p(x|z,y) with guide q(z|x,y), y the digit label; "
                            "the test metrics are then log p(x|y)")
    seen = set()
    for config in spec.model_configs:
        instance = config()
        for name, field in config.model_fields.items():
            if name == "kind" or name in seen:
                continue
            seen.add(name)
            _add_field(p, f"model.{name}", field, getattr(instance, name), spec.aliases.get(f"model.{name}", []))
    for group, config, _ in GROUPS:
        instance = getattr(defaults, group)
        for name, field in config.model_fields.items():
            _add_field(p, f"{group}.{name}", field, getattr(instance, name), spec.aliases.get(f"{group}.{name}", []))
    p.add_argument("--config", default=None, metavar="FILE",
                   help="start from a run's config.json (the file every run folder holds); flags given here "
                        "override its values")
    p.add_argument("--out", default=None, help=f"run folder (default: runs/<time>-{spec.run_name})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_config(command: str, args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` that a training command's parsed ``args`` describe: fields not given keep
    their defaults (the trainer's, the family's), or with ``args.config`` the values of that config file.

    Raises:
        ConfigError: invalid values, naming each field; a config file that is unreadable or of another
            command's family.
    """
    spec = COMMANDS[command]
    given = {k: v for k, v in vars(args).items() if "." in k}
    groups: dict[str, dict] = {"model": {}, "trainer": {}, "data": {}, "evaluation": {}}
    for path, value in given.items():
        group, name = path.split(".")
        groups[group][name] = dict(value) if name.endswith("_options") else value
    model_config = spec.model_configs[-1] if getattr(args, "conditional", False) else spec.model_configs[0]
    if getattr(args, "config", None):
        model_config, groups = _with_config_file(spec, args.config, model_config, groups,
                                                 getattr(args, "conditional", False))
    model = make_config(model_config, **groups["model"])
    parts = {group: make_config(config, **groups[group]) for group, config, _ in GROUPS}
    return make_config(RunConfig, model=model, **parts)


def _with_config_file(spec: TrainingCommand, path: str, model_config, groups: dict, conditional: bool):
    """The model config class and the field values of ``groups`` (the flags given) over those of the config
    file ``path``. The data's shape and classes in the file are left to the data (the run may read other
    data), unless given as flags."""
    saved = RunConfig.load(path)
    classes = {c.model_fields["kind"].default: c for c in spec.model_configs}
    if saved.kind not in classes:
        commands = [name for name, s in COMMANDS.items() if saved.kind in {c.model_fields["kind"].default
                                                                         for c in s.model_configs}]
        where = f"pyrovae {commands[0]} --config {path}" if commands else "its own script"
        raise ConfigError(f"{path} holds a {saved.kind} run, which pyrovae {spec.name} does not train; use {where}")
    if not conditional:
        model_config = classes[saved.kind]
    merged = {}
    for group in groups:
        values = getattr(saved, group).model_dump()
        if group == "model":
            values.pop("kind", None)
            for derived in ("x_shape", "num_classes"):  # from the data at training time
                values.pop(derived, None)
            values = {k: v for k, v in values.items() if k in model_config.model_fields}
        merged[group] = {**values, **groups[group]}
    return model_config, merged


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(**_parser_options(prog="pyrovae",
                                                       description="Variational autoencoders as Pyro programs."))
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for spec in COMMANDS.values():
        _add_training_command(sub, spec)

    e = sub.add_parser("evaluate", **_parser_options(
        help="test log-likelihood of a trained run of any family (importance sampling)"))
    e.add_argument("run_dir", help="a run folder (written by pyrovae train, structured or semisupervised)")
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
    e.add_argument("--which", choices=("last", "best"), default="last",
                   help="the last epoch's checkpoint or the best validation epoch's (best.pt)")
    e.add_argument("--data-dir", default=None, help="MNIST root (default: $PYROVAE_DATA, else the run's own)")
    e.add_argument("--data", dest="data_source", default=None, metavar="PATH",
                   help="where the run's data file or folder is now, if it moved (the same data: its sha256 is "
                        "checked); default: the run's own")
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")

    s = sub.add_parser("sample", **_parser_options(
        help="draw from a trained run: prior samples, samples by digit, or completions"))
    s.add_argument("run_dir", help="a run folder (written by pyrovae train, structured or semisupervised)")
    s.add_argument("-n", type=int, default=64, help="number of images")
    s.add_argument("--seed", type=int, default=0, help="seed of the draws")
    s.add_argument("--out", default=None, help="PNG path (default: in RUN_DIR)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    s.add_argument("--digit", type=int, default=None,
                   help="CVAE and M2 runs: draw N images of this digit (without it: one row per digit)")
    s.add_argument("--manifold", action="store_true",
                   help="CVAE runs with z_dim 2: the decoded latent manifold of --digit")
    s.add_argument("--data-dir", default=None, help="MNIST root (default: $PYROVAE_DATA, else the run's own)")
    s.add_argument("--data", dest="data_source", default=None, metavar="PATH",
                   help="where the run's data file or folder is now, if it moved (the same data: its sha256 is "
                        "checked); default: the run's own")
    s.add_argument("--sampler", choices=("prior", "gmm"), default="prior",
                   help="VAE and autoencoder runs: decode z ~ p(z) (N(0, I) for an autoencoder), or z drawn from a "
                        "Gaussian mixture fitted to the training codes (Ghosh et al. 2020)")

    c = sub.add_parser("compare", **_parser_options(
        help="several VAE and autoencoder run folders on the same data in one report: reconstruction, "
             "log-likelihood, probe, samples read by a classifier, codes, interpolations"))
    c.add_argument("run_dirs", nargs="+", help="two or more run folders trained on the same data")
    c.add_argument("--out", required=True, help="the report's folder (report.md and figures)")
    c.add_argument("--test-size", type=int, default=2000, help="test data points for reconstruction and codes")
    c.add_argument("--num-samples", type=int, default=1000, help="samples per model and sampler")
    c.add_argument("--seed", type=int, default=0, help="seed of the samples and the mixture")
    c.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")

    g = sub.add_parser("diagnose", **_parser_options(
        help="posterior diagnostics of a trained run: PSIS k-hat, NUTS reference posteriors, amortization gap, "
             "active units; a report in the run folder"))
    g.add_argument("run_dir", help="a run folder (written by pyrovae train, structured or semisupervised)")
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
    g.add_argument("--seed", type=int, default=0, help="seed of the draws and the NUTS chains")
    g.add_argument("--no-jit", action="store_true", help="run NUTS without the PyTorch JIT")
    g.add_argument("--nuts-workers", type=int, default=None,
                   help="processes for the NUTS chains (default: one per chain up to the CPU cores; 1 on a GPU)")
    g.add_argument("--which", choices=("last", "best"), default="last", help="which checkpoint to diagnose")
    g.add_argument("--out", default=None, help="folder for the outputs (default: RUN_DIR)")
    g.add_argument("--data-dir", default=None, help="MNIST root (default: $PYROVAE_DATA, else the run's own)")
    g.add_argument("--data", dest="data_source", default=None, metavar="PATH",
                   help="where the run's data file or folder is now, if it moved (the same data: its sha256 is "
                        "checked); default: the run's own")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")

    im = sub.add_parser("impute", **_parser_options(
        help="fill the missing cells of a table with a VAE trained on it (--missing mask): the importance-weighted "
             "conditional mean, and with --multiple M, M tables of draws; observed cells are left as they are"))
    im.add_argument("run_dir", help="a VAE run folder trained on a table")
    im.add_argument("--data", required=True, metavar="PATH", help="the incomplete table (.csv or .tsv) with the "
                                                                   "run's feature columns")
    im.add_argument("--out", required=True, metavar="PATH", help="the completed table (.csv or .tsv)")
    im.add_argument("--multiple", type=int, default=0, metavar="M",
                    help="also write M tables of draws (OUT stem .1 ... .M) for multiple imputation")
    im.add_argument("--num-samples", "-k", type=int, default=1000, help="importance draws of q(z | x_obs) per row")
    im.add_argument("--seed", type=int, default=0, help="seed of the draws")
    im.add_argument("--which", choices=("last", "best"), default="last", help="which checkpoint imputes")
    im.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")

    pl = sub.add_parser("plugins", **_parser_options(
        help="list every prior, likelihood and guide family by name, with its options and their defaults"))
    pl.add_argument("kind", nargs="?", choices=tuple(REGISTRIES), default=None, help="only this kind")
    return parser


def plugins_text(kind: str | None = None) -> str:
    """What ``pyrovae plugins`` prints: each registered plug-in's name, options with their defaults and
    description (entry points loaded)."""
    import inspect

    from ..components.plugins import describe_plugins

    lines = []
    flags = {"prior": "--prior NAME --prior-option KEY=VALUE", "likelihood": "--likelihood NAME --likelihood-option "
             "KEY=VALUE", "guide": "--guide NAME --guide-option KEY=VALUE"}
    for what, entries in describe_plugins().items():
        if kind is not None and what != kind:
            continue
        lines.append(f"{what}s ({flags[what]}):")
        for entry in entries:
            options = ", ".join(f"{k}=<required>" if v is inspect.Parameter.empty else
                                f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                for k, v in entry["options"].items())
            lines.append(f"  {entry['name']}" + (f"  [{options}]" if options else ""))
            if entry["description"]:
                lines.append(f"      {entry['description']}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


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
    from ..training import distributed  # imported late so that --help stays fast
    from . import runs

    try:
        if args.command in COMMANDS:
            config = run_config(args.command, args)
            name = COMMANDS[args.command].run_name.format(**config.model.model_dump())
            out = args.out or _default_run_dir(("cvae-" if config.kind == "cvae" else "") + name)
            metrics = runs.train_run(config, out, resume=args.resume, progress=False if args.no_progress else None)
            if metrics:  # {} on the ranks other than 0 of a torchrun launch
                files = runs.run_files(out)
                width = max(len(name) for name, _ in files)
                print(f"run folder {out}:", *(f"  {name:<{width}}  {what}".rstrip() for name, what in files),
                      sep="\n", file=sys.stderr)
                print(json.dumps(_summary({"run_dir": out, **metrics.get("test", {}),
                                           **{k: v for k, v in metrics.items() if k.startswith(("final_", "best_"))}}),
                                 indent=2))
        elif args.command == "evaluate":
            metrics = runs.evaluate_run(args.run_dir, args.num_samples, args.data_dir, args.device,
                                        args.max_chunk, progress=False if args.no_progress else None,
                                        max_memory_gb=args.max_memory_gb, probe=not args.no_probe,
                                        probe_train_size=args.probe_train_size,
                                        latent_statistics=not args.no_latent_stats, test_size=args.test_size,
                                        which=args.which, data=args.data_source)
            if metrics:  # {} on the ranks other than 0 of a torchrun launch
                print(json.dumps(_summary(metrics), indent=2))
        elif args.command == "sample":
            print(runs.sample_run(args.run_dir, args.n, args.seed, args.out, args.device, digit=args.digit,
                                  manifold=args.manifold, data_dir=args.data_dir, data=args.data_source,
                                  sampler=args.sampler))
        elif args.command == "compare":
            from .compare import compare_runs
            result = compare_runs(args.run_dirs, args.out, test_size=args.test_size, num_samples=args.num_samples,
                                  seed=args.seed, device=args.device)
            print("\n".join(result["files"]))
        elif args.command == "plugins":
            print(plugins_text(args.kind), end="")
        elif args.command == "impute":
            print(json.dumps(runs.impute_run(args.run_dir, args.data, args.out, args.multiple, args.num_samples,
                                             args.seed, args.which, args.device), indent=2))
        elif args.command == "diagnose":
            result = runs.diagnose_run(
                args.run_dir, args.out, args.data_dir, args.device, which=args.which, num_images=args.num_images,
                num_samples=args.num_samples, mcmc_images=args.mcmc_images, mcmc_samples=args.mcmc_samples,
                mcmc_warmup=args.mcmc_warmup, num_chains=args.num_chains, gap_steps=args.gap_steps,
                gap_lr=args.gap_lr, gap_particles=args.gap_particles, log_likelihood_samples=args.ll_samples,
                seed=args.seed, jit_compile=not args.no_jit, nuts_workers=args.nuts_workers, data=args.data_source)
            print(json.dumps({"out": args.out or args.run_dir, "summary": result["summary"],
                              "skipped": result["skipped"], "files": result["files"]}, indent=2))
    except PyroVAEError as e:
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
