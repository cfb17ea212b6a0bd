"""The model protocol: every family (and a user's own) through the one trainer, the one evaluator and the
run-folder commands, dispatched on the run folder's ``kind``."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch

from pyrovae import Family, ModelConfig, register_family
from pyrovae.app.cli import main
from pyrovae.errors import ConfigError
from pyrovae.models import CVAEConfig, M2Config, StructuredConfig, VAE, VAEConfig, family_for
from pyrovae.training import BEST, RunConfig, TrainerConfig, fit, load_checkpoint, load_run

from .conftest import random_binary_data

EXAMPLE = Path(__file__).parents[1] / "examples" / "custom_model.py"


def load_example():
    """examples/custom_model.py as a module (importing it registers its family)."""
    if "custom_model_example" not in sys.modules:
        spec = importlib.util.spec_from_file_location("custom_model_example", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["custom_model_example"]


def configs() -> dict[str, RunConfig]:
    """A tiny run of every family, on the 28x28 binary images of ``random_binary_data`` (labels 0 and 1)."""
    trainer = {"epochs": 2, "batch_size": 16, "lr": 3e-3}
    example = load_example()
    return {
        "vae": RunConfig(model=VAEConfig(z_dim=2, hidden=(16,)), trainer={**trainer, "kl_warmup_epochs": 1}),
        "cvae": RunConfig(model=CVAEConfig(z_dim=2, hidden=(16,), num_classes=2), trainer={**trainer, "beta": 2.0}),
        "structured-cvae": RunConfig(model=StructuredConfig(z_dim=2, hidden=(16,), baseline_epochs=1), trainer=trainer),
        "m2": RunConfig(model=M2Config(num_labels=10, num_classes=2, z_dim=2, hidden=(16,), labelled_batch_size=5),
                        trainer=trainer),
        "two-layer-vae": RunConfig(model=example.TwoLayerConfig(z1_dim=3, z2_dim=2, hidden=16), trainer=trainer),
    }


class Stop(Exception):
    pass


@pytest.mark.parametrize("kind", ["vae", "cvae", "structured-cvae", "m2", "two-layer-vae"])
def test_every_family_resumes_exactly_through_the_one_trainer(tmp_path, kind):
    config, data = configs()[kind], random_binary_data(128)
    straight, history = fit(config, tmp_path / "a", data=data, progress=False)
    assert type(straight) is family_for(kind) and len(history) == 2 + (kind == "structured-cvae")

    def stop_after_the_first_epoch(model, row, path):
        raise Stop

    with pytest.raises(Stop):
        fit(config, tmp_path / "b", data=data, progress=False, on_epoch_end=stop_after_the_first_epoch)
    torch.manual_seed(123)  # resuming must not depend on the process's random state
    resumed, resumed_history = fit(config, tmp_path / "b", resume=True, data=data, progress=False)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(resumed_history) == drop(history)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["kind"] == kind == json.loads((tmp_path / "b" / "config.json").read_text())["model"]["kind"]
    loaded, _, _ = load_run(tmp_path / "b")
    assert type(loaded) is type(straight)
    for row in history:
        assert math.isfinite(row["train_objective"])


def test_the_structured_baseline_is_frozen_while_the_cvae_trains(tmp_path):
    seen = {}

    def record(model, row, path):
        seen[(row["stage"], row["epoch"])] = {k: v.clone() for k, v in model.baseline.state_dict().items()}

    fit(configs()["structured-cvae"], tmp_path, data=random_binary_data(128), progress=False, on_epoch_end=record)
    for name, value in seen[("baseline", 1)].items():
        assert torch.equal(value, seen[("cvae", 2)][name]), name


# --- validation, early stopping and the best checkpoint ----------------------------------------------------

SCRIPT = [1.0, 3.0, 2.0, 2.5, 2.9, 5.0]  # the validation metric of each epoch


class ScriptedConfig(ModelConfig):
    kind: Literal["scripted-vae"] = "scripted-vae"


@register_family
class ScriptedVAE(VAE):
    """A VAE whose validation metric follows :data:`SCRIPT`, so that when it improves is known."""

    kind, config_class = "scripted-vae", ScriptedConfig

    @classmethod
    def from_config(cls, config):
        vae = cls(z_dim=2, hidden=(8,))
        vae.config = config
        return vae

    def stages(self, plan, objective, held_out_objective, epochs):
        stage, = super().stages(plan, objective, held_out_objective, epochs)
        calls = []

        def validate(data):
            calls.append(1)
            return {"score": SCRIPT[len(calls) - 1]}

        stage.validate, stage.monitor = validate, "score"
        return [stage]


def test_early_stopping_ends_the_run_and_best_pt_holds_the_best_epoch(tmp_path):
    train, _, test = random_binary_data(64)
    config = RunConfig(model=ScriptedConfig(), trainer=TrainerConfig(epochs=6, batch_size=16,
                                                                   early_stopping_patience=2))
    weights = {}
    model, history = fit(config, tmp_path, data=(train, test, test), progress=False,
                         on_epoch_end=lambda m, row, path: weights.update(
                             {row["epoch"]: {k: v.clone() for k, v in m.state_dict().items()}}))
    assert [row["validation_score"] for row in history] == SCRIPT[:4]  # no improvement in epochs 3 and 4
    best = load_checkpoint(tmp_path / BEST)
    assert best["epoch"] == 2 and best["monitor"]["best"] == 3.0
    for name, value in best["model"].items():
        assert torch.equal(value, weights[2][name]), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_validation_score"] == 3.0 and metrics["best_validation_epoch"] == 2
    last = load_checkpoint(tmp_path / "checkpoint.pt")
    assert last["stopped"] and last["epoch"] == 4
    _, again = fit(config, tmp_path, resume=True, data=(train, test, test), progress=False)
    assert len(again) == 4  # a stopped stage is not continued
    best_model, _, _ = load_run(tmp_path, which="best")
    for name, value in best_model.state_dict().items():
        assert torch.equal(value, weights[2][name]), name


def test_early_stopping_needs_a_validation_split(tmp_path):
    config = RunConfig(model=VAEConfig(z_dim=2, hidden=(8,)),
                       trainer=TrainerConfig(epochs=2, early_stopping_patience=1))
    with pytest.raises(ConfigError, match="needs a validation split"):
        fit(config, tmp_path, data=random_binary_data(64), progress=False)


# --- the registry ---------------------------------------------------------------------------------------


def test_the_registry_refuses_what_is_not_a_family_and_names_the_known_kinds():
    with pytest.raises(ConfigError, match="subclass of pyrovae.models.Family"):
        register_family(dict)

    class Nameless(Family):
        config_class = VAEConfig

    with pytest.raises(ConfigError, match="class attribute kind"):
        register_family(Nameless)
    with pytest.raises(ConfigError, match="no model family of kind 'gan'.*vae, autoencoder, cvae"):
        family_for("gan")


# --- run-folder commands dispatch on the kind --------------------------------------------------------------


@pytest.mark.mnist
@pytest.mark.parametrize("command, kind", [
    (["train", "--z-dim", "2", "--hidden", "16"], "vae"),
    (["train", "--conditional", "--z-dim", "2", "--hidden", "16"], "cvae"),
    (["structured", "--z-dim", "2", "--hidden", "16", "--baseline-epochs", "1"], "structured-cvae"),
    (["semisupervised", "--labels", "50", "--z-dim", "2", "--hidden", "16", "--labelled-batch-size", "25"], "m2"),
])
def test_evaluate_sample_and_diagnose_dispatch_on_the_run_folders_kind(tmp_path, mnist_root, capsys, monkeypatch,
                                                                        command, kind):
    monkeypatch.setenv("PYROVAE_DATA", str(mnist_root))
    run = tmp_path / "run"
    assert main([*command, "--epochs", "1", "--train-size", "300", "--test-size", "50", "--eval-num-samples", "3",
                 "--out", str(run), "--no-progress"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["kind"] == kind
    capsys.readouterr()
    assert main(["evaluate", str(run), "-k", "3", "--test-size", "20", "--probe-train-size", "100",
                 "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["log_likelihood_of"] == family_for(kind).log_likelihood_of
    assert evaluated["elbo_nats"] <= evaluated["log_likelihood_nats"] + 1e-4
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert Path(capsys.readouterr().out.strip()).stat().st_size > 0
    assert main(["diagnose", str(run), "--num-images", "2", "--num-samples", "30", "--mcmc-images", "1",
                 "--mcmc-samples", "10", "--mcmc-warmup", "10", "--gap-steps", "2", "--ll-samples", "10",
                 "--nuts-workers", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["kind"] == kind and (run / "diagnostics.md").exists()
    assert set(report["skipped"]) == ({"gaps", "mcmc"} if kind == "m2" else set())


@pytest.mark.mnist
def test_a_users_own_family_trains_resumes_evaluates_and_is_diagnosed(tmp_path, mnist_root, capsys):
    example = load_example()
    metrics, report = example.main(["--data-dir", str(mnist_root), "--epochs", "2", "--train-size", "300",
                                    "--test-size", "30", "--out", str(tmp_path / "run")])
    assert metrics["elbo_nats"] <= metrics["log_likelihood_nats"] < 0 and metrics["log_likelihood_of"] == "log p(x)"
    assert report["summary"]["kind"] == "two-layer-vae" and "mcmc" in report["skipped"]
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]  # one epoch, then one more after resuming
    capsys.readouterr()
    # the run folder of a registered family works with the commands like any other
    assert main(["evaluate", str(tmp_path / "run"), "-k", "2", "--test-size", "10", "--no-probe",
                 "--data-dir", str(mnist_root), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 10
