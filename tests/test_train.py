import os

import pyro
import pytest
import torch

import json

from pyrovae.data import DataConfig
from pyrovae.errors import CheckpointError, ConfigError, DataError, RunDirError
from pyrovae.evaluation import evaluate
from pyrovae.files import atomic_write_bytes
from pyrovae.inference.objectives import make_elbo
from pyrovae.models import VAE, VAEConfig
from pyrovae.settings import make_config
from pyrovae.training import RunConfig, TrainerConfig, fit, load_checkpoint, load_run, make_optimizer

from .conftest import random_binary_data


def tiny_config(model=None, **kw) -> RunConfig:
    """A 3-d VAE with one hidden layer of 32; ``kw`` are trainer and data settings."""
    values = {"epochs": 2, "batch_size": 32, "lr": 3e-3, **kw}
    trainer = {k: v for k, v in values.items() if k in TrainerConfig.model_fields}
    data = {k: v for k, v in values.items() if k in DataConfig.model_fields}
    return RunConfig(model=model or VAEConfig(z_dim=3, hidden=(32,)), trainer=TrainerConfig(**trainer),
                     data=DataConfig(**data))


def test_training_improves_the_elbo(tmp_path):
    _, history = fit(tiny_config(epochs=4), tmp_path, data=random_binary_data(512), progress=False)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"] + 20


def test_the_history_records_the_objective_and_the_elbo_of_the_same_pass(tmp_path):
    _, history = fit(tiny_config(epochs=2, beta=0.5, kl_warmup_epochs=0), tmp_path, data=random_binary_data(256),
                     progress=False)
    for row in history:  # the objective is the ELBO with its KL term weighed by beta
        assert row["beta"] == 0.5
        assert row["train_elbo"] == pytest.approx(row["train_reconstruction"] - row["train_kl"], rel=1e-5)
        assert row["train_objective"] == pytest.approx(row["train_reconstruction"] - 0.5 * row["train_kl"], rel=1e-5)
        assert row["train_objective"] > row["train_elbo"]


def _step(vae, elbo, optimizer, x, num_data):
    record = vae.objective_record(elbo, {"x": x}, num_data)
    optimizer.zero_grad()
    record.loss.backward()
    optimizer.step()
    return record.loss.detach()


def test_fused_adam_takes_the_same_steps_as_the_default_adam():
    data, _, _ = random_binary_data(256)
    x = data.images[:64]
    pyro.set_rng_seed(0)
    a = VAE(z_dim=3, x_shape=x.shape[1:], hidden=(32,))
    b = VAE(z_dim=3, x_shape=x.shape[1:], hidden=(32,))
    b.load_state_dict(a.state_dict())
    start = [p.detach().clone() for p in a.parameters()]
    fused = make_optimizer(a.parameters(), 1e-2)
    assert fused.defaults["fused"]
    plain = torch.optim.Adam(b.parameters(), lr=1e-2)
    elbo = make_elbo()
    with pyro.validation_enabled(False):
        for step in range(10):
            torch.manual_seed(step)
            la = _step(a, elbo, fused, x, len(data))
            torch.manual_seed(step)
            lb = _step(b, elbo, plain, x, len(data))
            torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    assert all(not torch.equal(p, p0) for p, p0 in zip(a.parameters(), start))  # the steps moved everything
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=name)


