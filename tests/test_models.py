import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyrovae import VAE
from pyrovae.errors import ArgumentTypeError, ConfigError, DataError
from pyrovae.inference import kl_weight
from pyrovae.models import VAEConfig, family_for


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_public_methods_give_documented_shapes(network):
    vae = VAE(z_dim=3, network=network, hidden=(32,))
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3))
    q = vae.encode(x)
    assert q["loc"].shape == (5, 3) and q["scale"].shape == (5, 3) and (q["scale"] > 0).all()
    r = vae.reconstruct(x)
    assert r.shape == (5, 1, 28, 28) and ((r >= 0) & (r <= 1)).all()
    assert vae.sample(7).shape == (7, 1, 28, 28)
    assert vae.decode(torch.zeros(2, 4, 3)).batch_shape == (2, 4)


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_model_and_guide_sites_have_the_right_batch_and_event_shapes(network):
    vae = VAE(z_dim=3, network=network, hidden=(16,))
    x = torch.bernoulli(torch.full((6, 1, 28, 28), 0.3))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    z_q, z_p, obs = guide_trace.nodes["z"], model_trace.nodes["z"], model_trace.nodes["x"]
    assert z_q["fn"].batch_shape == (6,) and z_q["fn"].event_shape == (3,)
    assert z_p["fn"].batch_shape == (6,) and z_p["fn"].event_shape == (3,)
    assert obs["fn"].batch_shape == (6,) and obs["fn"].event_shape == (1, 28, 28)
    assert [f.name for f in obs["cond_indep_stack"]] == ["data"]


def test_minibatch_scaling_multiplies_the_loss_by_num_data_over_batch():
    vae = VAE(z_dim=2, hidden=(16,))
    x = torch.bernoulli(torch.full((10, 1, 28, 28), 0.3))
    elbo = Trace_ELBO()
    pyro.set_rng_seed(1)
    full = elbo.differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    scaled = elbo.differentiable_loss(vae.model, vae.guide, x, num_data=1000)
    torch.testing.assert_close(scaled, full * 100)


def test_model_parameters_never_enter_the_global_param_store():
    pyro.clear_param_store()
    vae = VAE(z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).backward()
    assert len(pyro.get_param_store()) == 0
    assert all(p.grad is not None for p in vae.parameters())


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(4, 784), r"shape \(4, 784\).*\(batch, 1, 28, 28\)"),
    (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), "floating-point"),
    (torch.full((4, 1, 28, 28), float("nan")), "NaN or infinite"),
    (torch.full((4, 1, 28, 28), float("inf")), "NaN or infinite"),
    (torch.full((4, 1, 28, 28), 0.5), r"\{0, 1\}.*binarize.*continuous"),
])
def test_bad_input_gets_one_clear_error(bad, message):
    vae = VAE(z_dim=2, hidden=(8,))
    with pytest.raises(DataError, match=message):
        vae.encode(bad)
    with pytest.raises(ArgumentTypeError, match="torch.Tensor"):
        vae.encode(bad.numpy())


def test_a_prior_with_the_wrong_event_shape_is_refused():
    from pyrovae.components.priors import StandardNormal
    with pytest.raises(ConfigError, match=r"event shape \(3,\).*\(z_dim,\) = \(5,\)"):
        VAE(z_dim=5, prior=StandardNormal(3))


def test_the_registry_builds_the_model_its_config_describes():
    config = VAEConfig(network="mlp", z_dim=7, hidden=(20, 10))
    vae = family_for(config.kind).from_config(config)
    assert type(vae) is VAE and vae.z_dim == 7 and vae.config == config
    assert [m.out_features for m in vae.encoder.net if hasattr(m, "out_features")] == [20, 10, 14]
    assert [m.out_features for m in vae.decoder.net if hasattr(m, "out_features")] == [10, 20, 784]


@pytest.mark.parametrize("beta", [0.1, 4.0])
def test_beta_weighs_exactly_the_kl_term(beta):
    """With the analytic KL, -loss = E_q[log p(x|z)] - beta KL(q || p): the difference between two
    betas is the KL itself, which for a diagonal Normal guide against N(0, I) is known in closed form."""
    from pyro.infer import TraceMeanField_ELBO
    pyro.set_rng_seed(0)
    vae = VAE(z_dim=4, hidden=(16,))
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3))
    elbo = TraceMeanField_ELBO(max_plate_nesting=1)
    with torch.no_grad():
        torch.manual_seed(1)
        loss_1 = elbo.differentiable_loss(vae.model, vae.guide, x)
        torch.manual_seed(1)
        with kl_weight(beta):
            loss_beta = elbo.differentiable_loss(vae.model, vae.guide, x)
        q = vae.encode(x)
        kl = (0.5 * (q["loc"] ** 2 + q["scale"] ** 2 - 1) - q["scale"].log()).sum()
    torch.testing.assert_close(loss_beta - loss_1, (beta - 1) * kl, rtol=1e-4, atol=1e-3)


def test_kl_warmup_rises_linearly_to_beta_and_stays():
    from pyrovae.training import kl_weight_at
    weights = [kl_weight_at(2.0, 2, step, steps_per_epoch=5) for step in range(15)]
    assert weights[0] == pytest.approx(0.2) and weights[4] == pytest.approx(1.0)
    assert weights[9:] == [2.0] * 6
    assert all(b > a for a, b in zip(weights[:10], weights[1:10]))
    assert kl_weight_at(1.0, 0, 0, 5) == 1.0


def test_kl_weight_scales_the_latent_sites_only_and_only_those_named():
    vae = VAE(z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3))
    with kl_weight(0.25):
        guide_trace = poutine.trace(vae.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    assert guide_trace.nodes["z"]["scale"] == model_trace.nodes["z"]["scale"] == 0.25
    assert model_trace.nodes["x"]["scale"] == 1.0
    with kl_weight(0.25, sites=("w",)):
        assert poutine.trace(vae.guide).get_trace(x).nodes["z"]["scale"] == 1.0
