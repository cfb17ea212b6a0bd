"""Quadrant completion with a structured-output CVAE (pyrovae.structured)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

from pyrovae.app.cli import main
from pyrovae.app.figures import draw_completions
from pyrovae.app.runs import train_run
from pyrovae.data import DataConfig
from pyrovae.errors import ConfigError, DataError, RunDirError
from pyrovae.evaluation import log_likelihood
from pyrovae.inference import importance_weights
from pyrovae.models.structured import (
    MASK_VALUE, BaselineNet, StructuredConfig, StructuredCVAE, check_pair, quadrant_masks, split_quadrants,
)
from pyrovae.settings import make_config
from pyrovae.training import EvaluationConfig, RunConfig, TrainerConfig, fit, load_run

from .conftest import logmeanexp, random_binary_data


def binary_images(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()


def tiny_cvae(z_dim: int = 3, z_strength: float = 1.0, seed: int = 0) -> StructuredCVAE:
    """An untrained small CVAE; ``z_strength`` scales how strongly the generation net reads z, so that
    p(y | x, z) varies with z and the choice of proposal matters."""
    torch.manual_seed(seed)
    cvae = StructuredCVAE(z_dim=z_dim, hidden=(32,)).eval()
    with torch.no_grad():
        cvae.generation_net.from_z.weight.mul_(z_strength)
    return cvae


def tiny_config(epochs: int = 1, baseline_epochs=None, visible: int = 2, **data) -> RunConfig:
    return RunConfig(model=StructuredConfig(visible=visible, z_dim=3, hidden=(32,), baseline_epochs=baseline_epochs),
                     trainer=TrainerConfig(epochs=epochs, batch_size=32, lr=3e-3),
                     data=DataConfig(**data), evaluation=EvaluationConfig(num_samples=5))


def cll(cvae, x, y, num_samples, proposal: str = "recognition", **options):
    """The importance-sampled log p(y | x) with the recognition network or the prior network as proposal."""
    return log_likelihood(cvae.model, cvae.guide, x, y, num_samples=num_samples,
                          proposal=cvae.prior_proposal if proposal == "prior" else None, **options)


# --- the task ---------------------------------------------------------------------------------


@pytest.mark.parametrize("visible", [1, 2, 3])
def test_quadrant_masks_partition_the_image(visible):
    seen, hidden = quadrant_masks(visible)
    assert seen.shape == hidden.shape == (1, 28, 28) and seen.dtype == torch.bool
    assert not (seen & hidden).any() and (seen | hidden).all()
    assert seen.sum() == visible * 14 * 14 and hidden.sum() == (4 - visible) * 14 * 14
    # every quadrant is wholly visible or wholly hidden
    for rows in (slice(0, 14), slice(14, 28)):
        for cols in (slice(0, 14), slice(14, 28)):
            assert seen[0, rows, cols].all() or hidden[0, rows, cols].all()


def test_quadrant_layout_is_the_tutorials():
    assert quadrant_masks(1)[0][0, 14:, :14].all()           # 1: bottom-left
    assert quadrant_masks(2)[0][0, :, :14].all()             # 2: left half
    assert quadrant_masks(3)[1][0, 14:, 14:].all()           # 3: all but bottom-right
    assert (quadrant_masks(1)[0] <= quadrant_masks(2)[0]).all() and (quadrant_masks(2)[0] <= quadrant_masks(3)[0]).all()


@pytest.mark.parametrize("visible", [1, 2, 3])
def test_split_quadrants_round_trips(visible):
    images = binary_images()
    x, y = split_quadrants(images, visible)
    _, hidden = quadrant_masks(visible)
    assert torch.equal(x == MASK_VALUE, hidden.expand_as(x)) and torch.equal(y != MASK_VALUE, hidden.expand_as(y))
    assert torch.equal(torch.where(x == MASK_VALUE, y, x), images)
    check_pair(x, y)


@pytest.mark.parametrize("visible", [0, 4, -1, 2.0, True, "2", None])
def test_visible_outside_1_2_3_is_one_clear_error(visible):
    with pytest.raises(ConfigError, match=r"visible=.* choose 1, 2 or 3"):
        quadrant_masks(visible)
    with pytest.raises(ConfigError, match=r"choose 1, 2 or 3"):
        split_quadrants(binary_images(), visible)


def test_config_rejects_a_bad_visible_by_name():
    with pytest.raises(ConfigError, match="visible=4"):
        make_config(StructuredConfig, visible=4)


@pytest.mark.parametrize("images, match", [
    (torch.rand(4, 1, 28, 28), "binarized"),
    (torch.ones(4, 784), r"shape \(4, 784\)"),
    (torch.ones(4, 1, 28, 28, dtype=torch.uint8), "dtype"),
    (torch.full((4, 1, 28, 28), math.nan), "binarized"),
])
def test_bad_images_raise_one_clear_error(images, match):
    with pytest.raises(DataError, match=match):
        split_quadrants(images, 2)


def test_mismatched_x_and_y_raise():
    x, y = split_quadrants(binary_images(), 2)
    _, y1 = split_quadrants(binary_images(), 1)
    with pytest.raises(DataError, match="exactly where x holds -1"):
        check_pair(x, y1)
    with pytest.raises(DataError, match="no hidden pixel"):
        check_pair(binary_images())


# --- the baseline -------------------------------------------------------------------------------


def test_baseline_nll_equals_a_hand_computation():
    torch.manual_seed(0)
    baseline = BaselineNet(hidden=(16,))
    x, y = split_quadrants(binary_images(4), 1)
    nll = baseline.neg_log_likelihood(x, y)
    assert nll.shape == (4,)
    logits = baseline(x).detach().double().numpy()
    xs, ys = x.numpy(), y.numpy()
    for n in range(4):
        total = 0.0
        for i in np.ndindex(xs.shape[1:]):
            if xs[n][i] == -1:  # only hidden pixels count
                p = 1 / (1 + math.exp(-logits[n][i]))
                total -= math.log(p) if ys[n][i] == 1 else math.log(1 - p)
        assert nll[n].item() == pytest.approx(total, rel=1e-5)


def test_baseline_pyro_program_has_the_nll_as_its_exact_elbo():
    torch.manual_seed(0)
    baseline = BaselineNet(hidden=(16,))
    x, y = split_quadrants(binary_images(8), 3)
    loss = Trace_ELBO().differentiable_loss(baseline.model, baseline.guide, x, y)
    torch.testing.assert_close(loss, baseline.neg_log_likelihood(x, y).sum())


# --- the CVAE as a Pyro program -----------------------------------------------------------------


def test_model_and_guide_sites_have_the_right_shapes():
    cvae = tiny_cvae(z_dim=3)
    x, y = split_quadrants(binary_images(5), 2)
    guide_trace = poutine.trace(cvae.guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(cvae.model, trace=guide_trace)).get_trace(x, y)
    model_trace.compute_log_prob()
    assert guide_trace.nodes["z"]["value"].shape == (5, 3)
    assert model_trace.nodes["z"]["fn"].event_shape == (3,) and model_trace.nodes["z"]["fn"].batch_shape == (5,)
    assert model_trace.nodes["y"]["fn"].event_shape == (1, 28, 28)
    assert model_trace.nodes["y"]["log_prob"].shape == (5,)
    completed = cvae.model(x)  # y unobserved: sampled on hidden pixels, x kept on visible ones
    assert completed.shape == (5, 1, 28, 28)
    assert torch.equal(completed[x != MASK_VALUE], x[x != MASK_VALUE])
    assert ((completed == 0) | (completed == 1)).all()
    samples = cvae.sample_completions(x, num_samples=4)
    assert samples.shape == (4, 5, 1, 28, 28)
    assert torch.equal(samples[:, x != MASK_VALUE], x[x != MASK_VALUE].expand(4, -1))
    assert importance_weights(cvae.model, cvae.guide, 7, x, y).log_weights.shape == (7, 5)


def test_the_likelihood_counts_hidden_pixels_only():
    cvae = tiny_cvae()
    x, y = split_quadrants(binary_images(3), 1)
    z = torch.randn(3, 3)
    trace = poutine.trace(poutine.condition(cvae.model, data={"z": z})).get_trace(x, y)
    log_p = trace.nodes["y"]["fn"].log_prob(trace.nodes["y"]["value"])
    probs = torch.sigmoid(cvae.generation_net(x, z))
    hidden = x == MASK_VALUE
    by_hand = torch.where(hidden, torch.distributions.Bernoulli(probs).log_prob(y.clamp(min=0)), 0).sum((1, 2, 3))
    torch.testing.assert_close(log_p, by_hand)


def test_the_prior_is_learned_and_depends_on_x():
    cvae = tiny_cvae()
    x, _ = split_quadrants(binary_images(2), 2)
    prior = cvae.prior(x)
    assert not torch.allclose(prior.base_dist.loc[0], prior.base_dist.loc[1])
    assert all(p.requires_grad for p in cvae.prior_net.parameters())
    assert not set(map(id, cvae.baseline.parameters())) & set(map(id, cvae.cvae_parameters()))


# --- importance-sampled -log p(y | x) -----------------------------------------------------------


def test_importance_sampled_cll_is_at_least_the_elbo_from_the_same_draws():
    cvae = tiny_cvae(z_strength=5.0)
    x, y = split_quadrants(binary_images(32), 2)
    out = cll(cvae, x, y, 20, progress=False)
    assert out["log_likelihood"].shape == out["elbo"].shape == (32,)
    assert (out["log_likelihood"] >= out["elbo"] - 1e-4).all()
    assert (out["log_likelihood"] > out["elbo"]).float().mean() > 0.9


def test_a_small_memory_cap_splits_the_cll_into_passes_with_the_same_estimate():
    cvae = tiny_cvae(z_strength=5.0)
    x, y = split_quadrants(binary_images(32), 2)
    pyro.set_rng_seed(0)
    whole = cll(cvae, x, y, 64, max_chunk=10**6, progress=False)
    assert whole["plan"]["images_per_pass"] == 32
    pyro.set_rng_seed(1)
    capped = cll(cvae, x, y, 64, max_memory_gb=2e-4, progress=False)
    assert capped["plan"]["source"] == "max_memory_gb" and capped["plan"]["pairs"] < 32 * 64
    assert (capped["log_likelihood"] >= capped["elbo"] - 1e-4).all()
    difference = capped["log_likelihood"] - whole["log_likelihood"]  # independent draws of one estimate
    assert difference.mean().abs() < 4 * difference.std() / math.sqrt(32) + 1e-3


def test_our_elbo_matches_pyros_trace_elbo():
    cvae = tiny_cvae(z_strength=2.0)
    x, y = split_quadrants(binary_images(32), 2)
    pyro.set_rng_seed(0)
    ours = cll(cvae, x, y, 500, progress=False)["elbo"]
    elbo = Trace_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        pyros = -elbo.loss(cvae.model, cvae.guide, x, y) / 32
    assert ours.mean().item() == pytest.approx(pyros, abs=0.2)  # the log-likelihood is ~3.5 nats above


def test_importance_sampled_cll_does_not_decrease_with_k_on_average():
    cvae = tiny_cvae(z_strength=5.0)
    x, y = split_quadrants(binary_images(64), 2)
    pyro.set_rng_seed(0)
    means = [torch.stack([cll(cvae, x, y, k, progress=False)["log_likelihood"]
                          for _ in range(4)]).mean().item() for k in (1, 10, 100)]
    assert means[0] < means[1] < means[2]


class _PriorAsRecognition(nn.Module):
    """q(z | x, y) := p(z | x): the recognition net replaced by the prior net (ignoring y)."""

    def __init__(self, cvae: StructuredCVAE):
        super().__init__()
        self.cvae = [cvae]  # a list, so as not to register the CVAE as its own submodule

    def forward(self, x, y):
        cvae = self.cvae[0]
        return cvae.prior_net(x, torch.sigmoid(cvae.baseline(x)))

    def features(self, x, y):
        cvae = self.cvae[0]
        return cvae.prior_net.features(x, torch.sigmoid(cvae.baseline(x)))


def test_recognition_net_equal_to_the_prior_gives_the_prior_sampling_estimate():
    cvae = tiny_cvae(z_strength=5.0)
    cvae.recognition_net = _PriorAsRecognition(cvae)
    x, y = split_quadrants(binary_images(8), 1)
    pyro.set_rng_seed(3)
    importance = cll(cvae, x, y, 50, proposal="recognition", progress=False)
    pyro.set_rng_seed(3)
    prior_sampling = cll(cvae, x, y, 50, proposal="prior", progress=False)
    torch.testing.assert_close(importance["log_likelihood"], prior_sampling["log_likelihood"])
    # ...which is log (1/K) sum_k p(y | x, z_k), z_k ~ p(z | x), computed here by hand from the same draws
    pyro.set_rng_seed(3)
    z = cvae.prior(x).sample((50,))
    with torch.no_grad():
        probs = torch.sigmoid(cvae.generation_net(x, z))
    log_p = torch.distributions.Bernoulli(probs).log_prob(y.clamp(min=0))
    log_p = torch.where(x == MASK_VALUE, log_p, 0).sum((2, 3, 4))
    torch.testing.assert_close(importance["log_likelihood"], logmeanexp(log_p, 0))


def log_likelihood_by_quadrature(cvae: StructuredCVAE, x, y, n: int = 150, width: float = 7.0) -> torch.Tensor:
    """log p(y | x) = log of the integral of p(z | x) p(y | x, z) over z, for z_dim = 2, by the rectangle
    rule on an n x n grid over loc +- width * scale of p(z | x): exact to quadrature error."""
    prior = cvae.prior(x).base_dist
    out = []
    for i in range(x.shape[0]):
        u = torch.linspace(-width, width, n)
        g0, g1 = prior.loc[i, 0] + prior.scale[i, 0] * u, prior.loc[i, 1] + prior.scale[i, 1] * u
        z = torch.stack(torch.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 1, 2)
        with torch.no_grad():
            logits = cvae.generation_net(x[i:i + 1], z)
            log_y = torch.distributions.Bernoulli(logits=logits).log_prob(y[i:i + 1].clamp(min=0))
            log_y = torch.where(x[i:i + 1] == MASK_VALUE, log_y, 0).sum((1, 2, 3, 4))
            log_z = torch.distributions.Normal(prior.loc[i], prior.scale[i]).log_prob(z[:, 0]).sum(-1)
        out.append(torch.logsumexp(log_y + log_z, 0) + torch.log((g0[1] - g0[0]) * (g1[1] - g1[0])))
    return torch.stack(out).detach()


def test_importance_sampled_cll_converges_to_the_exact_value():
    # z_dim = 2 and 8x8 images, so that log p(y | x) is computable by quadrature; the recognition net is
    # shifted away from the prior, so that a missing or inverted p(z|x)/q(z|x,y) factor would show.
    torch.manual_seed(0)
    cvae = StructuredCVAE(z_dim=2, hidden=(32,), image_shape=(1, 8, 8)).eval()
    with torch.no_grad():
        cvae.generation_net.from_z.weight.mul_(3.0)
        cvae.recognition_net.net[-1].bias[:2] += 0.3
    images = (torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    x, y = split_quadrants(images, 2)
    exact = log_likelihood_by_quadrature(cvae, x, y)
    pyro.set_rng_seed(0)
    importance = cll(cvae, x, y, 4000, progress=False)
    prior_sampling = cll(cvae, x, y, 20000, proposal="prior", progress=False)
    assert (importance["log_likelihood"] - exact).mean().abs() < 0.03
    torch.testing.assert_close(importance["log_likelihood"], exact, atol=0.25, rtol=0)
    torch.testing.assert_close(prior_sampling["log_likelihood"], exact, atol=0.05, rtol=0)
    assert (exact - importance["elbo"]).mean() > 0.3  # the bound is far from tight: the test has teeth


def test_bad_k_raises():
    cvae = tiny_cvae()
    x, y = split_quadrants(binary_images(2), 2)
    with pytest.raises(ConfigError, match="num_samples=0"):
        cll(cvae, x, y, 0)


# --- training and run folders -------------------------------------------------------------------


def test_one_epoch_writes_its_files_and_reloads(tmp_path):
    data = random_binary_data(128)
    cvae, history = fit(tiny_config(), tmp_path, data=data, progress=False)
    assert [(h["stage"], h["epoch"]) for h in history] == [("baseline", 1), ("cvae", 1)]
    assert history[0]["train_neg_cll"] > 0 and history[1]["train_elbo"] < 0
    assert "beta" not in history[0] and history[1]["beta"] == 1.0  # the baseline has no latent site to weigh
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "checkpoint.pt", "metrics.json"}
    assert json.loads((tmp_path / "metrics.json").read_text())["history"] == history
    loaded, config, state = load_run(tmp_path)
    assert isinstance(loaded, StructuredCVAE) and state["kind"] == "structured-cvae"
    assert config == tiny_config() and (state["stage_name"], state["epoch"]) == ("cvae", 1)
    for (name, a), b in zip(cvae.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    path = draw_completions(loaded, data[2].images[:4], tmp_path / "completions.png", num_samples=2)
    assert path.stat().st_size > 0
    with pytest.raises(RunDirError, match="--resume"):
        fit(tiny_config(), tmp_path, data=data, progress=False)


@pytest.mark.parametrize("stop_at", [("baseline", 1), ("cvae", 1)])
def test_resume_continues_the_same_run(tmp_path, stop_at):
    data = random_binary_data(128)
    config = tiny_config(epochs=2)
    straight, _ = fit(config, tmp_path / "a", data=data, progress=False)

    def stop(model, row, path):
        if (row["stage"], row["epoch"]) == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "b", data=data, progress=False, on_epoch_end=stop)
    torch.manual_seed(123)  # resuming must not depend on the process's RNG state
    resumed, history = fit(config, tmp_path / "b", resume=True, data=data, progress=False)
    assert [(h["stage"], h["epoch"]) for h in history] == [("baseline", 1), ("baseline", 2), ("cvae", 1), ("cvae", 2)]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


@pytest.mark.mnist
def test_structured_run_on_an_mnist_slice_writes_metrics_and_figure(tmp_path, mnist_root):
    config = tiny_config(visible=1, train_size=256, test_size=32, data_dir=str(mnist_root))
    metrics = train_run(config, tmp_path, progress=False)
    test = metrics["test"]
    assert test["log_likelihood_of"] == "log p(y | x)" and test["num_images"] == 32 and test["num_samples"] == 5
    assert test["log_likelihood_bits_per_dim"] == pytest.approx(-test["log_likelihood_nats"] / (3 * 196 * math.log(2)))
    assert test["elbo_nats"] <= test["log_likelihood_nats"] < 0
    assert test["baseline_neg_cll"] > 0
    assert (tmp_path / "completions.png").stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] == test


@pytest.mark.mnist
def test_cli_structured_runs_and_rejects_a_bad_visible(tmp_path, mnist_root, capsys):
    out = tmp_path / "run"
    rc = main(["structured", "--visible", "3", "--epochs", "1", "--train-size", "128", "--test-size", "8",
               "-k", "4", "--z-dim", "2", "--hidden", "16", "--data-dir", str(mnist_root), "--out", str(out),
               "--no-progress"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_dir"] == str(out) and printed["log_likelihood_of"] == "log p(y | x)"
    assert json.loads((out / "config.json").read_text())["model"]["visible"] == 3
    assert (out / "completions.png").exists() and (out / "metrics.json").exists()
    with pytest.raises(SystemExit) as e:
        main(["structured", "--visible", "4", "--out", str(tmp_path / "bad")])
    assert e.value.code == 2
    assert "invalid choice: 4" in capsys.readouterr().err
