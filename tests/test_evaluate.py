import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.distributions import kl_divergence

from pyrovae import VAE
from pyrovae.app.cli import main
from pyrovae.errors import ConfigError, DataError, PyroVAEError, UnsupportedError
from pyrovae.evaluation import active_units, evaluate, kl_per_dimension, linear_probe, log_likelihood, plan_chunks
from pyrovae.evaluation.memory import _peak_bytes, importance_pass
from pyrovae.inference import importance_weights
from pyrovae.models import VAEConfig
from pyrovae.training import RunConfig, TrainerConfig
from pyrovae.components.guides import IAF
from pyrovae.components.priors import LearnedNormal, MixtureOfGaussians, VampPrior
from pyrovae.training import fit

from .conftest import LinearDecoder, NormalLikelihood, ppca, random_binary_data


def test_exact_posterior_guide_gives_elbo_equal_to_the_exact_log_marginal():
    vae, x, exact = ppca()
    out = log_likelihood(vae.model, vae.guide, x, num_samples=16, progress=False)
    torch.testing.assert_close(out["elbo"], exact, atol=2e-4, rtol=0)
    torch.testing.assert_close(out["log_likelihood"], exact, atol=2e-4, rtol=0)


def test_importance_sampling_recovers_the_exact_log_marginal_with_a_poor_guide():
    vae, x, exact = ppca(shift=0.3, scale_factor=1.5)
    out = log_likelihood(vae.model, vae.guide, x, num_samples=20_000, max_chunk=200_000, progress=False)
    gap_elbo = (exact - out["elbo"]).mean()
    gap_is = (exact - out["log_likelihood"]).mean()
    assert gap_elbo > 0.2, "the test needs a guide that is visibly worse than the posterior"
    assert abs(gap_is) < 0.02 * gap_elbo + 0.01


def test_elbo_le_iwae_bound_le_log_marginal_and_bound_grows_with_k():
    vae, x, exact = ppca(shift=0.5, scale_factor=0.6)
    bounds = {}
    for k in (1, 10, 100, 1000):
        vals = []
        for seed in range(5):
            pyro.set_rng_seed(seed)
            vals.append(log_likelihood(vae.model, vae.guide, x, num_samples=k, progress=False)["log_likelihood"].mean())
        bounds[k] = torch.stack(vals).mean()
    assert bounds[1] < bounds[10] < bounds[100] < bounds[1000] < exact.mean()


def test_k_equal_one_bound_is_the_single_sample_elbo():
    vae = VAE(z_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.2))
    pyro.set_rng_seed(0)
    out = log_likelihood(vae.model, vae.guide, x, num_samples=1, progress=False)
    torch.testing.assert_close(out["log_likelihood"], out["elbo"])


def test_chunking_over_samples_and_images_does_not_change_the_estimate():
    vae = VAE(z_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.full((10, 1, 28, 28), 0.2))
    pyro.set_rng_seed(0)
    whole = log_likelihood(vae.model, vae.guide, x, num_samples=300, max_chunk=10**6, progress=False)
    pyro.set_rng_seed(1)
    chunked = log_likelihood(vae.model, vae.guide, x, num_samples=300, max_chunk=64, progress=False)
    # different draws, same estimand: agree within Monte Carlo error
    assert (whole["log_likelihood"] - chunked["log_likelihood"]).abs().max() < 1.0
    assert (whole["elbo"] - chunked["elbo"]).abs().max() < 1.0


def test_analytic_kl_equals_the_monte_carlo_kl():
    vae = VAE(z_dim=5, hidden=(16,))
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    with torch.no_grad():
        q = vae.guide_family(vae.encoder(x))
        p = vae.prior().expand((4,))
        analytic = kl_divergence(q, p)
        z = q.sample((200_000,))
        log_ratio = q.log_prob(z) - p.log_prob(z)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / 200_000 ** 0.5
    assert ((mc - analytic).abs() < 4 * se + 1e-4).all()


