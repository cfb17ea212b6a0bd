"""What a user sees while a run trains, and the loss record in the formats other tools read.

* :class:`Progress`: a whole-run progress bar with its ETA (``tqdm.auto``: a terminal's bar, or a notebook's
  widget), with one summary line per epoch above it; where stderr is not a terminal (a log file, a batch
  job), one line per epoch with the elapsed time and the ETA instead of a bar.
* :func:`epoch_line`: that line. The ELBO itself (beta = 1) comes first; the objective that is maximized is
  shown beside it where it differs (KL warm-up, beta, free bits, IWAE), with the KL weight.
* :func:`warmup_warnings`: a run that ends before its KL warm-up does is trained on a KL-discounted objective.
* :func:`write_metrics_csv` (``metrics.csv``, one row per epoch) and :class:`TensorBoardLog` (event files
  under ``RUN_DIR/tensorboard``), both from the history rows.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write_text

log = logging.getLogger("pyrovae.training.trainer")

METRICS_CSV = "metrics.csv"
TENSORBOARD = "tensorboard"

#: History keys that are not curves.
_NOT_CURVES = ("epoch", "stage")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where ``tqdm.auto`` draws a widget)."""
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # noqa: BLE001 - any IPython state that is not a kernel
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_mode(progress: bool | None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"``: what ``fit(progress=...)`` shows. None (the default): a bar in a
    terminal or a notebook, one line per epoch elsewhere; True: a bar; False: nothing (the epoch lines still
    go to the ``pyrovae`` logger at INFO)."""
    if progress is False:
        return "off"
    if progress is True:
        return "bar"
    try:
        terminal = sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return "bar" if terminal or in_notebook() else "lines"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def in_warmup(row: dict, beta: float) -> bool:
    """The epoch of ``row`` ended with the KL weight still below its target ``beta``."""
    return row.get("beta") is not None and row["beta"] < beta * (1 - 1e-9)


def epoch_line(row: dict, epochs: int, beta: float = 1.0) -> str:
    """One epoch's history row as one line: ``epoch 3/10: ELBO -97.31 (objective -84.90 at beta 0.3, KL
    warm-up), reconstruction ..., KL ..., validation ELBO ..., lr ..., 1.2 s``. ``beta``: the run's target KL
    weight (to tell the warm-up's epochs)."""
    head = f"{row['stage'] + ' ' if row.get('stage') else ''}epoch {row['epoch']}/{epochs}:"
    parts = []
    elbo, objective = row.get("train_elbo"), row.get("train_objective")
    if elbo is not None:
        text = f"ELBO {elbo:.2f}"
        if objective is not None and not math.isclose(objective, elbo, rel_tol=1e-7, abs_tol=1e-9):
            weight = f" at beta {row['beta']:.3g}" if row.get("beta") is not None else ""
            warmup = ", KL warm-up" if in_warmup(row, beta) else ""
            text += f" (objective {objective:.2f}{weight}{warmup})"
        parts.append(text)
    elif objective is not None:
        parts.append(f"objective {objective:.2f}")
    for key, value in row.items():
        if key in _NOT_CURVES or key in ("train_elbo", "train_objective", "beta", "seconds", "lr"):
            continue
        group, _, term = key.partition("_")
        twin = row.get(f"{group}_elbo") if term == "objective" else None
        if twin is not None and math.isclose(value, twin, rel_tol=1e-7, abs_tol=1e-9):
            continue  # the held-out objective is the ELBO itself
        words = key.removeprefix("train_").split("_")
        name = " ".join({"elbo": "ELBO", "kl": "KL"}.get(w, w) for w in words)
        parts.append(f"{name} {value:.4g}" if isinstance(value, (int, float)) else f"{name} {value}")
    if "lr" in row:
        parts.append(f"lr {row['lr']:.3g}")
    if "seconds" in row:
        parts.append(f"{row['seconds']:.2g} s" if row["seconds"] < 10 else f"{row['seconds']:.0f} s")
    return f"{head} {', '.join(parts)}"


class Progress:
    """What ``fit`` shows while it trains (see :func:`progress_mode`): a whole-run bar over ``total_steps``
    optimizer steps with its ETA and one line per epoch above it, or one line per epoch with the ETA, or
    nothing. Only the main process shows anything (``enabled=False`` elsewhere)."""

    def __init__(self, progress: bool | None, total_steps: int, beta: float, enabled: bool = True):
        self.mode = progress_mode(progress) if enabled else "off"
        self.total, self.done, self.beta, self.busy = max(0, int(total_steps)), 0, beta, 0.0
        self.t0 = time.perf_counter()
        self.bar = None
        if self.mode == "bar" and self.total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc="training", unit="step", dynamic_ncols=True, file=sys.stderr)

    def step_bar(self):
        """The bar that :func:`~pyrovae.training.trainer.train_epoch` advances once per step, or None. Its
        clock starts at the first call, so that its ETA leaves out the start-up (data, optimizer)."""
        if self.bar is not None and not self.done and not self.bar.n:
            self.bar.reset(total=self.total)
        return self.bar

    def epoch(self, row: dict, epochs: int, steps: int) -> None:
        """Report an epoch's history row (``steps`` optimizer steps)."""
        self.done += steps
        self.busy += row.get("seconds", 0.0)  # the epochs' own time: the ETA leaves out one-time start-up costs
        line = epoch_line(row, epochs, self.beta)
        if self.mode == "off":
            log.info(line)
            return
        log.debug(line)
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
            if row.get("train_elbo") is not None:
                self.bar.set_postfix_str(f"ELBO {row['train_elbo']:.2f}", refresh=True)
            return
        elapsed = time.perf_counter() - self.t0
        eta = self.busy / self.done * (self.total - self.done) if self.done and self.total > self.done else 0.0
        print(f"{line}; {_clock(elapsed)} elapsed, ETA {_clock(eta)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def warmup_warnings(stages, trainer, history: list[dict] | None = None) -> list[str]:
    """Why the run's objective is not its ELBO at the end: a stage with a KL weight that ends (by its
    number of epochs, or by early stopping in ``history``) before its linear KL warm-up of
    ``trainer.kl_warmup_epochs`` epochs reaches ``trainer.beta``."""
    warmup = trainer.kl_warmup_epochs
    out = []
    for stage in stages:
        if warmup <= 0 or stage.weighted_sites is not None and len(stage.weighted_sites) == 0:
            continue
        name = f"stage {stage.name!r} of the run" if len(stages) > 1 else "the run"
        last = stage.epochs
        if history is not None:
            rows = [h for h in history if h.get("stage") == (stage.name if len(stages) > 1 else None)]
            if not rows or not in_warmup(rows[-1], trainer.beta) or stage.epochs < warmup:
                continue  # finished its warm-up, or already warned at the start
            last = rows[-1]["epoch"]
        elif stage.epochs >= warmup:
            continue
        reached = trainer.beta * last / warmup
        out.append(f"{name} ends at epoch {last}, before its KL warm-up of {warmup:g} epochs does (the KL weight "
                   f"reaches {reached:.3g} of beta = {trainer.beta:g}): it trains a KL-discounted objective; "
                   f"train_elbo, not train_objective, is its ELBO. Train for at least {math.ceil(warmup)} epochs, "
                   f"or shorten --kl-warmup-epochs")
    return out


def write_metrics_csv(run_dir: str | os.PathLike, history: list[dict]) -> Path:
    """``run_dir/metrics.csv``: one row per history row (epoch), a column per key in order of first appearance
    (empty where a row lacks it), written atomically."""
    columns: dict[str, None] = {}
    for row in history:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in history])
    path = Path(run_dir) / METRICS_CSV
    atomic_write_text(path, buffer.getvalue())
    return path


