"""Training throughput: pyrovae's training step against pure PyTorch and against Pyro's example loop.

All sides run in this process on the same MNIST training images, batch 128, the default MLP VAE
(784-512-512-50, softplus scale, Bernoulli likelihood, analytic KL):

* pure PyTorch: a hand-written VAE with the same networks and loss and ``torch.optim.Adam`` (the
  reference, ratio 1), and the same with PyTorch's fused Adam kernel;
* pyrovae: an epoch of the one trainer, :func:`pyrovae.training.trainer.train_epoch` (each step the
  VAE's loss record from its ELBO, :class:`pyrovae.inference.ELBO`, over the model and guide, with the
  reconstruction and KL terms recorded) with :func:`pyrovae.training.make_optimizer` (what ``pyrovae
  train`` runs), and the same with ``torch.optim.Adam``, which isolates the cost of Pyro's tracing;
* the loop of Pyro's VAE example: ``pyro.module`` + ``pyro.optim.Adam`` + ``SVI.step`` over a
  ``DataLoader``.

The first four draw dynamically binarized batches from tensors; the example loop iterates a
``DataLoader`` over images binarized once, as Pyro's example does. The sides alternate in rounds so
that load from elsewhere on a shared machine hits all alike; the table reports the median images/s of
each and its ratio to the reference. Absolute numbers are noise on shared machines: the ratios are
the result.

Two more columns:

* peak memory of training, per side: on CUDA ``torch.cuda.max_memory_allocated`` over the side's
  steps; on CPU each side runs once more in a fresh subprocess and reports its peak resident set size
  during training minus its resident set size before the first step (parameters' gradients, optimizer
  state and activations, and also the one-time workspaces of the math libraries, about 100 MB, which
  is why the CPU column reads alike for every side: compare its differences, not its level);
* achieved FLOP/s as a share of a dense matmul: the FLOPs of one training step of the network
  (forward and backward, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the reference)
  times steps per second, divided by the FLOP/s of a 2048 x 2048 x 2048 float32 matmul timed on the
  same machine with the same threads. It says how much of the hardware the step uses; the remainder
  is small-matrix inefficiency, memory traffic and Python.

    python benchmarks/throughput.py [--rounds 7] [--steps 60] [--batch-size 128] [--data-dir DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.data import SingleStream, load_mnist
from pyrovae.inference import make_elbo
from pyrovae.models import VAE, VAEConfig
from pyrovae.training import DistributedContext, TrainerConfig, make_optimizer
from pyrovae.training.optim import lr_factor
from pyrovae.training.trainer import train_epoch


def build_model(config: VAEConfig) -> VAE:
    return VAE.from_config(config)


class ReferenceVAE(nn.Module):
    """The default MLP VAE written directly in PyTorch: no Pyro anywhere."""

    def __init__(self, z_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.z_dim = z_dim

        def mlp(sizes):
            layers = []
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
            return nn.Sequential(*layers)

        self.encoder = mlp([784, *hidden, 2 * z_dim])
        self.decoder = mlp([z_dim, *reversed(hidden), 784])

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO, nats per image, with the analytic KL to N(0, I)."""
        x = x.flatten(1)
        loc, raw = self.encoder(x).split(self.z_dim, dim=-1)
        scale = F.softplus(raw) + 1e-4
        z = loc + scale * torch.randn_like(loc)
        rec = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum(-1) - scale.log().sum(-1)
        return (rec + kl).mean()


def pyro_example_loop(config, images: torch.Tensor, batch_size: int):
    """The loop of Pyro's VAE example: modules registered with ``pyro.module`` in the param store, a
    ``DataLoader`` over a ``TensorDataset``, ``SVI.step`` per batch with ``pyro.optim.Adam``."""
    vae = build_model(config).to(images.device)

    def model(x):
        pyro.module("vae", vae)
        return vae.model(x, num_data=len(images))

    def guide(x):
        pyro.module("vae", vae)
        return vae.guide(x, num_data=len(images))

    pyro.clear_param_store()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                         loss=pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=batch_size,
                                         shuffle=True)

    def run():
        for (x,) in loader:
            svi.step(x)

    return run


