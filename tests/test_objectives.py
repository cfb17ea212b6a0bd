"""Objectives beyond the ELBO: the IWAE bound (Burda et al. 2016) and free bits (Kingma et al. 2016)."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.distributions import kl_divergence

from pyrovae import VAE
from pyrovae.app.cli import build_parser, main, run_config
from pyrovae.components.guides import LowRankNormal
from pyrovae.components.priors import MixtureOfGaussians
from pyrovae.errors import ConfigError, UnsupportedError
from pyrovae.evaluation import log_likelihood
from pyrovae.inference import ELBO, kl_weight
from pyrovae.inference.objectives import (IWAE, FreeBitsELBO, NoClosedFormKLError, NotFactorizedError, free_bits_kl,
                                          kl_per_dim, make_elbo)
from pyrovae.models import VAEConfig
from pyrovae.training import RunConfig, TrainerConfig, fit

from .conftest import LinearDecoder, NormalLikelihood, logmeanexp, ppca, random_binary_data


def seeded(seed, fn, *args, beta: float = 1.0, **kwargs):
    """``fn(*args, **kwargs)`` after seeding, with the latent sites weighed by ``beta`` (``kl_weight``)."""
    pyro.set_rng_seed(seed)
    with kl_weight(beta):
        return fn(*args, **kwargs)


def direct_log_weights(vae, x, num_particles, weight=1.0):
    """log p(x|z) + weight (log p(z) - log q(z|x)) from the VAE's parts, without Pyro's traces:
    ``(num_particles, batch)``; the same draws as a Pyro trace under the same seed."""
    q = vae.guide_family(vae.encoder(x))
    z = q.rsample((num_particles,))
    return vae.likelihood(vae.decoder(z)).log_prob(x) + weight * (vae.prior().log_prob(z) - q.log_prob(z))


def renyi(num_particles):
    return RenyiELBO(alpha=0, num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)


# --- the ELBO with its terms ------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("analytic_kl, pyros", [(True, TraceMeanField_ELBO), (False, Trace_ELBO)])
def test_elbo_equals_pyros_elbo_draw_for_draw_and_its_terms_add_up(analytic_kl, pyros, num_particles, beta):
    vae, x, _ = ppca(shift=0.5, scale_factor=1.5)
    ours = seeded(11, ELBO(num_particles, analytic_kl).loss_terms, vae.model, vae.guide, x, num_data=640, beta=beta)
    ours["loss"].backward()
    grads = {name: p.grad.clone() for name, p in vae.named_parameters()}
    vae.zero_grad()
    pyro_elbo = pyros(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
    theirs = seeded(11, pyro_elbo.differentiable_loss, vae.model, vae.guide, x, num_data=640, beta=beta)
    theirs.backward()
    torch.testing.assert_close(ours["loss"], theirs)
    for name, p in vae.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)
    torch.testing.assert_close(ours["objective"], -ours["loss"])
    torch.testing.assert_close(ours["objective"], ours["reconstruction"] - beta * ours["kl"])
    torch.testing.assert_close(ours["elbo"], ours["reconstruction"] - ours["kl"])
    assert ours["kl"] > 0


def test_elbo_kl_term_is_the_closed_form_kl_scaled_to_the_data_set():
    vae, x, _ = ppca(shift=0.5, scale_factor=1.5)
    terms = ELBO().loss_terms(vae.model, vae.guide, x, num_data=10 * x.shape[0])
    q = vae.guide_family(vae.encoder(x))
    torch.testing.assert_close(terms["kl"], 10 * kl_divergence(q, vae.prior().expand(q.batch_shape)).sum())


# --- IWAE -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"num_data": 640, "beta": 0.3}])
def test_iwae_bound_equals_the_elbo_estimate_at_one_particle(kwargs):
    vae, x, _ = ppca(shift=0.5, scale_factor=1.5)
    iwae = seeded(1, IWAE(1).differentiable_loss, vae.model, vae.guide, x, **kwargs)
    elbo = seeded(1, Trace_ELBO().differentiable_loss, vae.model, vae.guide, x, **kwargs)
    torch.testing.assert_close(iwae, elbo)


def test_iwae_bound_is_the_per_data_point_logmeanexp_of_the_importance_weights():
    vae, x, _ = ppca(shift=0.5, scale_factor=1.5)
    bound = seeded(2, IWAE(7).bound, vae.model, vae.guide, x)
    log_w = seeded(2, direct_log_weights, vae, x, 7)
    assert bound.shape == (x.shape[0],)
    torch.testing.assert_close(bound, logmeanexp(log_w, 0))
    torch.testing.assert_close(seeded(2, IWAE(7).loss, vae.model, vae.guide, x), -bound.sum().item())


def test_iwae_bound_grows_with_num_particles_towards_log_px():
    vae, x, exact = ppca(shift=0.5, scale_factor=1.5)  # a deliberately wrong guide: gaps of nats
    gaps, stderrs = {}, {}
    with torch.no_grad():
        for k in (1, 5, 50, 500):
            per_seed = torch.stack([seeded(s, IWAE(k).bound, vae.model, vae.guide, x).mean() for s in range(20)])
            gaps[k] = (exact.mean() - per_seed.mean()).item()
            stderrs[k] = per_seed.std().item() / math.sqrt(20)
    for small, large in ((1, 5), (5, 50), (50, 500)):
        # non-decreasing bound (strictly here, as the guide is wrong), beyond Monte Carlo error
        assert gaps[small] - gaps[large] > 3 * math.hypot(stderrs[small], stderrs[large])
    assert gaps[500] > -3 * stderrs[500]  # still below log p(x), within Monte Carlo error
    assert gaps[500] < 0.1 * gaps[5]  # and approaching it


@pytest.mark.parametrize("num_particles", [1, 5, 50])
def test_iwae_bound_is_log_px_for_every_num_particles_with_the_exact_posterior(num_particles):
    vae, x, exact = ppca()  # the guide is the exact posterior: every importance weight equals p(x)
    bound = IWAE(num_particles).bound(vae.model, vae.guide, x)
    torch.testing.assert_close(bound, exact, rtol=0, atol=1e-3)


def test_iwae_weighs_the_latent_log_densities_by_beta_inside_each_weight():
    vae, x, _ = ppca(shift=0.5, scale_factor=1.5)
    bound = seeded(3, IWAE(6).bound, vae.model, vae.guide, x, beta=0.3)
    torch.testing.assert_close(bound, logmeanexp(seeded(3, direct_log_weights, vae, x, 6, weight=0.3), 0))


def test_iwae_scales_the_bound_by_num_data_over_batch_outside_the_logsumexp():
    vae, x, _ = ppca(shift=0.5, scale_factor=1.5)
    full = seeded(4, IWAE(5).differentiable_loss, vae.model, vae.guide, x)
    minibatch = seeded(4, IWAE(5).differentiable_loss, vae.model, vae.guide, x, num_data=10 * x.shape[0])
    torch.testing.assert_close(minibatch, 10 * full)


def test_renyi_elbo_alpha_zero_is_per_data_point_on_a_full_batch():
    """Pyro's RenyiELBO(alpha=0) with the VAE's layout (every site in the data plate) takes its
    log-sum-exp per data point, as IWAE does: same draws, same value, and not the bound of the whole
    batch's joint weight prod_n w_kn."""
    vae, x, _ = ppca(shift=0.5, scale_factor=1.5)
    x = x[:8]
    ours = seeded(5, IWAE(5).loss, vae.model, vae.guide, x)
    pyros = seeded(5, renyi(5).loss, vae.model, vae.guide, x)
    log_w = seeded(5, direct_log_weights, vae, x, 5)
    assert ours == pytest.approx(pyros, rel=1e-6)
    assert ours == pytest.approx(-logmeanexp(log_w, 0).sum().item(), rel=1e-6)
    joint = -logmeanexp(log_w.sum(1), 0).item()
    assert abs(joint - ours) > 1.0


