"""Hierarchical VAEs (issue 23): the linear-Gaussian closed form, the ladder's merge, the one-layer reduction to the
VAE, the objectives over every layer, and a run through the command line."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch

from pyrovae import ConfigError, HierarchicalConfig, HierarchicalVAE, VAE
from pyrovae.app.cli import main
from pyrovae.evaluation import log_likelihood
from pyrovae.inference import ELBO, IWAE, kl_weight
from pyrovae.inference.objectives import FreeBitsELBO
from pyrovae.models import precision_weighted_merge
from pyrovae.torchtools import inverse_softplus
from pyrovae.training import RunConfig, TrainerConfig

MIN_SCALE = 1e-4  # the guide's and the conditional priors' floor: scale = softplus(raw) + 1e-4


def _set(linear: torch.nn.Linear, loc_w, loc_b, scale):
    """A linear layer whose output is (loc = loc_w v + loc_b, raw) with softplus(raw) + 1e-4 = ``scale``."""
    k = loc_w.shape[0]
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[:k] = loc_w
        linear.bias[:k] = loc_b
        linear.bias[k:] = inverse_softplus(scale - MIN_SCALE)


def _linear_gaussian(seed=0):
    """z2 ~ N(0, I_2), z1 ~ N(A z2 + b, s1^2 I_3), x ~ N(C z1 + c, sx^2 I_5), with every network linear and the exact
    posterior as the guide (diagonal because A's columns lie on the axes and C's columns are orthogonal, so that
    Cov(z1) and C^T C are diagonal): q(z1 | x) = p(z1 | x), q(z2 | z1) = p(z2 | z1, x) = p(z2 | z1)."""
    g = torch.Generator().manual_seed(seed)
    d, d1, d2, s1, sx = 5, 3, 2, 0.7, 0.4
    a = torch.zeros(d1, d2, dtype=torch.float64)
    a[0, 0], a[1, 1] = 1.5, -0.8
    q, _ = torch.linalg.qr(torch.randn(d, d1, generator=g, dtype=torch.float64))
    c_mat = q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)  # orthogonal columns
    b = torch.randn(d1, generator=g, dtype=torch.float64)
    c = torch.randn(d, generator=g, dtype=torch.float64)
    model = HierarchicalVAE(layers=(d1, d2), x_shape=(d,), hidden=(), latent_hidden=(), likelihood="normal",
                            likelihood_options={"scale": sx}).double()
    _set(model.down[0][0], a, b, torch.full((d1,), s1, dtype=torch.float64))
    with torch.no_grad():
        model.decoder.net[0].weight.copy_(c_mat)
        model.decoder.net[0].bias.copy_(c)
    cov1 = a @ a.T + s1 ** 2 * torch.eye(d1, dtype=torch.float64)
    post1 = torch.linalg.inv(torch.linalg.inv(cov1) + c_mat.T @ c_mat / sx ** 2)  # Cov(z1 | x), diagonal
    assert torch.allclose(post1, torch.diag(torch.diag(post1)), atol=1e-12)
    _set(model.encoder.net[0], post1 @ c_mat.T / sx ** 2,
         post1 @ (torch.linalg.solve(cov1, b) - c_mat.T @ c / sx ** 2), torch.diag(post1).sqrt())
    post2 = torch.linalg.inv(torch.eye(d2, dtype=torch.float64) + a.T @ a / s1 ** 2)  # Cov(z2 | z1), diagonal
    _set(model.up[0][0], post2 @ a.T / s1 ** 2, -post2 @ a.T @ b / s1 ** 2, torch.diag(post2).sqrt())
    marginal = torch.distributions.MultivariateNormal(c_mat @ b + c, c_mat @ cov1 @ c_mat.T
                                                      + sx ** 2 * torch.eye(d, dtype=torch.float64))
    return model, marginal


def test_the_linear_gaussian_hierarchy_matches_its_closed_form_marginal():
    """p(x) = N(C b + c, C (A A^T + s1^2 I) C^T + sx^2 I). With the exact posterior as the guide every importance
    weight p(x, z1, z2) / q(z1, z2 | x) equals p(x), so L_K and the ELBO are exact for any K: the tolerance is float64
    rounding (1e-6 nats), not Monte Carlo error."""
    model, marginal = _linear_gaussian()
    x = marginal.sample((40,))
    exact = marginal.log_prob(x)
    pyro.set_rng_seed(0)
    out = log_likelihood(model.model, model.guide, x, num_samples=10, progress=False)
    torch.testing.assert_close(out["log_likelihood"].double(), exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["elbo"].double(), exact, rtol=0, atol=1e-6)


def test_with_an_inexact_guide_the_importance_sampled_estimate_still_converges_to_the_closed_form():
    """The same model with the guide's means shifted by 0.3 posterior standard deviations: the ELBO falls below
    log p(x) (a real gap, about 0.3^2 / 2 nats per dimension), while L_K at K = 4000 comes back to it. L_K's bias
    is about Var(w) / (2 K E[w]^2) nats and its standard deviation sqrt(Var(w) / K) / E[w] (the delta method), from
    the weights' measured relative variance; the tolerance is the bias bound plus five standard deviations."""
    model, marginal = _linear_gaussian()
    with torch.no_grad():
        for layer, d in ((model.encoder.net[0], 3), (model.up[0][0], 2)):
            layer.bias[:d] += 0.3 * (torch.nn.functional.softplus(layer.bias[d:]) + MIN_SCALE)
    x = marginal.sample((20,))
    exact = marginal.log_prob(x)
    k = 4000
    pyro.set_rng_seed(1)
    out = log_likelihood(model.model, model.guide, x, num_samples=k, progress=False)
    gap = exact - out["elbo"].double()
    assert (gap > 0.1).all()  # the shifted guide is measurably worse than the exact one
    from pyrovae.inference.traces import importance_weights
    log_w = importance_weights(model.model, model.guide, k, x).log_weights.double()  # (K, n)
    rel = (log_w - exact).exp()
    rel_var = rel.var(0)  # Var(w) / p(x)^2 per image
    tolerance = rel_var / (2 * k) + 5 * (rel_var / k).sqrt()
    assert (tolerance < gap / 2).all()  # the check is sharp: the ELBO's gap is well outside the tolerance
    assert ((out["log_likelihood"].double() - exact).abs() < tolerance).all()


