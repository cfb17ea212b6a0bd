"""Latent statistics of any model and guide: the KL per latent dimension, posterior means, active units
(Burda et al. 2016) and a linear probe. Each takes the Pyro programs with their arguments,
``(model, guide, *args)``, and reads the latent site (``"z"`` by default) from their traces.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from .. import checks
from ..errors import ConfigError, DataError
from ..inference.objectives import NoClosedFormKLError, kl_per_dim
from ..inference.traces import trace_pair
from .programs import check_arguments, chunks, evaluating, program_device


def _latent_site(guide_trace, model_trace, site: str):
    if site not in guide_trace.nodes or guide_trace.nodes[site]["type"] != "sample":
        raise ConfigError(f"the guide has no latent sample site {site!r}; name the site with site=...")
    return guide_trace.nodes[site]["fn"], model_trace.nodes[site]["fn"]


@torch.no_grad()
def kl_per_dimension(model, guide, *args, batch_size: int = 1000, num_samples: int = 1000, site: str = "z",
                     device: torch.device | str | None = None) -> torch.Tensor:
    r"""KL(q(z_d | x) || p(z_d)) for each latent dimension d, averaged over the images of ``x``, in nats.

    For a guide and prior that both factorize over the dimensions (``Independent`` univariate
    distributions: the diagonal Normal guide with the standard or learned Normal prior) the KL term
    is a sum, KL(q(z|x) || p(z)) = sum_d KL(q(z_d|x) || p(z_d)), so the result sums to the KL term of
    the ELBO. Each term is in closed form where ``kl_divergence`` has a rule for the pair, else the
    Monte Carlo mean of log q(z_d|x) - log p(z_d) over ``num_samples`` draws. Dimensions with a KL near
    0 carry no information about x (posterior collapse; Burda et al. 2016 count "active units" instead,
    see :func:`active_units`).

    Non-factorized priors (mixture, VampPrior, flow) and guides (low-rank, IAF) are refused: their KL
    has no per-dimension split (a KL against each dimension's marginal prior would not sum to the KL
    term), so this reports nothing rather than a number that looks comparable and is not.

    Args:
        model, guide: the Pyro programs (e.g. ``vae.model``, ``vae.guide``); their modules are held
            in eval mode.
        *args: the programs' arguments, one row per data point (``x``; ``x, y`` for a CVAE), checked.
        batch_size: images per encoder pass.
        num_samples: Monte Carlo draws per image where there is no closed form.
        site: the latent sample site (default ``"z"``).
        device: where to compute (default: where the model's module is).

    Returns:
        ``(z_dim,)`` tensor on the CPU, nats per image.

    Raises:
        NotFactorizedError: a guide or prior that does not factorize over the dimensions (an
            :class:`~pyrovae.errors.UnsupportedError`). ConfigError: no such site.
    """
    n = check_arguments(args)
    batch_size = checks.positive_int(batch_size, "batch_size")
    num_samples = checks.positive_int(num_samples, "num_samples")
    device = program_device(model, device)
    total = 0.0
    with evaluating(model, guide), pyro.validation_enabled(False):
        for chunk in chunks(args, batch_size, device):
            q, p = _latent_site(*reversed(trace_pair(model, guide, *chunk)), site)
            try:  # the closed form; a prior or guide that does not factorize raises NotFactorizedError
                kl = kl_per_dim(q, p)
            except NoClosedFormKLError:  # none: the Monte Carlo mean over num_samples draws
                kl = kl_per_dim(q, p, z=q.sample((num_samples,)), analytic=False).mean(0)
            total = total + kl.reshape(-1, kl.shape[-1]).sum(0)
    return (total / n).cpu()


@torch.no_grad()
def posterior_means(model, guide, *args, batch_size: int = 1000, num_samples: int = 256, site: str = "z",
                    device: torch.device | str | None = None) -> torch.Tensor:
    """E_{q(z|x)}[z] for every image: ``(n, z_dim)`` on the CPU.

    Exact where the guide's distribution has a ``mean`` (diagonal and low-rank Normal); for a guide
    without one (IAF) the Monte Carlo mean of ``num_samples`` draws.

    Raises:
        ConfigError: no such site.
    """
    check_arguments(args)
    batch_size = checks.positive_int(batch_size, "batch_size")
    num_samples = checks.positive_int(num_samples, "num_samples")
    device = program_device(model, device)
    means = []
    with evaluating(model, guide), pyro.validation_enabled(False):
        for chunk in chunks(args, batch_size, device):
            guide_trace = poutine.trace(guide).get_trace(*chunk)
            if site not in guide_trace.nodes:
                raise ConfigError(f"the guide has no latent sample site {site!r}; name the site with site=...")
            q = guide_trace.nodes[site]["fn"]
            try:
                mean = q.mean
            except NotImplementedError:
                mean = q.sample((num_samples,)).mean(0)
            means.append(mean.reshape(chunk[0].shape[0], -1).cpu())
    return torch.cat(means)


def active_units(model, guide, *args, threshold: float = 0.01, batch_size: int = 1000, site: str = "z",
                 device: torch.device | str | None = None) -> dict:
    r"""Active latent units (Burda, Grosse & Salakhutdinov 2016, Appendix C).

    Dimension d is active when A_d = Cov_x(E_{q(z|x)}[z_d]) > ``threshold``: the posterior mean moves
    with the data. A_d is the (unbiased) variance over the images of ``x`` of the posterior means from
    :func:`posterior_means`. Burda et al. use 0.01 and report 19-20 of 50 units active for a 1-layer
    VAE on MNIST. Works for any guide and prior.

    Args:
        model, guide: the Pyro programs (e.g. ``vae.model``, ``vae.guide``); their modules are held
            in eval mode.
        *args: the programs' arguments, one row per data point, n >= 2.
        threshold: the activity threshold, >= 0 (default 0.01).
        batch_size: images per encoder pass.
        site: the latent sample site (default ``"z"``).
        device: where to compute (default: where the model's module is).

    Returns:
        dict with ``variance`` (``(z_dim,)`` A_d), ``active`` (``(z_dim,)`` bool), ``num_active`` (int)
        and ``threshold``.

    Raises:
        DataError: fewer than 2 data points. ConfigError: a negative or non-finite ``threshold``.
    """
    threshold = checks.number(threshold, "threshold", 0.0, hint="Burda et al. use 0.01")
    if check_arguments(args) < 2:
        raise DataError(f"active_units needs at least 2 data points to take a variance over, got {args[0].shape[0]}")
    variance = posterior_means(model, guide, *args, batch_size=batch_size, site=site, device=device)
    variance = variance.var(dim=0, unbiased=True)
    active = variance > threshold
    return {"variance": variance, "active": active, "num_active": int(active.sum()), "threshold": float(threshold)}


def _labels(y, n: int, name: str, x_name: str) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{name} must be a 1-d array of {n} labels, one per image of {x_name}; got shape "
                         f"{tuple(y.shape)}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise DataError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    return y


def linear_probe(model, guide, train_args: tuple, train_y, test_args: tuple, test_y, C: float = 1.0,
                 max_iter: int = 1000, batch_size: int = 1000, device: torch.device | str | None = None,
                 site: str = "z") -> dict:
    """Linear probe: how much of the labels a linear classifier reads off the posterior means.

    Fits scikit-learn's ``LogisticRegression`` (multinomial, L2 penalty of strength 1/``C``) on the
    standardized posterior means E_q[z|x] (:func:`posterior_means`; the scaler is fit on the training
    images) of ``train_x`` and reports its accuracy on ``test_x``. The encoder never sees the labels:
    a standard measure of how linearly separable the classes are in latent space.

    Args:
        model, guide: the Pyro programs.
        train_args, test_args: tuples of the programs' arguments (``(x,)``; ``(x, y)`` for a CVAE), one
            row per data point, checked.
        train_y, test_y: ``(n,)`` integer labels (torch tensors or numpy arrays).
        C: inverse regularization strength (default 1).
        max_iter: iterations of the solver (default 1000).
        batch_size: data points per guide pass; device: where to encode (default: where the model's module is).
        site: the latent site whose posterior means are probed (default ``"z"``).

    Returns:
        dict with ``accuracy`` (test, in [0, 1]), ``train_accuracy``, ``chance_accuracy`` (frequency of
        the most common test label), ``num_train``, ``num_test`` and ``num_classes``.

    Raises:
        DataError: labels that are not 1-d integers matching the data; fewer than two classes among the
            training labels.
    """
    from sklearn.linear_model import LogisticRegression  # imported here: only the probe needs it
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_labels = _labels(train_y, check_arguments(train_args), "train_y", "train_args")
    test_labels = _labels(test_y, check_arguments(test_args), "test_y", "test_args")
    if np.unique(train_labels).size < 2:
        raise DataError("train_y holds a single class; a linear probe needs at least two")
    features = [posterior_means(model, guide, *a, batch_size=batch_size, device=device, site=site).double().numpy()
                for a in (train_args, test_args)]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(features[0], train_labels)
    _, counts = np.unique(test_labels, return_counts=True)
    return {"accuracy": float(probe.score(features[1], test_labels)),
            "train_accuracy": float(probe.score(features[0], train_labels)),
            "chance_accuracy": float(counts.max() / test_labels.size),
            "num_train": int(train_labels.size), "num_test": int(test_labels.size),
            "num_classes": int(np.unique(train_labels).size)}
