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

In ``assimilate``, ``after_analysis`` receives as ``Ef`` the ensemble the
analysis started from, i.e. the forecast after the before-analysis steps
(with ``over_window``, the forecast itself).

The family, each a pure function and (but one) a driver step:

- multiplicative: ``multiplicative``; ``MultiplicativeForecast`` (before),
  ``MultiplicativeAnalysis`` (after) — Anderson & Anderson (1999);
- additive Gaussian: ``additive``; ``AdditiveForecast``, ``AdditiveAnalysis``
  — Mitchell & Houtekamer (2000);
- relaxation to prior spread: ``rtps``; ``RTPS`` — Whitaker & Hamill (2012);
- relaxation to prior perturbations: ``rtpp``; ``RTPP`` — Zhang et al. (2004);
- adaptive multiplicative from innovations: ``adaptive_inflation``;
  ``AdaptiveMultiplicative`` — Miyoshi (2011);
- Ledoit–Wolf shrinkage of the sample covariance: ``ledoit_wolf``; no step
  (an ensemble cannot carry the shrunk covariance; see its docstring).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_bool, check_number, user_value
from enkit._pytree import register_dataclass
from enkit.covariance import Covariance, Dense, Diagonal, Scalar, as_covariance
from enkit.filters._common import as_key, observe

__all__ = [
    "RTPP",
    "RTPS",
    "AdaptiveMultiplicative",
    "AdditiveAnalysis",
    "AdditiveForecast",
    "InflationEstimate",
    "InflationStep",
    "MultiplicativeAnalysis",
    "MultiplicativeForecast",
    "NoInflation",
    "adaptive_inflation",
    "additive",
    "chain",
    "ledoit_wolf",
    "multiplicative",
    "rtpp",
    "rtps",
]


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------


def multiplicative(E: Array, factor: ArrayLike) -> Array:
    """Multiplicative inflation of the anomalies: ``x̄ + λ (Eᵢ − x̄)``.

    The sample covariance is multiplied by λ² and the mean is unchanged.
    E: (N, n); factor: λ ≥ 1 in usual use, finite and > 0 (λ < 1 deflates;
    a scalar, or (n,) for a per-variable factor; concrete values are checked).
    Reference: Anderson & Anderson (1999), MWR 127.
    """
    E = jnp.asarray(E)
    _check_factor("factor", factor, E)
    return _scale_anomalies(E, factor)


def _scale_anomalies(E: Array, factor: ArrayLike) -> Array:
    """``x̄ + λ (Eᵢ − x̄)`` without checks (λ may be 0 where it is meant)."""
    xbar = jnp.mean(E, axis=0)
    return xbar + jnp.asarray(factor, E.dtype) * (E - xbar)


def _n(E) -> int | None:
    return E.shape[1] if jnp.ndim(E) == 2 else None


def _check_factor(name, factor, E=None):
    """A multiplicative factor: finite and > 0, a scalar or (n,)."""
    n = None if E is None else _n(E)
    check_number(name, factor, low=0.0, shape=(n,), what=f"a scalar or ({n or 'n'},) array")


def _check_alpha(name, alpha, E=None):
    """A relaxation coefficient: in [0, 1], a scalar or (n,)."""
    n = None if E is None else _n(E)
    check_number(name, alpha, low=0.0, high=1.0, low_open=False,
                 shape=(n,), what=f"a scalar or ({n or 'n'},) array")


def additive(E: Array, Q: Covariance | ArrayLike, *, key: Array | int,
             recentre: bool = True) -> Array:
    """Additive Gaussian inflation: ``Eᵢ + εᵢ`` with ``εᵢ ~ N(0, Q)`` drawn
    independently for each member (``Q.sample(key, (N,))``).

    The sample covariance grows by Q in expectation (plus zero-mean cross
    terms). With ``recentre=True`` (default) the draws are re-centred,
    ``εᵢ − ε̄``, so the ensemble mean is exactly unchanged; the anomalies are
    the same either way (re-centring only removes the shift ε̄ of the mean).

    E: (N, n); Q: covariance operator of dimension n (or an array, wrapped
    by ``enkit.as_covariance``); key: PRNG key or integer seed (required).
    Returns (N, n).
    Reference: Mitchell & Houtekamer (2000), MWR 128.
    """
    E = jnp.asarray(E)
    key = as_key(key, "additive inflation")
    check_bool("recentre", recentre)
    Q = as_covariance(Q, E.shape[1], name="Q").astype(E.dtype)
    eps = Q.sample(key, (E.shape[0],))
    if recentre:
        eps = eps - jnp.mean(eps, axis=0)
    return E + eps


