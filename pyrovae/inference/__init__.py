"""Inference: objectives (the ELBO with its terms, IWAE, free bits), the importance weights every
estimator is built on, and the KL-weight handler. Everything here takes Pyro programs with their
arguments, ``(model, guide, *args, **kwargs)``."""

from .handlers import KLWeightMessenger, kl_weight
from .objectives import (ELBO, ELBOS, IWAE, FreeBitsELBO, NoClosedFormKLError, NotFactorizedError, analytic_kl,
                         free_bits_kl, kl_method, kl_per_dim, make_elbo)
from .traces import ImportanceWeights, importance_weights, particle_traces

__all__ = ["ELBO", "ELBOS", "IWAE", "FreeBitsELBO", "ImportanceWeights", "KLWeightMessenger", "NoClosedFormKLError",
           "NotFactorizedError", "analytic_kl", "free_bits_kl", "importance_weights", "kl_method", "kl_per_dim",
           "kl_weight", "make_elbo", "particle_traces"]
