r"""A mixed-type likelihood for tables whose columns are of different kinds (after Nazabal, Olmos, Ghahramani &
Valera 2020, *Handling incomplete heterogeneous data using VAEs* (HI-VAE), Pattern Recognition 107).

For a data point x with D columns in table order and a schema (:mod:`pyrovae.data.schema`) that gives each
column a type,

.. math::

    \log p(x \mid z) = \sum_{d=1}^{D} \log p_{t(d)}(x_d \mid \eta_d(z)),

one factor per column, each the standard likelihood of its type (in nats; log densities for real and positive
columns, log probabilities for the discrete ones, so the sum mixes the two as HI-VAE's does):

============ ======================================= ======================================== ==========
type         distribution (``distribution``)         decoder outputs per column                data x_d
============ ======================================= ======================================== ==========
real         Normal (``normal``) or Student-t, df 4  location, raw scale (softplus + 1e-3)      reals
             (``student_t``)
positive     log-Normal (``lognormal``) or Gamma     log-location and raw scale, or raw        x > 0
             (``gamma``)                             concentration and raw rate
count        Poisson (``poisson``) or negative       raw mean (softplus), [raw inverse          0, 1, 2, ...
             binomial (``negative_binomial``)        dispersion]
binary       Bernoulli                               logit                                      0, 1
categorical  Categorical over K classes              K logits                                   codes 0..K-1
ordinal      cumulative logit (McCullagh 1980):      the location eta; the K-1 ordered          codes 0..K-1
             P(x <= k) = sigmoid(theta_k - eta)      thresholds are parameters of the module
============ ======================================= ======================================== ==========

The decoder outputs ``num_params = max over columns`` parameters per column (``(*batch, num_params, D)``); a
column reads its first few and ignores the rest (the likelihood plug-in contract has one ``num_params`` for all
dimensions; padding costs a wider last layer, nothing else).

``forward(params)`` returns ``MixedEntries(...).to_event(1)``: its base has event shape ``()`` and batch shape
``(*batch, D)``, so :func:`pyrovae.components.likelihoods.masked` leaves missing entries out per cell, whatever
their type. ``sample`` returns floats in the data's layout (codes for categoricals). ``mean`` is the mean of real,
positive and count columns, the probability of 1 for binary columns and **the most probable code** for
categorical and ordinal columns (the expected code is meaningless for categories). For imputation,
:meth:`MixedEntries.weighted_point` gives the importance-weighted point estimate per type: the weighted mean
(real, positive), the rounded weighted mean (count), and the most probable value under the weighted mixture of
the per-draw probabilities (binary, categorical, ordinal).

The encoder reads the inputs :meth:`MixedLikelihood.encoder_inputs` makes (``input_shape``): real columns as
they are (standardized by the data's transform), positive and count columns as ``log1p(x)``, binary as 0/1,
each categorical as K one-hot entries and each ordinal as ``code / (K - 1)``; with a mask, a missing cell gives
zeros and its mask entries (repeated K times for a categorical) are 0.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import one_hot, softplus

from ..columns import CODED, normalize_schema
from ..errors import ConfigError, DataError
from ..torchtools import inverse_softplus
from .likelihoods import _check_finite, set_output_bias

STUDENT_T_DF = 4.0


def _params_per_column(column: dict) -> int:
    kind, name = column["type"], column["distribution"]
    if kind == "categorical":
        return column["num_classes"]
    if kind in ("binary", "ordinal") or (kind == "count" and name == "poisson"):
        return 1
    return 2


def _groups(schema: list[dict]) -> list[dict]:
    """Consecutive columns of one type, distribution and number of classes, as ``{"type", "distribution",
    "num_classes", "start", "stop", "names"}``."""
    groups = []
    for j, column in enumerate(schema):
        key = (column["type"], column["distribution"], column.get("num_classes"))
        if groups and groups[-1]["key"] == key:
            groups[-1]["stop"] = j + 1
            groups[-1]["names"].append(column.get("name") or f"column {j}")
        else:
            groups.append({"key": key, "type": key[0], "distribution": key[1], "num_classes": key[2], "start": j,
                           "stop": j + 1, "names": [column.get("name") or f"column {j}"]})
    return groups


class MixedEntries(dist.TorchDistribution):
    """The per-cell distribution of a mixed-type row: batch shape ``(*batch, D)``, event shape ``()``.

    Args:
        groups: the likelihood's column groups (see :func:`_groups`).
        parts: one torch distribution per group, batch shape ``(*batch, n_g)`` (n_g its columns).
        dtype: the floating-point dtype of ``sample`` (codes of categoricals as floats, like the data).
    """

    arg_constraints: dict = {}
    support = dist.constraints.real

    def __init__(self, groups: list[dict], parts: list[torch.distributions.Distribution],
                 dtype: torch.dtype = torch.float32):
        self.groups, self.parts, self.dtype = groups, parts, dtype
        batch = parts[0].batch_shape[:-1]
        super().__init__(batch + (groups[-1]["stop"],), torch.Size(), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        parts = [p.expand(batch_shape[:-1] + p.batch_shape[-1:]) for p in self.parts]
        return MixedEntries(self.groups, parts, self.dtype)

    def _value(self, group: dict, value: torch.Tensor) -> torch.Tensor:
        """The group's cells of ``value`` made valid for its distribution (a zero-filled missing cell of a
        positive column would otherwise give -inf and NaN gradients even when masked out)."""
        v = value[..., group["start"]:group["stop"]]
        kind = group["type"]
        if kind in CODED:
            return v.round().clamp(0, group["num_classes"] - 1).long()
        if kind == "binary":
            return v.clamp(0, 1)
        if kind == "count":
            return v.round().clamp(min=0)
        if kind == "positive":
            return torch.where(v > 0, v, torch.ones_like(v))
        return v

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Per-cell log probabilities (densities for real and positive cells) ``(*batch, D)``."""
        return torch.cat([p.log_prob(self._value(g, value)) for g, p in zip(self.groups, self.parts)], -1)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([p.sample(sample_shape).to(self.dtype) for p in self.parts], -1)

    @staticmethod
    def _mean(group: dict, part) -> torch.Tensor:
        kind = group["type"]
        if kind in CODED:
            return part.probs.argmax(-1).to(part.probs.dtype)
        if kind == "binary":
            return part.probs
        if kind == "real":
            return part.loc
        return part.mean

    @property
    def mean(self) -> torch.Tensor:
        """Real, positive, count: the mean; binary: P(x = 1); categorical, ordinal: the most probable code."""
        return torch.cat([self._mean(g, p) for g, p in zip(self.groups, self.parts)], -1)

    @property
    def variance(self) -> torch.Tensor:
        out = []
        for g, p in zip(self.groups, self.parts):
            if g["type"] in CODED:
                levels = torch.arange(g["num_classes"], dtype=p.probs.dtype, device=p.probs.device)
                m = (p.probs * levels).sum(-1)
                out.append((p.probs * levels ** 2).sum(-1) - m ** 2)
            elif g["type"] == "real" and g["distribution"] == "student_t":
                out.append(p.scale ** 2 * STUDENT_T_DF / (STUDENT_T_DF - 2))
            else:
                out.append(p.variance)
        return torch.cat(out, -1)

    def weighted_point(self, w: torch.Tensor) -> torch.Tensor:
        """The imputation point estimate from draws z_k with self-normalized weights ``w (K, *rest)`` over the
        first batch dimension: ``(*rest, D)`` (see the module docstring)."""
        wx = w.reshape(*w.shape, 1)
        out = []
        for g, p in zip(self.groups, self.parts):
            kind = g["type"]
            if kind in CODED:
                probs = (w.reshape(*w.shape, 1, 1) * p.probs).sum(0)
                out.append(probs.argmax(-1).to(w.dtype))
            elif kind == "binary":
                out.append(((wx * p.probs).sum(0) > 0.5).to(w.dtype))
            else:
                m = (wx * self._mean(g, p)).sum(0)
                out.append(m.round() if kind == "count" else m)
        return torch.cat(out, -1)


