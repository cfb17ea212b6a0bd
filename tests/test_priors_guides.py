"""The prior and guide-family plug-ins (issue 3): shapes under batch and particle dimensions, log
densities against independent computations, the KL bookkeeping, and each prior x guide pair inside a
VAE (training loss, gradients, importance-sampled evaluation, saving)."""

import copy
import io
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from scipy import stats
from torch.distributions import kl_divergence

from pyrovae import VAE
from pyrovae.evaluation import log_likelihood
from pyrovae.components.guides import GUIDES, IAF, DiagonalNormal, LowRankNormal
from pyrovae.components.priors import (PRIORS, DiagonalNormalMixture, FlowPrior, LearnedNormal, MixtureOfGaussians,
                                       StandardNormal, VampPrior, kl_is_analytic)
from pyrovae.inference import kl_method

from .conftest import logmeanexp

Z = 3
SMALL = {"mixture": {"num_components": 4}, "vamp": {"num_components": 6}}  # keep the tests fast


def make_prior(name, z_dim=Z):
    return PRIORS[name](z_dim, **SMALL.get(name, {}))


def make_vae(prior="standard_normal", guide="diagonal_normal", z_dim=Z):
    return VAE(z_dim=z_dim, hidden=(16,), prior=make_prior(prior, z_dim), guide_family=GUIDES[guide](z_dim))


def binary_images(n=5):
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3))


@torch.no_grad()
def perturb(module, scale=0.3):
    """Move every parameter off its initial value, so tests do not pass by symmetry at init."""
    for p in module.parameters():
        p.add_(scale * torch.randn_like(p))