def _std(E: Array) -> Array:
    """Per-variable sample standard deviation and its 'positive' mask."""
    var = jnp.var(E, axis=0, ddof=1)
    pos = var > 0
    return jnp.sqrt(jnp.where(pos, var, 1.0)), pos


def rtps(Ef: Array, Ea: Array, alpha: ArrayLike) -> Array:
    """Relaxation to prior spread (RTPS): per variable j,

        σⱼ ← (1 − α) σₐⱼ + α σfⱼ,   i.e.   Xₐ ← Xₐ (α (σf − σₐ)/σₐ + 1),

    with σ the ensemble standard deviations of the forecast Ef and of the
    analysis Ea. The analysis mean is unchanged; the analysis anomalies are
    rescaled variable by variable, so the new spread is exactly the blend.
    α = 0 keeps Ea, α = 1 restores the forecast spread. A variable with
    zero analysis spread is left as it is (its anomalies cannot be scaled).

    Ef, Ea: (N, n); alpha: in [0, 1] (a blend), scalar or (n,).
    Returns (N, n).
    Reference: Whitaker & Hamill (2012), MWR 140.
    """
    Ef, Ea = jnp.asarray(Ef), jnp.asarray(Ea)
    _same_shape(Ef, Ea)
    _check_alpha("alpha", alpha, Ea)
    alpha = jnp.asarray(alpha, Ea.dtype)
    sf, _ = _std(Ef)
    sa, pos = _std(Ea)
    scale = jnp.where(pos, alpha * (sf - sa) / sa + 1.0, 1.0)
    return _scale_anomalies(Ea, scale)


def rtpp(Ef: Array, Ea: Array, alpha: ArrayLike) -> Array:
    """Relaxation to prior perturbations (RTPP):

        Xₐ ← (1 − α) Xₐ + α Xf,        Eₐ ← x̄ₐ + Xₐ,

    with X the anomalies (member minus mean) of the analysis Ea and the
    forecast Ef, member by member (so Ea's members must correspond to Ef's,
    as in every enkit scheme). The analysis mean is unchanged. α = 0 keeps
    Ea, α = 1 gives the forecast anomalies around the analysis mean.

    Ef, Ea: (N, n); alpha: in [0, 1] (a blend), scalar or (n,).
    Returns (N, n).
    Reference: Zhang, Snyder & Sun (2004), MWR 132.
    """
    Ef, Ea = jnp.asarray(Ef), jnp.asarray(Ea)
    _same_shape(Ef, Ea)
    _check_alpha("alpha", alpha, Ea)
    alpha = jnp.asarray(alpha, Ea.dtype)
    xa = jnp.mean(Ea, axis=0)
    return xa + (1.0 - alpha) * (Ea - xa) + alpha * (Ef - jnp.mean(Ef, axis=0))


class InflationEstimate(NamedTuple):
    """A multiplicative covariance-inflation factor ρ and its error variance.

    factor: ρ (the covariance is multiplied by ρ, the anomalies by √ρ);
    variance: the variance of the estimate. Both scalars.
    """

    factor: Array
    variance: Array