def test_trace_meanfield_and_trace_elbo_estimate_the_same_elbo():
    vae = VAE(z_dim=5, hidden=(16,))
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    n = 20_000
    kw = dict(num_particles=n, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        pyro.set_rng_seed(0)
        mf = -TraceMeanField_ELBO(**kw).differentiable_loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(1)
        mc = -Trace_ELBO(**kw).differentiable_loss(vae.model, vae.guide, x)
        log_w = importance_weights(vae.model, vae.guide, 2000, x).log_weights.sum(1)
    se = log_w.std() / n ** 0.5
    assert (mf - mc).abs() < 5 * se * 2 ** 0.5


def test_evaluate_reports_nats_stderr_and_bits_per_dim():
    vae, x, exact = ppca()
    m = evaluate(vae, x, num_samples=4, progress=False)
    assert m["log_likelihood_nats"] == pytest.approx(exact.mean().item(), abs=1e-3)
    assert m["log_likelihood_stderr"] == pytest.approx(exact.std().item() / 8, rel=1e-3)
    assert m["log_likelihood_bits_per_dim"] == pytest.approx(-exact.mean().item() / (8 * 0.6931471805599453), rel=1e-4)


def test_bad_num_samples_and_bad_data_are_refused():
    vae = VAE(z_dim=2, hidden=(8,))
    with pytest.raises(ConfigError, match="num_samples=-1"):
        evaluate(vae, torch.zeros(2, 1, 28, 28), num_samples=-1)
    with pytest.raises(DataError, match="binarize"):
        evaluate(vae, torch.full((2, 1, 28, 28), 0.3), num_samples=2)
    skipped = evaluate(vae, torch.zeros(2, 1, 28, 28), num_samples=0)  # 0: no importance sampling
    assert "log_likelihood_nats" not in skipped and skipped["active_units"] == 0


# --- the ELBO's reconstruction and KL terms ---------------------------------------------------------


def _q_and_prior(vae, x):
    params = vae.encode(x)
    return dist.Normal(params["loc"], params["scale"]), vae.prior()


def test_reconstruction_minus_analytic_kl_is_the_elbo_within_monte_carlo_error():
    vae = VAE(z_dim=5, hidden=(16,))
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3))
    k = 4000
    pyro.set_rng_seed(0)
    out = log_likelihood(vae.model, vae.guide, x, num_samples=k, progress=False)
    assert out["kl_method"] == "analytic" and (out["kl"] >= 0).all()
    with torch.no_grad():  # Monte Carlo standard error of the same-draws KL estimate, per image
        q, p = _q_and_prior(vae, x)
        z = q.sample((k,))
        log_ratio = q.log_prob(z).sum(-1) - p.log_prob(z)
    se = log_ratio.std(0) / k ** 0.5
    gap = out["reconstruction"] - out["kl"] - out["elbo"]
    assert (gap.abs() < 5 * se).all()
    torch.testing.assert_close(out["kl"], kl_divergence(q, dist.Normal(0.0, 1.0)).sum(-1))


def test_reconstruction_minus_monte_carlo_kl_is_exactly_the_elbo_for_a_mixture_prior():
    vae = VAE(z_dim=3, hidden=(16,), prior=MixtureOfGaussians(3, num_components=4))
    x = torch.bernoulli(torch.full((6, 1, 28, 28), 0.3))
    out = log_likelihood(vae.model, vae.guide, x, num_samples=50, max_chunk=120, progress=False)
    assert out["kl_method"] == "monte_carlo"
    torch.testing.assert_close(out["reconstruction"] - out["kl"], out["elbo"], rtol=1e-5, atol=1e-4)


# --- KL per latent dimension --------------------------------------------------------------------------


@pytest.mark.parametrize("prior", [None, "learned"])
def test_kl_per_dimension_sums_to_the_kl_term(prior):
    if prior == "learned":
        prior = LearnedNormal(4)
        with torch.no_grad():
            prior.loc.copy_(torch.tensor([0.5, -1.0, 0.0, 2.0]))
            prior.raw_scale.add_(torch.tensor([0.3, -0.5, 1.0, 0.0]))
    vae = VAE(z_dim=4, hidden=(16,), prior=prior)
    x = torch.bernoulli(torch.full((30, 1, 28, 28), 0.3))
    per_dim = kl_per_dimension(vae.model, vae.guide, x, batch_size=7)
    assert per_dim.shape == (4,) and (per_dim >= 0).all()
    out = log_likelihood(vae.model, vae.guide, x, num_samples=2, progress=False)
    torch.testing.assert_close(per_dim.sum(), out["kl"].mean(), rtol=1e-5, atol=1e-5)


