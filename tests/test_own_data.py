"""Your own data: every source round-trips through train -> run folder -> evaluate / sample; the split and the
transform come back from the run folder; data that does not fit the likelihood, and malformed files, get one
clear error and write nothing."""

from __future__ import annotations

import gzip
import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pyrovae import ConfigError, DataConfig, DataError, RunConfig, TrainerConfig, VAEConfig
from pyrovae.app import runs
from pyrovae.app.cli import main
from pyrovae.data import NpyRows, prepare_data, read_source
from pyrovae.training.config import EvaluationConfig

RNG = np.random.default_rng(0)
COUNTS = RNG.poisson(3.0, size=(60, 5)).astype(np.float32)
REAL = RNG.normal(2.0, 3.0, size=(60, 4)).astype(np.float32)
LABELS = RNG.integers(0, 3, size=60)


def _config(source="", likelihood="poisson", **data) -> RunConfig:
    return RunConfig(model=VAEConfig(z_dim=2, hidden=(8,), likelihood=likelihood),
                     trainer=TrainerConfig(epochs=1, batch_size=16),
                     data=DataConfig(source=str(source), **data), evaluation=EvaluationConfig(num_samples=3))


def _round_trip(run_dir, config, data=None):
    """train -> run folder -> evaluate and sample from the run folder; returns the evaluate metrics."""
    metrics = runs.train_run(config, run_dir, progress=False, data=data)
    assert np.isfinite(metrics["test"]["log_likelihood_nats"])
    info = json.loads((run_dir / "data.json").read_text())
    evaluated = runs.evaluate_run(run_dir, num_samples=3, probe=False, latent_statistics=False, data=data)
    assert np.isfinite(evaluated["log_likelihood_nats"])
    path = runs.sample_run(run_dir, n=4, data=data)
    assert path.exists()
    return info, metrics, evaluated


def _write(tmp_path, kind):
    """A small file of each kind, holding COUNTS (and LABELS where the format has labels)."""
    if kind == "npy":
        np.save(tmp_path / "x.npy", COUNTS)
        return tmp_path / "x.npy", {}
    if kind == "npz":
        np.savez(tmp_path / "x.npz", x=COUNTS, y=LABELS)
        return tmp_path / "x.npz", {}
    if kind == "pt":
        torch.save({"x": torch.from_numpy(COUNTS), "y": torch.from_numpy(LABELS)}, tmp_path / "x.pt")
        return tmp_path / "x.pt", {}
    frame = pd.DataFrame(COUNTS, columns=[f"gene{j}" for j in range(5)])
    frame = frame.assign(cell_type=np.array(["a", "b", "c"])[LABELS])
    if kind == "csv":
        frame.to_csv(tmp_path / "x.csv", index=False)
        return tmp_path / "x.csv", {"label": "cell_type"}
    if kind == "tsv":
        frame.to_csv(tmp_path / "x.tsv", index=False, sep="\t")
        return tmp_path / "x.tsv", {"label": "cell_type"}
    if kind == "parquet":
        pytest.importorskip("pyarrow")
        frame.to_parquet(tmp_path / "x.parquet")
        return tmp_path / "x.parquet", {"label": "cell_type"}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["npy", "npz", "pt", "csv", "tsv", "parquet"])
def test_each_file_type_round_trips_through_a_run_folder(tmp_path, kind):
    path, options = _write(tmp_path, kind)
    info, _, _ = _round_trip(tmp_path / "run", _config(path, data_options=options))
    assert info["provenance"]["sha256"] and info["x_shape"] == [5] and info["transform"]["kind"] == "none"
    assert info["sizes"] == {"train": 48, "validation": 0, "test": 12}
    if kind in ("csv", "tsv", "parquet"):
        assert info["feature_names"] == [f"gene{j}" for j in range(5)] and info["label_names"] == ["a", "b", "c"]


def _image_folder(tmp_path, sizes=((6, 4),), classes=("cat", "dog"), per_class=6):
    folder = tmp_path / "images"
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            size = sizes[i % len(sizes)]
            Image.fromarray(RNG.integers(0, 256, size=size[::-1], dtype=np.uint8)).save(folder / c / f"{i}.png")
    return folder


