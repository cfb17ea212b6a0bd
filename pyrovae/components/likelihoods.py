"""Likelihoods p(x|z): small modules that turn a decoder's output into a Pyro distribution over x.

The contract (what :class:`pyrovae.VAE` relies on, and all a user's own likelihood must do):

* ``num_params``: how many decoder outputs it needs per data dimension (1 for Bernoulli logits,
  2 for a Normal's location and scale, ...). The decoder then outputs ``(*batch, num_params, *x_shape)``.
* ``forward(params)`` returns a distribution with ``batch_shape == params.shape[:-1-len(x_shape)]``
  and ``event_shape == x_shape`` (use ``.to_event(len(x_shape))``).
* ``check_support(x)`` raises ``ValueError`` with an actionable message when data ``x`` lies outside
  the distribution's support; the model calls it once per public entry point, not per step.
* optionally ``init_bias(output_layer, x)`` sets the decoder's output bias from the data mean
  (:func:`set_output_bias` does it for MLP and conv decoders alike).
* optionally ``support``: a class attribute naming the data the likelihood takes, one of the keys of
  :data:`SUPPORT_DESCRIPTIONS` (``"binary"``, ``"unit_interval"``, ``"real"``, ``"counts"``, ...); every
  shipped likelihood has one.

Build distributions with ``validate_args=False``: the data were checked once by ``check_support``,
and Pyro's per-step validation would only cost time. Log-likelihoods are in nats per data point,
summed over all ``x_shape`` dimensions (log densities for continuous data, log probabilities for
discrete data, so the two are not comparable with each other).

Shipped likelihoods (:data:`LIKELIHOODS` maps the names to the classes; options are constructor
keyword arguments, every class is built as ``Cls(x_shape, **options)``; ``normal``, ``laplace`` and
``student_t`` take ``learned_scale=True`` for a decoded scale, and then ``num_params = 2``):

=================================== ===================================== ========== ================================
name                                class                                 num_params data x
=================================== ===================================== ========== ================================
``bernoulli``                       :class:`Bernoulli`                    1          {0, 1}
``continuous_bernoulli``            :class:`ContinuousBernoulli`          1          [0, 1]
``normal``                          :class:`Normal`                       1 or 2     real numbers
``laplace``                         :class:`Laplace`                      1 or 2     real numbers
``student_t``                       :class:`StudentT`                     1 or 2     real numbers (outliers)
``beta``                            :class:`Beta`                         2          the open interval (0, 1)
``categorical_256``                 :class:`Categorical256`               256        8-bit grey levels k / 255
``discretized_logistic``            :class:`DiscretizedLogistic`          2          8-bit grey levels k / 255
``categorical``                     :class:`Categorical`                  num_levels levels 0, 1, ..., num_levels - 1
``poisson``                         :class:`Poisson`                      1          counts 0, 1, 2, ...
``negative_binomial``               :class:`NegativeBinomial`             2          counts 0, 1, 2, ...
``zero_inflated_negative_binomial`` :class:`ZeroInflatedNegativeBinomial` 3          counts 0, 1, 2, ...
``binomial``                        :class:`Binomial`                     1          counts 0, 1, ..., total_count
``mixed``                           :class:`~.mixed.MixedLikelihood`      max per    a table of mixed column types
                                                                          column     (needs its ``schema``)
=================================== ===================================== ========== ================================

Example, a likelihood of your own: a Normal whose scale is one learned parameter per dimension,
shared by all data points rather than decoded (any ``nn.Module`` with these members works; its
parameters are trained with the networks; nothing to register)::

    import pyro.distributions as dist
    import torch
    from torch import nn
    from torch.nn.functional import softplus

    class SharedScaleNormal(nn.Module):
        num_params = 1                                  # the location per dimension
        support = "real"                                # optional, a key of SUPPORT_DESCRIPTIONS

        def __init__(self, x_shape):
            super().__init__()
            self.x_shape = tuple(x_shape)
            self.raw_scale = nn.Parameter(torch.zeros(self.x_shape))

        def forward(self, params):                      # (*batch, 1, *x_shape)
            loc = params.squeeze(-1 - len(self.x_shape))
            return dist.Normal(loc, softplus(self.raw_scale) + 1e-3,
                               validate_args=False).to_event(len(self.x_shape))

        def check_support(self, x):
            if not torch.isfinite(x).all():
                raise ValueError("x holds NaN or infinite values; clean the data first")

    vae = VAE(z_dim=10, x_shape=(30,), likelihood=SharedScaleNormal((30,)))

To make it available by name (``VAEConfig(likelihood="shared_scale_normal")``, ``--likelihood``, and a run
folder trained with it reloading), register it: ``pyrovae.register_likelihood("shared_scale_normal",
SharedScaleNormal)``. See ``examples/custom_prior_likelihood.py`` for
a complete, runnable example with a prior and a likelihood of one's own.
"""

from __future__ import annotations

import math
import numbers

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn.functional import logsigmoid, softplus

from ..errors import ConfigError, DataError, UnsupportedError
from ..torchtools import inverse_softplus

#: What each value of a likelihood's ``support`` class attribute means: the data x it takes.
SUPPORT_DESCRIPTIONS = {
    "binary": "binary values {0, 1}",
    "unit_interval": "values in the closed interval [0, 1]",
    "open_unit_interval": "values strictly inside the open interval (0, 1)",
    "grey_levels": "8-bit grey levels k / 255, k = 0, 1, ..., 255, in [0, 1]",
    "real": "any finite real number",
    "counts": "non-negative whole-number counts 0, 1, 2, ...",
    "bounded_counts": "whole-number counts 0, 1, ..., total_count",
    "levels": "whole-number levels 0, 1, ..., num_levels - 1",
    "mixed": "a table's columns, each in its schema type's support (reals, positive values, counts, 0/1, codes 0..K-1)",
}