def adaptive_inflation(
    Ef: Array,
    y: Array,
    h,
    R,
    prior: InflationEstimate,
    *,
    mask: ArrayLike | None = None,
    min_factor: ArrayLike = 1.0,
    max_factor: ArrayLike = jnp.inf,
) -> InflationEstimate:
    """Update a global covariance-inflation factor from the innovation.

    With the innovation statistics of Desroziers et al. (2005),
    E[d dᵀ] = ρ H Pf Hᵀ + R for d = y − ȳ (ȳ the mean of the members'
    simulated observations). In whitened form
    (d̃ = R^{-1/2} d, Ỹ = R^{-1/2} H Xf / sqrt(N − 1), p present observations,
    t = tr(Ỹ Ỹᵀ) = tr(R^{-1/2} H Pf Hᵀ R^{-ᵀ/2})):

        ρᵒ = (d̃ᵀ d̃ − p) / t,                 (observational estimate)
        vᵒ = (2/p) ((ρᵇ t + p) / t)²,        (its variance)
        ρᵃ = (ρᵇ vᵒ + ρᵒ vᵇ) / (vᵇ + vᵒ),   vᵃ = vᵇ vᵒ / (vᵇ + vᵒ),

    the Gaussian approach of Li, Kalnay & Miyoshi (2009) with the variance
    vᵒ of Miyoshi (2011) (Miyoshi writes it with traces of
    R and H Pf Hᵀ; the whitened form is the same for R = σ²I and weights
    observations by their precision otherwise). ρᵃ is then clipped to
    [min_factor, max_factor]. This is the global (spatially constant)
    factor; Miyoshi's spatially varying version (inside the LETKF) is not here.

    Absent observations (``mask`` False) contribute nothing: their entries
    of y and h(x) are ignored (NaN placeholders included) and R is reduced
    to the present ones. With no present observation (or a degenerate
    ensemble, t = 0) the prior is returned unchanged.

    Ef: (N, n) forecast, before inflation; y: (m,); h: callable or (m, n)
    matrix; R: covariance operator or array; prior: (ρᵇ, vᵇ);
    mask: (m,) booleans or None; min_factor: finite, >= 0; max_factor: > 0
    (inf allowed), >= min_factor. Returns the posterior (ρᵃ, vᵃ).
    References: Miyoshi (2011), MWR 139; Li, Kalnay & Miyoshi (2009),
    QJRMS 135; Desroziers et al. (2005), QJRMS 131.
    """
    Ef = jnp.asarray(Ef)
    dt = Ef.dtype
    _check_estimate(prior.factor, prior.variance, min_factor, max_factor,
                    names=("prior.factor", "prior.variance"))
    d, Y, p = _whitened_innovation(Ef, y, h, R, mask)
    rho_b = jnp.asarray(prior.factor, dt)
    v_b = jnp.asarray(prior.variance, dt)
    t = jnp.sum(Y * Y)
    ok = (p > 0) & (t > 0)
    t_s = jnp.where(ok, t, 1.0)
    p_s = jnp.where(ok, p, 1.0)
    rho_o = (jnp.sum(d * d) - p_s) / t_s
    v_o = 2.0 / p_s * ((rho_b * t_s + p_s) / t_s) ** 2
    gain = v_b / (v_b + v_o)
    rho_a = jnp.where(ok, rho_b + gain * (rho_o - rho_b), rho_b)
    v_a = jnp.where(ok, (1.0 - gain) * v_b, v_b)
    rho_a = jnp.clip(rho_a, jnp.asarray(min_factor, dt), jnp.asarray(max_factor, dt))
    return InflationEstimate(rho_a, v_a)


def _check_estimate(factor, variance, min_factor, max_factor, *, names):
    """ρ and v of an inflation estimate finite and > 0, and the bounds
    0 <= min_factor <= max_factor (max_factor may be inf)."""
    check_number(names[0], factor, low=0.0)
    check_number(names[1], variance, low=0.0)
    check_number("min_factor", min_factor, low=0.0, low_open=False)
    check_number("max_factor", max_factor, low=0.0, finite=False)
    if user_value(min_factor) and user_value(max_factor) and \
            float(np.asarray(min_factor)) > float(np.asarray(max_factor)):
        raise ValueError(f"min_factor must be <= max_factor, got min_factor={min_factor!r} "
                         f"> max_factor={max_factor!r}")


