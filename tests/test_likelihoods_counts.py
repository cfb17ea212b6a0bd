"""The likelihood plug-ins for integer data and heavy tails, :class:`~pyrovae.components.likelihoods.Binomial`,
:class:`~pyrovae.components.likelihoods.Categorical` and :class:`~pyrovae.components.likelihoods.StudentT`:
log-probabilities against ``scipy.stats`` or a hand-computed log softmax, shapes with particle dimensions,
support checks, means, ``init_bias``, an ELBO of a small VAE with each, building them by name; and the
``support`` attribute of every likelihood class."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from scipy import special, stats

from pyrovae import VAE
from pyrovae.components import likelihoods as L
from pyrovae.components.plugins import build_plugin
from pyrovae.errors import ConfigError
from pyrovae.models import VAEConfig

# (registry name, constructor options)
CASES = [
    ("binomial", {}),
    ("binomial", {"total_count": 5}),
    ("categorical", {}),
    ("categorical", {"num_levels": 4}),
    ("student_t", {}),
    ("student_t", {"df": 1.5, "scale": 0.4}),
    ("student_t", {"learned_scale": True}),
    ("student_t", {"df": 1.0, "learned_scale": True, "min_scale": 0.01}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in options.items()) for name, options in CASES]


def make(name: str, options: dict, x_shape=(2, 3)):
    return L.LIKELIHOODS[name](x_shape, **options)


def draw(lik, n: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """``n`` data points in the likelihood's support, drawn from it at random decoder outputs; for the
    integer likelihoods the two end values (0 and the largest) are put in the first two dimensions."""
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(n, lik.num_params, *lik.x_shape, generator=g, dtype=dtype)
    torch.manual_seed(seed)
    x = lik(params).sample()
    top = {"bounded_counts": getattr(lik, "total_count", None), "levels": getattr(lik, "num_levels", 0) - 1}
    if lik.support in top:
        x.view(n, -1)[:, 0], x.view(n, -1)[:, 1] = 0.0, float(top[lik.support])
    return x


def _softplus(r):
    return np.logaddexp(0.0, r)


def reference_log_prob(name: str, options: dict, raw: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log p(x | raw) per dimension from scipy.stats, or the log softmax by hand; ``raw (n, P, *x_shape)``."""
    if name == "binomial":
        return stats.binom.logpmf(x, options.get("total_count", 16), special.expit(raw[:, 0]))
    if name == "categorical":
        log_softmax = raw - special.logsumexp(raw, axis=1, keepdims=True)
        return np.take_along_axis(log_softmax, x.astype(int)[:, None], axis=1)[:, 0]
    assert name == "student_t"
    if options.get("learned_scale"):
        scale = _softplus(raw[:, 1]) + options.get("min_scale", 1e-3)
    else:
        scale = options.get("scale", 1.0)
    return stats.t.logpdf(x, options.get("df", 4.0), loc=raw[:, 0], scale=scale)


