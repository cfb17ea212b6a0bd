"""The one trainer: stochastic variational inference for every model family, with per-epoch checkpoints,
exact resume, schedules, KL warm-up, validation with early stopping, and DDP under torchrun.

Each step minimizes a stage's :class:`~pyrovae.models.LossRecord` loss (for a VAE the negative ELBO in
nats per image, ``elbo.differentiable_loss(model, guide, *args, num_data=N) / N``) with Adam over the
stage's parameters. This is the pattern Pyro documents for pairing its ELBOs with PyTorch optimizers:
gradients are those of ``pyro.infer.SVI``, but the parameters stay in the module instead of Pyro's
global param store, so models never share them. Nothing here depends on the family: how a batch
becomes the programs' arguments, what is optimized in which stage, and how batches are drawn all come
from the family (:mod:`pyrovae.models.base`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import pyro
import torch
from tqdm.auto import tqdm

from .. import checks
from ..data.config import prepare_data
from ..data.dataset import ArrayDataset, ImageDataset
from ..errors import ConfigError, PyroVAEError
from ..files import ensure_writable_dir
from ..inference.handlers import kl_weight
from ..inference.objectives import kl_method, make_elbo
from ..models.base import Family, Stage, family_for
from ..torchtools import parameter_count, rng_kept
from .checkpoint import (BEST, CHECKPOINT, CONFIG, check_run_dir, check_same_data, read_data_info, read_run_dir,
                         remove_start_files, restore_rng_state, rng_state, run_config, run_dir_lock, save_checkpoint,
                         write_data_info, write_metrics)
from .config import RunConfig
from .distributed import DistributedContext, init_distributed
from .optim import flush_denormals, kl_weight_at, lr_factor, make_optimizer, resolve_device
from .reporting import Progress, TensorBoardLog, check_tensorboard, warmup_warnings, write_metrics_csv

log = logging.getLogger(__name__)

#: ``on_epoch_end(model, row, checkpoint_path)``: called after each epoch's checkpoint is written, on every
#: process, with the model, that epoch's history row and the checkpoint's path.
EpochCallback = Callable[[Family, dict, Path], None]


#: The settings ``--resume`` may change: how long the run trains (extend it; never below the epochs it has done),
#: where it runs, where the MNIST files are now, and the importance samples of its final test evaluation. Every
#: other setting (the model, the learning rate and its schedule, the batch size, the objective, the data and its
#: split) is the run's: its checkpoint holds weights, optimizer state and a schedule made with them.
RESUME_MAY_CHANGE = ("trainer.epochs", "trainer.device", "trainer.tensorboard", "data.data_dir",
                     "evaluation.num_samples")


def _flag(group: str, name: str) -> str:
    """The command-line flag of a config field (see :mod:`pyrovae.app.cli`)."""
    name = ("eval_" if group == "evaluation" else "") + (name[:-1] if name.endswith("_options") else name)
    return "--" + name.replace("_", "-")


def given_settings(config: RunConfig) -> dict[str, object]:
    """``{"group.field": value}`` (JSON values) for each setting of ``config`` given explicitly (pydantic's
    ``model_fields_set`` of each part; a family's trainer defaults do not count as given), and the model's
    ``kind``."""
    given: dict[str, object] = {"model.kind": config.kind}
    for group in ("model", "trainer", "data", "evaluation"):
        part = getattr(config, group)
        values = part.to_dict()
        given.update({f"{group}.{name}": values[name] for name in sorted(part.model_fields_set) if name != "kind"})
    return given


def resumed_config(state: dict, config: RunConfig) -> RunConfig:
    """The config a resumed run goes on with: the checkpoint's, with ``config``'s values of the settings that
    :data:`RESUME_MAY_CHANGE` lists where ``config`` gives them (``trainer.device`` always).

    Raises:
        ConfigError: ``config`` gives another setting a value other than the run's: the message names each
            (field and flag) with the value given and the run's.
    """
    saved = run_config(state)
    runs = {f"{group}.{name}": value for group in ("model", "trainer", "data", "evaluation")
            for name, value in getattr(saved, group).to_dict().items()}
    given = given_settings(config)
    differ = [(path, value) for path, value in given.items()
              if path not in RESUME_MAY_CHANGE and runs.get(path, value) != value]
    kind = [(path, value) for path, value in differ if path == "model.kind"]
    if kind:  # the other fields are another family's
        raise ConfigError(f"--resume continues the run with its own model, a {runs['model.kind']!r} run; the "
                          f"command (or config) given is for a {kind[0][1]!r} model. Resume it with the command "
                          "that trained it")
    if differ:
        listed = "; ".join(f"{path} ({_flag(*path.split('.'))}) {value!r}, the run's {runs[path]!r}"
                           for path, value in differ)
        raise ConfigError(f"--resume continues a run with its own settings, and these differ from the run's: {listed}. "
                          "Leave them out (or give the run's values), or start a new run in another folder; on resume "
                          f"only {', '.join(RESUME_MAY_CHANGE)} may change")
    trainer = saved.trainer.replace(epochs=given.get("trainer.epochs", saved.trainer.epochs),
                                    device=config.trainer.device,
                                    tensorboard=given.get("trainer.tensorboard", saved.trainer.tensorboard))
    update = {"trainer": trainer}
    if "data.data_dir" in given:
        update["data"] = saved.data.replace(data_dir=config.data.data_dir)
    if "evaluation.num_samples" in given:
        update["evaluation"] = saved.evaluation.replace(num_samples=config.evaluation.num_samples)
    return saved.model_copy(update=update)


def _check_epochs_done(stages: list[Stage], history: list[dict], start_stage: int, done: int) -> None:
    """Raise ConfigError when a resumed run's ``epochs`` would end a stage before the epochs it has done."""
    for index, stage in enumerate(stages[:start_stage + 1]):
        label = stage.name if len(stages) > 1 else None
        ran = done if index == start_stage else sum(1 for row in history if row.get("stage") == label)
        if stage.epochs < ran:
            what = f"its {stage.name} stage" if label else "it"
            raise ConfigError(f"the run has done {ran} epochs{' of ' + stage.name if label else ''}, but --resume "
                              f"was given {stage.epochs} for {what} (trainer.epochs, --epochs); a run is only "
                              f"extended, never cut: give --epochs {ran} or more, or leave --epochs out")


class _Monitor:
    """The best value of a stage's monitored validation metric, and the epochs since it last improved."""

    def __init__(self, stage: Stage, patience: int | None, saved: dict | None = None):
        self.key, self.patience = f"validation_{stage.monitor}", patience
        self.sign = 1.0 if stage.mode == "max" else -1.0
        saved = saved or {}
        self.best, self.best_epoch = saved.get("best"), saved.get("best_epoch")
        self.bad_epochs = saved.get("bad_epochs", 0)

    def update(self, row: dict) -> bool:
        """Take the epoch's row; True when it is the best so far."""
        value = row.get(self.key)
        if value is None or not math.isfinite(value):
            return False
        if self.best is None or self.sign * (value - self.best) > 0:
            self.best, self.best_epoch, self.bad_epochs = value, row["epoch"], 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state(self) -> dict:
        return {"key": self.key, "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}


def summarize_history(history: list[dict], monitor: str = "objective", mode: str = "max") -> dict:
    """Headline numbers of a history: the last epoch's ``test_*`` values as ``final_test_*`` and, with a
    validation split, the best value of the monitored metric ``validation_<monitor>`` over the last stage's
    epochs (``best_validation_<monitor>``; ``mode`` "max" or "min" says which way is better), its
    ``best_validation_epoch`` and the ``test_*`` values of that epoch (``test_*_at_best_validation``: the
    protocol of reporting the test metric at the epoch chosen on validation; the test split never chooses
    anything). A history's first E rows summarize the E-epoch run when the schedule does not depend on the
    run's length (a constant learning rate)."""
    if not history:
        return {}
    out = {f"final_{k}": v for k, v in history[-1].items() if k.startswith("test_")}
    key = f"validation_{monitor}"
    rows = [h for h in history if key in h and h.get("stage", None) == history[-1].get("stage", None)
            and isinstance(h[key], (int, float)) and math.isfinite(h[key])]
    if rows:
        best = (max if mode == "max" else min)(rows, key=lambda h: h[key])  # the first epoch among ties
        out.update({f"best_{key}": best[key], "best_validation_epoch": best["epoch"],
                    **{f"{k}_at_best_validation": v for k, v in best.items() if k.startswith("test_")}})
    return out


def _is_splits(data) -> bool:
    """``data`` is already ``(train, validation or None, test)`` data sets."""
    return (isinstance(data, tuple) and len(data) == 3 and isinstance(data[0], ArrayDataset)
            and isinstance(data[2], ArrayDataset))


def _set_trainable(model: Family, parameters: list) -> None:
    """Parameters of the stage require gradients, the others not (DDP then syncs only the stage's)."""
    trainable = {id(p) for p in parameters}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)


@flush_denormals()
def fit(config: RunConfig, run_dir: str | os.PathLike, resume: bool = False,
        data: tuple[ImageDataset, ImageDataset | None, ImageDataset] | None = None,
        progress: bool | None = None, on_epoch_end: EpochCallback | None = None,
        distributed: bool | None = None, data_info=None) -> tuple[Family, list[dict]]:
    """Train (or resume) the run in ``run_dir``, whatever its model family; returns ``(model, history)``.

    Writes ``config.json`` at the start and, after every epoch, ``checkpoint.pt`` (model, optimizer and
    schedule state, RNG states, config, stage and epoch, history, the family's state), ``metrics.json``
    and ``metrics.csv`` (the history, one row per epoch), each atomically; with a validation split also
    ``best.pt`` whenever the last stage's monitored validation metric improves; with
    ``trainer.tensorboard`` also TensorBoard event files under ``tensorboard/``. Resuming restores every RNG
    state, so a resumed run continues exactly as if it had not stopped. A run that ends before its KL
    warm-up does gets a warning (logged, and in ``metrics.json``'s ``training.warnings``).

    Args:
        config: the run's settings. On ``resume`` the checkpoint's config is used; ``config`` may change only
            the settings :data:`RESUME_MAY_CHANGE` lists (``trainer.epochs`` extends a run), and any other
            setting it gives must have the run's value (only the settings given count: a part's
            ``model_fields_set``).
        run_dir: the run folder: new or empty for a new run (created if missing). ``fit`` holds its lock
            (``.pyrovae.lock``, see :func:`~pyrovae.training.checkpoint.run_dir_lock`) while it runs.
        resume: continue from ``run_dir/checkpoint.pt``.
        data: ``(train, validation or None, test)`` data sets; or data in Python (a tensor or array
            ``(n, *x_shape)``, ``(x, labels)``, a ``torch.utils.data.Dataset`` or a ``DataLoader``), split and
            transformed as ``config.data`` says; None: read from ``config.data.source``. Except for ready
            splits, the run folder records the data in ``data.json`` (source, sha256 or package version,
            split, fitted transform).
        progress: None (default): a progress bar over the whole run with its ETA in a terminal or a notebook
            (``tqdm.auto``), one line per epoch elsewhere (stderr); True: the bar; False: nothing (the epoch
            lines go to the ``pyrovae`` logger at INFO).
        on_epoch_end: see :data:`EpochCallback`.
        distributed: data-parallel training over the processes that torchrun started (see
            :mod:`pyrovae.training.distributed`): the global batch is ``batch_size`` x their number, rank
            0 alone writes to ``run_dir``, and the recorded terms are means over all processes. None
            (default): when ``$WORLD_SIZE > 1`` or a process group is initialized.
        data_info: the :class:`~pyrovae.data.DataInfo` of ready splits passed as ``data``, for ``data.json``.

    Returns:
        the trained model (eval mode) and the per-epoch history: dicts with ``stage`` (for families
        trained in several stages), ``epoch``, ``train_<term>`` for each term of the stage's loss record
        (for the ELBO: ``train_objective`` (the beta-weighted ELBO that is maximized), ``train_elbo``,
        ``train_reconstruction``, ``train_kl``; nats per observation), ``beta`` (the KL weight at the
        epoch's last step), ``lr``, ``validation_<name>`` for each validation metric (the ELBO terms at
        beta = 1 without free bits, or the family's own, e.g. M2's ``validation_accuracy``),
        ``test_<name>`` for families that report the test split every epoch, and ``seconds``.

    Raises:
        RunDirError: ``run_dir`` holds a checkpoint, or anything else, and ``resume`` is False; ``resume``
            is True and it holds none; another process holds its lock; its checkpoint is a symbolic link;
            ``run_dir`` cannot be written (a file, under a file, a name too long, a read-only file system: see
            :func:`pyrovae.files.ensure_writable_dir`).
        CheckpointError: the checkpoint to resume from is unreadable.
        DataError: data the model cannot take (shape, NaN, values outside the likelihood's support).
        ConfigError: invalid settings, e.g. an unavailable device or early stopping without validation; on
            ``resume``, settings that differ from the run's (see :data:`RESUME_MAY_CHANGE`) or fewer epochs
            than the run has done.
    """
    run_dir = Path(run_dir)
    ctx = init_distributed(resolve_device(config.trainer.device), distributed)
    ctx.on_main(lambda: ensure_writable_dir(run_dir, create=False))  # an unwritable path: one RunDirError, at once
    ctx.on_main(lambda: check_run_dir(run_dir, resume))  # a refused folder is not even locked
    with contextlib.ExitStack() as lock:  # rank 0 alone writes, and holds the run folder's lock
        ctx.on_main(lambda: lock.enter_context(run_dir_lock(run_dir, "train", create=True)) and None)
        try:
            return _fit(config, run_dir, resume, ctx, data, progress, on_epoch_end, data_info)
        except BaseException:  # stopped (Ctrl-C, an error) before the first checkpoint: leave the folder as it was
            if not resume and ctx.is_main:
                remove_start_files(run_dir)
            raise


def _fit(config: RunConfig, run_dir: Path, resume: bool, ctx: DistributedContext, data, progress: bool | None,
         on_epoch_end: EpochCallback | None, data_info) -> tuple[Family, list[dict]]:
    state = ctx.on_main(lambda: read_run_dir(run_dir, resume))  # rank 0 reads; every rank gets it
    if state is not None:
        config = resumed_config(state, config)
    trainer = config.trainer
    device = ctx.device

    pyro.set_rng_seed(ctx.seed(trainer.seed))
    generator = torch.Generator().manual_seed(trainer.seed)  # shuffles; the same on every process
    sample_generator = torch.Generator().manual_seed(ctx.seed(trainer.seed, stream=1))  # each process's own
    info = data_info
    if _is_splits(data):
        train, validation, test = data
    else:  # read, split and transform: a resumed run applies the transform it was trained with
        recorded = ctx.on_main(lambda: read_data_info(run_dir)) if state is not None else None
        train, validation, test, info = prepare_data(config.data, trainer.seed, data=data,
                                                     fitted=None if recorded is None else recorded.fitted)
        check_same_data(recorded, info)
    if trainer.tensorboard:
        check_tensorboard()  # before any work: a missing package is a one-line error
    if trainer.early_stopping_patience is not None and validation is None:
        raise ConfigError(f"early_stopping_patience={trainer.early_stopping_patience} needs a validation split; "
                          "set validation_size (--validation-size) or drop early stopping")

    from_data = {"x_shape": tuple(train.x_shape),  # what the config does not say explicitly comes from the data
                 "num_classes": None if info is None else info.num_classes}  # the source's classes, all splits
    update = {k: v for k, v in from_data.items() if v is not None and k in type(config.model).model_fields
              and k not in config.model.model_fields_set and getattr(config.model, k) != v}
    likelihood_options = getattr(config.model, "likelihood_options", None)
    if getattr(config.model, "likelihood", None) == "mixed" and "schema" not in likelihood_options:
        if info is None or info.schema is None:  # the mixed likelihood's column types come from the data
            raise ConfigError("the mixed likelihood needs the table's column types: read it with --data-option "
                              "schema=auto (inferred) or schema=FILE.json (DataConfig(data_options={'schema': ...}))")
        update["likelihood_options"] = {**likelihood_options, "schema": info.schema}
    elif info is not None and info.schema is not None and state is None:
        raise ConfigError(f"the data was read with a column schema (categories, counts, binary columns) for the "
                          f"mixed likelihood, but the likelihood is {getattr(config.model, 'likelihood', None)!r}: "
                          "train with --likelihood mixed, or read the table without --data-option schema")
    if update:
        config = config.model_copy(update={"model": config.model.replace(**update)})
    size = {k: v for k, v in config.model.model_dump().items() if k in ("z_dim", "hidden", "x_shape")}
    checks.trainable_in_memory(parameter_count(lambda: family_for(config.kind).from_config(config.model)),
                               ", ".join(f"{k}={v}" for k, v in size.items()) or config.kind,
                               hint="choose smaller hidden sizes or a smaller z_dim")  # before any allocation
    model = family_for(config.kind).from_config(config.model)
    for split in (train, validation, test if model.test_each_epoch else None):
        if split is not None:
            model.check_dataset(split, trainer.seed)
    plan = model.batch_plan(train, trainer.batch_size, trainer.seed,
                            None if state is None else state.get("family_state"))
    if state is None:
        model.init_from_data(train)
    model.to(device)
    objective = make_elbo(trainer.elbo, trainer.num_particles, trainer.free_bits)
    held_out_objective = make_elbo(trainer.elbo, trainer.num_particles)  # the bound itself: no free bits
    stages = model.stages(plan, objective, held_out_objective, trainer.epochs)
    steps = plan.steps(ctx)

    history: list[dict] = []
    start_stage, done, stopped, monitor_state = 0, 0, False, None
    if state is not None:
        history, start_stage, done = list(state["history"]), int(state["stage"]), int(state["epoch"])
        _check_epochs_done(stages, history, start_stage, done)  # before config.json is written
        model.load_state_dict(state["model"])
        stopped, monitor_state = bool(state.get("stopped", False)), state.get("monitor")
        restore_rng_state(state["rng"], generator, device)
        ctx.restore_rng_states(state["rng"].get("ranks"), sample_generator, trainer.seed, done)

    warnings = warmup_warnings(stages, trainer)
    facts = {"kind": config.kind, "kl_term": _kl_term(model, train, trainer.elbo, device),
             **model.training_info(plan), "kl_warmup_epochs": trainer.kl_warmup_epochs, "warnings": warnings}

    logs = {}  # rank 0's TensorBoard writer

    def write_start():
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG)
        if info is not None:
            write_data_info(run_dir, info)
        write_metrics(run_dir, {"training": facts})
        for message in warnings:
            log.warning("warning: %s", message)
        if trainer.tensorboard:
            logs["tensorboard"] = TensorBoardLog(run_dir, history)

    ctx.on_main(write_start)  # rank 0 alone writes to run_dir
    tensorboard = logs.get("tensorboard")
    remaining = sum(stage.epochs - (done if state is not None and index == start_stage else 0)
                    for index, stage in enumerate(stages) if index >= start_stage
                    and not (state is not None and index == start_stage and stopped))
    reporter = Progress(progress, max(remaining, 0) * steps, trainer.beta, enabled=ctx.is_main)

    for index, stage in enumerate(stages):
        if index < start_stage:
            continue
        resuming = state is not None and index == start_stage
        start = done if resuming else 0
        if start >= stage.epochs or (resuming and stopped):
            continue
        _set_trainable(model, stage.parameters)
        optimizer = make_optimizer(stage.parameters, trainer.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_factor(trainer.lr_schedule, trainer.final_lr_ratio, stage.epochs * steps))
        monitor = _Monitor(stage, trainer.early_stopping_patience, monitor_state if resuming else None)
        if resuming:
            _restore_optimizer(optimizer, scheduler, state, trainer.lr, steps, done)
        ddp = ctx.wrap(model, stage.loss)  # None for one process
        label = stage.name if len(stages) > 1 else None
        for epoch in range(start + 1, stage.epochs + 1):
            row = train_epoch(model, stage, plan, ddp, optimizer, scheduler, ctx, generator, sample_generator,
                               trainer, steps, epoch, label, reporter.step_bar() or False)
            t0 = time.perf_counter() - row.pop("seconds")
            if validation is not None and stage.validate is not None:
                with torch.no_grad():
                    values = ctx.mean_over_shards(stage.validate, validation)
                    row.update({f"validation_{k}": v for k, v in values.items()})
            if model.test_each_epoch and stage.validate is not None:
                with torch.no_grad():
                    row.update({f"test_{k}": v for k, v in ctx.mean_over_shards(stage.validate, test).items()})
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            improved = monitor.update(row)
            stopped = monitor.exhausted
            if ctx.is_main:
                reporter.epoch(row, stage.epochs, steps)
            rng = rng_state(generator, device)
            if ctx.enabled:
                rng["ranks"] = ctx.rng_states(sample_generator)  # a collective: every rank takes part
            checkpoint = {
                "kind": config.kind, "config": config.to_dict(), "stage": index, "stage_name": stage.name,
                "epoch": epoch, "stopped": stopped, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history, "rng": rng,
                "family_state": model.family_state(), "monitor": monitor.state(), "world_size": ctx.world_size,
                "steps_per_epoch": steps,
            }

            def write_epoch():
                save_checkpoint(run_dir / CHECKPOINT, checkpoint)
                if improved and index == len(stages) - 1:
                    save_checkpoint(run_dir / BEST, checkpoint)
                write_metrics(run_dir, {"history": history,
                                        **summarize_history(history, stages[-1].monitor, stages[-1].mode)})
                write_metrics_csv(run_dir, history)
                if tensorboard is not None:
                    tensorboard.write(history)

            ctx.on_main(write_epoch)
            if on_epoch_end is not None:
                on_epoch_end(model, row, run_dir / CHECKPOINT)
            if stopped:
                if ctx.is_main:
                    log.info("early stopping: %s has not improved for %d epochs (best %.4g at epoch %d)",
                             monitor.key, monitor.bad_epochs, monitor.best, monitor.best_epoch)
                break
    reporter.close()
    late = warmup_warnings(stages, trainer, history)  # early stopping inside the warm-up

    def write_end():
        if tensorboard is not None:
            tensorboard.close()
        if late:
            for message in late:
                log.warning("warning: %s", message)
            write_metrics(run_dir, {"training": {**facts, "warnings": warnings + late}})

    ctx.on_main(write_end)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval(), history


