"""Speed and memory of ``pyrovae evaluate``: the K-sample test log-likelihood under a memory cap.

For each memory cap (and, with ``--max-chunk``, an explicit chunk for comparison) the benchmark runs
``pyrovae evaluate`` on a copy of a trained run folder (the run folder itself is only read) in a fresh
Python process, and records

* the chunk the command chose ((sample, image) pairs per pass, and how they split into samples and
  images) and the peak it predicted for one pass;
* the child process's peak resident memory (``resource.getrusage``), in total and above its resident
  memory after the imports (the rest is the model, MNIST and the evaluation itself);
* wall-clock seconds of the whole command and of the log-likelihood alone, and the results (NLL,
  ELBO = reconstruction - KL, active units, probe accuracy) as a sanity check.

It prints a table and writes ``benchmarks/results/evaluate_speed.json``. The full measurement (K = 5000
on all 10,000 test images of the default 50-d MLP VAE) takes tens of minutes on two CPU cores:

    python benchmarks/evaluate_speed.py --run runs/bench-loglik-warmup --num-samples 5000 \\
        --test-size 10000 --max-memory-gb 4 --data-dir ../shared/data

Smoke test (seconds): ``--num-samples 50 --test-size 200 --probe-train-size 1000``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1e9


def _child(argv: list[str], report: str) -> int:
    """Run ``pyrovae evaluate`` in this process and write its peak resident memory to ``report``."""
    import torch  # noqa: F401  (the baseline includes torch, Pyro and pyrovae, as the command does)

    from pyrovae.app.cli import main

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(report).write_text(json.dumps({"peak_rss_bytes": peak, "baseline_rss_bytes": baseline,
                                        "seconds": seconds, "exit_code": code}))
    return code


def _metrics_key(num_samples: int, test_size: int | None) -> str:
    return f"test_K{num_samples}" + (f"_n{test_size}" if test_size is not None else "")


def run_one(run: Path, args, max_memory_gb: float | None, max_chunk: int | None) -> dict:
    """One ``pyrovae evaluate`` in a fresh process on a scratch copy of ``run``."""
    with tempfile.TemporaryDirectory(prefix="pyrovae-evaluate-speed-") as scratch:
        copy = Path(scratch) / "run"
        copy.mkdir()
        for name in ("checkpoint.pt", "config.json"):
            shutil.copyfile(run / name, copy / name)
        report = Path(scratch) / "rusage.json"
        argv = ["evaluate", str(copy), "--num-samples", str(args.num_samples), "--device", args.device,
                "--probe-train-size", str(args.probe_train_size), "--no-progress"]
        if args.test_size is not None:
            argv += ["--test-size", str(args.test_size)]
        if args.data_dir is not None:
            argv += ["--data-dir", args.data_dir]
        if args.no_probe:
            argv += ["--no-probe"]
        argv += ["--max-chunk", str(max_chunk)] if max_chunk is not None else ["--max-memory-gb", str(max_memory_gb)]
        done = subprocess.run([sys.executable, __file__, "--child", str(report), "--", *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"pyrovae {' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
        usage = json.loads(report.read_text())
        metrics = json.loads((copy / "metrics.json").read_text())[_metrics_key(args.num_samples, args.test_size)]
    memory = metrics["memory"]
    return {
        "max_memory_gb": max_memory_gb if max_chunk is None else None, "max_chunk": max_chunk,
        "chunk": metrics["chunk"], "samples_per_pass": memory["samples_per_pass"],
        "images_per_pass": memory["images_per_pass"], "bytes_per_pair": memory["bytes_per_pair"],
        "estimated_pass_peak_gb": (memory["estimated_peak_bytes"] or float("nan")) / GB,
        "peak_rss_gb": usage["peak_rss_bytes"] / GB,
        "peak_rss_above_imports_gb": (usage["peak_rss_bytes"] - usage["baseline_rss_bytes"]) / GB,
        "seconds": usage["seconds"], "log_likelihood_seconds": metrics["log_likelihood_seconds"],
        "num_images": metrics["num_images"], "num_samples": metrics["num_samples"],
        "nll_nats": -metrics["log_likelihood_nats"], "nll_stderr": metrics["log_likelihood_stderr"],
        "neg_elbo_nats": -metrics["elbo_nats"], "reconstruction_nats": metrics["reconstruction_nats"],
        "kl_nats": metrics["kl_nats"], "kl_method": metrics["kl_method"],
        "active_units": metrics.get("active_units"),
        "probe_accuracy": metrics.get("linear_probe", {}).get("accuracy"),
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[4:], sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/bench-loglik-warmup", help="a trained run folder (only read)")
    p.add_argument("--num-samples", "-k", type=int, default=5000, help="importance samples K per image")
    p.add_argument("--test-size", type=int, default=10_000, help="the first N test images")
    p.add_argument("--max-memory-gb", default="4", help="memory caps to time, comma-separated (e.g. 1,4)")
    p.add_argument("--max-chunk", type=int, default=None,
                   help="also time an explicit chunk of this many pairs (e.g. 65536, the old default)")
    p.add_argument("--probe-train-size", type=int, default=10_000)
    p.add_argument("--no-probe", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default="benchmarks/results/evaluate_speed.json")
    args = p.parse_args()
    run = Path(args.run)
    if not (run / "checkpoint.pt").is_file():
        raise SystemExit(f"no checkpoint in {run}; train one first (pyrovae train --out {run})")

    settings = [(float(gb), None) for gb in args.max_memory_gb.split(",")]
    if args.max_chunk is not None:
        settings.append((None, args.max_chunk))
    rows = []
    for gb, chunk in settings:
        rows.append(run_one(run, args, gb, chunk))
        print(json.dumps(rows[-1]), flush=True)

    print(f"\npyrovae evaluate, K={args.num_samples}, {rows[0]['num_images']} test images, run {run}, "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')} OMP threads")
    print(f"{'cap GB':>7} {'chunk':>8} {'K/pass':>7} {'img/pass':>8} {'est GB':>7} {'RSS GB':>7} {'+RSS GB':>8} "
          f"{'sec':>8} {'NLL':>8} {'+-':>5} {'-ELBO':>8} {'KL':>6} {'AU':>3} {'probe':>6}")
    for r in rows:
        cap = f"{r['max_memory_gb']:g}" if r["max_memory_gb"] is not None else "chunk"
        probe = f"{r['probe_accuracy']:.3f}" if r["probe_accuracy"] is not None else "-"
        print(f"{cap:>7} {r['chunk']:>8} {r['samples_per_pass']:>7} {r['images_per_pass']:>8} "
              f"{r['estimated_pass_peak_gb']:>7.3f} {r['peak_rss_gb']:>7.3f} {r['peak_rss_above_imports_gb']:>8.3f} "
              f"{r['seconds']:>8.1f} {r['nll_nats']:>8.2f} {r['nll_stderr']:>5.2f} {r['neg_elbo_nats']:>8.2f} "
              f"{r['kl_nats']:>6.2f} {r['active_units'] if r['active_units'] is not None else '-':>3} {probe:>6}")
    result = {"run": str(run), "num_samples": args.num_samples, "test_size": args.test_size,
              "probe_train_size": None if args.no_probe else args.probe_train_size, "device": args.device,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform(),
              "python": platform.python_version(), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
