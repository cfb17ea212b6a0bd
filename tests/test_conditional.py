"""The label-conditional VAE: its Pyro program, label checks, log p(x | y), training, reload and CLI."""

import json
import math
import re

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyrovae.app.cli import main
from pyrovae.components.priors import MixtureOfGaussians, VampPrior
from pyrovae.errors import ConfigError, DataError, PyroVAEError
from pyrovae.evaluation import evaluate, label_posterior, log_likelihood
from pyrovae.inference import kl_method, kl_weight
from pyrovae.models import CVAE, CVAEConfig, VAEConfig, family_for
from pyrovae.settings import make_config
from pyrovae.training import RunConfig, TrainerConfig, fit, load_run

from .conftest import NormalLikelihood, random_binary_data


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=g)


# --- a linear-Gaussian CVAE with a known log p(x | y) --------------------------------------------------
# z ~ N(0, I), x | z, y ~ N(W z + b_y, s^2 I): log p(x | y) = log N(x; b_y, W W^T + s^2 I), and the
# exact posterior q(z | x, y) = N(A (x - b_y), C) is diagonal when the columns of W are orthogonal.


class LabelLinearDecoder(nn.Module):
    def __init__(self, W, B):
        super().__init__()
        self.W, self.B = nn.Parameter(W.clone()), nn.Parameter(B.clone())

    def forward(self, z, y):
        return (z @ self.W.T + y @ self.B).unsqueeze(-2)


class LabelPosteriorEncoder(nn.Module):
    def __init__(self, W, B, s, shift=0.0):
        super().__init__()
        cov = torch.linalg.inv(torch.eye(W.shape[1]) + W.T @ W / s**2)
        self.register_buffer("A", cov @ W.T / s**2)
        self.register_buffer("B", B)
        self.register_buffer("raw", torch.log(torch.expm1(cov.diagonal().sqrt() - 1e-4)))
        self.shift = shift

    def forward(self, x, y):
        loc = (x - y @ self.B) @ self.A.T + self.shift
        return torch.cat([loc, self.raw.expand_as(loc)], dim=-1)