def test_the_precision_weighted_merge_is_the_normalized_product_of_the_two_gaussians():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    s1 = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    s2 = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    mu, s = precision_weighted_merge(mu1, s1, mu2, s2)
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)[:, None]
    normal = torch.distributions.Normal
    diff = normal(mu1, s1).log_prob(x) + normal(mu2, s2).log_prob(x) - normal(mu, s).log_prob(x)  # (101, 7)
    torch.testing.assert_close(diff, diff[:1].expand_as(diff), rtol=0, atol=1e-10)  # a constant in x: log Z
    log_z = normal(mu2, (s1 ** 2 + s2 ** 2).sqrt()).log_prob(mu1)  # the product's known normalizer
    torch.testing.assert_close(diff[0], log_z, rtol=0, atol=1e-10)
    assert (s <= torch.minimum(s1, s2)).all()


@pytest.mark.parametrize("ladder", [False, True])
def test_one_layer_is_the_vae_with_the_same_weights(ladder):
    """With its top layer removed (layers=(d,)) the hierarchy is p(z1) p(x | z1) with q(z1 | x): the VAE. The ladder's
    trunk and head are the VAE encoder's layers split before the last one."""
    torch.manual_seed(0)
    vae = VAE(z_dim=4, x_shape=(1, 6, 6), hidden=(16, 8))
    one = HierarchicalVAE(layers=(4,), x_shape=(1, 6, 6), hidden=(16, 8), ladder=ladder)
    one.decoder.load_state_dict(vae.decoder.state_dict())
    if ladder:
        net = vae.encoder.net  # Linear, ReLU, Linear, ReLU, Linear
        one.trunks[0][0].net[0].load_state_dict(net[0].state_dict())
        one.trunks[0][0].net[2].load_state_dict(net[2].state_dict())
        one.heads[0].load_state_dict(net[4].state_dict())
    else:
        one.encoder.load_state_dict(vae.encoder.state_dict())
    x = torch.bernoulli(torch.full((10, 1, 6, 6), 0.4))
    for objective in (ELBO(), ELBO(analytic_kl=False), IWAE(5)):
        pyro.set_rng_seed(3)
        expected = objective.loss_terms(vae.model, vae.guide, x)
        pyro.set_rng_seed(3)
        got = objective.loss_terms(one.model, one.guide, x)
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], msg=f"{type(objective).__name__} {name}")