# --- log_prob against scipy.stats / the log softmax, in float64 ------------------------------------------


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_log_prob_matches_scipy_or_the_log_softmax_summed_over_the_event(name, options):
    lik = make(name, options)
    x = draw(lik, 16, torch.float64, seed=1)
    raw = torch.randn(16, lik.num_params, *lik.x_shape, dtype=torch.float64) * 2
    d = lik(raw)
    assert isinstance(d, pyro.distributions.torch_distribution.TorchDistributionMixin)
    got = d.log_prob(x)
    expected = reference_log_prob(name, options, raw.numpy(), x.numpy()).sum(axis=(-2, -1))
    assert got.shape == (16,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_binomial_log_prob_by_hand_at_one_point():
    """x = 3 of n = 5 at logit 0 (p = 1/2): log C(5, 3) + 5 log(1/2) = log(10 / 32)."""
    d = L.Binomial((1,), total_count=5)(torch.zeros(1, 1, 1))
    torch.testing.assert_close(d.log_prob(torch.tensor([[3.0]])), torch.tensor([math.log(10 / 32)]))


def test_categorical_log_prob_rounds_float_levels_instead_of_truncating():
    lik = L.Categorical((3,), num_levels=5)
    params = torch.randn(2, 5, 3)
    x = torch.tensor([[0.0, 2.0, 4.0], [1.0, 3.0, 4.0]])
    nudged = x + torch.tensor([[1e-6, -1e-6, -1e-6], [-1e-6, -1e-6, 1e-6]])  # 2 - 1e-6 must stay level 2
    torch.testing.assert_close(lik(params).log_prob(nudged), lik(params).log_prob(x))


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_float32_agrees_with_float64(name, options):
    lik = make(name, options)
    x = draw(lik, 16, torch.float64, seed=2)
    raw = torch.randn(16, lik.num_params, *lik.x_shape, dtype=torch.float64)
    torch.testing.assert_close(lik(raw.float()).log_prob(x.float()).double(), lik(raw).log_prob(x),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_log_prob_and_gradients_stay_finite_at_extreme_decoder_outputs(name, options):
    lik = make(name, options)
    x = draw(lik, 8, seed=3)
    params = (torch.rand(8, lik.num_params, *lik.x_shape) * 60 - 30).requires_grad_()
    log_p = lik(params).log_prob(x)
    assert torch.isfinite(log_p).all()
    log_p.sum().backward()
    assert torch.isfinite(params.grad).all()


# --- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_shape", [(3,), (1, 4, 4)])
@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_particle_dimensions_are_batch_dimensions(name, options, x_shape):
    lik = make(name, options, x_shape)
    params = torch.randn(3, 4, lik.num_params, *x_shape)  # (K particles, batch, num_params, *x_shape)
    d = lik(params)
    assert tuple(d.batch_shape) == (3, 4) and tuple(d.event_shape) == x_shape
    x = draw(lik, 4)
    assert d.log_prob(x).shape == (3, 4)
    sample = d.sample()
    assert sample.shape == (3, 4, *x_shape) and sample.dtype == params.dtype
    lik.check_support(sample)
    assert d.mean.shape == (3, 4, *x_shape) and torch.isfinite(d.mean).all()
    wider = d.expand((2, 3, 4))  # what a plate does to a site with fewer batch dimensions
    assert tuple(wider.batch_shape) == (2, 3, 4) and tuple(wider.event_shape) == x_shape
    torch.testing.assert_close(wider.log_prob(x), d.log_prob(x).expand(2, 3, 4))


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_num_params_is_what_the_decoder_is_built_with(name, options):
    lik = make(name, options, (5,))
    vae = VAE(z_dim=2, x_shape=(5,), hidden=(8,), likelihood=lik)
    assert vae.decoder(torch.zeros(2, 2)).shape == (2, lik.num_params, 5)
    assert lik.num_params == {"binomial": 1, "categorical": options.get("num_levels", 17),
                              "student_t": 2 if options.get("learned_scale") else 1}[name]


# --- means ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_shape", [(3,), (1, 4, 4)])
def test_categorical_mean_and_variance_are_those_of_the_level(x_shape):
    k = 6
    params = torch.randn(2, 5, k, *x_shape, dtype=torch.float64) * 2
    d = L.Categorical(x_shape, num_levels=k)(params)
    probs = torch.softmax(params, dim=2)
    levels = torch.arange(k, dtype=torch.float64).reshape(k, *[1] * len(x_shape))
    expected = (probs * levels).sum(2)
    torch.testing.assert_close(d.mean, expected)
    torch.testing.assert_close(d.variance, (probs * levels ** 2).sum(2) - expected ** 2)
    # the probabilities of the K levels sum to one per dimension, and their mean is the same
    base = d.base_dist
    log_p = base.log_prob(levels.unsqueeze(1).unsqueeze(1).expand(k, 2, 5, *x_shape))
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros(2, 5, *x_shape, dtype=torch.float64))
    torch.testing.assert_close((log_p.exp() * levels.unsqueeze(1).unsqueeze(1)).sum(0), expected)
    assert base.enumerate_support().dtype == torch.float64


def test_binomial_mean_is_n_p_and_student_t_mean_is_the_location_for_any_df():
    logits = torch.randn(4, 1, 3)
    torch.testing.assert_close(L.Binomial((3,), total_count=7)(logits).mean, 7 * torch.sigmoid(logits[:, 0]))
    for df in (0.5, 1.0, 4.0):
        loc = torch.randn(4, 1, 3)
        assert torch.equal(L.StudentT((3,), df=df)(loc).mean, loc[:, 0])


def test_vae_reconstructions_and_samples_are_in_range_with_the_integer_likelihoods():
    for lik, top in [(L.Binomial((5,), total_count=16), 16), (L.Categorical((5,), num_levels=17), 16)]:
        vae = VAE(z_dim=2, x_shape=(5,), hidden=(8,), likelihood=lik)
        x = draw(lik, 6)
        for out in (vae.reconstruct(x), vae.sample(4)):
            assert torch.isfinite(out).all() and (out >= 0).all() and (out <= top).all()


# --- support checks -----------------------------------------------------------------------------------


def _with(value: float, fill: float = 2.0) -> torch.Tensor:
    x = torch.full((4, 2, 3), fill)
    x[1, 1, 1] = value
    return x


@pytest.mark.parametrize("name, options, x, message", [
    ("binomial", {}, _with(2.5), r"Binomial likelihood needs whole numbers 0, 1, \.\.\., 16 \(as floats\), got 1 "
                                 r"values that are not whole numbers and 0 outside \[0, 16\].*raw counts"),
    ("binomial", {}, _with(-1.0), r"got 0 values that are not whole numbers and 1 outside \[0, 16\] "
                                  r"\(values in \[-1, 2\]\).*'poisson' or 'negative_binomial'"),
    ("binomial", {"total_count": 5}, _with(9.0),
     r"0, 1, \.\.\., 5 .*1 outside \[0, 5\].*set total_count=9 \(or more\)"),
    ("binomial", {}, _with(0.25, fill=0.5),
     r"24 values that are not whole numbers.*scaled to \[0, 1\]: pass the unscaled whole numbers$"),
    ("categorical", {}, _with(16.5), r"Categorical likelihood needs whole numbers 0, 1, \.\.\., 16 .*1 values that "
                                     r"are not whole numbers.*integer levels"),
    ("categorical", {}, _with(17.0), r"1 outside \[0, 16\] \(values in \[2, 17\]\).*set num_levels=18 \(or more\)"),
    ("categorical", {"num_levels": 4}, _with(-2.0, fill=0.0), r"0, 1, \.\.\., 3 .*1 outside \[0, 3\].*'normal'"),
])
def test_out_of_support_data_gets_one_clear_error(name, options, x, message):
    with pytest.raises(ValueError, match=message):
        make(name, options).check_support(x)


def test_end_values_are_in_the_support_and_one_past_them_is_not():
    L.Binomial((2,), total_count=16).check_support(torch.tensor([[0.0, 16.0]]))
    L.Categorical((2,), num_levels=17).check_support(torch.tensor([[0.0, 16.0]]))
    with pytest.raises(ValueError, match="total_count=17"):
        L.Binomial((2,), total_count=16).check_support(torch.tensor([[0.0, 17.0]]))
    with pytest.raises(ValueError, match="num_levels=18"):
        L.Categorical((2,), num_levels=17).check_support(torch.tensor([[0.0, 17.0]]))


def test_student_t_takes_any_finite_value():
    L.StudentT((3,)).check_support(torch.tensor([[-1e30, 0.5, 3.25], [1e30, -2.0, 7.0]]))


def test_vae_check_data_uses_the_likelihood():
    vae = VAE(z_dim=2, x_shape=(5,), hidden=(8,), likelihood=L.Binomial((5,), total_count=16))
    with pytest.raises(ValueError, match="whole numbers 0, 1, ..., 16"):
        vae.encode(torch.full((3, 5), 0.5))


# --- options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, bad, message", [
    ("binomial", {"total_count": 0}, "total_count must be a whole number of at least 1, got 0"),
    ("binomial", {"total_count": 2.5}, "total_count must be a whole number"),
    ("binomial", {"total_count": True}, "total_count must be a whole number"),
    ("binomial", {"total_count": "16"}, "total_count must be a whole number"),
    ("categorical", {"num_levels": 1}, "num_levels must be a whole number of at least 2, got 1"),
    ("categorical", {"num_levels": float("nan")}, "num_levels must be a whole number"),
    ("student_t", {"df": 0.0}, r"df \(the degrees of freedom\) must be positive and finite, got 0\.0"),
    ("student_t", {"df": -3}, "must be positive and finite"),
    ("student_t", {"df": float("inf")}, "must be positive and finite"),
    ("student_t", {"df": float("nan")}, "must be positive and finite"),
    ("student_t", {"scale": 0.0}, "scale must be positive"),
    ("student_t", {"learned_scale": True, "min_scale": -1.0}, "min_scale must be positive"),
])
def test_bad_options_are_refused_with_a_config_error(name, bad, message):
    with pytest.raises(ConfigError, match=message):
        make(name, bad)