def test_renyi_elbo_alpha_zero_puts_the_mini_batch_scale_inside_the_weights():
    """Why :class:`IWAE` is our own: with a subsampled data plate Pyro's estimator raises each weight
    to the power num_data / batch before the log-sum-exp, instead of scaling the bound after it."""
    vae, x, _ = ppca(shift=0.5, scale_factor=1.5)
    x = x[:8]
    full = seeded(6, renyi(5).loss, vae.model, vae.guide, x)
    minibatch = seeded(6, renyi(5).loss, vae.model, vae.guide, x, num_data=80)
    assert abs(minibatch - 10 * full) > 1.0
    assert seeded(6, IWAE(5).loss, vae.model, vae.guide, x, num_data=80) == pytest.approx(10 * full, rel=1e-5)


def test_iwae_gradient_is_renyi_elbos_importance_weighted_gradient(small_vae):
    x = random_binary_data(16)[0].images[:8]
    seeded(7, IWAE(5).differentiable_loss, small_vae.model, small_vae.guide, x).backward()
    ours = {name: p.grad.clone() for name, p in small_vae.named_parameters()}
    small_vae.zero_grad()

    def registered(fn):  # RenyiELBO backpropagates only when the traces hold param sites
        def wrapped(*args):
            pyro.module("vae", small_vae)
            return fn(*args)
        return wrapped

    try:
        seeded(7, renyi(5).loss_and_grads, registered(small_vae.model), registered(small_vae.guide), x)
    finally:
        pyro.clear_param_store()
    for name, p in small_vae.named_parameters():
        assert ours[name].abs().sum() > 0, name
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_the_evaluators_log_likelihood_is_the_iwae_bound_of_the_same_draws():
    """One estimator: log_likelihood with K samples in one pass is IWAE's L_K, draw for draw."""
    vae, x, _ = ppca(shift=0.5, scale_factor=1.5)
    with torch.no_grad():
        bound = seeded(8, IWAE(9).bound, vae.model, vae.guide, x)
    out = seeded(8, log_likelihood, vae.model, vae.guide, x, num_samples=9, max_chunk=9 * x.shape[0], progress=False)
    torch.testing.assert_close(out["log_likelihood"], bound)