def train_epoch(model: Family, stage: Stage, plan, ddp, optimizer, scheduler, ctx: DistributedContext,
                 generator: torch.Generator, sample_generator: torch.Generator, trainer, steps: int, epoch: int,
                 label: str | None, progress: bool | None) -> dict:
    """One epoch of ``stage`` over the batches of ``plan``: each step computes the stage's loss record (under
    the KL weight of that step, through ``ddp`` when given), backpropagates, steps ``optimizer`` and
    ``scheduler``; returns the history row's ``train_*`` terms (means over the epoch's observations, over
    all processes), ``beta``, ``lr`` and ``seconds``. What :func:`fit` runs each epoch (and what
    ``benchmarks/throughput.py`` times)."""
    model.train()
    t0 = time.perf_counter()
    device = ctx.device
    sums: dict[str, torch.Tensor] = {}
    weighted = stage.weighted_sites is None or len(stage.weighted_sites) > 0
    beta = 1.0
    batches = plan.epoch(generator, sample_generator, ctx)
    run_bar = progress if hasattr(progress, "update") else None  # fit's whole-run bar, advanced per step
    if run_bar is None:
        batches = tqdm(batches, total=steps, leave=False,
                       desc=f"{label + ' ' if label else ''}epoch {epoch}/{stage.epochs}",
                       disable=True if not ctx.is_main else None if progress is None else not progress)
    with pyro.validation_enabled(False):
        for i, batch in enumerate(batches):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if weighted:
                beta = kl_weight_at(trainer.beta, trainer.kl_warmup_epochs, (epoch - 1) * steps + i, steps)
            with kl_weight(beta, stage.weighted_sites):
                loss, terms, n = ddp(batch) if ddp is not None else _record(stage.loss(batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for k, v in terms.items():
                sums[k] = sums[k] + v * n if k in sums else v * n
            if run_bar is not None:
                run_bar.update()
    total = plan.observations_per_epoch(ctx)
    row = {"stage": label, "epoch": epoch} if label else {"epoch": epoch}
    row.update({f"train_{k}": ctx.all_reduce_sum(v).item() / total for k, v in sums.items()})
    if weighted:
        row["beta"] = beta
    row["lr"] = optimizer.param_groups[0]["lr"]
    row["seconds"] = time.perf_counter() - t0
    return row


def _record(record):
    return record.loss, record.terms, record.num_observations


def _restore_optimizer(optimizer, scheduler, state: dict, lr: float, steps: int, done: int) -> None:
    """The optimizer's and the schedule's states of the checkpoint being resumed; a checkpoint written
    before its family had a schedule ran at a constant rate, which the restored optimizer keeps.

    The schedule follows the fraction of the stage's epochs done (the samples seen), not the count of one
    process's optimizer steps: a run resumed with another number of processes (so another number of steps
    per epoch, ``steps`` now) goes on from the same point of its schedule (see :func:`resumed_step`)."""
    if state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    lambdas = scheduler.lr_lambdas
    if state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
        scheduler.lr_lambdas = lambdas  # the schedule over the (possibly extended) epochs
        scheduler.last_epoch = resumed_step(scheduler.last_epoch, state.get("steps_per_epoch"), steps, done)
    for group in optimizer.param_groups:  # the schedule's rate at the step resumed from
        group.setdefault("initial_lr", lr)
        group["lr"] = group["initial_lr"] * lambdas[0](scheduler.last_epoch)


def resumed_step(saved_step: int, saved_steps_per_epoch: int | None, steps_per_epoch: int, done: int) -> int:
    """The schedule's step to resume from: ``saved_step`` of a run that took ``saved_steps_per_epoch``
    optimizer steps per epoch (inferred from ``done`` epochs for checkpoints that do not say), in today's
    steps of ``steps_per_epoch`` (they differ when the number of processes has changed). Unchanged when
    the steps per epoch are (a resumed run then goes on exactly)."""
    before = saved_steps_per_epoch or (saved_step / done if done else steps_per_epoch)
    if before == steps_per_epoch:
        return saved_step
    return round(saved_step * steps_per_epoch / before)


def _kl_term(model: Family, train: ImageDataset, elbo: str, device: torch.device) -> str | None:
    """How the ELBO's KL term is computed for this model: ``"analytic"`` where every latent site has a
    closed form and the objective uses it (``TraceMeanField_ELBO``), else ``"monte_carlo"``."""
    if elbo == "IWAE":
        return None
    if elbo == "Trace_ELBO":
        return "monte_carlo"
    batch = {k: v.to(device) for k, v in train.batch(torch.arange(min(2, len(train))),
                                                      torch.Generator().manual_seed(0)).items()}
    try:
        with rng_kept(device), torch.no_grad():
            return kl_method(model.model, model.guide, *model.program_args(batch))
    except PyroVAEError:
        return None
