"""Every bad input is one clear error, never a traceback (issue 24, group 2): a table of bad inputs to the
command line (``main([...])`` returns 2 and prints one line to stderr, naming the argument) and to the Python
API (the right error class, a message naming the argument, what it got or what it accepts).

The command-line cases run against a tiny run folder trained once on a file of binary vectors (no MNIST
needed); the MNIST cases build their own broken data folders, except the two that need the real files.
"""

from __future__ import annotations

import errno
import gzip
import math
import os
import shutil
from types import SimpleNamespace
from typing import Literal

import numpy as np
import pytest
import torch

from pyrovae import VAE, checks, files
from pyrovae.app.cli import main
from pyrovae.components.plugins import build_plugin
from pyrovae.components.priors import PRIORS
from pyrovae.data import MNIST_FILES, DataConfig, load_mnist, prepare_data
from pyrovae.data.mnist import read_idx
from pyrovae.diagnostics import diagnose
from pyrovae.errors import ArgumentTypeError, CheckpointError, ConfigError, DataError, RunDirError
from pyrovae.evaluation import evaluate, log_likelihood
from pyrovae.inference import IWAE, ELBO
from pyrovae.models import CVAE, M2, StructuredCVAE, VAEConfig
from pyrovae.training.checkpoint import load_checkpoint, read_metrics
from pyrovae.training.config import RunConfig, TrainerConfig

HUGE = str(10**8)  # hidden units: ~10^11 parameters, far beyond any machine's memory
LONG = "n" * 300  # longer than any file system's NAME_MAX (255)


class Pickled:
    """A class of the test module: a checkpoint that pickles it holds code pyrovae must not import."""

    def __init__(self):
        self.value = 1