def test_whole_number_floats_are_accepted_as_counts_and_levels():
    assert L.Binomial((3,), total_count=16.0).total_count == 16
    assert L.Categorical((3,), num_levels=np.int64(5)).num_params == 5


# --- init_bias ------------------------------------------------------------------------------------------


def _zero_weight_vae(lik, x_shape=(5,)):
    vae = VAE(z_dim=2, x_shape=x_shape, hidden=(8,), likelihood=lik)
    with torch.no_grad():
        vae.decoder.output_layer.weight.zero_()
    return vae


def test_binomial_init_bias_makes_the_decoded_mean_the_data_mean():
    lik = L.Binomial((5,), total_count=16)
    x = lik(torch.randn(500, 1, 5)).sample()  # no constant dimension (whose bias is clamped)
    vae = _zero_weight_vae(lik)
    lik.init_bias(vae.decoder.output_layer, x)
    torch.testing.assert_close(vae.decode(torch.randn(4, 2)).mean, x.mean(0).expand(4, 5), rtol=1e-4, atol=1e-4)


def test_binomial_init_bias_clamps_constant_dimensions_away_from_zero_and_one():
    lik = L.Binomial((2,), total_count=4)
    x = torch.tensor([[0.0, 4.0]] * 10)
    vae = _zero_weight_vae(lik, (2,))
    lik.init_bias(vae.decoder.output_layer, x)
    probs = vae.decode(torch.zeros(1, 2)).mean / 4
    torch.testing.assert_close(probs, torch.tensor([[1e-3, 1 - 1e-3]]))


