"""Data-parallel scaling: training images/s of pyrovae's DistributedDataParallel step with 1, 2, ...
processes (one thread each) on MNIST.

For each number of processes W, ``torchrun --standalone --nproc_per_node W`` runs this script in worker
mode. Every process builds the default MLP VAE (784-512-512-50, Bernoulli likelihood, analytic KL),
wraps its loss as ``pyrovae train`` does (:meth:`pyrovae.training.distributed.DistributedContext.wrap`
of ``batch -> vae.objective_record(elbo, batch, N)``; W = 1 is the plain single-process step), and takes
``--warmup`` untimed then ``--steps`` timed training steps (the trainer's: the loss record's loss,
backward, a fused Adam step) on its shards of dynamically binarized MNIST
(:func:`pyrovae.training.distributed.shard_batches`). Throughput is W x per-process batch x steps over
rank 0's wall time between two barriers.

By default the per-process batch is fixed (``--batch-size``; weak scaling: the global batch grows with
W, as with ``torchrun ... pyrovae train --batch-size B``); ``--fixed-global-batch`` splits one global
batch of ``--batch-size`` over the W processes instead (strong scaling: the same optimization as one
process). Settings alternate in rounds so that load from elsewhere on a shared machine hits all alike;
the table reports the median images/s of each, its speedup over the smallest W (one process by
default), and the parallel efficiency (speedup / W). On a machine with fewer free cores than processes the speedup is bounded by
the cores, not by DDP.

    python benchmarks/ddp_scaling.py [--processes 1 2] [--steps 300] [--warmup 20] [--batch-size 128]
        [--fixed-global-batch] [--rounds 3] [--data-dir DIR] [--out benchmarks/results/ddp_scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One process of a torchrun launch: time ``args.steps`` training steps and (rank 0) write JSON."""
    import pyro
    import torch

    from pyrovae.data import load_mnist
    from pyrovae.inference import make_elbo
    from pyrovae.models import VAE, VAEConfig
    from pyrovae.training import make_optimizer
    from pyrovae.training.distributed import init_distributed

    ctx = init_distributed("cpu")
    torch.set_num_threads(1)
    pyro.set_rng_seed(ctx.seed(0))
    train = load_mnist(args.data_dir, "dynamic")[0]
    vae = VAE.from_config(VAEConfig())
    elbo = make_elbo()

    def loss(batch):  # the trainer's loss of a VAE: the negative ELBO per image, as a LossRecord
        return vae.objective_record(elbo, batch, len(train))

    ddp = ctx.wrap(vae, loss)
    optimizer = make_optimizer(vae.parameters(), 1e-3)

    def train_step(batch):
        """One step of the trainer: through the DDP wrapper for several processes (so that backward
        averages the gradients), the loss record itself for one."""
        value = ddp(batch)[0] if ddp is not None else loss(batch).loss
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    batch = args.batch_size // ctx.world_size if args.fixed_global_batch else args.batch_size
    generator, sample_generator = torch.Generator().manual_seed(0), torch.Generator().manual_seed(ctx.seed(0, 1))

    def batches():
        while True:
            yield from ctx.batches(train, batch, generator, sample_generator)

    stream = batches()
    with pyro.validation_enabled(False):
        for _ in range(args.warmup):
            train_step(next(stream))
        ctx.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            train_step(next(stream))
        ctx.barrier()
        seconds = time.perf_counter() - t0
    if ctx.is_main:
        Path(args.result).write_text(json.dumps({
            "processes": ctx.world_size, "backend": ctx.backend or "none (one process)",
            "per_process_batch": batch, "global_batch": batch * ctx.world_size, "steps": args.steps,
            "seconds": seconds, "images_per_second": batch * ctx.world_size * args.steps / seconds}))


def launch(processes: int, args: argparse.Namespace) -> dict:
    """Run one torchrun launch of ``processes`` workers and return rank 0's measurement."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               __file__, "--worker", "--result", str(result), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
        if args.fixed_global_batch:
            cmd.append("--fixed-global-batch")
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0 or not result.exists():
            raise SystemExit(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stderr[-4000:]}")
        return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="numbers of processes W")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per launch")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="per-process batch (the global batch with --fixed-global-batch)")
    parser.add_argument("--fixed-global-batch", action="store_true",
                        help="split one global batch of --batch-size over the processes (strong scaling)")
    parser.add_argument("--rounds", type=int, default=3, help="launches per setting, alternating")
    parser.add_argument("--data-dir", default=None, help="MNIST root (default: $PYROVAE_DATA)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ddp_scaling.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from pyrovae.training.distributed import cleanup
        try:
            return worker(args)
        finally:
            cleanup()
    if min(args.processes) < 1 or args.steps < 1 or args.warmup < 0 or args.rounds < 1 or args.batch_size < 1:
        parser.error("--processes, --steps, --rounds and --batch-size must be positive, --warmup >= 0")
    if args.fixed_global_batch and any(args.batch_size % w for w in args.processes):
        parser.error(f"--fixed-global-batch needs --batch-size {args.batch_size} divisible by every W")

    runs: dict[int, list[dict]] = {w: [] for w in args.processes}
    for r in range(args.rounds):
        for w in args.processes:
            runs[w].append(launch(w, args))
            print(f"round {r + 1}/{args.rounds}, {w} process(es): "
                  f"{runs[w][-1]['images_per_second']:.0f} images/s", file=sys.stderr)

    import torch
    w0 = min(args.processes)  # the baseline (1 process by default)
    base = statistics.median(m["images_per_second"] for m in runs[w0])
    rows = []
    for w in args.processes:
        ips = statistics.median(m["images_per_second"] for m in runs[w])
        first = runs[w][0]
        rows.append({"processes": w, "backend": first["backend"], "per_process_batch": first["per_process_batch"],
                     "global_batch": first["global_batch"], "images_per_second": ips, "speedup": ips / base,
                     "efficiency": ips / base / (w / w0), "rounds": [m["images_per_second"] for m in runs[w]]})

    print(f"\nDDP scaling, default MLP VAE (784-512-512-50), dynamic MNIST, {args.steps} timed steps, "
          f"one thread per process, median of {args.rounds} round(s); "
          f"{'fixed global batch' if args.fixed_global_batch else 'fixed per-process batch'}\n")
    print("| processes | backend | global batch | images/s | speedup | efficiency |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['processes']} | {row['backend']} | {row['global_batch']} | {row['images_per_second']:.0f} | "
              f"{row['speedup']:.2f} | {row['efficiency']:.0%} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result", "out")},
        "model": "default MLP VAE 784-512-512-50, Bernoulli, TraceMeanField_ELBO, fused Adam",
        "data": "MNIST training set, dynamic binarization",
        "threads_per_process": 1, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