def test_resume_continues_the_same_run(tmp_path):
    data = random_binary_data()
    straight, _ = fit(tiny_config(epochs=3), tmp_path / "a", data=data, progress=False)

    def stop_after_first_epoch(model, row, path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(epochs=3), tmp_path / "b", data=data, progress=False, on_epoch_end=stop_after_first_epoch)
    torch.manual_seed(123)  # resuming must not depend on the process's RNG state
    resumed, history = fit(tiny_config(epochs=3), tmp_path / "b", resume=True, data=data, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_checkpoint_round_trip_gives_the_same_log_likelihood(tmp_path):
    data = random_binary_data()
    vae, _ = fit(tiny_config(epochs=1), tmp_path, data=data, progress=False)
    loaded, config, state = load_run(tmp_path)
    assert config == tiny_config(epochs=1) and state["epoch"] == 1 and state["kind"] == "vae"
    x = data[2].images[:32]
    pyro.set_rng_seed(5)
    before = evaluate(vae, x, num_samples=50, progress=False)
    pyro.set_rng_seed(5)
    after = evaluate(loaded, x, num_samples=50, progress=False)
    assert before["log_likelihood_nats"] == after["log_likelihood_nats"]


@pytest.mark.parametrize("model", [
    dict(prior="vamp", prior_options={"num_components": 4}, guide="iaf", guide_options={"num_flows": 1}),
    dict(prior="flow", prior_options={"kind": "affine"}, guide="low_rank_normal", guide_options={"rank": 1}),
])
def test_a_run_folder_reloads_with_its_own_plugins_and_options(tmp_path, model):
    data = random_binary_data()
    config = tiny_config(epochs=1, model=VAEConfig(z_dim=3, hidden=(32,), **model))
    vae, _ = fit(config, tmp_path, data=data, progress=False)
    loaded, saved, _ = load_run(tmp_path)
    assert saved.model == config.model
    assert json.loads((tmp_path / "metrics.json").read_text())["training"]["kl_term"] == "monte_carlo"
    assert type(loaded.prior) is type(vae.prior) and type(loaded.guide_family) is type(vae.guide_family)
    x = data[2].images[:16]
    pyro.set_rng_seed(5)
    before = evaluate(vae, x, num_samples=20, progress=False)
    pyro.set_rng_seed(5)
    after = evaluate(loaded, x, num_samples=20, progress=False)
    assert before["log_likelihood_nats"] == pytest.approx(after["log_likelihood_nats"], abs=1e-4)


def test_two_models_in_one_process_do_not_share_parameters(tmp_path):
    data = random_binary_data()
    a, _ = fit(tiny_config(epochs=1), tmp_path / "a", data=data, progress=False)
    frozen = {k: v.clone() for k, v in a.state_dict().items()}
    b, _ = fit(tiny_config(epochs=1, seed=1), tmp_path / "b", data=data, progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, frozen[k]), f"training b changed a's {k}"
    assert not torch.equal(a.decoder.output_layer.weight, b.decoder.output_layer.weight)


def test_an_existing_run_is_never_overwritten_and_resume_needs_a_run(tmp_path):
    data = random_binary_data()
    fit(tiny_config(epochs=1), tmp_path, data=data, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(RunDirError, match="--resume"):
        fit(tiny_config(epochs=1), tmp_path, data=data, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    with pytest.raises(RunDirError, match="holds no checkpoint.pt"):
        fit(tiny_config(), tmp_path / "empty", resume=True, data=data, progress=False)


def test_an_interrupted_checkpoint_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = random_binary_data()
    fit(tiny_config(epochs=1), tmp_path, data=data, progress=False)
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def crash(fd):
        raise KeyboardInterrupt  # as if the process were stopped while writing

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(epochs=2), tmp_path, resume=True, data=data, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")], "temporary files were left behind"
    _, history = fit(tiny_config(epochs=2), tmp_path, resume=True, data=data, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]


def test_unreadable_checkpoints_get_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    fit(tiny_config(epochs=1), tmp_path, data=random_binary_data(), progress=False)
    path = tmp_path / "checkpoint.pt"
    atomic_write_bytes(path, path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_run(tmp_path)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a pyrovae checkpoint"):
        load_run(tmp_path)


def test_data_outside_the_likelihood_support_is_refused_before_training(tmp_path):
    train, _, test = random_binary_data()
    train.images[0, 0, 0, 0] = 0.5
    with pytest.raises(DataError, match="binarize"):
        fit(tiny_config(), tmp_path, data=(train, None, test), progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("values, message", [
    (dict(trainer=dict(epochs=0)), "trainer.epochs=0"),
    (dict(trainer=dict(elbo="RenyiELBO")), "elbo='RenyiELBO'"),
    (dict(data=dict(binarization="half")), "binarization='half'"),
    (dict(trainer=dict(device="tpu")), "device"),
    (dict(trainer=dict(learning_rate=0.1)), "learning_rate=0.1: unknown option"),
    (dict(trainer=dict(beta=0)), "beta=0"),
    (dict(trainer=dict(lr=float("inf"))), "lr=inf"),
    (dict(model=dict(kind="vae", prior="uniform")), "unknown prior 'uniform'"),
    (dict(model=dict(kind="vae", prior_options=dict(num_components=3))),
     "StandardNormal has no option 'num_components'"),
    (dict(model=dict(kind="gan")), "no model family of kind 'gan'"),
    (dict(model=dict(z_dim=3)), "needs a 'kind'"),
])
def test_bad_config_values_get_one_error_naming_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        make_config(RunConfig, **values)


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(seed=3, validation_size=10)
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == config


@pytest.mark.parametrize("elbo, prior, expected", [
    ("TraceMeanField_ELBO", "standard_normal", "analytic"),
    ("Trace_ELBO", "standard_normal", "monte_carlo"),
    ("TraceMeanField_ELBO", "mixture", "monte_carlo"),
])
def test_the_run_folder_states_how_the_kl_term_is_computed(tmp_path, elbo, prior, expected):
    config = tiny_config(epochs=1, elbo=elbo, model=VAEConfig(z_dim=3, hidden=(32,), prior=prior))
    fit(config, tmp_path, data=random_binary_data(128), progress=False)
    assert json.loads((tmp_path / "metrics.json").read_text())["training"]["kl_term"] == expected


def _flushes() -> bool:
    return (torch.full((4,), 1e-39) * 1.0).max().item() == 0.0  # 1e-39 is subnormal in float32


@pytest.mark.parametrize("before", [False, True])
def test_flush_denormals_flushes_inside_and_restores_the_previous_setting(before):
    from pyrovae.training import flush_denormals

    if not torch.set_flush_denormal(before):
        pytest.skip("this CPU has no flush-to-zero mode")
    try:
        with flush_denormals():
            assert _flushes()
        assert _flushes() == before
    finally:
        torch.set_flush_denormal(False)


def test_training_runs_with_subnormals_flushed_and_leaves_the_setting_alone(tmp_path):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode")
    seen = []
    fit(tiny_config(epochs=1), tmp_path, data=random_binary_data(64), progress=False,
        on_epoch_end=lambda *args: seen.append(_flushes()))
    assert seen == [True] and not _flushes()