def _whole_number(value, name: str, minimum: int) -> int:
    """``value`` as an int; ``ConfigError`` unless it is a whole number (16 or 16.0) of at least ``minimum``."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer()
            or value < minimum):
        raise ConfigError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    return int(value)


def _check_finite(x: torch.Tensor) -> None:
    if not torch.is_floating_point(x):
        raise DataError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert it with x.float()")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise DataError(f"x holds {bad} NaN or infinite values; clean the data before training or evaluating")


def _range(x: torch.Tensor) -> str:
    return f"[{x.min().item():g}, {x.max().item():g}]"


def _check_counts(x: torch.Tensor, name: str) -> None:
    _check_finite(x)
    if (x < 0).any() or (x != x.round()).any():
        bad = ((x < 0) | (x != x.round())).sum().item()
        raise DataError(f"the {name} likelihood needs non-negative integer counts (as floats), got {bad} values "
                        f"that are negative or not whole numbers (values in {_range(x)}); pass raw counts, "
                        "not normalized or log-transformed data, or use a likelihood for continuous values")


def _check_bounded_integers(x: torch.Tensor, name: str, upper: int, option: str, offset: int, advice: str) -> None:
    """Raise ``DataError`` unless ``x`` is finite whole-number floats in ``[0, upper]``. ``option`` is the
    constructor option that sets ``upper`` (``upper = option - offset``), named in the hint when the data
    are non-negative whole numbers above ``upper``; ``advice`` is what to do otherwise."""
    _check_finite(x)
    fractional, outside = x != x.round(), (x < 0) | (x > upper)
    if not (fractional.any() or outside.any()):
        return
    lo, hi = x.min().item(), x.max().item()
    if not fractional.any() and lo >= 0:
        hint = f"set {option}={int(hi) + offset} (or more) to cover the largest value"
    elif lo >= 0 and hi <= 1:
        hint = "these look like values scaled to [0, 1]: pass the unscaled whole numbers"
    else:
        hint = advice
    raise DataError(f"the {name} likelihood needs whole numbers 0, 1, ..., {upper} (as floats), got "
                    f"{fractional.sum().item()} values that are not whole numbers and {outside.sum().item()} "
                    f"outside [0, {upper}] (values in {_range(x)}); {hint}")


@torch.no_grad()
def set_output_bias(output_layer: nn.Module, num_params: int, index: int, value: torch.Tensor) -> None:
    """Set the output bias of decoder parameter ``index`` (of ``num_params``) to ``value`` (shape ``x_shape``,
    or a scalar): what a likelihood's ``init_bias(output_layer, x)`` calls, for any decoder.

    An MLP's last layer has one bias per output (``num_params * prod(x_shape)``); a conv decoder's has
    one per output channel (``num_params * C``), which gets the per-channel mean of ``value``; any other
    layout gets the mean of ``value``. A layer without a bias is left alone.

    Example, a Binomial likelihood's ``init_bias`` (start at the data's success rate per dimension)::

        def init_bias(self, output_layer, x):
            p = (x.mean(0) / self.total_count).clamp(1e-3, 1 - 1e-3)
            set_output_bias(output_layer, self.num_params, 0, torch.logit(p))
    """
    bias = output_layer.bias
    if bias is None:
        return
    rows = bias.view(num_params, -1)
    if rows.shape[1] == value.numel():
        rows[index].copy_(value.reshape(-1))
    elif value.dim() >= 1 and rows.shape[1] == value.shape[0]:  # one bias per channel
        rows[index].copy_(value.reshape(value.shape[0], -1).mean(1))
    else:
        rows[index].fill_(value.mean().item())


_set_bias = set_output_bias  # the name the shipped likelihoods use


def _split(params: torch.Tensor, x_shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """``(*batch, num_params, *x_shape)`` -> ``num_params`` tensors ``(*batch, *x_shape)``."""
    return params.unbind(-1 - len(x_shape))


class Bernoulli(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(logit_d)) for binary images, ``num_params = 1``.

    Log-likelihoods are in nats per image (summed over all ``x_shape`` dimensions).
    """

    support = "binary"
    num_params = 1

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, 1, *x_shape)`` logits -> distribution with event shape ``x_shape``."""
        return dist.Bernoulli(logits=params.squeeze(-1 - len(self.x_shape)),
                              validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``x`` is not finite floats in {0, 1}."""
        _check_finite(x)
        if not ((x == 0) | (x == 1)).all():
            lo, hi = x.min().item(), x.max().item()
            raise DataError(f"the Bernoulli likelihood needs x in {{0, 1}}, got values in [{lo:g}, {hi:g}]; "
                            "binarize the data (images: binarization='dynamic' or 'static'; other data: "
                            "transform='binarize') or use a likelihood for "
                            "continuous values")

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Set the decoder's output bias to the logit of the mean of ``x`` (per pixel where the layer
        allows), so training starts from the data's marginal instead of p = 0.5."""
        mean = x.float().mean(0).clamp(1e-3, 1 - 1e-3)
        logit = torch.log(mean) - torch.log1p(-mean)
        bias = output_layer.bias
        if bias.numel() == logit.numel():
            bias.copy_(logit.reshape(bias.shape))
        else:  # a conv layer has one bias per channel
            bias.fill_(logit.mean().item())


# --- the continuous Bernoulli -------------------------------------------------------------------------