def test_analytic_kl_per_dimension_equals_the_monte_carlo_kl_per_dimension():
    vae = VAE(z_dim=5, hidden=(16,))
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    n = 100_000
    with torch.no_grad():
        q, _ = _q_and_prior(vae, x)
        z = q.sample((n,))
        log_ratio = (q.log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z)).mean(1)  # (n, z_dim), mean over images
    mc, se = log_ratio.mean(0), log_ratio.std(0) / n ** 0.5
    assert ((kl_per_dimension(vae.model, vae.guide, x) - mc).abs() < 4 * se + 1e-5).all()


class LaplacePrior(nn.Module):
    """A factorized prior without a closed-form KL against a Normal: the Monte Carlo path."""

    def __init__(self, z_dim):
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))

    def forward(self):
        return dist.Laplace(self.loc, 1.0).to_event(1)


def test_monte_carlo_kl_per_dimension_matches_the_normal_laplace_closed_form():
    vae = VAE(z_dim=3, hidden=(16,), prior=LaplacePrior(3))
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3))
    with torch.no_grad():
        params = vae.encode(x)
    mu, s = params["loc"], params["scale"]
    # KL(N(mu, s^2) || Laplace(0, 1)) = -H(q) + log 2 + E|z|, with E|z| for z ~ N(mu, s^2)
    std_normal = dist.Normal(0.0, 1.0)
    abs_mean = s * math.sqrt(2 / math.pi) * torch.exp(-mu**2 / (2 * s**2)) + mu * (1 - 2 * std_normal.cdf(-mu / s))
    exact = (-0.5 * torch.log(2 * math.pi * math.e * s**2) + math.log(2) + abs_mean).mean(0)
    pyro.set_rng_seed(0)
    per_dim = kl_per_dimension(vae.model, vae.guide, x, num_samples=50_000)
    assert (per_dim - exact).abs().max() < 0.02


@pytest.mark.parametrize("prior", [MixtureOfGaussians(3, 4), VampPrior(3, 5)])
def test_kl_per_dimension_refuses_a_prior_that_does_not_factorize(prior):
    vae = VAE(z_dim=3, hidden=(16,), prior=prior)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    with pytest.raises(UnsupportedError, match="does not factorize"):
        kl_per_dimension(vae.model, vae.guide, x)
    m = evaluate(vae, x, num_samples=3, progress=False)
    assert m["kl_per_dimension_nats"] is None and "does not factorize" in m["kl_per_dimension_note"]
    assert m["kl_method"] == "monte_carlo" and len(m["active_units_variance"]) == 3


# --- active units and the linear probe ------------------------------------------------------------------


class CopyEncoder(nn.Module):
    """q(z|x) with z_0's mean a copy of the data feature x_0 and z_1's mean a constant that ignores x."""

    def forward(self, x):
        loc = torch.stack([x[..., 0], torch.full_like(x[..., 0], 0.3)], dim=-1)
        return torch.cat([loc, torch.zeros_like(loc)], dim=-1)


def copy_vae() -> VAE:
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    return VAE(z_dim=2, x_shape=(3,), likelihood=NormalLikelihood(0.5), encoder=CopyEncoder(),
               decoder=LinearDecoder(W, torch.zeros(3)))


def test_a_dimension_that_copies_the_data_is_active_and_one_that_ignores_it_is_not():
    vae = copy_vae()
    x = torch.randn(300, 3)
    au = active_units(vae.model, vae.guide, x, batch_size=64)
    assert au["variance"][1] == 0 and au["active"].tolist() == [True, False] and au["num_active"] == 1
    torch.testing.assert_close(au["variance"][0], x[:, 0].var())
    assert active_units(vae.model, vae.guide, x, threshold=2 * x[:, 0].var().item())["num_active"] == 0


def test_posterior_means_of_a_flow_guide_are_estimated_by_sampling():
    vae = VAE(z_dim=3, hidden=(16,), guide_family=IAF(3, num_flows=1))
    x = torch.bernoulli(torch.full((20, 1, 28, 28), 0.3))
    au = active_units(vae.model, vae.guide, x)
    assert au["variance"].shape == (3,) and torch.isfinite(au["variance"]).all()


def _separable(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 3, generator=g)
    x[:, 0] += 4.0 * y - 2.0
    return x, y


