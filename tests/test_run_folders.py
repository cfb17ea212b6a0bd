"""Run folders: nothing a user had is ever overwritten or mixed (issue 24, group 1).

A new run goes only into a new or empty folder; an output path is never one of a run folder's own files;
every command that writes a run folder holds its lock; ``--resume`` keeps the run's settings and says so
when others are given; no file is read through a link out of the folder; the learning-rate schedule
survives a change in the number of processes; interrupted writes leave no debris and files get the
umask's mode. Tiny runs on CPU (8x8 binary images or a small count table), a second or two each.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrovae import ConfigError, DataConfig, RunConfig, RunDirError, TrainerConfig, VAEConfig, fit
from pyrovae.app import runs
from pyrovae.app.cli import main
from pyrovae.files import atomic_write_text
from pyrovae.models import M2Config
from pyrovae.training.checkpoint import LOCK, load_checkpoint, read_metrics, run_dir_lock, save_checkpoint
from pyrovae.training.config import EvaluationConfig
from pyrovae.training.trainer import given_settings, resumed_step

IMAGES = (torch.rand(80, 1, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.3).float()
COUNTS = np.random.default_rng(0).poisson(3.0, size=(80, 5)).astype(np.float32)
OWN = ("checkpoint.pt", "config.json", "metrics.json", "data.json")


def _config(source, epochs=2, likelihood="bernoulli", **trainer) -> RunConfig:
    return RunConfig(model=VAEConfig(z_dim=2, hidden=(8,), likelihood=likelihood),
                     trainer=TrainerConfig(epochs=epochs, batch_size=16, **trainer),
                     data=DataConfig(source=str(source)), evaluation=EvaluationConfig(num_samples=3))


def _again(epochs: int) -> RunConfig:
    """The config a script resumes a run of :func:`_config` with (its data is the run's own)."""
    return RunConfig(model=VAEConfig(z_dim=2, hidden=(8,)), trainer=TrainerConfig(epochs=epochs, batch_size=16))


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (what a refused command must leave as it was)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    np.save(folder / "images.npy", IMAGES.numpy())
    header = ",".join(f"gene{j}" for j in range(COUNTS.shape[1]))
    np.savetxt(folder / "counts.csv", COUNTS, delimiter=",", header=header, comments="", fmt="%d")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_files) -> Path:
    """A finished 2-epoch image run; tests that change it work on a copy (:func:`_copy`)."""
    run = tmp_path_factory.mktemp("runs") / "images"
    runs.train_run(_config(data_files / "images.npy"), run, progress=False)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# --- 1. a new run goes only into a new or empty folder -----------------------------------------------------


@pytest.mark.parametrize("contents", [{"notes.txt": b"my notes"}, {"config.json": b"{}"},
                                      {"picture.png": b"\x89PNG\r\n\x1a\n..."},
                                      {"metrics.json": b'{"mine": 1}', "sub/deeper.txt": b"x"}])
def test_a_new_run_refuses_a_non_empty_folder_and_touches_nothing(tmp_path, data_files, contents):
    folder = tmp_path / "out"
    for name, data in contents.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    before = _snapshot(folder)
    for train in (lambda: fit(_config(data_files / "images.npy"), folder, progress=False),
                  lambda: runs.train_run(_config(data_files / "images.npy"), folder, progress=False)):
        with pytest.raises(RunDirError, match="not empty") as info:
            train()
        assert str(folder) in str(info.value) and "no checkpoint.pt" in str(info.value)
        assert _snapshot(folder) == before and sorted(os.listdir(folder)) == sorted({n.split("/")[0] for n in contents})


def test_an_empty_existing_folder_is_fine_and_a_failed_start_leaves_no_folder(tmp_path, data_files):
    (tmp_path / "empty").mkdir()
    fit(_config(data_files / "images.npy", epochs=1), tmp_path / "empty", progress=False)
    assert (tmp_path / "empty" / "checkpoint.pt").exists() and not (tmp_path / "empty" / LOCK).exists()
    with pytest.raises(ConfigError):  # fails after the lock created the folder: the folder goes again
        fit(_config(data_files / "images.npy", early_stopping_patience=2), tmp_path / "new" / "run", progress=False)
    assert not (tmp_path / "new").exists()


