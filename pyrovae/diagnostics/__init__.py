"""Posterior diagnostics: how close is the amortized guide q(z|x) to the posterior p(z|x), data point by
data point? PSIS k-hat, a NUTS reference posterior, the inference, amortization and approximation gaps,
posterior collapse, and the one-page report of ``pyrovae diagnose`` (:func:`diagnose`), for any model
family. See :mod:`pyrovae.diagnostics.report` for the references."""

from .arviz_io import az, save_netcdf, to_inference_data
from .collapse import ACTIVE_UNIT_THRESHOLD, latent_traversal, posterior_collapse
from .gaps import LocalGuide, amortization_gap
from .mcmc import check_nuts_target, mcmc_reference
from .psis import KHAT_BAD, KHAT_GOOD, posterior_samples, psis_khat
from .report import diagnose

__all__ = ["ACTIVE_UNIT_THRESHOLD", "KHAT_BAD", "KHAT_GOOD", "LocalGuide", "amortization_gap", "az",
           "check_nuts_target", "diagnose", "latent_traversal", "mcmc_reference", "posterior_collapse",
           "posterior_samples", "psis_khat", "save_netcdf", "to_inference_data"]