def test_linear_probe_separates_separable_classes_and_is_at_chance_on_shuffled_labels():
    vae = copy_vae()
    (train_x, train_y), (test_x, test_y) = _separable(1000, 0), _separable(1000, 1)
    probe = linear_probe(vae.model, vae.guide, (train_x,), train_y, (test_x,), test_y)
    assert probe["accuracy"] > 0.95 and probe["num_classes"] == 2 and probe["num_test"] == 1000
    g = torch.Generator().manual_seed(2)
    shuffled = linear_probe(vae.model, vae.guide, (train_x,), train_y[torch.randperm(1000, generator=g)],
                            (test_x,), test_y[torch.randperm(1000, generator=g)])
    assert abs(shuffled["accuracy"] - 0.5) < 0.1


def test_linear_probe_refuses_mismatched_or_non_integer_labels():
    vae = copy_vae()
    x, y = _separable(20, 0)
    with pytest.raises(DataError, match="train_y must be a 1-d array of 20 labels"):
        linear_probe(vae.model, vae.guide, (x,), y[:10], (x,), y)
    with pytest.raises(DataError, match="test_y must hold integer class labels"):
        linear_probe(vae.model, vae.guide, (x,), y, (x,), y.float())
    with pytest.raises(DataError, match="single class"):
        linear_probe(vae.model, vae.guide, (x,), torch.zeros(20, dtype=torch.long), (x,), y)


# --- chunking under a memory cap ------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples, cap_gb", [(64, 2e-6), (8, 2e-5)])
def test_memory_capped_chunking_leaves_the_exact_posterior_estimate_unchanged(num_samples, cap_gb):
    vae, x, exact = ppca()
    x, exact = x[:16], exact[:16]
    out = log_likelihood(vae.model, vae.guide, x, num_samples=num_samples, max_memory_gb=cap_gb, progress=False)
    plan = out["plan"]
    assert plan["samples_per_pass"] < num_samples or plan["images_per_pass"] < x.shape[0]
    assert out["chunk"] == plan["pairs"] == plan["samples_per_pass"] * plan["images_per_pass"]
    assert plan["estimated_peak_bytes"] <= cap_gb * 1e9 and out["seconds"] > 0
    whole = log_likelihood(vae.model, vae.guide, x, num_samples=num_samples, max_chunk=10**6, progress=False)
    for key in ("log_likelihood", "elbo", "kl"):  # each draw's weight is log p(x): no Monte Carlo error
        torch.testing.assert_close(out[key], whole[key], atol=2e-4, rtol=0)
    torch.testing.assert_close(out["log_likelihood"], exact, atol=2e-4, rtol=0)


def test_the_memory_plan_sees_what_a_vamp_prior_costs_per_pair():
    """With a low-rank guide the VampPrior's density broadcasts (pair, components, z_dim) temporaries and
    gets a smaller chunk; with the diagonal guide its density is two matrix products
    (DiagonalNormalMixture), and the plan sees no broadcast temporary."""
    from pyrovae.components.guides import LowRankNormal
    x = torch.bernoulli(torch.full((64, 1, 28, 28), 0.3))
    broadcast_bytes = 50 * 40 * 4  # one float32 (pair, 50 components, z_dim 40) temporary
    plans = {}
    for guide in ("diagonal", "low_rank"):
        kw = {"guide_family": LowRankNormal(40)} if guide == "low_rank" else {}
        for prior in ("standard", "vamp"):
            vae = VAE(z_dim=40, hidden=(32,), prior=VampPrior(40, num_components=50) if prior == "vamp" else None,
                      **kw).eval()
            plans[guide, prior] = plan_chunks(vae.model, vae.guide, x, num_samples=1000, max_memory_gb=0.01)
    assert plans["low_rank", "vamp"].pairs < plans["low_rank", "standard"].pairs
    assert plans["low_rank", "vamp"].bytes_per_pair >= plans["low_rank", "standard"].bytes_per_pair + broadcast_bytes
    assert plans["diagonal", "vamp"].bytes_per_pair < plans["diagonal", "standard"].bytes_per_pair + broadcast_bytes / 2


@pytest.mark.parametrize("prior", [None, "vamp"])
def test_the_chosen_pass_fills_but_respects_the_memory_cap(prior):
    vae = VAE(z_dim=8, hidden=(32,), prior=VampPrior(8, 50) if prior else None).eval()
    x = torch.bernoulli(torch.full((64, 1, 28, 28), 0.3))
    cap = 0.004
    plan = plan_chunks(vae.model, vae.guide, x, num_samples=100, max_memory_gb=cap)
    with torch.no_grad():
        peak = _peak_bytes(importance_pass(vae.model, vae.guide), (x[:plan.images_per_pass],), plan.samples_per_pass)
    assert 0.5 * cap * 1e9 < peak <= cap * 1e9
    assert peak == pytest.approx(plan.estimated_peak_bytes, rel=0.1)


