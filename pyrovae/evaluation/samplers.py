"""Post-hoc samplers: generating from any trained model through a density fitted to its codes.

A VAE generates by decoding z ~ p(z). An autoencoder has no prior its codes were trained to match, so decoding
z ~ N(0, I) lands where no training code lies. Ghosh, Sajjadi, Vergari, Black & Schölkopf (2020, "From
variational to deterministic autoencoders", ICLR) fit a Gaussian mixture to the codes of the training set
after training and decode its draws instead ("ex-post density estimation"); :func:`fit_latent_gmm` does that
for any model with ``encode`` (the mean of q(z|x) for a VAE, the code for an autoencoder).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import checks
from ..torchtools import device_of


@torch.no_grad()
def encode_all(model, data, chunk: int = 2000) -> torch.Tensor:
    """The codes of every data point of ``data`` (an :class:`~pyrovae.data.ArrayDataset` or a tensor
    ``(n, *x_shape)``): the mean of q(z|x), ``(n, z_dim)``, on the CPU."""
    device = device_of(model)
    mask = getattr(data, "mask", None)  # a split with missing entries: the encoder reads the observed ones
    chunks = data.chunks(chunk) if hasattr(data, "chunks") else data.split(chunk)
    codes = []
    for start, x in zip(range(0, len(data), chunk), chunks):
        part = None if mask is None else mask[start:start + len(x)].to(device)
        codes.append((model.encode(x.to(device)) if part is None else model.encode(x.to(device), part))["loc"].cpu())
    return torch.cat(codes)


def fit_latent_gmm(model, train, n_components: int = 10, seed: int = 0, covariance_type: str = "full"):
    """A ``sklearn.mixture.GaussianMixture`` of ``n_components`` fitted to the codes of ``train`` (see
    :func:`encode_all`), seeded with ``seed``.

    Raises:
        ConfigError: ``n_components`` below 1.
    """
    from sklearn.mixture import GaussianMixture

    checks.positive_int(n_components, "n_components")
    codes = encode_all(model, train).double().numpy()
    n_components = min(n_components, len(codes))  # no more components than codes
    return GaussianMixture(n_components, covariance_type=covariance_type, random_state=seed,
                           reg_covar=1e-6).fit(codes)


def sample_codes(gmm, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` draws z from the fitted mixture, ``(n, z_dim)`` float32, in random order (scikit-learn returns them
    grouped by component)."""
    checks.positive_int(n, "n")
    gmm.random_state = seed
    z, _ = gmm.sample(n)
    order = np.random.default_rng(seed).permutation(n)
    return torch.as_tensor(z[order], dtype=torch.float32)


@torch.no_grad()
def sample_gmm(model, gmm, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` samples of ``model`` through the mixture: the mean of p(x | z) at z ~ gmm, ``(n, *x_shape)``."""
    z = sample_codes(gmm, n, seed).to(device_of(model))
    return model.decode(z).mean


class SampleReader:
    """Reads samples of any generative model of labelled images with no download: a logistic regression trained
    on the training images, and the training images themselves for the nearest-neighbour distance.

    Args:
        train_x: ``(n, D)`` training images, flattened (a few thousand suffice); train_y: ``(n,)`` their labels.
        reference_x: ``(m, D)`` held-out images: their mean nearest-training distance is the reference.
        num_classes: the number of classes (coverage counts those that get at least 5% of the samples).
    """

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, reference_x: np.ndarray, num_classes: int = 10):
        from sklearn.linear_model import LogisticRegression

        self.classifier = LogisticRegression(max_iter=300).fit(train_x, train_y)
        self.train = torch.as_tensor(train_x, dtype=torch.float32)
        self.num_classes = num_classes
        self.reference = float(self.nearest(reference_x).mean())

    def nearest(self, x: np.ndarray) -> np.ndarray:
        """Each row's Euclidean distance to its nearest training image, ``(len(x),)``."""
        x = torch.as_tensor(x, dtype=torch.float32)
        return torch.cat([torch.cdist(part, self.train).min(1).values for part in x.split(1000)]).numpy()

    def read(self, samples: np.ndarray) -> dict:
        """``{"confidence", "coverage", "nearest_train_distance"}`` of ``samples (n, D)``: the classifier's mean
        largest class probability, the number of classes that receive at least 5% of the samples, and the mean
        distance to the nearest training image (far below :attr:`reference` means copies of training images)."""
        probs = self.classifier.predict_proba(np.asarray(samples))
        share = np.bincount(probs.argmax(1), minlength=self.num_classes) / len(samples)
        return {"confidence": float(probs.max(1).mean()), "coverage": int((share >= 0.05).sum()),
                "nearest_train_distance": float(self.nearest(samples).mean())}
