"""Missing values: the mask travels from the data (NaN or an explicit boolean mask) through every batch into the
VAE's programs; the likelihood counts observed entries only (values and gradients), an all-observed mask gives
the unmasked numbers exactly, and MIWAE is IWAE over the masked programs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

from pyrovae import ConfigError, DataConfig, DataError, RunConfig, TrainerConfig, VAE, VAEConfig
from pyrovae.app import runs
from pyrovae.components.likelihoods import Normal, Poisson, StudentT, masked
from pyrovae.data import prepare_data
from pyrovae.errors import UnsupportedError
from pyrovae.inference import ELBO, IWAE
from pyrovae.training.config import EvaluationConfig


def _vae(masked_inputs=True, likelihood=None, d=5):
    torch.manual_seed(0)
    return VAE(z_dim=2, x_shape=(d,), hidden=(8,), masked_inputs=masked_inputs,
               likelihood=likelihood or Normal((d,), learned_scale=True))


def _data(n=12, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    mask = (torch.rand(n, d, generator=g) > 0.4).float()
    mask[0] = 0.0  # a data point with nothing observed
    return x.masked_fill(mask == 0, 0.0), mask


def _loss_and_grads(vae, objective, x, mask, seed=0):
    vae.zero_grad()
    x = x.clone().requires_grad_(True)
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(vae.model, vae.guide, x, mask) if mask is not None else \
        objective.differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in vae.parameters()], x.grad


@pytest.mark.parametrize("objective", [ELBO(), ELBO(num_particles=3, analytic_kl=False), IWAE(4)])
def test_a_missing_entrys_value_changes_neither_the_loss_nor_any_gradient(objective):
    vae = _vae()
    x, mask = _data()
    loss, grads, x_grad = _loss_and_grads(vae, objective, x, mask)
    other = torch.where(mask == 0, 100 * torch.randn_like(x), x)  # any value where missing
    loss2, grads2, _ = _loss_and_grads(vae, objective, other, mask)
    torch.testing.assert_close(loss2, loss, rtol=0, atol=0)
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g2, g, rtol=0, atol=0)
    assert (x_grad[mask == 0] == 0).all() and (x_grad[mask == 1] != 0).any()  # no gradient from a missing entry


def test_the_masked_log_density_is_the_sum_of_the_observed_entries_log_densities():
    for likelihood, x in [(Normal((4,), learned_scale=True), torch.randn(3, 4)),
                          (StudentT((4,), learned_scale=True), torch.randn(3, 4)),
                          (Poisson((4,)), torch.poisson(torch.full((3, 4), 2.0)))]:
        params = torch.randn(3, likelihood.num_params, 4)
        d = likelihood(params)
        mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
        expected = (d.base_dist.log_prob(x) * mask).sum(-1)
        torch.testing.assert_close(masked(d, mask).log_prob(x), expected)
        torch.testing.assert_close(masked(d, torch.ones_like(mask)).log_prob(x), d.log_prob(x))
        torch.testing.assert_close(masked(d, mask).mean, d.mean)  # draws and means are of every entry
        assert masked(d, mask).sample((2,)).shape == (2, 3, 4)


@pytest.mark.parametrize("masked_inputs", [False, True])
@pytest.mark.parametrize("objective", [ELBO(), IWAE(5)])
def test_an_all_observed_mask_gives_exactly_the_unmasked_numbers(objective, masked_inputs):
    """With nothing missing, ELBO and MIWAE are the ELBO and IWAE of the complete data, draw for draw."""
    vae = _vae(masked_inputs)
    x, _ = _data()
    loss, grads, _ = _loss_and_grads(vae, objective, x, torch.ones_like(x))
    loss0, grads0, _ = _loss_and_grads(vae, objective, x, None)
    torch.testing.assert_close(loss, loss0, rtol=0, atol=0)
    for g, g0 in zip(grads, grads0):
        torch.testing.assert_close(g, g0, rtol=0, atol=0)


def test_miwae_equals_iwae_when_nothing_is_missing():
    vae = _vae()
    x, _ = _data()
    pyro.set_rng_seed(3)
    miwae = IWAE(10).bound(vae.model, vae.guide, x, torch.ones_like(x))
    pyro.set_rng_seed(3)
    iwae = IWAE(10).bound(vae.model, vae.guide, x)
    torch.testing.assert_close(miwae, iwae, rtol=0, atol=0)


def test_a_data_point_with_nothing_observed_has_no_likelihood_term():
    vae = _vae()
    x, mask = _data()
    trace = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=pyro.poutine.trace(vae.guide).get_trace(x, mask))
                               ).get_trace(x, mask)
    trace.compute_log_prob()
    empty = mask.sum(-1) == 0
    assert empty[0] and not empty.all()
    assert torch.equal(trace.nodes["x"]["mask"], ~empty)  # the site's own mask (poutine.mask)
    log_prob = trace.nodes["x"]["log_prob"]
    assert (log_prob[empty] == 0).all() and (log_prob[~empty] != 0).all()


def test_the_encoder_reads_the_mask_beside_the_zero_filled_data():
    vae = _vae(masked_inputs=True)
    assert vae.encoder.net[0].in_features == 10
    x, mask = _data()
    h = vae.guide_features(x, mask)
    h_other_mask = vae.guide_features(x, torch.ones_like(mask))
    assert not torch.allclose(h, h_other_mask)  # a missing entry is told from an observed 0
    with pytest.raises(ConfigError, match="masked_inputs"):
        VAE(z_dim=2, x_shape=(1, 28, 28), network="conv", masked_inputs=True)


# --- the data ---------------------------------------------------------------------------------------------------


def _incomplete(n=60, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * [1, 2, 3, 4] + [0, 10, -5, 1]).astype(np.float32)
    x[rng.random((n, d)) < 0.25] = np.nan
    return x


def test_nan_becomes_a_mask_and_the_transform_is_fitted_on_observed_entries():
    x = _incomplete()
    train, _, test, info = prepare_data(DataConfig(source="x", missing="mask"), data=x)
    rows = np.sort(np.random.default_rng(0).permutation(60)[12:])  # the training rows (split_seed 0)
    np.testing.assert_allclose(info.transform["mean"], np.nanmean(x[rows], 0), rtol=1e-5)
    np.testing.assert_allclose(info.transform["scale"], np.nanstd(x[rows], 0), rtol=1e-4)
    for split in (train, test):
        assert split.mask is not None and split.mask.dtype == torch.float32
        assert (split.x[split.mask == 0] == 0).all() and torch.isfinite(split.x).all()
    assert int(train.mask.sum() + test.mask.sum()) == int(np.isfinite(x).sum())
    batch = next(train.batches(8, shuffle=False))
    assert torch.equal(batch["mask"], train.mask[:8])
    assert torch.equal(train.subset(slice(2, 5)).mask, train.mask[2:5])


def test_an_explicit_boolean_mask_from_python_is_the_same_as_nan():
    x = _incomplete()
    observed = np.isfinite(x)
    filled = np.nan_to_num(x, nan=123.0)
    a = prepare_data(DataConfig(source="x", missing="mask"), data=x)[0]
    for data in ((filled, observed), {"x": filled, "mask": torch.from_numpy(observed)}):
        b = prepare_data(DataConfig(source="x", missing="mask"), data=data)[0]
        assert torch.equal(a.mask, b.mask) and torch.equal(a.x, b.x)


def test_missing_values_are_refused_unless_masked():
    x = _incomplete()
    with pytest.raises(DataError, match="missing='mask'"):
        prepare_data(DataConfig(source="x"), data=x)
    with pytest.raises(ConfigError, match="missing='mask'"):
        prepare_data(DataConfig(source="x"), data=(np.nan_to_num(x), np.isfinite(x)))
    x[3, 1] = np.inf
    with pytest.raises(DataError, match="infinite"):
        prepare_data(DataConfig(source="x", missing="mask"), data=x)


def _config(tmp_path, kind="vae", **data) -> RunConfig:
    model = VAEConfig(z_dim=2, hidden=(8,), likelihood="normal") if kind == "vae" else \
        {"kind": kind, "z_dim": 2, "hidden": [8], "likelihood": "normal"}
    return RunConfig(model=model, trainer=TrainerConfig(epochs=2, batch_size=16, elbo="IWAE", num_particles=3),
                     data=DataConfig(source=str(tmp_path / "t.csv"), missing="mask", **data),
                     evaluation=EvaluationConfig(num_samples=3))


def test_a_table_with_empty_cells_trains_and_evaluates_with_the_miwae_bound(tmp_path):
    pd.DataFrame(_incomplete(), columns=list("abcd")).to_csv(tmp_path / "t.csv", index=False)
    config = _config(tmp_path, validation_size=8)
    assert config.model.masked_inputs  # on by default with missing='mask'
    metrics = runs.train_run(config, tmp_path / "run", progress=False)
    assert np.isfinite(metrics["test"]["log_likelihood_nats"])
    assert np.isfinite(runs.evaluate_run(tmp_path / "run", num_samples=3, probe=False,
                                         latent_statistics=False)["log_likelihood_nats"])


def test_a_family_without_masks_refuses_data_with_missing_entries(tmp_path):
    pd.DataFrame(_incomplete(), columns=list("abcd")).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UnsupportedError, match="missing values"):
        runs.train_run(_config(tmp_path, kind="autoencoder"), tmp_path / "run", progress=False)


# --- missingness patterns ---------------------------------------------------------------------------------------


def test_mcar_hides_entries_at_the_rate_independently_of_their_values():
    from pyrovae.data.missing import mcar
    x = np.random.default_rng(0).normal(size=(4000, 5)).astype(np.float32)
    hidden = np.isnan(mcar(x, 0.3, seed=1))
    assert abs(hidden.mean() - 0.3) < 0.01
    assert abs(x[hidden].mean()) < 0.05  # as many large values hidden as small ones
    assert np.array_equal(hidden, np.isnan(mcar(torch.from_numpy(x), 0.3, seed=1).numpy()))  # tensors too
    assert not np.isnan(x).any()  # a copy


def test_self_masking_hides_only_values_above_the_column_mean():
    from pyrovae.data.missing import mnar_self_masking
    x = np.random.default_rng(0).normal(size=(4000, 3)) + [0, 5, -5]
    hidden = np.isnan(mnar_self_masking(x, 0.6, seed=0))
    above = x > x.mean(0)
    assert not hidden[~above].any() and abs(hidden[above].mean() - 0.6) < 0.03
    with pytest.raises(ConfigError, match="rate"):
        mnar_self_masking(x, 1.5)
