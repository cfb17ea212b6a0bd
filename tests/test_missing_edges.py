"""Edges of missing values, mixed tables and comparisons that a review found: each fixed, each kept so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pyrovae import ConfigError, DataConfig, RunConfig, RunDirError, TrainerConfig, VAEConfig
from pyrovae.app import runs
from pyrovae.app.compare import compare_runs
from pyrovae.data import prepare_data
from pyrovae.models import AutoencoderConfig
from pyrovae.training.config import EvaluationConfig

RNG = np.random.default_rng(0)


def _table(tmp_path, missing: float = 0.3):
    x = RNG.normal(size=(80, 4)) + 3.0
    x[RNG.random(x.shape) < missing] = np.nan
    frame = pd.DataFrame(x, columns=list("abcd")).assign(kind=RNG.choice(["u", "v", "w"], 80))
    frame.to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv"


def _run(tmp_path, name, model, **data):
    config = RunConfig(model=model, trainer=TrainerConfig(epochs=1, batch_size=16),
                       data=DataConfig(**data), evaluation=EvaluationConfig(num_samples=3))
    return runs.train_run(config, tmp_path / name, progress=False)


def test_binarizing_keeps_missing_entries_missing(tmp_path):
    path = _table(tmp_path)
    train = prepare_data(DataConfig(source=str(path), missing="mask", transform="binarize",
                                    data_options={"drop": "kind"}))[0]
    assert 0.5 < float(train.mask.mean()) < 0.9  # about 70% observed, not all
    assert set(train.x[train.mask == 1].unique().tolist()) <= {0.0, 1.0}


def test_bits_per_dimension_count_the_observed_entries(tmp_path):
    path = _table(tmp_path)
    metrics = _run(tmp_path, "run", VAEConfig(z_dim=2, hidden=(8,), likelihood="normal"), source=str(path),
                   missing="mask", data_options={"drop": "kind"})["test"]
    test = prepare_data(DataConfig(source=str(path), missing="mask", data_options={"drop": "kind"}))[2]
    observed = float(test.mask.sum(1).mean())
    assert metrics["log_likelihood_bits_per_dim"] == pytest.approx(
        -metrics["log_likelihood_nats"] / (observed * np.log(2)), rel=1e-6)


def test_a_schema_needs_the_mixed_likelihood_and_an_autoencoder_reads_a_mixed_table(tmp_path):
    x = RNG.normal(size=(60, 3)).round(3)
    pd.DataFrame(x, columns=list("abc")).assign(kind=RNG.choice(["u", "v"], 60)).to_csv(tmp_path / "m.csv",
                                                                                        index=False)
    with pytest.raises(ConfigError, match="--likelihood mixed"):
        _run(tmp_path, "normal", VAEConfig(z_dim=2, hidden=(8,), likelihood="normal"), source=str(tmp_path / "m.csv"),
             data_options={"schema": "auto"})
    metrics = _run(tmp_path, "ae", AutoencoderConfig(z_dim=2, hidden=(8,), likelihood="mixed", variant="contractive"),
                   source=str(tmp_path / "m.csv"), data_options={"schema": "auto"})
    assert np.isfinite(metrics["test"]["reconstruction_nll"])


def test_compare_refuses_other_transforms_and_a_file_or_run_folder_as_its_output(tmp_path):
    common = dict(source="wine")
    _run(tmp_path, "a", VAEConfig(z_dim=2, hidden=(8,), likelihood="normal"), **common)
    _run(tmp_path, "b", VAEConfig(z_dim=2, hidden=(8,), likelihood="normal"), transform="none", **common)
    with pytest.raises(ConfigError, match="different data"):
        compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "report")
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(RunDirError):
        compare_runs([tmp_path / "a", tmp_path / "a"], tmp_path / "file.txt")
    with pytest.raises(RunDirError, match="run folder"):
        compare_runs([tmp_path / "a", tmp_path / "a"], tmp_path / "b")
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_impute_refuses_an_unwritable_output_and_the_runs_own_files(tmp_path):
    path = _table(tmp_path)
    _run(tmp_path, "run", VAEConfig(z_dim=2, hidden=(8,), likelihood="normal"), source=str(path), missing="mask",
         data_options={"drop": "kind"})
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RunDirError):
        runs.impute_run(tmp_path / "run", path, tmp_path / "a_file" / "out.csv")
    before = (tmp_path / "run" / "metrics.csv").read_text()
    with pytest.raises(RunDirError):
        runs.impute_run(tmp_path / "run", path, tmp_path / "run" / "metrics.csv")
    assert (tmp_path / "run" / "metrics.csv").read_text() == before


def test_the_gmm_sampler_takes_no_more_components_than_codes(tmp_path):
    x = (torch.rand(14, 1, 4, 4) < 0.3).float()
    config = RunConfig(model=VAEConfig(z_dim=2, hidden=(8,)), trainer=TrainerConfig(epochs=1, batch_size=4),
                       data=DataConfig(test_fraction=0.5), evaluation=EvaluationConfig(num_samples=2))
    runs.train_run(config, tmp_path / "run", progress=False, data=x)
    assert runs.sample_run(tmp_path / "run", n=4, sampler="gmm", data=x).exists()


def test_a_schema_in_another_order_numeric_labels_and_float_text_codes(tmp_path):
    from pyrovae.data.schema import encode_frame
    frame = pd.DataFrame({"height": [1.5, 2.0, 1.7], "grade": ["2", "10", "1.0"], "visits": [3, 0, 1]})
    schema = [{"name": "visits", "type": "count"}, {"name": "grade", "type": "ordinal"},
              {"name": "height", "type": "real"}]
    x, filled = encode_frame(frame, schema)
    assert [c["name"] for c in filled] == ["height", "grade", "visits"]  # the table's order
    assert filled[1]["categories"] == ["1", "2", "10"]  # by value, and "1.0" is the label "1"
    np.testing.assert_array_equal(x[:, 1], [1, 2, 0])
    np.testing.assert_array_equal(x[:, 2], [3, 0, 1])
