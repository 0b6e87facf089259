"""ADAO's LinearityTest: residues that say whether an operator is linear."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_ndim
from enkit.filters._common import as_key

__all__ = ["LinearityResult", "linearity_test", "RESIDUE_FORMULAS"]

RESIDUE_FORMULAS = ("CenteredDL", "Taylor", "NominalTaylor", "NominalTaylorRMS")


class LinearityResult(NamedTuple):
    """alphas: (J,) increments 1, 0.1, ..., 10^min_exponent; residues: (J,)
    R(α) of the formula; direction: (n,) the direction dX₀; norm_x, norm_fx:
    ‖x‖ and ‖F(x)‖; formula: its name."""

    alphas: np.ndarray
    residues: np.ndarray
    direction: np.ndarray
    norm_x: float
    norm_fx: float
    formula: str


def linearity_test(
    F: Callable,
    x: ArrayLike,
    *,
    formula: str = "CenteredDL",
    min_exponent: int = -8,
    direction: ArrayLike | None = None,
    amplitude: float = 1.0,
    key: jax.Array | int | None = None,
) -> LinearityResult:
    """Residues R(α) of ADAO's LinearityTest for F around x, α = 10⁰ … 10^min_exponent.

    With dX = α dX₀ and ‖·‖ the Euclidean norm:

    - "CenteredDL": ``R = ‖F(x+dX) + F(x−dX) − 2F(x)‖ / ‖F(x)‖`` (0 for a
      linear or affine F; ∝ α² for a smooth nonlinear one);
    - "Taylor": ``R = ‖F(x+dX) − F(x) − α F'(x) dX₀‖ / ‖F(x)‖``, with the
      exact tangent (``jax.jvp``; F must be JAX-traceable) where ADAO uses
      finite differences (0 for affine F; ∝ α² otherwise);
    - "NominalTaylor": ``R = max(‖F(x+dX) − αF(dX₀)‖, ‖F(x−dX) + αF(dX₀)‖) / ‖F(x)‖``
      (1 for a linear F, within a few percent where linearity holds);
    - "NominalTaylorRMS": the same with ``RMS(F(x), ·)`` in place of the
      norms (0 for a linear F).

    Note that ADAO's NominalTaylor forms apply F to dX = α dX₀ itself
    (``F(dX)``, not ``F(dX₀)``); this function does the same, so for a
    linear F ``F(x+dX) − αF(dX)`` is F(x) only when α = 1. The residues are
    ADAO's, number for number.

    F: operator on one vector, ``(n,) -> (m,)``; x: (n,) point;
    min_exponent: the smallest exponent (−20 … 0, ADAO's
    EpsilonMinimumExponent); direction: (n,) dX₀ (ADAO's InitialDirection),
    or None to draw it as ADAO does, component i from N(0, |xᵢ|) (from
    N(0, |mean x|), or N(0, 1) when the mean is 0, where |xᵢ| ≤ 1e-8), with
    ``key``; amplitude: the factor on dX₀ (AmplitudeOfInitialDirection).
    """
    if formula not in RESIDUE_FORMULAS:
        raise ValueError(f"formula {formula!r} is not one of: {', '.join(RESIDUE_FORMULAS)}")
    if isinstance(min_exponent, bool) or not isinstance(min_exponent, (int, np.integer)) \
            or not -20 <= min_exponent <= 0:
        raise ValueError(f"min_exponent must be an integer in [-20, 0], got {min_exponent!r}")
    if amplitude == 0:
        raise ValueError("amplitude must not be zero")
    x = jnp.asarray(x, dtype=jnp.result_type(float))
    check_ndim("x", x, 1, "(n,)")
    check_finite("x", x)
    if direction is None:
        key = as_key(key, "linearity_test (to draw the direction)")
        mean = jnp.mean(x)
        mean = jnp.where(jnp.abs(mean) < 2 * jnp.finfo(x.dtype).eps, 1.0, mean)
        scale = jnp.where(jnp.abs(x) > 1e-8, jnp.abs(x), jnp.abs(mean))
        dX0 = scale * jax.random.normal(key, x.shape, x.dtype)
    else:
        dX0 = jnp.asarray(direction, x.dtype)
        if dX0.shape != x.shape:
            raise ValueError(f"direction must have shape {x.shape}, got {dX0.shape}")
    dX0 = amplitude * dX0

    def f(v):
        return np.ravel(np.asarray(F(v), dtype=np.float64))

    fx = f(x)
    norm_fx = max(float(np.linalg.norm(fx)), float(np.finfo(np.float64).eps))
    if formula == "Taylor":
        tangent = np.ravel(np.asarray(jax.jvp(F, (x,), (dX0,))[1], dtype=np.float64))
    alphas = 10.0 ** np.arange(0, min_exponent - 1, -1)
    residues = []
    for a in alphas:
        dX = a * dX0
        if formula == "CenteredDL":
            r = np.linalg.norm(f(x + dX) + f(x - dX) - 2 * fx) / norm_fx
        elif formula == "Taylor":
            r = np.linalg.norm(f(x + dX) - fx - a * tangent) / norm_fx
        else:
            fdx = f(dX)
            plus, minus = f(x + dX) - a * fdx, f(x - dX) + a * fdx
            if formula == "NominalTaylor":
                r = max(np.linalg.norm(plus), np.linalg.norm(minus)) / norm_fx
            else:
                r = max(_rms(fx, plus), _rms(fx, minus)) / norm_fx
        residues.append(float(r))
    return LinearityResult(alphas, np.asarray(residues), np.asarray(dX0),
                           float(np.linalg.norm(np.asarray(x))), norm_fx, formula)


def _rms(a, b):
    return float(np.sqrt(np.mean((b - a) ** 2)))
