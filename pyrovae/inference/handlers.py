"""Effect handlers that objectives and the trainer use.

:func:`kl_weight` weighs the latent sites of a model and its guide by beta, so that any ELBO over the
pair weighs its KL term by beta (beta-VAE, Higgins et al. 2017; KL warm-up, Sonderby et al. 2016;
Bowman et al. 2016). It is ``poutine.scale`` restricted to latent sites: the observed sites (the
likelihood) keep weight 1. Because it is a handler rather than an argument of the programs, every model
family gets beta and warm-up without a ``beta`` parameter of its own.
"""

from __future__ import annotations

import contextlib
from typing import Collection

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


class KLWeightMessenger(Messenger):
    """Multiplies the ``scale`` of every latent sample site (not observed, not a plate's subsample site)
    by ``beta``; with ``sites``, only the sites of those names."""

    def __init__(self, beta: float, sites: Collection[str] | None = None):
        super().__init__()
        self.beta = beta
        self.sites = None if sites is None else frozenset(sites)

    def _process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        if self.sites is None or msg["name"] in self.sites:
            msg["scale"] = self.beta * msg["scale"]


def kl_weight(beta: float, sites: Collection[str] | None = None):
    """A context in which the latent sites of every Pyro program run (model and guide alike) are weighed
    by ``beta``: an ELBO computed inside it is E_q[log p(x|z)] - beta KL(q || p). ``sites`` restricts it to
    the latent sites of those names (None: all). At ``beta == 1`` it does nothing (and costs nothing).

    Example::

        with kl_weight(4.0):
            loss = elbo.differentiable_loss(vae.model, vae.guide, x)   # the beta-VAE objective, beta = 4
    """
    if beta == 1.0:
        return contextlib.nullcontext()
    return KLWeightMessenger(beta, sites)