def _whitened_innovation(Ef, y, h, R, mask):
    """(R^{-1/2} d, R^{-1/2} Y, p) with absent observations removed."""
    HE = observe(h, Ef)
    N, m = HE.shape
    y = jnp.asarray(y, Ef.dtype)
    if y.shape != (m,):
        raise ValueError(f"y must have shape (m,) = ({m},) to match h, got {y.shape}")
    R = as_covariance(R, m).astype(Ef.dtype)
    ybar = jnp.mean(HE, axis=0)
    d = y - ybar
    Y = (HE - ybar) / jnp.sqrt(jnp.asarray(N - 1, Ef.dtype))
    if mask is None:
        return R.whiten(d), R.whiten(Y), jnp.asarray(m, Ef.dtype)
    mask = jnp.asarray(mask, dtype=bool)
    if mask.shape != (m,):
        raise ValueError(f"mask must have shape (m,) = ({m},), got {mask.shape}")
    d = jnp.where(mask, d, 0.0)
    Y = jnp.where(mask, Y, 0.0)
    if isinstance(R, (Scalar, Diagonal)):
        # Elementwise whitening: absent entries stay exactly zero.
        Rm = R
    else:
        # Keep only the present block; absent ones get unit variance.
        w = mask.astype(Ef.dtype)
        Rm = Dense(R.dense() * w[:, None] * w[None, :] + jnp.diag(1.0 - w))
    return Rm.whiten(d), Rm.whiten(Y), jnp.sum(mask).astype(Ef.dtype)


def ledoit_wolf(E: Array) -> tuple[Array, Array]:
    """Ledoit–Wolf shrinkage of the sample covariance towards μ I.

    With xᵢ = Eᵢ − x̄ the anomalies and S = (1/N) Σᵢ xᵢ xᵢᵀ (the paper's
    estimator, normalised by N; enkit's ``ensemble_covariance`` uses N − 1),
    ‖A‖² = tr(A Aᵀ)/n:

        μ = tr(S)/n,   d² = ‖S − μI‖²,   b̄² = (1/N²) Σᵢ ‖xᵢ xᵢᵀ − S‖²,
        b² = min(b̄², d²),   s = b²/d²,   S* = s μ I + (1 − s) S.

    S* is well conditioned (positive definite whenever tr S > 0 and s > 0)
    even for N ≤ n, and keeps tr S* = tr S. The statistics are computed from
    the anomalies and their N×N Gram matrix: O(N n² + N² n).
    For S = μI exactly (d² = 0) the intensity is reported as 0.

    There is no driver step: an N-member ensemble spans at most N − 1
    directions and cannot carry the full-rank S*. Scaling the anomalies by
    √(1 − s) alone would be a deflation that drops the isotropic part that
    makes S* useful; adding the isotropic part as random draws is additive
    inflation with Q = s μ I (``AdditiveForecast``), a different, noisy
    estimator. Use S* where a covariance is consumed as a matrix, e.g.
    ``enkit.kalman_update(x̄, N/(N−1) · S*, y, H, R)``.

    E: (N, n) with N ≥ 2. Returns (S*: (n, n), intensity s: scalar in [0, 1]).
    Reference: Ledoit & Wolf (2004), J. Multivariate Anal. 88, 365–411.
    """
    E = jnp.asarray(E)
    if E.ndim != 2 or E.shape[0] < 2:
        raise ValueError(f"E must have shape (N, n) with N >= 2, got shape {E.shape}")
    N, n = E.shape
    X = E - jnp.mean(E, axis=0)
    S = X.T @ X / N
    eye = jnp.eye(n, dtype=E.dtype)
    mu = jnp.trace(S) / n
    d2 = jnp.sum((S - mu * eye) ** 2) / n
    # Σᵢ ‖xᵢxᵢᵀ − S‖² = Σᵢ ‖xᵢ‖⁴ − N ‖S‖², from the Gram matrix G = X Xᵀ.
    G = X @ X.T
    bbar2 = jnp.maximum(jnp.sum(jnp.diagonal(G) ** 2) - jnp.sum(G * G) / N, 0.0) / N**2 / n
    b2 = jnp.minimum(bbar2, d2)
    pos = d2 > 0
    s = jnp.where(pos, b2 / jnp.where(pos, d2, 1.0), 0.0)
    return s * mu * eye + (1.0 - s) * S, s