class ContinuousBernoulliDistribution(dist.ContinuousBernoulli):
    """``pyro.distributions.ContinuousBernoulli`` with its normalizer, mean, variance and inverse CDF
    computed from the logit ``eta`` instead of ``lambda = sigmoid(eta)``.

    The PyTorch class works through ``lambda``, which rounds to 1 in float32 once ``eta`` passes about
    17: its log-normalizer then stops growing (2.77 at eta = 50 where the true value is log 50 = 3.91)
    and the log-density is wrong by over a nat per pixel. Here, with ``C(eta) = eta / tanh(eta / 2)``,

        log C = log|eta| - log tanh(|eta| / 2),   or log 2 + eta^2/12 - 7 eta^4/1440 for |eta| < 0.1,
        mean  = 1 / (1 - exp(-eta)) - 1 / eta,     or its Taylor series for |eta| < 0.5,
        var   = 1 / eta^2 - 1 / (4 sinh(eta/2)^2), or its Taylor series for |eta| < 0.5,

    and the CDF ``expm1(eta x) / expm1(eta)`` and its inverse (used by ``sample`` and ``rsample``) in
    forms that overflow for no eta. The series are exact to float32 rounding where they are used.
    """

    def _eta(self, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(eta, small, safe)``: ``small`` where |eta| < threshold (use a series there), and ``eta``
        with those entries replaced by 1, so that the exact branch has no 0/0 (nor NaN gradients)."""
        eta = self.logits
        small = eta.abs() < threshold
        return eta, small, torch.where(small, torch.ones_like(eta), eta)

    def _cont_bern_log_norm(self) -> torch.Tensor:
        eta, small, safe = self._eta(0.1)
        a = safe.abs()
        exact = torch.log(a) - torch.log(torch.tanh(a / 2))
        e2 = eta * eta
        return torch.where(small, math.log(2.0) + e2 / 12 - 7 * e2 * e2 / 1440, exact)

    @property
    def mean(self) -> torch.Tensor:
        eta, small, safe = self._eta(0.5)
        exact = -1 / torch.expm1(-safe) - 1 / safe
        series = 0.5 + eta / 12 - eta ** 3 / 720 + eta ** 5 / 30240
        return torch.where(small, series, exact)

    @property
    def variance(self) -> torch.Tensor:
        eta, small, safe = self._eta(0.5)
        exact = 1 / safe ** 2 - 1 / (4 * torch.sinh(safe.clamp(-80, 80) / 2) ** 2)
        e2 = eta * eta
        series = 1 / 12 - e2 / 240 + e2 * e2 / 6048 - e2 ** 3 / 172800
        return torch.where(small, series, exact)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """F(x) = expm1(eta x) / expm1(eta), written as exp(eta (x - 1)) expm1(-eta x) / expm1(-eta)
        for eta > 0 so that neither sign of eta overflows."""
        eta, small, safe = self._eta(1e-6)
        value = value.clamp(0, 1)
        neg = torch.expm1(safe.clamp(max=0) * value) / torch.expm1(safe.clamp(max=0))
        pos_eta = safe.clamp(min=0)
        pos = torch.exp(pos_eta * (value - 1)) * torch.expm1(-pos_eta * value) / torch.expm1(-pos_eta)
        return torch.where(small, value + eta * value * (value - 1) / 2, torch.where(safe < 0, neg, pos))

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """x = log1p(u expm1(eta)) / eta for eta < 0, and by the symmetry x -> 1 - x, eta -> -eta,
        x = 1 + log1p((1 - u) expm1(-eta)) / eta for eta > 0 (neither overflows)."""
        eta, small, safe = self._eta(1e-6)
        a = -safe.abs()
        u = torch.where(safe < 0, value, 1 - value)
        x = torch.log1p(u * torch.expm1(a)) / a
        return torch.where(small, value + eta * value * (1 - value) / 2, torch.where(safe < 0, x, 1 - x))

    def entropy(self) -> torch.Tensor:
        # log p(x) = eta x - softplus(eta) + log C, so H = -(eta E[x] - softplus(eta) + log C)
        return -(self.logits * self.mean - softplus(self.logits) + self._cont_bern_log_norm())


class ContinuousBernoulli(nn.Module):
    r"""The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019, "The continuous Bernoulli: fixing a
    pervasive error in variational autoencoders", NeurIPS) for data in [0, 1], ``num_params = 1``.

    With ``eta`` the decoder output (one logit per dimension) and ``lambda = sigmoid(eta)``:

        log p(x | eta) = sum_d [ x_d log lambda_d + (1 - x_d) log(1 - lambda_d) + log C(lambda_d) ],
        C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) = eta / tanh(eta / 2),  C(1/2) = 2,

    in nats per data point, summed over ``x_shape``. Without ``log C`` this is the "Bernoulli
    likelihood on grey values" that many VAE codes use, which is not a density. ``C`` is computed from
    ``eta`` (see :class:`ContinuousBernoulliDistribution`), stable at eta = 0 and for large ``|eta|``.
    Note that the mean of p(x|eta) is not lambda (it is pulled towards 1/2): :meth:`VAE.reconstruct`
    returns the true mean.

    Args:
        x_shape: the shape of one data point.

    Shapes: ``params (*batch, 1, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises (``check_support``): ``ValueError`` when x is not floating point, not finite, or outside [0, 1].
    """

    support = "unit_interval"
    num_params = 1

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, 1, *x_shape)`` logits -> distribution with event shape ``x_shape``."""
        return ContinuousBernoulliDistribution(logits=params.squeeze(-1 - len(self.x_shape)),
                                               validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is finite floats in [0, 1]."""
        _check_finite(x)
        if (x < 0).any() or (x > 1).any():
            raise DataError(f"the continuous Bernoulli likelihood needs x in [0, 1], got values in {_range(x)}; "
                            "rescale the data (e.g. x / 255 for 8-bit pixels) or use a likelihood for "
                            "unbounded values ('normal', 'laplace')")


# --- real-valued data -----------------------------------------------------------------------------------


class _LocationScale(nn.Module):
    """Shared code of :class:`Normal`, :class:`Laplace` and :class:`StudentT`."""

    support = "real"
    _dist = None
    num_params = 1  # 2 with a learned scale (set per instance)

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28), scale: float = 1.0, learned_scale: bool = False,
                 min_scale: float = 1e-3):
        super().__init__()
        if learned_scale:
            if not min_scale > 0:
                raise ConfigError(f"min_scale must be positive, got {min_scale!r}")
        elif not scale > 0:
            raise ConfigError(f"scale must be positive, got {scale!r}")
        self.x_shape = tuple(x_shape)
        self.scale, self.learned_scale, self.min_scale = float(scale), bool(learned_scale), float(min_scale)
        self.num_params = 2 if learned_scale else 1

    def extra_repr(self) -> str:
        if self.learned_scale:
            return f"x_shape={self.x_shape}, learned_scale=True, min_scale={self.min_scale:g}"
        return f"x_shape={self.x_shape}, scale={self.scale:g}"

    def loc_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """``params (*batch, num_params, *x_shape)`` -> ``(loc, scale)``, each ``(*batch, *x_shape)``
        (a float scale when it is fixed)."""
        if self.learned_scale:
            loc, raw = _split(params, self.x_shape)
            return loc, softplus(raw) + self.min_scale
        return params.squeeze(-1 - len(self.x_shape)), self.scale

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, num_params, *x_shape)`` -> distribution with event shape ``x_shape``."""
        loc, scale = self.loc_scale(params)
        return self._dist(loc, scale, validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is finite floats (any real value is in the support)."""
        _check_finite(x)

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Set the location bias to the data mean and, with a learned scale, the scale bias to the
        data's spread (standard deviation for the Normal, mean absolute deviation for the Laplace)."""
        x = x.float()
        mean = x.mean(0)
        _set_bias(output_layer, self.num_params, 0, mean)
        if self.learned_scale:
            spread = self._spread(x, mean).clamp(min=2 * self.min_scale)
            _set_bias(output_layer, self.num_params, 1, inverse_softplus(spread - self.min_scale))


class Normal(_LocationScale):
    r"""A factorized Normal for real-valued data: the "mean squared error" VAE.

        log p(x | loc, s) = sum_d [ -(x_d - loc_d)^2 / (2 s_d^2) - log s_d - log(2 pi) / 2 ]

    in nats per data point, summed over ``x_shape``. With a fixed scale ``s`` (``num_params = 1``,
    ``params`` are the locations), -log p is ``||x - loc||^2 / (2 s^2)`` plus a constant: the MSE loss
    weighed by ``1 / (2 s^2)``, so ``s`` sets the balance between reconstruction and KL terms. With
    ``learned_scale=True`` (``num_params = 2``: location and raw scale) ``s = softplus(raw) + min_scale``
    per dimension; the floor keeps the density bounded (a Normal's likelihood grows without bound as
    ``s -> 0`` on a data point it fits exactly; Mattei & Frellsen 2018).

    Args:
        x_shape: the shape of one data point.
        scale: the fixed standard deviation (default 1.0, in the units of x); ignored with a learned scale.
        learned_scale: let the decoder output a per-dimension scale (default False).
        min_scale: the scale's floor when learned (default 1e-3).

    Shapes: ``params (*batch, num_params, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises: ``ValueError`` for a non-positive ``scale`` or ``min_scale``; ``check_support`` raises
    ``ValueError`` when x is not floating point or not finite. Source: Kingma & Welling 2014, App. C.2.
    """

    _dist = dist.Normal

    @staticmethod
    def _spread(x, mean):
        return x.std(0) if x.shape[0] > 1 else torch.ones_like(mean)


class Laplace(_LocationScale):
    r"""A factorized Laplace for real-valued data: the "L1 / mean absolute error" VAE.

        log p(x | loc, b) = sum_d [ -|x_d - loc_d| / b_d - log(2 b_d) ]

    in nats per data point, summed over ``x_shape``. With a fixed scale ``b`` (``num_params = 1``,
    ``params`` are the locations) -log p is ``||x - loc||_1 / b`` plus a constant; with
    ``learned_scale=True`` (``num_params = 2``: location and raw scale) ``b = softplus(raw) + min_scale``.
    Heavier tails than :class:`Normal`, so outlying dimensions cost linearly rather than quadratically.

    Args:
        x_shape: the shape of one data point.
        scale: the fixed scale ``b`` (default 1.0, in the units of x; the standard deviation is
            ``sqrt(2) b``); ignored with a learned scale.
        learned_scale: let the decoder output a per-dimension scale (default False).
        min_scale: the scale's floor when learned (default 1e-3).

    Shapes: ``params (*batch, num_params, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises: ``ValueError`` for a non-positive ``scale`` or ``min_scale``; ``check_support`` raises
    ``ValueError`` when x is not floating point or not finite.
    """

    _dist = dist.Laplace

    @staticmethod
    def _spread(x, mean):
        return (x - x.median(0).values).abs().mean(0)


class StudentTDistribution(dist.StudentT):
    """``pyro.distributions.StudentT`` whose ``mean`` is the location for every ``df``: the mean where it
    exists (df > 1) and the median and mode always (torch's is NaN for df <= 1), so that
    :meth:`VAE.reconstruct` and :meth:`VAE.sample` return finite values."""

    @property
    def mean(self) -> torch.Tensor:
        return self.loc


class StudentT(_LocationScale):
    r"""A factorized Student-t with fixed degrees of freedom for real-valued data with outliers:

        log p(x | loc, s) = sum_d [ log Gamma((nu + 1)/2) - log Gamma(nu/2) - log(sqrt(nu pi) s_d)
                                    - (nu + 1)/2 log(1 + ((x_d - loc_d) / s_d)^2 / nu) ]

    in nats per data point, summed over ``x_shape``, with ``nu = df``. Heavier tails than
    :class:`Normal` and :class:`Laplace`: an outlying dimension costs only about ``(nu + 1) log|x - loc|``,
    so a few corrupted values do not dominate the reconstruction term. ``df = 1`` is the Cauchy; as
    ``df`` grows it approaches the Normal. With a fixed scale (``num_params = 1``, ``params`` are the
    locations) or with ``learned_scale=True`` (``num_params = 2``: location and raw scale,
    ``s = softplus(raw) + min_scale``). ``mean`` is the location (see :class:`StudentTDistribution`).
    Cf. Takahashi, Iwata, Yamanaka, Yamada & Yagi 2018, "Student-t variational autoencoder for robust
    density estimation", IJCAI, whose decoder also outputs the degrees of freedom; here they are fixed.

    Args:
        x_shape: the shape of one data point.
        df: the degrees of freedom ``nu`` (default 4.0; positive and finite).
        scale: the fixed scale ``s`` (default 1.0, in the units of x; the standard deviation is
            ``s sqrt(nu / (nu - 2))`` for nu > 2); ignored with a learned scale.
        learned_scale: let the decoder output a per-dimension scale (default False).
        min_scale: the scale's floor when learned (default 1e-3).

    Shapes: ``params (*batch, num_params, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises: ``ValueError`` (:class:`~pyrovae.errors.ConfigError`) for a ``df`` that is not positive and
    finite, or a non-positive ``scale`` or ``min_scale``; ``check_support`` raises ``ValueError`` when x
    is not floating point or not finite.
    """

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28), df: float = 4.0, scale: float = 1.0,
                 learned_scale: bool = False, min_scale: float = 1e-3):
        super().__init__(x_shape, scale=scale, learned_scale=learned_scale, min_scale=min_scale)
        if isinstance(df, bool) or not isinstance(df, numbers.Real) or not (math.isfinite(df) and df > 0):
            raise ConfigError(f"df (the degrees of freedom) must be positive and finite, got {df!r}; 4 is a "
                              "common choice, 1 gives the Cauchy, and large values approach 'normal'")
        self.df = float(df)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, df={self.df:g}"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, num_params, *x_shape)`` -> distribution with event shape ``x_shape``."""
        loc, scale = self.loc_scale(params)
        return StudentTDistribution(self.df, loc, scale, validate_args=False).to_event(len(self.x_shape))

    def _spread(self, x, mean):
        """The scale whose Student-t has the data's standard deviation (df > 2), or, where the variance
        is infinite (df <= 2), the mean absolute deviation from the median."""
        if self.df > 2 and x.shape[0] > 1:
            return x.std(0) * math.sqrt((self.df - 2) / self.df)
        return (x - x.median(0).values).abs().mean(0)


# --- the open unit interval -----------------------------------------------------------------------------


class Beta(nn.Module):
    r"""A factorized Beta for data in the open interval (0, 1), ``num_params = 2``.

        log p(x | a, b) = sum_d [ (a_d - 1) log x_d + (b_d - 1) log(1 - x_d) - log B(a_d, b_d) ]

    in nats per data point, summed over ``x_shape``, with concentrations ``a = softplus(raw_a) +
    min_concentration`` and ``b = softplus(raw_b) + min_concentration`` from the two decoder outputs
    (in that order); the mean is ``a / (a + b)``. The density is infinite or zero at exactly 0 and 1,
    so such values are refused: clamp them into (0, 1) or use :class:`ContinuousBernoulli`, which
    includes the end points.

    Args:
        x_shape: the shape of one data point.
        min_concentration: the concentrations' floor (default 1e-3).

    Shapes: ``params (*batch, 2, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises (``check_support``): ``ValueError`` when x is not floating point, not finite, or not
    strictly inside (0, 1).
    """

    support = "open_unit_interval"
    num_params = 2

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28), min_concentration: float = 1e-3):
        super().__init__()
        if not min_concentration > 0:
            raise ConfigError(f"min_concentration must be positive, got {min_concentration!r}")
        self.x_shape, self.min_concentration = tuple(x_shape), float(min_concentration)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, 2, *x_shape)`` raw concentrations -> distribution with event shape ``x_shape``."""
        raw_a, raw_b = _split(params, self.x_shape)
        return dist.Beta(softplus(raw_a) + self.min_concentration, softplus(raw_b) + self.min_concentration,
                         validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is finite floats strictly between 0 and 1."""
        _check_finite(x)
        if (x <= 0).any() or (x >= 1).any():
            zeros, ones = (x == 0).sum().item(), (x == 1).sum().item()
            outside = ((x < 0) | (x > 1)).sum().item()
            raise DataError(f"the Beta likelihood needs x strictly inside (0, 1), got {zeros} exact 0s, "
                            f"{ones} exact 1s and {outside} values outside [0, 1] (values in {_range(x)}); "
                            "clamp the data, e.g. x.clamp(1e-3, 1 - 1e-3), or use 'continuous_bernoulli', "
                            "which includes 0 and 1")


