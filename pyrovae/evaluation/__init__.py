"""Evaluation of any model family: one importance-sampling estimator written against
``(model, guide, *args)`` (log p(x), log p(x | y), log p(y | x), label posteriors), its memory planner,
latent statistics, and the test metrics a run folder records."""

from .latents import active_units, kl_per_dimension, linear_probe, posterior_means
from .likelihood import importance_sampled, label_posterior, log_likelihood, summarize
from .memory import ChunkPlan, measure_pass_memory, plan_chunks
from .metrics import as_batch, evaluate, program_arguments

__all__ = ["ChunkPlan", "active_units", "as_batch", "evaluate", "importance_sampled", "kl_per_dimension",
           "label_posterior", "linear_probe", "log_likelihood", "measure_pass_memory", "plan_chunks",
           "posterior_means", "program_arguments", "summarize"]
