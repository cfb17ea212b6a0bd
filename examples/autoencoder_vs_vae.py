"""An autoencoder and a VAE on the same data, side by side: codes, interpolations and samples.

    .venv/bin/python examples/autoencoder_vs_vae.py --data-dir ../shared/data [--epochs 10] [--out DIR]

Both are Pyro programs with the same networks (z_dim 2) and the same Bernoulli likelihood; the autoencoder's
guide is a point mass and its prior is masked out, so nothing pulls its codes towards N(0, I). Writes
DIR/codes.png (test codes of PCA, the autoencoder and the VAE, coloured by digit), DIR/interpolations.png (the
same test pairs, decoded along the straight line between their codes) and DIR/samples.png (z ~ N(0, I) decoded by
each, and the autoencoder through a Gaussian mixture fitted to its training codes).
"""
import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import torch
from sklearn.decomposition import PCA

import pyrovae
from pyrovae import plots
from pyrovae.data import DataConfig, load_data
from pyrovae.evaluation.samplers import encode_all, fit_latent_gmm, sample_gmm
from pyrovae.models import AutoencoderConfig

p = argparse.ArgumentParser()
p.add_argument("--data-dir", default=None, help="the folder that holds MNIST/raw/ (default: $PYROVAE_DATA)")
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--out", default="runs/example-autoencoder-vs-vae")
args = p.parse_args()
out = Path(args.out)
data = DataConfig(data_dir=args.data_dir, train_size=10_000)
trainer = pyrovae.TrainerConfig(epochs=args.epochs, kl_warmup_epochs=args.epochs / 5)
models = {}
for name, config in (("autoencoder", AutoencoderConfig(z_dim=2, hidden=(512, 256))),
                     ("VAE", pyrovae.VAEConfig(z_dim=2, hidden=(512, 256)))):
    run = pyrovae.RunConfig(model=config, trainer=trainer, data=data)
    models[name], _ = pyrovae.fit(run, out / name, resume=(out / name / "checkpoint.pt").exists())
train, _, test = load_data(data)
x, y = test.x[:2000], test.labels[:2000]

pca = PCA(2).fit(train.as_float().flatten(1).numpy())
codes = {"PCA": torch.as_tensor(pca.transform(x.flatten(1).numpy()))}
codes.update({name: encode_all(m, x) for name, m in models.items()})
fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
for ax, (name, c) in zip(axes, codes.items()):
    ax.scatter(c[:, 0], c[:, 1], c=y, cmap="tab10", s=3)
    ax.set_title(f"{name}: test codes by digit")
fig.savefig(out / "codes.png", dpi=100, bbox_inches="tight")

pairs = [(0, 1), (2, 3), (4, 5), (6, 7)]  # the same test pairs for both models
t = torch.linspace(0, 1, 10)[:, None]
rows = []
for name, m in models.items():
    for a, b in pairs:
        za, zb = (m.encode(x[i:i + 1])["loc"] for i in (a, b))
        rows.append(m.decode(za + t * (zb - za)).mean.detach())
plots.plot_samples_by_label(torch.cat(rows), 10, out / "interpolations.png",
                            labels=[f"{n} {a}-{b}" for n in models for a, b in pairs],
                            title="decoded along the line between two test codes", ylabel="")
pyro.set_rng_seed(0)
with torch.no_grad():
    rows = [models["VAE"].sample(10), models["autoencoder"].sample(10),
            sample_gmm(models["autoencoder"], fit_latent_gmm(models["autoencoder"], train, 10), 10)]
plots.plot_samples_by_label(torch.cat(rows), 10, out / "samples.png",
                            labels=["VAE, z ~ p(z)", "AE, z ~ N(0, I)", "AE, z ~ GMM"], title="samples", ylabel="")
print(f"wrote {out}/codes.png, interpolations.png, samples.png")
