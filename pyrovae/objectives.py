"""Objectives: Pyro's ELBO estimators, by name."""

from __future__ import annotations

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

ELBOS = {"Trace_ELBO": Trace_ELBO, "TraceMeanField_ELBO": TraceMeanField_ELBO}


def make_elbo(name: str = "TraceMeanField_ELBO", num_particles: int = 1) -> ELBO:
    """A Pyro ELBO by name, vectorized over ``num_particles``.

    ``Trace_ELBO`` estimates the whole ELBO by Monte Carlo; ``TraceMeanField_ELBO`` computes the KL
    term in closed form where Pyro knows it (Normal guide against Normal prior) and falls back to
    Monte Carlo elsewhere. Both give the ELBO in nats (negated, as a loss).

    Raises:
        ValueError: unknown name.
    """
    if name not in ELBOS:
        raise ValueError(f"elbo={name!r} is unknown; choose one of {', '.join(ELBOS)}")
    return ELBOS[name](num_particles=num_particles, vectorize_particles=num_particles > 1,
                       max_plate_nesting=1)