def test_the_command_line_refuses_a_folder_of_user_files(tmp_path, data_files, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("chapter 1")
    code = main(["train", "--data", str(data_files / "images.npy"), "--z-dim", "2", "--hidden", "8", "--epochs", "1",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and "thesis.tex" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["thesis.tex"]


# --- 2. an output path is never a run folder's own file ------------------------------------------------------


def test_sample_out_never_replaces_a_run_file_or_anything_but_an_image(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    for name in (*OWN, "best.pt"):
        with pytest.raises(RunDirError, match="own file"):
            runs.sample_run(run, n=4, out=str(run / name))
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(RunDirError, match="not a PNG"):
        runs.sample_run(run, n=4, out=str(tmp_path / "notes.png"))
    assert (tmp_path / "notes.png").read_text() == "not a picture"
    for out, match in ((tmp_path / "notes.txt", r"ending in \.png"), (tmp_path / "x.jpg", r"ending in \.png")):
        with pytest.raises(ConfigError, match=match):
            runs.sample_run(run, n=4, out=str(out))
    with pytest.raises(RunDirError, match="is a folder"):
        runs.sample_run(run, n=4, out=str(tmp_path))
    assert _snapshot(run) == before and not (tmp_path / "x.jpg").exists()
    assert main(["sample", str(run), "--out", str(run / "checkpoint.pt")]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err and _snapshot(run) == before
    path = runs.sample_run(run, n=4, out=str(tmp_path / "grid.png"))  # a new image, then that image again
    assert runs.sample_run(run, n=4, out=str(path)) == path and path.read_bytes()[:4] == b"\x89PNG"


def test_table_samples_are_csv_and_never_the_runs_data(tmp_path, data_files):
    shutil.copy(data_files / "counts.csv", tmp_path / "counts.csv")
    run = tmp_path / "run"
    runs.train_run(_config(tmp_path / "counts.csv", epochs=1, likelihood="poisson"), run, progress=False)
    with pytest.raises(ConfigError, match=r"\.csv"):
        runs.sample_run(run, n=4, out=str(tmp_path / "s.png"))
    data = (tmp_path / "counts.csv").read_bytes()
    with pytest.raises(RunDirError, match="trained on"):
        runs.sample_run(run, n=4, out=str(tmp_path / "counts.csv"))
    assert (tmp_path / "counts.csv").read_bytes() == data
    assert runs.sample_run(run, n=4, out=str(tmp_path / "s.csv")).read_text().startswith("gene0,")


def test_diagnose_out_is_a_folder_never_a_file(trained, tmp_path):
    (tmp_path / "file.txt").write_text("mine")
    for out in (tmp_path / "file.txt", trained / "checkpoint.pt", trained / "metrics.json"):
        with pytest.raises(ConfigError, match="--out"):
            runs.check_output_folder(out, trained)
    assert runs.check_output_folder(None, trained) == trained
    assert runs.check_output_folder(tmp_path / "new", trained) == tmp_path / "new"


# --- 3. the lock ---------------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from pyrovae.training.checkpoint import run_dir_lock
    with run_dir_lock(sys.argv[1], "holder"):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_a_locked_run_folder_is_refused_and_a_killed_owners_lock_taken_over(trained, tmp_path, caplog):
    run = _copy(trained, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(runs.__file__).parents[2]),
                                                                      os.environ.get("PYTHONPATH")]))}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        owner = json.loads((run / LOCK).read_text())
        assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()
        before = _snapshot(run)
        for command in (lambda: fit(_again(3), run, resume=True, progress=False),
                        lambda: runs.evaluate_run(run, num_samples=2, probe=False, latent_statistics=False),
                        lambda: runs.sample_run(run, n=4)):
            with pytest.raises(RunDirError, match=f"in use by process {holder.pid}"):
                command()
        assert _snapshot(run) == before
        runs.sample_run(run, n=4, out=str(tmp_path / "elsewhere.png"))  # writes nothing into the run folder
    finally:
        holder.kill()  # SIGKILL: its lock stays behind, stale
        holder.wait()
    assert json.loads((run / LOCK).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="pyrovae.training.checkpoint"):
        _, history = fit(_again(3), run, resume=True, progress=False)
    assert len(history) == 3 and f"stale lock of {run}: process {holder.pid}" in caplog.text
    assert not (run / LOCK).exists()


def test_a_stale_lock_file_with_a_dead_pid_is_taken_over(trained, tmp_path, caplog):
    run = _copy(trained, tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run / LOCK).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "command": "train"}))
    with caplog.at_level(logging.WARNING, logger="pyrovae.training.checkpoint"):
        metrics = runs.evaluate_run(run, num_samples=2, probe=False, latent_statistics=False)
    assert "taking over the stale lock" in caplog.text and str(gone.pid) in caplog.text
    assert metrics["num_samples"] == 2 and not (run / LOCK).exists()