# --- 8-bit pixels ---------------------------------------------------------------------------------------

#: Both 8-bit likelihoods take grey levels as floats k / 255, k in {0, 1, ..., 255}.
LEVELS = 256


def _pixel_index(x: torch.Tensor) -> torch.Tensor:
    """Grey levels ``x = k / 255`` -> the integers ``k`` (as floats), rounding off float error."""
    return torch.round(x * (LEVELS - 1))


def _check_pixels(x: torch.Tensor, name: str) -> None:
    _check_finite(x)
    k = x * (LEVELS - 1)
    off_grid = (k - k.round()).abs() > 1e-3
    if (x < 0).any() or (x > 1).any() or off_grid.any():
        hint = ""
        if x.min() >= 0 and x.max() <= LEVELS - 1 and not (x != x.round()).any():
            hint = " (these look like raw 0..255 pixel values: divide them by 255)"
        raise DataError(f"the {name} likelihood needs 8-bit grey levels scaled to [0, 1], the values k / 255 for "
                        f"k = 0, 1, ..., 255 (uint8_images.float() / 255, what binarization='none' gives); got "
                        f"values in {_range(x)}, {off_grid.sum().item()} of them not multiples of 1/255{hint}")


class _LevelValued(dist.Categorical):
    """A categorical whose category k stands for the value ``k * step`` (float, like the data): ``log_prob``
    takes those values (rounded to the nearest level), ``sample`` and ``enumerate_support`` return them (torch's
    take and return int64), and ``mean`` and ``variance`` are those of the value (torch's are NaN).
    ``logits (*batch, K)``."""

    def _step(self) -> float:
        return 1.0

    def _levels(self) -> torch.Tensor:
        k = self.logits.shape[-1]
        return torch.arange(k, dtype=self.logits.dtype, device=self.logits.device) * self._step()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(torch.round(value / self._step()))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return super().sample(sample_shape).to(self.logits.dtype) * self._step()

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return torch.distributions.Categorical.enumerate_support(self, expand).to(self.logits.dtype) * self._step()

    @property
    def mean(self) -> torch.Tensor:
        return (self.probs * self._levels()).sum(-1)

    @property
    def variance(self) -> torch.Tensor:
        return (self.probs * self._levels() ** 2).sum(-1) - self.mean ** 2