def _same_shape(Ef, Ea):
    if Ef.shape != Ea.shape or Ef.ndim != 2:
        raise ValueError(
            f"Ef and Ea must both have shape (N, n), got {Ef.shape} and {Ea.shape}"
        )


# --------------------------------------------------------------------------
# Driver steps
# --------------------------------------------------------------------------


class InflationStep:
    """Base of driver steps: every method defaults to doing nothing."""

    def init(self, E0: Array):
        return ()

    def before_analysis(self, state, key, Ef, y, h, R, mask):
        return Ef, state

    def after_analysis(self, state, key, Ef, Ea):
        return Ea, state


def _register(cls, data, meta=()):
    register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))
    return cls


@dataclasses.dataclass(frozen=True)
class NoInflation(InflationStep):
    """The step that changes nothing (the driver's default)."""


_register(NoInflation, [])


@dataclasses.dataclass(frozen=True)
class MultiplicativeForecast(InflationStep):
    """Multiplicative inflation of the forecast anomalies by ``factor``
    before the analysis: ``multiplicative(Ef, factor)``.

    ADAO's "MultiplicativeOnBackgroundAnomalies". Reference: Anderson &
    Anderson (1999), MWR 127.
    """

    factor: ArrayLike = 1.0

    def __post_init__(self):
        _check_factor("factor", self.factor)

    def before_analysis(self, state, key, Ef, y, h, R, mask):
        return multiplicative(Ef, self.factor), state


_register(MultiplicativeForecast, ["factor"])


@dataclasses.dataclass(frozen=True)
class MultiplicativeAnalysis(InflationStep):
    """Multiplicative inflation of the analysis anomalies by ``factor``.

    ADAO's "MultiplicativeOnAnalysisAnomalies"; DAPPER's ``infl``.
    Reference: Anderson & Anderson (1999), MWR 127.
    """

    factor: ArrayLike = 1.0

    def __post_init__(self):
        _check_factor("factor", self.factor)

    def after_analysis(self, state, key, Ef, Ea):
        return multiplicative(Ea, self.factor), state


_register(MultiplicativeAnalysis, ["factor"])


def _step_key(key, name):
    if key is None:
        raise TypeError(f"{name} draws random numbers: pass key= to the driver")
    return key


@dataclasses.dataclass(frozen=True)
class AdditiveForecast(InflationStep):
    """Additive Gaussian inflation of the forecast before the analysis:
    ``additive(Ef, Q, key=key, recentre=recentre)``. Stochastic: needs the
    driver's key. Q: covariance operator of dimension n (a leaf, so its
    entries may be swept or differentiated); recentre: static.
    Reference: Mitchell & Houtekamer (2000), MWR 128.
    """

    Q: Covariance
    recentre: bool = True

    def __post_init__(self):
        check_bool("recentre", self.recentre)

    def before_analysis(self, state, key, Ef, y, h, R, mask):
        key = _step_key(key, "AdditiveForecast")
        return additive(Ef, self.Q, key=key, recentre=self.recentre), state


_register(AdditiveForecast, ["Q"], ["recentre"])


@dataclasses.dataclass(frozen=True)
class AdditiveAnalysis(InflationStep):
    """Additive Gaussian inflation of the analysis (after the analysis), as
    in Whitaker et al. (2008, MWR 136): ``additive(Ea, Q, key=key, ...)``.
    Stochastic: needs the driver's key.
    """

    Q: Covariance
    recentre: bool = True

    def __post_init__(self):
        check_bool("recentre", self.recentre)

    def after_analysis(self, state, key, Ef, Ea):
        key = _step_key(key, "AdditiveAnalysis")
        return additive(Ea, self.Q, key=key, recentre=self.recentre), state


_register(AdditiveAnalysis, ["Q"], ["recentre"])


