"""Posterior diagnostics, checked on probabilistic PCA, whose posterior is Gaussian in closed form:
Sigma = (I + W^T W / s^2)^-1 and mean = Sigma W^T (x - b) / s^2, diagonal for W with orthogonal columns,
which is what conftest's pPCA encoder outputs (and, shifted or scaled, a deliberately wrong guide)."""

import json
import math

import arviz as az
import pyro
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pyrovae import VAE
from pyrovae.app.cli import main
from pyrovae.errors import ConfigError, DataError, PyroVAEError
from pyrovae.models import VAEConfig
from pyrovae.training import RunConfig
from pyrovae.training.checkpoint import save_checkpoint
from pyrovae.diagnostics import (
    KHAT_BAD, KHAT_GOOD, LocalGuide, amortization_gap, diagnose, latent_traversal, mcmc_reference, posterior_collapse,
    posterior_samples, psis_khat, save_netcdf, to_inference_data)

from .conftest import ppca


def exact_posterior(z_dim=3, **kw):
    """(vae, x, exact log p(x), exact posterior loc (n, z_dim), exact posterior sd (n, z_dim))."""
    vae, x, log_px = ppca(z_dim=z_dim, **kw)
    exact_vae, _, _ = ppca(z_dim=z_dim)  # same seed: same W, b and data, the exact-posterior encoder
    q = exact_vae.encode(x)
    return vae, x, log_px, q["loc"], q["scale"]


@pytest.fixture(scope="module")
def nuts_run():
    vae, x, _, loc, sd = exact_posterior(z_dim=2)
    # two worker processes (the CPU default on two cores), so the parallel path is the one tested
    return vae, x, loc, sd, mcmc_reference(vae.model, x[:1], num_samples=200, warmup=200, num_chains=2, seed=1,
                                           jit_compile=True, num_workers=2)


# --- PSIS k-hat -------------------------------------------------------------------------------------------


def test_exact_posterior_guide_gives_khat_below_half_and_full_ess():
    vae, x, _ = ppca()
    pyro.set_rng_seed(0)
    out = psis_khat(posterior_samples(vae.model, vae.guide, x[:16], num_samples=1000)["log_weights"])
    assert (out["khat"] < KHAT_GOOD).all()
    torch.testing.assert_close(out["ess_fraction"], torch.ones(16, dtype=torch.float64), atol=1e-6, rtol=0)


def test_slightly_wide_and_wide_guides_give_khat_below_half():
    # a proposal wider than the target has bounded importance ratios: no heavy tail
    for scale_factor in (1.05, 1.5):
        vae, x, _ = ppca(scale_factor=scale_factor)
        pyro.set_rng_seed(0)
        khat = psis_khat(posterior_samples(vae.model, vae.guide, x, num_samples=2000)["log_weights"])["khat"]
        assert (khat < KHAT_GOOD).all(), (scale_factor, khat.max())


def test_too_narrow_guide_gives_khat_above_0_7_near_the_gaussian_tail_index():
    # q = N(m, r^2 sigma^2), p = N(m, sigma^2) per dimension: P(w > t) ~ t^(-1/(1 - r^2)), so k = 1 - r^2
    r = 0.3
    vae, x, _ = ppca(scale_factor=r)
    pyro.set_rng_seed(0)
    khat = psis_khat(posterior_samples(vae.model, vae.guide, x, num_samples=4000)["log_weights"])["khat"]
    assert (khat > KHAT_BAD).double().mean() >= 0.85
    assert abs(khat.mean().item() - (1 - r ** 2)) < 0.1


def test_ess_is_the_normalized_kong_formula():
    log_w = torch.log(torch.tensor([[1.0], [1.0], [2.0], [4.0]])).expand(4, 1).repeat(10, 3)  # (40, 3)
    w = log_w.exp()
    expected = w.sum(0) ** 2 / (w ** 2).sum(0)
    out = psis_khat(log_w)
    torch.testing.assert_close(out["ess"], expected.double())
    torch.testing.assert_close(out["ess_fraction"], expected.double() / 40)