class PixelCategorical(_LevelValued):
    """A categorical over the grey levels {0, 1/255, ..., 1}: ``log_prob`` takes and ``sample`` returns
    the levels ``k / 255`` as floats (like the data), and ``mean`` and ``variance`` are those of the
    grey level (``torch``'s are NaN). ``logits (*batch, 256)``."""

    def _step(self) -> float:
        return 1.0 / (self.logits.shape[-1] - 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.Categorical.log_prob(self, _pixel_index(value))


class Categorical256(nn.Module):
    r"""A 256-way categorical per pixel for 8-bit images, ``num_params = 256`` (van den Oord,
    Kalchbrenner & Kavukcuoglu 2016, "Pixel recurrent neural networks", ICML).

        log p(x | l) = sum_d log softmax(l_d)[k_d],    x_d = k_d / 255,  k_d in {0, 1, ..., 255},

    in nats per image, summed over ``x_shape``: the log probability of the integer image, so
    ``-log p / (D log 2)`` is the bits/dim number of the literature. ``params (*batch, 256, *x_shape)``
    are unnormalized log-probabilities of the 256 levels (the level axis is where ``num_params``
    sits). The most flexible per-pixel model, with no notion that level 100 is near 101; its decoder
    output layer is 256 times larger than a Bernoulli's.

    Data: grey levels scaled to [0, 1], the floats ``k / 255`` (``uint8_images.float() / 255``, what
    ``binarization="none"`` gives), so the encoder sees the same inputs as with the other image
    likelihoods; ``k`` is recovered by rounding ``255 x``. ``sample`` returns such levels and ``mean``
    is the expected level, both in [0, 1].

    Args:
        x_shape: the shape of one image.

    Raises (``check_support``): ``ValueError`` when x is not floating point, not finite, outside [0, 1],
    or not multiples of 1/255 (within 1e-3 / 255; raw 0..255 values get a hint to divide by 255).
    """

    support = "grey_levels"
    num_params = LEVELS

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, 256, *x_shape)`` logits -> distribution with event shape ``x_shape``."""
        logits = params.movedim(-1 - len(self.x_shape), -1)
        return PixelCategorical(logits=logits, validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is finite floats k / 255, k in {0, ..., 255}."""
        _check_pixels(x, "Categorical256")