def _discrete_model(x):
    with pyro.plate("data", x.shape[0], dim=-1):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c, 1.0), obs=x)


def _discrete_guide(x):
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("c", dist.Bernoulli(torch.sigmoid(x)))


def _global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def _global_guide(x):
    pyro.sample("mu", dist.Normal(x.mean(), 1.0))


def test_iwae_refuses_guides_without_rsample_and_sites_outside_the_data_plate():
    x = torch.randn(5)
    with pytest.raises(ConfigError, match="site 'c' has a Bernoulli distribution without rsample"):
        IWAE(3).differentiable_loss(_discrete_model, _discrete_guide, x)
    with pytest.raises(ConfigError, match="site 'mu' is in plates"):
        IWAE(3).differentiable_loss(_global_model, _global_guide, x)


# --- free bits --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prior", [dist.Normal(0.0, 1.0).expand([4]).to_event(1),
                                   dist.Normal(torch.tensor([0.3, -1.0, 0.0, 2.0]), 2.0).to_event(1)])
def test_per_dimension_kl_sums_to_the_total_kl(prior):
    q = dist.Normal(torch.randn(6, 4), torch.rand(6, 4) + 0.2).to_event(1)
    per_dim = kl_per_dim(q, prior)
    assert per_dim.shape == (6, 4) and (per_dim >= 0).all()
    torch.testing.assert_close(per_dim.sum(-1), kl_divergence(q, prior.expand((6,))))
    z = q.sample((3,))
    mc = kl_per_dim(q, prior, z, analytic=False)
    assert mc.shape == (3, 6, 4)
    torch.testing.assert_close(mc.sum(-1), q.log_prob(z) - prior.log_prob(z))


def test_per_dimension_kl_falls_back_to_monte_carlo_without_a_closed_form():
    q = dist.Normal(torch.randn(6, 4), torch.rand(6, 4) + 0.2).to_event(1)
    prior = dist.StudentT(3.0, 0.0, 1.0).expand([4]).to_event(1)  # no kl_divergence rule for Normal || StudentT
    z = q.sample((2,))
    torch.testing.assert_close(kl_per_dim(q, prior, z).sum(-1), q.log_prob(z) - prior.log_prob(z))
    with pytest.raises(NoClosedFormKLError, match="no closed form; pass z"):
        kl_per_dim(q, prior)


def test_free_bits_kl_floors_each_dimensions_batch_average():
    kl = torch.tensor([[0.1, 2.0, 0.0], [0.3, 1.0, 0.0]])
    torch.testing.assert_close(free_bits_kl(kl, 0.0), kl.sum())
    torch.testing.assert_close(free_bits_kl(kl, 0.5), torch.tensor(2 * (0.5 + 1.5 + 0.5)))
    with pytest.raises(ValueError, match="free_bits"):
        free_bits_kl(kl, -0.1)
    with pytest.raises(ValueError, match="free_bits"):
        FreeBitsELBO(float("nan"))


