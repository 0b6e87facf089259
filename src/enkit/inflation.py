"""Inflation: pure functions of ensembles, and steps the cycling driver runs.

Pure functions take and return (N, n) ensembles; factors are array leaves,
so a sweep over factors is a ``vmap``.

A driver step is an ``InflationStep``: a frozen dataclass registered as a
pytree (hyperparameters as leaves) with three pure methods, in the spirit of
optax's ``init``/``update`` pairs:

- ``init(E0) -> state``: the carried state (``()`` when stateless);
- ``before_analysis(state, key, Ef, y, h, R, mask) -> (Ef, state)``: acts on
  the forecast ensemble before the analysis (e.g. multiplicative inflation
  of the background, additive noise, adaptive estimation from innovations);
- ``after_analysis(state, key, Ef, Ea) -> (Ea, state)``: acts on the analysis
  (e.g. RTPS/RTPP, which need the forecast too).

``key`` is a PRNG key for the step (stochastic steps draw from it); ``mask``
is None when every observation is present, else an (m,) boolean array, False
where an observation is absent (its entries of y and h are then
placeholders and must have no effect). ``chain(*steps)`` composes steps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "InflationStep",
    "MultiplicativeAnalysis",
    "NoInflation",
    "chain",
    "multiplicative",
]


def multiplicative(E: Array, factor: ArrayLike) -> Array:
    """Multiplicative inflation of the anomalies: ``x̄ + λ (Eᵢ − x̄)``.

    The sample covariance is multiplied by λ². E: (N, n); factor: λ ≥ 1 in
    usual use (scalar, or (n,) for a per-variable factor).
    Reference: Anderson & Anderson (1999), MWR 127.
    """
    xbar = jnp.mean(E, axis=0)
    return xbar + jnp.asarray(factor, E.dtype) * (E - xbar)


class InflationStep:
    """Base of driver steps: every method defaults to doing nothing."""

    def init(self, E0: Array):
        return ()

    def before_analysis(self, state, key, Ef, y, h, R, mask):
        return Ef, state

    def after_analysis(self, state, key, Ef, Ea):
        return Ea, state


@dataclasses.dataclass(frozen=True)
class NoInflation(InflationStep):
    """The step that changes nothing (the driver's default)."""


jax.tree_util.register_dataclass(NoInflation, data_fields=[], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class MultiplicativeAnalysis(InflationStep):
    """Multiplicative inflation of the analysis anomalies by ``factor``.

    ADAO's "MultiplicativeOnAnalysisAnomalies"; DAPPER's ``infl``.
    """

    factor: ArrayLike = 1.0

    def after_analysis(self, state, key, Ef, Ea):
        return multiplicative(Ea, self.factor), state


jax.tree_util.register_dataclass(
    MultiplicativeAnalysis, data_fields=["factor"], meta_fields=[]
)


@dataclasses.dataclass(frozen=True)
class _Chain(InflationStep):
    steps: tuple

    def init(self, E0):
        return tuple(s.init(E0) for s in self.steps)

    def before_analysis(self, state, key, Ef, y, h, R, mask):
        new = []
        for i, (s, st) in enumerate(zip(self.steps, state)):
            Ef, st = s.before_analysis(st, _sub(key, i), Ef, y, h, R, mask)
            new.append(st)
        return Ef, tuple(new)

    def after_analysis(self, state, key, Ef, Ea):
        new = []
        for i, (s, st) in enumerate(zip(self.steps, state)):
            Ea, st = s.after_analysis(st, _sub(key, i), Ef, Ea)
            new.append(st)
        return Ea, tuple(new)


jax.tree_util.register_dataclass(_Chain, data_fields=["steps"], meta_fields=[])


def _sub(key, i):
    return None if key is None else jax.random.fold_in(key, i)


def chain(*steps: InflationStep) -> InflationStep:
    """Run several inflation steps in order; each gets its own sub-key."""
    for s in steps:
        if not isinstance(s, InflationStep):
            raise TypeError(f"chain takes InflationStep objects, got {type(s).__name__}")
    return _Chain(tuple(steps))