class DiscretizedLogisticDistribution(dist.TorchDistribution):
    r"""A logistic distribution discretized into 256 bins of width 1/256 on [0, 1], over the grey
    levels ``x = k / 255``, k in {0, ..., 255}.

    Level k owns the bin ``[k/256, (k+1)/256)`` of a logistic(loc, scale) variable y; the first and
    last bins extend to -inf and +inf, so the 256 probabilities sum to 1:

        P(k) = F((k+1)/256) - F(k/256),   with F(0/256) := 0 and F(256/256) := 1,
        F(y) = sigmoid((y - loc) / scale).

    ``log P(k)`` is computed as ``logsigmoid(a) + logsigmoid(-b) + log(1 - exp(b - a))`` for the bin's
    standardized ends ``b < a``, which equals ``log(sigmoid(a) - sigmoid(b))`` without the cancellation
    of the difference, at any loc and scale (PixelCNN++ switches to a density approximation instead).
    ``log_prob`` takes and ``sample`` returns the levels ``k / 255``; ``mean`` is the expected level.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval  # more exactly, the 256 levels k / 255 in it

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticDistribution, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale = self.loc.expand(batch_shape), self.scale.expand(batch_shape)
        super(DiscretizedLogisticDistribution, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        k = _pixel_index(value)
        width = 1.0 / LEVELS
        upper = (k * width + width - self.loc) / self.scale      # a
        lower = (k * width - self.loc) / self.scale              # b
        first, last = k <= 0, k >= LEVELS - 1
        zero = torch.zeros((), dtype=upper.dtype, device=upper.device)
        log_width = torch.log(-torch.expm1(-width / self.scale))  # log(1 - exp(b - a)), the same for every bin
        return (torch.where(last, zero, logsigmoid(upper)) + torch.where(first, zero, logsigmoid(-lower))
                + torch.where(first | last, zero, log_width))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-7, 1 - 1e-7)
            y = self.loc.expand(shape) + self.scale.expand(shape) * (torch.log(u) - torch.log1p(-u))
            return torch.floor(y * LEVELS).clamp(0, LEVELS - 1) / (LEVELS - 1)

    @property
    def mean(self) -> torch.Tensor:
        """E[k] / 255 with E[k] = sum_{j=1}^{255} P(k >= j) = sum_j sigmoid((loc - j/256) / scale)."""
        edges = torch.arange(1, LEVELS, dtype=self.loc.dtype, device=self.loc.device) / LEVELS
        tail = torch.sigmoid((self.loc.unsqueeze(-1) - edges) / self.scale.unsqueeze(-1))
        return tail.sum(-1) / (LEVELS - 1)


class DiscretizedLogistic(nn.Module):
    r"""A discretized logistic per pixel for 8-bit images, ``num_params = 2`` (Salimans, Karpathy, Chen
    & Kingma 2017, "PixelCNN++", ICLR, with a single mixture component; the bins of width 1/256 on
    [0, 1] of Kingma, Salimans et al. 2016, "Improved variational inference with inverse autoregressive
    flow", NeurIPS).

    Grey level ``x = k / 255`` is the bin of width 1/256 on [0, 1] into which a logistic variable falls
    (the edge bins absorb the tails; see :class:`DiscretizedLogisticDistribution`):

        log p(x | loc, s) = sum_d log[ F((k_d + 1)/256) - F(k_d/256) ],  F(y) = sigmoid((y - loc_d)/s_d),

    in nats per image, summed over ``x_shape``: the log probability of the integer image, so
    ``-log p / (D log 2)`` is bits/dim. The two decoder outputs are ``loc`` (unconstrained, on the
    [0, 1] scale of the bins: bin k is centred at (k + 1/2)/256) and the log-scale, clamped below at
    ``min_log_scale`` as PixelCNN++ does (``s >= exp(-7)``, about a quarter of a bin). Neighbouring
    levels get similar probabilities, unlike :class:`Categorical256`.

    Data: grey levels scaled to [0, 1], the floats ``k / 255`` (``uint8_images.float() / 255``, what
    ``binarization="none"`` gives); ``k`` is recovered by rounding ``255 x``. ``sample`` returns such
    levels and ``mean`` is the expected level, both in [0, 1].

    Args:
        x_shape: the shape of one image.
        min_log_scale: the floor of the log-scale (default -7).

    Shapes: ``params (*batch, 2, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises (``check_support``): ``ValueError`` when x is not floating point, not finite, outside [0, 1],
    or not multiples of 1/255 (raw 0..255 values get a hint to divide by 255).
    """

    support = "grey_levels"
    num_params = 2

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28), min_log_scale: float = -7.0):
        super().__init__()
        self.x_shape, self.min_log_scale = tuple(x_shape), float(min_log_scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, 2, *x_shape)`` (loc, log-scale) -> distribution with event shape ``x_shape``."""
        loc, log_scale = _split(params, self.x_shape)
        scale = torch.exp(log_scale.clamp(min=self.min_log_scale))
        return DiscretizedLogisticDistribution(loc, scale, validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is finite floats k / 255, k in {0, ..., 255}."""
        _check_pixels(x, "DiscretizedLogistic")

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Set the location bias to the data mean (grey levels in [0, 1]), leaving the scale's."""
        _set_bias(output_layer, self.num_params, 0, x.float().mean(0))


# --- counts ---------------------------------------------------------------------------------------------


class Poisson(nn.Module):
    r"""A factorized Poisson for counts, ``num_params = 1``.

        log p(x | r) = sum_d [ x_d log r_d - r_d - log(x_d!) ],   r = softplus(raw) + min_rate,

    in nats per data point, summed over ``x_shape``. The rate link is softplus rather than the
    canonical exp: it agrees with exp for rates well below 1, grows linearly instead of exponentially
    (no overflow, bounded gradients), and the floor keeps ``log r`` finite when softplus underflows.

    Args:
        x_shape: the shape of one data point.
        min_rate: the rate's floor (default 1e-8).

    Shapes: ``params (*batch, 1, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises (``check_support``): ``ValueError`` when x is not floating point, not finite, or not
    non-negative whole numbers.
    """

    support = "counts"
    num_params = 1

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28), min_rate: float = 1e-8):
        super().__init__()
        self.x_shape, self.min_rate = tuple(x_shape), float(min_rate)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, 1, *x_shape)`` raw rates -> distribution with event shape ``x_shape``."""
        rate = softplus(params.squeeze(-1 - len(self.x_shape))) + self.min_rate
        return dist.Poisson(rate, validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is finite, non-negative whole-number floats."""
        _check_counts(x, "Poisson")

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Set the rate bias so that the rate is the data mean (per dimension where the layer allows)."""
        mean = x.float().mean(0).clamp(min=2 * self.min_rate + 1e-6)
        _set_bias(output_layer, self.num_params, 0, inverse_softplus(mean - self.min_rate))


class NegativeBinomial(nn.Module):
    r"""A factorized negative binomial for over-dispersed counts, ``num_params = 2``, parameterized by
    its mean ``mu`` and inverse dispersion ``theta`` as in scVI (Lopez, Regier, Cole, Jordan & Yosef
    2018, "Deep generative modeling for single-cell transcriptomics", Nature Methods):

        log p(x | mu, theta) = sum_d [ log Gamma(x_d + theta_d) - log Gamma(theta_d) - log(x_d!)
                                       + theta_d log(theta_d / (theta_d + mu_d))
                                       + x_d log(mu_d / (theta_d + mu_d)) ],

    in nats per data point, summed over ``x_shape``; mean ``mu``, variance ``mu + mu^2 / theta`` (the
    Poisson as theta -> infinity). The two decoder outputs give ``mu = softplus(raw_mu) + min_mean`` and
    ``theta = softplus(raw_theta) + min_theta``. Unlike scVI, theta is decoded per data point rather
    than a free parameter per dimension, and there is no library-size factor (put it in the decoder if
    you need one). Built as ``pyro.distributions.NegativeBinomial(total_count=theta,
    logits=log mu - log theta)``.

    Args:
        x_shape: the shape of one data point.
        min_mean: the mean's floor (default 1e-8).
        min_theta: the inverse dispersion's floor (default 1e-4).

    Shapes: ``params (*batch, 2, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises (``check_support``): ``ValueError`` when x is not floating point, not finite, or not
    non-negative whole numbers.
    """

    support = "counts"
    num_params = 2

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28), min_mean: float = 1e-8, min_theta: float = 1e-4):
        super().__init__()
        self.x_shape, self.min_mean, self.min_theta = tuple(x_shape), float(min_mean), float(min_theta)

    def mean_theta(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(mu, theta, rest)`` from ``params (*batch, num_params, *x_shape)``: each ``(*batch, *x_shape)``,
        ``rest`` the remaining decoder outputs."""
        raw_mu, raw_theta, *rest = _split(params, self.x_shape)
        return softplus(raw_mu) + self.min_mean, softplus(raw_theta) + self.min_theta, rest

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, 2, *x_shape)`` -> distribution with event shape ``x_shape``."""
        mu, theta, _ = self.mean_theta(params)
        return dist.NegativeBinomial(total_count=theta, logits=torch.log(mu) - torch.log(theta),
                                     validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is finite, non-negative whole-number floats."""
        _check_counts(x, type(self).__name__)

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Set the mean's bias so that ``mu`` is the data mean (per dimension where the layer allows)."""
        mean = x.float().mean(0).clamp(min=2 * self.min_mean + 1e-6)
        _set_bias(output_layer, self.num_params, 0, inverse_softplus(mean - self.min_mean))


