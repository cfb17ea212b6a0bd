"""The frozen reference of issue 19: before the one-protocol refactor, each family trained for 2 epochs on
300 MNIST images (seed 0) and was tested on 100 test images (``tests/fixtures/freeze_v1.py``, commit
dceb743). The one trainer and the one evaluator must give the same numbers, to float rounding; and the run
folders that code wrote (checkpoint format v1) must load, evaluate to what they did, and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyro
import pytest

from pyrovae.data import load_data
from pyrovae.evaluation import evaluate
from pyrovae.training import fit, load_run
from pyrovae.training.checkpoint import FORMAT_V1, upgrade_v1

pytestmark = pytest.mark.mnist

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "reference_v1.json").read_text())
KINDS = {"vae": None, "cvae": None, "structured": "structured-cvae", "m2": "m2"}
#: relative tolerance: float rounding (the sums of the one trainer run in another order), far below what a
#: change of random draws moves (about 1e-3 of these ELBOs, and whole test images of an accuracy)
RTOL = 1e-5


def v1_config(family: str):
    """The reference's v1 config in today's layout (what the v1 checkpoint loader does)."""
    state = {"format": FORMAT_V1, "config": REFERENCE[family]["config"], "kind": KINDS[family], "epoch": 0,
             "model": {}}
    from pyrovae.training import RunConfig
    return RunConfig.from_dict(upgrade_v1(state)["config"])


#: old history key -> (new key, sign)
RENAMED = {"vae": {"train_elbo": ("train_objective", 1)}, "cvae": {"train_elbo": ("train_objective", 1)},
           "structured": {"train_elbo": ("train_objective", 1)},
           "m2": {"loss": ("train_objective", -1), "unlabelled_elbo": ("train_unlabelled_elbo", 1),
                  "labelled_elbo": ("train_labelled_elbo", 1), "classification_loss": ("train_classification_loss", 1)}}
TEST_RENAMED = {"log_likelihood_given_label_nats": ("log_likelihood_nats", 1),
                "elbo_given_label_nats": ("elbo_nats", 1),
                "log_likelihood_given_label_stderr": ("log_likelihood_stderr", 1),
                "elbo_given_label_stderr": ("elbo_stderr", 1),
                "cvae_neg_cll_nats": ("log_likelihood_nats", -1), "cvae_neg_elbo_nats": ("elbo_nats", -1),
                "cvae_neg_cll_stderr": ("log_likelihood_stderr", 1), "cvae_neg_elbo_stderr": ("elbo_stderr", 1),
                "baseline_neg_cll_nats": ("baseline_neg_cll", 1),
                "baseline_neg_cll_stderr": ("baseline_neg_cll_stderr", 1),
                "log_likelihood_given_label_bits_per_dim": ("log_likelihood_bits_per_dim", 1)}


def _compare(old: dict, new: dict, renamed: dict, where: str) -> None:
    for key, value in old.items():
        new_key, sign = renamed.get(key, (key, 1))
        if isinstance(value, float):
            assert new[new_key] == pytest.approx(sign * value, rel=RTOL, abs=1e-9), f"{where}: {key}"
        elif isinstance(value, list) and value and isinstance(value[0], float):
            assert new[new_key] == pytest.approx(value, rel=RTOL, abs=1e-7), f"{where}: {key}"
        elif isinstance(value, dict):
            _compare(value, new[new_key], {}, f"{where}.{key}")


@pytest.mark.parametrize("family", sorted(KINDS))
def test_each_family_reproduces_the_frozen_reference(tmp_path, mnist_root, family):
    config = v1_config(family)
    data = load_data(config.data, config.trainer.seed)
    model, history = fit(config, tmp_path / family, data=data, progress=False)
    reference = REFERENCE[family]
    assert len(history) == len(reference["history"])
    for old, new in zip(reference["history"], history):
        _compare(old, new, RENAMED[family], f"{family} epoch {old['epoch']}")
    if "test" not in reference:
        return
    test = data[2].subset(slice(0, REFERENCE["test_images"]))
    probe = data[2].subset(slice(100, 200)) if family == "vae" else None
    pyro.set_rng_seed(0)
    k = REFERENCE["num_samples"]
    metrics = evaluate(model, test, k, max_chunk=REFERENCE["test_images"] * k, progress=False, probe_train=probe)
    old = {k: v for k, v in reference["test"].items() if not k.startswith(("gap_", "hidden_", "visible"))}
    _compare(old, metrics, TEST_RENAMED, f"{family} test")


@pytest.mark.parametrize("family", sorted(KINDS))
def test_a_v1_run_folder_loads_evaluates_as_before_and_resumes(tmp_path, mnist_root, family):
    run = tmp_path / family
    shutil.copytree(FIXTURES / "v1_runs" / family, run)
    expected = json.loads((FIXTURES / "v1_runs" / "expected.json").read_text())[family]
    model, config, state = load_run(run)
    assert state["upgraded_from"] == FORMAT_V1 and model.kind == config.kind == (KINDS[family] or family)
    _, _, test = load_data(config.data, config.trainer.seed)
    if family == "m2":
        assert model.test_metrics(test)["accuracy"].mean().item() == pytest.approx(expected["test_accuracy"], abs=1e-12)
    else:
        pyro.set_rng_seed(0)
        metrics = evaluate(model, test.subset(slice(0, 100)), 50, max_chunk=5000, progress=False,
                           latent_statistics=False)
        old = {k: v for k, v in expected.items()
               if k.endswith("_nats") and isinstance(v, float) and not k.startswith(("gap", "baseline"))}
        _compare(old, metrics, TEST_RENAMED, f"{family} v1 run")
    longer = config.model_copy(update={"trainer": config.trainer.replace(epochs=config.trainer.epochs + 1)})
    _, history = fit(longer, run, resume=True, progress=False)  # old runs go on in the one trainer
    assert history[-1]["epoch"] == config.trainer.epochs + 1 and len(history) == len(state["history"]) + 1
