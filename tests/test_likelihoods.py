"""The likelihood plug-ins of :mod:`pyrovae.likelihoods`: log-probabilities against ``scipy.stats`` or the
written formula, shapes with particle dimensions, support checks, normalization, numerical stability, and
one ELBO step of a VAE with each."""

from __future__ import annotations

import math
import re

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from scipy import integrate, special, stats

from pyrovae import VAE
from pyrovae.components import likelihoods as L
from pyrovae.models import VAEConfig

from .test_likelihoods_counts import CASES as COUNT_CASES
from .test_likelihoods_counts import IDS as COUNT_IDS
from .test_likelihoods_counts import draw as draw_counts

# (registry name, constructor options): every shipped likelihood, and each option that changes num_params
CASES = [
    ("bernoulli", {}),
    ("continuous_bernoulli", {}),
    ("normal", {}),
    ("normal", {"scale": 0.3}),
    ("normal", {"learned_scale": True}),
    ("laplace", {}),
    ("laplace", {"scale": 2.0}),
    ("laplace", {"learned_scale": True}),
    ("beta", {}),
    ("categorical_256", {}),
    ("discretized_logistic", {}),
    ("poisson", {}),
    ("negative_binomial", {}),
    ("zero_inflated_negative_binomial", {}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in options.items()) for name, options in CASES]
PIXELS = {"categorical_256", "discretized_logistic"}


def make(name: str, options: dict, x_shape=(2, 3)):
    return L.LIKELIHOODS[name](x_shape, **options)


