"""Semi-supervised M2 (Kingma et al. 2014): the enumerated ELBO, the labelled subsets, label checks,
classification, training and the command line."""

import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from torch.nn import functional as F

from pyrovae.components.nets import LabelConditionedMLP
from pyrovae.data import DataConfig, ImageDataset
from pyrovae.errors import ConfigError, DataError, PyroVAEError, RunDirError
from pyrovae.models import check_labels
from pyrovae.models.m2 import M2, M2Config, M2Objective, aux_loss_multiplier, balanced_labelled_subset
from pyrovae.training import RunConfig, TrainerConfig, fit, load_run


def fit_m2(config: RunConfig, run_dir, **kwargs):
    return fit(config, run_dir, **kwargs)


def tiny_m2(**kwargs) -> M2:
    return M2(z_dim=3, x_shape=(12,), hidden=(16,), **kwargs).double()


def binary(n: int, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.4).double()


# --- the enumerated ELBO -------------------------------------------------------------------------------------


def test_enumerated_elbo_is_the_q_weighted_sum_of_per_label_elbos():
    """TraceEnum_ELBO on an unlabelled batch = sum_n sum_y q(y|x_n) [ELBO(x_n, y) - log q(y|x_n)], with each
    ELBO(x_n, y) a Trace_ELBO of the labelled model/guide at the same z that the enumerated guide drew."""
    m2 = tiny_m2()
    x = binary(6)
    drawn = {}

    def recording_guide(x, y=None, num_data=None):
        drawn["z"] = m2.enumerated_guide(x, y, num_data)
        return drawn["z"]

    enumerated = -TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m2.model, recording_guide, x)
    z = drawn["z"]
    assert z.shape == (10, 6, 3)  # one z per label and image: the label was summed out, not sampled

    log_q = F.log_softmax(m2.classifier(x), dim=-1)
    by_hand = torch.zeros(())
    for n in range(6):
        for k in range(10):
            y = torch.tensor([k])
            fixed = poutine.trace(m2.guide).get_trace(x[n:n + 1], y)
            fixed.nodes["z"]["value"] = z[k, n:n + 1]
            guide_at_z = poutine.replay(m2.guide, trace=fixed)  # q(z|x,y) scored at the enumerated draw
            elbo_nk = -Trace_ELBO().differentiable_loss(m2.model, guide_at_z, x[n:n + 1], y)
            by_hand = by_hand + log_q[n, k].exp() * (elbo_nk - log_q[n, k])
    assert torch.allclose(enumerated, by_hand, rtol=1e-10, atol=1e-8)

    # The classifier's gradient is exact too (no score-function noise): z does not depend on q(y|x).
    params = list(m2.classifier.parameters())
    g_enum = torch.autograd.grad(enumerated, params, retain_graph=True)
    g_hand = torch.autograd.grad(by_hand, params)
    for a, b in zip(g_enum, g_hand):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_enumerated_elbo_is_below_log_px_and_each_labelled_elbo_below_log_pxy():
    """U(x) <= log p(x) and the labelled ELBO L(x, y) <= log p(x, y), with log p(x) = logsumexp_y log p(x, y)
    estimated by importance sampling from q(z|x,y) (many particles; the bound holds by a wide margin
    against Monte Carlo error at this size)."""
    m2 = tiny_m2()
    x = binary(4, seed=1)
    pyro.set_rng_seed(0)
    k = 4000
    log_pxy = torch.empty(4, 10)
    for label in range(10):
        y = torch.full((4,), label)
        q = m2.guide_family(m2.encoder(x, y))
        z = q.sample((k,))
        log_w = (m2.prior().log_prob(z) + m2.likelihood_of(z, y).log_prob(x) - q.log_prob(z)
                 - math.log(10))
        log_pxy[:, label] = torch.logsumexp(log_w, 0) - math.log(k)
    log_px = torch.logsumexp(log_pxy, dim=1).sum()
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=200, vectorize_particles=True)
    u = -elbo.differentiable_loss(m2.model, m2.enumerated_guide, x)
    assert u < log_px
    labelled = -Trace_ELBO(num_particles=200, vectorize_particles=True).differentiable_loss(
        m2.model, m2.guide, x, torch.zeros(4, dtype=torch.long))
    assert labelled < log_pxy[:, 0].sum()


