"""The classic: a VAE with a 2-D latent space on MNIST, trained with Pyro's SVI, and its two pictures.

    .venv/bin/python examples/vae_mnist.py --data-dir ../shared/data [--network conv] [--epochs 10] [--out DIR]

Writes DIR/latent_scatter.png (the test images' codes coloured by digit), DIR/latent_manifold.png (a 30x30 grid
of z over [-4, 4]^2, decoded) and DIR/samples.png (prior samples). A few seconds per epoch on one CPU core for
the default slice of 10,000 training images.
"""
import argparse
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyrovae import VAE, plots
from pyrovae.data import DataConfig, load_data

p = argparse.ArgumentParser()
p.add_argument("--data-dir", default=None, help="the folder that holds MNIST/raw/ (default: $PYROVAE_DATA)")
p.add_argument("--network", choices=["mlp", "conv"], default="mlp")
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--train-size", type=int, default=10_000)
p.add_argument("--out", default="runs/example-vae-mnist")
args = p.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

pyro.set_rng_seed(0)
train, _, test = load_data(DataConfig(data_dir=args.data_dir, train_size=args.train_size))  # dynamic binarization
vae = VAE(z_dim=2, network=args.network, hidden=(512, 256))
vae.likelihood.init_bias(vae.decoder.output_layer, train.as_float())  # start from the mean image


def model(x, num_data):  # pyro.module puts the networks' parameters where SVI's optimizer finds them
    pyro.module("vae", vae)
    return vae.model(x, num_data)


def guide(x, num_data):
    pyro.module("vae", vae)
    return vae.guide(x, num_data)


svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
generator = torch.Generator().manual_seed(0)
for epoch in range(1, args.epochs + 1):
    # each step's loss is -ELBO of the whole training set estimated from one batch (the data plate scales it)
    losses = [svi.step(batch["x"], len(train)) for batch in train.batches(100, generator=generator)]
    print(f"epoch {epoch}: ELBO {-sum(losses) / len(losses) / len(train):.2f} nats per image")

vae.eval()
with torch.no_grad():
    codes = torch.cat([vae.encode(x)["loc"] for x in test.x.split(2000)])
    plots.plot_latent_scatter(codes, test.labels, out / "latent_scatter.png")
    decoded = vae.decode(plots.manifold_grid(30, 4.0)).mean
    plots.plot_latent_manifold(decoded, 30, 4.0, out / "latent_manifold.png")
    plots.plot_samples(vae.sample(64), out / "samples.png")
print(f"wrote {out}/latent_scatter.png, latent_manifold.png, samples.png")