class ConstantEncoder(nn.Module):
    """Encoder outputs as one leaf parameter (batch, 2 z_dim), so gradients w.r.t. them are .grad."""

    def __init__(self, h):
        super().__init__()
        self.h = nn.Parameter(h)

    def forward(self, x):
        return self.h


def _kl_only_vae(batch=64, z_dim=3, x_dim=5):
    """A VAE whose decoder ignores z (W = 0): the loss's gradient w.r.t. the encoder outputs is the
    gradient of its KL part alone. Dimension 1 has KL ~ 2.1 nats, dimensions 0 and 2 under 0.25."""
    loc = torch.tensor([0.05, 2.0, 0.5]).expand(batch, z_dim) + 0.01 * torch.randn(batch, z_dim)
    raw = torch.full((batch, z_dim), math.log(math.expm1(0.7 - 1e-4)))  # sigma = 0.7: the KL has a slope
    vae = VAE(z_dim=z_dim, x_shape=(x_dim,), likelihood=NormalLikelihood(0.5),
              encoder=ConstantEncoder(torch.cat([loc, raw], -1)),
              decoder=LinearDecoder(torch.zeros(x_dim, z_dim), torch.zeros(x_dim)))
    return vae, torch.randn(batch, x_dim)


@pytest.mark.parametrize("analytic_kl, plain", [(True, TraceMeanField_ELBO), (False, Trace_ELBO)])
def test_free_bits_gradient_is_zero_below_the_floor_and_the_plain_kl_gradient_above(analytic_kl, plain):
    vae, x = _kl_only_vae()
    seeded(9, FreeBitsELBO(0.5, analytic_kl=analytic_kl).differentiable_loss, vae.model, vae.guide, x,
           num_data=640).backward()
    free = vae.encoder.h.grad.clone()
    vae.zero_grad()
    seeded(9, plain().differentiable_loss, vae.model, vae.guide, x, num_data=640).backward()
    full = vae.encoder.h.grad
    below, above = [0, 2, 3, 5], [1, 4]  # (loc, raw scale) columns of dimensions 0, 2 and of dimension 1
    assert full[:, below].abs().min() > 0
    assert (free[:, below] == 0).all()
    torch.testing.assert_close(free[:, above], full[:, above])


@pytest.mark.parametrize("analytic_kl, plain", [(True, TraceMeanField_ELBO), (False, Trace_ELBO)])
def test_free_bits_at_zero_is_the_elbo_and_above_zero_is_below_it(analytic_kl, plain):
    vae, x, _ = ppca(shift=0.5, scale_factor=1.5)
    kwargs = {"num_data": 640, "beta": 0.3}
    elbo = seeded(10, plain(num_particles=3, vectorize_particles=True, max_plate_nesting=1).loss,
                  vae.model, vae.guide, x, **kwargs)
    zero = seeded(10, FreeBitsELBO(0.0, 3, analytic_kl).loss, vae.model, vae.guide, x, **kwargs)
    assert zero == pytest.approx(elbo, rel=1e-5)
    assert seeded(10, FreeBitsELBO(1.0, 3, analytic_kl).loss, vae.model, vae.guide, x, **kwargs) > zero
    terms = seeded(10, FreeBitsELBO(1.0, 3, analytic_kl).loss_terms, vae.model, vae.guide, x, **kwargs)
    plain_terms = seeded(10, ELBO(3, analytic_kl).loss_terms, vae.model, vae.guide, x, **kwargs)
    for name in ("elbo", "reconstruction", "kl"):  # the unfloored terms of the same draws
        torch.testing.assert_close(terms[name], plain_terms[name], rtol=1e-5, atol=1e-3)


def test_free_bits_refuses_priors_and_guides_that_do_not_factorize():
    x = random_binary_data(16)[0].images[:4]
    mixture = VAE(z_dim=2, hidden=(8,), prior=MixtureOfGaussians(2, num_components=3))
    with pytest.raises(NotFactorizedError, match="prior DiagonalNormalMixture does not factorize"):
        FreeBitsELBO(0.25).differentiable_loss(mixture.model, mixture.guide, x)
    low_rank = VAE(z_dim=2, hidden=(8,), guide_family=LowRankNormal(2, rank=1))
    with pytest.raises(UnsupportedError, match="guide LowRankMultivariateNormal does not factorize"):
        FreeBitsELBO(0.25).differentiable_loss(low_rank.model, low_rank.guide, x)


# --- wiring: make_elbo, RunConfig, fit, CLI ------------------------------------------------------------


