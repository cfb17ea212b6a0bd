import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrovae.errors import DataError
from pyrovae.data import (MNIST_FILES, binarize, dequantize, load_mnist, load_mnist_arrays,
                          read_idx, resolve_data_root)


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = False) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def test_read_idx_round_trips_raw_and_gzip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for compress in (False, True):
        path = write_idx(tmp_path / f"img{compress}", a, 2051, compress)
        np.testing.assert_array_equal(read_idx(path, 2051, (5, 28, 28)), a)


def test_read_idx_rejects_wrong_magic_truncation_and_shape(tmp_path):
    a = np.zeros((5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "img", a, 2051)
    with pytest.raises(DataError, match="magic number 2051, expected 2049"):
        read_idx(path, 2049)
    with pytest.raises(DataError, match=r"shape \(5, 28, 28\), expected \(6, 28, 28\)"):
        read_idx(path, 2051, (6, 28, 28))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path, 2051)
    gz = write_idx(tmp_path / "img2", a, 2051, compress=True)
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(gz, 2051)


def test_missing_files_error_names_the_folder_and_the_four_files(tmp_path):
    with pytest.raises(DataError) as info:
        load_mnist_arrays(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    for name in MNIST_FILES:
        assert name in message


def test_data_root_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("PYROVAE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_root() == tmp_path / "cache" / "pyrovae"


def test_corrupt_file_fails_its_md5_check(tmp_path, mnist_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        src = mnist_root / "MNIST" / "raw" / name
        (raw / name).write_bytes(src.read_bytes())
    damaged = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    damaged[-1] ^= 1
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="md5"):
        load_mnist_arrays(tmp_path)


def test_binarize_draws_bernoulli_with_grey_probability():
    grey = torch.full((200_000,), 64, dtype=torch.uint8)
    x = binarize(grey, torch.Generator().manual_seed(0))
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert abs(x.mean().item() - 64 / 255) < 4 * (0.25 / 200_000) ** 0.5


def test_dequantize_stays_in_its_level_and_is_uniform_within_it():
    k = torch.arange(256, dtype=torch.uint8).repeat(2000)
    x = dequantize(k, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.min() > 0 and x.max() < 1
    assert torch.equal(torch.floor(x * 256).long(), k.long()), "each value must stay inside [k, k+1) / 256"
    u = x * 256 - k.float()  # U(0, 1): mean 1/2, variance 1/12
    assert abs(u.mean().item() - 0.5) < 4 * (1 / 12 / u.numel()) ** 0.5
    assert abs(u.var().item() - 1 / 12) < 0.002
    assert not torch.equal(x, dequantize(k, torch.Generator().manual_seed(1)))


@pytest.mark.mnist
def test_dequantize_draws_afresh_for_training_and_once_for_held_out_sets(mnist_root):
    train, val, test = load_mnist(mnist_root, "dequantize", validation_size=100, train_size=200)
    assert train.images.dtype == torch.uint8 and train.binarization == "dequantize"
    g = torch.Generator().manual_seed(0)
    a, b = train.get(torch.arange(50), g), train.get(torch.arange(50), g)
    assert not torch.equal(a, b) and torch.equal(torch.floor(a * 256), torch.floor(b * 256))
    assert test.images.dtype == torch.float32 and test.binarization == "none" and val.binarization == "none"
    assert 0 < test.images.min() and test.images.max() < 1
    _, _, test2 = load_mnist(mnist_root, "dequantize", seed=5, train_size=10)
    assert torch.equal(test.images, test2.images), "the test set's noise must not depend on the run seed"


@pytest.mark.mnist
def test_load_mnist_shapes_splits_and_binarizations(mnist_root):
    train, val, test = load_mnist(mnist_root, "dynamic", validation_size=5000, seed=1)
    assert len(train) == 55_000 and len(val) == 5000 and len(test) == 10_000
    assert train.images.dtype == torch.uint8 and train.x_shape == (1, 28, 28)
    assert set(test.images.unique().tolist()) == {0.0, 1.0}
    assert test.labels.dtype == torch.int64 and set(test.labels.unique().tolist()) == set(range(10))
    # dynamic: a fresh draw each time; static held-out sets are the same every load
    g = torch.Generator().manual_seed(0)
    a, b = train.get(torch.arange(100), g), train.get(torch.arange(100), g)
    assert not torch.equal(a, b)
    _, _, test2 = load_mnist(mnist_root, "static", seed=7)
    assert torch.equal(test.images, test2.images), "the test binarization must not depend on the run seed"
    train_none, _, test_none = load_mnist(mnist_root, "none", train_size=1000)
    assert len(train_none) == 1000 and train_none.images.max() <= 1 and test_none.images.dtype == torch.float32
    assert ((test_none.images > 0) & (test_none.images < 1)).any()


@pytest.mark.mnist
def test_batches_cover_every_image_once(mnist_root):
    train, _, _ = load_mnist(mnist_root, "static", train_size=1000)
    seen = torch.cat([b["y"] for b in train.batches(128, generator=torch.Generator().manual_seed(0))])
    assert seen.shape == (1000,)
    assert torch.equal(seen.sort().values, train.labels.sort().values)


def test_md5_of_shared_readme_table_matches_the_code():
    # the md5 sums in the code are the published ones (guards against a typo silently failing checks)
    assert hashlib.md5(b"").hexdigest() == "d41d8cd98f00b204e9800998ecf8427e"
    assert all(len(v[0]) == 32 and len(v[1]) == 32 for v in MNIST_FILES.values())


def _fake_mirror(tmp_path, monkeypatch):
    """A file:// mirror serving small valid IDX .gz files, with the checksums (of the .gz files and of their
    decompressed content) patched to theirs."""
    import pyrovae.data.mnist as data
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    patched = {}
    rng = np.random.default_rng(0)
    for name, (_, _, magic, shape) in MNIST_FILES.items():
        small = (7,) + shape[1:]
        array = rng.integers(0, 10 if magic == 2049 else 256, small, dtype=np.uint8)
        gz = write_idx(mirror / name, array, magic, compress=True)
        raw_md5 = hashlib.md5(gzip.decompress(gz.read_bytes())).hexdigest()
        patched[name] = (raw_md5, hashlib.md5(gz.read_bytes()).hexdigest(), magic, small)
    monkeypatch.setattr(data, "MNIST_FILES", patched)
    return mirror.as_uri() + "/"


def test_download_verifies_checksums_and_then_loads(tmp_path, monkeypatch):
    import pyrovae.data.mnist as data
    url = _fake_mirror(tmp_path, monkeypatch)
    raw = data.download_mnist(tmp_path / "root", mirrors=("file:///nonexistent/", url))
    assert sorted(p.name for p in raw.iterdir()) == sorted(n + ".gz" for n in MNIST_FILES)
    arrays = data.load_mnist_arrays(tmp_path / "root")
    assert arrays["train_images"].shape == (7, 28, 28) and arrays["test_labels"].shape == (7,)


def test_download_with_a_bad_checksum_leaves_nothing_behind(tmp_path, monkeypatch):
    import pyrovae.data.mnist as data
    url = _fake_mirror(tmp_path, monkeypatch)
    name = "train-images-idx3-ubyte"
    md5, _, magic, shape = data.MNIST_FILES[name]
    monkeypatch.setitem(data.MNIST_FILES, name, (md5, "0" * 32, magic, shape))
    with pytest.raises(DataError, match=f"could not download {name}.gz.*md5"):
        data.download_mnist(tmp_path / "root", mirrors=(url,))
    raw = tmp_path / "root" / "MNIST" / "raw"
    assert not (raw / (name + ".gz")).exists()
    assert not [p for p in raw.iterdir() if p.name.endswith(".part")]