def linear_cvae(shift: float = 0.0, z_dim: int = 2, x_dim: int = 6, num_classes: int = 3, s: float = 0.5,
                all_labels: bool = False):
    """``(cvae, x, y, exact log p(x | y))`` for 30 points drawn from the model; with ``all_labels`` the last
    is ``(30, num_classes)``, log p(x | y = k) for every k."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(x_dim, z_dim, generator=g))
    W = q * torch.linspace(2.0, 0.5, z_dim)
    B = 3 * torch.randn(num_classes, x_dim, generator=g)
    cvae = CVAE(z_dim=z_dim, x_shape=(x_dim,), num_classes=num_classes, likelihood=NormalLikelihood(s),
                encoder=LabelPosteriorEncoder(W, B, s, shift), decoder=LabelLinearDecoder(W, B))
    y = torch.arange(30) % num_classes
    cov = W @ W.T + s**2 * torch.eye(x_dim)
    x = dist.MultivariateNormal(B[y], cov).sample()
    if all_labels:
        return cvae, x, y, dist.MultivariateNormal(B, cov).log_prob(x[:, None])
    return cvae, x, y, dist.MultivariateNormal(B[y], cov).log_prob(x)


def test_exact_guide_gives_the_exact_log_likelihood_given_labels():
    cvae, x, y, exact = linear_cvae()
    out = log_likelihood(cvae.model, cvae.guide, x, y, num_samples=7, max_chunk=20)  # several chunks
    torch.testing.assert_close(out["log_likelihood"], exact, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["elbo"], exact, atol=1e-4, rtol=1e-5)


def test_the_memory_cap_chunks_the_labelled_estimate_without_changing_it():
    cvae, x, y, exact = linear_cvae()
    out = log_likelihood(cvae.model, cvae.guide, x, y, num_samples=50, max_memory_gb=2e-5, progress=False)
    assert out["plan"]["source"] == "max_memory_gb"
    assert out["plan"]["images_per_pass"] < x.shape[0] or out["plan"]["samples_per_pass"] < 50
    torch.testing.assert_close(out["log_likelihood"], exact, atol=1e-4, rtol=1e-5)


def test_log_likelihood_given_the_wrong_labels_is_lower():
    cvae, x, y, exact = linear_cvae()
    wrong = (y + 1) % cvae.num_classes
    assert log_likelihood(cvae.model, cvae.guide, x, wrong, num_samples=200)["log_likelihood"].mean() < exact.mean() - 5


def test_importance_sampling_bound_tightens_with_k_and_stays_below_log_p():
    cvae, x, y, exact = linear_cvae(shift=0.7)
    pyro.set_rng_seed(0)
    m1 = log_likelihood(cvae.model, cvae.guide, x, y, num_samples=1)["log_likelihood"].mean()
    m500 = log_likelihood(cvae.model, cvae.guide, x, y, num_samples=500)["log_likelihood"].mean()
    assert m1 < m500 < exact.mean() + 0.05
    metrics = evaluate(cvae, {"x": x, "y": y}, num_samples=50)
    assert metrics["log_likelihood_of"] == "log p(x | y)"
    assert metrics["elbo_nats"] <= metrics["log_likelihood_nats"]
    assert metrics["log_likelihood_bits_per_dim"] == pytest.approx(-metrics["log_likelihood_nats"] / (6 * math.log(2)))


def test_label_posterior_of_the_exact_model_is_the_closed_form_bayes_rule():
    """p(y | x) = p(x | y) p(y) / sum_k p(x | k) p(k) with a uniform p(y): from the one estimator, run once
    per label, on a model whose log p(x | y) is known in closed form."""
    cvae, x, y, exact = linear_cvae(all_labels=True)
    out = label_posterior(cvae.model, cvae.guide, x, 3, num_samples=5, log_prior=torch.full((3,), -math.log(3)))
    torch.testing.assert_close(out["log_joint"], exact - math.log(3), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["probabilities"], torch.softmax(exact, -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["log_likelihood"], torch.logsumexp(exact, -1) - math.log(3), atol=1e-4, rtol=1e-5)
    assert (out["prediction"] == exact.argmax(-1)).all()


# --- the Pyro program ---------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_model_and_guide_sites_have_the_right_shapes_and_plates(network):
    cvae = CVAE(z_dim=3, network=network, hidden=(16,))
    x, y = binary_images(6), torch.tensor([0, 1, 2, 3, 4, 9])
    guide_trace = poutine.trace(cvae.guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(cvae.model, trace=guide_trace)).get_trace(x, y)
    z_q, z_p, obs = guide_trace.nodes["z"], model_trace.nodes["z"], model_trace.nodes["x"]
    assert z_q["fn"].batch_shape == (6,) and z_q["fn"].event_shape == (3,)
    assert z_p["fn"].batch_shape == (6,) and z_p["fn"].event_shape == (3,)
    assert obs["fn"].batch_shape == (6,) and obs["fn"].event_shape == (1, 28, 28) and obs["is_observed"]
    assert [f.name for f in obs["cond_indep_stack"]] == ["data"]
    # the label conditions both programs; it is not a random variable of either
    for trace, names in ((model_trace, {"z", "x"}), (guide_trace, {"z"})):
        assert {n for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)} == names
    with pyro.plate("particles", 4, dim=-2):
        z = poutine.trace(cvae.guide).get_trace(x, y).nodes["z"]["value"]
    assert z.shape == (4, 6, 3)
    assert cvae.decode(z, y).batch_shape == (4, 6)


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_public_methods_give_documented_shapes(network):
    cvae = CVAE(z_dim=3, network=network, hidden=(32,))
    x, y = binary_images(5), torch.tensor([0, 1, 2, 3, 4])
    q = cvae.encode(x, y)
    assert q["loc"].shape == (5, 3) and q["scale"].shape == (5, 3) and (q["scale"] > 0).all()
    r = cvae.reconstruct(x, y)
    assert r.shape == (5, 1, 28, 28) and ((r >= 0) & (r <= 1)).all()
    assert cvae.reconstruct(x, 7).shape == (5, 1, 28, 28)
    assert cvae.sample(3, 4).shape == (4, 1, 28, 28)
    assert cvae.sample(torch.arange(10), 2).shape == (20, 1, 28, 28)


def test_minibatch_scaling_multiplies_the_loss_by_num_data_over_batch():
    cvae = CVAE(z_dim=2, hidden=(16,))
    x, y = binary_images(10), torch.arange(10)
    pyro.set_rng_seed(1)
    full = Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, x, y)
    pyro.set_rng_seed(1)
    scaled = Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, x, y, num_data=1000)
    torch.testing.assert_close(scaled, full * 100)


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_samples_change_with_the_label_not_only_with_the_seed(network):
    cvae = CVAE(z_dim=4, network=network, hidden=(32,))
    pyro.set_rng_seed(3)
    threes = cvae.sample(3, 5)
    pyro.set_rng_seed(3)
    threes_again = cvae.sample(3, 5)
    pyro.set_rng_seed(3)
    sevens = cvae.sample(7, 5)
    torch.testing.assert_close(threes, threes_again, rtol=0, atol=0)
    assert (threes - sevens).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every image differs
    # and the label is what changed: the same z decoded with label 3 gives the threes
    pyro.set_rng_seed(3)
    z = cvae.prior().sample((5,))
    torch.testing.assert_close(cvae.decode(z, 3).mean, threes)


def test_mean_field_elbo_equals_trace_elbo_in_expectation():
    cvae = CVAE(z_dim=3, hidden=(32,))
    x, y = binary_images(4), torch.tensor([1, 5, 5, 8])
    # With the same seed both ELBOs draw the same z, so their reconstruction terms cancel and the
    # difference per particle is KL(q||p) - (log q(z) - log p(z)), of mean zero.
    diffs = []
    for seed in range(10):
        pyro.set_rng_seed(seed)
        mc = Trace_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=1).loss(
            cvae.model, cvae.guide, x, y)
        pyro.set_rng_seed(seed)
        mf = TraceMeanField_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=1).loss(
            cvae.model, cvae.guide, x, y)
        diffs.append(mc - mf)
    diffs = torch.tensor(diffs)
    stderr = diffs.std() / math.sqrt(len(diffs))
    assert 0 < stderr and diffs.mean().abs() < 5 * stderr + 1e-3


@pytest.mark.parametrize("beta", [0.5, 2.0, 4.0])
def test_beta_weighs_exactly_the_kl_term(beta):
    cvae = CVAE(z_dim=3, hidden=(32,))
    x, y = binary_images(6), torch.tensor([0, 1, 2, 3, 4, 5])
    q = cvae.encode(x, y)
    kl = torch.distributions.kl_divergence(dist.Normal(q["loc"], q["scale"]).to_event(1), cvae.prior()).sum()
    elbo = TraceMeanField_ELBO()
    pyro.set_rng_seed(0)
    loss_1 = elbo.differentiable_loss(cvae.model, cvae.guide, x, y)
    pyro.set_rng_seed(0)
    with kl_weight(beta):
        loss_beta = elbo.differentiable_loss(cvae.model, cvae.guide, x, y)
    pyro.set_rng_seed(0)
    z = poutine.trace(cvae.guide).get_trace(x, y).nodes["z"]["value"]
    recon = cvae.decode(z, y).log_prob(x).sum()
    torch.testing.assert_close(loss_1, -recon + kl, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(loss_beta, -recon + beta * kl, rtol=1e-5, atol=1e-3)


def test_labels_travel_as_arguments_through_every_estimator():
    cvae = CVAE(z_dim=3, hidden=(16,))
    x, y = binary_images(5), torch.tensor([2, 2, 3, 3, 9])
    assert cvae.program_args({"x": x, "y": y}) == (x, y)
    assert kl_method(cvae.model, cvae.guide, x, y) == "analytic"
    out = log_likelihood(cvae.model, cvae.guide, x, y, num_samples=8)
    assert out["log_likelihood"].shape == (5,) and torch.isfinite(out["log_likelihood"]).all()
    assert (out["elbo"] <= out["log_likelihood"] + 1e-4).all()


# --- bad input: one clear ValueError each ------------------------------------------------------------


@pytest.mark.parametrize("y, message", [
    (torch.tensor([0, 1, 10]), "labels must be in [0, 10), got 1 outside it (e.g. 10)"),
    (torch.tensor([0, -1, 2]), "(e.g. -1)"),
    (torch.tensor([0.0, 1.0, 2.0]), "integer dtype (torch.int64), got torch.float32"),
    (torch.tensor([True, False, True]), "got torch.bool"),
    (torch.tensor([[0, 1, 2]]), "got shape (1, 3)"),
    (torch.tensor([0, 1]), "got 2 labels for 3 data points"),
    ([0, 1, 2], "torch.as_tensor"),
])
def test_bad_labels_get_one_clear_error(y, message):
    cvae = CVAE(z_dim=2, hidden=(8,))
    x = binary_images(3)
    with pytest.raises(PyroVAEError, match=re.escape(message)):
        cvae.check_labels(y, x)
    with pytest.raises(PyroVAEError):
        cvae.encode(x, y)
    with pytest.raises(PyroVAEError):  # Pyro's validation (on by default) checks the labels in the programs
        Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, x, y)


def test_bad_digits_in_sample_get_one_clear_error():
    cvae = CVAE(z_dim=2, hidden=(8,))
    for digit in (10, -1):
        with pytest.raises(DataError, match=f"digit {digit} is outside 0..9"):
            cvae.sample(digit, 2)
    with pytest.raises(DataError, match="torch.float32"):
        cvae.sample(torch.tensor([3.0]), 2)
    with pytest.raises(ConfigError, match="n=0 must be a positive integer"):
        cvae.sample(3, 0)


def test_plugins_are_those_of_the_vae_and_the_vamp_prior_is_refused():
    cvae = CVAE(z_dim=2, hidden=(8,), prior=MixtureOfGaussians(2, num_components=3))
    x, y = binary_images(4), torch.tensor([0, 1, 2, 3])
    assert torch.isfinite(Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, x, y))
    with pytest.raises(ConfigError, match="needs a label"):
        CVAE(z_dim=2, hidden=(8,), prior=VampPrior(2, num_components=4))
    with pytest.raises(ConfigError, match="conditional"):
        make_config(CVAEConfig, prior="vamp")
    with pytest.raises(ConfigError, match="num_classes"):
        make_config(CVAEConfig, num_classes=1)


# --- training, reload, CLI ---------------------------------------------------------------------------


def test_one_epoch_fit_and_reload_round_trip(tmp_path):
    config = RunConfig(model=CVAEConfig(z_dim=3, hidden=(32,), network="conv"),
                       trainer=TrainerConfig(epochs=1, batch_size=32, beta=2.0, kl_warmup_epochs=0))
    data = random_binary_data(128)
    cvae, history = fit(config, tmp_path, data=data, progress=False)
    assert isinstance(cvae, CVAE) and history[0]["beta"] == 2.0 and math.isfinite(history[0]["train_elbo"])
    reloaded, saved, state = load_run(tmp_path)
    assert isinstance(reloaded, CVAE) and saved.kind == state["kind"] == "cvae"
    assert json.loads((tmp_path / "metrics.json").read_text())["training"]["kl_term"] == "analytic"
    x, y = data[2].images[:8], data[2].labels[:8]
    torch.testing.assert_close(reloaded.encode(x, y)["loc"], cvae.encode(x, y)["loc"])
    pyro.set_rng_seed(0)
    a = reloaded.sample(torch.arange(10), 2)
    pyro.set_rng_seed(0)
    torch.testing.assert_close(a, cvae.sample(torch.arange(10), 2))
    assert isinstance(family_for(saved.kind).from_config(saved.model), CVAE)


def test_fit_refuses_labels_outside_the_range(tmp_path):
    train, _, test = random_binary_data(64)
    train.labels[3] = 10
    config = RunConfig(model=CVAEConfig(z_dim=2, hidden=(8,)), trainer=TrainerConfig(epochs=1))
    with pytest.raises(DataError, match=r"labels must be in \[0, 10\), got 1 outside it \(e.g. 10\)"):
        fit(config, tmp_path, data=(train, None, test), progress=False)


@pytest.mark.mnist
def test_cli_trains_a_conditional_run_and_samples_a_digit(tmp_path, mnist_root, capsys, monkeypatch):
    run = tmp_path / "cvae"
    assert main(["train", "--conditional", "--z-dim", "2", "--hidden", "32", "--epochs", "1",
                 "--train-size", "500", "--eval-num-samples", "2", "--data-dir", str(mnist_root),
                 "--out", str(run), "--no-progress"]) == 0
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["elbo_nats"] <= test["log_likelihood_nats"] < 0
    assert test["log_likelihood_of"] == "log p(x | y)"  # the report says it is log p(x | y)
    names = {p.name for p in run.iterdir()}
    assert {"samples_by_digit.png", "reconstructions.png", "latent_manifold_digit0.png"} <= names
    capsys.readouterr()

    assert main(["sample", str(run), "--digit", "3", "-n", "9"]) == 0
    assert (run / "samples_digit3_n9_seed0.png").stat().st_size > 1000
    assert main(["sample", str(run), "--digit", "3", "--manifold"]) == 0
    assert (run / "latent_manifold_digit3.png").exists()
    capsys.readouterr()
    assert main(["sample", str(run), "--digit", "10"]) == 2
    assert "--digit 10 is outside 0..9" in capsys.readouterr().err

    monkeypatch.setenv("PYROVAE_DATA", str(mnist_root))
    assert main(["evaluate", str(run), "-k", "2", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["log_likelihood_of"] == "log p(x | y)"


def test_cli_sample_digit_of_an_unconditional_run_is_refused(tmp_path, capsys):
    config = RunConfig(model=VAEConfig(z_dim=2, hidden=(8,)), trainer=TrainerConfig(epochs=1, batch_size=64))
    fit(config, tmp_path, data=random_binary_data(64), progress=False)
    assert main(["sample", str(tmp_path), "--digit", "3"]) == 2
    assert "unconditional VAE; --digit and --manifold need a run trained with --conditional" in \
        capsys.readouterr().err