def test_categorical_init_bias_sets_the_smoothed_level_frequencies_per_dimension():
    k = 5
    lik = L.Categorical((3,), num_levels=k)
    x = draw(lik, 200)
    vae = _zero_weight_vae(lik, (3,))
    lik.init_bias(vae.decoder.output_layer, x)
    d = vae.decode(torch.randn(4, 2)).base_dist
    counts = torch.stack([(x == level).sum(0) for level in range(k)], -1).float()  # (3, k)
    freq = (counts + 0.5) / (200 + 0.5 * k)
    torch.testing.assert_close(d.probs, freq.expand(4, 3, k), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d.mean, (freq * torch.arange(float(k))).sum(-1).expand(4, 3),
                               rtol=1e-4, atol=1e-5)


def test_categorical_init_bias_pools_the_frequencies_per_channel_for_a_per_channel_bias():
    k, x_shape = 3, (2, 2, 2)
    lik = L.Categorical(x_shape, num_levels=k)
    x = torch.zeros(10, *x_shape)
    x[:, 1] = 2.0  # channel 0 all level 0, channel 1 all level 2
    layer = torch.nn.Linear(4, k * 2)  # one bias per (level, channel), as a conv decoder's last layer has
    lik.init_bias(layer, x)
    probs = torch.softmax(layer.bias.detach().view(k, 2), 0)
    expected = (torch.tensor([[40.0, 0.0], [0.0, 0.0], [0.0, 40.0]]) + 0.5) / (40 + 0.5 * k)
    torch.testing.assert_close(probs, expected)