def test_the_lock_names_its_owner_while_held_and_is_released_on_errors(tmp_path, data_files):
    seen = []
    fit(_config(data_files / "images.npy", epochs=1), tmp_path / "run", progress=False,
        on_epoch_end=lambda *_: seen.append(json.loads((tmp_path / "run" / LOCK).read_text())))
    assert seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert seen[0]["command"] == "train" and not (tmp_path / "run" / LOCK).exists()

    def fail(*_):
        raise RuntimeError("stopped by the test")
    with pytest.raises(RuntimeError, match="stopped by the test"):
        fit(_again(2), tmp_path / "run", resume=True, progress=False, on_epoch_end=fail)
    assert not (tmp_path / "run" / LOCK).exists()
    (tmp_path / "run" / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "command": "train"}))
    with pytest.raises(RunDirError, match="process 1 on elsewhere.example .another machine"):
        fit(_again(2), tmp_path / "run", resume=True, progress=False)
    with run_dir_lock(tmp_path / "free", create=True):  # reentrant in one process; a new folder
        with run_dir_lock(tmp_path / "free"):
            assert (tmp_path / "free" / LOCK).exists()
        assert (tmp_path / "free" / LOCK).exists()
    assert not (tmp_path / "free").exists()  # created for the lock, empty: removed with it


# --- 4. --resume keeps the run's settings ---------------------------------------------------------------------


def test_resume_with_changed_settings_names_each_and_writes_nothing(trained, tmp_path):
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    changed = RunConfig(model=VAEConfig(z_dim=3, hidden=(8,), prior="mixture"),
                        trainer=TrainerConfig(epochs=3, batch_size=16, lr=0.01))
    with pytest.raises(ConfigError) as info:
        fit(changed, run, resume=True, progress=False)
    message = str(info.value)
    for text in ("model.z_dim (--z-dim) 3, the run's 2", "model.prior (--prior) 'mixture', the run's 'standard_normal'",
                 "trainer.lr (--lr) 0.01, the run's 0.001"):
        assert text in message
    assert "batch_size" not in message and "hidden" not in message  # given, but the run's values
    with pytest.raises(ConfigError, match=r"done 2 epochs, but --resume was given 1"):
        fit(_again(1), run, resume=True, progress=False)
    with pytest.raises(ConfigError, match="own model, a 'vae' run"):
        fit(RunConfig(model=M2Config(), trainer=TrainerConfig(epochs=3)), run, resume=True, progress=False)
    assert _snapshot(run) == before
    # what may change: the epochs (extended), the device, the final evaluation's samples
    extended = RunConfig(trainer=TrainerConfig(epochs=3, device="cpu"), evaluation=EvaluationConfig(num_samples=2))
    metrics = runs.train_run(extended, run, resume=True, progress=False)
    assert len(metrics["history"]) == 3 and metrics["test"]["num_samples"] == 2
    saved = json.loads((run / "config.json").read_text())
    assert saved["trainer"]["epochs"] == 3 and saved["model"]["z_dim"] == 2 and saved["evaluation"]["num_samples"] == 2