def test_an_image_folder_round_trips_with_its_subfolders_as_labels(tmp_path):
    folder = _image_folder(tmp_path)
    src = read_source(str(folder))
    assert src.x.shape == (12, 1, 4, 6) and src.x.dtype == np.uint8 and list(src.label_names) == ["cat", "dog"]
    info, _, _ = _round_trip(tmp_path / "run", _config(folder, likelihood="bernoulli"))
    assert info["binarization"] == "dynamic" and info["x_shape"] == [1, 4, 6]


def test_idx_files_round_trip(tmp_path):
    images = RNG.integers(0, 256, size=(20, 4, 4), dtype=np.uint8)
    header = (2051).to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in images.shape)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    _round_trip(tmp_path / "run", _config(tmp_path / "train-images-idx3-ubyte.gz", likelihood="bernoulli"))


@pytest.mark.parametrize("name,likelihood,shape", [("digits", "binomial", [1, 8, 8]), ("breast_cancer", "normal", [30]),
                                                   ("wine", "student_t", [13])])
def test_each_named_set_round_trips(tmp_path, name, likelihood, shape):
    info, _, _ = _round_trip(tmp_path / "run", _config(name, likelihood=likelihood, train_size=64))
    assert info["x_shape"] == shape and info["provenance"]["package"] == "scikit-learn"
    assert info["transform"]["kind"] == ("none" if name == "digits" else "standardize")


def test_pbmc68k_reduced_round_trips_when_scanpy_is_installed(tmp_path):
    if importlib.util.find_spec("scanpy") is None:
        pytest.skip("scanpy is an optional extra (pip install 'pyrovae[anndata]')")
    _round_trip(tmp_path / "run", _config("pbmc68k_reduced", likelihood="negative_binomial", train_size=64))


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return len(COUNTS)

    def __getitem__(self, i):
        return torch.from_numpy(COUNTS[i]), int(LABELS[i])


@pytest.mark.parametrize("kind", ["tensor", "array", "pair", "dataset", "loader"])
def test_data_passed_in_python_round_trips_and_the_run_folder_asks_for_it_again(tmp_path, kind):
    data = {"tensor": torch.from_numpy(COUNTS), "array": COUNTS, "pair": (COUNTS, LABELS), "dataset": _Items(),
            "loader": torch.utils.data.DataLoader(_Items(), batch_size=7)}[kind]
    info, _, _ = _round_trip(tmp_path / "run", _config(), data=data)
    assert info["source"].startswith("python:")
    with pytest.raises(DataError, match="passed in Python"):
        runs.evaluate_run(tmp_path / "run", num_samples=3)


def test_the_split_and_the_transform_come_back_from_the_run_folder(tmp_path):
    np.save(tmp_path / "real.npy", REAL)
    run = tmp_path / "run"
    config = _config(tmp_path / "real.npy", likelihood="normal", validation_size=6, split_seed=3)
    train, validation, test, info = prepare_data(config.data, config.trainer.seed)
    runs.train_run(config, run, progress=False)
    recorded = json.loads((run / "data.json").read_text())
    # the transform was fitted on the training split alone
    raw_train = REAL[np.isin(np.arange(60), _rows(REAL, train.in_data_units(train.x).numpy()))]
    assert np.allclose(recorded["transform"]["mean"], raw_train.mean(0), atol=1e-5)
    assert np.allclose(recorded["transform"]["scale"], raw_train.std(0), rtol=1e-4)
    # the run folder rebuilds the same test split, transformed with the recorded statistics, not refitted ones
    recorded["transform"]["mean"] = [m + 1.0 for m in recorded["transform"]["mean"]]
    (run / "data.json").write_text(json.dumps(recorded))
    _, _, test_again, info_again = runs.run_data(run)
    assert info_again.test_rows_sha256 == info.test_rows_sha256 == recorded["test_rows_sha256"]
    assert torch.allclose(test_again.x, test.x - 1.0 / torch.tensor(recorded["transform"]["scale"]), atol=1e-5)
    # and the split is a function of split_seed alone: another run seed keeps the test rows
    other = prepare_data(config.data, seed=7)[3]
    assert other.test_rows_sha256 == info.test_rows_sha256


