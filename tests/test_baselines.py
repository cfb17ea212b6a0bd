"""The exact-likelihood baselines: probabilistic PCA against the Gaussian it defines and its
maximum-likelihood property, the per-feature negative binomial against torch's, the mixture against
scikit-learn's, and the errors each raises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyrovae.errors import ArgumentTypeError, ConfigError, DataError
from pyrovae.evaluation.baselines import (GaussianMixtureBaseline, PerFeatureNegativeBinomial, ProbabilisticPCA,
                                          mean_and_stderr)


def ppca_data(n: int, d: int, q: int, seed: int = 0, sigma2: float = 0.3):
    """Draws from a known pPCA model: (x, W, mu, sigma2)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, q)) * 2.0
    mu = rng.normal(size=d)
    x = mu + rng.normal(size=(n, q)) @ W.T + math.sqrt(sigma2) * rng.normal(size=(n, d))
    return x, W, mu, sigma2


def true_log_likelihood(x, W, mu, sigma2):
    stats = pytest.importorskip("scipy.stats")
    return stats.multivariate_normal(mu, W @ W.T + sigma2 * np.eye(len(mu))).logpdf(x)


# ---------------------------------------------------------------- probabilistic PCA

def test_ppca_log_likelihood_equals_the_gaussian_it_defines():
    stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(1).normal(size=(300, 6)) @ np.random.default_rng(2).normal(size=(6, 6))
    ppca = ProbabilisticPCA().fit(x, 2)
    assert ppca.W.shape == (6, 2) and ppca.mean.shape == (6,)
    held_out = np.random.default_rng(3).normal(size=(50, 6)) * 3
    expected = stats.multivariate_normal(ppca.mean, ppca.W @ ppca.W.T + ppca.noise_variance * np.eye(6)).logpdf(
        held_out)
    got = ppca.log_likelihood(held_out)
    assert got.shape == (50,)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    np.testing.assert_allclose(ppca.covariance, ppca.W @ ppca.W.T + ppca.noise_variance * np.eye(6))


def test_ppca_closed_form_follows_tipping_and_bishop():
    """sigma^2 is the mean of the discarded eigenvalues, W W^T is the top-q part of the sample covariance
    less sigma^2, and the training log-likelihood is its closed form at the maximum,
    -(n/2) (d log 2 pi + log |C| + d)."""
    x, *_ = ppca_data(500, 7, 3, seed=4)
    ppca = ProbabilisticPCA().fit(x, 3)
    S = np.cov(x.T, bias=True)
    lam, U = np.linalg.eigh(S)
    lam, U = lam[::-1], U[:, ::-1]
    np.testing.assert_allclose(ppca.eigenvalues, lam, rtol=1e-10)
    assert ppca.noise_variance == pytest.approx(lam[3:].mean(), rel=1e-12)
    np.testing.assert_allclose(ppca.W @ ppca.W.T, U[:, :3] @ np.diag(lam[:3] - lam[3:].mean()) @ U[:, :3].T,
                               atol=1e-10)
    closed = -0.5 * (7 * math.log(2 * math.pi) + np.log(lam[:3]).sum() + 4 * math.log(lam[3:].mean()) + 7)
    assert ppca.log_likelihood(x).mean() == pytest.approx(closed, rel=1e-10)


def test_ppca_recovers_a_known_model_and_is_the_maximum_likelihood():
    x, W, mu, sigma2 = ppca_data(20000, 5, 2, seed=5)
    ppca = ProbabilisticPCA().fit(x, 2)
    assert ppca.noise_variance == pytest.approx(sigma2, rel=0.03)
    truth = W @ W.T
    assert np.linalg.norm(ppca.W @ ppca.W.T - truth) / np.linalg.norm(truth) < 0.03
    np.testing.assert_allclose(ppca.mean, mu, atol=0.1)
    fitted = ppca.log_likelihood(x).mean()
    assert fitted >= true_log_likelihood(x, W, mu, sigma2).mean()
    # and above nearby parameters too (the fit is the global maximum)
    for W_other, s2_other in [(ppca.W * 1.01, ppca.noise_variance), (ppca.W, ppca.noise_variance * 0.99),
                              (ppca.W @ np.array([[1.0, 0.02], [0.0, 1.0]]), ppca.noise_variance)]:
        assert fitted > true_log_likelihood(x, W_other, ppca.mean, s2_other).mean()


