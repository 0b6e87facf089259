"""Covariance inflation of inversion processes: wrappers applied after ``tell``.

Each wrapper passes ``init/ask/tell`` through to the wrapped process and,
after its update with step Δt (``info.dt``), perturbs the parameter ensemble:

- ``MultiplicativeInflation``: anomalies scaled by √(1/(1 − sΔt)), the
  covariance by 1/(1 − sΔt), the mean unchanged (Huang et al. 2022, eq. 41);
- ``AdditiveInflation``: ζᵢ ~ N(0, sΔt/(1 − sΔt) Σ) added to every member
  (re-centred by default so the mean is unchanged); it leaves the affine
  span of the ensemble, which EKI alone never does;
- ``SubspaceInflation``: additive inflation whose strength grows with the
  part of the whitened misfit that the ensemble's outputs cannot explain,
  to escape the subspace trap (see its docstring);
- ``CollapseInflation``: the anomalies scaled back up to a set fraction of
  the initial spread whenever the ensemble has collapsed below another.

s scales the algorithmic time; with minibatches of |B| of |C| data, s = |B|/|C|.
The wrappers keep ``InversionInfo`` as the wrapped process returns it.
They also hold the two helpers every process wrapper uses to reach the
parameter ensemble inside nested states: ``state_ensemble`` and
``replace_ensemble``.
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
from enkit.covariance import Covariance, as_covariance
from enkit.ensemble import scaled_anomalies
from enkit.filters._common import as_key
from enkit.inflation import additive, multiplicative
from enkit.inversion._common import EnsembleProcess, innermost_state
from enkit.inversion.stopping import spread_ratio

__all__ = [
    "AdditiveInflation",
    "CollapseInflation",
    "CollapseState",
    "InflatedState",
    "MultiplicativeInflation",
    "SubspaceInflation",
    "replace_ensemble",
    "state_ensemble",
    "subspace_residual_fraction",
]

# fold_in tag of the inflation key stream (distinct from the process's own
# fold_in(key, iteration) draws, which use the same user key).
_INFLATION_STREAM = 0x1F1A7E00


# --------------------------------------------------------------------------
# Nested states
# --------------------------------------------------------------------------


def state_ensemble(state) -> Array:
    """The (N, p) parameter ensemble of a process state, looking through
    wrapper states (a field ``inner``) down to a state with ``ensemble``."""
    inner = innermost_state(state)
    if not hasattr(inner, "ensemble"):
        raise TypeError(f"{type(inner).__name__} holds no parameter ensemble")
    return inner.ensemble


def replace_ensemble(state, ensemble: Array):
    """``state`` with its (N, p) parameter ensemble replaced (nested states
    are rebuilt with ``_replace``)."""
    if hasattr(state, "ensemble"):
        return state._replace(ensemble=ensemble)
    if not hasattr(state, "inner"):
        raise TypeError(f"{type(state).__name__} holds no parameter ensemble")
    return state._replace(inner=replace_ensemble(state.inner, ensemble))


def innermost(process):
    """The process at the bottom of a chain of wrappers (``.process``)."""
    while hasattr(process, "process"):
        process = process.process
    return process


def check_ensemble_process(process, wrapper: str) -> None:
    """Raise unless ``process`` has init/ask/tell and carries an ensemble."""
    for method in ("init", "ask", "tell"):
        if not callable(getattr(process, method, None)):
            raise TypeError(f"{wrapper}: process must have init/ask/tell, "
                            f"{type(process).__name__} lacks {method}")
    base = innermost(process)
    if not isinstance(base, EnsembleProcess):
        raise TypeError(
            f"{wrapper} needs a process whose state is an (N, p) ensemble of the "
            f"parameters (EKI, ETKI, TEKI, GNKI, ESMDA, ...); {type(base).__name__} "
            "carries no ensemble"
        )


def _tell(process, state, G, y, noise, dt):
    if dt is None:
        return process.tell(state, G, y, noise)
    return process.tell(state, G, y, noise, dt=dt)


def _check_scalar(name: str, value, *, positive: bool = False) -> float | None:
    """Raise unless a concrete ``value`` is a finite scalar ≥ 0 (> 0 where
    ``positive``); returns it as a float, or None when it is traced."""
    if isinstance(value, (float, int, np.ndarray, np.number, jax.Array)) and is_concrete(value):
        v = np.asarray(value, dtype=np.float64)
        if v.ndim != 0 or not (np.isfinite(float(v)) and (float(v) > 0 if positive
                                                          else float(v) >= 0)):
            raise ValueError(f"{name} must be a finite scalar {'>' if positive else '>='} 0, "
                             f"got {v.tolist()}")
        return float(v)
    return None


def _check_s(s) -> None:
    _check_scalar("s", s)


def _growth(s, dt, dtype) -> Array:
    """sΔt/(1 − sΔt), checked (sΔt < 1) when concrete."""
    sdt = jnp.asarray(s, dtype) * jnp.asarray(dt, dtype)
    if is_concrete(sdt) and not float(sdt) < 1:
        raise ValueError(
            f"inflation needs s*dt < 1 (the covariance grows by 1/(1 - s*dt)), got "
            f"s*dt = {float(sdt)}; lower s or the step"
        )
    return sdt / (1.0 - sdt)


class InflatedState(NamedTuple):
    """State of an additive-inflation wrapper: the wrapped process's state
    and the key of the inflation draws (iteration n draws from
    ``fold_in(key, n)``)."""

    inner: Any
    key: Array


class _Wrapper:
    """Shared pass-through of ``ask`` for wrappers whose state is the
    wrapped state (``inner``) plus a key."""

    def ask(self, state) -> Array:
        """The wrapped process's ``ask``: (rows, p)."""
        return self.process.ask(state.inner)