class MixedLikelihood(nn.Module):
    """p(x|z) for a table of mixed column types: one factor per column by its type (see the module docstring).

    Args:
        x_shape: ``(D,)``, the number of columns.
        schema: the column entries in table order (:mod:`pyrovae.data.schema`: ``type``, optional
            ``distribution``, and ``categories`` or ``num_classes`` for categorical and ordinal columns);
            required. ``pyrovae train --likelihood mixed`` fills it from the data's schema
            (``--data-option schema=auto`` or ``=FILE.json``).

    Shapes: ``params (*batch, num_params, D)``; the distribution has batch shape ``*batch``, event shape ``(D,)``.

    Raises:
        ConfigError: no schema; a schema of another length than D, or an ``x_shape`` that is not ``(D,)``; a
            categorical without its number of classes. ``check_support`` raises ``DataError`` naming the first
            column whose values its type does not take.
    """

    support = "mixed"

    def __init__(self, x_shape: tuple[int, ...] = (1,), schema: list | None = None):
        super().__init__()
        self.x_shape = tuple(x_shape)
        if schema is None:
            raise ConfigError("the mixed likelihood needs a schema (column types): read the table with "
                              "--data-option schema=auto (or schema=FILE.json), or pass likelihood_options="
                              "{'schema': [...]}")
        self.schema = normalize_schema(schema)
        if len(self.x_shape) != 1 or self.x_shape[0] != len(self.schema):
            raise ConfigError(f"the mixed likelihood's schema has {len(self.schema)} columns; the data's shape is "
                              f"{self.x_shape}: they must match, x_shape = ({len(self.schema)},)")
        for column in self.schema:
            if column["type"] in CODED and not column.get("num_classes"):
                raise ConfigError(f"schema column {column.get('name')!r}: a {column['type']} column needs its "
                                  "categories (or num_classes)")
        self.groups = _groups(self.schema)
        self.num_params = max(_params_per_column(c) for c in self.schema)
        # the ordered thresholds of ordinal groups: theta_1 = t, theta_k = theta_{k-1} + softplus(delta_k)
        self.thresholds = nn.ParameterDict({
            str(i): nn.Parameter(torch.cat([torch.full((g["stop"] - g["start"], 1), -1.0),
                                            torch.full((g["stop"] - g["start"], g["num_classes"] - 2),
                                                       float(inverse_softplus(torch.tensor(2.0 / g["num_classes"]))))],
                                           -1))
            for i, g in enumerate(self.groups) if g["type"] == "ordinal"})
        widths = [g["num_classes"] if g["type"] == "categorical" else 1 for g in self.groups
                  for _ in range(g["start"], g["stop"])]
        self.input_shape = (sum(widths),)

    def extra_repr(self) -> str:
        return ", ".join(f"{g['type']}/{g['distribution']} x{g['stop'] - g['start']}" for g in self.groups)

    def _ordinal_probs(self, i: int, eta: torch.Tensor) -> torch.Tensor:
        raw = self.thresholds[str(i)]
        theta = torch.cat([raw[:, :1], softplus(raw[:, 1:]) + 1e-4], -1).cumsum(-1)  # (n_g, K-1), increasing
        cdf = torch.sigmoid(theta - eta.unsqueeze(-1))
        ones = torch.ones_like(cdf[..., :1])
        probs = torch.cat([cdf, ones], -1) - torch.cat([torch.zeros_like(ones), cdf], -1)
        return probs.clamp(min=1e-8)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (*batch, num_params, D)`` -> distribution with event shape ``(D,)``."""
        parts = []
        for i, g in enumerate(self.groups):
            p = params[..., g["start"]:g["stop"]]
            kind, name = g["type"], g["distribution"]
            if kind == "real":
                loc, scale = p[..., 0, :], softplus(p[..., 1, :]) + 1e-3
                parts.append(dist.Normal(loc, scale, validate_args=False) if name == "normal" else
                             dist.StudentT(STUDENT_T_DF, loc, scale, validate_args=False))
            elif kind == "positive":
                a, b = p[..., 0, :], p[..., 1, :]
                parts.append(dist.LogNormal(a, softplus(b) + 1e-3, validate_args=False) if name == "lognormal" else
                             dist.Gamma(softplus(a) + 1e-3, softplus(b) + 1e-3, validate_args=False))
            elif kind == "count":
                mu = softplus(p[..., 0, :]) + 1e-6
                if name == "poisson":
                    parts.append(dist.Poisson(mu, validate_args=False))
                else:
                    theta = softplus(p[..., 1, :]) + 1e-4
                    parts.append(dist.NegativeBinomial(total_count=theta, logits=torch.log(mu) - torch.log(theta),
                                                       validate_args=False))
            elif kind == "binary":
                parts.append(dist.Bernoulli(logits=p[..., 0, :], validate_args=False))
            elif kind == "categorical":
                parts.append(dist.Categorical(logits=p[..., :g["num_classes"], :].movedim(-2, -1),
                                              validate_args=False))
            else:  # ordinal
                parts.append(dist.Categorical(probs=self._ordinal_probs(i, p[..., 0, :]), validate_args=False))
        return MixedEntries(self.groups, parts, params.dtype).to_event(1)

    def encoder_inputs(self, x: torch.Tensor, mask: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (*batch, D)`` (and its ``mask``) -> the encoder's inputs ``(*batch, F)`` with ``F =
        input_shape[0]`` (and the mask, one entry per input): see the module docstring."""
        feats, masks = [], []
        for g in self.groups:
            v = x[..., g["start"]:g["stop"]]
            m = None if mask is None else mask[..., g["start"]:g["stop"]].to(x.dtype)
            kind = g["type"]
            if kind == "categorical":
                k = g["num_classes"]
                f = one_hot(v.round().clamp(0, k - 1).long(), k).to(x.dtype)
                if m is not None:
                    m = m.unsqueeze(-1).expand(*m.shape, k)
                    f = f * m
                    m = m.flatten(-2)
                f = f.flatten(-2)
            elif kind == "ordinal":
                f = v / (g["num_classes"] - 1)
            elif kind in ("positive", "count"):
                f = torch.log1p(v.clamp(min=0))
            else:
                f = v
            if m is not None and kind != "categorical":
                f = f * m
            feats.append(f)
            masks.append(m)
        return torch.cat(feats, -1), None if mask is None else torch.cat(masks, -1)

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``DataError`` naming the first column whose values its type does not take. A 0 is accepted in
        a positive column (a zero-filled missing cell; the table's own positive check is
        :func:`pyrovae.data.schema.encode_frame`'s)."""
        _check_finite(x)
        for g in self.groups:
            v = x[..., g["start"]:g["stop"]]
            kind = g["type"]
            if kind == "binary":
                bad = (v != 0) & (v != 1)
                need = "0 or 1"
            elif kind == "count":
                bad = (v < 0) | (v != v.round())
                need = "whole numbers >= 0"
            elif kind in CODED:
                bad = (v < 0) | (v > g["num_classes"] - 1) | (v != v.round())
                need = f"codes 0..{g['num_classes'] - 1}"
            elif kind == "positive":
                bad = v < 0
                need = "positive values"
            else:
                continue
            if bad.any():
                j = int(bad.reshape(-1, v.shape[-1]).any(0).nonzero()[0])
                raise DataError(f"the mixed likelihood's column {g['names'][j]!r} ({kind}) needs {need}, got "
                                f"{v[..., j][bad[..., j]].flatten()[0].item():g}")

    @torch.no_grad()
    def init_bias(self, output_layer: nn.Module, x: torch.Tensor) -> None:
        """Start each column at its data's marginal: real location 0 and scale 1 (standardized columns), the
        log-Normal at the mean and spread of log x, count and binary means, categorical log frequencies (each
        smoothed by 1/2 per class). Missing cells (zero-filled) count as zeros here: a rough start only."""
        x = x.float().reshape(-1, self.x_shape[0])
        values = torch.zeros(self.num_params, self.x_shape[0])
        for g in self.groups:
            sl = slice(g["start"], g["stop"])
            v, kind = x[:, sl], g["type"]
            if kind == "real":
                values[0, sl] = v.mean(0)
                values[1, sl] = inverse_softplus(v.std(0).clamp(min=0.05) - 1e-3) if len(v) > 1 else 0.0
            elif kind == "positive" and g["distribution"] == "lognormal":
                logs = torch.log(v.clamp(min=1e-6))
                values[0, sl] = logs.mean(0)
                values[1, sl] = inverse_softplus(logs.std(0).clamp(min=0.05) - 1e-3) if len(v) > 1 else 0.0
            elif kind == "count":
                values[0, sl] = inverse_softplus(v.mean(0).clamp(min=1e-3))
            elif kind == "binary":
                p = v.mean(0).clamp(1e-3, 1 - 1e-3)
                values[0, sl] = torch.log(p) - torch.log1p(-p)
            elif kind == "categorical":
                k = g["num_classes"]
                counts = one_hot(v.round().clamp(0, k - 1).long(), k).sum(0).float()  # (n_g, K)
                values[:k, sl] = torch.log((counts + 0.5) / (counts.sum(-1, keepdim=True) + 0.5 * k)).T
        for index in range(self.num_params):
            set_output_bias(output_layer, self.num_params, index, values[index])


__all__ = ["MixedEntries", "MixedLikelihood"]