def test_vamp_prior_estimate_does_not_depend_on_the_memory_cap():
    vae = VAE(z_dim=3, hidden=(16,), prior=VampPrior(3, num_components=50))
    x = torch.bernoulli(torch.full((10, 1, 28, 28), 0.2))
    pyro.set_rng_seed(0)
    whole = log_likelihood(vae.model, vae.guide, x, num_samples=300, max_chunk=10**6, progress=False)
    pyro.set_rng_seed(1)
    capped = log_likelihood(vae.model, vae.guide, x, num_samples=300, max_memory_gb=2e-4, progress=False)
    assert capped["plan"]["samples_per_pass"] < 300
    # different draws, same estimand: agree within Monte Carlo error
    assert (whole["log_likelihood"] - capped["log_likelihood"]).abs().max() < 1.0
    assert (whole["elbo"] - capped["elbo"]).abs().max() < 1.0


def test_bad_memory_caps_and_chunks_are_refused():
    vae, x, _ = ppca()
    for bad in (0, -1.0, float("nan"), "4"):
        with pytest.raises(PyroVAEError, match="max_memory_gb"):
            log_likelihood(vae.model, vae.guide, x, num_samples=4, max_memory_gb=bad)
    with pytest.raises(ValueError, match="too small for this model"):
        log_likelihood(vae.model, vae.guide, x, num_samples=4, max_memory_gb=1e-12)
    with pytest.raises(ValueError, match="max_chunk=0"):
        log_likelihood(vae.model, vae.guide, x, num_samples=4, max_chunk=0)


def test_evaluate_reports_every_part():
    vae, x, exact = ppca()
    m = evaluate(vae, x, num_samples=2000, progress=False)
    assert m["kl_method"] == "analytic"
    assert m["reconstruction_nats"] - m["kl_nats"] == pytest.approx(m["elbo_nats"], abs=0.05)
    assert sum(m["kl_per_dimension_nats"]) == pytest.approx(m["kl_nats"], rel=1e-4)
    assert m["active_units"] == 3 and len(m["active_units_variance"]) == 3
    assert m["chunk"] == m["memory"]["pairs"] > 0 and m["seconds"] >= m["log_likelihood_seconds"] > 0
    json.dumps(m)  # what pyrovae evaluate writes


# --- pyrovae evaluate -------------------------------------------------------------------------------------


@pytest.mark.mnist
def test_evaluate_command_writes_every_metric_to_the_run_folder(tmp_path, mnist_root, capsys):
    config = RunConfig(model=VAEConfig(z_dim=3, hidden=(32,)), trainer=TrainerConfig(epochs=1, batch_size=64))
    fit(config, tmp_path, data=random_binary_data(128), progress=False)
    args = ["evaluate", str(tmp_path), "-k", "3", "--test-size", "100", "--probe-train-size", "300",
            "--max-memory-gb", "0.05", "--data-dir", str(mnist_root), "--no-progress"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "metrics.json").read_text())["test_K3_n100"]
    # the terminal gets the scalars; lists and nested tables are in the run folder only
    assert printed == {k: v for k, v in written.items() if not isinstance(v, (list, dict))}
    assert "kl_per_dimension_nats" in written and "kl_per_dimension_nats" not in printed
    assert written["num_images"] == 100 and written["memory"]["max_memory_gb"] == 0.05
    assert 0 <= written["linear_probe"]["accuracy"] <= 1 and written["linear_probe"]["num_train"] == 300
    assert len(written["kl_per_dimension_nats"]) == 3 and 0 <= written["active_units"] <= 3
    assert main(args[:-1] + ["--no-probe", "--no-latent-stats", "--no-progress"]) == 0
    written = json.loads((tmp_path / "metrics.json").read_text())["test_K3_n100"]
    assert "linear_probe" not in written and "active_units" not in written
    assert main(["evaluate", str(tmp_path), "--max-memory-gb", "0", "--data-dir", str(mnist_root)]) == 2
    assert "max_memory_gb=0.0 must be a finite number > 0 (gigabytes" in capsys.readouterr().err