# --------------------------------------------------------------------------
# Multiplicative
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MultiplicativeInflation:
    """After each ``tell`` with step Δt, scale the anomalies about the mean:

        uᵢ ← ū + (1 − sΔt)^{-1/2} (uᵢ − ū),   C^{uu} ← C^{uu} / (1 − sΔt),

    the mean exactly unchanged and the ensemble in the same affine span
    (``enkit.inflation.multiplicative``). Requires sΔt < 1 (checked when
    concrete). The state is the wrapped process's state.

    process: any ensemble process (or wrapper of one); s: s ≥ 0 (a leaf).

    Reference: Huang, Huang, Reich & Stuart (2022), Inverse Problems 38,
    125006, eq. (41); Anderson & Anderson (1999) for the inflation.
    """

    process: Any
    s: ArrayLike = 1.0

    def __post_init__(self):
        check_ensemble_process(self.process, "MultiplicativeInflation")
        _check_s(self.s)

    def init(self, key, ensemble):
        """The wrapped process's ``init(key, ensemble)``."""
        return self.process.init(key, ensemble)

    def ask(self, state) -> Array:
        """The wrapped process's ``ask``."""
        return self.process.ask(state)

    def tell(self, state, G, y, noise, *, dt=None):
        """The wrapped ``tell`` (dt: Δt, None for the process's default),
        then the inflation with the Δt it applied (``info.dt``)."""
        state, info = _tell(self.process, state, G, y, noise, dt)
        E = state_ensemble(state)
        lam = jnp.sqrt(1.0 + _growth(self.s, info.dt, E.dtype))
        return replace_ensemble(state, multiplicative(E, lam)), info


# --------------------------------------------------------------------------
# Additive
# --------------------------------------------------------------------------