def normal_log_density(z, loc, scale):
    """sum_d log N(z_d; loc_d, scale_d^2), written out."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


# --- registries and shapes ---------------------------------------------------------------------------


def test_registries_name_every_plug_in():
    assert set(PRIORS) == {"standard_normal", "learned_normal", "mixture", "vamp", "flow"}
    assert set(GUIDES) == {"diagonal_normal", "low_rank_normal", "iaf"}


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_every_prior_is_one_event_of_z_dim_that_broadcasts_over_batch_and_particles(name):
    prior = make_vae(prior=name).prior  # the VampPrior needs its VAE
    perturb(prior)
    d = prior()
    assert d.batch_shape == () and d.event_shape == (Z,)
    z = d.sample((7, 5))
    assert z.shape == (7, 5, Z)
    lp = d.log_prob(z)
    assert lp.shape == (7, 5) and torch.isfinite(lp).all()
    # what the data plate (dim -1) and the particles plate (dim -2) do to the prior
    lp_expanded = d.expand((5,)).log_prob(z)
    assert lp_expanded.shape == (7, 5)
    torch.testing.assert_close(lp_expanded, lp)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_every_prior_builds_with_its_default_options_from_z_dim_alone(name):
    vae = VAE(z_dim=Z, hidden=(16,), prior=PRIORS[name](Z))  # what pyrovae.config does
    assert vae.prior().event_shape == (Z,)


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_every_guide_family_gives_a_reparameterized_distribution_over_batch_and_particles(name):
    family = GUIDES[name](Z)
    h = torch.randn(5, family.num_features(Z), requires_grad=True)
    q = family(h)
    assert q.batch_shape == (5,) and q.event_shape == (Z,) and q.has_rsample
    z = q.rsample((7,))
    assert z.shape == (7, 5, Z)
    lp = q.log_prob(z)
    assert lp.shape == (7, 5) and torch.isfinite(lp).all()
    qe = q.expand((7, 5))  # the particles plate
    ze = qe.rsample()
    assert ze.shape == (7, 5, Z) and qe.log_prob(ze).shape == (7, 5)
    z.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert family.params(h)["loc"].shape == (5, Z)


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_guide_families_say_how_many_encoder_outputs_they_read(name):
    family = GUIDES[name](Z)
    assert family.num_features(Z) == VAE(z_dim=Z, hidden=(8,), guide_family=family).encoder.net[-1].out_features
    if name != "diagonal_normal":  # the static method of the default family cannot know
        with pytest.raises(ValueError, match=f"z_dim = {Z}.*z_dim = {Z + 1}"):
            family.num_features(Z + 1)


# --- log densities against independent computations --------------------------------------------------


def test_learned_normal_starts_at_the_standard_normal_and_has_the_diagonal_gaussian_density():
    prior = LearnedNormal(Z)
    z = torch.randn(11, Z)
    torch.testing.assert_close(prior().log_prob(z), StandardNormal(Z)().log_prob(z))
    perturb(prior)
    torch.testing.assert_close(prior().log_prob(z), normal_log_density(z, prior.loc, prior.scale))


def test_mixture_log_density_is_the_logsumexp_over_weighted_components():
    prior = MixtureOfGaussians(Z, num_components=5)
    assert torch.pdist(prior.locs).min() > 0, "the component means must start apart, not on top of each other"
    perturb(prior)
    z = torch.randn(7, 4, Z) * 2
    log_w = prior.logits.log_softmax(0)
    by_hand = torch.logsumexp(
        log_w + normal_log_density(z.unsqueeze(-2), prior.locs, prior.scales), dim=-1)
    torch.testing.assert_close(prior().log_prob(z), by_hand)


def test_diagonal_normal_mixture_matmul_log_prob_equals_the_broadcast_one_with_its_gradients():
    """The expanded-square log density (two matrix products) against torch's (N, K, D) broadcast, in
    float64, with scales down to 0.01 and points near and far from the components."""
    torch.manual_seed(0)
    k, d = 40, 6
    loc = torch.randn(k, d, dtype=torch.float64, requires_grad=True)
    scale = (0.01 + torch.rand(k, d, dtype=torch.float64)).requires_grad_()
    logits = torch.randn(k, dtype=torch.float64, requires_grad=True)
    z = torch.cat([loc.detach()[:5] + 0.01 * torch.randn(5, d, dtype=torch.float64),
                   4 * torch.randn(6, d, dtype=torch.float64)]).reshape(11, 1, d).expand(11, 3, d)
    values = []
    for cls in (DiagonalNormalMixture, dist.MixtureSameFamily):
        mix = cls(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
        lp = mix.log_prob(z)
        assert lp.shape == (11, 3)
        grads = torch.autograd.grad(lp.sum(), (loc, scale, logits))
        values.append((lp.detach(), grads))
    torch.testing.assert_close(values[0][0], values[1][0], rtol=1e-10, atol=1e-8)
    for g_fast, g_ref in zip(values[0][1], values[1][1]):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_the_matmul_log_density_runs_inside_the_models_plates(prior, monkeypatch):
    """The data plate (and a particle plate) expand the prior; the matrix products must still be the
    path taken, with the density of the unexpanded prior."""
    from pyro import poutine
    vae = make_vae(prior=prior)
    perturb(vae)
    x = binary_images(6)
    with torch.no_grad(), pyro.plate("particles", 4, dim=-2):
        trace = poutine.trace(vae.model).get_trace(x)
    z = trace.nodes["z"]["value"]
    assert z.shape == (4, 6, Z)
    expected = dist.MixtureSameFamily(vae.prior().mixture_distribution, vae.prior().component_distribution).log_prob(z)

    def broadcast_path(*args, **kwargs):
        raise AssertionError("the (N, K, D) broadcast log_prob ran instead of the matrix products")

    monkeypatch.setattr(torch.distributions.MixtureSameFamily, "log_prob", broadcast_path)
    with torch.no_grad():
        trace.compute_log_prob()
    assert isinstance(trace.nodes["z"]["fn"], DiagonalNormalMixture)
    torch.testing.assert_close(trace.nodes["z"]["log_prob"], expected.detach())


def test_diagonal_normal_mixture_keeps_float32_precision_and_falls_back_for_other_components():
    torch.manual_seed(1)
    k, d = 500, 50
    loc, scale = torch.randn(k, d), 0.02 + 0.5 * torch.rand(k, d)
    z = loc[:8] + 0.05 * torch.randn(8, d)  # large z^2/sigma^2 terms that cancel
    fast = DiagonalNormalMixture(dist.Categorical(logits=torch.zeros(k)), dist.Normal(loc, scale).to_event(1))
    exact = dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(k, dtype=torch.float64)),
                                   dist.Normal(loc.double(), scale.double()).to_event(1)).log_prob(z.double())
    lp = fast.log_prob(z)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.double(), exact, rtol=0, atol=1e-3)
    cov_factor = 0.3 * torch.randn(k, d, 2)
    low_rank = dist.LowRankMultivariateNormal(loc, cov_factor, scale.square())
    weights = dist.Categorical(logits=torch.zeros(k))
    torch.testing.assert_close(DiagonalNormalMixture(weights, low_rank).log_prob(z),
                               dist.MixtureSameFamily(weights, low_rank).log_prob(z))


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_vampprior_density_is_the_mean_of_the_guide_at_each_pseudo_input(guide):
    vae = make_vae(prior="vamp", guide=guide)
    perturb(vae)
    u = vae.prior.pseudo_inputs
    assert u.shape == (SMALL["vamp"]["num_components"], *vae.x_shape)
    z = torch.randn(7, 4, Z)
    with torch.no_grad():
        per_component = torch.stack(
            [vae.guide_family(vae.encoder(u[k:k + 1])).log_prob(z.unsqueeze(-2)).squeeze(-1)
             for k in range(u.shape[0])], dim=-1)
        torch.testing.assert_close(vae.prior().log_prob(z), logmeanexp(per_component, dim=-1),
                                   atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["spline", "affine"])
def test_flow_prior_density_integrates_to_one_in_two_dimensions(kind):
    prior = FlowPrior(2, kind=kind)
    perturb(prior, 0.1)
    prior = prior.double()

    def integrate(half_width, step):
        grid = torch.arange(-half_width, half_width + step / 2, step, dtype=torch.float64)
        zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)
        with torch.no_grad():
            density = prior().log_prob(zz).exp()
        edge = torch.cat([density[0], density[-1], density[:, 0], density[:, -1]]).max()
        return torch.trapezoid(torch.trapezoid(density, dx=step, dim=-1), dx=step, dim=-1).item(), edge.item()

    # widen the window until the density on its edge is negligible (the affine flow's tails are heavy)
    half_width, step, tiny = 8.0, 0.1, 1e-12
    total, edge = integrate(half_width, step)
    while edge > tiny:
        half_width *= 2
        total, edge = integrate(half_width, step)
    coarse, _ = integrate(half_width, 2 * step)
    # the quadrature error shrinks with the step: the result must be within the change from halving
    # the grid (plus what lies outside the window and round-off)
    assert abs(total - 1.0) <= abs(total - coarse) + tiny * (2 * half_width) ** 2 + 1e-9


@pytest.mark.parametrize("kind", ["spline", "affine"])
def test_flow_prior_follows_the_change_of_variables_formula(kind):
    prior = FlowPrior(Z, num_flows=3, kind=kind)
    perturb(prior, 0.1)
    z = 1.5 * torch.randn(6, Z)

    def to_base(v):  # u = T_L(...T_1(v))
        for layer in prior.layers():
            v = layer(v)
        return v

    base = StandardNormal(Z)()
    by_hand = torch.stack([base.log_prob(to_base(zi)) + torch.linalg.slogdet(
        torch.autograd.functional.jacobian(to_base, zi)).logabsdet for zi in z])
    with torch.no_grad():
        torch.testing.assert_close(prior().log_prob(z), by_hand, atol=1e-4, rtol=1e-5)
        # sampling inverts the layers: scoring a sample through its cache and afresh agree
        d = prior()
        s = d.sample((4,))
        torch.testing.assert_close(d.log_prob(s), prior().log_prob(s.clone()), atol=1e-3, rtol=1e-4)


def test_flow_prior_sees_parameter_updates_on_the_same_tensor():
    prior = FlowPrior(Z, kind="affine")
    z = torch.randn(5, Z)
    before = prior().log_prob(z).detach()
    perturb(prior)
    after = prior().log_prob(z).detach()
    fresh = FlowPrior(Z, kind="affine")
    fresh.load_state_dict(prior.state_dict())
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh().log_prob(z.clone()).detach())


def test_low_rank_normal_density_matches_scipy_with_covariance_w_wt_plus_diag():
    family = LowRankNormal(4, rank=2)
    h = torch.randn(3, family.num_features(4), dtype=torch.float64)
    q = family(h)
    p = family.params(h)
    z = q.sample((6,))
    for i in range(3):
        w, d = p["cov_factor"][i].numpy(), p["cov_diag"][i].numpy()
        expected = stats.multivariate_normal(p["loc"][i].numpy(), w @ w.T + np.diag(d))
        torch.testing.assert_close(q.log_prob(z)[:, i], torch.from_numpy(expected.logpdf(z[:, i].numpy())))


@pytest.mark.parametrize("stable", [True, False])
@pytest.mark.parametrize("context_dim", [None, 0])
def test_iaf_density_of_its_own_samples_is_base_density_minus_the_autograd_log_det(stable, context_dim):
    family = IAF(Z, num_flows=3, context_dim=context_dim, stable=stable)
    perturb(family, 0.1)
    h = torch.randn(4, family.num_features(Z))
    q = family(h)
    z0 = q.base_dist.sample()
    z = z0
    for step in q.transforms:  # what rsample does, keeping the base draw
        z = step(z)
    context = family.params(h)["context"]
    by_hand = []
    for i in range(4):
        def flow(v, i=i):
            for step in family.steps(context[i]):
                v = step(v)
            return v
        jac = torch.autograd.functional.jacobian(flow, z0[i])
        by_hand.append(q.base_dist.log_prob(z0)[i] - torch.linalg.slogdet(jac).logabsdet)
    torch.testing.assert_close(q.log_prob(z), torch.stack(by_hand))
    # the inverse (for points q did not draw) gives the same density
    torch.testing.assert_close(family(h).log_prob(z.detach().clone()), q.log_prob(z).detach(),
                               atol=1e-4, rtol=1e-4)
    # "loc" is the base mean pushed through the flow
    loc = q.base_dist.base_dist.loc
    for step in family.steps(context):
        loc = step(loc)
    torch.testing.assert_close(family.params(h)["loc"], loc)


# --- the KL term ---------------------------------------------------------------------------------------


def test_analytic_kl_agrees_with_monte_carlo_for_learned_normal_prior_and_diagonal_guide():
    prior = LearnedNormal(Z)
    perturb(prior, 0.5)
    family = DiagonalNormal(Z)
    q, p = family(torch.randn(4, 2 * Z)), prior()
    assert kl_is_analytic(q, p)
    exact = kl_divergence(q, p.expand((4,)))
    z = q.sample((20_000,))
    terms = q.log_prob(z) - p.log_prob(z)
    stderr = terms.std(0) / math.sqrt(terms.shape[0])
    assert ((terms.mean(0) - exact).abs() < 4 * stderr).all()


def test_kl_is_analytic_only_where_kl_divergence_has_a_rule():
    q = DiagonalNormal(Z)(torch.randn(4, 2 * Z))
    assert kl_is_analytic(q, StandardNormal(Z)())
    assert not kl_is_analytic(q, MixtureOfGaussians(Z)())
    assert not kl_is_analytic(IAF(Z)(torch.randn(4, IAF(Z).num_features(Z))), StandardNormal(Z)())
    x = binary_images()
    for prior, guide, expected in (("standard_normal", "diagonal_normal", "analytic"),
                                   ("learned_normal", "diagonal_normal", "analytic"),
                                   ("vamp", "diagonal_normal", "monte_carlo"),
                                   ("standard_normal", "iaf", "monte_carlo")):
        vae = make_vae(prior, guide)
        assert kl_method(vae.model, vae.guide, x) == expected, (prior, guide)


# --- every prior with every guide inside a VAE ---------------------------------------------------------


@pytest.mark.parametrize("guide", sorted(GUIDES))
@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_every_prior_and_guide_pair_trains_and_evaluates(prior, guide):
    vae = make_vae(prior, guide)
    x = binary_images()
    loss = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in [*vae.prior.named_parameters(), *vae.guide_family.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    if prior != "standard_normal":
        assert any(True for _ in vae.prior.parameters()), "a learned prior must have parameters"
    out = log_likelihood(vae.model, vae.guide, x, num_samples=16, progress=False)
    assert torch.isfinite(out["log_likelihood"]).all() and torch.isfinite(out["elbo"]).all()
    assert out["elbo"].mean() <= out["log_likelihood"].mean()
    assert vae.encode(x)["loc"].shape == (x.shape[0], Z)
    assert vae.sample(3).shape == (3, *vae.x_shape)


# --- the VampPrior's attach design ---------------------------------------------------------------------


def test_vampprior_state_dict_has_the_encoder_once_and_round_trips():
    vae = make_vae("vamp")
    perturb(vae)
    keys = list(vae.state_dict())
    assert "prior.raw_pseudo_inputs" in keys
    assert not any(k.startswith("prior.") and "encoder" in k for k in keys)
    assert sum(k.startswith("encoder.") for k in keys) == len(vae.encoder.state_dict())
    assert len(list(vae.parameters())) == len(set(map(id, vae.parameters())))
    buffer = io.BytesIO()
    torch.save(vae.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_vae("vamp")
    fresh.load_state_dict(torch.load(buffer))
    z = torch.randn(9, Z)
    with torch.no_grad():
        torch.testing.assert_close(fresh.prior().log_prob(z), vae.prior().log_prob(z))
    copied = copy.deepcopy(vae)
    assert copied.prior._vae is copied


def test_vampprior_pseudo_inputs_stay_in_the_data_range():
    vae = make_vae("vamp")
    prior = vae.prior
    u = prior.pseudo_inputs
    assert ((u - prior.init_mean).abs() < 6 * prior.init_std).all()
    with torch.no_grad():
        prior.raw_pseudo_inputs.mul_(1e3)
    u = prior.pseudo_inputs
    assert ((u >= 0) & (u <= 1)).all()
    x = binary_images(SMALL["vamp"]["num_components"]) * 0.5 + 0.25
    prior.set_pseudo_inputs(x)
    torch.testing.assert_close(prior.pseudo_inputs, x)


def test_vampprior_errors_are_clear():
    prior = VampPrior(Z, num_components=4)
    with pytest.raises(RuntimeError, match="not attached.*VAE\\(prior=VampPrior"):
        prior()
    with pytest.raises(ValueError, match=r"z_dim 3 but the VAE has z_dim 5.*\(z_dim,\) = \(5,\)"):
        VAE(z_dim=5, hidden=(8,), prior=VampPrior(Z, num_components=4))
    VAE(z_dim=Z, hidden=(8,), prior=prior)
    with pytest.raises(RuntimeError, match="already attached"):
        VAE(z_dim=Z, hidden=(8,), prior=prior)

    class Unbatched(DiagonalNormal):  # forgets .to_event(1): batch shape (K, z_dim), no event shape
        def forward(self, h):
            p = self.params(h)
            return dist.Normal(p["loc"], p["scale"])

    with pytest.raises(ValueError, match=r"Unbatched.*batch shape \(4, 3\).*mixture components"):
        VAE(z_dim=Z, hidden=(8,), prior=VampPrior(Z, num_components=4), guide_family=Unbatched(Z))
    with pytest.raises(ValueError, match="squash"):
        VampPrior(Z, squash="tanh")


def test_learned_priors_move_under_an_optimizer_step():
    for name in ("learned_normal", "mixture", "vamp", "flow"):
        vae = make_vae(name)
        before = {k: v.clone() for k, v in vae.prior.state_dict().items()}
        opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
        pyro.set_rng_seed(0)
        loss = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, binary_images())
        loss.backward()
        opt.step()
        after = vae.prior.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), name
