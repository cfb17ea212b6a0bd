"""A VAE with a prior and a likelihood of your own: copy this file and edit the two classes.

pyrovae's plug-ins are plain ``torch.nn.Module``s (the contracts are in the docstrings of
``pyrovae/components/priors.py`` and ``pyrovae/components/likelihoods.py``). This script defines two that
pyrovae does not ship:

* ``StudentTPrior``: p(z) = prod_j StudentT(z_j; nu, 0, 1) with the degrees of freedom nu learned
  (nu = softplus(raw) + 1 > 1, so the mean exists). Heavy tails let a few points sit far out in
  latent space without a large KL cost.
* ``Binomial``: p(x|z) = prod_d Binomial(x_d; n, sigmoid(logit_d)) for counts out of a known number of
  trials n (successes in n attempts per item, reads out of n per site, ...), ``num_params = 1``.

It makes its own data: 2000 points of 30 binomial counts out of n = 20, driven by a 2-d heavy-tailed
latent variable through a random linear map, trains a 2-d VAE for a few hundred Adam steps, and prints
the ELBO before and after training and the importance-sampled log-likelihood of held-out data (nats per
data point), next to the best model without latent structure (independent binomials per dimension).

Run it (under a minute on one CPU thread)::

    OMP_NUM_THREADS=1 .venv/bin/python examples/custom_prior_likelihood.py
"""

from __future__ import annotations

import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import TraceMeanField_ELBO
from torch import nn
from torch.nn.functional import softplus

import pyrovae
from pyrovae import VAE, log_likelihood
from pyrovae.components import set_output_bias
from pyrovae.training import make_optimizer

TRIALS = 20  # the known number of trials n of every count


class StudentTPrior(nn.Module):
    """p(z) = prod_j StudentT(z_j; nu, 0, 1), nu = softplus(raw_df) + 1 learned with the model."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim  # the VAE checks that the prior's event shape is (z_dim,)
        self.raw_df = nn.Parameter(torch.zeros(()))
        self.register_buffer("zeros", torch.zeros(z_dim))  # a buffer follows .to(device)

    @property
    def df(self) -> torch.Tensor:
        return softplus(self.raw_df) + 1.0

    def forward(self) -> dist.TorchDistribution:
        # batch shape (), event shape (z_dim,): the model's data plate broadcasts it over the batch
        return dist.StudentT(self.df, self.zeros, 1.0).to_event(1)


class Binomial(nn.Module):
    """p(x|z) = prod_d Binomial(x_d; total_count, sigmoid(logit_d)): counts in {0, ..., total_count}.

    Log-likelihoods in nats per data point, summed over ``x_shape``. The decoder gives one logit per
    dimension: ``params (*batch, 1, *x_shape)``.
    """

    num_params = 1

    def __init__(self, x_shape: tuple[int, ...], total_count: int):
        super().__init__()
        self.x_shape, self.total_count = tuple(x_shape), int(total_count)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        logits = params.squeeze(-1 - len(self.x_shape))
        # validate_args=False: the data are checked once by check_support, not at every step
        return dist.Binomial(self.total_count, logits=logits, validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Called by the VAE once per public entry point; one clear ValueError for bad data."""
        if not torch.is_floating_point(x) or not torch.isfinite(x).all():
            raise ValueError("x must be finite floating-point counts; convert with x.float() and drop NaNs")
        if (x < 0).any() or (x > self.total_count).any() or (x != x.round()).any():
            raise ValueError(f"the Binomial likelihood needs whole-number counts in [0, {self.total_count}], got "
                             f"values in [{x.min().item():g}, {x.max().item():g}]; pass raw counts out of "
                             f"total_count={self.total_count}")

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Optional: start the decoder at the per-dimension success rate of the data. ``set_output_bias``
        fits any decoder: one bias per output of an MLP, one per channel of a conv network."""
        p = (x.mean(0) / self.total_count).clamp(1e-3, 1 - 1e-3)
        set_output_bias(output_layer, self.num_params, 0, torch.log(p) - torch.log1p(-p))


# By name, for configs, the command line and run folders (``VAEConfig(likelihood="example_binomial",
# likelihood_options={"total_count": 20})``): a run folder trained with them reloads in any process that has
# imported this module (pyrovae.load_run, evaluate_run, diagnose_run); for the command line, expose such a
# module through the "pyrovae.plugins" entry point group (see the README).
pyrovae.register_prior("example_student_t", StudentTPrior)
pyrovae.register_likelihood("example_binomial", Binomial)


def make_data(n: int = 2000, x_dim: int = 30, z_dim: int = 2, seed: int = 0) -> torch.Tensor:
    """Counts out of TRIALS from a known low-dimensional structure: z ~ StudentT(3)^2, logits = W z + b."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(x_dim, z_dim, generator=g) * 1.5
    b = torch.randn(x_dim, generator=g) * 0.5
    z = dist.StudentT(3.0).sample((n, z_dim))  # from torch's global RNG, seeded in main()
    probs = torch.sigmoid(z @ W.T + b)
    return torch.binomial(torch.full_like(probs, float(TRIALS)), probs, generator=g)