class _AdditiveBase(_Wrapper):
    def _setup(self, name):
        check_ensemble_process(self.process, name)
        if not isinstance(self.recentre, (bool, np.bool_)):
            raise TypeError(f"recentre must be a bool, got {type(self.recentre).__name__}")

    def init(self, key: Array | int, ensemble) -> InflatedState:
        """The wrapped ``init(key, ensemble)``; key (required, or an int seed)
        also seeds the inflation draws (a separate ``fold_in`` stream)."""
        key = as_key(key, type(self).__name__)
        inner = self.process.init(key, ensemble)
        p = state_ensemble(inner).shape[1]
        as_covariance(self.covariance, p, name="covariance")
        return InflatedState(inner, jax.random.fold_in(key, _INFLATION_STREAM))

    def _perturb(self, state, new_inner, h):
        """Add √h ζᵢ, ζᵢ ~ N(0, Σ) (re-centred if asked) to the new ensemble."""
        E = state_ensemble(new_inner)
        k = jax.random.fold_in(state.key, state_iteration(state.inner))
        Sigma = as_covariance(self.covariance, E.shape[1], name="covariance").astype(E.dtype)
        zeta = additive(jnp.zeros_like(E), Sigma, key=k, recentre=self.recentre)
        return InflatedState(replace_ensemble(new_inner, E + jnp.sqrt(h) * zeta), state.key)


def state_iteration(state) -> Array:
    """The iteration count of a (possibly nested) process state."""
    return innermost_state(state).iteration


@dataclasses.dataclass(frozen=True)
class AdditiveInflation(_AdditiveBase):
    """After each ``tell`` with step Δt, add Gaussian noise to every member:

        uᵢ ← uᵢ + ζᵢ,   ζᵢ ~ N(0, sΔt/(1 − sΔt) Σ),

    so the ensemble covariance grows by sΔt/(1 − sΔt) Σ in expectation
    (with Σ = C^{uu} this matches ``MultiplicativeInflation`` on average).
    The draws come from ``fold_in(key, n)`` of the key given to ``init``
    (a stream separate from the process's own); ``recentre=True`` subtracts
    their mean so the ensemble mean is exactly unchanged. Unlike
    multiplicative inflation it leaves the affine span of the ensemble.

    process: any ensemble process (or wrapper of one); covariance: Σ, a
    covariance operator of dimension p or an array (e.g. the prior's C₀);
    s: s ≥ 0 with sΔt < 1 (a leaf); recentre: static bool.

    Reference: Chada & Tong (2022), "Convergence acceleration of ensemble
    Kalman inversion in nonlinear settings", Math. Comp. 91, 1247–1280, for
    additive inflation in EKI; the sΔt/(1 − sΔt) scaling as in
    EnsembleKalmanProcesses.jl's inflation documentation.
    """

    process: Any
    covariance: Covariance | ArrayLike
    s: ArrayLike = 1.0
    recentre: bool = True

    def __post_init__(self):
        self._setup("AdditiveInflation")
        _check_s(self.s)

    def tell(self, state: InflatedState, G, y, noise, *, dt=None):
        """The wrapped ``tell``, then the additive inflation with its Δt."""
        new_inner, info = _tell(self.process, state.inner, G, y, noise, dt)
        dtype = state_ensemble(new_inner).dtype
        return self._perturb(state, new_inner, _growth(self.s, info.dt, dtype)), info


# --------------------------------------------------------------------------
# Adaptive: escaping the subspace trap
# --------------------------------------------------------------------------


