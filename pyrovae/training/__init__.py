"""The one trainer for every model family (:func:`fit`), its config, checkpoints and run folders, and
data-parallel training under torchrun."""

from .checkpoint import (BEST, CHECKPOINT, CONFIG, METRICS, load_checkpoint, load_run, read_metrics, read_run_config,
                         run_config, write_metrics)
from .config import EvaluationConfig, RunConfig, TrainerConfig
from .distributed import DistributedContext, cleanup, init_distributed
from .optim import flush_denormals, kl_weight_at, lr_factor, make_optimizer, resolve_device
from .trainer import fit, summarize_history

__all__ = ["BEST", "CHECKPOINT", "CONFIG", "DistributedContext", "EvaluationConfig", "METRICS", "RunConfig",
           "TrainerConfig", "cleanup", "fit", "flush_denormals", "init_distributed", "kl_weight_at",
           "load_checkpoint", "load_run", "lr_factor", "make_optimizer", "read_metrics", "read_run_config",
           "resolve_device", "run_config", "summarize_history", "write_metrics"]
