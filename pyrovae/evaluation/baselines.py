"""Baselines whose held-out log-likelihood is exact, to compare a VAE's (estimated) log p(x) against on
users' tables and counts.

* :class:`ProbabilisticPCA`: the closed-form maximum-likelihood probabilistic PCA of Tipping & Bishop
  (1999), a linear-Gaussian latent-variable model x = W z + mu + eps with z ~ N(0, I_q) and
  eps ~ N(0, sigma^2 I_d): the linear counterpart of a Gaussian VAE, with an exact marginal likelihood and
  posterior.
* :class:`GaussianMixtureBaseline`: a full-covariance Gaussian mixture (scikit-learn's
  ``GaussianMixture``) for continuous tables.
* :class:`PerFeatureNegativeBinomial`: an independent negative binomial per column (no latents), fitted by
  maximum likelihood, for count tables; the floor a count VAE has to beat.
* :func:`mean_and_stderr`: the mean of per-data-point values and its standard error.

Every ``log_likelihood`` returns one value per data point (row), in nats, exactly: no bound and no Monte
Carlo, so ``mean_and_stderr(baseline.log_likelihood(x_test))`` sits beside a VAE's importance-sampled
``log_likelihood_nats`` of the same rows (which is a stochastic lower bound in expectation). Inputs are
numpy arrays (or anything ``numpy.asarray`` takes, CPU tensors included) of shape ``(n, d)``: n data
points by d features. Only numpy (and torch, for the log-gamma and digamma functions) are needed;
scikit-learn is imported when the mixture is fitted.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import checks
from ..errors import ConfigError, DataError
from .likelihood import summarize

__all__ = ["GaussianMixtureBaseline", "PerFeatureNegativeBinomial", "ProbabilisticPCA", "mean_and_stderr"]


def _as_matrix(x, name: str = "x", columns: int | None = None) -> np.ndarray:
    """``x`` as a finite float64 array of shape (n, d) with n >= 1 (and d == ``columns`` when given)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} must be a numeric array of shape (n, d), could not convert it: {e}") from None
    if x.ndim != 2:
        raise DataError(f"{name} must be a 2-D array of shape (n, d) (data points by features), got shape "
                        f"{x.shape}; reshape it, e.g. x.reshape(len(x), -1)")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise DataError(f"{name} has shape {x.shape}: it needs at least one row and one column")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise DataError(f"{name} has NaN or infinite values in {bad} of its {x.shape[0]} rows; drop or impute "
                        "them first")
    if columns is not None and x.shape[1] != columns:
        raise DataError(f"{name} has {x.shape[1]} columns but the baseline was fitted on {columns}")
    return x


def _not_fitted(owner: object) -> ConfigError:
    return ConfigError(f"this {type(owner).__name__} is not fitted yet: call fit(...) first")