def test_ppca_posterior_is_gaussian_conditioning_of_the_joint():
    """(z, x) is jointly Gaussian with Cov(z) = I, Cov(z, x) = W^T, Cov(x) = C: p(z | x) has mean
    W^T C^{-1} (x - mu) and covariance I - W^T C^{-1} W."""
    x, *_ = ppca_data(400, 6, 2, seed=6)
    ppca = ProbabilisticPCA().fit(x, 2)
    C = ppca.W @ ppca.W.T + ppca.noise_variance * np.eye(6)
    means, cov = ppca.posterior(x[:20])
    np.testing.assert_allclose(means, (x[:20] - ppca.mean) @ np.linalg.solve(C, ppca.W), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cov, np.eye(2) - ppca.W.T @ np.linalg.solve(C, ppca.W), rtol=1e-9, atol=1e-12)
    assert means.shape == (20, 2) and cov.shape == (2, 2)


def test_ppca_with_q_one_below_d_reproduces_the_sample_covariance():
    stats = pytest.importorskip("scipy.stats")
    x, *_ = ppca_data(300, 4, 2, seed=7)
    ppca = ProbabilisticPCA().fit(x, 3)
    S = np.cov(x.T, bias=True)
    np.testing.assert_allclose(ppca.covariance, S, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ppca.log_likelihood(x), stats.multivariate_normal(x.mean(0), S).logpdf(x),
                               rtol=1e-9)


def test_ppca_sample_matches_the_model():
    x, *_ = ppca_data(300, 4, 2, seed=8)
    ppca = ProbabilisticPCA().fit(x, 2)
    draws = ppca.sample(40000, rng=0)
    assert draws.shape == (40000, 4)
    np.testing.assert_allclose(draws.mean(0), ppca.mean, atol=0.1)
    np.testing.assert_allclose(np.cov(draws.T), ppca.covariance, atol=0.05 * np.abs(ppca.covariance).max())
    np.testing.assert_array_equal(ppca.sample(5, rng=np.random.default_rng(1)), ppca.sample(5, rng=1))


def test_ppca_errors():
    x, *_ = ppca_data(100, 5, 2, seed=9)
    for q in (0, 5, 6, -1):
        with pytest.raises(ConfigError, match="q="):
            ProbabilisticPCA().fit(x, q)
    with pytest.raises(ArgumentTypeError):
        ProbabilisticPCA().fit(x, 2.0)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[3, 1] = bad
        with pytest.raises(DataError, match="NaN or infinite"):
            ProbabilisticPCA().fit(y, 2)
    with pytest.raises(DataError, match="2-D"):
        ProbabilisticPCA().fit(x[:, 0], 1)
    with pytest.raises(DataError, match="2-D"):
        ProbabilisticPCA().fit(x[None], 2)
    with pytest.raises(DataError, match="at least 2"):
        ProbabilisticPCA().fit(x[:1], 2)
    # rank 2 after centering, q = 2: sigma^2 = 0
    rank2 = np.random.default_rng(0).normal(size=(100, 2)) @ np.random.default_rng(1).normal(size=(2, 5)) + 3.0
    with pytest.raises(DataError, match="lower q"):
        ProbabilisticPCA().fit(rank2, 2)
    with pytest.raises(DataError, match="lower q"):
        ProbabilisticPCA().fit(np.ones((10, 3)), 1)
    assert np.isfinite(ProbabilisticPCA().fit(rank2, 1).noise_variance)  # q below the rank is fine
    ppca = ProbabilisticPCA().fit(x, 2)
    with pytest.raises(DataError, match="columns"):
        ppca.log_likelihood(x[:, :4])
    y = x.copy()
    y[0, 0] = np.nan
    with pytest.raises(DataError):
        ppca.posterior(y)
    with pytest.raises(ConfigError, match="not fitted"):
        ProbabilisticPCA().log_likelihood(x)


# ---------------------------------------------------------------- per-feature negative binomial

def nb_counts(n: int = 4000, seed: int = 0):
    """Columns: three over-dispersed NB columns (r = 0.5, 3, 20), one under-dispersed (binomial(6, 1/2):
    variance 1.5, mean 3), one constant, one all zeros."""
    torch.manual_seed(seed)
    cols = [torch.distributions.NegativeBinomial(total_count=torch.tensor(r), logits=torch.tensor(math.log(m / r)))
            .sample((n,)) for r, m in [(0.5, 4.0), (3.0, 10.0), (20.0, 50.0)]]
    cols.append(torch.distributions.Binomial(6, probs=torch.tensor(0.5)).sample((n,)))
    cols.append(torch.full((n,), 2.0))
    cols.append(torch.zeros(n))
    return torch.stack(cols, dim=1).double().numpy()