def test_make_elbo_builds_iwae_and_free_bits_and_refuses_their_combination():
    iwae = make_elbo("IWAE", 50)
    assert isinstance(iwae, IWAE) and iwae.num_particles == 50
    fb = make_elbo("TraceMeanField_ELBO", 2, free_bits=0.25)
    assert isinstance(fb, FreeBitsELBO) and fb.free_bits == 0.25 and fb.analytic_kl and fb.num_particles == 2
    assert not make_elbo("Trace_ELBO", free_bits=0.25).analytic_kl
    plain = make_elbo("TraceMeanField_ELBO", free_bits=0.0)
    assert isinstance(plain, ELBO) and plain.analytic_kl and not make_elbo("Trace_ELBO").analytic_kl
    with pytest.raises(ValueError, match="IWAE bound does not have"):
        make_elbo("IWAE", 5, free_bits=0.25)
    with pytest.raises(ValueError, match="num_particles"):
        make_elbo("IWAE", 0)
    with pytest.raises(ValueError, match="unknown"):
        make_elbo("VIMCO")
    with pytest.raises(ConfigError, match="free_bits=0.25"):
        RunConfig.from_dict({"trainer": {"elbo": "IWAE", "free_bits": 0.25}})
    with pytest.raises(ConfigError, match="free_bits"):
        RunConfig.from_dict({"trainer": {"free_bits": -1}})


@pytest.mark.parametrize("objective, kl_term", [({"elbo": "IWAE", "num_particles": 5}, None),
                                                ({"free_bits": 0.5}, "analytic")])
def test_fit_trains_with_the_objective_and_records_it(tmp_path, objective, kl_term):
    config = RunConfig(model=VAEConfig(z_dim=3, hidden=(16,), x_shape=(1, 28, 28)),
                       trainer=TrainerConfig(epochs=2, batch_size=32, lr=3e-3, kl_warmup_epochs=1, **objective))
    _, history = fit(config, tmp_path, data=random_binary_data(128), progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train_objective"]) and h["train_objective"] < 0 for h in history)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: saved["trainer"][k] for k in objective} == objective
    assert json.loads((tmp_path / "metrics.json").read_text())["training"]["kl_term"] == kl_term
    assert RunConfig.load(tmp_path / "config.json") == config


def test_fit_validates_on_the_elbo_not_on_the_free_bits_objective(tmp_path):
    train, _, test = random_binary_data(128)
    config = RunConfig(model=VAEConfig(z_dim=3, hidden=(16,)),
                       trainer=TrainerConfig(epochs=1, batch_size=32, kl_warmup_epochs=0, free_bits=50.0))
    _, history = fit(config, tmp_path, data=(train, test, test), progress=False)  # a floor of 150 nats per image
    assert history[0]["validation_objective"] > history[0]["train_objective"] + 100
    assert history[0]["validation_objective"] == history[0]["validation_elbo"]
    assert history[0]["train_elbo"] > history[0]["train_objective"] + 100  # the ELBO of the same pass, unfloored


def test_cli_parses_the_objective_flags(tmp_path, capsys):
    config = run_config("train", build_parser().parse_args(["train", "--elbo", "IWAE", "--num-particles", "50"]))
    assert (config.trainer.elbo, config.trainer.num_particles, config.trainer.free_bits) == ("IWAE", 50, 0.0)
    config = run_config("train", build_parser().parse_args(["train", "--free-bits", "0.25"]))
    assert (config.trainer.elbo, config.trainer.free_bits) == ("TraceMeanField_ELBO", 0.25)
    assert main(["train", "--elbo", "IWAE", "--free-bits", "0.25", "--out", str(tmp_path / "r")]) == 2
    assert "IWAE bound does not have" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["train", "--free-bits", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "free_bits=-1.0" in capsys.readouterr().err


@pytest.mark.mnist
def test_cli_trains_an_iwae_run(tmp_path, mnist_root):
    run = tmp_path / "r"
    assert main(["train", "--elbo", "IWAE", "--num-particles", "3", "--z-dim", "2", "--hidden", "16",
                 "--epochs", "1", "--train-size", "300", "--eval-num-samples", "2", "--data-dir", str(mnist_root),
                 "--out", str(run), "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["trainer"]["elbo"], saved["trainer"]["num_particles"]) == ("IWAE", 3)
    assert json.loads((run / "metrics.json").read_text())["test"]["log_likelihood_nats"] < 0