def test_student_t_init_bias_matches_the_data_mean_and_standard_deviation():
    lik = L.StudentT((5,), df=5.0, learned_scale=True)
    x = torch.randn(400, 5) * torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0]) + torch.arange(5.0)
    vae = _zero_weight_vae(lik)
    lik.init_bias(vae.decoder.output_layer, x)
    d = vae.decode(torch.randn(4, 2))
    torch.testing.assert_close(d.mean, x.mean(0).expand(4, 5), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(d.stddev, x.std(0).expand(4, 5), rtol=1e-4, atol=1e-5)


# --- the VAE with each likelihood, and building them by name --------------------------------------------


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_vae_elbo_is_finite_with_gradients_for_every_parameter(name, options):
    lik = make(name, options, (5,))
    x = draw(lik, 8)
    vae = VAE(z_dim=2, x_shape=(5,), hidden=(16,), likelihood=lik)
    vae.check_data(x)
    pyro.set_rng_seed(0)
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    for p in vae.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    samples = vae.sample(3)
    assert samples.shape == (3, 5) and torch.isfinite(samples).all()


def test_vae_elbo_of_binomial_counts_like_the_digits():
    """The brief's case: random counts 0..16, five pixels, the default network."""
    x = torch.randint(0, 17, (10, 5)).float()
    for lik in (L.Binomial((5,), total_count=16), L.Categorical((5,), num_levels=17)):
        vae = VAE(z_dim=2, x_shape=(5,), likelihood=lik)
        vae.check_data(x)
        assert torch.isfinite(Trace_ELBO().differentiable_loss(vae.model, vae.guide, x))


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_build_plugin_by_name_with_options(name, options):
    lik = build_plugin("likelihood", name, (5,), options)
    assert type(lik) is L.LIKELIHOODS[name] and lik.x_shape == (5,)
    for key, value in options.items():
        assert getattr(lik, key) == value
    vae = VAE.from_config(VAEConfig(likelihood=name, likelihood_options=options, x_shape=(5,), hidden=(8,), z_dim=2))
    assert type(vae.likelihood) is L.LIKELIHOODS[name]


@pytest.mark.parametrize("name", ["binomial", "categorical", "student_t"])
def test_build_plugin_refuses_an_unknown_option(name):
    with pytest.raises(ConfigError, match=r"has no option 'levels'"):
        build_plugin("likelihood", name, (5,), {"levels": 3})


def test_build_plugin_turns_a_bad_option_value_into_a_config_error():
    with pytest.raises(ConfigError, match="total_count"):
        build_plugin("likelihood", "binomial", (5,), {"total_count": -1})


# --- the support attribute of every likelihood ----------------------------------------------------------

#: Whether a tensor of data lies in each support (what SUPPORT_DESCRIPTIONS says in words).
IN_SUPPORT = {
    "binary": lambda x, lik: ((x == 0) | (x == 1)).all(),
    "unit_interval": lambda x, lik: ((x >= 0) & (x <= 1)).all(),
    "open_unit_interval": lambda x, lik: ((x > 0) & (x < 1)).all(),
    "grey_levels": lambda x, lik: ((x >= 0) & (x <= 1)).all() and ((x * 255 - (x * 255).round()).abs() < 1e-3).all(),
    "real": lambda x, lik: torch.isfinite(x).all(),
    "counts": lambda x, lik: ((x >= 0) & (x == x.round())).all(),
    "bounded_counts": lambda x, lik: ((x >= 0) & (x <= lik.total_count) & (x == x.round())).all(),
    "levels": lambda x, lik: ((x >= 0) & (x <= lik.num_levels - 1) & (x == x.round())).all(),
    "mixed": lambda x, lik: all(IN_SUPPORT[{"real": "real", "positive": "real", "count": "counts", "binary": "binary",
                                            "categorical": "levels", "ordinal": "levels"}[c["type"]]](
        x[..., j], type("Levels", (), {"num_levels": c.get("num_classes")})) and (c["type"] != "positive" or
                                                                                  (x[..., j] > 0).all())
        for j, c in enumerate(lik.schema)),
}

EXPECTED_SUPPORT = {
    "bernoulli": "binary", "continuous_bernoulli": "unit_interval", "normal": "real", "laplace": "real",
    "student_t": "real", "beta": "open_unit_interval", "categorical_256": "grey_levels",
    "discretized_logistic": "grey_levels", "categorical": "levels", "poisson": "counts",
    "negative_binomial": "counts", "zero_inflated_negative_binomial": "counts", "binomial": "bounded_counts",
    "mixed": "mixed",
}


def test_support_descriptions_cover_the_nine_supports():
    assert set(L.SUPPORT_DESCRIPTIONS) == set(IN_SUPPORT)
    assert all(isinstance(v, str) and v for v in L.SUPPORT_DESCRIPTIONS.values())


def test_every_likelihood_class_in_the_module_names_its_support():
    from pyrovae.components import mixed
    classes = [cls for module in (L, mixed) for _, cls in inspect.getmembers(module, inspect.isclass)
               if issubclass(cls, torch.nn.Module) and cls.__module__ == module.__name__
               and not cls.__name__.startswith("_")]
    assert set(L.LIKELIHOODS.values()) <= set(classes)
    for cls in classes:
        assert isinstance(cls.support, str) and cls.support in L.SUPPORT_DESCRIPTIONS, cls
    assert {name: cls.support for name, cls in L.LIKELIHOODS.items()} == EXPECTED_SUPPORT


MIXED_SCHEMA = [{"type": "real"}, {"type": "positive"}, {"type": "count"}, {"type": "binary"},
                {"type": "categorical", "num_classes": 3}, {"type": "ordinal", "num_classes": 4}]


@pytest.mark.parametrize("name", sorted(EXPECTED_SUPPORT))
def test_the_support_is_truthful_samples_lie_in_it_and_check_support_agrees(name):
    if name == "mixed":  # a table's columns, one type each (it needs its schema)
        lik = L.LIKELIHOODS[name]((6,), schema=MIXED_SCHEMA)
        x = lik(torch.randn(64, lik.num_params, 6)).sample()
        assert IN_SUPPORT["mixed"](x, lik)
        lik.check_support(x)
        for j, bad in ((2, 0.5), (3, 2.0), (4, 3.0), (5, -1.0)):
            y = x.clone()
            y[0, j] = bad
            assert not IN_SUPPORT["mixed"](y, lik)
            with pytest.raises(ValueError, match=f"column 'column {j}'"):
                lik.check_support(y)
        return
    lik = L.LIKELIHOODS[name]((2, 3))
    x = lik(torch.randn(64, lik.num_params, 2, 3)).sample()
    assert IN_SUPPORT[lik.support](x, lik)
    lik.check_support(x)
    # a value outside the support (where the support is not all of the reals) is refused
    outside = {"binary": 0.5, "unit_interval": 1.5, "open_unit_interval": 1.0, "grey_levels": 0.5 / 255,
               "counts": 0.5, "bounded_counts": 17.0, "levels": 17.0}.get(lik.support)
    if outside is not None:
        x[0, 0, 0] = outside
        assert not IN_SUPPORT[lik.support](x, lik)
        with pytest.raises(ValueError):
            lik.check_support(x)
