"""Posterior diagnostics: how close is the amortized guide q(z|x) to the posterior p(z|x), image by image?

* **PSIS k-hat** (Yao, Vehtari, Simpson & Gelman 2018): the importance ratios p(x, z) / q(z|x), z ~ q(z|x),
  are heavy-tailed when q misses mass of the posterior. The shape k of a generalized Pareto fitted to
  their largest min(S/5, 3 sqrt(S)) values (ArviZ's ``psislw``) measures how heavy: k < 0.5 good, 0.5 to
  0.7 usable, k > 0.7 the importance-sampled log p(x) (and anything else weighted by these ratios) is
  unreliable. Also the importance-sampling effective sample size (sum w)^2 / sum w^2.
* **A reference posterior by NUTS** (Hoffman & Gelman 2014): Pyro's NUTS on p(z | x_i) with the trained
  decoder, several chains, with R-hat and effective sample sizes from ArviZ, to compare q(z|x_i) against.
* **Inference, amortization and approximation gaps** (Cremer, Li & Duvenaud 2018): q* is the best member
  of the guide family for one image, found by SVI on per-image guide parameters started at the
  encoder's output; log p(x) - ELBO(q) = [ELBO(q*) - ELBO(q)] + [log p(x) - ELBO(q*)], with log p(x)
  importance sampled from the mixture of q and q*.
* **Posterior collapse**: the KL of each latent dimension and the active units (Burda, Grosse &
  Salakhutdinov 2016), and latent traversals along the active dimensions.
* **ArviZ**: all of it as an ``arviz.InferenceData`` saved as NetCDF.

:func:`diagnose` runs everything on a trained model and writes ``diagnostics.nc``, ``diagnostics.json``,
figures and the one-page report ``diagnostics.md`` (what ``pyrovae diagnose RUN_DIR`` does). All
log-densities, ELBOs and gaps are in nats per data point.

Every function takes the Pyro programs with their arguments, ``(model, guide, *args)`` (the gaps take the
model family, whose amortized guide's parameters they free), so the diagnostics serve any family: a
CVAE's are those of q(z | x, y). They follow the models' layout: a latent sample site (``"z"``) of event
shape ``(z_dim,)`` inside a data plate at ``dim=-1``.

References:
    Yao, Vehtari, Simpson & Gelman (2018), *Yes, but Did It Work?: Evaluating Variational Inference*, ICML.
    Vehtari, Simpson, Gelman, Yao & Gabry (2024), *Pareto Smoothed Importance Sampling*, JMLR 25(72).
    Hoffman & Gelman (2014), *The No-U-Turn Sampler*, JMLR 15.
    Cremer, Li & Duvenaud (2018), *Inference Suboptimality in Variational Autoencoders*, ICML.
    Owen & Zhou (2000), *Safe and Effective Importance Sampling*, JASA 95(449).
    Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*, ICLR.
"""


from __future__ import annotations

import json
import math
import numbers
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyro
import torch

from .. import checks, plots
from ..errors import ConfigError, UnsupportedError
from ..evaluation.latents import posterior_means
from ..evaluation.likelihood import summarize
from ..evaluation.metrics import program_arguments
from ..files import atomic_write_text, ensure_writable_dir
from ..models.base import Family
from .arviz_io import save_netcdf, to_inference_data
from .collapse import ACTIVE_UNIT_THRESHOLD, latent_traversal, posterior_collapse
from .gaps import amortization_gap
from .mcmc import check_nuts_target, mcmc_reference
from .psis import KHAT_BAD, KHAT_GOOD, posterior_samples, psis_khat

NETCDF, JSON, REPORT = "diagnostics.nc", "diagnostics.json", "diagnostics.md"
FIG_KHAT, FIG_KL, FIG_Q_VS_NUTS, FIG_TRAVERSALS = (
    "diagnostics_khat.png", "diagnostics_kl_per_dimension.png", "diagnostics_q_vs_nuts.png",
    "diagnostics_traversals.png")


def _pair_figure(image_id: int) -> str:
    return f"diagnostics_pair_image{image_id}.png"


# --- the whole report ---------------------------------------------------------------------------------------


