"""End-to-end: the commands a user types, on the real MNIST files (small slices)."""

import json
import subprocess
import sys

import pytest

import typing

from pyrovae.app.cli import COMMANDS, build_parser, config_flags, main, run_config
from pyrovae.training import RunConfig


# --- the command line and the configs cannot drift apart ---------------------------------------------


def _subparser(command: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return parser, sub


def _another_value(name: str, field, default) -> tuple[str, object]:
    """A valid value other than ``default`` for a field, as a flag's text and as the config holds it."""
    kind = field.annotation
    while typing.get_origin(kind) in (typing.Union, typing.Annotated):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        others = [c for c in typing.get_args(kind) if c != default]
        if not others:  # one choice only (an autoencoder's guide): nothing else to set
            return None
        return str(others[0]), others[0]
    if kind is bool:  # a switch: --flag / --no-flag, no text
        return None, not default
    if typing.get_origin(kind) is tuple:
        value = (1, 8, 8) if name == "x_shape" else (3, 4)
        return ",".join(map(str, value)), value
    if kind is int:
        value = default * 2 if default else 3
        return str(value), value
    if kind is float:
        value = default / 2 if default else 0.5
        return repr(value), value
    if name in ("prior", "likelihood", "guide"):
        value = {"prior": "learned_normal", "likelihood": "continuous_bernoulli", "guide": "low_rank_normal"}[name]
        return value, value
    value = {"device": "cuda:1", "data_dir": "/somewhere/data", "source": "digits"}[name]
    return value, value


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_has_its_flag_and_every_config_flag_its_field(command):
    parser, sub = _subparser(command)
    flags = config_flags(command)
    dests = {a.dest for a in sub._actions if "." in a.dest}
    assert dests == set(flags), "a config field without a flag, or a flag without a field"
    options = {o for a in sub._actions for o in a.option_strings}
    assert set(flags.values()) <= options
    others = options - set(flags.values()) - {"-h", "--help", "--out", "--resume", "--no-progress", "--conditional",
                                               "--config"}
    others -= {"--no-" + flag[2:] for flag in flags.values()}  # the other half of a switch
    assert {o for o in others if not any(o in COMMANDS[command].aliases.get(k, []) for k in flags)} == set()
    spec = COMMANDS[command]
    assert run_config(command, parser.parse_args([command])) == RunConfig(model=spec.model_configs[0]())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_flag_sets_its_own_field(command):
    parser, _ = _subparser(command)
    spec = COMMANDS[command]
    defaults = RunConfig(model=spec.model_configs[-1]())
    for path, flag in config_flags(command).items():
        group, name = path.split(".")
        if name.endswith("_options"):
            continue  # KEY=VALUE options are checked against each plug-in in test_likelihoods/test_priors_guides
        config_class = type(getattr(defaults, group))
        other = _another_value(name, config_class.model_fields[name], getattr(getattr(defaults, group), name))
        if other is None:
            continue
        text, value = other
        extra = ["--conditional"] if name == "num_classes" and command == "train" else []
        given = [flag, text] if text is not None else [flag if value else "--no-" + flag[2:]]
        config = run_config(command, parser.parse_args([command, *extra, *given]))
        assert getattr(getattr(config, group), name) == value, path


def test_the_help_of_every_training_flag_shows_its_default():
    for command in COMMANDS:
        _, sub = _subparser(command)
        for action in sub._actions:
            if "." in action.dest:
                assert "(default: " in action.help, action.dest


# --- end to end on MNIST -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_root):
    run = tmp_path_factory.mktemp("runs") / "r"
    code = main(["train", "--z-dim", "2", "--hidden", "64", "--epochs", "1", "--train-size", "2000",
                 "--validation-size", "500", "--eval-num-samples", "5", "--data-dir", str(mnist_root),
                 "--out", str(run), "--no-progress"])
    assert code == 0
    return run


@pytest.mark.mnist
def test_train_writes_a_complete_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "checkpoint.pt", "metrics.json", "reconstructions.png", "samples.png", "elbo.png",
            "latent_scatter.png", "latent_manifold.png"} <= names
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["history"][0]["validation_elbo"] < 0
    assert metrics["test"]["elbo_nats"] <= metrics["test"]["log_likelihood_nats"] < 0
    assert metrics["test"]["num_images"] == 10_000


@pytest.mark.mnist
def test_evaluate_and_sample_work_from_the_run_folder_alone(trained_run, capsys, monkeypatch, mnist_root):
    monkeypatch.setenv("PYROVAE_DATA", str(mnist_root))
    assert main(["evaluate", str(trained_run), "--num-samples", "3", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_samples"] == 3 and out["log_likelihood_nats"] < 0
    assert "test_K3" in json.loads((trained_run / "metrics.json").read_text())
    assert main(["sample", str(trained_run), "-n", "16"]) == 0
    assert (trained_run / "samples_n16_seed0.png").stat().st_size > 1000


@pytest.mark.mnist
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
    for module in ("pyrovae", "pyrovae.app.cli"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "train" in out.stdout and "evaluate" in out.stdout
