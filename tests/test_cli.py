"""End-to-end: the commands a user types, on the real MNIST files (small slices)."""

import json
import subprocess
import sys

import pytest

from pyrovae.cli import main

pytestmark = pytest.mark.mnist


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_root):
    run = tmp_path_factory.mktemp("runs") / "r"
    code = main(["train", "--z-dim", "2", "--hidden", "64", "--epochs", "1", "--train-size", "2000",
                 "--validation-size", "500", "--eval-num-samples", "5", "--data-dir", str(mnist_root),
                 "--out", str(run), "--no-progress"])
    assert code == 0
    return run


def test_train_writes_a_complete_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "checkpoint.pt", "metrics.json", "reconstructions.png", "samples.png", "elbo.png",
            "latent_scatter.png", "latent_manifold.png"} <= names
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["history"][0]["validation_elbo"] < 0
    assert metrics["test"]["elbo_nats"] <= metrics["test"]["log_likelihood_nats"] < 0
    assert metrics["test"]["num_images"] == 10_000


def test_evaluate_and_sample_work_from_the_run_folder_alone(trained_run, capsys, monkeypatch, mnist_root):
    monkeypatch.setenv("PYROVAE_DATA", str(mnist_root))
    assert main(["evaluate", str(trained_run), "--num-samples", "3", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_samples"] == 3 and out["log_likelihood_nats"] < 0
    assert "test_K3" in json.loads((trained_run / "metrics.json").read_text())
    assert main(["sample", str(trained_run), "-n", "16"]) == 0
    assert (trained_run / "samples_n16_seed0.png").stat().st_size > 1000


def test_existing_run_without_resume_is_refused(trained_run, capsys):
    assert main(["train", "--epochs", "1", "--out", str(trained_run)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_unknown_option_and_bad_values_get_one_clear_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--networks", "mlp"])
    assert info.value.code == 2 and "unrecognized arguments: --networks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--network", "resnet"])
    assert "invalid choice: 'resnet'" in capsys.readouterr().err
    assert main(["train", "--z-dim", "0", "--out", "unused"]) == 2
    assert "z_dim=0" in capsys.readouterr().err


def test_unknown_plugin_names_and_options_get_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--prior", "cauchy"])
    assert info.value.code == 2 and "invalid choice: 'cauchy'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--prior-option", "num_components"])
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--prior", "mixture", "--prior-option", "components=3", "--out", str(tmp_path / "r")]) == 2
    assert "MixtureOfGaussians has no option 'components'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_missing_data_and_missing_checkpoint_errors(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "t10k-labels-idx1-ubyte" in err
    assert not (tmp_path / "r").exists()
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "pyrovae.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "evaluate" in out.stdout
