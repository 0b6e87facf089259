"""Momentum (Nesterov-type) acceleration of ensemble Kalman processes.

A wrapper keeps the previous ensemble u_{n−1} beside the wrapped state and
asks for the forward map at the extrapolated members

    vᵢ = uᵢⁿ + λₙ (uᵢⁿ − uᵢⁿ⁻¹),

then lets the wrapped process update *from* v with the outputs G(vᵢ):
u^{n+1} = Φ(v, G(v)), Φ the process's step (Kovachki & Stuart 2019). The
extrapolation acts on the parameter ensemble of the state, so any process
that carries one (EKI, ETKI, TEKI, GNKI, ESMDA, and wrappers of them, e.g.
``ConstrainedProcess``, which then maps v to the constrained space) works.

- ``NesterovAccelerated``: λₙ from Nesterov's θ recurrence (θ₀ = 1),

      θₙ₊₁ = (−θₙ² + √(θₙ⁴ + 4θₙ²)) / 2,   λₙ = θₙ₊₁ (1/θₙ − 1),

  so λ₀ = 0 and λₙ → 1 like 1 − 3/n (Su, Boyd & Candès 2016);
- ``ConstantMomentum``: a constant λ ∈ [0, 1) (λ = 0 is the plain process).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import is_concrete
from enkit._pytree import register_dataclass
from enkit.inversion.process_inflation import (
    _tell,
    check_ensemble_process,
    replace_ensemble,
    state_ensemble,
)

__all__ = ["ConstantMomentum", "MomentumState", "NesterovAccelerated"]


class MomentumState(NamedTuple):
    """State of a momentum wrapper.

    inner: the wrapped process's state (its ensemble is uⁿ); previous:
    (N, p) uⁿ⁻¹ (uⁿ itself at the start, so the first extrapolation is
    zero); theta: θₙ of the Nesterov recurrence (1 at the start; carried,
    unused, by ``ConstantMomentum``).
    """

    inner: Any
    previous: Array
    theta: Array


class _Momentum:
    """init/ask/tell shared by the momentum wrappers; subclasses give
    ``_lambda(theta) -> (λₙ, θₙ₊₁)``."""

    def init(self, key, ensemble) -> MomentumState:
        """The wrapped ``init(key, ensemble)``, with no momentum yet."""
        inner = self.process.init(key, ensemble)
        E = state_ensemble(inner)
        return MomentumState(inner, E, jnp.ones((), E.dtype))

    def extrapolated(self, state: MomentumState) -> Array:
        """v = uⁿ + λₙ (uⁿ − uⁿ⁻¹): (N, p), in the process's own space."""
        u = state_ensemble(state.inner)
        lam, _ = self._lambda(state.theta)
        return u + lam * (u - state.previous)

    def ask(self, state: MomentumState) -> Array:
        """The wrapped ``ask`` at the extrapolated ensemble v."""
        return self.process.ask(replace_ensemble(state.inner, self.extrapolated(state)))

    def tell(self, state: MomentumState, G, y, noise, *, dt=None):
        """One step of the wrapped process from v, with G: the outputs of
        ``ask(state)``. dt: Δt, or None for the process's default.
        Returns ``(state, info)`` with the wrapped process's info (its
        misfit is that of G(v))."""
        u = state_ensemble(state.inner)
        _, theta = self._lambda(state.theta)
        at_v = replace_ensemble(state.inner, self.extrapolated(state))
        inner, info = _tell(self.process, at_v, G, y, noise, dt)
        return MomentumState(inner, u, theta), info


@dataclasses.dataclass(frozen=True)
class NesterovAccelerated(_Momentum):
    """Nesterov-accelerated ensemble Kalman process.

    ``ask`` returns vᵢ = uᵢⁿ + λₙ (uᵢⁿ − uᵢⁿ⁻¹) and ``tell`` applies the
    wrapped process's update to v with the outputs G(vᵢ):

        uᵢⁿ⁺¹ = vᵢ + C^{vG} (C^{GG} + Δt⁻¹Γ)⁻¹ (y + ηᵢ − G(vᵢ))   (for EKI),

    with λₙ = θₙ₊₁ (1/θₙ − 1), θ₀ = 1, θₙ₊₁ = (−θₙ² + √(θₙ⁴ + 4θₙ²))/2
    (λ₀ = 0, λₙ ≈ 1 − 3/n). process: any process carrying a parameter
    ensemble (a pytree leaf).

    References: Kovachki & Stuart (2019), "Ensemble Kalman inversion: a
    derivative-free technique for machine learning tasks", Inverse Problems
    35, 095005 (momentum in EKI); Su, Boyd & Candès (2016), JMLR 17(153)
    (the θ recurrence); Vernon, Bach & Dunbar (2025), arXiv:2501.08779
    (this accelerated EKI).
    """

    process: Any

    def __post_init__(self):
        check_ensemble_process(self.process, "NesterovAccelerated")

    @staticmethod
    def _lambda(theta):
        t2 = theta * theta
        nxt = 0.5 * (-t2 + jnp.sqrt(t2 * t2 + 4.0 * t2))
        return nxt * (1.0 / theta - 1.0), nxt


@dataclasses.dataclass(frozen=True)
class ConstantMomentum(_Momentum):
    """Ensemble Kalman process with constant momentum λ:
    vᵢ = uᵢⁿ + λ (uᵢⁿ − uᵢⁿ⁻¹), updated from v as in ``NesterovAccelerated``.

    process: any process carrying a parameter ensemble; momentum: λ ∈ [0, 1)
    (a leaf; λ = 0 gives exactly the wrapped process).

    Reference: Kovachki & Stuart (2019), Inverse Problems 35, 095005.
    """

    process: Any
    momentum: ArrayLike = 0.9

    def __post_init__(self):
        check_ensemble_process(self.process, "ConstantMomentum")
        m = self.momentum
        if isinstance(m, (float, int, np.ndarray, np.number, jax.Array)) and is_concrete(m):
            v = np.asarray(m, dtype=np.float64)
            if v.ndim != 0 or not 0.0 <= float(v) < 1.0:
                raise ValueError(f"momentum must be a scalar in [0, 1), got {v.tolist()}")

    def _lambda(self, theta):
        return jnp.asarray(self.momentum, theta.dtype), theta


register_dataclass(NesterovAccelerated, data_fields=["process"], meta_fields=[])
register_dataclass(ConstantMomentum, data_fields=["process", "momentum"],
                                 meta_fields=[])