def test_psis_khat_refuses_bad_input():
    with pytest.raises(PyroVAEError, match="num_samples, num_images"):
        psis_khat(torch.zeros(100))
    with pytest.raises(PyroVAEError, match="S >= 25"):
        psis_khat(torch.zeros(10, 3))
    bad = torch.zeros(100, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(PyroVAEError, match="NaN"):
        psis_khat(bad)


# --- NUTS reference -----------------------------------------------------------------------------------------


def test_nuts_matches_the_exact_posterior_mean_and_sd_within_mcmc_error(nuts_run):
    vae, x, loc, sd, ref = nuts_run
    assert ref["z"].shape == (2, 200, 2)
    assert (ref["rhat"] < 1.05).all()
    ess = ref["ess_bulk"].float()
    assert (ess > 100).all()
    # Monte Carlo standard errors: sd / sqrt(ESS) for the mean, about sd / sqrt(2 ESS) for the sd
    assert ((ref["mean"] - loc[0]).abs() < 4 * sd[0] / ess.sqrt()).all()
    assert ((ref["sd"] - sd[0]).abs() < 4 * sd[0] / (2 * ess).sqrt() + 0.01).all()
    assert ref["seconds"] > 0 and ref["divergences"] == 0


def test_nuts_chains_in_worker_processes_are_the_chains_of_one_process(nuts_run):
    vae, x, _, _, parallel = nuts_run
    assert parallel["num_workers"] == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))  # the threads of each of the two workers
    try:
        sequential = mcmc_reference(vae.model, x[:1], num_samples=200, warmup=200, num_chains=2, seed=1,
                                    jit_compile=True, num_workers=1)
    finally:
        torch.set_num_threads(threads)
    assert sequential["num_workers"] == 1
    torch.testing.assert_close(parallel["z"], sequential["z"], rtol=1e-5, atol=1e-5)
    assert parallel["step_size"] == pytest.approx(sequential["step_size"], rel=1e-5)
    assert not torch.equal(parallel["z"][0], parallel["z"][1]), "the chains must have their own seeds"


def test_mcmc_reference_refuses_one_chain_and_a_batch():
    vae, x, _ = ppca(z_dim=2)
    with pytest.raises(PyroVAEError, match="num_chains"):
        mcmc_reference(vae.model, x[:1], num_chains=1)
    with pytest.raises(PyroVAEError, match="one data point"):
        mcmc_reference(vae.model, x[:2])
    with pytest.raises(PyroVAEError, match="num_workers"):
        mcmc_reference(vae.model, x[:1], num_workers=0)


# --- gaps ---------------------------------------------------------------------------------------------------


def test_exact_guide_has_zero_inference_and_amortization_gaps():
    vae, x, log_px = ppca()
    out = amortization_gap(vae, x[:8], steps=100, lr=0.02, num_particles=8, num_samples=500,
                           log_likelihood_samples=200)
    torch.testing.assert_close(out["elbo"], log_px[:8], atol=1e-4, rtol=0)
    # L_K(q) is exact here; the mixture estimate also draws from q*, which SVI leaves a hair away from
    # the posterior: zero up to that Monte Carlo error
    assert (out["log_likelihood_amortized"] - log_px[:8]).abs().max() < 1e-4
    assert (out["inference_gap"].abs() < 0.03).all()
    assert (out["amortization_gap"].abs() < 4 * out["amortization_gap_stderr"] + 0.01).all()
    assert (out["approximation_gap"].abs() < 4 * out["amortization_gap_stderr"] + 0.01).all()


def test_gaps_do_not_depend_on_how_the_images_are_chunked():
    vae, x, log_px, _, _ = exact_posterior(shift=0.5, scale_factor=0.5)
    kw = dict(steps=20, lr=0.05, num_particles=4, num_samples=40, log_likelihood_samples=40, seed=3)
    whole = amortization_gap(vae, x[:10], **kw)
    chunked = amortization_gap(vae, x[:10], max_chunk=120, **kw)  # 3 images per pass: 4 chunks of images
    torch.testing.assert_close(chunked["optimized_params"]["loc"], whole["optimized_params"]["loc"])
    for key in ("elbo", "elbo_optimized", "log_likelihood"):  # estimates of the same numbers, other draws
        assert ((chunked[key] - whole[key]).abs() < 6 * whole["elbo_stderr"] + 0.05).all(), key
    with pytest.raises(DataError, match="rows"):
        LocalGuide(vae.guide_family, vae.encoder(x[:10]))(x[:4])


