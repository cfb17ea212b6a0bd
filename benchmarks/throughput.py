"""Training throughput: pyrovae's training step against a pure-PyTorch VAE with the same networks and loss.

Both sides run in this process on the same MNIST training images, dynamically binarized, batch 128:
pyrovae's :func:`pyrovae.train.train_step` (a Pyro ELBO's differentiable_loss over the VAE's model and
guide, then Adam) and a hand-written PyTorch VAE (the same MLP sizes, softplus scale, Bernoulli
likelihood and analytic KL, Adam). They alternate in rounds so that load from elsewhere on a shared
machine hits both alike; the table reports the median images/s of each and their ratio. Absolute
numbers are noise on shared machines: the ratio is the result.

    python benchmarks/throughput.py [--rounds 7] [--steps 60] [--batch-size 128] [--network mlp]
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
from pyrovae.train import train_step


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
    pyro.set_rng_seed(0)
    vae = build_model(config)
    elbo = make_elbo("TraceMeanField_ELBO")
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    ref = ReferenceVAE(config.z_dim, config.hidden)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def run_pyrovae():
        with pyro.validation_enabled(False):
            for x, _ in train.batches(args.batch_size, generator=generator):
                train_step(vae, elbo, opt, x, n)

    def run_reference():
        for x, _ in train.batches(args.batch_size, generator=generator):
            loss = ref.loss(x)
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()

    sides = {"pure PyTorch": run_reference, "pyrovae": run_pyrovae}
    for fn in sides.values():  # warm-up
        fn()
    rates = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides.items()) if r % 2 == 0 else list(reversed(sides.items()))
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - t0))
    median = {name: statistics.median(v) for name, v in rates.items()}
    ratio = median["pyrovae"] / median["pure PyTorch"]
    per_round = [a / b for a, b in zip(rates["pyrovae"], rates["pure PyTorch"])]

    print(f"Training throughput, default MLP VAE {784}-{'-'.join(map(str, config.hidden))}-{config.z_dim}, "
          f"batch {args.batch_size}, dynamic binarization, {torch.get_num_threads()} threads, CPU")
    print(f"{'implementation':<16} {'images/s (median)':>18} {'ratio':>7}")
    for name in sides:
        print(f"{name:<16} {median[name]:>18.0f} {median[name] / median['pure PyTorch']:>7.3f}")
    print(f"per-round ratio: min {min(per_round):.3f}, median {statistics.median(per_round):.3f}, "
          f"max {max(per_round):.3f}")
    result = {"benchmark": "throughput", "batch_size": args.batch_size, "rounds": args.rounds,
              "images_per_round": n, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "pyro": pyro.__version__, "machine": platform.machine(), "images_per_second": rates,
              "median_images_per_second": median, "ratio_pyrovae_to_pytorch": ratio,
              "per_round_ratio": per_round}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
