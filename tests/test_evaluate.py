import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyrovae import VAE
from pyrovae.evaluate import evaluate, log_importance_weights, log_likelihood

from .conftest import logmeanexp, ppca


def test_exact_posterior_guide_gives_elbo_equal_to_the_exact_log_marginal():
    vae, x, exact = ppca()
    out = log_likelihood(vae, x, num_samples=16, progress=False)
    torch.testing.assert_close(out["elbo"], exact, atol=2e-4, rtol=0)
    torch.testing.assert_close(out["log_likelihood"], exact, atol=2e-4, rtol=0)


def test_importance_sampling_recovers_the_exact_log_marginal_with_a_poor_guide():
    vae, x, exact = ppca(shift=0.3, scale_factor=1.5)
    out = log_likelihood(vae, x, num_samples=20_000, max_chunk=200_000, progress=False)
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
            vals.append(log_likelihood(vae, x, num_samples=k, progress=False)["log_likelihood"].mean())
        bounds[k] = torch.stack(vals).mean()
    assert bounds[1] < bounds[10] < bounds[100] < bounds[1000] < exact.mean()


def test_k_equal_one_bound_is_the_single_sample_elbo():
    vae = VAE(z_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.2))
    pyro.set_rng_seed(0)
    out = log_likelihood(vae, x, num_samples=1, progress=False)
    torch.testing.assert_close(out["log_likelihood"], out["elbo"])


def test_chunking_over_samples_and_images_does_not_change_the_estimate():
    vae = VAE(z_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.full((10, 1, 28, 28), 0.2))
    pyro.set_rng_seed(0)
    whole = log_likelihood(vae, x, num_samples=300, max_chunk=10**6, progress=False)
    pyro.set_rng_seed(1)
    chunked = log_likelihood(vae, x, num_samples=300, max_chunk=64, progress=False)
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
        log_w = log_importance_weights(vae, x, 2000).sum(1)
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
    with pytest.raises(ValueError, match="num_samples=0"):
        evaluate(vae, torch.zeros(2, 1, 28, 28), num_samples=0)
    with pytest.raises(ValueError, match="binarize"):
        evaluate(vae, torch.full((2, 1, 28, 28), 0.3), num_samples=2)