class ZeroInflatedNegativeBinomialDistribution(dist.ZeroInflatedNegativeBinomial):
    """``pyro.distributions.ZeroInflatedNegativeBinomial`` built from ``gate_logits``, whose ``expand``
    still works after ``mean`` or ``gate`` was read (Pyro 1.9's passes both the lazily computed ``gate``
    and ``gate_logits`` to the constructor, which refuses that)."""

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = type(self)(self.base_dist.total_count.expand(batch_shape),
                         logits=self.base_dist.logits.expand(batch_shape),
                         gate_logits=self.gate_logits.expand(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    r"""A factorized zero-inflated negative binomial (ZINB) for counts with excess zeros,
    ``num_params = 3`` (scVI, Lopez et al. 2018): with probability ``pi`` a structural zero, otherwise
    a :class:`NegativeBinomial` draw with mean ``mu`` and inverse dispersion ``theta``:

        p(0) = pi + (1 - pi) NB(0 | mu, theta),   p(x) = (1 - pi) NB(x | mu, theta) for x > 0,

    log-likelihoods in nats per data point, summed over ``x_shape``. The three decoder outputs are
    ``raw_mu``, ``raw_theta`` (as in :class:`NegativeBinomial`) and the gate's logit,
    ``pi = sigmoid(gate_logit)``. Built as ``pyro.distributions.ZeroInflatedNegativeBinomial`` with
    ``gate_logits`` (whose log-probability of a zero is computed in log space), through
    :class:`ZeroInflatedNegativeBinomialDistribution` for a working ``expand``. The mean is ``(1 - pi) mu``.

    Args:
        x_shape: the shape of one data point.
        min_mean: the NB mean's floor (default 1e-8).
        min_theta: the inverse dispersion's floor (default 1e-4).

    Shapes: ``params (*batch, 3, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises (``check_support``): ``ValueError`` when x is not floating point, not finite, or not
    non-negative whole numbers.
    """

    num_params = 3

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, 3, *x_shape)`` -> distribution with event shape ``x_shape``."""
        mu, theta, (gate_logit,) = self.mean_theta(params)
        return ZeroInflatedNegativeBinomialDistribution(
            total_count=theta, logits=torch.log(mu) - torch.log(theta), gate_logits=gate_logit,
            validate_args=False).to_event(len(self.x_shape))

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Start from few structural zeros, ``pi = sigmoid(-2) = 0.12`` (the gate learns more where the
        data need them), and set the NB mean's bias so that the mean ``(1 - pi) mu`` is the data mean."""
        gate_logit = -2.0
        _set_bias(output_layer, self.num_params, 2, torch.full(x.shape[1:], gate_logit))
        mean = (x.float().mean(0) / torch.sigmoid(torch.tensor(-gate_logit))).clamp(min=2 * self.min_mean + 1e-6)
        _set_bias(output_layer, self.num_params, 0, inverse_softplus(mean - self.min_mean))


class Binomial(nn.Module):
    r"""A factorized binomial for counts out of a known number of trials, ``num_params = 1``: the
    standard binomial likelihood, for integer data 0..``total_count`` such as scikit-learn's 8x8 digits
    (pixel values 0..16, ``total_count=16``):

        log p(x | l) = sum_d [ log C(n, x_d) + x_d log p_d + (n - x_d) log(1 - p_d) ],
        p_d = sigmoid(l_d),  n = total_count,

    in nats per data point, summed over ``x_shape``; mean ``n p``. The decoder output is the logit
    ``l`` per dimension; built as ``pyro.distributions.Binomial(total_count, logits=l)``, whose
    log-probability is computed from the logits (finite for any ``l``). With ``total_count=1`` it is
    :class:`Bernoulli`.

    Args:
        x_shape: the shape of one data point.
        total_count: the number of trials ``n``, the largest value x can take (default 16; a whole
            number of at least 1).

    Shapes: ``params (*batch, 1, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises: ``ValueError`` (:class:`~pyrovae.errors.ConfigError`) for a ``total_count`` that is not a
    whole number >= 1; ``check_support`` raises ``ValueError`` when x is not floating point, not finite,
    not whole numbers, or outside [0, total_count] (the message counts the offending values and says
    what to change).
    """

    support = "bounded_counts"
    num_params = 1

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28), total_count: int = 16):
        super().__init__()
        self.x_shape, self.total_count = tuple(x_shape), _whole_number(total_count, "total_count", 1)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, total_count={self.total_count}"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, 1, *x_shape)`` logits -> distribution with event shape ``x_shape``."""
        return dist.Binomial(self.total_count, logits=params.squeeze(-1 - len(self.x_shape)),
                             validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is finite whole-number floats in [0, total_count]."""
        _check_bounded_integers(x, "Binomial", self.total_count, "total_count", 0,
                                "pass raw counts out of total_count trials (not normalized or log-transformed "
                                "data), or use 'poisson' or 'negative_binomial' for counts with no upper bound")

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Set the logit bias so that the mean ``n p`` is the data mean (per dimension where the layer
        allows), with ``p`` clamped to [1e-3, 1 - 1e-3]."""
        p = (x.float().mean(0) / self.total_count).clamp(1e-3, 1 - 1e-3)
        _set_bias(output_layer, self.num_params, 0, torch.log(p) - torch.log1p(-p))


# --- integer levels -------------------------------------------------------------------------------------


class LevelCategorical(_LevelValued):
    """A categorical over the integer levels {0, 1, ..., K - 1} held as floats, like the data:
    ``log_prob`` takes float levels (rounded, then looked up) and ``sample`` and ``enumerate_support``
    return them (torch's take and return int64), and ``mean`` and ``variance`` are those of the level,
    ``sum_k k p_k`` (torch's are NaN). ``logits (*batch, K)``."""


class Categorical(nn.Module):
    r"""A ``num_levels``-way categorical per data dimension for integer levels 0..K-1, ``num_params =
    num_levels``: e.g. scikit-learn's 8x8 digits, whose pixels take the 17 values 0..16
    (``num_levels=17``); :class:`Categorical256` is the same for 8-bit grey levels scaled to [0, 1].

        log p(x | l) = sum_d log softmax(l_d)[x_d],   x_d in {0, 1, ..., K - 1},  K = num_levels,

    in nats per data point, summed over ``x_shape`` (the standard categorical likelihood).
    ``params (*batch, K, *x_shape)`` are unnormalized log-probabilities of the K levels (the level axis
    is where ``num_params`` sits). The most flexible per-dimension model for few levels, with no notion
    that level 3 is near 4 (:class:`Binomial` has one, with a single output per dimension).

    Data: the levels as floats (``x.float()``), rounded before the look-up. ``sample`` returns such
    levels and ``mean`` is the expected level ``sum_k k p_k`` (see :class:`LevelCategorical`).

    Args:
        x_shape: the shape of one data point.
        num_levels: the number of levels K (default 17; a whole number of at least 2).

    Shapes: ``params (*batch, num_levels, *x_shape)``; the distribution has batch shape ``*batch``.

    Raises: ``ValueError`` (:class:`~pyrovae.errors.ConfigError`) for a ``num_levels`` that is not a
    whole number >= 2; ``check_support`` raises ``ValueError`` when x is not floating point, not finite,
    not whole numbers, or outside [0, num_levels - 1] (the message counts the offending values and says
    what to change).
    """

    support = "levels"

    def __init__(self, x_shape: tuple[int, ...] = (1, 28, 28), num_levels: int = 17):
        super().__init__()
        self.x_shape, self.num_levels = tuple(x_shape), _whole_number(num_levels, "num_levels", 2)
        self.num_params = self.num_levels

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, num_levels={self.num_levels}"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, num_levels, *x_shape)`` logits -> distribution with event shape ``x_shape``."""
        logits = params.movedim(-1 - len(self.x_shape), -1)
        return LevelCategorical(logits=logits, validate_args=False).to_event(len(self.x_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is finite whole-number floats in [0, num_levels - 1]."""
        _check_bounded_integers(x, "Categorical", self.num_levels - 1, "num_levels", 1,
                                "pass the integer levels themselves (not scaled or normalized data), or use "
                                "'normal' or 'continuous_bernoulli' for continuous values")

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Set the logit biases to the log of the data's level frequencies, smoothed by adding 1/2 to
        each count: per dimension where the layer has a bias per output, per channel (the frequencies
        pooled over each channel) where it has one per output channel, else pooled over everything."""
        bias = output_layer.bias
        if bias is None:
            return
        k, n = self.num_levels, math.prod(self.x_shape)
        counts = nn.functional.one_hot(x.round().long().clamp(0, k - 1), k).to(bias.dtype).sum(0)
        per_row = bias.numel() // k
        if per_row == n:
            counts = counts.reshape(n, k)
        elif self.x_shape and per_row == self.x_shape[0]:
            counts = counts.reshape(per_row, -1, k).sum(1)
        else:
            counts = counts.reshape(1, -1, k).sum(1)
        log_freq = torch.log((counts + 0.5) / (counts.sum(-1, keepdim=True) + 0.5 * k))
        for level in range(k):
            _set_bias(output_layer, k, level, log_freq[:, level])


class MaskedDistribution(dist.TorchDistribution):
    r"""A likelihood's distribution over x that counts the observed entries only.

    For ``d`` = ``base.to_event(len(x_shape))`` (the contract of every likelihood plug-in) and a mask
    ``m`` (1 observed, 0 missing, broadcast against the value),

    .. math::

        \log p_m(x) = \sum_{i} m_i \log p(x_i),

    the log-density of the observed entries alone, because the entries are independent given the
    decoder's output: a missing entry's value changes neither the log-density nor its gradients (its term
    is replaced by 0 before the sum, so a NaN or infinite term there does not leak through). ``sample``,
    ``rsample``, ``mean`` and ``variance`` are those of ``d`` (draws of every entry, e.g. for imputation).

    Args:
        d: an ``Independent`` distribution whose base has event shape ``()``, batch shape ``(*batch,
            *x_shape)``.
        mask: ``(..., *x_shape)`` of 0 and 1 (float or bool), broadcastable to ``d``'s batch and event shape.

    References:
        Mattei & Frellsen (2019), *MIWAE: Deep Generative Modelling and Imputation of Incomplete Data
        Sets*, ICML (the masked likelihood of their Eq. 4).
    """

    arg_constraints: dict = {}

    def __init__(self, d: dist.Independent, mask: torch.Tensor):
        self.d, self.mask = d, mask
        super().__init__(d.batch_shape, d.event_shape, validate_args=False)

    @property
    def support(self):
        return self.d.support

    @property
    def has_rsample(self) -> bool:
        return self.d.has_rsample

    def expand(self, batch_shape, _instance=None):
        return MaskedDistribution(self.d.expand(batch_shape), self.mask)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        per_entry = self.d.base_dist.log_prob(value)
        per_entry = per_entry.masked_fill(self.mask == 0, 0.0)
        return per_entry.flatten(per_entry.dim() - len(self.event_shape)).sum(-1) if self.event_shape else per_entry

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.d.sample(sample_shape)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.d.rsample(sample_shape)

    @property
    def mean(self) -> torch.Tensor:
        return self.d.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.d.variance


def masked(d: dist.TorchDistribution, mask: torch.Tensor | None) -> dist.TorchDistribution:
    """``d`` (a likelihood plug-in's distribution, event shape ``x_shape``) with only the entries where
    ``mask`` is 1 counted in its log-density (:class:`MaskedDistribution`); ``d`` itself when ``mask`` is
    None.

    Raises:
        UnsupportedError: ``d`` is not built as ``base.to_event(len(x_shape))`` with a base of event shape
            ``()`` (its entries are not separate factors, so one cannot be left out).
    """
    if mask is None:
        return d
    if not (isinstance(d, torch.distributions.Independent) and d.base_dist.event_shape == torch.Size()):
        raise UnsupportedError(f"a likelihood whose distribution is {type(d).__name__} with base event shape "
                               f"{tuple(getattr(getattr(d, 'base_dist', d), 'event_shape', ()))} cannot leave out "
                               "missing entries: missing values need a likelihood built as base.to_event(len(x_shape))"
                               " over independent entries")
    return MaskedDistribution(d, mask)


LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "continuous_bernoulli": ContinuousBernoulli,
    "normal": Normal,
    "laplace": Laplace,
    "student_t": StudentT,
    "beta": Beta,
    "categorical_256": Categorical256,
    "discretized_logistic": DiscretizedLogistic,
    "categorical": Categorical,
    "poisson": Poisson,
    "negative_binomial": NegativeBinomial,
    "zero_inflated_negative_binomial": ZeroInflatedNegativeBinomial,
    "binomial": Binomial,
}
