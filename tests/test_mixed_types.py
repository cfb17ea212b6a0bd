"""Mixed-type tables (issue 21, item 3): the mixed likelihood's per-type log probabilities are the torch
distributions', missing cells of any type change neither the loss nor the gradients, schemas are inferred and
checked against tables with one clear error per misfit column, and a table with text categories goes through
train -> sample -> impute and comes back with its labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn.functional import softplus

from pyrovae import VAE
from pyrovae.components.likelihoods import masked
from pyrovae.components.mixed import STUDENT_T_DF, MixedLikelihood
from pyrovae.data.schema import decode_table, encode_frame, infer_schema
from pyrovae.errors import ConfigError, DataError

SCHEMA = [{"name": "a", "type": "real"}, {"name": "t", "type": "real", "distribution": "student_t"},
          {"name": "p", "type": "positive"}, {"name": "g", "type": "positive", "distribution": "gamma"},
          {"name": "c", "type": "count"}, {"name": "nb", "type": "count", "distribution": "negative_binomial"},
          {"name": "b", "type": "binary"}, {"name": "k", "type": "categorical", "categories": ["x", "y", "z"]},
          {"name": "o", "type": "ordinal", "categories": ["lo", "mid", "hi", "top"]}]
X = torch.tensor([[0.3, -2.0, 1.5, 0.7, 3.0, 5.0, 1.0, 2.0, 1.0],
                  [-1.0, 0.5, 0.2, 2.5, 0.0, 0.0, 0.0, 0.0, 3.0]])


def test_each_types_log_prob_is_the_torch_distributions():
    torch.manual_seed(0)
    lik = MixedLikelihood((9,), schema=SCHEMA)
    assert lik.num_params == 3 and lik.input_shape == (11,)  # the categorical's 3 logits; one-hot 3 inputs
    p = torch.randn(2, 3, 9)
    per_cell = lik(p).base_dist.log_prob(X)
    D = torch.distributions
    sp = softplus
    expected = [D.Normal(p[:, 0, 0], sp(p[:, 1, 0]) + 1e-3).log_prob(X[:, 0]),
                D.StudentT(STUDENT_T_DF, p[:, 0, 1], sp(p[:, 1, 1]) + 1e-3).log_prob(X[:, 1]),
                D.LogNormal(p[:, 0, 2], sp(p[:, 1, 2]) + 1e-3).log_prob(X[:, 2]),
                D.Gamma(sp(p[:, 0, 3]) + 1e-3, sp(p[:, 1, 3]) + 1e-3).log_prob(X[:, 3]),
                D.Poisson(sp(p[:, 0, 4]) + 1e-6).log_prob(X[:, 4])]
    mu, theta = sp(p[:, 0, 5]) + 1e-6, sp(p[:, 1, 5]) + 1e-4
    expected.append(D.NegativeBinomial(theta, logits=mu.log() - theta.log()).log_prob(X[:, 5]))
    expected.append(D.Bernoulli(logits=p[:, 0, 6]).log_prob(X[:, 6]))
    expected.append(D.Categorical(logits=p[:, :3, 7]).log_prob(X[:, 7].long()))
    # the cumulative logit: P(x <= k) = sigmoid(theta_k - eta), thresholds increasing
    raw = lik.thresholds["8"][0]
    thresholds = torch.cat([raw[:1], sp(raw[1:]) + 1e-4]).cumsum(0)
    cdf = torch.sigmoid(thresholds - p[:, 0, 8, None])
    probs = torch.cat([cdf, torch.ones(2, 1)], -1) - torch.cat([torch.zeros(2, 1), cdf], -1)
    assert torch.allclose(probs.sum(-1), torch.ones(2)) and (probs > 0).all()
    expected.append(probs.gather(-1, X[:, 8:9].long()).squeeze(-1).log())
    assert torch.allclose(per_cell, torch.stack(expected, -1), atol=1e-5)
    assert torch.allclose(lik(p).log_prob(X), per_cell.sum(-1))
    draws = lik(p).sample((500,))
    assert draws.shape == (500, 2, 9) and set(draws[..., 7].unique().tolist()) <= {0.0, 1.0, 2.0}
    assert (draws[..., 2:4] > 0).all() and set(draws[..., 6].unique().tolist()) <= {0.0, 1.0}
    mean = lik(p).mean  # categorical and ordinal: the most probable code
    assert torch.equal(mean[:, 7], p[:, :3, 7].argmax(1).float()) and torch.equal(mean[:, 8], probs.argmax(-1).float())


def test_a_missing_categorical_cell_changes_neither_loss_nor_gradients():
    torch.manual_seed(0)
    vae = VAE(z_dim=2, x_shape=(9,), hidden=(8,), likelihood=MixedLikelihood((9,), schema=SCHEMA), masked_inputs=True)
    mask = torch.ones_like(X)
    mask[0, 7] = 0  # the categorical of row 0 is missing
    mask[1, 2] = 0  # and a positive cell of row 1

    def loss_and_grads(x):
        torch.manual_seed(1)
        z = torch.randn(2, 2)
        loss = -masked(vae.likelihood(vae.decoder(z)), mask).log_prob(x).sum()
        feats = vae.guide_features(x.masked_fill(mask == 0, 0.0), mask)
        loss = loss + feats.pow(2).sum()  # the encoder's inputs too
        grads = torch.autograd.grad(loss, list(vae.parameters()))
        return loss, grads

    other = X.clone()
    other[0, 7], other[1, 2] = 1.0, 0.0  # another category, and a value outside the positive support
    (l1, g1), (l2, g2) = loss_and_grads(X), loss_and_grads(other)
    assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert all(torch.isfinite(g).all() for g in g1)
    inputs, input_mask = vae.likelihood.encoder_inputs(X, mask)
    assert inputs.shape == (2, 11) and torch.equal(inputs[0, 7:10], torch.zeros(3))  # one-hot zeroed
    assert torch.equal(input_mask[0, 7:10], torch.zeros(3)) and torch.equal(inputs[1, 7:10], torch.tensor([1.0, 0, 0]))


def test_schema_inference_on_a_small_frame():
    frame = pd.DataFrame({"h": [1.5, 2.25, -0.5, None], "n": [0, 3, 7, 2], "yes": [0, 1, 1, None],
                          "colour": ["red", "blue", None, "red"], "flag": [True, False, True, True]})
    schema = infer_schema(frame)
    assert [c["type"] for c in schema] == ["real", "count", "binary", "categorical", "binary"]
    assert schema[3]["categories"] == ["blue", "red"] and schema[3]["num_classes"] == 2
    x, filled = encode_frame(frame, schema)
    assert np.isnan(x[3, 0]) and np.isnan(x[2, 3]) and x[:, 3][[0, 1, 3]].tolist() == [1, 0, 1]
    assert x[:, 4].tolist() == [1, 0, 1, 1]
    back = decode_table(np.nan_to_num(x), filled)
    assert back["colour"].tolist()[:2] == ["red", "blue"] and back["n"].dtype == np.int64


@pytest.mark.parametrize("column, values, words", [
    ("colour", ["red", "blue", "green"], "'colour' holds the category 'green', never seen"),
    ("n", [0, -2, 1], "'n' is a count in the schema but holds -2"),
    ("yes", [0, 1, 2], "'yes' is binary in the schema but holds 2"),
])
def test_a_schema_that_does_not_fit_the_table_gets_one_error_naming_the_column(column, values, words):
    schema = [{"name": "colour", "type": "categorical", "categories": ["blue", "red"]},
              {"name": "n", "type": "count"}, {"name": "yes", "type": "binary"}]
    frame = pd.DataFrame({"colour": ["red", "blue", "red"], "n": [0, 1, 1], "yes": [0, 1, 0]})
    encode_frame(frame, schema)
    frame[column] = values
    with pytest.raises(DataError, match=words):
        encode_frame(frame, schema)
    with pytest.raises(DataError, match="column 'extra' is not in the schema"):
        encode_frame(frame.assign(extra=1.0), schema)
    with pytest.raises(ConfigError, match="needs a schema"):
        MixedLikelihood((3,))


def test_a_table_with_text_categories_round_trips_train_sample_impute(tmp_path):
    from pyrovae import DataConfig, RunConfig, TrainerConfig, VAEConfig
    from pyrovae.app import runs
    from pyrovae.app.cli import main
    from pyrovae.training.config import EvaluationConfig

    rng = np.random.default_rng(0)
    z = rng.normal(size=120)
    frame = pd.DataFrame({"height": (170 + 10 * z).round(2), "visits": rng.poisson(np.exp(1 + 0.5 * z)),
                          "smoker": (z + rng.normal(size=120) > 0).astype(int),
                          "colour": np.where(z > 0.5, "red", np.where(z < -0.5, "blue", "green"))}).astype(object)
    frame.iloc[rng.random(120) < 0.25, 3] = ""
    frame.iloc[::5, 1] = "NA"
    frame.iloc[1::6, 0] = ""
    frame.to_csv(tmp_path / "t.csv", index=False)
    config = RunConfig(model=VAEConfig(z_dim=2, hidden=(16,), likelihood="mixed"),
                       trainer=TrainerConfig(epochs=3, batch_size=32),
                       data=DataConfig(source=str(tmp_path / "t.csv"), missing="mask",
                                       data_options={"schema": "auto"}),
                       evaluation=EvaluationConfig(num_samples=3))
    runs.train_run(config, tmp_path / "run", progress=False)
    info = runs.read_data_info(tmp_path / "run")
    assert [c["type"] for c in info.schema] == ["real", "count", "binary", "categorical"]
    assert info.schema[3]["categories"] == ["blue", "green", "red"]
    assert main(["sample", str(tmp_path / "run"), "-n", "20", "--out", str(tmp_path / "s.csv")]) == 0
    drawn = pd.read_csv(tmp_path / "s.csv")
    assert set(drawn["colour"]) <= {"blue", "green", "red"} and drawn["visits"].dtype == np.int64
    assert set(drawn["smoker"]) <= {0, 1} and drawn["height"].between(100, 240).all()
    assert main(["impute", str(tmp_path / "run"), "--data", str(tmp_path / "t.csv"), "--out",
                 str(tmp_path / "done.csv"), "-k", "20"]) == 0
    before = (tmp_path / "t.csv").read_text().splitlines()
    after = (tmp_path / "done.csv").read_text().splitlines()
    assert after[0] == before[0] and len(after) == len(before)
    for row_before, row_after in zip(before[1:], after[1:]):
        for j, (cell_before, cell_after) in enumerate(zip(row_before.split(","), row_after.split(","))):
            if cell_before not in ("", "NA"):
                assert cell_after == cell_before  # observed cells: the same text
            elif j == 3:
                assert cell_after in ("blue", "green", "red")  # a label, the most probable class
            elif j == 1:
                assert cell_after.isdigit()  # a whole count
    bad = frame.copy()
    bad.iloc[0, 3] = "purple"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="'colour' holds the category 'purple', never seen"):
        runs.impute_run(tmp_path / "run", tmp_path / "bad.csv", tmp_path / "x.csv", num_samples=5)