def _jsonable(value):
    """Tensors and arrays to lists, non-finite floats to None (JSON has no inf or NaN)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (numbers.Integral,)):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value


def _mcmc_row(image: int, ref: dict, samples: dict, psis: dict, j: int) -> dict:
    """How q(z|x) of image ``image`` (column ``j`` of ``samples``) compares with its NUTS reference."""
    q_mean, q_sd = samples["z"][:, j].mean(0).double(), samples["z"][:, j].std(0).double()
    return {"image": image, "seconds": ref["seconds"], "num_workers": ref["num_workers"],
            "max_rhat": ref["rhat"].max().item(),
            "min_ess_bulk": ref["ess_bulk"].min().item(), "min_ess_tail": ref["ess_tail"].min().item(),
            "divergences": ref["divergences"], "step_size": ref["step_size"], "khat": psis["khat"][j].item(),
            "max_abs_mean_difference_in_nuts_sd": ((q_mean - ref["mean"]) .abs() / ref["sd"]).max().item(),
            "median_sd_ratio_q_over_nuts": (q_sd / ref["sd"]).median().item(),
            "nuts_mean": ref["mean"], "nuts_sd": ref["sd"], "rhat": ref["rhat"], "ess_bulk": ref["ess_bulk"]}


def _draw_figures(model: Family, args: tuple, image_ids: list[int], samples: dict, psis: dict, collapse: dict,
                  reference: dict, idata, run_dir: Path, pair_dims: int, traversal_dims: int) -> dict:
    """The figures of :func:`diagnose`; returns {key: file name} of those drawn."""
    files = {"khat": FIG_KHAT, "kl_per_dimension": FIG_KL}
    plots.plot_khat_histogram(psis["khat"], run_dir / FIG_KHAT, good=KHAT_GOOD, bad=KHAT_BAD)
    kl = collapse["kl_per_dimension"]
    if kl is not None:
        plots.plot_kl_per_dimension(kl, collapse["active"], run_dir / FIG_KL)
    else:  # no per-dimension KL for this prior or guide: show what defines activity instead
        plots.plot_kl_per_dimension(collapse["variance"], collapse["active"], run_dir / FIG_KL,
                                    ylabel="Cov_x(E_q[z_d]) (variance of the posterior mean over images)")
    ranking = torch.argsort(kl if kl is not None else collapse["variance"], descending=True).tolist()
    if reference:
        columns = [image_ids.index(i) for i in reference]
        plots.plot_posterior_comparison(
            samples["z"][:, columns].mean(0), samples["z"][:, columns].std(0),
            torch.stack([r["mean"] for r in reference.values()]), torch.stack([r["sd"] for r in reference.values()]),
            run_dir / FIG_Q_VS_NUTS, labels=[f"image {i}" for i in reference])
        files["q_vs_nuts"] = FIG_Q_VS_NUTS
        dims = sorted(ranking[:min(pair_dims, samples["z"].shape[-1])])
        for i in reference:
            plots.plot_pair_overlay(idata, i, dims, run_dir / _pair_figure(i))
            files[f"pair_image{i}"] = _pair_figure(i)
    active_dims = [d for d in ranking if collapse["active"][d]][:traversal_dims]
    if active_dims and len(getattr(model, "x_shape", ())) == 3:
        offsets = torch.linspace(-3, 3, 9)
        first = tuple(a[:1] for a in args)
        centre = posterior_means(model.model, model.guide, *first, site=model.latent_site)[0]
        decoded = latent_traversal(model.model, *first, z=centre, dims=active_dims, offsets=offsets,
                                   site=model.latent_site)
        if decoded.dim() == 5:  # images (C, H, W) per cell
            plots.plot_traversals(decoded, active_dims, offsets.tolist(), run_dir / FIG_TRAVERSALS,
                                  title=f"latent traversals around the posterior mean of test image {image_ids[0]}")
            files["traversals"] = FIG_TRAVERSALS
    return files


def diagnose(model: Family, data, run_dir: str | os.PathLike, num_images: int = 16,
             num_samples: int = 1000, mcmc_images: int = 2, mcmc_samples: int = 500, mcmc_warmup: int = 500,
             num_chains: int = 2, gap_steps: int = 300, gap_lr: float = 0.02, gap_particles: int = 8,
             log_likelihood_samples: int = 1000, pair_dims: int = 4, traversal_dims: int = 10,
             image_ids: Sequence[int] | None = None, seed: int = 0, jit_compile: bool = True,
             nuts_workers: int | None = None) -> dict:
    r"""Every diagnostic of :mod:`pyrovae.diagnostics` for a trained model of any family, written to
    ``run_dir`` with a one-page report.

    For the first ``num_images`` test data points (or those in ``image_ids``): ``num_samples`` draws of
    q(z|x), PSIS k-hat and ESS (:func:`psis_khat`), the ELBO, log p(x) and the inference, amortization and
    approximation gaps (:func:`amortization_gap`, skipped when ``gap_steps == 0``); for the first
    ``mcmc_images`` of them a NUTS reference posterior (:func:`mcmc_reference`); for all of ``data`` the KL
    per dimension and the active units (:func:`posterior_collapse`). A part the family does not support
    (the gaps without an amortized encoder's parameters, NUTS with a discrete latent such as M2's label)
    is skipped, and the report says why. All are computed on the programs with their arguments
    (:meth:`pyrovae.models.Family.program_args`), so for a CVAE on q(z | x, y) and p(x, z | y).

    Writes (each file atomically; nothing else in ``run_dir`` is touched): ``diagnostics.nc``
    (:func:`to_inference_data`), ``diagnostics.json`` (all numbers), ``diagnostics.md`` (figures and
    numbers on one page), ``diagnostics_khat.png``, ``diagnostics_kl_per_dimension.png``,
    ``diagnostics_q_vs_nuts.png`` and ``diagnostics_pair_image{i}.png`` (with NUTS), and
    ``diagnostics_traversals.png`` (for image data with active dimensions).

    Args:
        model: a trained model (left unchanged).
        data: the test data (an :class:`~pyrovae.data.ImageDataset`, a batch dict or a tensor).
        run_dir: where to write (created if missing).
        num_images, num_samples: images and q draws per image for k-hat and the gaps (num_samples >= 25).
        mcmc_images, mcmc_samples, mcmc_warmup, num_chains: NUTS settings (0 images: no NUTS).
        gap_steps, gap_lr, gap_particles: SVI for q* (0 steps: no gaps).
        log_likelihood_samples: K for log p(x).
        pair_dims: latent dimensions (those of largest KL) in the q-vs-NUTS pair plots.
        traversal_dims: at most this many active dimensions in the traversal figure.
        image_ids: indices into ``data`` to diagnose instead of the first ``num_images``.
        seed: seeds every random step.
        jit_compile: JIT-compile NUTS's potential energy.
        nuts_workers: processes for the NUTS chains (see :func:`mcmc_reference`; default one per chain
            up to the number of cores on the CPU, 1 on a GPU).

    Returns:
        the content of ``diagnostics.json``: ``summary`` (the headline numbers), ``images``, ``psis``,
        ``gaps``, ``collapse``, ``mcmc``, ``skipped`` (part -> reason), ``settings``, ``seconds`` and
        ``files``.

    Raises:
        DataError: data the model cannot take. ConfigError: a count out of range (``num_samples < 25``,
            ``num_chains < 2`` with NUTS, ``mcmc_images > num_images``); image ids out of range; a ``seed``
            outside [0, 2**32 - 1]. RunDirError: ``run_dir`` cannot be written (see
            :func:`pyrovae.files.ensure_writable_dir`).
    """
    t_start = time.perf_counter()
    all_args = program_arguments(model, data)
    n_total = int(all_args[0].shape[0])
    if image_ids is None:
        num_images = checks.positive_int(num_images, "num_images")
        if num_images > n_total:
            raise ConfigError(f"num_images={num_images} but the data hold only {n_total} data points")
        image_ids = list(range(num_images))
    else:
        image_ids = [int(i) for i in image_ids]
        bad = [i for i in image_ids if not 0 <= i < n_total]
        if not image_ids or bad or len(set(image_ids)) != len(image_ids):
            raise ConfigError(f"image_ids must be distinct indices into the data (0..{n_total - 1}), got {image_ids}")
    num_samples = checks.integer(num_samples, "num_samples", 25, hint="PSIS needs 25 or more")
    mcmc_images, gap_steps = checks.integer(mcmc_images, "mcmc_images", 0), checks.integer(gap_steps, "gap_steps", 0)
    if mcmc_images > len(image_ids):
        raise ConfigError(f"mcmc_images={mcmc_images} exceeds the {len(image_ids)} images diagnosed; "
                          "raise num_images or lower mcmc_images")
    if mcmc_images:
        checks.integer(num_chains, "num_chains", 2, hint="R-hat compares chains")
        checks.positive_int(mcmc_samples, "mcmc_samples"), checks.positive_int(mcmc_warmup, "mcmc_warmup")
    if gap_steps:
        checks.positive_number(gap_lr, "gap_lr"), checks.positive_int(gap_particles, "gap_particles")
        checks.positive_int(log_likelihood_samples, "log_likelihood_samples")
    seed = checks.seed(seed)
    pair_dims = checks.integer(pair_dims, "pair_dims", 2)
    traversal_dims = checks.integer(traversal_dims, "traversal_dims", 0)
    run_dir = ensure_writable_dir(run_dir)  # RunDirError naming the path and the reason it cannot be written
    index = torch.tensor(image_ids)
    args = tuple(a[index.to(a.device)] for a in all_args)
    site = model.latent_site
    seconds, skipped = {}, {}

    t0 = time.perf_counter()
    pyro.set_rng_seed(seed)
    samples = posterior_samples(model.model, model.guide, *args, num_samples=num_samples, site=site)
    psis = psis_khat(samples["log_weights"])
    seconds["psis"] = time.perf_counter() - t0

    gaps = None
    if gap_steps:
        t0 = time.perf_counter()
        try:
            gaps = amortization_gap(model, *args, steps=gap_steps, lr=gap_lr, num_particles=gap_particles,
                                    num_samples=num_samples, log_likelihood_samples=log_likelihood_samples,
                                    seed=seed)
            seconds["gaps"] = time.perf_counter() - t0
        except UnsupportedError as e:
            skipped["gaps"] = str(e)

    t0 = time.perf_counter()
    collapse = posterior_collapse(model.model, model.guide, *all_args, site=site)
    seconds["collapse"] = time.perf_counter() - t0

    reference = {}
    if mcmc_images:
        try:
            check_nuts_target(model.model, *(a[:1] for a in args), site=site)
        except UnsupportedError as e:
            skipped["mcmc"] = str(e)
            mcmc_images = 0
    t0 = time.perf_counter()
    for i in image_ids[:mcmc_images]:
        reference[i] = mcmc_reference(model.model, *(a[i:i + 1] for a in all_args), num_samples=mcmc_samples,
                                      warmup=mcmc_warmup, num_chains=num_chains, seed=seed, jit_compile=jit_compile,
                                      num_workers=nuts_workers, site=site)
    if reference:
        seconds["mcmc"] = time.perf_counter() - t0

    idata = to_inference_data(samples, image_ids, psis, reference)
    save_netcdf(idata, run_dir / NETCDF)

    files = {"netcdf": NETCDF, **_draw_figures(model, args, image_ids, samples, psis, collapse, reference, idata,
                                                run_dir, pair_dims, traversal_dims)}
    mcmc_rows = [_mcmc_row(i, r, samples, psis, image_ids.index(i)) for i, r in reference.items()]
    khat = psis["khat"]
    summary = {
        "num_images": len(image_ids), "z_dim": int(samples["z"].shape[-1]), "kind": model.kind,
        "share_khat_above_0.7": (khat > KHAT_BAD).double().mean().item(),
        "share_khat_0.5_to_0.7": ((khat > KHAT_GOOD) & (khat <= KHAT_BAD)).double().mean().item(),
        "median_khat": khat.median().item(),
        "mean_ess_fraction": psis["ess_fraction"].mean().item(),
        "active_units": collapse["active_units"],
    }
    gap_json = None
    if gaps is not None:
        names = ("log_likelihood", "elbo", "elbo_optimized", "inference_gap", "amortization_gap", "approximation_gap")
        for name in names:
            summary[f"{name}_nats"] = summarize(gaps[name])
        gap_json = {name: gaps[name] for name in names + (
            "log_likelihood_amortized", "log_likelihood_optimized", "elbo_stderr", "elbo_optimized_stderr",
            "amortization_gap_stderr")}
        gap_json["svi_history_elbo"] = gaps["history"]
    if mcmc_rows:
        summary["nuts_seconds_per_image"] = sum(r["seconds"] for r in mcmc_rows) / len(mcmc_rows)
        summary["nuts_max_rhat"] = max(r["max_rhat"] for r in mcmc_rows)
    seconds["total"] = time.perf_counter() - t_start
    files.update({"json": JSON, "report": REPORT})
    result = {
        "summary": summary, "images": image_ids,
        "psis": {"khat": khat, "ess": psis["ess"], "ess_fraction": psis["ess_fraction"],
                 "thresholds": [KHAT_GOOD, KHAT_BAD],
                 "note": "khat null: -inf, all log weights equal (q(z|x) is the posterior)"},
        "gaps": gap_json,
        "collapse": {"kl_per_dimension": collapse["kl_per_dimension"],
                     "variance_of_posterior_mean": collapse["variance"], "active": collapse["active"],
                     "active_units": collapse["active_units"], "threshold": ACTIVE_UNIT_THRESHOLD,
                     "num_images": n_total},
        "mcmc": mcmc_rows, "skipped": skipped,
        "settings": {"num_samples": num_samples, "mcmc_images": mcmc_images, "mcmc_samples": mcmc_samples,
                     "mcmc_warmup": mcmc_warmup, "num_chains": num_chains, "gap_steps": gap_steps, "gap_lr": gap_lr,
                     "gap_particles": gap_particles, "log_likelihood_samples": log_likelihood_samples,
                     "seed": seed, "jit_compile": jit_compile, "pair_dims": pair_dims,
                     "nuts_workers": nuts_workers},
        "seconds": seconds, "files": files,
    }
    result = _jsonable(result)
    atomic_write_text(run_dir / JSON, json.dumps(result, indent=2) + "\n")
    atomic_write_text(run_dir / REPORT, _report(result))
    return result


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _khat_text(value) -> str:
    """k-hat as JSON holds it: None stands for -inf (constant weights)."""
    return "-inf" if value is None else f"{value:.2f}"


def _report(r: dict) -> str:
    """The Markdown page of :func:`diagnose`: headline table, figures, per-image tables."""
    s, files = r["summary"], r["files"]
    out = ["# Posterior diagnostics\n",
           f"{s['num_images']} test images, {r['settings']['num_samples']} draws of q(z|x) each; "
           f"z_dim = {s['z_dim']}. All log-densities in nats per image. Numbers: `{JSON}`; draws (ArviZ "
           f"InferenceData): `{NETCDF}`.\n",
           "| quantity | value |", "|---|---|"]
    if r["gaps"] is not None:
        k = r["settings"]["log_likelihood_samples"]
        for key, label in (("log_likelihood_nats", f"log p(x) (IS from q and q*, K={k} each)"),
                           ("elbo_nats", "ELBO(q)"), ("elbo_optimized_nats", "ELBO(q*), per-image optimum"),
                           ("inference_gap_nats", "inference gap log p(x) - ELBO(q)"),
                           ("amortization_gap_nats", "amortization gap ELBO(q*) - ELBO(q)"),
                           ("approximation_gap_nats", "approximation gap log p(x) - ELBO(q*)")):
            out.append(f"| {label} | {s[key]['mean']:.2f} +- {_fmt(s[key]['stderr'])} |")
    out += [f"| share of images with PSIS k-hat > 0.7 | {s['share_khat_above_0.7']:.2f} |",
            f"| share with 0.5 < k-hat <= 0.7 | {s['share_khat_0.5_to_0.7']:.2f} |",
            f"| median k-hat | {_khat_text(s['median_khat'])} |",
            f"| mean IS efficiency ESS/S | {s['mean_ess_fraction']:.3f} |",
            f"| active units (Cov_x E[z_d] > {r['collapse']['threshold']}) | {s['active_units']} of {s['z_dim']} |"]
    if "nuts_seconds_per_image" in s:
        out.append(f"| NUTS seconds per image ({r['settings']['num_chains']} chains) | "
                   f"{s['nuts_seconds_per_image']:.1f} |")
    out.append("")
    if r["gaps"] is not None:
        out += ["+- is the standard error over images. Gaps follow Cremer, Li & Duvenaud (2018); q* is the guide "
                "family's best member for each image, found by SVI from the encoder's output.", ""]

    out += ["## PSIS k-hat", "",
            "Yao et al. (2018): k-hat < 0.5 good, 0.5-0.7 usable, > 0.7 importance sampling with q(z|x) alone (as "
            "`pyrovae evaluate` does for the test log-likelihood) is unreliable for that image.", "",
            f"![k-hat histogram]({files['khat']})", "",
            "| image | k-hat | ESS/S |" + (" ELBO(q) | log p(x) | amortization gap | approximation gap |"
                                          if r["gaps"] else ""),
            "|---|---|---|" + ("---|---|---|---|" if r["gaps"] else "")]
    for j, i in enumerate(r["images"]):
        row = f"| {i} | {_khat_text(r['psis']['khat'][j])} | {r['psis']['ess_fraction'][j]:.3f} |"
        if r["gaps"]:
            g = r["gaps"]
            row += (f" {g['elbo'][j]:.2f} | {g['log_likelihood'][j]:.2f} | {g['amortization_gap'][j]:.2f} |"
                    f" {g['approximation_gap'][j]:.2f} |")
        out.append(row)

    c = r["collapse"]
    out += ["", "## Posterior collapse", "",
            f"{c['active_units']} of {s['z_dim']} latent dimensions are active (Burda et al. 2016; over "
            f"{c['num_images']} test images). " + (
                "KL of each dimension, mean over images:" if c["kl_per_dimension"] is not None else
                "This prior or guide has no per-dimension KL; the figure shows Cov_x(E_q[z_d]) instead:"), "",
            f"![KL per dimension]({files['kl_per_dimension']})", ""]
    if "traversals" in files:
        out += [f"Latent traversals: each row moves one active dimension (largest KL first) from -3 to +3 "
                f"around the posterior mean of test image {r['images'][0]}.", "",
                f"![latent traversals]({files['traversals']})", ""]

    if r["skipped"]:
        out += ["## Not run for this model", ""] + [f"- {part}: {why}" for part, why in r["skipped"].items()] + [""]

    if r["mcmc"]:
        out += ["## q(z|x) against NUTS", "",
                "NUTS samples the exact posterior p(z|x) with the trained decoder. Means and standard deviations "
                "of q against NUTS, one point per latent dimension:", "", f"![q vs NUTS]({files['q_vs_nuts']})", "",
                "| image | k-hat | max R-hat | min bulk ESS | divergences | max abs(mean_q - mean_NUTS) / sd_NUTS "
                "| median sd_q / sd_NUTS | seconds |", "|---|---|---|---|---|---|---|---|"]
        for m in r["mcmc"]:
            out.append(f"| {m['image']} | {_khat_text(m['khat'])} | {m['max_rhat']:.3f} | {m['min_ess_bulk']:.0f} | "
                       f"{m['divergences']} | {m['max_abs_mean_difference_in_nuts_sd']:.2f} | "
                       f"{m['median_sd_ratio_q_over_nuts']:.2f} | {m['seconds']:.1f} |")
        out += ["", "R-hat above 1.01 or a bulk ESS below 100 per chain means the reference itself is not to be "
                "trusted. Pair plots (q in blue, NUTS in orange) for the dimensions of largest KL:", ""]
        for m in r["mcmc"]:
            figure = files[f"pair_image{m['image']}"]
            out += [f"![pair plot, image {m['image']}]({figure})", ""]
    return "\n".join(out) + "\n"