def subspace_residual_fraction(G: ArrayLike, y: ArrayLike, noise) -> Array:
    """θ² = ‖(I − P) r̃‖² / ‖r̃‖²: the fraction of the squared whitened misfit
    r̃ = Γ^{-1/2}(y − Ḡ) outside the span of the whitened output anomalies
    Γ^{-1/2}(G(uᵢ) − Ḡ) (P the orthogonal projector onto that span).

    θ² ∈ [0, 1]; exactly 0 when the misfit is zero, when the anomalies
    span all of ℝᵈ (numerical rank d), or when θ ≤ 64 ε (round-off). An ensemble Kalman step
    moves the (linearised) outputs only within that span, and on a linear
    G = A the ensemble-preconditioned gradient of ½‖r̃‖², C^{uu}Aᵀ Γ^{-1/2} r̃
    = Xᵀ Ỹ r̃, sees P r̃ only: θ² is the part of the misfit the current
    ensemble cannot reduce (the subspace property, Iglesias, Law & Stuart
    2013). G: (N, d); y: (d,); noise: Γ. Returns a scalar.
    """
    G = jnp.asarray(G)
    d = G.shape[1]
    noise = as_covariance(noise, d, name="noise").astype(G.dtype)
    gbar, Y = scaled_anomalies(G)
    Yw = noise.whiten(Y)
    r = noise.whiten(jnp.asarray(y, G.dtype) - gbar)
    _, s, Vt = jnp.linalg.svd(Yw, full_matrices=False)
    tol = jnp.max(s) * max(Yw.shape) * jnp.finfo(G.dtype).eps
    Vr = jnp.where((s > tol)[:, None], Vt, 0.0)
    perp = r - Vr.T @ (Vr @ r)
    r2 = jnp.sum(r * r)
    frac = jnp.clip(jnp.sum(perp * perp) / jnp.where(r2 > 0, r2, 1.0), 0.0, 1.0)
    full_rank = jnp.sum(s > tol) >= d  # the span is all of ℝᵈ
    roundoff = frac <= (64 * jnp.finfo(G.dtype).eps) ** 2
    return jnp.where((r2 > 0) & ~full_rank & ~roundoff, frac, 0.0)


@dataclasses.dataclass(frozen=True)
class SubspaceInflation(_AdditiveBase):
    """Adaptive additive inflation that grows when the misfit leaves the
    ensemble subspace.

    EKI keeps every member in the affine span of the initial ensemble
    (Iglesias, Law & Stuart 2013), so the part of the misfit outside the
    span of the output anomalies can never be removed: the subspace trap.
    Additive inflation breaks the span (Chada & Tong 2022); here its
    strength follows the trapped fraction θ² of the whitened misfit of the
    outputs that were told (``subspace_residual_fraction``):

        uᵢ ← uᵢ + ζᵢ,   ζᵢ ~ N(0, γ θ² Δt Σ).

    No perturbation (exactly) when the misfit lies in the span (θ = 0);
    the largest, γΔtΣ, when the ensemble's outputs cannot explain any of
    it. (Our construction: the trigger θ² is not from a paper; the additive
    form and its role are.) Draws and ``recentre`` as in
    ``AdditiveInflation``.

    process: any ensemble process (or wrapper of one); covariance: Σ, an
    operator of dimension p or an array; gamma: γ ≥ 0 (a leaf);
    recentre: static bool.

    References: Iglesias, Law & Stuart (2013), Inverse Problems 29, 045001
    (subspace property); Chada & Tong (2022), Math. Comp. 91, 1247–1280
    (covariance inflation to leave it).
    """

    process: Any
    covariance: Covariance | ArrayLike
    gamma: ArrayLike = 1.0
    recentre: bool = True

    def __post_init__(self):
        self._setup("SubspaceInflation")
        _check_scalar("gamma", self.gamma)

    def tell(self, state: InflatedState, G, y, noise, *, dt=None):
        """The wrapped ``tell``, then additive inflation of strength
        γ θ² Δt, θ² from the told outputs G: (N, d)."""
        new_inner, info = _tell(self.process, state.inner, G, y, noise, dt)
        dtype = state_ensemble(new_inner).dtype
        theta2 = subspace_residual_fraction(jnp.asarray(G, dtype), y, noise)
        h = jnp.asarray(self.gamma, dtype) * theta2 * jnp.asarray(info.dt, dtype)
        return self._perturb(state, new_inner, h), info


# --------------------------------------------------------------------------
# Collapse-triggered: restore the spread when it has collapsed
# --------------------------------------------------------------------------