def test_svi_on_local_parameters_recovers_the_exact_posterior_from_a_bad_guide():
    vae, x, log_px, loc, sd = exact_posterior(shift=0.5, scale_factor=0.5)
    x, log_px, loc, sd = x[:8], log_px[:8], loc[:8], sd[:8]
    out = amortization_gap(vae, x, steps=400, lr=0.05, num_particles=16, num_samples=2000,
                           log_likelihood_samples=2000)
    # ELBO(q) = log p(x) - KL(q || p(z|x)), both Gaussian
    q = vae.encode(x)
    kl = kl_divergence(Normal(q["loc"], q["scale"]), Normal(loc, sd)).sum(-1)
    assert ((out["elbo"] - (log_px - kl)).abs() < 5 * out["elbo_stderr"]).all()
    # q* is the posterior: the amortization gap is the whole KL, the approximation gap vanishes
    assert (out["amortization_gap"] > 0).all()
    assert ((out["amortization_gap"] - kl).abs() < 0.05 * kl + 4 * out["amortization_gap_stderr"]).all()
    torch.testing.assert_close(out["optimized_params"]["loc"], loc, atol=0.05, rtol=0)
    torch.testing.assert_close(out["optimized_params"]["scale"], sd, atol=0, rtol=0.08)
    assert (out["approximation_gap"].abs() < 0.05).all()
    torch.testing.assert_close(out["inference_gap"], out["amortization_gap"] + out["approximation_gap"])
    # q is too narrow (k-hat > 0.7): L_K(q) alone is off by nats, the mixture with q* is not
    assert (out["log_likelihood"] - log_px).abs().max() < 0.05
    assert (out["log_likelihood_amortized"] - log_px).abs().max() > 0.5
    assert out["history"][-20:].mean() > out["history"][:20].mean()


def test_amortization_gap_refuses_bad_settings():
    vae, x, _ = ppca()
    with pytest.raises(PyroVAEError, match="lr"):
        amortization_gap(vae, x[:2], lr=0)
    with pytest.raises(PyroVAEError, match="steps"):
        amortization_gap(vae, x[:2], steps=-1)
    with pytest.raises(PyroVAEError, match="unknown"):
        amortization_gap(vae, x[:2], elbo="ELBO")


# --- collapse and traversals ------------------------------------------------------------------------------


def test_a_dimension_the_encoder_ignores_is_inactive_with_zero_kl():
    vae, x, _ = ppca(z_dim=3)
    with torch.no_grad():  # make dimension 2 of q(z|x) the prior N(0, 1) for every x
        vae.encoder.A[2] = 0.0
        vae.encoder.raw[2] = math.log(math.expm1(1 - 1e-4))
    out = posterior_collapse(vae.model, vae.guide, x)
    assert out["active"].tolist() == [True, True, False] and out["active_units"] == 2
    assert out["kl_per_dimension"][2].abs() < 1e-4 and (out["kl_per_dimension"][:2] > 0.1).all()


def test_latent_traversal_moves_one_dimension_per_row():
    vae, x, _ = ppca(z_dim=3)
    centre = torch.tensor([0.1, -0.2, 0.3])
    out = latent_traversal(vae.model, x[:1], z=centre, dims=[0, 2], offsets=[-1.0, 0.0, 1.0])
    assert out.shape == (2, 3, 8)
    W, b = vae.decoder.W.detach(), vae.decoder.b.detach()
    torch.testing.assert_close(out[1, 2], (centre + torch.tensor([0, 0, 1.0])) @ W.T + b)
    torch.testing.assert_close(out[0, 1], out[1, 1])
    with pytest.raises(ConfigError, match="out of range"):
        latent_traversal(vae.model, x[:1], z=centre, dims=[3], offsets=[0.0])


# --- ArviZ --------------------------------------------------------------------------------------------------