def draw(lik, n: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """``n`` data points in the likelihood's support: draws from it at random decoder outputs (and, for
    8-bit pixels, the two edge levels 0 and 1, whose bins absorb the tails)."""
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(n, lik.num_params, *lik.x_shape, generator=g, dtype=dtype)
    if isinstance(lik, L.DiscretizedLogistic):  # locations spread over [0, 1], log-scales around a bin width
        params[:, 0] = torch.rand(n, *lik.x_shape, generator=g, dtype=dtype) * 1.2 - 0.1
        params[:, 1] = params[:, 1] - 4
    torch.manual_seed(seed)
    x = lik(params).sample()
    if isinstance(lik, (L.Categorical256, L.DiscretizedLogistic)):
        x.view(n, -1)[:, 0], x.view(n, -1)[:, 1] = 0.0, 1.0
    return x


# --- log_prob against scipy.stats / the formula, in float64 ---------------------------------------------


def _softplus(r):
    return np.logaddexp(0.0, r)


def reference_log_prob(name: str, options: dict, raw: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log p(x | raw) per dimension, from scipy.stats or the docstring's formula; ``raw (n, P, *x_shape)``."""
    r = [raw[:, i] for i in range(raw.shape[1])]
    if name == "bernoulli":
        return stats.bernoulli.logpmf(x, special.expit(r[0]))
    if name == "continuous_bernoulli":
        lam = special.expit(r[0])
        log_c = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
        return x * np.log(lam) + (1 - x) * np.log1p(-lam) + log_c
    if name in ("normal", "laplace"):
        scale = _softplus(r[1]) + 1e-3 if options.get("learned_scale") else options.get("scale", 1.0)
        return (stats.norm if name == "normal" else stats.laplace).logpdf(x, r[0], scale)
    if name == "beta":
        return stats.beta.logpdf(x, _softplus(r[0]) + 1e-3, _softplus(r[1]) + 1e-3)
    if name == "categorical_256":
        k = np.round(x * 255).astype(int)
        return np.take_along_axis(special.log_softmax(raw, axis=1), k[:, None], axis=1)[:, 0]
    if name == "discretized_logistic":
        k = np.round(x * 255)
        loc, s = r[0], np.exp(np.maximum(r[1], -7.0))
        hi = np.where(k == 255, np.inf, (k + 1) / 256)
        lo = np.where(k == 0, -np.inf, k / 256)
        # log(F(hi) - F(lo)) in log space (the bins far from loc underflow float64), from the CDF below
        # the location and from the survival function above it
        with np.errstate(divide="ignore"):
            below = stats.logistic.logcdf(hi, loc, s) + np.log1p(
                -np.exp(stats.logistic.logcdf(lo, loc, s) - stats.logistic.logcdf(hi, loc, s)))
            above = stats.logistic.logsf(lo, loc, s) + np.log1p(
                -np.exp(stats.logistic.logsf(hi, loc, s) - stats.logistic.logsf(lo, loc, s)))
        return np.where(lo < loc, below, above)
    if name == "poisson":
        return stats.poisson.logpmf(x, _softplus(r[0]) + 1e-8)
    mu, theta = _softplus(r[0]) + 1e-8, _softplus(r[1]) + 1e-4
    nb = stats.nbinom.logpmf(x, theta, theta / (theta + mu))  # failures before theta successes
    if name == "negative_binomial":
        return nb
    assert name == "zero_inflated_negative_binomial"
    pi = special.expit(r[2])
    return np.where(x == 0, np.log(pi + (1 - pi) * np.exp(nb)), np.log1p(-pi) + nb)


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_log_prob_matches_scipy_or_the_formula_summed_over_the_event(name, options):
    lik = make(name, options)
    x = draw(lik, 16, torch.float64, seed=1)
    raw = torch.randn(16, lik.num_params, *lik.x_shape, dtype=torch.float64)
    if name == "discretized_logistic":
        raw[:, 0], raw[:, 1] = torch.rand_like(raw[:, 0]), raw[:, 1] * 2 - 4
    d = lik(raw)
    assert isinstance(d, pyro.distributions.torch_distribution.TorchDistributionMixin)  # a Pyro distribution
    got = d.log_prob(x)
    expected = reference_log_prob(name, options, raw.numpy(), x.numpy()).sum(axis=(-2, -1))
    assert got.shape == (16,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_float32_agrees_with_float64(name, options):
    lik = make(name, options)
    x = draw(lik, 16, torch.float64, seed=2)
    raw = torch.randn(16, lik.num_params, *lik.x_shape, dtype=torch.float64)
    lp64 = lik(raw).log_prob(x)
    lp32 = lik(raw.float()).log_prob(x.float())
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-4, atol=1e-4)


# --- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_shape", [(1, 4, 4), (5,)])
@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_particle_dimensions_are_batch_dimensions(name, options, x_shape):
    lik = make(name, options, x_shape)
    params = torch.randn(3, 4, lik.num_params, *x_shape)  # (K particles, batch, num_params, *x_shape)
    d = lik(params)
    assert tuple(d.batch_shape) == (3, 4) and tuple(d.event_shape) == x_shape
    x = draw(lik, 4)
    assert d.log_prob(x).shape == (3, 4)
    assert d.sample().shape == (3, 4, *x_shape)
    assert d.mean.shape == (3, 4, *x_shape) and torch.isfinite(d.mean).all()
    wider = d.expand((2, 3, 4))  # what a plate does to a site with fewer batch dimensions
    assert tuple(wider.batch_shape) == (2, 3, 4) and tuple(wider.event_shape) == x_shape
    torch.testing.assert_close(wider.log_prob(x), d.log_prob(x).expand(2, 3, 4))


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_num_params_is_what_the_decoder_is_built_with(name, options):
    lik = make(name, options, (6,))
    vae = VAE(z_dim=2, x_shape=(6,), hidden=(8,), likelihood=lik)
    assert vae.decoder(torch.zeros(2, 2)).shape == (2, lik.num_params, 6)


# --- support checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options, sampler", [(n, o, draw) for n, o in CASES] +
                         [(n, o, draw_counts) for n, o in COUNT_CASES], ids=IDS + COUNT_IDS)
def test_own_samples_pass_check_support_and_nan_or_ints_do_not(name, options, sampler):
    lik = make(name, options)
    x = sampler(lik, 32)
    lik.check_support(x)
    x[3, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        lik.check_support(x)
    x[3, 0, 1] = float("inf")
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        lik.check_support(x)
    with pytest.raises(ValueError, match=r"floating-point.*x\.float\(\)"):
        lik.check_support(torch.zeros(2, 2, 3, dtype=torch.int64))


def _with(value: float, fill: float = 0.5) -> torch.Tensor:
    x = torch.full((4, 2, 3), fill)
    x[1, 1, 1] = value
    return x


COUNT = r"non-negative integer counts .*1 values that are negative or not whole numbers.*raw counts"
OFF_GRID = r"grey levels scaled to \[0, 1\], the values k / 255.*uint8_images\.float\(\) / 255"


@pytest.mark.parametrize("name, x, message", [
    ("continuous_bernoulli", _with(1.5), r"x in \[0, 1\], got values in \[0\.5, 1\.5\]; rescale.*x / 255"),
    ("continuous_bernoulli", _with(-0.2), r"x in \[0, 1\], got values in \[-0\.2, 0\.5\]"),
    ("beta", _with(0.0), r"strictly inside \(0, 1\), got 1 exact 0s, 0 exact 1s.*"
                         r"x\.clamp\(1e-3, 1 - 1e-3\).*'continuous_bernoulli'"),
    ("beta", _with(1.0), r"got 0 exact 0s, 1 exact 1s and 0 values outside"),
    ("beta", _with(1.5), r"1 values outside \[0, 1\]"),
    ("categorical_256", _with(0.5, fill=0.0), OFF_GRID + r".*1 of them not multiples of 1/255"),
    ("categorical_256", _with(200.0, fill=3.0), r"got values in \[3, 200\].*raw 0\.\.255 pixel values: divide them"),
    ("discretized_logistic", _with(-1 / 255, fill=0.0), OFF_GRID + r".*values in \[-0\.0039"),
    ("discretized_logistic", _with(2.0, fill=7.0), r"divide them by 255"),
    ("poisson", _with(-1.0, fill=2.0), COUNT),
    ("poisson", _with(2.5, fill=2.0), COUNT),
    ("negative_binomial", _with(0.5, fill=0.0), r"NegativeBinomial likelihood needs " + COUNT),
    ("zero_inflated_negative_binomial", _with(-3.0, fill=0.0), r"ZeroInflatedNegativeBinomial.*" + COUNT),
])
def test_out_of_support_data_gets_one_clear_error(name, x, message):
    with pytest.raises(ValueError, match=message):
        make(name, {}).check_support(x)


@pytest.mark.parametrize("name", ["normal", "laplace"])
def test_real_valued_likelihoods_take_any_finite_value_but_not_infinity(name):
    lik = make(name, {})
    lik.check_support(torch.tensor([[[-1e30, 0.0, 3.5], [1e30, -2.0, 7.0]]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        lik.check_support(_with(float("inf")))


def test_grey_levels_from_uint8_pass_the_pixel_checks():
    x = torch.arange(256, dtype=torch.uint8).reshape(256, 1, 1).float() / 255
    for name in PIXELS:
        make(name, {}, (1, 1)).check_support(x)


def test_vae_check_data_uses_the_likelihood():
    vae = VAE(z_dim=2, x_shape=(6,), hidden=(8,), likelihood=L.Poisson((6,)))
    with pytest.raises(ValueError, match="non-negative integer counts"):
        vae.encode(torch.full((3, 6), 0.5))


# --- normalization and numerical stability ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PIXELS))
def test_probabilities_of_the_256_levels_sum_to_one_per_pixel(name):
    lik = make(name, {}, (3, 5))
    params = torch.randn(4, lik.num_params, 3, 5) * 3
    if name == "discretized_logistic":  # locations inside and outside [0, 1], scales from tiny to huge
        params[:, 0] = torch.rand(4, 3, 5) * 2 - 0.5
        params[:, 1] = torch.linspace(-12, 6, 60).reshape(4, 3, 5)
    base = lik(params).base_dist  # per-pixel distribution, batch shape (4, 3, 5)
    levels = (torch.arange(256.0) / 255).reshape(256, 1, 1, 1)
    log_p = base.log_prob(levels)  # (256, 4, 3, 5)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros(4, 3, 5), rtol=0, atol=1e-5)
    torch.testing.assert_close(base.mean, (log_p.exp() * levels).sum(0), rtol=1e-4, atol=1e-5)


def test_discretized_logistic_edge_bins_absorb_the_tails():
    """P(level 0) = F(1/256) and P(level 255) = 1 - F(255/256) for the logistic CDF F."""
    loc, log_scale = torch.tensor([0.3, 0.9]), torch.tensor([-3.0, -1.0])
    d = L.DiscretizedLogistic((2,))(torch.stack([loc, log_scale])).base_dist
    F = lambda y: torch.sigmoid((y - loc) / log_scale.exp())
    torch.testing.assert_close(d.log_prob(torch.zeros(2)).exp(), F(torch.tensor(1 / 256)))
    torch.testing.assert_close(d.log_prob(torch.ones(2)).exp(), 1 - F(torch.tensor(255 / 256)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_continuous_bernoulli_normalizer_near_one_half_is_log_two(dtype):
    """lambda -> 1/2 is 0/0 in C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda); its limit is 2."""
    eta = torch.linspace(-1e-4, 1e-4, 101, dtype=dtype).unsqueeze(-1).requires_grad_()
    x = torch.rand(101, 1, dtype=dtype)
    log_p = L.ContinuousBernoulli((1,))(eta.unsqueeze(-2)).log_prob(x)
    log_c = log_p + torch.nn.functional.binary_cross_entropy_with_logits(eta, x, reduction="none").squeeze(-1)
    assert torch.isfinite(log_c).all()
    torch.testing.assert_close(log_c, torch.full_like(log_c, math.log(2)), rtol=0, atol=1e-6)
    # d/d eta log p = x - sigmoid(eta) + d log C / d eta, with log C = log 2 + eta^2 / 12 + O(eta^4)
    log_p.sum().backward()
    torch.testing.assert_close(eta.grad, (x - torch.sigmoid(eta) + eta / 6).detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("eta", [-60.0, -20.0, -3.0, -0.4, -1e-4, 0.0, 1e-4, 0.09, 0.11, 0.7, 5.0, 18.0, 60.0])
def test_continuous_bernoulli_is_a_normalized_density_with_the_stated_mean(eta):
    """Integrates to 1 on [0, 1] (scipy quadrature of the float64 density), float32 agrees with float64
    even where sigmoid(eta) rounds to 1, and mean, variance and inverse CDF match the density."""
    d64 = L.ContinuousBernoulliDistribution(logits=torch.tensor(eta, dtype=torch.float64), validate_args=False)
    pdf = lambda x: math.exp(d64.log_prob(torch.tensor(x, dtype=torch.float64)).item())
    def quad(f, upper=1.0):
        points = [p for p in (1e-3, 1e-2, 0.1, 0.9, 0.99, 0.999) if p < upper]
        return integrate.quad(f, 0, upper, points=points, limit=200)[0]

    assert quad(pdf) == pytest.approx(1.0, abs=1e-8)
    mean = quad(lambda x: x * pdf(x))
    var = quad(lambda x: (x - mean) ** 2 * pdf(x))
    d32 = L.ContinuousBernoulliDistribution(logits=torch.tensor(eta), validate_args=False)
    xs = torch.linspace(0, 1, 11)
    torch.testing.assert_close(d32.log_prob(xs).double(), d64.log_prob(xs.double()), rtol=1e-6, atol=1e-5)
    assert d32.mean.item() == pytest.approx(mean, rel=1e-5)
    assert d32.variance.item() == pytest.approx(var, rel=1e-4)
    u = torch.tensor([1e-3, 0.2, 0.5, 0.8, 0.999], dtype=torch.float64)
    q = d64.icdf(u)
    assert [quad(pdf, qi) for qi in q.tolist()] == pytest.approx(u.tolist(), abs=1e-6)


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_log_prob_and_gradients_stay_finite_at_extreme_decoder_outputs(name, options):
    lik = make(name, options)
    x = draw(lik, 8, seed=3)
    params = (torch.rand(8, lik.num_params, *lik.x_shape) * 60 - 30).requires_grad_()
    log_p = lik(params).log_prob(x)
    assert torch.isfinite(log_p).all()
    log_p.sum().backward()
    assert torch.isfinite(params.grad).all()


# --- the VAE with each likelihood -----------------------------------------------------------------------


@pytest.mark.parametrize("x_shape", [(1, 4, 4), (6,)])
@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_vae_elbo_is_finite_with_gradients_for_every_parameter(name, options, x_shape):
    lik = make(name, options, x_shape)
    x = draw(lik, 8)
    vae = VAE(z_dim=2, x_shape=x_shape, hidden=(16,), likelihood=lik)
    vae.check_data(x)
    loss = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
    loss.backward()
    for p in vae.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert vae.decoder.output_layer.weight.grad.abs().sum() > 0
    samples = vae.sample(3)
    assert samples.shape == (3, *x_shape) and torch.isfinite(samples).all()


@pytest.mark.parametrize("name, options", [c for c in CASES if hasattr(L.LIKELIHOODS[c[0]], "init_bias")
                                           and c[0] != "discretized_logistic"], ids=lambda v: str(v))
def test_init_bias_makes_the_decoded_mean_the_data_mean(name, options):
    lik = make(name, options, (6,))
    x = draw(lik, 500)
    if name == "bernoulli":
        x[0] = 1.0 - x[0]  # no dimension all 0 or all 1 (the bias is clamped there)
    vae = VAE(z_dim=2, x_shape=(6,), hidden=(8,), likelihood=lik)
    with torch.no_grad():
        vae.decoder.output_layer.weight.zero_()
    lik.init_bias(vae.decoder.output_layer, x)
    d = vae.decode(torch.randn(4, 2))
    torch.testing.assert_close(d.mean, x.mean(0).expand(4, 6), rtol=1e-4, atol=1e-5)
    if name == "normal" and options.get("learned_scale"):
        torch.testing.assert_close(d.stddev, x.std(0).expand(4, 6), rtol=1e-4, atol=1e-5)


# --- the registry and the documented example -----------------------------------------------------------


def test_registry_names_are_snake_case_and_build_models_by_name():
    assert set(L.LIKELIHOODS.values()) >= {L.Bernoulli, L.ContinuousBernoulli, L.Normal, L.Laplace, L.Beta,
                                           L.Categorical256, L.DiscretizedLogistic, L.Poisson,
                                           L.NegativeBinomial, L.ZeroInflatedNegativeBinomial}
    for name, cls in L.LIKELIHOODS.items():
        assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", name)
        options = {"schema": [{"type": "real", "columns": 6}]} if name == "mixed" else {}  # it needs the table's types
        lik = cls((6,), **options)
        assert isinstance(lik, torch.nn.Module) and lik.num_params >= 1 and callable(lik.check_support)
        vae = VAE.from_config(VAEConfig(likelihood=name, likelihood_options=options, x_shape=(6,), hidden=(8,),
                                        z_dim=2))
        assert type(vae.likelihood) is cls


@pytest.mark.parametrize("name, bad", [("normal", {"scale": 0.0}), ("laplace", {"scale": -1.0}),
                                       ("normal", {"learned_scale": True, "min_scale": 0.0}),
                                       ("beta", {"min_concentration": 0.0})])
def test_nonpositive_scale_options_are_refused(name, bad):
    with pytest.raises(ValueError, match="must be positive"):
        make(name, bad)


def test_the_module_docstring_example_runs():
    code = re.search(r"Example, a likelihood of your own.*?::\n\n(.*?)\n\n[A-Z]", L.__doc__, re.S).group(1)
    namespace = {"VAE": VAE}
    exec(compile("\n".join(line[4:] for line in code.splitlines()), "likelihoods-docstring", "exec"), namespace)
    vae = namespace["vae"]
    x = torch.randn(5, 30)
    vae.check_data(x)
    loss = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