def _rows(full: np.ndarray, part: np.ndarray) -> np.ndarray:
    """The row indices of ``full`` that ``part``'s rows are (exact float matches, up to float32 rounding)."""
    return np.array([int(np.argmin(np.abs(full - row).sum(1))) for row in part])


def test_a_changed_data_file_is_refused_at_evaluation(tmp_path):
    np.save(tmp_path / "x.npy", COUNTS)
    runs.train_run(_config(tmp_path / "x.npy"), tmp_path / "run", progress=False)
    np.save(tmp_path / "x.npy", COUNTS + 1)
    with pytest.raises(DataError, match="has changed since this run was trained"):
        runs.evaluate_run(tmp_path / "run", num_samples=3)


def test_a_streamed_npy_file_gives_the_same_batches_as_one_in_memory(tmp_path):
    x = RNG.normal(size=(300, 3, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rows = NpyRows(tmp_path / "x.npy")
    index = np.array([5, 2, 3, 4, 299, 0, 4])
    assert np.array_equal(rows[index], x[index])
    streamed = prepare_data(DataConfig(source=str(tmp_path / "x.npy"), data_options={"stream": True}))
    in_memory = prepare_data(DataConfig(source=str(tmp_path / "x.npy"), data_options={"stream": False}))
    assert not streamed[0].in_memory and in_memory[0].in_memory
    assert streamed[3].transform == in_memory[3].transform
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for a, b in zip(streamed[0].batches(50, generator=g1), in_memory[0].batches(50, generator=g2)):
        assert torch.allclose(a["x"], b["x"], atol=1e-6)
    assert torch.equal(streamed[2].x, in_memory[2].x)


@pytest.mark.parametrize("source,likelihood,options,fits", [
    ("digits", "bernoulli", {}, "binomial"),                          # counts 0..16 under a Bernoulli
    ("breast_cancer", "poisson", {"transform": "none"}, "normal"),    # non-integer reals under a Poisson
    ("breast_cancer", "poisson", {}, "student_t"),                    # standardized: negative values
    ("digits", "beta", {}, "categorical"),                            # exact zeros under a Beta
])
def test_a_likelihood_whose_support_does_not_fit_the_data_gets_one_error_naming_those_that_do(
        tmp_path, source, likelihood, options, fits):
    with pytest.raises(DataError, match=f"Likelihoods that fit this data: .*{fits}"):
        runs.train_run(_config(source, likelihood=likelihood, **options), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def _ragged(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n3,4,5\n6,7\n")
    return tmp_path / "x.csv", "cannot read it as a table"


def _text_column(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,x\n3,y\n6,z\n2,w\n5,v\n")
    return tmp_path / "x.csv", "non-numeric column"


def _nan(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n3,\n6,7\n2,2\n5,1\n")
    return tmp_path / "x.csv", "missing or infinite values"


def _empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    return tmp_path / "images", "no images"


def _mixed_sizes(tmp_path):
    return _image_folder(tmp_path, sizes=((6, 4), (5, 5))), "images of different sizes"


def _not_numbers(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"not an npy file")
    return tmp_path / "x.npy", "cannot read it as a .npy file"


@pytest.mark.parametrize("make", [_ragged, _text_column, _nan, _empty_folder, _mixed_sizes, _not_numbers])
def test_a_malformed_source_gets_one_clear_error_and_writes_nothing(tmp_path, capsys, make):
    source, message = make(tmp_path)
    code = main(["train", "--data", str(source), "--likelihood", "normal", "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_options_a_source_does_not_take_and_a_missing_path_are_refused(tmp_path):
    np.save(tmp_path / "x.npy", COUNTS)
    with pytest.raises(ConfigError, match="does not apply to a npy source"):
        prepare_data(DataConfig(source=str(tmp_path / "x.npy"), data_options={"label": "y"}))
    with pytest.raises(DataError, match="no such file or folder"):
        prepare_data(DataConfig(source=str(tmp_path / "missing.csv")))
    with pytest.raises(ConfigError, match="binarization"):
        prepare_data(DataConfig(source="breast_cancer", binarization="static"))


# --- what a first review found -------------------------------------------------------------------------------


def test_a_uint8_count_matrix_is_read_as_numbers_and_uint8_images_as_grey_levels(tmp_path):
    np.save(tmp_path / "counts.npy", COUNTS.astype(np.uint8))
    _, _, _, info = prepare_data(DataConfig(source=str(tmp_path / "counts.npy")))
    assert info.binarization is None and info.transform == {"kind": "none"} and info.max_value == COUNTS.max()
    np.save(tmp_path / "images.npy", RNG.integers(0, 256, size=(20, 1, 4, 4), dtype=np.uint8))
    train, _, _, info = prepare_data(DataConfig(source=str(tmp_path / "images.npy")))
    assert info.binarization == "dynamic" and train.x.dtype == torch.uint8


def test_the_readme_dataloader_example_and_a_shuffled_loader(tmp_path):
    x = torch.poisson(torch.full((40, 3), 3.0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=10)
    config = RunConfig(model=VAEConfig(z_dim=2, hidden=(8,), likelihood="poisson"),
                       trainer=TrainerConfig(epochs=1, batch_size=8))
    import pyrovae
    model, history = pyrovae.fit(config, tmp_path / "run", data=loader, progress=False)
    assert len(history) == 1 and json.loads((tmp_path / "run" / "data.json").read_text())["sizes"]["train"] == 32
    with pytest.raises(DataError, match="shuffle=False"):
        prepare_data(DataConfig(), data=torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), shuffle=True))
    # the same data again is accepted, other data refused: Python data is fingerprinted like a file
    runs.evaluate_run(tmp_path / "run", num_samples=2, probe=False, latent_statistics=False, data=loader)
    with pytest.raises(DataError, match="has changed"):
        runs.evaluate_run(tmp_path / "run", num_samples=2, probe=False, data=x + 1)


def test_sixteen_bit_images_are_refused_and_grey_palette_images_are_grey(tmp_path):
    (tmp_path / "deep").mkdir()
    Image.fromarray(RNG.integers(0, 65535, size=(4, 4), dtype=np.uint16)).save(tmp_path / "deep" / "a.png")
    with pytest.raises(DataError, match="16-bit"):
        read_source(str(tmp_path / "deep"))
    (tmp_path / "palette").mkdir()
    for i in range(3):
        grey = Image.fromarray(RNG.integers(0, 256, size=(4, 4), dtype=np.uint8))
        grey.convert("P").save(tmp_path / "palette" / f"{i}.png")
    assert read_source(str(tmp_path / "palette")).x.shape == (3, 1, 4, 4)


def test_a_run_folder_works_from_another_directory_and_after_its_data_moved(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "x.npy", COUNTS)
    monkeypatch.chdir(tmp_path)
    runs.train_run(_config("a/x.npy"), tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["source"] == str(tmp_path / "a" / "x.npy")
    monkeypatch.chdir(tmp_path / "a")
    runs.evaluate_run(tmp_path / "run", num_samples=2, probe=False, latent_statistics=False)
    (tmp_path / "a" / "x.npy").rename(tmp_path / "moved.npy")
    with pytest.raises(DataError, match="no such file"):
        runs.evaluate_run(tmp_path / "run", num_samples=2, probe=False)
    code = main(["evaluate", str(tmp_path / "run"), "-k", "2", "--no-probe", "--data", str(tmp_path / "moved.npy")])
    assert code == 0
    code = main(["train", "--resume", "--out", str(tmp_path / "run"), "--epochs", "2", "--data", "digits"])
    assert code == 2  # --resume trains on the run's own data; another --data is refused


@pytest.mark.parametrize("text,options,columns,rows", [
    ("a,b\n1,2\n3,4\n5,6\n", {}, ["a", "b"], 3),
    ("1,2\n3,4\n5,6\n", {"header": False}, ["column_0", "column_1"], 3),
    (",a,b\n0,1,2\n1,3,4\n2,5,6\n", {}, ["a", "b"], 3),                  # pandas' index column is dropped
])
def test_tables_with_and_without_header_and_index(tmp_path, text, options, columns, rows):
    (tmp_path / "t.csv").write_text(text)
    src = read_source(str(tmp_path / "t.csv"), options)
    assert list(src.feature_names) == columns and src.x.shape == (rows, len(columns))


def test_table_layouts_that_would_be_misread_get_their_error(tmp_path):
    (tmp_path / "t.csv").write_text("1,2\n3,4\n5,6\n")
    with pytest.raises(DataError, match="looks like data"):
        read_source(str(tmp_path / "t.csv"))
    (tmp_path / "h.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="no rows"):
        read_source(str(tmp_path / "h.csv"))
    np.savetxt(tmp_path / "s.txt", REAL[:5], header="a b c d", comments="")
    assert read_source(str(tmp_path / "s.txt")).x.shape == (5, 4)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="cannot read it as a .npz"):
        read_source(str(tmp_path / "bad.npz"))


def test_a_one_dimensional_streamed_file_is_one_feature(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(50, dtype=">f8"))  # big-endian float64, 1-D
    streamed = prepare_data(DataConfig(source=str(tmp_path / "v.npy"), data_options={"stream": True},
                                       transform="none"))
    assert streamed[0].x_shape == (1,) and streamed[0].get(torch.tensor([0, 1])).dtype == torch.float32


def test_a_cvae_on_a_table_takes_its_classes_from_the_data_and_samples_csv(tmp_path):
    config = RunConfig(model=pyrovae_cvae_config(), trainer=TrainerConfig(epochs=1, batch_size=16),
                       data=DataConfig(source="wine"), evaluation=EvaluationConfig(num_samples=2))
    runs.train_run(config, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["num_classes"] == 3
    path = runs.sample_run(tmp_path / "run", n=2)
    frame = pd.read_csv(path)
    assert list(frame["label"]) == ["class_0"] * 2 + ["class_1"] * 2 + ["class_2"] * 2 and frame.shape[1] == 14


def pyrovae_cvae_config():
    from pyrovae import CVAEConfig
    return CVAEConfig(z_dim=2, hidden=(8,), likelihood="normal")


def test_mnist_refuses_options_meant_for_other_sources():
    with pytest.raises(ConfigError, match="do not apply to MNIST"):
        prepare_data(DataConfig(transform="standardize"))


def test_an_h5ad_file_round_trips_in_memory_and_streamed(tmp_path):
    anndata = pytest.importorskip("anndata", reason="anndata is an optional extra (pip install 'pyrovae[anndata]')")
    import scipy.sparse
    adata = anndata.AnnData(scipy.sparse.csr_matrix(COUNTS))
    adata.obs["cell_type"] = pd.Categorical(np.array(["a", "b", "c"])[LABELS])
    adata.write_h5ad(tmp_path / "x.h5ad")
    options = {"label": "cell_type"}
    info, _, _ = _round_trip(tmp_path / "run", _config(tmp_path / "x.h5ad", data_options=options))
    assert info["label_names"] == ["a", "b", "c"] and info["x_shape"] == [5]
    streamed = prepare_data(DataConfig(source=str(tmp_path / "x.h5ad"), data_options={**options, "stream": True}))
    in_memory = prepare_data(DataConfig(source=str(tmp_path / "x.h5ad"), data_options=options))
    assert not streamed[0].in_memory
    index = torch.tensor([7, 3, 3, 0])
    assert torch.equal(streamed[0].get(index), in_memory[0].get(index))
    assert torch.equal(streamed[2].x, in_memory[2].x) and torch.equal(streamed[0].labels, in_memory[0].labels)
