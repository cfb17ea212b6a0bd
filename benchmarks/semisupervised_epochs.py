"""M2 test accuracy against training length: what each epoch budget would have reported (issue 4).

Reads finished M2 run folders (``pyrovae semisupervised`` or ``benchmarks/semisupervised.py``) and, for each
budget E, applies the Pyro tutorial's protocol to the first E epochs of the run's history: the test
accuracy at the epoch of best validation accuracy among epochs 1..E (the test set never picks the epoch).
Because :func:`pyrovae.training.fit` restores every RNG state on resume, the first E epochs of a
longer run are exactly the run one would get with ``--epochs E``, so one long run answers every budget.
That holds at a constant learning rate only: a cosine schedule is planned over the run's whole length, so a
cosine run answers for its own length alone (shorter budgets are left out of the table).

    python benchmarks/semisupervised_epochs.py runs/bench-ss-lr3e3/labels100 \\
        runs/bench-ss-lr3e3-seed1/labels100 --budgets 50 100 200 300 400

Prints a markdown table (one row per run and budget, with the Pyro tutorial's and Kingma et al.'s numbers
for the run's label count from ``/work/shared/ANCHORS.md``) and writes
``benchmarks/results/semisupervised_epochs.json``. Runs need a validation set (``validation_size > 0``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyrovae.training import read_run_config, summarize_history
from semisupervised import KINGMA_M2_ERROR, TUTORIAL  # the anchors, beside this script


def budget_rows(run_dir: Path, budgets: list[int]) -> list[dict]:
    """One row per budget E the run reached: test accuracy at best validation within epochs 1..E."""
    metrics_path, config_path = run_dir / "metrics.json", run_dir / "config.json"
    for path in (metrics_path, config_path):
        if not path.exists():
            raise SystemExit(f"{path} is missing: pass the folder of an M2 run (it holds config.json and "
                             "metrics.json)")
    history = json.loads(metrics_path.read_text())["history"]
    config = read_run_config(run_dir)  # also a run folder of pyrovae 0.1
    if config.kind != "m2":
        raise SystemExit(f"{run_dir} holds a {config.kind} run; pass the folder of an M2 run")
    if not history or "validation_accuracy" not in history[0]:
        raise SystemExit(f"{run_dir} was trained without a validation set; the protocol needs one "
                         "(train with validation_size > 0)")
    num_labels, trainer = config.model.num_labels, config.trainer
    schedule = trainer.lr_schedule
    if schedule == "cosine":  # epochs 1..E of a cosine run over T > E epochs are not the E-epoch run
        budgets = [len(history)] if len(history) == trainer.epochs else []
    rows = []
    for budget in budgets:
        if budget > len(history):
            continue
        summary = summarize_history(history[:budget], monitor="accuracy", mode="max")  # M2's monitor
        rows.append({"run_dir": str(run_dir), "labels": num_labels, "seed": trainer.seed, "lr": trainer.lr,
                     "lr_schedule": schedule,
                     "epochs": budget, **summary,
                     "pyro_tutorial_accuracy": TUTORIAL.get(num_labels),
                     "kingma_m2_accuracy": (1 - KINGMA_M2_ERROR[num_labels]
                                            if num_labels in KINGMA_M2_ERROR else None)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="M2 run folders")
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200, 300, 400])
    parser.add_argument("--json", default="benchmarks/results/semisupervised_epochs.json")
    args = parser.parse_args()
    if any(b < 1 for b in args.budgets):
        parser.error("--budgets must be positive epoch counts")

    rows = [row for run in args.runs for row in budget_rows(run, sorted(args.budgets))]

    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    print("\n| labels | seed | lr schedule | epochs | test acc (best val.) | best val. epoch "
          "| test acc (last epoch) | Pyro tutorial | Kingma et al. M2 |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['labels']} | {r['seed']} | {r['lr_schedule']} | {r['epochs']} | "
              f"{fmt(r['test_accuracy_at_best_validation'])} | {r['best_validation_epoch']} | "
              f"{fmt(r['final_test_accuracy'])} | "
              f"{fmt(r['pyro_tutorial_accuracy'])} | {fmt(r['kingma_m2_accuracy'])} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
