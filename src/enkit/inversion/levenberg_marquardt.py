"""Levenberg–Marquardt step rule for ensemble Kalman inversion (Iglesias 2016).

The regularising LM-EKI of Iglesias (2016) updates each member with the
regularisation parameter αₙ = 1/Δtₙ,

    uᵢ ← uᵢ + C^{uG} (C^{GG} + αₙ Γ)⁻¹ (yᵢ − G(uᵢ)),

and chooses αₙ by the discrepancy-type condition of Hanke's (1997)
regularising Levenberg–Marquardt scheme, ρ ∈ (0, 1):

    αₙ ‖Γ^{1/2} (C^{GG} + αₙ Γ)⁻¹ (y − Ḡ)‖ ≥ ρ ‖Γ^{-1/2} (y − Ḡ)‖.        (LM)

The left side is the norm of the whitened residual that the ensemble-
linearised step predicts, so (LM) asks the step to remove at most the fraction
1 − ρ of the misfit. Iglesias doubles a trial α until (LM) holds; this rule
returns the α at which (LM) holds with equality (Hanke's choice), the
largest step that satisfies it, found by bisection in log α.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_ndim, is_concrete
from enkit._pytree import register_dataclass
from enkit.covariance import Covariance, as_covariance
from enkit.ensemble import scaled_anomalies

__all__ = ["LevenbergMarquardt", "lm_alpha", "lm_residual_ratio"]

# Width (in ln α) of the bracket below ρ s²_max/(1 − ρ): e⁻⁴⁰ ≈ 4e-18, below
# the relative round-off of any eigenvalue of the whitened C^{GG}.
_LOG_RANGE = 40.0


def _whitened(G: Array, y: Array, noise: Covariance):
    """Singular values s and misfit coordinates of the whitened problem.

    With Ỹ = Γ^{-1/2}-whitened output anomalies over √(N − 1) (rows) and
    r̃ = Γ^{-1/2}(y − Ḡ): Ỹ = P diag(s) Vᵀ, c = Vᵀ r̃, r⊥ = ‖r̃ − V c‖.
    """
    gbar, Y = scaled_anomalies(G)
    Yw = noise.whiten(Y)  # (N, d): C̃ = Ỹᵀ Ỹ = Γ^{-1/2} C^{GG} Γ^{-1/2}
    r = noise.whiten(y - gbar)
    _, s, Vt = jnp.linalg.svd(Yw, full_matrices=False)
    c = Vt @ r
    perp = r - Vt.T @ c
    return s, c, jnp.sum(perp * perp), jnp.sum(r * r)


def _ratio2(log_alpha, s, c, perp2, r2):
    """(α‖(I + C̃/α)⁻¹ r̃‖ / ‖r̃‖)² as a function of ln α (stable for any α)."""
    tiny = jnp.finfo(s.dtype).tiny
    w = jax.nn.sigmoid(log_alpha - jnp.log(jnp.maximum(s * s, tiny)))  # α/(s² + α)
    w = jnp.where(s > 0, w, 1.0)
    return (perp2 + jnp.sum((w * c) ** 2)) / r2


def _prepare(G, y, noise):
    check_ndim("G", G, 2, "(N, d): one row per member")
    G = jnp.asarray(G)
    if not jnp.issubdtype(G.dtype, jnp.floating):
        G = G.astype(jnp.result_type(float))
    d = G.shape[1]
    y = jnp.asarray(y, G.dtype)
    if y.shape != (d,):
        raise ValueError(f"y must have shape (d,) = ({d},) to match G, got shape {y.shape}")
    noise = as_covariance(noise, d, name="noise").astype(G.dtype)
    return G, y, noise


def _check_rho(rho) -> None:
    if is_concrete(rho):
        v = np.asarray(rho, dtype=np.float64)
        if v.ndim != 0 or not (0.0 < float(v) < 1.0):
            raise ValueError(f"rho must be a scalar in (0, 1), got {v.tolist()}")


def lm_residual_ratio(G: ArrayLike, y: ArrayLike, noise, alpha: ArrayLike) -> Array:
    """The ratio of the two sides of the LM condition at α:

        α ‖Γ^{1/2} (C^{GG} + αΓ)⁻¹ (y − Ḡ)‖ / ‖Γ^{-1/2} (y − Ḡ)‖  ∈ [0, 1],

    C^{GG} the sample covariance (N − 1) of the rows of G. It increases with
    α from the fraction of the misfit outside the span of the output
    anomalies (α → 0) to 1 (α → ∞). On a linear G with deterministic EKI it
    is exactly the factor by which one step with Δt = 1/α shrinks the misfit
    of the mean. G: (N, d); y: (d,); noise: Γ; alpha: α > 0. Returns a scalar.

    Reference: Iglesias (2016), Inverse Problems 32, 025002.
    """
    G, y, noise = _prepare(G, y, noise)
    s, c, perp2, r2 = _whitened(G, y, noise)
    a = jnp.asarray(alpha, G.dtype)
    return jnp.sqrt(_ratio2(jnp.log(a), s, c, perp2, r2))


def lm_alpha(G: ArrayLike, y: ArrayLike, noise, rho: ArrayLike = 0.7, *,
             n_bisection: int = 60) -> Array:
    """The LM regularisation parameter: the α at which

        α ‖Γ^{1/2} (C^{GG} + αΓ)⁻¹ (y − Ḡ)‖ = ρ ‖Γ^{-1/2} (y − Ḡ)‖.

    Computed in the whitened, ensemble-space form: with the SVD
    Ỹ = P diag(s) Vᵀ of the whitened output anomalies, c = Vᵀ r̃ and r⊥ the
    part of r̃ = Γ^{-1/2}(y − Ḡ) outside the span of the rows of Ỹ,

        ratio(α)² = (‖r⊥‖² + Σₖ (α/(sₖ² + α))² cₖ²) / ‖r̃‖²,

    increasing in α, reaches ρ by α_hi = ρ s²_max/(1 − ρ). ``n_bisection``
    bisection steps in ln α on [ln α_hi − 40, ln α_hi] (a fixed count, so it
    jits and vmaps) return the upper end of the final bracket: the ratio is
    ≥ ρ there and within the final bracket width (about 40/2⁶⁰ ≈ 3e-17 in
    ln α at 60 steps, i.e. α to round-off) of the root. Cost: one SVD of an (N, d) matrix, O(N² d), plus the whitening.

    Edge cases: if even α → 0 keeps the ratio ≥ ρ (more than ρ of the misfit
    lies outside the span of the ensemble outputs, which no step can
    reduce), the bottom of the bracket is returned; if the misfit or the
    output spread is zero, α = inf (Δt = 0, nothing to fit or no direction);
    a misfit at round-off level, ‖r̃‖ ≤ 64 ε (‖Γ^{-1/2}y‖² + ‖Γ^{-1/2}Ḡ‖²)^{1/2},
    counts as zero.

    G: (N, d); y: (d,); noise: Γ (operator or array); rho: ρ ∈ (0, 1).
    Returns α, a scalar of G's dtype.

    References: Iglesias (2016), "A regularizing iterative ensemble Kalman
    method for PDE-constrained inverse problems", Inverse Problems 32,
    025002; Hanke (1997), Inverse Problems 13, 79–95.
    """
    _check_rho(rho)
    if isinstance(n_bisection, bool) or not isinstance(n_bisection, (int, np.integer)) \
            or n_bisection < 1:
        raise ValueError(f"n_bisection must be a positive integer, got {n_bisection!r}")
    G, y, noise = _prepare(G, y, noise)
    return _lm_alpha(G, y, noise, jnp.asarray(rho, G.dtype), int(n_bisection))


@functools.partial(jax.jit, static_argnums=4)
def _lm_alpha(G, y, noise, rho, n_bisection):
    s, c, perp2, r2 = _whitened(G, y, noise)
    tiny = jnp.finfo(G.dtype).tiny
    smax2 = jnp.max(s) ** 2
    wy, wg = noise.whiten(y), noise.whiten(jnp.mean(G, axis=0))
    floor = (64 * jnp.finfo(G.dtype).eps) ** 2 * (jnp.sum(wy * wy) + jnp.sum(wg * wg))
    degenerate = (r2 <= jnp.maximum(floor, tiny)) | (smax2 <= tiny)
    r2 = jnp.where(degenerate, 1.0, r2)
    hi = jnp.log(jnp.maximum(smax2, tiny)) + jnp.log(rho) - jnp.log1p(-rho)
    lo = hi - _LOG_RANGE
    rho2 = rho * rho

    def body(_, bracket):
        a, b = bracket
        m = 0.5 * (a + b)
        above = _ratio2(m, s, c, perp2, r2) >= rho2
        return jnp.where(above, a, m), jnp.where(above, m, b)

    below_at_lo = _ratio2(lo, s, c, perp2, r2) < rho2
    _, b = jax.lax.fori_loop(0, n_bisection, body, (lo, hi))
    log_alpha = jnp.where(below_at_lo, b, lo)
    return jnp.where(degenerate, jnp.inf, jnp.exp(log_alpha))


@dataclasses.dataclass(frozen=True)
class LevenbergMarquardt:
    """Step rule Δt = 1/α of the regularising Levenberg–Marquardt EKI
    (Iglesias 2016), for any process told with ``dt``:

        α ‖Γ^{1/2} (C^{GG} + αΓ)⁻¹ (y − Ḡ)‖ = ρ ‖Γ^{-1/2} (y − Ḡ)‖,
        Δt = min(1/α, max_dt)

    (``lm_alpha``; C^{GG} the sample covariance, N − 1, of the outputs of
    the current members). The predicted whitened misfit after the step is ρ
    times the current one: on a linear G the deterministic EKI mean's
    misfit shrinks by exactly ρ per step. Capping at ``max_dt`` raises α,
    which keeps the condition as the inequality of Iglesias's algorithm.
    Pair it with the discrepancy principle with τ > 1/ρ
    (``discrepancy_principle(misfit, d, tau=...)``), as Iglesias does:

        dt = rule.step_size(state.time, G, y, noise)
        state, info = process.tell(state, G, y, noise, dt=dt)

    rho: ρ ∈ (0, 1), the fraction of the misfit left after a step (leaf);
    max_dt: cap on Δt, > 0 (leaf; default inf); n_bisection: number of
    bisection steps in ln α (static). Meant for the ensemble processes (G
    holds members' outputs); for UKI (Δt < 1) or GNKI (step ≤ 1) set
    ``max_dt`` accordingly.

    References: Iglesias (2016), Inverse Problems 32, 025002; Hanke (1997),
    "A regularizing Levenberg–Marquardt scheme, with applications to
    inverse groundwater filtration problems", Inverse Problems 13, 79–95.
    """

    rho: ArrayLike = 0.7
    max_dt: ArrayLike = float("inf")
    n_bisection: int = 60

    def __post_init__(self):
        if isinstance(self.rho, (float, int, np.ndarray, np.number, jax.Array)):
            _check_rho(self.rho)
        if isinstance(self.max_dt, (float, int, np.ndarray, np.number, jax.Array)) \
                and is_concrete(self.max_dt):
            v = np.asarray(self.max_dt, dtype=np.float64)
            if v.ndim != 0 or not float(v) > 0:
                raise ValueError(f"max_dt must be a scalar > 0, got {v.tolist()}")
        n = self.n_bisection
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n_bisection must be a positive integer, got {n!r}")

    def alpha(self, G: ArrayLike, y: ArrayLike, noise) -> Array:
        """α of the LM condition for the (N, d) outputs G (``lm_alpha``)."""
        G, y, noise = _prepare(G, y, noise)
        return _lm_alpha(G, y, noise, jnp.asarray(self.rho, G.dtype), int(self.n_bisection))

    def step_size(self, time, G, y, noise) -> Array:
        """Δt = min(1/α, max_dt) from the (N, d) outputs G of the current
        members (time is unused: the rule depends on the data only)."""
        del time
        a = self.alpha(G, y, noise)
        dt = jnp.where(jnp.isinf(a), 0.0, 1.0 / a)
        return jnp.minimum(dt, jnp.asarray(self.max_dt, dt.dtype))


register_dataclass(LevenbergMarquardt, data_fields=["rho", "max_dt"],
                                 meta_fields=["n_bisection"])
