"""A model family of your own through pyrovae's trainer, evaluator and diagnostics, unchanged: a VAE with two
stochastic layers, p(z2) p(z1 | z2) p(x | z1), guide q(z1 | x) q(z2 | z1), as Pyro programs.

    OMP_NUM_THREADS=1 .venv/bin/python examples/custom_model.py --data-dir /path/to/mnist-root --out runs/two-layer
"""
import argparse
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from torch.nn.functional import softplus

import pyrovae
from pyrovae.components import Bernoulli, MLPDecoder, mlp
from pyrovae.data import DataConfig, load_data
from pyrovae.diagnostics import diagnose
from pyrovae.models import check_data, data_plate


class TwoLayerConfig(pyrovae.ModelConfig):  # every field is a setting, saved with the run
    kind: Literal["two-layer-vae"] = "two-layer-vae"
    z1_dim: int = 32
    z2_dim: int = 8
    hidden: int = 256


def gaussian(h):  # a diagonal Normal from the loc and raw-scale halves of a network's output
    return dist.Normal(h.chunk(2, dim=-1)[0], softplus(h.chunk(2, dim=-1)[1]) + 1e-4).to_event(1)


@pyrovae.register_family
class TwoLayerVAE(pyrovae.Family):
    kind, config_class, latent_site = "two-layer-vae", TwoLayerConfig, "z1"

    def __init__(self, config: TwoLayerConfig):
        super().__init__()
        self.config, self.x_shape, h, z1, z2 = config, (1, 28, 28), config.hidden, config.z1_dim, config.z2_dim
        self.likelihood, self.decoder = Bernoulli(self.x_shape), MLPDecoder(z1, (h,), self.x_shape)  # p(x | z1)
        self.top_down, self.encoder = mlp([z2, h, 2 * z1]), mlp([784, h, 2 * z1])   # p(z1 | z2), q(z1 | x)
        self.bottom_up = mlp([z1, h, 2 * z2])                                       # q(z2 | z1)
        self.register_buffer("zeros", torch.zeros(z2))

    def model(self, x, num_data=None):
        with data_plate(x, num_data):
            z2 = pyro.sample("z2", dist.Normal(self.zeros, 1.0).to_event(1))
            z1 = pyro.sample("z1", gaussian(self.top_down(z2)))
            pyro.sample("x", self.likelihood(self.decoder(z1)), obs=x)

    def guide(self, x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("z2", gaussian(self.bottom_up(pyro.sample("z1", gaussian(self.encoder(x.flatten(-3)))))))

    def check_data(self, x):
        check_data(x, self.x_shape, self.likelihood)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, default in (("--data-dir", None), ("--epochs", 3), ("--train-size", 5000), ("--test-size", 500),
                          ("--out", "runs/two-layer-vae")):
        p.add_argument(flag, default=default, type=type(default) if default is not None else None)
    args = p.parse_args(argv)
    data = DataConfig(data_dir=args.data_dir, train_size=args.train_size, test_size=args.test_size)
    config = pyrovae.RunConfig(model=TwoLayerConfig(), trainer={"epochs": args.epochs - 1, "kl_warmup_epochs": 1},
                               data=data)
    pyrovae.fit(config, args.out, progress=False)  # trains and checkpoints; then resumes for one more epoch:
    longer = config.model_copy(update={"trainer": config.trainer.replace(epochs=args.epochs)})
    model, history = pyrovae.fit(longer, args.out, resume=True, progress=False)
    test = load_data(data)[2]
    metrics = pyrovae.evaluate(model, test, num_samples=100, progress=False)  # log p(x), ELBO, KL, active units
    report = diagnose(model, test, args.out, num_images=4, num_samples=200, gap_steps=0)  # k-hat, NUTS?, report
    print(f"train ELBO {history[-1]['train_elbo']:.2f}, test log p(x) {metrics['log_likelihood_nats']:.2f} nats, "
          f"median k-hat {report['summary']['median_khat']:.2f}; not run: {report['skipped']}")
    return metrics, report


if __name__ == "__main__":
    main()
