"""ArviZ: imported quietly, and the diagnostics' draws as an ``arviz.InferenceData`` saved as NetCDF."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..errors import DataError
from ..files import atomic_output


def _import_arviz():
    """ArviZ 0.2x announces its coming refactor on import (a FutureWarning, and INFO log lines about
    optional packages): nothing a pyrovae user can act on, so both are held back during the import."""
    preview_log = logging.getLogger("arviz.preview")
    level = preview_log.level
    preview_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    finally:
        preview_log.setLevel(level)
    return arviz


az = _import_arviz()

# --- ArviZ --------------------------------------------------------------------------------------------------


def to_inference_data(samples: Mapping[str, torch.Tensor], image_ids: Sequence[int] | None = None,
                      psis: Mapping[str, torch.Tensor] | None = None,
                      reference: Mapping[int, Mapping] | None = None) -> "az.InferenceData":
    r"""q(z|x) draws, their importance weights and NUTS reference draws as one ``arviz.InferenceData``.

    Groups (each image labelled by its ``image`` coordinate, e.g. its index in the test set):

    * ``posterior``: ``z`` (chain, draw, image, z_dim), the draws of q(z|x) as one chain;
    * ``sample_stats``: ``log_weight`` (chain, draw, image), log p(x, z) - log q(z|x) in nats;
    * ``psis`` (with ``psis``): ``khat``, ``ess_fraction`` (image);
    * ``reference_posterior`` (with ``reference``): ``z`` (chain, draw, image, z_dim), NUTS draws of
      p(z|x) for the images in ``reference`` (``az.rhat(idata.reference_posterior)`` works on it).

    Save it with :func:`save_netcdf` (atomic) or ``idata.to_netcdf(path)``; read it back with
    ``arviz.from_netcdf(path)``.

    Args:
        samples: :func:`pyrovae.diagnostics.posterior_samples`' result: ``z`` ``(S, n, z_dim)``, ``log_weights``
            ``(S, n)``.
        image_ids: n distinct integers naming the images (default 0..n-1).
        psis: :func:`pyrovae.diagnostics.psis_khat`'s result for the same images.
        reference: image id -> :func:`pyrovae.diagnostics.mcmc_reference`'s result; all with the same number of
            chains and draws.

    Returns:
        an ``arviz.InferenceData`` with the groups above (values in float64).

    Raises:
        DataError: shapes that disagree, repeated image ids, or reference runs of different sizes.
    """
    z, log_w = torch.as_tensor(samples["z"]), torch.as_tensor(samples["log_weights"])
    if z.dim() != 3 or tuple(log_w.shape) != tuple(z.shape[:2]):
        raise DataError(f"samples must hold z (S, n, z_dim) and log_weights (S, n); got z {tuple(z.shape)} and "
                         f"log_weights {tuple(log_w.shape)}")
    n, z_dim = z.shape[1], z.shape[2]
    ids = list(range(n)) if image_ids is None else [int(i) for i in image_ids]
    if len(ids) != n or len(set(ids)) != n:
        raise DataError(f"image_ids must be {n} distinct integers (one per image of samples), got {list(image_ids)}")
    coords = {"image": ids, "z_dim": list(range(z_dim))}
    idata = az.from_dict(
        posterior={"z": z[None].double().numpy()}, sample_stats={"log_weight": log_w[None].double().numpy()},
        coords=coords, dims={"z": ["image", "z_dim"], "log_weight": ["image"]},
        attrs={"inference_library": "pyro", "description": "draws of the amortized guide q(z|x)"})
    groups = {}
    if psis is not None:
        groups["psis"] = az.dict_to_dataset(
            {k: torch.as_tensor(psis[k]).double().numpy() for k in ("khat", "ess_fraction")},
            coords={"image": ids}, dims={"khat": ["image"], "ess_fraction": ["image"]}, default_dims=[])
    if reference:
        ref_ids = [int(i) for i in reference]
        shapes = {tuple(torch.as_tensor(r["z"]).shape) for r in reference.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != z_dim:
            raise DataError(f"every reference must hold z (num_chains, num_samples, {z_dim}) of one common shape, "
                             f"got shapes {sorted(shapes)}")
        ref_z = torch.stack([torch.as_tensor(reference[i]["z"]) for i in reference], dim=2)
        groups["reference_posterior"] = az.dict_to_dataset(
            {"z": ref_z.double().numpy()}, coords={"image": ref_ids, "z_dim": list(range(z_dim))},
            dims={"z": ["image", "z_dim"]}, attrs={"description": "NUTS draws of the exact posterior p(z|x)"})
    if groups:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # ArviZ notes that these group names are its extensions
            idata.add_groups(groups)
    return idata


def save_netcdf(idata: "az.InferenceData", path: str | os.PathLike) -> Path:
    """Write ``idata`` to ``path`` as NetCDF (h5netcdf) atomically: a reader sees the old file or the new one."""
    with atomic_output(path) as tmp:
        idata.to_netcdf(tmp)
    return Path(path)