@pytest.mark.parametrize("ladder", [False, True])
def test_beta_and_free_bits_reach_every_layer(ladder):
    torch.manual_seed(0)
    model = HierarchicalVAE(layers=(3, 2), x_shape=(1, 4, 4), hidden=(8,), latent_hidden=(4,), ladder=ladder)
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.5))
    pyro.set_rng_seed(0)
    terms = ELBO().loss_terms(model.model, model.guide, x)
    pyro.set_rng_seed(0)
    with kl_weight(0.25):
        weighted = ELBO().loss_terms(model.model, model.guide, x)
    torch.testing.assert_close(weighted["objective"], terms["reconstruction"] - 0.25 * terms["kl"])
    pyro.set_rng_seed(0)
    floored = FreeBitsELBO(free_bits=50.0).loss_terms(model.model, model.guide, x)  # far above every KL
    torch.testing.assert_close(floored["objective"], floored["reconstruction"] - 6 * (3 + 2) * 50.0)


def test_every_prior_plugin_sits_at_the_top_and_sampling_goes_top_down():
    for prior, options in (("standard_normal", {}), ("vamp", {"num_components": 3}), ("flow", {})):
        for ladder in (False, True):
            model = HierarchicalVAE(layers=(5, 2), x_shape=(1, 4, 4), hidden=(8,), latent_hidden=(4,), ladder=ladder,
                                    prior=prior, prior_options=options)
            assert model.prior().event_shape == (2,)
            x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
            loss = IWAE(4).differentiable_loss(model.model, model.guide, x)
            loss.backward()
            assert math.isfinite(loss.item())
            assert model.sample(7).shape == (7, 1, 4, 4)
            assert set(model.encode(x)) == {"z1", "z2", "loc"}


@pytest.mark.parametrize("fields, message", [
    ({"layers": ()}, "layers is empty"),
    ({"layers": (4, 0)}, "layers[1]"),
    ({"ladder": True, "hidden": ()}, "ladder=True needs at least one hidden size"),
    ({"prior": "nope"}, "unknown prior 'nope'"),
])
def test_bad_configs_raise_one_clear_error(fields, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        HierarchicalConfig(**fields)


def test_a_run_trains_and_resumes_exactly(tmp_path):
    from pyrovae.app import runs
    data = (torch.rand(120, 1, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    trainer = dict(batch_size=16, lr_schedule="constant", kl_warmup_epochs=0)
    config = RunConfig(model=HierarchicalConfig(layers=(3, 2), hidden=(8,), latent_hidden=(4,), ladder=True),
                       trainer=TrainerConfig(epochs=2, **trainer), evaluation={"num_samples": 5})
    straight = runs.train_run(config, tmp_path / "a", progress=False, data=data)
    runs.train_run(config.model_copy(update={"trainer": TrainerConfig(epochs=1, **trainer)}), tmp_path / "b",
                   progress=False, data=data)
    resumed = runs.train_run(config, tmp_path / "b", resume=True, progress=False, data=data)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in straight["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in resumed["history"]]
    test = straight["test"]
    assert test["log_likelihood_nats"] >= test["elbo_nats"] - 1e-3
    assert math.isclose(test["kl_nats_z1"] + test["kl_nats_z2"], test["kl_nats"], rel_tol=0.5, abs_tol=0.5)
    assert 0 <= test["active_units_z1"] <= 3 and 0 <= test["active_units_z2"] <= 2


def test_train_evaluate_sample_and_diagnose_through_the_command_line(tmp_path, mnist_root, capsys):
    run = tmp_path / "run"
    code = main(["hierarchical", "--layers", "6,3", "--hidden", "32", "--latent-hidden", "16", "--ladder",
                 "--epochs", "1", "--kl-warmup-epochs", "0", "--train-size", "300", "--test-size", "40",
                 "--eval-num-samples", "5",
                 "--data-dir", str(mnist_root), "--out", str(run), "--no-progress"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["kind"] == "hierarchical" and config["model"]["layers"] == [6, 3]
    assert (run / "samples.png").exists() and (run / "reconstructions.png").exists()
    capsys.readouterr()
    assert main(["evaluate", str(run), "-k", "20", "--no-probe", "--no-progress", "--data-dir", str(mnist_root)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_samples"] == 20 and metrics["log_likelihood_nats"] < 0
    assert {"active_units_z1", "active_units_z2", "kl_nats_z1", "kl_nats_z2"} <= set(metrics)
    assert main(["sample", str(run), "-n", "9"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "samples_n9_seed0.png")
    assert (run / "samples_n9_seed0.png").exists()
    assert main(["diagnose", str(run), "--num-images", "2", "--num-samples", "50", "--mcmc-images", "0",
                 "--gap-steps", "5", "--ll-samples", "20", "--data-dir", str(mnist_root)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "gaps" in report["skipped"] and (run / "diagnostics.json").exists()  # one-site tools say why they skip