def test_plates_scale_every_term_to_the_whole_set():
    m2 = tiny_m2()
    x, y = binary(5), torch.tensor([0, 3, 3, 9, 1])
    objective = M2Objective(aux_loss_multiplier=2.5)
    pyro.set_rng_seed(3)
    small = objective(m2, x, x, y)
    pyro.set_rng_seed(3)
    large = objective(m2, x, x, y, num_unlabelled=40, num_labelled=20)
    assert torch.allclose(large["unlabelled"], 8 * small["unlabelled"])
    assert torch.allclose(large["labelled"], 4 * small["labelled"])
    cross_entropy = F.cross_entropy(m2.classifier(x), y, reduction="sum")
    assert torch.allclose(small["classification"], 2.5 * cross_entropy)
    assert torch.allclose(large["classification"], 4 * 2.5 * cross_entropy)
    assert torch.allclose(small["loss"], small["unlabelled"] + small["labelled"] + small["classification"])


def test_label_conditioned_mlp_is_a_linear_layer_on_the_one_hot_concatenation():
    net = LabelConditionedMLP(7, 10, (5, 4), 3)
    u, y = torch.randn(6, 7), torch.randint(0, 10, (6,))
    concatenated = torch.cat([u, F.one_hot(y, 10).float()], dim=-1)
    expected = net.rest(net.first(concatenated))
    assert torch.allclose(net(u, y), expected, atol=1e-6)
    # broadcasting as under parallel enumeration: labels (10, 1) against inputs (6, 7)
    out = net(u, torch.arange(10).unsqueeze(-1))
    assert out.shape == (10, 6, 3)
    assert torch.allclose(out[4], net(u, torch.full((6,), 4)), atol=1e-6)


# --- labelled subsets and label checks -------------------------------------------------------------------