def matmul_flops_per_second(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an ``n x n x n`` float32 matmul (2 n^3 FLOPs), the best of ``repeats``."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def step_flops(config, batch_size: int) -> int:
    """FLOPs of one training step (forward and backward) of the reference network on one batch."""
    from torch.utils.flop_counter import FlopCounterMode
    ref = ReferenceVAE(config.z_dim, config.hidden)
    x = torch.bernoulli(torch.rand(batch_size, 1, 28, 28))
    with FlopCounterMode(display=False) as counter:
        ref.loss(x).backward()
    return counter.get_total_flops()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=60, help="training steps per side per round")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", default="benchmarks/results/throughput.json")
    p.add_argument("--no-memory", action="store_true", help="skip the per-side peak-memory subprocesses")
    p.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # internal: one side, print its peak
    args = p.parse_args()
    device = torch.device(args.device)

    config = VAEConfig()
    train, _, _ = load_mnist(args.data_dir, "dynamic", train_size=args.steps * args.batch_size)
    train.images = train.images.to(device)  # data stays on the device; binarized there
    n = len(train)
    generator = torch.Generator(device).manual_seed(0)
    pyro.set_rng_seed(0)

    def pyrovae_side(optimizer_factory):
        vae = build_model(config).to(device)
        elbo = make_elbo("TraceMeanField_ELBO")
        plan = SingleStream(train, args.batch_size)
        stage, = vae.stages(plan, elbo, elbo, epochs=1)
        opt = optimizer_factory(stage.parameters)
        ctx = DistributedContext(device=device)
        steps = plan.steps(ctx)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor("constant", 1.0, steps))
        trainer = TrainerConfig(kl_warmup_epochs=0)  # after warm-up: beta = 1, the steps of most of a run

        def run():
            train_epoch(vae, stage, plan, None, opt, scheduler, ctx, generator, generator, trainer, steps, 1, None,
                        False)
        return run

    def reference_side(optimizer_factory):
        ref = ReferenceVAE(config.z_dim, config.hidden).to(device)
        opt = optimizer_factory(ref.parameters())

        def run():
            for batch in train.batches(args.batch_size, generator=generator):
                loss = ref.loss(batch["x"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return run

    default_adam = lambda params: torch.optim.Adam(params, lr=1e-3)  # noqa: E731
    fused_adam = lambda params: torch.optim.Adam(params, lr=1e-3, fused=True)  # noqa: E731
    static = train.get(torch.arange(n, device=device), generator)
    sides = {
        "pure PyTorch (torch.optim.Adam)": reference_side(default_adam),
        "pure PyTorch, fused Adam": reference_side(fused_adam),
        "pyrovae (train_epoch, make_optimizer)": pyrovae_side(lambda params: make_optimizer(params, 1e-3)),
        "pyrovae, torch.optim.Adam": pyrovae_side(default_adam),
        "Pyro example loop (SVI.step)": pyro_example_loop(config, static, args.batch_size),
    }
    if args.memory_of is not None:  # a subprocess measuring one side's peak memory on the CPU
        fn = sides[args.memory_of]
        before = _rss_bytes()
        with pyro.validation_enabled(False):
            fn()
        print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before}))
        return
    peak_memory = {}
    with pyro.validation_enabled(False):
        for name, fn in sides.items():  # warm-up, and the peak memory on CUDA
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            fn()
            if device.type == "cuda":
                peak_memory[name] = torch.cuda.max_memory_allocated(device) - base
        rates = {name: [] for name in sides}
        for r in range(args.rounds):
            order = list(sides.items()) if r % 2 == 0 else list(reversed(sides.items()))
            for name, fn in order:
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                rates[name].append(n / (time.perf_counter() - t0))
    if device.type == "cpu" and not args.no_memory:
        for name in sides:
            out = subprocess.run([sys.executable, __file__, "--memory-of", name, "--steps", str(args.steps),
                                  "--batch-size", str(args.batch_size)]
                                 + (["--data-dir", args.data_dir] if args.data_dir else []),
                                 capture_output=True, text=True, check=True)
            peak_memory[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    flops = step_flops(config, args.batch_size)
    peak_flops = matmul_flops_per_second(device)
    reference = "pure PyTorch (torch.optim.Adam)"
    median = {name: statistics.median(v) for name, v in rates.items()}
    ratio = {name: median[name] / median[reference] for name in sides}
    per_round = {name: [a / b for a, b in zip(rates[name], rates[reference])] for name in sides}

    share = {name: flops * median[name] / args.batch_size / peak_flops for name in sides}
    where = f"{torch.get_num_threads()} threads, CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"Training throughput, default MLP VAE 784-{'-'.join(map(str, config.hidden))}-{config.z_dim} "
          f"(TraceMeanField_ELBO / analytic KL), batch {args.batch_size}, dynamic binarization, "
          f"{where}, {args.rounds} interleaved rounds of {n} images; {flops / 1e6:.1f} MFLOP per step, "
          f"matmul {peak_flops / 1e9:.1f} GFLOP/s\n")
    print(f"| {'training step':<38} | {'images/s (median)':>17} | {'ratio to pure PyTorch':>21} | "
          f"{'per-round ratio min-max':>23} | {'peak memory (MB)':>16} | {'share of matmul FLOP/s':>22} |")
    print(f"|{'-' * 40}|{'-' * 18}:|{'-' * 22}:|{'-' * 24}:|{'-' * 17}:|{'-' * 23}:|")
    for name in sides:
        mem = f"{peak_memory[name] / 2**20:.1f}" if name in peak_memory else "n/a"
        print(f"| {name:<38} | {median[name]:>17.0f} | {ratio[name]:>21.3f} | "
              f"{min(per_round[name]):>11.3f} - {max(per_round[name]):.3f} | {mem:>16} | {share[name]:>22.3f} |")
    result = {"benchmark": "throughput", "batch_size": args.batch_size, "rounds": args.rounds,
              "images_per_round": n, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "pyro": pyro.__version__, "machine": platform.machine(), "reference": reference,
              "images_per_second": rates, "median_images_per_second": median, "ratio_to_reference": ratio,
              "ratio_pyrovae_to_pytorch": ratio["pyrovae (train_epoch, make_optimizer)"],
              "ratio_pyrovae_to_pyro_example": median["pyrovae (train_epoch, make_optimizer)"]
              / median["Pyro example loop (SVI.step)"],
              "device": str(device), "peak_memory_bytes": peak_memory, "flops_per_step": flops,
              "matmul_flops_per_second": peak_flops, "share_of_matmul_flops": share,
              "per_round_ratio": per_round}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
