"""What a user sees while training and afterwards (issue 24, group 3): the ELBO beside the objective and the
KL warm-up marked, progress, metrics.csv and TensorBoard, the command line (--config, plugins, help, no
abbreviations), plug-ins of one's own that round-trip through run folders, and NUTS workers that never
re-run a user's script. Tiny data, CPU, a few seconds each."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae import ArgumentTypeError, ConfigError, DataConfig, RunConfig, TrainerConfig, VAEConfig
from pyrovae.app import runs
from pyrovae.app.cli import HelpFormatter, build_parser, main, run_config
from pyrovae.components.plugins import REGISTRIES
from pyrovae.training import fit
from pyrovae.training.config import EvaluationConfig
from pyrovae.training.reporting import epoch_line, progress_mode, warmup_warnings

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
COUNTS = RNG.poisson(3.0, size=(60, 5)).astype(np.float32)


def _config(epochs=2, warmup=10.0, **trainer) -> RunConfig:
    return RunConfig(model=VAEConfig(z_dim=2, hidden=(8,), likelihood="poisson"),
                     trainer=TrainerConfig(epochs=epochs, batch_size=16, kl_warmup_epochs=warmup, **trainer),
                     evaluation=EvaluationConfig(num_samples=3))


def _subparsers():
    parser = build_parser()
    return parser, next(a for a in parser._actions if a.dest == "command").choices


# --- 1. the ELBO beside the objective, the warm-up marked and warned about ----------------------------------


def test_a_run_inside_its_warmup_records_the_elbo_beside_the_objective_and_warns(tmp_path, caplog, capsys):
    with caplog.at_level("WARNING"):
        _, history = fit(_config(), tmp_path / "run", data=torch.from_numpy(COUNTS))
    for row in history:  # the ELBO (beta = 1) and the beta-weighted objective of the same pass
        assert row["train_elbo"] == pytest.approx(row["train_reconstruction"] - row["train_kl"], abs=1e-3)
        assert row["beta"] < 1 and row["train_objective"] > row["train_elbo"]
    assert "before its KL warm-up" in caplog.text
    training = json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]
    assert training["kl_warmup_epochs"] == 10 and "before its KL warm-up of 10 epochs" in training["warnings"][0]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and "ELBO" in lines[0] and "objective" in lines[0] and "KL warm-up" in lines[0]

    _, history = fit(_config(epochs=3, warmup=2), tmp_path / "long", data=torch.from_numpy(COUNTS))
    assert json.loads((tmp_path / "long" / "metrics.json").read_text())["training"]["warnings"] == []
    assert history[-1]["beta"] == 1.0


def test_an_early_stop_inside_the_warmup_is_warned_about_at_the_end():
    class Stage:
        name, epochs, weighted_sites = "elbo", 20, None

    trainer = TrainerConfig(kl_warmup_epochs=10)
    assert warmup_warnings([Stage()], trainer) == []  # 20 epochs: the warm-up ends on time
    stopped = [{"epoch": e, "beta": e / 10} for e in (1, 2, 3)]
    assert "ends at epoch 3" in warmup_warnings([Stage()], trainer, stopped)[0]
    assert warmup_warnings([Stage()], trainer, [{"epoch": e, "beta": min(1, e / 10)} for e in range(1, 13)]) == []


def test_the_epoch_line_puts_the_elbo_first_and_the_plot_shades_the_warmup(tmp_path):
    row = {"epoch": 3, "train_objective": -84.9, "train_elbo": -97.31, "train_reconstruction": -80.0,
           "train_kl": 17.3, "beta": 0.3, "lr": 1e-3, "validation_objective": -99.0, "validation_elbo": -99.0,
           "seconds": 1.25}
    line = epoch_line(row, 10)
    assert line.startswith("epoch 3/10: ELBO -97.31 (objective -84.90 at beta 0.3, KL warm-up)")
    assert "validation ELBO -99" in line and "validation objective" not in line and line.endswith("1.2 s")
    assert "objective" not in epoch_line({**row, "train_objective": -97.31, "beta": 1.0}, 10).split(",")[0]

    from pyrovae.plots import plot_elbo_curves, warmup_extent
    finished = [{"epoch": e, "beta": min(1.0, e / 4), "train_elbo": -100.0 + e, "train_objective": -90.0 + e}
                for e in range(1, 9)]
    assert warmup_extent(finished) == (4.0, True)
    assert warmup_extent(finished[:3]) == (3.0, False)  # still rising at the last epoch
    assert warmup_extent([{**r, "beta": 1.0} for r in finished]) is None  # no warm-up
    assert plot_elbo_curves(finished, tmp_path / "elbo.png").stat().st_size > 1000


# --- 2. progress ---------------------------------------------------------------------------------------------


def test_progress_is_a_bar_in_a_terminal_lines_elsewhere_and_nothing_when_off(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress_mode(None) == "bar"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress_mode(None) == "lines" and progress_mode(True) == "bar" and progress_mode(False) == "off"


def test_fit_shows_a_whole_run_bar_with_an_eta(tmp_path, capsys):
    fit(_config(warmup=0), tmp_path / "run", data=torch.from_numpy(COUNTS), progress=True)
    err = capsys.readouterr().err
    assert "training: 100%" in err and "6/6" in err  # 3 steps per epoch, 2 epochs: one bar for the run
    assert err.count("epoch 1/2:") == 1 and "step/s" in err


def test_pyrovae_train_ends_with_the_files_it_wrote_and_repeats_from_its_config(tmp_path, capsys):
    np.save(tmp_path / "x.npy", COUNTS)
    assert main(["train", "--data", str(tmp_path / "x.npy"), "--likelihood", "poisson", "--z-dim", "2", "--hidden",
                 "8", "--epochs", "2", "--batch-size", "16", "--eval-num-samples", "3", "--out",
                 str(tmp_path / "run")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["run_dir"] == str(tmp_path / "run")
    listed = out.err[out.err.index("run folder"):]
    for name in ("checkpoint.pt", "config.json", "metrics.json", "metrics.csv", "elbo.png"):
        assert f"  {name}" in listed
    # the run again from its config file, one setting varied on the command line
    assert main(["train", "--config", str(tmp_path / "run" / "config.json"), "--epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "again")]) == 0
    first, again = (RunConfig.load(tmp_path / name / "config.json") for name in ("run", "again"))
    assert again == first.model_copy(update={"trainer": first.trainer.replace(epochs=1)})


# --- 3. metrics.csv and TensorBoard ---------------------------------------------------------------------------


def test_metrics_csv_holds_the_history_one_row_per_epoch(tmp_path):
    _, history = fit(_config(epochs=3), tmp_path / "run", data=torch.from_numpy(COUNTS), progress=False)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and list(rows[0]) == list(history[0])
    for row, record in zip(rows, history):
        assert {k: float(v) for k, v in row.items()} == pytest.approx(record)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_tensorboard_without_its_package_is_one_clear_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'pyrovae\[tensorboard\]'"):
        fit(_config(tensorboard=True), tmp_path / "run", data=torch.from_numpy(COUNTS), progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_tensorboard_event_files_hold_the_history_and_resume_appends(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(_config(tensorboard=True), tmp_path / "run", data=torch.from_numpy(COUNTS), progress=False)
    config = _config(epochs=3, tensorboard=True)
    _, history = fit(config, tmp_path / "run", resume=True, data=torch.from_numpy(COUNTS), progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train/elbo", "train/objective", "train/kl", "beta", "lr"} <= set(events.Tags()["scalars"])
    elbo = events.Scalars("train/elbo")
    assert [e.step for e in elbo] == [1, 2, 3]
    assert [e.value for e in elbo] == pytest.approx([h["train_elbo"] for h in history])


# --- 4. the command line -------------------------------------------------------------------------------------


def test_train_config_file_with_flags_that_override_it(tmp_path):
    saved = RunConfig(model=VAEConfig(z_dim=3, hidden=(16,), likelihood="poisson", x_shape=(5,)),
                      trainer=TrainerConfig(epochs=7, lr=3e-3), data=DataConfig(source="/data/counts.npy"))
    saved.save(tmp_path / "config.json")
    parser = build_parser()
    again = run_config("train", parser.parse_args(["train", "--config", str(tmp_path / "config.json")]))
    assert again.model.replace(x_shape=(5,)) == saved.model and again.trainer == saved.trainer
    assert again.data == saved.data and "x_shape" not in again.model.model_fields_set  # the data's own
    varied = run_config("train", parser.parse_args(["train", "--config", str(tmp_path / "config.json"),
                                                    "--epochs", "2", "--z-dim", "4"]))
    assert (varied.trainer.epochs, varied.trainer.lr, varied.model.z_dim, varied.model.hidden) == (2, 3e-3, 4, (16,))

    m2 = RunConfig(model=pyrovae.M2Config())
    m2.save(tmp_path / "m2.json")
    with pytest.raises(ConfigError, match="pyrovae semisupervised --config"):
        run_config("train", parser.parse_args(["train", "--config", str(tmp_path / "m2.json")]))
    assert run_config("semisupervised", parser.parse_args(["semisupervised", "--config", str(tmp_path / "m2.json")]
                                                          )).model == m2.model


def test_no_abbreviated_options_anywhere(capsys):
    parser, sub = _subparsers()
    assert parser.parse_args(["evaluate", "run", "--data", "bc.csv"]).data_source == "bc.csv"
    for argv in (["train", "--data-d", "x"], ["train", "--epoch", "3"], ["evaluate", "run", "--num-s", "3"],
                 ["diagnose", "run", "--mcmc-im", "1"], ["--verb", "train"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        err = capsys.readouterr().err
        assert "unrecognized arguments" in err or "invalid choice" in err, argv
    assert not parser.allow_abbrev and all(not p.allow_abbrev for p in sub.values())


def test_every_help_shows_its_defaults():
    _, sub = _subparsers()
    for name, parser in sub.items():
        formatter = HelpFormatter(name)
        for action in parser._actions:
            if action.default in (None, False) or action.option_strings in ([], ["-h", "--help"]):
                continue
            assert "(default:" in formatter._get_help_string(action) % {"default": action.default}, \
                (name, action.dest)
        parser.format_help()  # renders
    assert "--prior mixture --prior-option num_components=10" in sub["train"].format_help().replace("\n", " ") \
        .replace("  ", "").replace("- ", "-")


def test_plugins_lists_every_plugin_with_its_options_and_defaults(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for what, registry in REGISTRIES.items():
        assert f"{what}s (--{what} NAME" in out
        for name in registry:
            assert f"\n  {name}" in out
    assert "mixture  [num_components=10" in out and "student_t  [df=4.0, scale=1.0, learned_scale=false" in out
    assert main(["plugins", "guide"]) == 0
    assert "low_rank_normal  [rank=2" in capsys.readouterr().out


# --- 5. plug-ins of one's own round-trip -----------------------------------------------------------------------


@pytest.fixture
def example():
    """examples/custom_prior_likelihood.py as a module (it registers example_student_t and example_binomial);
    the registries are left as they were."""
    before = {what: dict(registry) for what, registry in REGISTRIES.items()}
    spec = importlib.util.spec_from_file_location("custom_prior_likelihood",
                                                  ROOT / "examples" / "custom_prior_likelihood.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
    for what, registry in REGISTRIES.items():
        registry.clear()
        registry.update(before[what])


def test_register_checks_the_plugin_contract(example):
    class NoSupport(nn.Module):
        num_params = 1

        def __init__(self, x_shape):
            super().__init__()

        def forward(self, params):
            return params

    class WrongShape(nn.Module):
        def __init__(self, z_dim):
            super().__init__()
            self.z_dim = z_dim

        def forward(self):
            import pyro.distributions as dist
            return dist.Normal(torch.zeros(self.z_dim + 1), 1.0).to_event(1)

    with pytest.raises(ArgumentTypeError, match="nn.Module"):
        pyrovae.register_likelihood("thing", object)
    with pytest.raises(ArgumentTypeError, match="check_support"):
        pyrovae.register_likelihood("no_support", NoSupport)
    with pytest.raises(ArgumentTypeError, match="event shape"):
        pyrovae.register_prior("wrong_shape", WrongShape)
    with pytest.raises(ConfigError, match="taken by"):
        pyrovae.register_likelihood("binomial", example.Binomial)
    assert pyrovae.register_likelihood("example_binomial", example.Binomial) is example.Binomial  # again: fine
    decorated = pyrovae.register_prior("example_student_t_2")(example.StudentTPrior)
    assert REGISTRIES["prior"]["example_student_t_2"] is decorated
    assert "guide" in REGISTRIES and pyrovae.register_guide  # the third of the set


def test_the_example_likelihood_works_with_the_conv_network(example):
    x = torch.from_numpy(RNG.binomial(16, 0.3, size=(32, 1, 8, 8)).astype(np.float32))
    likelihood = example.Binomial((1, 8, 8), 16)
    vae = pyrovae.VAE(z_dim=2, x_shape=(1, 8, 8), network="conv", likelihood=likelihood)
    likelihood.init_bias(vae.decoder.output_layer, x)  # one bias per channel: the mean logit
    p = (x.mean() / 16).item()
    assert vae.decoder.output_layer.bias.item() == pytest.approx(np.log(p / (1 - p)), abs=0.05)
    loss = pyrovae.inference.ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert torch.isfinite(loss)


def _plugin_config(source, network="conv"):
    return RunConfig(model=VAEConfig(z_dim=2, network=network, prior="example_student_t",
                                     likelihood="example_binomial", likelihood_options={"total_count": 16}),
                     trainer=TrainerConfig(epochs=1, batch_size=16),
                     data=DataConfig(source=str(source)), evaluation=EvaluationConfig(num_samples=3))


def test_a_run_with_the_users_plugins_reloads_once_they_are_registered(tmp_path, example):
    np.save(tmp_path / "x.npy", RNG.binomial(16, 0.3, size=(48, 1, 8, 8)).astype(np.float32))
    run = tmp_path / "run"
    runs.train_run(_plugin_config(tmp_path / "x.npy"), run, progress=False)
    del REGISTRIES["likelihood"]["example_binomial"]  # a new process that has not imported the user's module
    with pytest.raises(pyrovae.PyroVAEError, match="unknown likelihood .example_binomial.*register_likelihood"):
        pyrovae.load_run(run)
    pyrovae.register_likelihood("example_binomial", example.Binomial)
    assert np.isfinite(runs.evaluate_run(run, num_samples=3, probe=False)["log_likelihood_nats"])
    assert runs.sample_run(run, n=4).exists()
    report = runs.diagnose_run(run, tmp_path / "diag", num_images=2, num_samples=30, mcmc_images=0, gap_steps=0,
                               log_likelihood_samples=30)
    assert report["summary"]["num_images"] == 2


def test_the_command_line_finds_a_packages_plugins_through_entry_points(tmp_path, example):
    """A run trained with the example's plug-ins, evaluated by ``pyrovae evaluate`` in a fresh process that
    finds them through a package's ``pyrovae.plugins`` entry point."""
    np.save(tmp_path / "x.npy", RNG.binomial(16, 0.3, size=(48, 1, 8, 8)).astype(np.float32))
    runs.train_run(_plugin_config(tmp_path / "x.npy", network="mlp"), tmp_path / "run", progress=False)
    site = tmp_path / "site"
    (site / "my_plugins-0.1.dist-info").mkdir(parents=True)
    (site / "my_plugins-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugins\n"
                                                               "Version: 0.1\n")
    (site / "my_plugins-0.1.dist-info" / "entry_points.txt").write_text(
        "[pyrovae.plugins]\nexample = my_plugins\n")
    (site / "my_plugins.py").write_text(
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('custom_prior_likelihood', "
        f"{str(ROOT / 'examples' / 'custom_prior_likelihood.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\nsys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "pyrovae", "evaluate", str(tmp_path / "run"), "-k", "3",
                          "--no-probe", "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert np.isfinite(json.loads(out.stdout)["log_likelihood_nats"])
    listed = subprocess.run([sys.executable, "-m", "pyrovae", "plugins", "likelihood"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert "example_binomial  [total_count=<required>]" in listed.stdout


# --- 6. NUTS workers never re-run a user's script ---------------------------------------------------------------


SCRIPT = """\
import sys
print("MARKER", flush=True)
import torch
from pyrovae import VAE
from pyrovae.components.likelihoods import Normal
from pyrovae.data import ArrayDataset
from pyrovae.diagnostics import diagnose
{extra}
torch.manual_seed(0)
vae = VAE(z_dim=2, x_shape=(4,), hidden=(8,), likelihood={likelihood}((4,)))
result = diagnose(vae, ArrayDataset(torch.randn(6, 4), None, "none"), sys.argv[1], num_images=2, num_samples=30,
                  mcmc_images=1, mcmc_samples=10, mcmc_warmup=10, num_chains=2, gap_steps=0,
                  log_likelihood_samples=30, jit_compile=False, nuts_workers=2)
print("WORKERS", result["mcmc"][0]["num_workers"], flush=True)
"""

OWN_LIKELIHOOD = """
class MyNormal(Normal):
    pass
"""


@pytest.mark.parametrize("own_class", [False, True], ids=["pyrovae-classes", "class-in-the-script"])
def test_diagnose_from_a_script_without_a_main_guard_runs_it_once(tmp_path, own_class):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT.format(extra=OWN_LIKELIHOOD if own_class else "",
                                    likelihood="MyNormal" if own_class else "Normal"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("MARKER") == 1, out.stdout
    # pyrovae's own classes: the chains run in the two workers; a class defined in the unguarded script
    # itself cannot reach a worker without running the script there: the chains run in this process
    assert f"WORKERS {1 if own_class else 2}" in out.stdout
    assert ("no 'if __name__" in out.stderr) == own_class


def test_a_guarded_script_with_its_own_classes_still_gets_parallel_chains(tmp_path):
    body = textwrap.indent(SCRIPT.format(extra="", likelihood="MyNormal").replace('print("MARKER", flush=True)\n',
                                                                                  ""), "    ")
    script = tmp_path / "guarded.py"
    script.write_text("from pyrovae.components.likelihoods import Normal\nprint('IMPORTED', flush=True)\n"
                      + OWN_LIKELIHOOD + "\n\ndef main():\n" + body + "\n\nif __name__ == '__main__':\n    main()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "WORKERS 2" in out.stdout and out.stdout.count("IMPORTED") == 3  # this process and the two workers


# --- 7. the examples name their output folder ----------------------------------------------------------------


def test_examples_write_pictures_only_into_a_folder_they_name_and_the_readme_says_how_to_run_them():
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "examples").glob("*.py")):
        text = path.read_text()
        for value in re.findall(r'default="([^"]*\.png)"', text):  # a picture's own path: inside a folder
            assert value.startswith("runs/"), (path.name, value)
        outs = re.findall(r'"--out",? (?:default=)?"([^"]*)"', text)
        assert all(out.startswith("runs/") for out in outs), (path.name, outs)
        assert f".venv/bin/python examples/{path.name}" in text, path.name  # how to run it, in its docstring
        assert f"examples/{path.name}" in readme, path.name
    assert ".venv/bin/python examples/" in readme