def _write_idx(path, array: np.ndarray, magic: int, compress: bool):
    data = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Paths the cases point at: a trained run folder, a data file, a plain file, broken MNIST folders."""
    root = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    data = root / "binary.npy"
    np.save(data, (rng.random((200, 12)) < 0.3).astype(np.float32))
    run = root / "run"
    assert main(["train", "--data", str(data), "--z-dim", "2", "--hidden", "8", "--epochs", "1", "--batch-size", "50",
                 "--eval-num-samples", "0", "--out", str(run), "--no-progress"]) == 0
    a_file = root / "a_file"
    a_file.write_text("not a folder")
    # MNIST folders: train-images (read first) a corrupt .gz, or a valid .gz of zeros (right header, wrong md5)
    corrupt, other = root / "mnist_corrupt", root / "mnist_other"
    for folder in (corrupt, other):
        folder.mkdir()
    good = gzip.compress(b"\x00" * 4096)
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(good[:20] + b"\xff" * 64 + good[84:])
    for name, (_, _, magic, shape) in MNIST_FILES.items():
        _write_idx(other / (name + ".gz"), np.zeros(shape, dtype=np.uint8), magic, compress=True)
        if name != "train-images-idx3-ubyte":
            shutil.copy(other / (name + ".gz"), corrupt / (name + ".gz"))
    # a checkpoint that pickles a class of its own
    evil = root / "evil_run"
    shutil.copytree(run, evil)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({**state, "extra": Pickled()}, evil / "checkpoint.pt")
    return SimpleNamespace(root=root, run=str(run), data=str(data), a_file=str(a_file), corrupt=str(corrupt),
                           other=str(other), evil=str(evil))


@pytest.fixture()
def broken_run(env, tmp_path):
    """A copy of the trained run folder, for cases that break one of its files."""
    run = tmp_path / "run"
    shutil.copytree(env.run, run)
    return run


def _read_only(monkeypatch):
    """Writing anywhere fails as on a read-only file system (the tests run as root, who may write anywhere)."""
    def mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))
    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


def _train(*flags):
    """A ``pyrovae train`` that would run quickly on the small data file if its flags were fine."""
    return lambda e: ["train", "--data", e.data, "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--eval-num-samples",
                      "0", "--no-progress", "--out", str(e.root / "never"), *flags]


def _break(name: str, text: str):
    def setup(e, run):
        (run / name).write_text(text)
    return setup


# (id, argv from the env (and a broken run folder when setup is given), setup, what the one line must say)
CLI_CASES = [
    # non-finite floats, in every config that has floats
    ("lr-inf", _train("--lr", "inf"), None, "lr=inf"),
    ("lr-nan", _train("--lr", "nan"), None, "lr=nan"),
    ("beta-inf", _train("--beta", "inf"), None, "beta=inf"),
    ("beta-nan", _train("--beta", "nan"), None, "beta=nan"),
    ("kl-warmup-inf", _train("--kl-warmup-epochs", "inf"), None, "kl_warmup_epochs=inf"),
    ("free-bits-nan", _train("--free-bits", "nan"), None, "free_bits=nan"),
    ("final-lr-ratio-nan", _train("--final-lr-ratio", "nan"), None, "final_lr_ratio=nan"),
    ("test-fraction-nan", _train("--test-fraction", "nan"), None, "test_fraction=nan"),
    ("lr-negative", _train("--lr", "-1"), None, "lr=-1"),
    # seeds
    ("seed-negative", _train("--seed", "-1"), None, "seed=-1"),
    ("seed-too-large", _train("--seed", str(2**32)), None, "seed=4294967296"),
    ("split-seed-negative", _train("--split-seed", "-1"), None, "split_seed=-1"),
    ("sample-seed-negative", lambda e: ["sample", e.run, "--seed", "-1"], None, "seed=-1"),
    ("diagnose-seed-negative", lambda e: ["diagnose", e.run, "--seed", "-1", "--mcmc-images", "0", "--gap-steps", "0",
                                          "--num-images", "2", "--num-samples", "25", "--out",
                                          str(e.root / "diag")], None, "seed=-1"),
    # plug-in options of the wrong type
    ("option-float-for-int", _train("--prior", "mixture", "--prior-option", "num_components=2.5"), None,
     "num_components=2.5"),
    ("option-string-for-int", _train("--prior", "mixture", "--prior-option", "num_components=abc"), None,
     "num_components='abc'"),
    ("option-nan-float", _train("--likelihood", "normal", "--likelihood-option", "scale=NaN"), None, "scale=nan"),
    ("option-string-for-bool", _train("--likelihood", "normal", "--likelihood-option", "learned_scale=yes"), None,
     "true or false"),
    ("option-string-for-list", _train("--guide", "iaf", "--guide-option", "hidden=abc"), None, "hidden='abc'"),
    ("option-unknown", _train("--prior", "mixture", "--prior-option", "components=3"), None, "components"),
    # sizes
    ("train-size-above-data", _train("--train-size", "1000"), None, "train_size=1000"),
    ("test-size-above-data", _train("--test-size", "1000"), None, "test_size=1000"),
    ("z-dim-zero", _train("--z-dim", "0"), None, "z_dim=0"),
    ("hidden-zero", _train("--hidden", "0"), None, "hidden[0]=0"),
    ("hidden-too-large-for-memory", _train("--hidden", HUGE), None, "memory available"),
    ("z-dim-too-large-for-memory", _train("--z-dim", str(10**10)), None, "memory available"),
    ("validation-size-all", _train("--validation-size", "1000"), None, "validation_size=1000"),
    # output paths
    ("out-is-a-file", lambda e: _train()(e)[:-1] + [e.a_file], None, "is a file"),
    ("out-under-a-file", lambda e: _train()(e)[:-1] + [e.a_file + "/run"], None, "ENOTDIR"),
    ("out-name-too-long", lambda e: _train()(e)[:-1] + [str(e.root / LONG)], None, "ENAMETOOLONG"),
    ("out-read-only", _train(), "read-only", "Read-only file system"),
    ("sample-out-under-a-file", lambda e: ["sample", e.run, "--out", e.a_file + "/s.png"], None, "is a file"),
    ("sample-out-is-a-folder", lambda e: ["sample", e.run, "--out", str(e.root)], None, "is a folder"),
    ("sample-out-name-too-long", lambda e: ["sample", e.run, "--out", str(e.root / (LONG + ".png"))], None,
     "ENAMETOOLONG"),
    ("sample-out-read-only", lambda e: ["sample", e.run, "--out", str(e.root / "s.png")], "read-only",
     "Read-only file system"),
    ("diagnose-out-is-a-file", lambda e: ["diagnose", e.run, "--out", e.a_file, "--mcmc-images", "0",
                                          "--gap-steps", "0", "--num-images", "2", "--num-samples", "25"], None,
     "is a file"),
    # counts of the other commands
    ("sample-n-zero", lambda e: ["sample", e.run, "-n", "0"], None, "n=0"),
    ("evaluate-k-negative", lambda e: ["evaluate", e.run, "-k", "-1"], None, "num_samples=-1"),
    ("evaluate-memory-inf", lambda e: ["evaluate", e.run, "--max-memory-gb", "inf"], None, "max_memory_gb=inf"),
    ("evaluate-test-size-above-data", lambda e: ["evaluate", e.run, "-k", "2", "--test-size", "1000",
                                                 "--no-latent-stats"], None, "test_size=1000"),
    ("diagnose-gap-lr-inf", lambda e: ["diagnose", e.run, "--gap-lr", "inf", "--gap-steps", "1", "--mcmc-images",
                                       "0", "--num-images", "2", "--num-samples", "25", "--out",
                                       str(e.root / "diag")], None, "gap_lr=inf"),
    # run-folder files
    ("metrics-truncated", lambda e, run: ["evaluate", str(run), "-k", "2", "--no-latent-stats", "--no-probe"],
     _break("metrics.json", '{"training": {"kind": "va'), "metrics.json"),
    ("metrics-not-an-object", lambda e, run: ["evaluate", str(run), "-k", "2", "--no-latent-stats", "--no-probe"],
     _break("metrics.json", "[1, 2]"), "metrics.json"),
    ("data-json-truncated", lambda e, run: ["evaluate", str(run), "-k", "2"], _break("data.json", '{"source'),
     "data.json"),
    ("checkpoint-truncated", lambda e, run: ["evaluate", str(run)],
     lambda e, run: (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:500]), "corrupt"),
    ("checkpoint-with-pickled-code", lambda e: ["evaluate", e.evil], None, "will not unpickle"),
    # MNIST files
    ("mnist-corrupt-gz", lambda e: ["train", "--data-dir", e.corrupt, "--out", str(e.root / "never")], None,
     "train-images-idx3-ubyte.gz"),
    ("mnist-gz-of-other-content", lambda e: ["train", "--data-dir", e.other, "--out", str(e.root / "never")], None,
     "md5 of its decompressed content"),
    ("mnist-train-size-above-60000", lambda e: ["train", "--train-size", "70000", "--out", str(e.root / "never")],
     "mnist", "train_size=70000"),
    ("mnist-test-size-above-10000", lambda e: ["train", "--test-size", "10001", "--out", str(e.root / "never")],
     "mnist", "test_size=10001"),
]


@pytest.mark.parametrize("argv, setup, fragment", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_command_line_bad_input_is_one_line(argv, setup, fragment, env, request, monkeypatch, capsys):
    if setup == "mnist":
        monkeypatch.setenv("PYROVAE_DATA", str(request.getfixturevalue("mnist_root")))
        args = argv(env)
    elif setup == "read-only":
        args = argv(env)
        _read_only(monkeypatch)
    elif setup is not None:
        run = request.getfixturevalue("broken_run")
        setup(env, run)
        args = argv(env, run)
    else:
        args = argv(env)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pyrovae {args[0]}: error: ")
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert "weights_only" not in err


def test_the_pickled_code_message_does_not_suggest_turning_the_protection_off(env):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(os.path.join(env.evil, "checkpoint.pt"))
    message = str(info.value)
    assert "Pickled" in message and "never executes code" in message
    assert "weights_only" not in message and "False" not in message and "truncated" not in message


# --- the Python API -----------------------------------------------------------------------------------------

def _vae():
    return VAE(z_dim=2, x_shape=(12,), hidden=(8,))


def _binary(n=4, dtype=torch.float32):
    return (torch.rand(n, 12) < 0.5).to(dtype)


def _bad_gz(tmp_path):
    good = gzip.compress(b"\x00" * 4096)
    path = tmp_path / "images.gz"
    path.write_bytes(good[:20] + b"\xff" * 64 + good[84:])
    return read_idx(path, 2051)


def _other_gz(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(path, np.zeros((10, 28, 28), dtype=np.uint8), 2051, compress=True)
    return read_idx(path, 2051, (10, 28, 28), MNIST_FILES["train-images-idx3-ubyte"][0])


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _read_only_dir(tmp_path, monkeypatch):
    _read_only(monkeypatch)
    return files.ensure_writable_dir(tmp_path / "out")


def _pickled_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "pyrovae-checkpoint-v2", "model": {}, "object": Pickled()}, path)
    return load_checkpoint(path)


class LiteralPrior(torch.nn.Module):
    """A user's prior whose option is a ``Literal``: its choices are checked like the built-in options."""

    def __init__(self, z_dim: int, shape: Literal["ball", "box"] = "ball"):
        super().__init__()
        self.z_dim, self.shape = z_dim, shape