@torch.no_grad()
def elbo_per_point(vae: VAE, elbo, x: torch.Tensor) -> float:
    return -elbo.differentiable_loss(vae.model, vae.guide, x).item() / x.shape[0]


def main(steps: int = 400, batch_size: int = 100, z_dim: int = 2) -> None:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    x = make_data()
    train, test = x[:1500], x[1500:]

    likelihood = Binomial((30,), TRIALS)
    vae = VAE(z_dim=z_dim, x_shape=(30,), hidden=(64,), prior=StudentTPrior(z_dim), likelihood=likelihood)
    vae.check_data(train)  # raises one clear ValueError for bad data; training steps do not re-check
    likelihood.init_bias(vae.decoder.output_layer, train)

    # TraceMeanField_ELBO uses the closed-form KL where Pyro has one; for a Student-t prior it falls back
    # to a Monte Carlo estimate of log q(z|x) - log p(z), so any prior works.
    elbo = TraceMeanField_ELBO(max_plate_nesting=1, num_particles=4, vectorize_particles=True)
    optimizer = make_optimizer(vae.parameters(), lr=3e-3)
    print(f"ELBO before training: {elbo_per_point(vae, elbo, train):9.2f} nats per point (train)")

    with pyro.validation_enabled(False):
        for step in range(steps):
            idx = torch.randint(0, train.shape[0], (batch_size,))
            loss = elbo.differentiable_loss(vae.model, vae.guide, train[idx], num_data=train.shape[0]) / train.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if (step + 1) % 100 == 0:
                print(f"  step {step + 1:4d}: loss {loss.item():8.2f} nats per point, "
                      f"prior df {vae.prior.df.item():.2f}")

    print(f"ELBO after training:  {elbo_per_point(vae, elbo, train):9.2f} nats per point (train)")
    print(f"                      {elbo_per_point(vae, elbo, test):9.2f} nats per point (test)")
    result = log_likelihood(vae.model, vae.guide, test, num_samples=500, progress=False)
    print(f"log p(x), K = 500 importance samples: {result['log_likelihood'].mean().item():9.2f} nats per point "
          f"(test; its ELBO {result['elbo'].mean().item():.2f})")

    # The best model without latent structure: independent binomials with the training success rates.
    p = (train.mean(0) / TRIALS).clamp(1e-6, 1 - 1e-6)
    independent = dist.Binomial(TRIALS, probs=p).to_event(1).log_prob(test).mean().item()
    print(f"independent binomials (no latent):    {independent:9.2f} nats per point (test)")
    # The latent space is defined only up to reparameterization (the decoder can absorb any smooth
    # map of z), so the learned df need not recover the 3 the data were made with.
    print(f"learned prior degrees of freedom: {vae.prior.df.item():.2f}; {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