class ProbabilisticPCA:
    """Probabilistic PCA fitted in closed form by maximum likelihood (Tipping & Bishop, "Probabilistic
    principal component analysis", J. R. Statist. Soc. B 61(3), 1999, section 3.2).

    The model: z ~ N(0, I_q), x | z ~ N(W z + mu, sigma^2 I_d), so x ~ N(mu, C) with
    C = W W^T + sigma^2 I_d. :meth:`fit` computes the maximum-likelihood estimates: mu = the sample mean,
    and with the eigen-decomposition of the sample covariance S = (1/n) sum_i (x_i - mu)(x_i - mu)^T
    (eigenvalues lambda_1 >= ... >= lambda_d, eigenvectors U),

        sigma^2 = mean(lambda_{q+1}, ..., lambda_d),    W = U_q (Lambda_q - sigma^2 I_q)^{1/2}

    (the rotation R = I). This is the global maximum of the likelihood, so the training log-likelihood of
    the fit is at least that of any other (W, mu, sigma^2), the true ones included.

    Attributes (after :meth:`fit`):
        mean: mu, shape (d,).
        W: the factor loadings, shape (d, q).
        noise_variance: sigma^2 (a float, in squared data units).
        eigenvalues: all d eigenvalues of S, largest first, shape (d,).
        q: the latent dimension.
    """

    def __init__(self):
        self.mean: np.ndarray | None = None
        self.W: np.ndarray | None = None
        self.noise_variance: float | None = None
        self.eigenvalues: np.ndarray | None = None
        self.q: int | None = None

    def fit(self, x, q: int) -> ProbabilisticPCA:
        """Fit to ``x`` of shape (n, d) with ``q`` latent dimensions, 1 <= q <= d - 1; returns ``self``.

        Raises:
            ArgumentTypeError: ``q`` is not an integer.
            ConfigError: ``q`` < 1 or ``q`` >= d (with q = d the noise variance is not identified).
            DataError: ``x`` is not 2-D, has NaN or infinite values, has fewer than 2 rows, or has rank <= q
                after centering (the noise variance would be 0 and the density degenerate).
        """
        x = _as_matrix(x)
        n, d = x.shape
        q = checks.positive_int(q, "q", hint=f"the latent dimension, 1 <= q <= d - 1 = {d - 1}")
        if q >= d:
            raise ConfigError(f"q={q} must be at most d - 1 = {d - 1} (the data have d = {d} columns); with "
                              "q >= d the noise variance is not identified")
        if n < 2:
            raise DataError(f"x has {n} row; probabilistic PCA needs at least 2 data points")
        mean = x.mean(axis=0)
        y = x - mean
        cov = (y.T @ y) / n
        eigenvalues, vectors = np.linalg.eigh(cov)  # ascending
        eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
        sigma2 = float(eigenvalues[q:].mean())
        # eigh is accurate to about eps * the largest eigenvalue: anything below that is a zero.
        tol = 10 * d * np.finfo(np.float64).eps * max(float(eigenvalues[0]), np.finfo(np.float64).tiny)
        if not sigma2 > tol:
            rank = int((eigenvalues > tol).sum())
            raise DataError(f"the noise variance sigma^2 is 0 (to rounding: {sigma2:.3g}): the centered data have "
                            f"rank {rank} <= q = {q}, so the pPCA density is degenerate; lower q below {rank} "
                            "or add noise to the data")
        self.mean, self.noise_variance, self.q = mean, sigma2, q
        self.eigenvalues = eigenvalues.copy()
        self.W = vectors[:, :q] * np.sqrt(np.maximum(eigenvalues[:q] - sigma2, 0.0))
        return self

    def _check_fitted(self) -> None:
        if self.W is None:
            raise _not_fitted(self)

    @property
    def covariance(self) -> np.ndarray:
        """The marginal covariance C = W W^T + sigma^2 I, shape (d, d)."""
        self._check_fitted()
        return self.W @ self.W.T + self.noise_variance * np.eye(self.W.shape[0])

    def _m(self) -> np.ndarray:
        """M = W^T W + sigma^2 I_q, shape (q, q)."""
        return self.W.T @ self.W + self.noise_variance * np.eye(self.W.shape[1])

    def log_likelihood(self, x) -> np.ndarray:
        """log N(x_i; mu, W W^T + sigma^2 I) of each row of ``x`` (n, d): shape (n,), nats per data point.

        Exact, in O(n d q) with the Woodbury identity and the matrix determinant lemma:
        log |C| = (d - q) log sigma^2 + log |M| and (x - mu)^T C^{-1} (x - mu) = |r|^2 / sigma^2 + |b|^2,
        where b = M^{-1} W^T (x - mu) is the posterior mean and r = x - mu - W b the residual (a sum of two
        non-negative terms, so no cancellation).

        Raises:
            DataError: ``x`` is not 2-D with d columns, or has NaN or infinite values.
        """
        self._check_fitted()
        x = _as_matrix(x, columns=self.W.shape[0])
        d, q = self.W.shape
        s2 = self.noise_variance
        y = x - self.mean
        chol = np.linalg.cholesky(self._m())
        b = _cho_solve(chol, (y @ self.W).T).T
        r = y - b @ self.W.T
        quad = (r ** 2).sum(axis=1) / s2 + (b ** 2).sum(axis=1)
        logdet = (d - q) * math.log(s2) + 2.0 * np.log(np.diag(chol)).sum()
        return -0.5 * (d * math.log(2 * math.pi) + logdet + quad)

    def posterior(self, x) -> tuple[np.ndarray, np.ndarray]:
        """The exact posterior p(z | x) = N(M^{-1} W^T (x - mu), sigma^2 M^{-1}), M = W^T W + sigma^2 I_q:
        the means, shape (n, q), and the covariance (the same for every data point), shape (q, q).

        Raises:
            DataError: as :meth:`log_likelihood`.
        """
        self._check_fitted()
        x = _as_matrix(x, columns=self.W.shape[0])
        chol = np.linalg.cholesky(self._m())
        means = _cho_solve(chol, ((x - self.mean) @ self.W).T).T
        cov = self.noise_variance * _cho_solve(chol, np.eye(self.W.shape[1]))
        return means, 0.5 * (cov + cov.T)

    def sample(self, n: int, rng=None) -> np.ndarray:
        """``n`` draws of x from the fitted model, shape (n, d). ``rng``: a ``numpy.random.Generator``, a seed,
        or None (fresh entropy)."""
        self._check_fitted()
        n = checks.positive_int(n, "n")
        rng = np.random.default_rng(rng)
        d, q = self.W.shape
        z = rng.standard_normal((n, q))
        return self.mean + z @ self.W.T + math.sqrt(self.noise_variance) * rng.standard_normal((n, d))