def _literal_prior(monkeypatch, options):
    monkeypatch.setitem(PRIORS, "literal", LiteralPrior)
    return build_plugin("prior", "literal", 2, options)


def _data_config(tmp_path, **settings):
    path = tmp_path / "x.npy"
    np.save(path, (np.random.default_rng(0).random((50, 12)) < 0.5).astype(np.float32))
    return prepare_data(DataConfig(source=str(path), **settings))


# (id, call(tmp_path, monkeypatch), the error class, a fragment of its message)
API_CASES = [
    # constructors
    ("vae-z-dim-zero", lambda t, m: VAE(z_dim=0), ConfigError, "z_dim=0"),
    ("vae-z-dim-float", lambda t, m: VAE(z_dim=2.5), ArgumentTypeError, "z_dim=2.5"),
    ("vae-hidden-zero", lambda t, m: VAE(hidden=(0,)), ConfigError, "hidden[0]=0"),
    ("vae-hidden-not-a-sequence", lambda t, m: VAE(hidden=512), ArgumentTypeError, "hidden=512"),
    ("vae-x-shape-zero", lambda t, m: VAE(x_shape=(1, 0, 28)), ConfigError, "x_shape[1]=0"),
    ("vae-too-large-for-memory", lambda t, m: VAE(hidden=(10**8,)), ConfigError, "memory available"),
    ("vae-unknown-network", lambda t, m: VAE(network="resnet"), ConfigError, "resnet"),
    ("cvae-z-dim-zero", lambda t, m: CVAE(z_dim=0), ConfigError, "z_dim=0"),
    ("m2-no-hidden-layer", lambda t, m: M2(hidden=()), ConfigError, "hidden=()"),
    ("m2-too-large-for-memory", lambda t, m: M2(hidden=(10**8,)), ConfigError, "memory available"),
    ("structured-z-dim-zero", lambda t, m: StructuredCVAE(z_dim=0), ConfigError, "z_dim=0"),
    # methods and public functions
    ("sample-negative", lambda t, m: _vae().sample(-1), ConfigError, "n=-1"),
    ("sample-zero", lambda t, m: _vae().sample(0), ConfigError, "n=0"),
    ("sample-float", lambda t, m: _vae().sample(2.0), ArgumentTypeError, "n=2.0"),
    ("encode-float64", lambda t, m: _vae().encode(_binary(dtype=torch.float64)), DataError, "x.float()"),
    ("reconstruct-float64", lambda t, m: _vae().reconstruct(_binary(dtype=torch.float64)), DataError, "float64"),
    ("evaluate-float64", lambda t, m: evaluate(_vae(), _binary(dtype=torch.float64), 2), DataError, "x.float()"),
    ("log-likelihood-float64", lambda t, m: log_likelihood((v := _vae()).model, v.guide,
                                                           _binary(dtype=torch.float64), num_samples=2),
     DataError, "x.float()"),
    ("evaluate-empty", lambda t, m: evaluate(_vae(), _binary(0), 2), DataError, "no data points"),
    ("log-likelihood-empty", lambda t, m: log_likelihood((v := _vae()).model, v.guide, _binary(0), num_samples=2),
     DataError, "no data points"),
    ("elbo-empty-batch", lambda t, m: ELBO().loss_terms((v := _vae()).model, v.guide, _binary(0)), DataError,
     "no data points"),
    ("iwae-empty-batch", lambda t, m: IWAE(3).loss_terms((v := _vae()).model, v.guide, _binary(0)), DataError,
     "no data points"),
    ("encode-empty", lambda t, m: _vae().encode(_binary(0)), DataError, "no data points"),
    ("diagnose-seed-negative", lambda t, m: diagnose(_vae(), _binary(), t / "d", num_images=2, num_samples=25,
                                                     mcmc_images=0, gap_steps=0, seed=-1), ConfigError, "seed=-1"),
    ("checks-seed-too-large", lambda t, m: checks.seed(2**32), ConfigError, "seed=4294967296"),
    # configs: non-finite floats, seeds, plug-in options
    ("trainer-lr-inf", lambda t, m: TrainerConfig(lr=math.inf), ConfigError, "lr=inf"),
    ("trainer-beta-nan", lambda t, m: TrainerConfig(beta=math.nan), ConfigError, "beta=nan"),
    ("trainer-replace-kl-warmup-inf", lambda t, m: TrainerConfig().replace(kl_warmup_epochs=math.inf), ConfigError,
     "kl_warmup_epochs=inf"),
    ("trainer-seed-negative", lambda t, m: TrainerConfig(seed=-1), ConfigError, "seed=-1"),
    ("run-config-nested-beta-inf", lambda t, m: RunConfig.from_dict({"trainer": {"beta": math.inf}}), ConfigError,
     "trainer.beta=inf"),
    ("data-test-fraction-nan", lambda t, m: DataConfig(test_fraction=math.nan), ConfigError, "test_fraction=nan"),
    ("m2-aux-loss-multiplier-inf", lambda t, m: RunConfig.from_dict({"model": {"kind": "m2",
                                                                               "aux_loss_multiplier": math.inf}}),
     ConfigError, "aux_loss_multiplier=inf"),
    ("plugin-option-float-for-int", lambda t, m: VAEConfig(prior="mixture", prior_options={"num_components": 2.5}),
     ConfigError, "num_components=2.5"),
    ("plugin-option-string-for-int", lambda t, m: build_plugin("prior", "mixture", 2, {"num_components": "abc"}),
     ConfigError, "must be an integer"),
    ("plugin-option-inf-float", lambda t, m: build_plugin("likelihood", "normal", (12,), {"scale": math.inf}),
     ConfigError, "finite number"),
    ("plugin-option-string-for-bool", lambda t, m: build_plugin("guide", "iaf", 2, {"stable": "no"}), ConfigError,
     "stable='no'"),
    ("plugin-option-not-a-literal-choice", lambda t, m: _literal_prior(m, {"shape": "cube"}), ConfigError,
     "one of 'ball', 'box'"),
    ("plugin-option-list-of-floats", lambda t, m: build_plugin("prior", "flow", 2, {"hidden": [8.5]}), ConfigError,
     "list of integers"),
    # data
    ("prepare-train-size-above-data", lambda t, m: _data_config(t, train_size=1000), ConfigError, "train_size=1000"),
    ("prepare-test-size-above-data", lambda t, m: _data_config(t, test_size=1000), ConfigError, "test_size=1000"),
    ("idx-corrupt-gz", lambda t, m: _bad_gz(t), DataError, "images.gz"),
    ("idx-gz-of-other-content", lambda t, m: _other_gz(t), DataError, "md5 of its decompressed content"),
    # run-folder files and output folders
    ("read-metrics-truncated", lambda t, m: read_metrics(_write(t, "metrics.json", '{"a": ').parent), RunDirError,
     "metrics.json"),
    ("read-metrics-binary", lambda t, m: (t / "metrics.json").write_bytes(b"\xff\xfe") and read_metrics(t),
     RunDirError, "metrics.json"),
    ("config-load-truncated", lambda t, m: RunConfig.load(_write(t, "config.json", '{"model": {"kind"')),
     ConfigError, "config.json"),
    ("config-load-not-an-object", lambda t, m: RunConfig.load(_write(t, "config.json", '"vae"')), ConfigError,
     "config.json"),
    ("config-load-bad-setting", lambda t, m: RunConfig.load(_write(t, "config.json", '{"trainer": {"lr": -1}}')),
     ConfigError, "config.json"),
    ("checkpoint-pickled-class", lambda t, m: _pickled_checkpoint(t), CheckpointError, "will not unpickle"),
    ("writable-dir-is-a-file", lambda t, m: files.ensure_writable_dir(_write(t, "f", "x")), RunDirError,
     "is a file"),
    ("writable-dir-read-only", _read_only_dir, RunDirError, "EROFS"),
]


@pytest.mark.parametrize("call, error, fragment", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_python_api_bad_input_raises_one_clear_error(call, error, fragment, tmp_path, monkeypatch):
    with pytest.raises(error) as info:
        call(tmp_path, monkeypatch)
    assert fragment in str(info.value)
    assert "weights_only" not in str(info.value)


def test_load_mnist_refuses_a_train_size_above_the_data(mnist_root):
    with pytest.raises(ConfigError, match="train_size=59501 is more than the 59500"):
        load_mnist(mnist_root, validation_size=500, train_size=59_501)


#: How many bad inputs the tables try (the closing note of issue 24 quotes it).
NUM_CASES = len(CLI_CASES) + len(API_CASES) + 1