def test_balanced_subset_has_equal_classes_is_seeded_and_partitions_the_set():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (5000,), generator=g)
    for n in (100, 600, 1000, 3000):
        labelled, unlabelled = balanced_labelled_subset(labels, n, seed=1)
        assert torch.equal(torch.bincount(labels[labelled], minlength=10), torch.full((10,), n // 10))
        assert len(labelled) + len(unlabelled) == 5000
        assert torch.equal(torch.sort(torch.cat([labelled, unlabelled])).values, torch.arange(5000))
    again, _ = balanced_labelled_subset(labels, 100, seed=1)
    other, _ = balanced_labelled_subset(labels, 100, seed=2)
    assert torch.equal(again, balanced_labelled_subset(labels, 100, seed=1)[0])
    assert not torch.equal(again, other)


def test_balanced_subset_rejects_unbalanced_or_impossible_sizes():
    labels = torch.arange(10).repeat(20)  # 20 images per class
    with pytest.raises(ConfigError, match="multiple of 10"):
        balanced_labelled_subset(labels, 105)
    with pytest.raises(ConfigError, match="needs 30 images of every class"):
        balanced_labelled_subset(labels, 300)
    with pytest.raises(ConfigError, match="num_labels=105"):
        M2Config.from_dict({"num_labels": 105})
    with pytest.raises(ConfigError, match="num_labels=30 must be a multiple of num_classes=4"):
        M2Config.from_dict({"num_labels": 30, "num_classes": 4})


@pytest.mark.parametrize("labels, message", [
    (torch.tensor([0.0, 1.0, 2.0]), "integer dtype"),
    (torch.tensor([True, False, True]), "integer dtype"),
    (torch.tensor([[0], [1], [2]]), r"shape \(3,\)"),
    (F.one_hot(torch.tensor([0, 1, 2]), 10), r"shape \(3,\)"),
    (torch.tensor([0, 10, 2]), r"in \[0, 10\).*e\.g\. 10"),
    (torch.tensor([0, -1, 2]), r"in \[0, 10\).*e\.g\. -1"),
    (torch.tensor([0, 1]), "got 2 labels for 3 data points"),
    ([0, 1, 2], "torch.Tensor"),
])
def test_bad_labels_get_one_clear_error(labels, message):
    with pytest.raises(PyroVAEError, match=message):
        check_labels(labels, batch=3)


def test_fit_rejects_out_of_range_training_labels(tmp_path):
    train, _, test = separable_data(300)
    train.labels[5] = 10
    with pytest.raises(DataError, match=r"in \[0, 10\)"):
        fit_m2(small_config(epochs=1), tmp_path / "r", data=(train, None, test))
    assert not (tmp_path / "r").exists()


# --- classification and generation ---------------------------------------------------------------------


def test_classify_gives_one_valid_label_per_image():
    m2 = M2(z_dim=4, hidden=(32,))
    x = (torch.rand(7, 1, 28, 28) < 0.3).float()
    labels = m2.classify(x)
    assert labels.shape == (7,) and labels.dtype == torch.int64
    assert ((labels >= 0) & (labels < 10)).all()
    probs = m2.predict_proba(x)
    assert probs.shape == (7, 10) and torch.allclose(probs.sum(-1), torch.ones(7))
    assert torch.equal(labels, probs.argmax(-1))
    assert m2.generate(labels).shape == (7, 1, 28, 28)
    assert m2.analogies(x).shape == (7, 10, 1, 28, 28)
    assert m2.encode(x)["loc"].shape == (7, 4)


def test_classify_and_generate_reject_bad_input():
    m2 = M2(z_dim=4, hidden=(32,))
    with pytest.raises(DataError, match=r"x has shape \(7, 784\)"):
        m2.classify(torch.zeros(7, 784))
    with pytest.raises(DataError, match="binarize"):
        m2.classify(torch.full((2, 1, 28, 28), 0.5))
    with pytest.raises(DataError, match=r"in \[0, 10\)"):
        m2.generate(torch.tensor([3, 11]))
    with pytest.raises(DataError, match=r"z must have shape \(2, 4\)"):
        m2.generate(torch.tensor([3, 1]), torch.zeros(2, 5))


# --- training --------------------------------------------------------------------------------------------


def separable_data(n: int, seed: int = 0, flip: float = 0.05) -> tuple[ImageDataset, None, ImageDataset]:
    """Ten random binary 8x8 prototypes, one per class, with a few flipped pixels: (train, None, test)."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(10, 1, 8, 8, generator=g) < 0.5).float()

    def draw(m):
        y = torch.arange(10).repeat(m // 10 + 1)[:m][torch.randperm(m, generator=g)]
        x = (protos[y] + (torch.rand(m, 1, 8, 8, generator=g) < flip).float()) % 2
        return ImageDataset(x, y, "static")

    return draw(n), None, draw(200)


def small_config(**kwargs) -> RunConfig:
    """An M2 run on 8x8 images (the data's shape: x_shape is not given), 20 labels; ``kwargs`` are trainer
    and data settings."""
    values = {"epochs": 2, "batch_size": 50, "lr": 3e-3, **kwargs}
    trainer = {k: v for k, v in values.items() if k in TrainerConfig.model_fields}
    data = {k: v for k, v in values.items() if k in DataConfig.model_fields}
    model = M2Config(num_labels=20, z_dim=4, hidden=(32,), labelled_batch_size=20, aux_loss_multiplier=10.0)
    return RunConfig(model=model, trainer=TrainerConfig(**trainer), data=DataConfig(**data))


def test_fit_learns_to_classify_from_two_labels_per_class(tmp_path):
    data = separable_data(600)
    config = small_config(epochs=4)
    m2, history = fit_m2(config, tmp_path / "run", data=data, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["test_accuracy"] > 0.9  # chance is 0.1
    assert history[-1]["train_unlabelled_elbo"] > history[0]["train_unlabelled_elbo"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final_test_accuracy"] == history[-1]["test_accuracy"]
    assert metrics["training"]["num_labelled"] == 20 and metrics["training"]["num_unlabelled"] == 580
    assert metrics["training"]["aux_loss_multiplier"] == 10.0
    assert m2.x_shape == (1, 8, 8)  # from the data


def test_default_aux_loss_multiplier_is_kingmas_alpha_on_every_labelled_image():
    assert aux_loss_multiplier(M2Config(num_labels=100), 50_000) == pytest.approx(5000.0)
    assert aux_loss_multiplier(M2Config(num_labels=3000), 60_000) == pytest.approx(6000.0)
    assert aux_loss_multiplier(M2Config(num_labels=100, aux_loss_multiplier=46), 50_000) == 46


def test_resumed_run_equals_an_uninterrupted_one_and_reloads_from_its_folder(tmp_path):
    data = separable_data(300)
    config = small_config(epochs=2, binarization="static")
    straight, h_straight = fit_m2(config, tmp_path / "a", data=data, progress=False)
    fit_m2(small_config(epochs=1, binarization="static"), tmp_path / "b", data=data, progress=False)
    resumed, h_resumed = fit_m2(config, tmp_path / "b", resume=True, data=data, progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    drop = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert drop(h_straight) == drop(h_resumed)

    loaded, loaded_config, state = load_run(tmp_path / "b")
    assert isinstance(loaded, M2) and state["epoch"] == 2 and state["kind"] == "m2"
    assert loaded_config.model == config.model.replace(x_shape=(1, 8, 8)) and loaded_config.trainer == config.trainer
    assert torch.equal(state["family_state"]["labelled_indices"], resumed.labelled_indices)
    x = data[2].images[:16]
    assert torch.equal(loaded.classify(x), resumed.classify(x))
    with pytest.raises(RunDirError, match="--resume"):
        fit_m2(config, tmp_path / "b", data=data)


def test_cosine_schedule_resumes_exactly_after_an_interruption_and_ends_at_its_final_rate(tmp_path, monkeypatch):
    import pyrovae.training.trainer as ss

    data = separable_data(300)
    config = small_config(epochs=3, binarization="static", lr_schedule="cosine", final_lr_ratio=0.1)
    straight, h_straight = fit_m2(config, tmp_path / "a", data=data, progress=False)
    constant, _ = fit_m2(small_config(epochs=3, binarization="static"), tmp_path / "c", data=data, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), constant.state_dict().values()))

    save, saves = ss.save_checkpoint, []

    def interrupted_after_epoch_one(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt
        save(*args, **kwargs)

    monkeypatch.setattr(ss, "save_checkpoint", interrupted_after_epoch_one)
    with pytest.raises(KeyboardInterrupt):
        fit_m2(config, tmp_path / "b", data=data, progress=False)
    monkeypatch.undo()
    assert load_run(tmp_path / "b")[2]["epoch"] == 1
    resumed, h_resumed = fit_m2(config, tmp_path / "b", resume=True, data=data, progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    drop = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert drop(h_straight) == drop(h_resumed)
    state = load_run(tmp_path / "b")[2]
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(config.trainer.lr * 0.1, rel=1e-12)


# --- the command line ---------------------------------------------------------------------------------


@pytest.mark.mnist
def test_cli_semisupervised_writes_metrics_and_figures(tmp_path, mnist_root, capsys):
    from pyrovae.app.cli import main

    run = tmp_path / "m2"
    code = main(["semisupervised", "--labels", "100", "--epochs", "1", "--train-size", "1000", "--hidden", "32",
                 "--z-dim", "4", "--validation-size", "500", "--test-size", "500", "--eval-num-samples", "5",
                 "--data-dir", str(mnist_root), "--out", str(run), "--no-progress"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert printed["final_test_accuracy"] == metrics["final_test_accuracy"]
    assert 0 <= metrics["history"][0]["test_accuracy"] <= 1
    assert "test_accuracy_at_best_validation" in metrics
    for name in ("samples_by_digit.png", "analogies.png", "accuracy.png", "checkpoint.pt", "config.json"):
        assert (run / name).stat().st_size > 0


def test_cli_semisupervised_bad_label_count_is_one_clear_error(tmp_path, capsys):
    from pyrovae.app.cli import main

    assert main(["semisupervised", "--labels", "105", "--out", str(tmp_path / "r")]) == 2
    assert "num_labels=105" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_m2_trains_with_subnormals_flushed(tmp_path):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode")
    seen = []
    fit_m2(small_config(epochs=1), tmp_path / "run", data=separable_data(200), progress=False,
           on_epoch_end=lambda *args: seen.append((torch.full((4,), 1e-39) * 1.0).max().item() == 0.0))
    assert seen == [True] and (torch.full((4,), 1e-39) * 1.0).max().item() > 0