def _cho_solve(chol: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """A^{-1} rhs for A = chol chol^T (lower-triangular ``chol``); numpy has no triangular solver, and A is
    q x q, so two general solves cost nothing."""
    return np.linalg.solve(chol.T, np.linalg.solve(chol, rhs))


class GaussianMixtureBaseline:
    """A full-covariance Gaussian mixture: a thin wrapper over ``sklearn.mixture.GaussianMixture``.

    Args:
        n_components: the number of mixture components (the caller chooses it, e.g. on validation data).
        random_state: seed of the k-means initialization (an int for reproducible fits).
        reg_covar: added to each covariance's diagonal (squared data units): keeps them positive definite.
        max_iter, n_init: EM iterations, and how many initializations to keep the best of.

    After :meth:`fit`, ``model`` is the fitted scikit-learn estimator.
    """

    def __init__(self, n_components: int = 1, *, random_state: int | None = None, reg_covar: float = 1e-6,
                 max_iter: int = 100, n_init: int = 1):
        self.n_components = checks.positive_int(n_components, "n_components")
        self.random_state = random_state
        self.reg_covar = checks.number(reg_covar, "reg_covar", 0.0)
        self.max_iter = checks.positive_int(max_iter, "max_iter")
        self.n_init = checks.positive_int(n_init, "n_init")
        self.model = None

    def fit(self, x) -> GaussianMixtureBaseline:
        """Fit by EM to ``x`` of shape (n, d), n >= n_components; returns ``self``.

        Raises:
            DataError: ``x`` is not 2-D, has NaN or infinite values, or fewer rows than components.
        """
        from sklearn.mixture import GaussianMixture  # imported here: only this baseline needs it

        x = _as_matrix(x)
        if x.shape[0] < self.n_components:
            raise DataError(f"x has {x.shape[0]} rows, fewer than n_components={self.n_components}")
        self.model = GaussianMixture(n_components=self.n_components, covariance_type="full",
                                     reg_covar=self.reg_covar, max_iter=self.max_iter, n_init=self.n_init,
                                     random_state=self.random_state).fit(x)
        return self

    def log_likelihood(self, x) -> np.ndarray:
        """The mixture's log density of each row of ``x`` (n, d): shape (n,), nats per data point
        (``score_samples``)."""
        if self.model is None:
            raise _not_fitted(self)
        return self.model.score_samples(_as_matrix(x, columns=self.model.means_.shape[1]))


class PerFeatureNegativeBinomial:
    """An independent negative binomial for each column of a count table (no latents), fitted by maximum
    likelihood column by column.

    Column j is NB(total_count r_j, probs p_j) in Pyro's and torch's parametrization,
    P(k) = Gamma(k + r) / (Gamma(r) k!) (1 - p)^r p^k, with mean m_j = r_j p_j / (1 - p_j), i.e.
    p_j = m_j / (r_j + m_j) and logits = log m_j - log r_j. Whatever r is, the maximum-likelihood mean is the
    sample mean, so m_j is the column mean exactly; r_j maximizes the profile likelihood, whose derivative
    sum_i psi(x_ij + r) - n psi(r) + n log(r / (r + m_j)) is solved by a safeguarded Newton iteration in
    log r (bisection whenever a Newton step leaves the bracket).

    The finite maximum exists, and is unique, exactly when the column's variance (with divisor n) exceeds
    its mean (Aragon, Eberly & Eberly, Statist. Probab. Lett. 15, 1992); a column with variance <= mean
    (under-dispersed or Poisson-like, constant columns and all-zero columns included) falls back to a
    Poisson with rate m_j, the NB's limit as r -> infinity: for it ``poisson[j]`` is True,
    ``total_count[j]`` is inf and ``probs[j]`` is 0. An all-zero training column gives a Poisson with rate 0,
    under which any positive held-out count has log-likelihood -inf.

    Attributes (after :meth:`fit`):
        mean: m, shape (d,).
        total_count: r (inf for Poisson columns), shape (d,).
        poisson: which columns fell back to a Poisson, shape (d,), bool.
    """

    def __init__(self):
        self.mean: np.ndarray | None = None
        self.total_count: np.ndarray | None = None
        self.poisson: np.ndarray | None = None

    @property
    def probs(self) -> np.ndarray:
        """p = m / (r + m), shape (d,) (0 for Poisson columns)."""
        self._check_fitted()
        with np.errstate(invalid="ignore"):
            return np.where(self.poisson, 0.0, self.mean / (self.total_count + self.mean))

    def _check_fitted(self) -> None:
        if self.mean is None:
            raise _not_fitted(self)

    def fit(self, x) -> PerFeatureNegativeBinomial:
        """Fit to the counts ``x``, shape (n, d), non-negative integers (of any numeric dtype); returns
        ``self``.

        Raises:
            DataError: ``x`` is not 2-D, or has values that are not finite non-negative integers.
        """
        x = _counts(x)
        mean = x.mean(axis=0)
        variance = x.var(axis=0)  # divisor n: the maximum-likelihood variance
        poisson = ~(variance > mean)
        total_count = np.full(x.shape[1], np.inf)
        for j in np.flatnonzero(~poisson):
            values, counts = np.unique(x[:, j], return_counts=True)
            total_count[j] = _fit_total_count(values, counts, float(mean[j]), float(variance[j]))
        self.mean, self.total_count, self.poisson = mean, total_count, poisson
        return self

    def log_likelihood(self, x) -> np.ndarray:
        """sum_j log NB(x_ij; r_j, p_j) (a Poisson term for Poisson columns) of each row of ``x`` (n, d):
        shape (n,), nats per data point.

        Raises:
            DataError: ``x`` is not 2-D with d columns, or has values that are not non-negative integers.
        """
        self._check_fitted()
        x = torch.from_numpy(_counts(x, columns=self.mean.shape[0]))
        m = torch.from_numpy(self.mean)
        nb = torch.from_numpy(~self.poisson)
        r = torch.from_numpy(np.where(self.poisson, 1.0, self.total_count))  # placeholder r for Poisson columns
        log_nb = (torch.lgamma(x + r) - torch.lgamma(r) - r * torch.log1p(m / r) + torch.xlogy(x, m)
                  - x * torch.log(r + m) - torch.lgamma(x + 1))
        # For large r the same with Stirling's series for lgamma(x + r) - lgamma(r), and
        # x log(r + x) - x log(r + m) = x log1p((x - m) / (r + m)): no difference of two large numbers.
        if (r >= _LARGE).any():
            big = torch.clamp(r, min=_LARGE)
            log_nb_large = ((big - 0.5) * torch.log1p(x / big) - x + x * torch.log1p((x - m) / (big + m))
                            + _stirling_rest(big + x) - _stirling_rest(big) - big * torch.log1p(m / big)
                            + torch.xlogy(x, m) - torch.lgamma(x + 1))
            log_nb = torch.where(r >= _LARGE, log_nb_large, log_nb)
        log_poisson = torch.xlogy(x, m) - m - torch.lgamma(x + 1)
        return torch.where(nb, log_nb, log_poisson).sum(dim=1).numpy()


def _counts(x, columns: int | None = None) -> np.ndarray:
    x = _as_matrix(x, columns=columns)
    if (x < 0).any() or (x != np.round(x)).any():
        raise DataError("count data must be non-negative integers; x has negative or fractional values (a "
                        "negative binomial has support 0, 1, 2, ...)")
    return x


#: Above this r, log-gamma and digamma differences use their asymptotic series (exact to rounding there)
#: instead of differences of two large numbers.
_LARGE = 1e3


def _stirling_rest(z: torch.Tensor) -> torch.Tensor:
    """lgamma(z) - ((z - 1/2) log z - z + log(2 pi) / 2) for z >= _LARGE (error below 1e-20 there)."""
    w = 1.0 / (z * z)
    return (1.0 / 12 - w * (1.0 / 360 - w / 1260)) / z


def _digamma_diff(v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """psi(v + r) - psi(r) for v >= 0, r > 0, accurate for large r too (where it is about v / r)."""
    def rest(z):  # psi(z) - log z for z >= _LARGE
        w = 1.0 / (z * z)
        return -0.5 / z - w * (1.0 / 12 - w * (1.0 / 120 - w / 252))

    if r.item() < _LARGE:
        return torch.digamma(v + r) - torch.digamma(r)
    return torch.log1p(v / r) + rest(v + r) - rest(r)


def _fit_total_count(values: np.ndarray, counts: np.ndarray, mean: float, variance: float) -> float:
    """The maximum-likelihood r of a negative binomial with mean ``mean`` for the data with distinct
    ``values`` seen ``counts`` times, when ``variance`` > ``mean`` (then the maximum is finite and unique).

    Solves g(u) = l'(e^u) = 0 in u = log r, where l'(r) = sum_k c_k (psi(v_k + r) - psi(r)) - n log1p(m / r)
    is positive for small r and negative for large r; Newton steps use
    l''(r) = sum_k c_k (psi'(v_k + r) - psi'(r)) + n m / (r (r + m)) and are kept inside the bracket.
    """
    v = torch.from_numpy(values)
    c = torch.from_numpy(counts.astype(np.float64))
    n = float(counts.sum())

    def g(u: float) -> tuple[float, float]:
        r = torch.tensor(math.exp(u), dtype=torch.float64)
        d1 = (c * _digamma_diff(v, r)).sum() - n * torch.log1p(mean / r)
        d2 = (c * (torch.polygamma(1, v + r) - torch.polygamma(1, r))).sum() + n * mean / (r * (r + mean))
        return d1.item(), (d2 * r).item()  # dg/du = r l''(r)

    u = math.log(mean * mean / (variance - mean))  # the method-of-moments r: a starting point
    lo = hi = u
    f, _ = g(u)
    if f > 0:  # the root is above u
        while f > 0:
            lo, hi = hi, hi + 1.0
            f, _ = g(hi)
            if hi > 60:  # r > 1e26: indistinguishable from the Poisson limit
                return math.exp(hi)
    else:
        while f <= 0:
            hi, lo = lo, lo - 1.0
            f, _ = g(lo)
            if lo < -60:
                return math.exp(lo)
    u = 0.5 * (lo + hi)
    for _ in range(200):
        f, df = g(u)
        if f == 0:
            break
        if f > 0:
            lo = u
        else:
            hi = u
        step = u - f / df if df < 0 else None
        u_new = step if step is not None and lo < step < hi else 0.5 * (lo + hi)
        if abs(u_new - u) < 1e-13 * max(1.0, abs(u)) or hi - lo < 1e-13 * max(1.0, abs(u)):
            u = u_new
            break
        u = u_new
    return math.exp(u)


def mean_and_stderr(values) -> tuple[float, float]:
    """The mean of per-data-point values (e.g. a baseline's ``log_likelihood``) and its standard error,
    std / sqrt(n) with the n - 1 divisor (NaN for one value): the same summary
    :func:`pyrovae.evaluation.summarize` gives a VAE's per-data-point log-likelihoods, which it calls.

    Raises:
        DataError: no values.
    """
    values = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                        dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise DataError("mean_and_stderr needs at least one value, got none")
    summary = summarize(torch.from_numpy(values))
    return summary["mean"], summary["stderr"]