def test_nb_mean_is_the_column_mean_and_log_likelihood_is_torchs():
    x = nb_counts()
    nb = PerFeatureNegativeBinomial().fit(x)
    np.testing.assert_array_equal(nb.mean, x.mean(axis=0))
    held_out = nb_counts(500, seed=1)
    xt = torch.from_numpy(held_out)
    expected = torch.zeros(len(held_out), dtype=torch.float64)
    for j in range(x.shape[1]):
        if nb.poisson[j]:
            expected += torch.distributions.Poisson(torch.tensor(nb.mean[j]), validate_args=False).log_prob(xt[:, j])
        else:
            r = torch.tensor(nb.total_count[j])
            expected += torch.distributions.NegativeBinomial(total_count=r, probs=torch.tensor(nb.probs[j])).log_prob(
                xt[:, j])
    got = nb.log_likelihood(held_out)
    assert got.shape == (500,)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-10)


def test_nb_matches_scipy_nbinom():
    stats = pytest.importorskip("scipy.stats")
    x = nb_counts()[:, :3]
    nb = PerFeatureNegativeBinomial().fit(x)
    r, m = nb.total_count, nb.mean
    expected = stats.nbinom(r, r / (r + m)).logpmf(x).sum(axis=1)  # scipy's p is the success probability 1 - p
    np.testing.assert_allclose(nb.log_likelihood(x), expected, rtol=1e-10)


def test_nb_dispersion_is_the_maximum_likelihood():
    x = nb_counts()
    nb = PerFeatureNegativeBinomial().fit(x)
    assert not nb.poisson[:3].any()
    np.testing.assert_allclose(nb.total_count[:3], [0.5, 3.0, 20.0], rtol=0.2)
    best = nb.log_likelihood(x).sum()
    for j in range(3):
        for factor in (1.2, 1 / 1.2, 1.001, 1 / 1.001):
            other = PerFeatureNegativeBinomial()
            other.mean, other.poisson = nb.mean, nb.poisson
            other.total_count = nb.total_count.copy()
            other.total_count[j] *= factor
            assert other.log_likelihood(x).sum() < best


def test_nb_dispersion_agrees_with_a_generic_optimizer():
    optimize = pytest.importorskip("scipy.optimize")
    stats = pytest.importorskip("scipy.stats")
    x = nb_counts(2000, seed=3)[:, 1]
    m = x.mean()

    def negative_log_likelihood(u):
        r = math.exp(u)
        return -stats.nbinom(r, r / (r + m)).logpmf(x).sum()

    res = optimize.minimize_scalar(negative_log_likelihood, bounds=(-5, 10), method="bounded",
                                   options={"xatol": 1e-10})
    nb = PerFeatureNegativeBinomial().fit(x[:, None])
    assert nb.total_count[0] == pytest.approx(math.exp(res.x), rel=1e-5)


def test_nb_falls_back_to_poisson_when_variance_does_not_exceed_the_mean():
    stats = pytest.importorskip("scipy.stats")
    x = nb_counts()
    nb = PerFeatureNegativeBinomial().fit(x)
    assert x[:, 3].var() <= x[:, 3].mean()
    np.testing.assert_array_equal(nb.poisson, [False, False, False, True, True, True])
    assert np.isinf(nb.total_count[3:]).all() and (nb.probs[3:] == 0).all()
    # an under-dispersed column (variance 0.25 < mean 1.5)
    under = np.tile([1.0, 2.0], 50)[:, None]
    fit = PerFeatureNegativeBinomial().fit(under)
    assert fit.poisson[0]
    np.testing.assert_allclose(fit.log_likelihood(under), stats.poisson(1.5).logpmf(under[:, 0]), rtol=1e-12)
    # the all-zero column: rate 0, so a positive held-out count is impossible
    held_out = np.zeros((2, 6))
    held_out[1, 5] = 1
    ll = nb.log_likelihood(held_out)
    assert np.isfinite(ll[0]) and ll[1] == -np.inf