def check_tensorboard() -> None:
    """Raise :class:`~pyrovae.errors.ConfigError` unless torch's ``SummaryWriter`` can be imported (it needs
    the ``tensorboard`` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"tensorboard=True (--tensorboard) writes TensorBoard event files, which needs the "
                          f"tensorboard package ({e}): pip install 'pyrovae[tensorboard]'") from None


class TensorBoardLog:
    """TensorBoard event files under ``run_dir/tensorboard``: every numeric key of each history row as a
    scalar (``train/elbo``, ``train/objective``, ``validation/elbo``, ``beta``, ``lr``, ...), at the row's
    position in the history (the epoch for families trained in one stage). A resumed run first writes the
    rows the event files do not hold yet (all of them where earlier epochs were not logged) and hides events
    after the checkpoint's last epoch (``purge_step``)."""

    def __init__(self, run_dir: str | os.PathLike, history: list[dict]):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run_dir) / TENSORBOARD
        existing = self.dir.is_dir() and any(p.name.startswith("events.") for p in self.dir.iterdir())
        self.writer = SummaryWriter(str(self.dir), purge_step=len(history) + 1 if existing and history else None)
        self.logged = len(history) if existing else 0
        self.write(history)

    def write(self, history: list[dict]) -> None:
        """Log the rows of ``history`` not logged yet."""
        for step in range(self.logged + 1, len(history) + 1):
            for key, value in history[step - 1].items():
                if key in _NOT_CURVES or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                group, _, name = key.partition("_")
                tag = f"{group}/{name}" if group in ("train", "validation", "test") and name else key
                self.writer.add_scalar(tag, value, step)
        self.logged = len(history)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
