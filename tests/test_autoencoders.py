"""Autoencoders beside the VAE: the programs, the penalties, the corruption, the post-hoc sampler, and the
linear-Gaussian check that ties probabilistic PCA's closed form to the VAE machinery."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

from pyrovae import RunConfig, TrainerConfig, VAE, log_likelihood
from pyrovae.components.likelihoods import Normal
from pyrovae.evaluation.baselines import ProbabilisticPCA
from pyrovae.evaluation.samplers import fit_latent_gmm, sample_codes, sample_gmm
from pyrovae.inference import ELBO
from pyrovae.models import Autoencoder, AutoencoderConfig
from pyrovae.models.autoencoder import corrupt, jacobian_frobenius
from pyrovae.torchtools import inverse_softplus


class _Linear(nn.Module):
    def __init__(self, weight, bias, out_shape=None):
        super().__init__()
        self.weight, self.bias, self.out_shape = weight, bias, out_shape

    def forward(self, v):
        y = v @ self.weight.T + self.bias
        return y if self.out_shape is None else y.unflatten(-1, self.out_shape)


def test_ppca_closed_form_matches_the_importance_sampled_log_likelihood_of_a_linear_gaussian_vae():
    """pPCA (W, mu, sigma^2) is the VAE z ~ N(0, I), x ~ N(W z + mu, sigma^2 I); with pPCA's own exact posterior
    as the guide (diagonal, since W^T W is), every importance weight equals p(x) and the estimate is exact."""
    rng = np.random.default_rng(0)
    d, q = 6, 2
    x = rng.normal(size=(400, q)) @ rng.normal(size=(q, d)) * 2 + 0.5 * rng.normal(size=(400, d)) + 1.0
    ppca = ProbabilisticPCA().fit(x, q)
    w, mu, s2 = (torch.tensor(a, dtype=torch.float64) for a in (ppca.W, ppca.mean, ppca.noise_variance))
    m = w.T @ w + s2 * torch.eye(q)
    assert torch.allclose(m, torch.diag(torch.diag(m)), atol=1e-8)  # the exact posterior is diagonal
    post_w = torch.linalg.solve(m, w.T)  # mean = M^-1 W^T (x - mu)
    post_sd = (s2 / torch.diag(m)).sqrt()
    guide_min_scale = 1e-4
    encoder = _Linear(torch.cat([post_w, torch.zeros(q, d, dtype=torch.float64)]),
                      torch.cat([-post_w @ mu, inverse_softplus(post_sd - guide_min_scale)]))
    decoder = _Linear(w, mu, (1, d))
    vae = VAE(z_dim=q, x_shape=(d,), likelihood=Normal((d,), scale=float(s2.sqrt())), encoder=encoder,
              decoder=decoder).double()
    xt = torch.tensor(x[:50])
    pyro.set_rng_seed(0)
    out = log_likelihood(vae.model, vae.guide, xt, num_samples=20)
    exact = torch.tensor(ppca.log_likelihood(x[:50]))
    torch.testing.assert_close(out["log_likelihood"].double(), exact, rtol=0, atol=1e-4)
    torch.testing.assert_close(out["elbo"].double(), exact, rtol=0, atol=1e-4)  # the exact posterior: no gap


def test_the_contractive_penalty_is_the_jacobians_frobenius_norm():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(5, 1, 3, 4)
    fast = jacobian_frobenius(encoder, x)
    brute = torch.stack([torch.autograd.functional.jacobian(lambda v: encoder(v[None])[0], xi).pow(2).sum()
                         for xi in x])
    torch.testing.assert_close(fast, brute)
    assert fast.requires_grad  # the penalty trains the encoder


@pytest.mark.parametrize("kind", ["masking", "gaussian", "salt_and_pepper"])
def test_corruption_reaches_the_encoder_only_and_only_in_training(kind):
    torch.manual_seed(0)
    ae = Autoencoder(z_dim=2, x_shape=(20,), hidden=(8,), variant="denoising", corruption=kind, corruption_level=0.5)
    x = torch.bernoulli(torch.full((6, 20), 0.5))
    seen = []
    ae.encoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    ae.train()
    guide_trace = poutine.trace(ae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(ae.model, trace=guide_trace)).get_trace(x)
    assert not torch.equal(seen[-1], x)  # the encoder read a corrupted x
    assert torch.equal(model_trace.nodes["x"]["value"], x)  # the likelihood scored the clean x
    ae.eval()
    poutine.trace(ae.guide).get_trace(x)
    assert torch.equal(seen[-1], x)  # no corruption at test time
    noisy = corrupt(torch.ones(20000), kind, 0.5)
    if kind == "masking":
        assert abs((noisy == 0).float().mean().item() - 0.5) < 0.02
    elif kind == "gaussian":
        assert abs(noisy.std().item() - 0.5) < 0.02
    else:
        assert abs((noisy == 0).float().mean().item() - 0.25) < 0.02  # half of the hit half set to 0


def test_an_autoencoders_loss_is_the_reconstruction_term_plus_its_penalty():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((8, 10), 0.3))
    for variant, term in (("plain", None), ("sparse", "sparsity"), ("contractive", "contractive")):
        ae = Autoencoder(z_dim=3, x_shape=(10,), hidden=(6,), variant=variant, penalty_weight=0.5)
        record = ae.objective_record(ELBO(), {"x": x}, num_data=8)
        code = ae.encoder(x)
        recon = -ae.likelihood(ae.decoder(code)).log_prob(x).mean()
        penalty = {"plain": 0.0, "sparse": 0.5 * code.abs().sum(-1).mean(),
                   "contractive": 0.5 * jacobian_frobenius(ae.encoder, x).mean()}[variant]
        torch.testing.assert_close(record.loss, recon + penalty)
        assert record.terms["kl"] == 0 and (term is None or term in record.terms)


def test_the_gmm_sampler_draws_have_the_fitted_mixtures_moments():
    torch.manual_seed(0)
    ae = Autoencoder(z_dim=2, x_shape=(10,), hidden=(6,))
    train = torch.bernoulli(torch.full((500, 10), 0.4))
    gmm = fit_latent_gmm(ae, train, n_components=3, seed=0)
    z = sample_codes(gmm, 40000, seed=1).double()
    mean = (gmm.weights_[:, None] * gmm.means_).sum(0)
    second = sum(w * (c + np.outer(m, m)) for w, m, c in zip(gmm.weights_, gmm.means_, gmm.covariances_))
    cov = second - np.outer(mean, mean)
    np.testing.assert_allclose(z.mean(0).numpy(), mean, atol=0.03 * np.sqrt(np.diag(cov)).max())
    np.testing.assert_allclose(np.cov(z.numpy().T), cov, rtol=0.05, atol=0.01 * np.abs(cov).max())
    assert sample_gmm(ae, gmm, 7).shape == (7, 10)


def test_an_autoencoder_run_trains_resumes_exactly_and_reports_no_likelihood(tmp_path):
    from pyrovae.app import runs
    data = (torch.rand(120, 1, 4, 4) < 0.3).float()
    trainer = dict(batch_size=16, lr_schedule="constant", kl_warmup_epochs=0)  # epochs 1..E of a longer run
    config = RunConfig(model=AutoencoderConfig(z_dim=2, hidden=(8,), variant="denoising"),
                       trainer=TrainerConfig(epochs=2, **trainer))
    straight = runs.train_run(config, tmp_path / "a", progress=False, data=data)
    assert "log_likelihood_nats" not in straight["test"] and math.isfinite(straight["test"]["reconstruction_nll"])
    runs.train_run(config.model_copy(update={"trainer": TrainerConfig(epochs=1, **trainer)}), tmp_path / "b",
                   progress=False, data=data)
    resumed = runs.train_run(config, tmp_path / "b", resume=True, progress=False, data=data)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in straight["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in resumed["history"]]


def test_compare_writes_one_report_over_runs_on_the_same_data_and_refuses_other_data(tmp_path):
    from pyrovae import ConfigError, DataConfig, VAEConfig
    from pyrovae.app import runs
    from pyrovae.app.compare import compare_runs
    trainer = TrainerConfig(epochs=1, batch_size=32)
    for name, model in (("ae", AutoencoderConfig(z_dim=2, hidden=(16,), likelihood="binomial")),
                        ("vae", VAEConfig(z_dim=2, hidden=(16,), likelihood="binomial"))):
        config = RunConfig(model=model, trainer=trainer, data=DataConfig(source="digits", train_size=200))
        runs.train_run(config.model_copy(update={"evaluation": config.evaluation.replace(num_samples=5)}),
                       tmp_path / name, progress=False)
    result = compare_runs([tmp_path / "ae", tmp_path / "vae"], tmp_path / "report", test_size=100,
                          probe_train_size=200, num_samples=50)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| ae | autoencoder (plain) | 2 |" in report and "| vae | vae | 2 |" in report
    ae, vae = result["rows"]
    assert "log_likelihood" not in ae and vae["log_likelihood"][2] == 5  # only the VAE defines one
    assert 0 <= ae["probe_accuracy"] <= 1 and 1 <= vae["gmm_samples"]["coverage"] <= 10
    assert all((tmp_path / "report" / f).exists() for f in ("codes.png", "interpolations.png", "samples.png"))
    config = RunConfig(model=VAEConfig(z_dim=2, hidden=(16,), likelihood="normal"), trainer=trainer,
                       data=DataConfig(source="wine"))
    runs.train_run(config.model_copy(update={"evaluation": config.evaluation.replace(num_samples=5)}),
                   tmp_path / "wine", progress=False)
    with pytest.raises(ConfigError, match="different data"):
        compare_runs([tmp_path / "ae", tmp_path / "wine"], tmp_path / "other")


def test_the_command_line_trains_an_autoencoder_samples_through_a_mixture_and_compares(tmp_path, capsys):
    from pyrovae.app.cli import main
    common = ["--data", "digits", "--likelihood", "binomial", "--z-dim", "2", "--hidden", "16", "--epochs", "1",
              "--train-size", "200", "--no-progress"]
    assert main(["autoencoder", *common, "--variant", "sparse", "--out", str(tmp_path / "ae")]) == 0
    assert main(["train", *common, "--eval-num-samples", "3", "--out", str(tmp_path / "vae")]) == 0
    metrics = json.loads((tmp_path / "ae" / "metrics.json").read_text())
    assert "reconstruction_nll" in metrics["test"] and "log_likelihood_nats" not in metrics["test"]
    assert main(["sample", str(tmp_path / "ae"), "--sampler", "gmm", "-n", "9"]) == 0
    assert (tmp_path / "ae" / "samples_gmm_n9_seed0.png").exists()
    assert main(["compare", str(tmp_path / "ae"), str(tmp_path / "vae"), "--out", str(tmp_path / "cmp"),
                 "--num-samples", "50", "--test-size", "100"]) == 0
    assert (tmp_path / "cmp" / "report.md").exists()
    assert main(["autoencoder", *common, "--guide-option", "rank=2", "--out", str(tmp_path / "bad")]) == 2
    assert "point mass" in capsys.readouterr().err