def test_nb_near_poisson_column_is_accurate():
    """Variance barely above the mean: r is huge, and the log-likelihood is (nearly) the Poisson one, with no
    cancellation blowing up."""
    stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(0).poisson(5.0, size=(20000, 1)).astype(float)
    if not x.var() > x.mean():
        x[0, 0] += 20
    nb = PerFeatureNegativeBinomial().fit(x)
    assert not nb.poisson[0] and nb.total_count[0] > 50
    ll = nb.log_likelihood(x)
    poisson = stats.poisson(x.mean()).logpmf(x[:, 0])
    assert np.isfinite(ll).all() and ll.sum() >= poisson.sum()
    np.testing.assert_allclose(ll, stats.nbinom(nb.total_count[0], nb.total_count[0] / (nb.total_count[0] + x.mean()))
                               .logpmf(x[:, 0]), rtol=1e-9)


def test_nb_large_r_formula_is_accurate():
    """The series used from r = 1000 up agrees with the exact log-pmf (50-digit mpmath) on both sides of the
    switch and far beyond it, and tends to the Poisson's."""
    mpmath = pytest.importorskip("mpmath")
    stats = pytest.importorskip("scipy.stats")
    mpmath.mp.dps = 50

    def exact(k, r, m):
        k, r, m = mpmath.mpf(int(k)), mpmath.mpf(r), mpmath.mpf(m)
        return float(mpmath.loggamma(k + r) - mpmath.loggamma(r) - mpmath.loggamma(k + 1)
                     + r * mpmath.log(r / (r + m)) + k * mpmath.log(m / (r + m)))

    x = np.arange(0, 40, dtype=float)[:, None]
    nb = PerFeatureNegativeBinomial()
    for r in (2.5, 999.0, 1000.0, 1e4, 1e7, 1e12):
        nb.mean, nb.total_count, nb.poisson = np.array([8.0]), np.array([r]), np.array([False])
        np.testing.assert_allclose(nb.log_likelihood(x), [exact(k, r, 8.0) for k in x[:, 0]], rtol=1e-12)
    nb.total_count = np.array([1e20])
    np.testing.assert_allclose(nb.log_likelihood(x), stats.poisson(8.0).logpmf(x[:, 0]), rtol=1e-12)


def test_nb_errors():
    with pytest.raises(DataError, match="non-negative integers"):
        PerFeatureNegativeBinomial().fit(np.array([[1.0, 2.5], [0.0, 1.0]]))
    with pytest.raises(DataError, match="non-negative integers"):
        PerFeatureNegativeBinomial().fit(np.array([[1.0, -1.0], [0.0, 1.0]]))
    with pytest.raises(DataError, match="NaN"):
        PerFeatureNegativeBinomial().fit(np.array([[1.0, np.nan], [0.0, 1.0]]))
    nb = PerFeatureNegativeBinomial().fit(nb_counts(200))
    with pytest.raises(DataError, match="columns"):
        nb.log_likelihood(np.zeros((3, 5)))
    with pytest.raises(ConfigError, match="not fitted"):
        PerFeatureNegativeBinomial().log_likelihood(np.zeros((3, 5)))


# ---------------------------------------------------------------- mixture, summary

def test_gaussian_mixture_equals_sklearn():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(200, 3)), rng.normal(size=(200, 3)) + 4])
    gmm = GaussianMixtureBaseline(2, random_state=0, reg_covar=1e-5).fit(x)
    reference = GaussianMixture(2, covariance_type="full", random_state=0, reg_covar=1e-5).fit(x)
    held_out = rng.normal(size=(30, 3)) * 3
    np.testing.assert_allclose(gmm.log_likelihood(held_out), reference.score_samples(held_out), rtol=1e-12)
    with pytest.raises(DataError, match="columns"):
        gmm.log_likelihood(held_out[:, :2])
    with pytest.raises(DataError, match="fewer than"):
        GaussianMixtureBaseline(5).fit(x[:3])
    with pytest.raises(ConfigError):
        GaussianMixtureBaseline(0)


def test_mean_and_stderr():
    values = np.random.default_rng(0).normal(size=101)
    mean, stderr = mean_and_stderr(values)
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert stderr == pytest.approx(values.std(ddof=1) / math.sqrt(101), rel=1e-12)
    assert mean_and_stderr(torch.tensor(values))[0] == pytest.approx(mean)
    assert math.isnan(mean_and_stderr([2.0])[1])
    with pytest.raises(DataError):
        mean_and_stderr([])
