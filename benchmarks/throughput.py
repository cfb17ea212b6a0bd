"""Training throughput: pyrovae's training step against pure PyTorch and against Pyro's example loop.

All sides run in this process on the same MNIST training images, batch 128, the default MLP VAE
(784-512-512-50, softplus scale, Bernoulli likelihood, analytic KL):

* pure PyTorch: a hand-written VAE with the same networks and loss and ``torch.optim.Adam`` (the
  reference, ratio 1), and the same with PyTorch's fused Adam kernel;
* pyrovae: :func:`pyrovae.train.train_step` (a Pyro ELBO's ``differentiable_loss`` over the VAE's
  model and guide) with :func:`pyrovae.train.make_optimizer` (what ``pyrovae train`` runs), and the
  same with ``torch.optim.Adam``, which isolates the cost of Pyro's tracing;
* the loop of Pyro's VAE example: ``pyro.module`` + ``pyro.optim.Adam`` + ``SVI.step`` over a
  ``DataLoader``.

The first four draw dynamically binarized batches from tensors; the example loop iterates a
``DataLoader`` over images binarized once, as Pyro's example does. The sides alternate in rounds so
that load from elsewhere on a shared machine hits all alike; the table reports the median images/s of
each and its ratio to the reference. Absolute numbers are noise on shared machines: the ratios are
the result.

    python benchmarks/throughput.py [--rounds 7] [--steps 60] [--batch-size 128] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.config import ModelConfig, build_model
from pyrovae.data import load_mnist
from pyrovae.objectives import make_elbo
from pyrovae.train import make_optimizer, train_step


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
    vae = build_model(config)

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=60, help="training steps per side per round")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default="benchmarks/results/throughput.json")
    args = p.parse_args()

    config = ModelConfig()
    train, _, _ = load_mnist(args.data_dir, "dynamic", train_size=args.steps * args.batch_size)
    n = len(train)
    generator = torch.Generator().manual_seed(0)
    pyro.set_rng_seed(0)

    def pyrovae_side(optimizer_factory):
        vae = build_model(config)
        elbo = make_elbo("TraceMeanField_ELBO")
        opt = optimizer_factory(vae.parameters())

        def run():
            with pyro.validation_enabled(False):
                for x, _ in train.batches(args.batch_size, generator=generator):
                    train_step(vae, elbo, opt, x, n)
        return run

    def reference_side(optimizer_factory):
        ref = ReferenceVAE(config.z_dim, config.hidden)
        opt = optimizer_factory(ref.parameters())

        def run():
            for x, _ in train.batches(args.batch_size, generator=generator):
                loss = ref.loss(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return run

    default_adam = lambda params: torch.optim.Adam(params, lr=1e-3)  # noqa: E731
    fused_adam = lambda params: torch.optim.Adam(params, lr=1e-3, fused=True)  # noqa: E731
    static = train.get(torch.arange(n), torch.Generator().manual_seed(0))
    sides = {
        "pure PyTorch (torch.optim.Adam)": reference_side(default_adam),
        "pure PyTorch, fused Adam": reference_side(fused_adam),
        "pyrovae (train_step, make_optimizer)": pyrovae_side(lambda params: make_optimizer(params, 1e-3)),
        "pyrovae, torch.optim.Adam": pyrovae_side(default_adam),
        "Pyro example loop (SVI.step)": pyro_example_loop(config, static, args.batch_size),
    }
    with pyro.validation_enabled(False):
        for fn in sides.values():  # warm-up
            fn()
        rates = {name: [] for name in sides}
        for r in range(args.rounds):
            order = list(sides.items()) if r % 2 == 0 else list(reversed(sides.items()))
            for name, fn in order:
                t0 = time.perf_counter()
                fn()
                rates[name].append(n / (time.perf_counter() - t0))
    reference = "pure PyTorch (torch.optim.Adam)"
    median = {name: statistics.median(v) for name, v in rates.items()}
    ratio = {name: median[name] / median[reference] for name in sides}
    per_round = {name: [a / b for a, b in zip(rates[name], rates[reference])] for name in sides}

    print(f"Training throughput, default MLP VAE 784-{'-'.join(map(str, config.hidden))}-{config.z_dim} "
          f"(TraceMeanField_ELBO / analytic KL), batch {args.batch_size}, dynamic binarization, "
          f"{torch.get_num_threads()} threads, CPU, {args.rounds} interleaved rounds of {n} images\n")
    print(f"| {'training step':<38} | {'images/s (median)':>17} | {'ratio to pure PyTorch':>21} | "
          f"{'per-round ratio min-max':>23} |")
    print(f"|{'-' * 40}|{'-' * 18}:|{'-' * 22}:|{'-' * 24}:|")
    for name in sides:
        print(f"| {name:<38} | {median[name]:>17.0f} | {ratio[name]:>21.3f} | "
              f"{min(per_round[name]):>11.3f} - {max(per_round[name]):.3f} |")
    result = {"benchmark": "throughput", "batch_size": args.batch_size, "rounds": args.rounds,
              "images_per_round": n, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "pyro": pyro.__version__, "machine": platform.machine(), "reference": reference,
              "images_per_second": rates, "median_images_per_second": median, "ratio_to_reference": ratio,
              "ratio_pyrovae_to_pytorch": ratio["pyrovae (train_step, make_optimizer)"],
              "per_round_ratio": per_round}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