def test_inference_data_round_trips_through_netcdf(tmp_path, nuts_run):
    vae, x, _, _, ref = nuts_run
    samples = posterior_samples(vae.model, vae.guide, x[:3], num_samples=40)
    psis = psis_khat(samples["log_weights"])
    idata = to_inference_data(samples, image_ids=[0, 5, 9], psis=psis, reference={0: ref})
    path = save_netcdf(idata, tmp_path / "d.nc")
    back = az.from_netcdf(path)
    assert {"posterior", "sample_stats", "psis", "reference_posterior"} <= set(back.groups())
    assert back.posterior["z"].dims == ("chain", "draw", "image", "z_dim")
    assert back.posterior["z"].shape == (1, 40, 3, 2)
    torch.testing.assert_close(torch.as_tensor(back.posterior["z"].values[0]), samples["z"].double())
    torch.testing.assert_close(torch.as_tensor(back.sample_stats["log_weight"].values[0]),
                               samples["log_weights"].double())
    assert back.posterior["image"].values.tolist() == [0, 5, 9]
    ref_z = back.reference_posterior["z"].sel(image=0).values
    torch.testing.assert_close(torch.as_tensor(ref_z), ref["z"].double())
    torch.testing.assert_close(torch.as_tensor(az.rhat(back.reference_posterior)["z"].values[0]), ref["rhat"])
    assert [p.name for p in tmp_path.iterdir()] == ["d.nc"]  # no temporary file left behind


def test_to_inference_data_refuses_mismatched_ids():
    samples = {"z": torch.zeros(30, 2, 3), "log_weights": torch.zeros(30, 2)}
    with pytest.raises(PyroVAEError, match="image_ids"):
        to_inference_data(samples, image_ids=[1, 1])


# --- the report ---------------------------------------------------------------------------------------------


def _strict_json(text):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_diagnose_writes_every_file_and_the_report_references_each_figure(tmp_path):
    vae = VAE(z_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.full((30, 1, 28, 28), 0.2))
    (tmp_path / "checkpoint.pt").write_bytes(b"the user's file")
    out = diagnose(vae, x, tmp_path, num_images=4, num_samples=50, mcmc_images=1, mcmc_samples=30,
                   mcmc_warmup=30, gap_steps=5, log_likelihood_samples=20, pair_dims=3, jit_compile=False)
    names = {p.name for p in tmp_path.iterdir()}
    figures = {"diagnostics_khat.png", "diagnostics_kl_per_dimension.png", "diagnostics_q_vs_nuts.png",
               "diagnostics_pair_image0.png"}
    assert {"diagnostics.nc", "diagnostics.json", "diagnostics.md", "checkpoint.pt"} | figures <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"the user's file"
    report = (tmp_path / "diagnostics.md").read_text()
    for name in names:
        if name.endswith(".png"):
            assert f"]({name})" in report
    written = _strict_json((tmp_path / "diagnostics.json").read_text())
    assert written == json.loads(json.dumps(out))
    assert len(written["psis"]["khat"]) == 4 and written["images"] == [0, 1, 2, 3]
    assert written["mcmc"][0]["image"] == 0 and len(written["collapse"]["kl_per_dimension"]) == 3
    assert 0 <= written["summary"]["share_khat_above_0.7"] <= 1
    s = written["summary"]
    assert s["inference_gap_nats"]["mean"] == pytest.approx(
        s["amortization_gap_nats"]["mean"] + s["approximation_gap_nats"]["mean"], abs=1e-4)
    back = az.from_netcdf(tmp_path / "diagnostics.nc")
    assert back.reference_posterior["z"].shape == (2, 30, 1, 3)


def test_diagnose_refuses_more_mcmc_images_than_images(tmp_path):
    vae = VAE(z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.2))
    with pytest.raises(PyroVAEError, match="mcmc_images=3"):
        diagnose(vae, x, tmp_path, num_images=2, mcmc_images=3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.mnist
def test_cli_diagnose_writes_into_the_run_folder(tmp_path, mnist_root, capsys):
    config = RunConfig(model=VAEConfig(z_dim=2, hidden=(16,)), data={"data_dir": str(mnist_root)})
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint.pt", {"kind": "vae", "config": config.to_dict(), "epoch": 0,
                                            "model": VAE.from_config(config.model).state_dict()})
    code = main(["diagnose", str(run), "--num-images", "3", "--num-samples", "40", "--mcmc-images", "1",
                 "--mcmc-samples", "20", "--mcmc-warmup", "20", "--gap-steps", "3", "--ll-samples", "10",
                 "--data-dir", str(mnist_root)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"]["num_images"] == 3 and printed["summary"]["z_dim"] == 2
    assert {"diagnostics.nc", "diagnostics.json", "diagnostics.md"} <= {p.name for p in run.iterdir()}
    assert main(["diagnose", str(run), "--num-images", "2", "--mcmc-images", "3",
                 "--data-dir", str(mnist_root)]) == 2
    assert "mcmc_images=3" in capsys.readouterr().err
