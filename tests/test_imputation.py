"""Imputation (pyrovae.evaluation.imputation, pyrovae impute): on a linear-Gaussian model the importance-weighted
imputation is the closed-form conditional Gaussian mean and its draws have the conditional variance; observed
values are never changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pyrovae import VAE
from pyrovae.components.likelihoods import Normal
from pyrovae.evaluation.baselines import ProbabilisticPCA
from pyrovae.evaluation.imputation import imputation_metrics, impute
from pyrovae.torchtools import inverse_softplus


class _PosteriorEncoder(nn.Module):
    """q(z | x_o) of pPCA: the exact posterior's mean and its marginal standard deviations (inflated by
    ``inflate``, a safe importance sampler; the exact posterior is not diagonal once entries are missing)."""

    def __init__(self, w, mu, s2, inflate=1.3):
        super().__init__()
        self.w, self.mu, self.s2, self.inflate = w, mu, s2, inflate

    def forward(self, x, mask=None):
        mask = torch.ones_like(x) if mask is None else mask
        wm = self.w * mask[..., :, None]  # (b, d, q): the rows of W of the observed entries
        precision = torch.eye(self.w.shape[1], dtype=x.dtype) + wm.transpose(-1, -2) @ wm / self.s2
        cov = torch.linalg.inv(precision)
        loc = (cov @ (wm.transpose(-1, -2) @ ((x - self.mu) * mask)[..., None]))[..., 0] / self.s2
        sd = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt() * self.inflate
        return torch.cat([loc, inverse_softplus(sd - 1e-4)], -1)


class _Linear(nn.Module):
    def __init__(self, w, mu):
        super().__init__()
        self.w, self.mu = w, mu

    def forward(self, z):
        return (z @ self.w.T + self.mu).unflatten(-1, (1, self.w.shape[0]))


def _ppca_vae(d=6, q=2, n=400):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, q)) @ rng.normal(size=(q, d)) * 2 + 0.5 * rng.normal(size=(n, d)) + 1.0
    ppca = ProbabilisticPCA().fit(x, q)
    w, mu, s2 = (torch.tensor(a, dtype=torch.float64) for a in (ppca.W, ppca.mean, ppca.noise_variance))
    vae = VAE(z_dim=q, x_shape=(d,), likelihood=Normal((d,), scale=float(s2.sqrt())),
              encoder=_PosteriorEncoder(w, mu, s2), decoder=_Linear(w, mu), masked_inputs=True).double()
    return vae, torch.tensor(x), w, mu, s2


def _conditional(x, mask, w, mu, s2):
    """E[x_m | x_o] and Var[x_m | x_o] (diagonal) of x ~ N(mu, W W^T + s2 I), per row."""
    cov = w @ w.T + s2 * torch.eye(len(mu), dtype=x.dtype)
    mean, var = x.clone(), torch.zeros_like(x)
    for i in range(x.shape[0]):
        o, m = mask[i].bool(), ~mask[i].bool()
        gain = cov[m][:, o] @ torch.linalg.inv(cov[o][:, o])
        mean[i, m] = mu[m] + gain @ (x[i, o] - mu[o])
        var[i, m] = torch.diagonal(cov[m][:, m] - gain @ cov[o][:, m])
    return mean, var


def test_imputation_of_a_linear_gaussian_model_is_the_closed_form_conditional_mean():
    vae, x, w, mu, s2 = _ppca_vae()
    x = x[:40]
    mask = (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) > 0.4).double()
    mask[0] = 0  # nothing observed: the imputation is the prior mean mu
    exact_mean, exact_var = _conditional(x, mask, w, mu, s2)
    missing = mask == 0
    result = impute(vae, x.masked_fill(missing, 0.0), mask, num_samples=4000, num_imputations=2000, seed=0)
    torch.testing.assert_close(result["imputed"], exact_mean, rtol=0, atol=0.05)
    torch.testing.assert_close(result["imputed"][0], mu, rtol=0, atol=0.05)
    draws = result["draws"]
    torch.testing.assert_close(draws.mean(0)[missing], exact_mean[missing], rtol=0, atol=0.15)
    ratio = draws.var(0)[missing] / exact_var[missing]
    assert 0.85 < ratio.mean() < 1.15  # the draws have the conditional variance
    truth_draws = exact_mean + exact_var.sqrt() * torch.randn(x.shape, generator=torch.Generator().manual_seed(2),
                                                              dtype=x.dtype)
    coverage = imputation_metrics(truth_draws, mask, result)["coverage"]
    assert 0.8 < coverage < 0.97  # 90% intervals cover draws of the true conditional about 90% of the time


def test_observed_values_are_never_changed():
    vae, x, *_ = _ppca_vae()
    x = x[:20]
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    result = impute(vae, x, mask.double(), num_samples=50, num_imputations=5, seed=0)
    for key in ("imputed", "lower", "upper"):
        assert torch.equal(result[key][mask], x[mask])
    assert torch.equal(result["draws"][:, mask], x[mask].expand(5, -1))
    assert not torch.equal(result["imputed"][~mask], x[~mask])


def test_imputation_is_reproducible_from_its_seed_and_leaves_the_callers_random_state():
    vae, x, *_ = _ppca_vae()
    x, mask = x[:10], (torch.arange(60).reshape(10, 6) % 3 != 0).double()
    state = torch.get_rng_state()
    a = impute(vae, x, mask, num_samples=30, num_imputations=3, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    b = impute(vae, x, mask, num_samples=30, num_imputations=3, seed=4)
    assert torch.equal(a["draws"], b["draws"]) and torch.equal(a["imputed"], b["imputed"])


def test_imputation_needs_a_model_that_takes_a_mask():
    from pyrovae.errors import DataError, UnsupportedError
    from pyrovae.models import Autoencoder
    vae, x, *_ = _ppca_vae()
    with pytest.raises(DataError, match="shape"):
        impute(vae, x[:4], torch.ones(4, 5))
    with pytest.raises(UnsupportedError, match="mask"):
        impute(Autoencoder(z_dim=2, x_shape=(6,), hidden=(4,)), x[:4].float(), torch.ones(4, 6))


def test_pyrovae_impute_fills_the_empty_cells_and_leaves_every_other_cell_byte_identical(tmp_path):
    import pandas as pd

    from pyrovae import DataConfig, RunConfig, TrainerConfig, VAEConfig
    from pyrovae.app import runs
    from pyrovae.app.cli import main
    from pyrovae.training.config import EvaluationConfig

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)) @ [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [0.0, 0.5, 1.0]] + [10, -3, 0.25]
    frame = pd.DataFrame(x.round(3), columns=["a", "b", "c"]).assign(kind=rng.choice(["u", "v"], 60))
    frame = frame.astype(object)
    frame.iloc[rng.random(60) < 0.3, 1] = ""
    frame.iloc[::7, 0] = "NA"
    frame.to_csv(tmp_path / "t.csv", index=False)
    config = RunConfig(model=VAEConfig(z_dim=2, hidden=(8,), likelihood="normal"),
                       trainer=TrainerConfig(epochs=2, batch_size=16),
                       data=DataConfig(source=str(tmp_path / "t.csv"), missing="mask", data_options={"drop": "kind"}),
                       evaluation=EvaluationConfig(num_samples=3))
    runs.train_run(config, tmp_path / "run", progress=False)
    assert main(["impute", str(tmp_path / "run"), "--data", str(tmp_path / "t.csv"), "--out",
                 str(tmp_path / "done.csv"), "--multiple", "2", "-k", "20"]) == 0
    before = (tmp_path / "t.csv").read_text().splitlines()
    for name in ("done.csv", "done.1.csv", "done.2.csv"):
        after = (tmp_path / name).read_text().splitlines()
        assert after[0] == before[0] and len(after) == len(before)
        for row_before, row_after in zip(before[1:], after[1:]):
            for cell_before, cell_after in zip(row_before.split(","), row_after.split(",")):
                if cell_before not in ("", "NA"):
                    assert cell_after == cell_before  # observed cells: the same text
                else:
                    assert np.isfinite(float(cell_after))  # filled, in the data's own units
    done = pd.read_csv(tmp_path / "done.csv")
    assert done.isna().sum().sum() == 0 and abs(done["a"].mean() - 10) < 3  # back in the data's own units
    report = runs.impute_run(tmp_path / "run", tmp_path / "t.csv", tmp_path / "again.csv", num_samples=10)
    assert report["filled"] == {"a": 9, "b": int((frame["b"] == "").sum()), "c": 0}
    assert main(["impute", str(tmp_path / "run"), "--data", str(tmp_path / "missing.csv"), "--out",
                 str(tmp_path / "x.csv")]) == 2  # one clear error, no traceback
