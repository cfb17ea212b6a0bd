"""Posterior collapse: which latent dimensions carry information (KL per dimension, active units), and
latent traversals that show what the active ones do."""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.poutine as poutine
import torch

from ..errors import ConfigError, UnsupportedError
from ..evaluation.latents import active_units, kl_per_dimension
from ..evaluation.programs import check_arguments, program_device
from .psis import frozen_programs

ACTIVE_UNIT_THRESHOLD = 0.01
"""Burda et al. (2016): dimension d is active when Cov_x(E_q[z_d]) exceeds this."""


def posterior_collapse(model, guide, *args, threshold: float = ACTIVE_UNIT_THRESHOLD, site: str = "z") -> dict:
    r"""Which latent dimensions carry information: KL per dimension and active units.

    Dimension d is active when the variance over data points of its posterior mean,
    Cov_x(E_{q(z|x)}[z_d]), exceeds ``threshold`` (Burda, Grosse & Salakhutdinov 2016, who found 19-20 of
    50 active for a one-layer VAE). A collapsed dimension has q(z_d|x) = p(z_d) for every x: KL 0 and
    variance 0. Computed by :func:`pyrovae.evaluation.kl_per_dimension` and
    :func:`pyrovae.evaluation.active_units`.

    Args:
        model, guide: the Pyro programs of a trained model.
        *args: their arguments, one row per data point, n >= 2 (the whole test set is cheap: one guide
            pass).
        threshold: the activity threshold on the variance.
        site: the latent site (default ``"z"``).

    Returns:
        dict with ``kl_per_dimension`` ``(z_dim,)`` (nats, mean over data points; None where the prior or
        the guide does not factorize over the dimensions, e.g. a VampPrior or an IAF guide, so that the KL
        has no per-dimension split), ``variance`` ``(z_dim,)``, ``active`` ``(z_dim,)`` bool and
        ``active_units`` (the count).

    Raises:
        DataError: fewer than 2 data points. ConfigError: a negative ``threshold`` or no site ``site``.
    """
    units = active_units(model, guide, *args, threshold=threshold, site=site)
    try:
        kl = kl_per_dimension(model, guide, *args, site=site).double()
    except UnsupportedError:  # the prior or the guide does not factorize over the dimensions
        kl = None
    return {"kl_per_dimension": kl, "variance": units["variance"].double(), "active": units["active"],
            "active_units": units["num_active"]}


@torch.no_grad()
def latent_traversal(model, *args, z: torch.Tensor, dims: Sequence[int], offsets: Sequence[float],
                     site: str = "z") -> torch.Tensor:
    """Decode z with one dimension moved at a time: the mean of the model's observed site given
    z + offset e_d, for each d in ``dims`` and each offset.

    The model is run with its latent site conditioned on each moved z (``poutine.condition``), so any
    family decodes the same way; the other arguments are one data point's, repeated (a CVAE's label
    stays that data point's).

    Args:
        model: the model program of a trained model.
        *args: its arguments for one data point (first dimension 1).
        z: ``(z_dim,)`` the centre, e.g. the posterior mean of that data point.
        dims: the latent dimensions to move (rows of the result).
        offsets: the displacements along each (columns), in units of z (the standard normal prior's sd).
        site: the latent site (default ``"z"``).

    Returns:
        ``(len(dims), len(offsets), *event_shape)``: the observed site's mean (pixel probabilities for
        Bernoulli), on the CPU.

    Raises:
        ConfigError: ``z`` is not one latent vector; a dimension out of range; arguments that are not
            one data point's.
    """
    if check_arguments(args) != 1:
        raise ConfigError("latent_traversal decodes around one data point: pass its arguments as x[i:i+1]")
    z = torch.as_tensor(z)
    if z.dim() != 1:
        raise ConfigError(f"z must be one latent vector of shape (z_dim,), got {tuple(z.shape)}")
    z_dim = z.shape[0]
    bad = [d for d in dims if not 0 <= int(d) < z_dim]
    if bad:
        raise ConfigError(f"dims {bad} are out of range for z_dim = {z_dim}")
    device = program_device(model)
    offsets = torch.as_tensor(list(offsets), dtype=z.dtype)
    grid = z.expand(len(dims), len(offsets), z_dim).clone()
    for row, d in enumerate(dims):
        grid[row, :, int(d)] += offsets
    flat = grid.reshape(-1, z_dim).to(device)
    repeated = tuple(a.to(device).expand(flat.shape[0], *a.shape[1:]) for a in args)
    with frozen_programs(model), pyro.validation_enabled(False):
        trace = poutine.trace(poutine.condition(model, data={site: flat})).get_trace(*repeated)
    observed = [s for s in trace.nodes.values()
                if s["type"] == "sample" and s["is_observed"] and s["name"] != site]  # conditioning observes z
    mean = observed[0]["fn"].mean
    return mean.reshape(len(dims), len(offsets), *mean.shape[1:]).cpu()