@dataclasses.dataclass(frozen=True)
class RTPS(InflationStep):
    """Relaxation to prior spread after the analysis: ``rtps(Ef, Ea, alpha)``.

    alpha: in [0, 1], scalar or (n,); Whitaker & Hamill (2012, MWR 140)
    use α ≈ 0.9 with localisation in a global model.
    """

    alpha: ArrayLike = 0.5

    def __post_init__(self):
        _check_alpha("alpha", self.alpha)

    def after_analysis(self, state, key, Ef, Ea):
        return rtps(Ef, Ea, self.alpha), state


_register(RTPS, ["alpha"])


@dataclasses.dataclass(frozen=True)
class RTPP(InflationStep):
    """Relaxation to prior perturbations after the analysis:
    ``rtpp(Ef, Ea, alpha)``; alpha: in [0, 1], scalar or (n,).
    Reference: Zhang, Snyder & Sun (2004), MWR 132.
    """

    alpha: ArrayLike = 0.5

    def __post_init__(self):
        _check_alpha("alpha", self.alpha)

    def after_analysis(self, state, key, Ef, Ea):
        return rtpp(Ef, Ea, self.alpha), state


_register(RTPP, ["alpha"])


@dataclasses.dataclass(frozen=True)
class AdaptiveMultiplicative(InflationStep):
    """Adaptive multiplicative inflation of the forecast (Miyoshi 2011).

    The state is an ``InflationEstimate`` (ρ, v), starting at
    (``initial``, ``variance``). Before each analysis the estimate is
    updated from the innovation with ``adaptive_inflation`` (respecting
    ``mask``), then the forecast anomalies are multiplied by √ρᵃ. The prior
    of the next cycle is the posterior (persistence). With
    ``update_variance=False`` (default, as in Miyoshi 2011) the prior
    variance is reset to ``variance`` every cycle, so the estimate keeps
    tracking a factor that changes in time; with True the posterior variance
    is carried, and the estimate becomes a running average that settles.
    The state's ``variance`` is the posterior variance vᵃ either way.

    initial: ρ at the start (covariance factor); variance: prior variance of
    ρ, default 0.1² (on Lorenz-96, N=20, ETKF the smaller 0.04² often used
    with this method let some 10,000-cycle runs through short divergence
    episodes that 0.1² avoided); min_factor, max_factor: bounds on ρ
    (the default forbids deflation). initial, variance: finite and > 0;
    min_factor: finite and >= 0; max_factor: > 0 (inf allowed) and
    >= min_factor. All leaves;
    update_variance is static.
    References: Miyoshi (2011), MWR 139; Li, Kalnay & Miyoshi (2009), QJRMS 135.
    """

    initial: ArrayLike = 1.0
    variance: ArrayLike = 0.1**2
    min_factor: ArrayLike = 1.0
    max_factor: ArrayLike = jnp.inf
    update_variance: bool = False

    def __post_init__(self):
        _check_estimate(self.initial, self.variance, self.min_factor, self.max_factor,
                        names=("initial", "variance"))
        check_bool("update_variance", self.update_variance)

    def init(self, E0):
        dt = jnp.asarray(E0).dtype
        return InflationEstimate(jnp.asarray(self.initial, dt), jnp.asarray(self.variance, dt))

    def before_analysis(self, state, key, Ef, y, h, R, mask):
        prior = state if self.update_variance else state._replace(
            variance=jnp.asarray(self.variance, state.variance.dtype))
        post = adaptive_inflation(Ef, y, h, R, prior, mask=mask,
                                  min_factor=self.min_factor, max_factor=self.max_factor)
        return _scale_anomalies(Ef, jnp.sqrt(post.factor)), post


_register(AdaptiveMultiplicative,
          ["initial", "variance", "min_factor", "max_factor"], ["update_variance"])


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


_register(_Chain, ["steps"])


def _sub(key, i):
    return None if key is None else jax.random.fold_in(key, i)


def chain(*steps: InflationStep) -> InflationStep:
    """Run several inflation steps in order; each gets its own sub-key."""
    for s in steps:
        if not isinstance(s, InflationStep):
            raise TypeError(f"chain takes InflationStep objects, got {type(s).__name__}")
    return _Chain(tuple(steps))