def test_resume_on_the_command_line_compares_only_the_flags_given(tmp_path, data_files, capsys):
    base = ["train", "--data", str(data_files / "images.npy"), "--z-dim", "2", "--hidden", "8", "--batch-size", "16",
            "--eval-num-samples", "2", "--no-progress", "--out", str(tmp_path / "run")]
    assert main([*base, "--epochs", "2"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--lr", "0.01", "--beta", "2"]) == 2
    err = capsys.readouterr().err
    assert "trainer.lr (--lr) 0.01, the run's 0.001" in err and "trainer.beta (--beta) 2.0, the run's 1.0" in err
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert "done 2 epochs" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["trainer"]["epochs"] == 2
    # --resume alone continues the run to its own epochs (not the default 100); --epochs extends it
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert len(read_metrics(tmp_path / "run")["history"]) == 2
    assert main([*base, "--resume", "--epochs", "3"]) == 0  # the run's own values given again: fine
    assert len(read_metrics(tmp_path / "run")["history"]) == 3


def test_a_familys_trainer_defaults_do_not_count_as_given():
    config = RunConfig(model=M2Config(), trainer=TrainerConfig(epochs=3))
    assert config.trainer.lr == 3e-3 and config.trainer.lr_schedule == "constant"  # M2's defaults
    assert {k for k in given_settings(config) if k.startswith("trainer.")} == {"trainer.epochs"}
    loaded = RunConfig.from_dict({"model": {"kind": "m2"}, "trainer": {"lr": 1e-3}})
    assert loaded.trainer.model_fields_set == {"lr"} and loaded.trainer.batch_size == 200


# --- 5. no links out of a run folder ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", OWN)
def test_a_run_file_that_is_a_link_is_never_followed(trained, tmp_path, name):
    run = _copy(trained, tmp_path)
    foreign = tmp_path / f"foreign-{name}"
    shutil.copy(run / name, foreign)
    if name == "metrics.json":
        foreign.write_text(json.dumps({**json.loads(foreign.read_text()), "injected": 1}))
    (run / name).unlink()
    (run / name).symlink_to(foreign)
    content = foreign.read_bytes()
    commands = [lambda: fit(_again(3), run, resume=True, progress=False),
                lambda: runs.evaluate_run(run, num_samples=2, probe=False, latent_statistics=False),
                lambda: runs.sample_run(run, n=4)]
    if name == "metrics.json":
        commands.append(lambda: read_metrics(run))
    for command in commands:
        with pytest.raises(RunDirError, match="symbolic link"):
            command()
    assert foreign.read_bytes() == content and (run / name).is_symlink()


def test_an_atomic_write_replaces_a_link_itself(tmp_path):
    (tmp_path / "target.json").write_text("theirs")
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    atomic_write_text(tmp_path / "link.json", "ours")
    assert (tmp_path / "target.json").read_text() == "theirs"
    assert not (tmp_path / "link.json").is_symlink() and (tmp_path / "link.json").read_text() == "ours"


# --- 6. the learning-rate schedule follows the epochs, whatever the number of processes --------------------


def test_a_run_resumed_with_another_number_of_processes_keeps_its_schedule(tmp_path, data_files):
    source = data_files / "images.npy"
    _, straight = fit(_config(source, epochs=4), tmp_path / "straight", progress=False)
    fit(_config(source, epochs=2), tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(path)
    steps = state["steps_per_epoch"]
    assert steps == 4 and state["scheduler"]["last_epoch"] == 2 * steps
    # as if two processes had trained it: half the steps per epoch, so half the schedule's steps so far
    state.update(world_size=2, steps_per_epoch=steps // 2)
    state["scheduler"].update(last_epoch=2 * steps // 2, _step_count=2 * steps // 2 + 1)
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format"})
    _, resumed = fit(_config(source, epochs=4), tmp_path / "run", resume=True, progress=False)
    assert [row["lr"] for row in resumed[2:]] == pytest.approx([row["lr"] for row in straight[2:]], rel=1e-12)
    assert resumed[-1]["lr"] == pytest.approx(1e-3 * 0.01)  # it ends at the final rate


def test_resumed_step_rescales_only_when_the_steps_per_epoch_change():
    assert resumed_step(8, 4, 4, 2) == 8  # the same processes: exactly as saved
    assert resumed_step(4, 2, 4, 2) == 8  # 2 processes -> 1: the same fraction of the run
    assert resumed_step(8, None, 2, 2) == 4  # a checkpoint without steps_per_epoch: inferred from its epochs
    assert resumed_step(8, None, 4, 2) == 8


# --- 7. debris of interrupted writes, and the umask ------------------------------------------------------------


def test_stale_temporary_files_are_removed_by_the_next_writer(trained, tmp_path):
    run = _copy(trained, tmp_path)
    stale = [".checkpoint.pt.a1b2c3d4.tmp", ".metrics.json.zz_9abcd.tmp", ".samples.png.0000aaaa.tmp"]
    users = [".notes.tmp", "keep.abcdefgh.tmp", ".draft.abcdefghij.tmp"]
    for name in stale + users:
        (run / name).write_bytes(b"x" * 100)
    runs.sample_run(run, n=4, out=str(tmp_path / "elsewhere.png"))  # writes outside the run: no lock, no cleanup
    assert all((run / name).exists() for name in stale)
    runs.evaluate_run(run, num_samples=2, probe=False, latent_statistics=False)
    assert not any((run / name).exists() for name in stale)
    assert all((run / name).exists() for name in users)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_asks_for(tmp_path, data_files, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "file.txt", "x")
        assert (tmp_path / "file.txt").stat().st_mode & 0o777 == mode
        if umask == 0o022:
            runs.train_run(_config(data_files / "images.npy", epochs=1), tmp_path / "run", progress=False)
            modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
            assert set(modes.values()) == {mode}, modes
    finally:
        os.umask(old)


def test_a_run_stopped_before_its_first_checkpoint_leaves_its_folder_as_it_was(tmp_path, monkeypatch):
    """Ctrl-C or an error in the first epoch: nothing to resume, so the start files go and the same command
    can start again."""
    import pyrovae
    from pyrovae.training import trainer
    calls = []

    def stop(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_epoch", stop)
    config = RunConfig(model=VAEConfig(z_dim=2, hidden=(8,), likelihood="poisson"),
                       trainer=TrainerConfig(epochs=2, batch_size=16))
    data = torch.poisson(torch.full((40, 3), 2.0))
    (tmp_path / "run").mkdir()
    with pytest.raises(KeyboardInterrupt):
        pyrovae.fit(config, tmp_path / "run", data=data, progress=False)
    assert calls and sorted(p.name for p in (tmp_path / "run").iterdir()) == []
    monkeypatch.undo()
    model, history = pyrovae.fit(config, tmp_path / "run", data=data, progress=False)
    assert len(history) == 2