class CollapseState(NamedTuple):
    """State of ``CollapseInflation``: the wrapped state, the initial
    spread σ⁰ (p,) of every parameter, and how many ``tell`` calls have
    inflated (int32)."""

    inner: Any
    initial_spread: Array
    triggered: Array


@dataclasses.dataclass(frozen=True)
class CollapseInflation(_Wrapper):
    """Multiplicative inflation triggered by collapse: after a ``tell``
    whose ensemble has shrunk below ``tol`` of its initial spread,

        r = maxⱼ σⱼ/σ⁰ⱼ < tol   ⇒   uᵢ ← ū + (restore / r)(uᵢ − ū),

    so the largest spread ratio is ``restore`` again; otherwise nothing
    changes. The mean is exactly kept and the ensemble stays in its affine
    span (the scaling of ``MultiplicativeInflation``, applied when needed).
    A collapsed ensemble moves by amounts of the order of its spread, so
    each later Kalman step is tiny; restoring the spread makes the steps
    long again (on a linear problem the gain C(C + Δt⁻¹Γ)⁻¹ grows with C)
    without the noise that ``AdditiveInflation`` adds. The number of
    inflating steps is ``state.triggered``.

    process: any ensemble process (or wrapper of one); tol: the collapse
    threshold, 0 < tol < restore (``ensemble_collapsed``'s ratio; a leaf);
    restore: the ratio restored, tol < restore ≤ 1 typical (a leaf).
    Parameters with zero initial spread are left out of the ratio.

    Our construction, after the collapse diagnostics of the EKI literature
    (Schillings & Stuart 2017: the spread of linear EKI decays like
    t^{-1/2}); the multiplicative form as in Huang et al. (2022).
    """

    process: Any
    tol: ArrayLike = 0.05
    restore: ArrayLike = 0.5

    def __post_init__(self):
        check_ensemble_process(self.process, "CollapseInflation")
        tol = _check_scalar("tol", self.tol, positive=True)
        restore = _check_scalar("restore", self.restore, positive=True)
        if tol is not None and restore is not None and not tol < restore:
            raise ValueError(f"tol must be below restore (the ratio restored), got tol = "
                             f"{tol}, restore = {restore}")

    def init(self, key, ensemble) -> CollapseState:
        """The wrapped ``init(key, ensemble)``, with the initial spread kept."""
        inner = self.process.init(key, ensemble)
        E = state_ensemble(inner)
        return CollapseState(inner, jnp.std(E, axis=0, ddof=1), jnp.asarray(0, jnp.int32))

    def tell(self, state: CollapseState, G, y, noise, *, dt=None):
        """The wrapped ``tell``, then the restoring scaling if collapsed."""
        new_inner, info = _tell(self.process, state.inner, G, y, noise, dt)
        E = state_ensemble(new_inner)
        r = spread_ratio(E, state.initial_spread.astype(E.dtype))
        hit = (r < jnp.asarray(self.tol, E.dtype)) & (r > 0)
        lam = jnp.where(hit, jnp.asarray(self.restore, E.dtype) / jnp.where(hit, r, 1.0), 1.0)
        new_inner = replace_ensemble(new_inner, jnp.where(hit, multiplicative(E, lam), E))
        return CollapseState(new_inner, state.initial_spread,
                             state.triggered + hit.astype(jnp.int32)), info


register_dataclass(MultiplicativeInflation, data_fields=["process", "s"],
                                 meta_fields=[])
register_dataclass(AdditiveInflation,
                                 data_fields=["process", "covariance", "s"],
                                 meta_fields=["recentre"])
register_dataclass(CollapseInflation, data_fields=["process", "tol", "restore"],
                   meta_fields=[])
register_dataclass(SubspaceInflation,
                                 data_fields=["process", "covariance", "gamma"],
                                 meta_fields=["recentre"])
