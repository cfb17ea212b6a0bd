"""Training-step time of a trained M2 with subnormal floats computed (the CPU's slow path) and flushed.

As training goes on, the backward pass of a trained M2 produces gradients below float32's smallest
normal number, 1.2e-38 (the forward activations hold none: the script counts them). x86 CPUs compute
on such subnormals in microcode, many times slower, so M2 training slowed from about 22 s to about 200 s per
epoch over 40 epochs at lr 3e-3. ``pyrovae.training.flush_denormals`` (used by ``pyrovae.training.fit``,
the one trainer of every family, and by the CLI) sets the CPU's flush-to-zero mode for the run.

For a trained M2 run folder, the script restores the model and its Adam state from the checkpoint, draws
real MNIST batches of the sizes M2's trainer uses (200 unlabelled, 100 labelled images), and times
training steps (forward, backward, Adam) with flushing off and on, alternating the two ``--repeats``
times from the same starting state. It also counts the subnormal values in the Adam state and in the
hidden activations of the classifier, encoder and decoder on those batches. The ratio is what matters:
both modes run in the same process on the same batches. Prints a table, writes
``benchmarks/results/denormals.json``:

    OMP_NUM_THREADS=1 python benchmarks/denormals.py --run runs/bench-ss-lr3e3/labels100 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import pyro
import torch

from pyrovae.data import load_data
from pyrovae.models.m2 import M2Objective
from pyrovae.training import load_run, make_optimizer, read_metrics

TINY = torch.finfo(torch.float32).tiny


def _subnormal(t: torch.Tensor) -> int:
    return int(((t.abs() < TINY) & (t != 0)).sum())


def _hidden_subnormals(m2, x_u: torch.Tensor) -> dict[str, float]:
    """Fraction of subnormal outputs of every softplus layer on one batch (one-hot labels from q(y|x))."""
    counts: dict[str, list[int]] = {}

    def hook(name):
        def record(_module, _inputs, out):
            c = counts.setdefault(name, [0, 0])
            c[0] += _subnormal(out)
            c[1] += out.numel()
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in m2.named_modules()
               if isinstance(m, torch.nn.Softplus)]
    try:
        with torch.no_grad():
            y = m2.classify(x_u)
            m2.encode(x_u, y)
            m2.generate(y, torch.randn(len(x_u), m2.z_dim))
    finally:
        for h in handles:
            h.remove()
    return {k: v[0] / v[1] for k, v in counts.items()}


def _time_steps(m2, optimizer, batches, objective, n_u: int, n_l: int, flush: bool) -> tuple[float, float]:
    """Mean seconds per training step, and of that the backward pass alone."""
    torch.set_flush_denormal(flush)
    total = backward = 0.0
    try:
        with pyro.validation_enabled(False):
            for x_u, x_l, y_l in batches:
                t0 = time.perf_counter()
                terms = objective(m2, x_u, x_l, y_l, num_unlabelled=n_u, num_labelled=n_l)
                optimizer.zero_grad(set_to_none=True)
                t1 = time.perf_counter()
                (terms["loss"] / (n_u + n_l)).backward()
                t2 = time.perf_counter()
                optimizer.step()
                total += time.perf_counter() - t0
                backward += t2 - t1
        return total / len(batches), backward / len(batches)
    finally:
        torch.set_flush_denormal(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a trained M2 run folder (pyrovae semisupervised)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per repeat and mode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default="benchmarks/results/denormals.json")
    args = parser.parse_args()

    torch.set_flush_denormal(False)  # the state exactly as the checkpoint holds it
    m2, config, state = load_run(args.run)
    if config.kind != "m2":
        raise SystemExit(f"{args.run} holds a {config.kind} run; pass an M2 run folder (pyrovae semisupervised)")
    m2.train()
    data = config.data.replace(data_dir=args.data_dir or config.data.data_dir)
    train, _, _ = load_data(data, config.trainer.seed)
    g = torch.Generator().manual_seed(0)
    index = torch.randperm(len(train), generator=g)
    batches = []
    for i in range(args.steps):
        u = index[i * 300: i * 300 + 200]
        lab = index[i * 300 + 200: i * 300 + 300]
        batches.append((train.get(u, g), train.get(lab, g), train.labels[lab]))
    n_l = len(state["family_state"]["labelled_indices"])
    n_u = len(train) - n_l
    metrics = read_metrics(args.run)  # the weight the run trained with; top-level in runs of pyrovae < 0.2
    objective = M2Objective(float(metrics.get("training", {}).get("aux_loss_multiplier",
                                                                  metrics.get("aux_loss_multiplier"))))

    adam_state = state["optimizer"]
    optimizer_subnormals = sum(_subnormal(v) for s in adam_state["state"].values() for v in s.values()
                               if torch.is_tensor(v) and v.dim() > 0)
    hidden = _hidden_subnormals(m2, batches[0][0])

    seconds = {False: [], True: []}
    start = copy.deepcopy(m2.state_dict())
    for _ in range(args.repeats):
        for flush in (False, True):
            m2.load_state_dict(start)
            optimizer = make_optimizer(m2.parameters(), config.trainer.lr)
            optimizer.load_state_dict(copy.deepcopy(adam_state))
            seconds[flush].append(_time_steps(m2, optimizer, batches, objective, n_u, n_l, flush))
    best = {k: min(v)[0] for k, v in seconds.items()}
    best_backward = {k: min(v)[1] for k, v in seconds.items()}
    row = {"run": args.run, "epochs_trained": int(state["epoch"]), "lr": config.trainer.lr,
           "seconds_per_step_subnormals_computed": best[False], "seconds_per_step_flushed": best[True],
           "slowdown": best[False] / best[True],
           "backward_seconds_subnormals_computed": best_backward[False], "backward_seconds_flushed": best_backward[True], "adam_state_subnormals": optimizer_subnormals,
           "hidden_subnormal_fraction": hidden, "torch_threads": torch.get_num_threads(),
           "steps": args.steps, "repeats": args.repeats}
    print("\n| run | epochs | s/step, subnormals computed | s/step, flushed | slowdown | backward s/step, computed / flushed | Adam-state subnormals |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.run} | {row['epochs_trained']} | {best[False]:.3f} | {best[True]:.3f} | "
          f"{row['slowdown']:.1f}x | {best_backward[False]:.3f} / {best_backward[True]:.3f} | {optimizer_subnormals} |")
    print("subnormal fraction of softplus outputs:", {k: f"{v:.3%}" for k, v in hidden.items()})
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
