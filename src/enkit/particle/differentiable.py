"""Differentiable resampling: soft resampling (Karkus, Hsu & Lee 2018) and
entropy-regularised optimal-transport resampling (Corenflos, Thornton,
Deligiannidis & Doucet 2021).

The classical resamplers (``systematic`` and the others) pick ancestors, a
piecewise-constant function of the weights: a particle filter that uses
them is a discontinuous function of the model's parameters, and the
gradient of its log-evidence or of its ensemble means misses the way the
weights decide which particles survive. The two schemes here keep that
path differentiable:

* ``soft_resample`` draws ancestors from the mixture q = α w̄ + (1 − α)/N
  and gives the offspring the importance weights w̄ₐ/qₐ: the ancestors
  are still discrete, but the weights handed on carry the gradient
  (α = 1: plain resampling, uniform weights and no gradient through
  them; α = 0: no selection, the weights only travel on).
* ``ot_resample`` replaces selection by a transport: the new particles
  x̃ⱼ = N Σᵢ Pᵢⱼ xᵢ are averages of the old ones under the entropy-
  regularised optimal coupling P of the weighted particles and uniform
  weights (``sinkhorn_plan``, log-domain Sinkhorn iterations), a smooth
  function of the particles and the weights, with uniform weights after.

``SoftResampler`` and ``OTResampler`` bind their options as pytrees (the
hyperparameters α and ε are array leaves: vmappable and differentiable)
and plug into ``bootstrap_pf(resampler=...)``; a resampler of this kind
maps ``(key, E, log_w) -> (E_new, log_w_new)`` instead of returning
ancestors.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import logsumexp
from jax.typing import ArrayLike

from enkit._checks import is_concrete
from enkit._pytree import register_dataclass
from enkit.particle.resampling import normalize_log_weights, systematic, uniform_log_weights

__all__ = [
    "EnsembleResampler",
    "OTResampler",
    "SinkhornResult",
    "SoftResampler",
    "ot_resample",
    "sinkhorn_plan",
    "soft_resample",
]


def _is_count(k) -> bool:
    """True for an integer (Python or NumPy, not bool) >= 1."""
    return isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1


def _check_log_weights(log_w, N=None) -> Array:
    log_w = jnp.asarray(log_w)
    if log_w.ndim != 1 or (N is not None and log_w.shape[0] != N):
        want = "(N,)" if N is None else f"(N,) = ({N},)"
        raise ValueError(f"log_w must have shape {want}, got {log_w.shape}")
    if not jnp.issubdtype(log_w.dtype, jnp.floating):
        raise TypeError(f"log_w must be floating point, got dtype {log_w.dtype}")
    return log_w


def soft_resample(key: Array, log_w: ArrayLike, *, alpha: ArrayLike = 0.5,
                  resampler: Callable = systematic) -> tuple[Array, Array]:
    """Soft resampling (Karkus, Hsu & Lee 2018, §3.3): ancestors drawn from

        q = α w̄ + (1 − α)/N,    aⱼ ~ resampler(q),
        log w̃ⱼ = log w̄_{aⱼ} − log q_{aⱼ}   (then normalised),

    so that (1/N) Σⱼ (w̄_{aⱼ}/q_{aⱼ}) φ(x_{aⱼ}) is an unbiased estimate of
    Σᵢ w̄ᵢ φ(xᵢ) for every unbiased ``resampler``, and the new weights are
    a differentiable function of the old ones (the gradient flows through
    w̄ₐ and qₐ; the ancestor indices themselves are discrete). α = 1 is
    the plain resampler: the same ancestors (``resampler(key, log_w)``, to
    the bit) and uniform weights; α → 0 keeps the weights and draws
    uniformly. With α < 1 the ESS after resampling is below N: the weights
    are carried to the next cycle (pass them back as ``log_weights``).

    key: PRNG key; log_w: (N,) log-weights (any normalisation); alpha: in
    [0, 1] (array leaf: may be traced); resampler: an ancestor resampler
    ``(key, log_q) -> (N,) int32`` (``systematic`` by default).
    Returns (ancestors (N,) int32, log_w_new (N,) normalised).

    Reference: Karkus, Hsu & Lee (2018), "Particle filter networks with
    application to visual localization", CoRL, PMLR 87.
    """
    log_w = _check_log_weights(log_w)
    if is_concrete(alpha) and not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the weight of w̄ in q = α w̄ + (1 − α)/N), "
                         f"got {alpha!r}")
    N = log_w.shape[0]
    log_wbar = normalize_log_weights(log_w)
    alpha = jnp.asarray(alpha, log_w.dtype)
    # log q = log(α w̄ + (1 − α)/N); α = 1 gives log w̄ exactly (logaddexp with −inf)
    log_q = jnp.logaddexp(jnp.log(alpha) + log_wbar, jnp.log1p(-alpha) - jnp.log(N))
    ancestors = resampler(key, log_q)
    return ancestors, normalize_log_weights(log_wbar[ancestors] - log_q[ancestors])


class SinkhornResult(NamedTuple):
    """The result of ``sinkhorn_plan``: log_plan (N, M) log Pᵢⱼ; f (N,), g
    (M,) the dual potentials; error: the L1 error Σⱼ |Σᵢ Pᵢⱼ − bⱼ| of the
    column marginal (the row marginal is exact); iterations: the number of
    updates done (the rest were skipped once error < tol)."""

    log_plan: Array
    f: Array
    g: Array
    error: Array
    iterations: Array


def sinkhorn_plan(log_a: ArrayLike, log_b: ArrayLike, C: ArrayLike, *,
                  epsilon: ArrayLike = 0.1, iterations: int = 200,
                  tol: ArrayLike = 1e-6) -> SinkhornResult:
    """Entropy-regularised optimal transport by log-domain Sinkhorn
    iterations (Cuturi 2013; Peyré & Cuturi 2019, §4.4):

        P = argmin_{P 1 = a, Pᵀ 1 = b} Σᵢⱼ Pᵢⱼ Cᵢⱼ + ε Σᵢⱼ Pᵢⱼ (log Pᵢⱼ − 1),
        log Pᵢⱼ = log aᵢ + log bⱼ + (fᵢ + gⱼ − Cᵢⱼ)/ε,

    with the potentials updated alternately by stable log-sum-exps,

        gⱼ ← −ε LSEᵢ(log aᵢ + (fᵢ − Cᵢⱼ)/ε),
        fᵢ ← −ε LSEⱼ(log bⱼ + (gⱼ − Cᵢⱼ)/ε),

    the f update last, so the row sums of P equal a to round-off. The loop
    is a ``lax.scan`` of ``iterations`` steps (reverse-mode differentiable,
    by unrolling, with each step rematerialised in the backward pass:
    memory O(iterations·(N + M) + N M)); once the column error falls below
    ``tol`` the potentials are frozen, so the result is that of stopping
    there (the remaining steps are still computed and discarded).

    log_a: (N,) log of the source marginal (normalised; −inf allowed);
    log_b: (M,) log of the target marginal (normalised); C: (N, M) cost;
    epsilon: > 0, the regularisation (in C's units); iterations: the
    maximum number of updates (static int ≥ 1); tol: the L1 tolerance on
    the column marginal. Returns a ``SinkhornResult``.

    References: Cuturi (2013), NeurIPS 26; Peyré & Cuturi (2019),
    "Computational Optimal Transport", Found. Trends Mach. Learn. 11.
    """
    C = jnp.asarray(C)
    if C.ndim != 2:
        raise ValueError(f"C must have shape (N, M), got {C.shape}")
    N, M = C.shape
    log_a = jnp.asarray(log_a, C.dtype)
    log_b = jnp.asarray(log_b, C.dtype)
    if log_a.shape != (N,) or log_b.shape != (M,):
        raise ValueError(f"log_a and log_b must have shapes (N,) = ({N},) and (M,) = ({M},) "
                         f"to match C, got {log_a.shape} and {log_b.shape}")
    if not _is_count(iterations):
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    if is_concrete(epsilon) and not float(epsilon) > 0.0:
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
    eps = jnp.asarray(epsilon, C.dtype)
    tol = jnp.asarray(tol, C.dtype)
    # zero-weight sources: a very small finite log-weight keeps gradients finite
    floor = jnp.asarray(jnp.finfo(C.dtype).min / 4, C.dtype)
    log_a = jnp.maximum(log_a, floor)

    def log_plan(f, g):
        return log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - C) / eps

    def update(f, g):
        g = -eps * logsumexp(log_a[:, None] + (f[:, None] - C) / eps, axis=0)
        f = -eps * logsumexp(log_b[None, :] + (g[None, :] - C) / eps, axis=1)
        col = jnp.exp(logsumexp(log_plan(f, g), axis=0))
        return f, g, jnp.sum(jnp.abs(col - jnp.exp(log_b)))

    @jax.checkpoint
    def step(carry, _):
        f, g, err, done_steps = carry
        f_new, g_new, err_new = update(f, g)
        go = err >= tol
        return (jnp.where(go, f_new, f), jnp.where(go, g_new, g), jnp.where(go, err_new, err),
                done_steps + go.astype(jnp.int32)), None

    init = (jnp.zeros(N, C.dtype), jnp.zeros(M, C.dtype), jnp.asarray(jnp.inf, C.dtype),
            jnp.zeros((), jnp.int32))
    (f, g, err, done_steps), _ = jax.lax.scan(step, init, None, length=iterations)
    return SinkhornResult(log_plan(f, g), f, g, err, done_steps)


def ot_resample(E: ArrayLike, log_w: ArrayLike, *, epsilon: ArrayLike = 0.1,
                iterations: int = 200, tol: ArrayLike = 1e-6) -> Array:
    """Optimal-transport resampling, the differentiable ensemble transform
    of Corenflos, Thornton, Deligiannidis & Doucet (2021):

        Cᵢⱼ = ‖xᵢ − xⱼ‖² / s,   s = (1/N²) Σᵢⱼ ‖xᵢ − xⱼ‖²,
        P = ``sinkhorn_plan``(log w̄, −log N, C, ε),   x̃ⱼ = N Σᵢ Pᵢⱼ xᵢ,

    i.e. X̃ = N Pᵀ X, the particles to be given uniform weights. P couples
    the weighted particles (rows, marginal w̄, exact) with the uniform
    measure on the same particles (columns, 1/N to ``tol``): the new mean
    (1/N) Σⱼ x̃ⱼ = Σᵢ w̄ᵢ xᵢ is the weighted mean to round-off, and each x̃ⱼ
    is a weighted average of the old particles (weights N Pᵢⱼ, summing to
    1 within ``tol``). As ε → 0, P tends to the optimal coupling of
    squared distance, and X̃ to the ensemble transform particle filter's
    (Reich 2013), whose covariance approaches the weighted covariance as N
    grows (at finite N, averaging shrinks it a little; larger ε shrinks it
    more, towards the weighted mean for ε → ∞). The cost is normalised by
    its mean s, so ε is scale-free (ε = 0.1: a tenth of the mean squared
    distance between particles); uniform weights give X̃ → X as ε → 0. The
    result is differentiable in E and log_w (``sinkhorn_plan``; the
    gradient is that of the finite Sinkhorn iteration, biased by ε).
    Costs O(iterations · N² n); forms the (N, N) plan.

    E: (N, n) particles; log_w: (N,) their log-weights (any
    normalisation); epsilon: > 0, relative regularisation; iterations:
    static int ≥ 1, the maximum number of Sinkhorn updates; tol: L1
    tolerance of the column marginal. Returns (N, n), with uniform weights.

    References: Corenflos, Thornton, Deligiannidis & Doucet (2021),
    "Differentiable particle filtering via entropy-regularized optimal
    transport", ICML, PMLR 139; Reich (2013), SIAM J. Sci. Comput. 35.
    """
    E = jnp.asarray(E)
    if E.ndim != 2:
        raise ValueError(f"E must have shape (N, n), got {E.shape}")
    N, _ = E.shape
    log_w = _check_log_weights(log_w, N).astype(E.dtype)
    return _transport(E, normalize_log_weights(log_w), epsilon, iterations, tol)[0]


def _transport(E, log_wbar, epsilon, iterations, tol):
    """(X̃, SinkhornResult) of ``ot_resample`` for normalised log-weights."""
    N = E.shape[0]
    sq = jnp.sum(E * E, axis=1)
    D = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (E @ E.T), 0.0)
    A = E - jnp.mean(E, axis=0)
    s = 2.0 * jnp.sum(A * A) / N  # = mean of D over all pairs
    s = jnp.where(s > 0, s, 1.0)
    res = sinkhorn_plan(log_wbar, uniform_log_weights(N, E.dtype), D / s, epsilon=epsilon,
                        iterations=iterations, tol=tol)
    return N * (jnp.exp(res.log_plan).T @ E), res


class EnsembleResampler:
    """Base of the resamplers that map ``(key, E, log_w) -> (E_new,
    log_w_new)`` (the ensemble and its normalised log-weights after
    resampling) instead of returning ancestor indices; ``bootstrap_pf``
    accepts them as its ``resampler``."""

    def __call__(self, key: Array, E: Array, log_w: Array) -> tuple[Array, Array]:
        raise NotImplementedError  # pragma: no cover - abstract


@dataclasses.dataclass(frozen=True)
class SoftResampler(EnsembleResampler):
    """Soft resampling as an ensemble resampler (``soft_resample``):
    ``(key, E, log_w) -> (E[a], log w̃)``.

    alpha: in [0, 1], the weight of w̄ in q = α w̄ + (1 − α)/N (an array
    leaf); resampler: the ancestor resampler drawing from q (static)."""

    alpha: ArrayLike = 0.5
    resampler: Callable = systematic

    def __post_init__(self):
        if not callable(self.resampler):
            raise TypeError(f"resampler must be a callable (key, log_w) -> ancestors, got "
                            f"{type(self.resampler).__name__}")
        if is_concrete(self.alpha) and not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")

    def __call__(self, key, E, log_w):
        ancestors, log_new = soft_resample(key, log_w, alpha=self.alpha,
                                           resampler=self.resampler)
        return jnp.asarray(E)[ancestors], log_new


@dataclasses.dataclass(frozen=True)
class OTResampler(EnsembleResampler):
    """Optimal-transport resampling as an ensemble resampler
    (``ot_resample``): ``(key, E, log_w) -> (N Pᵀ E, −log N)``; the key is
    unused (the transport is deterministic).

    epsilon: > 0, the relative entropic regularisation (array leaf);
    iterations: the maximum number of Sinkhorn updates (static int);
    tol: the L1 tolerance on the column marginal (array leaf)."""

    epsilon: ArrayLike = 0.1
    iterations: int = 200
    tol: ArrayLike = 1e-6

    def __post_init__(self):
        if not _is_count(self.iterations):
            raise ValueError(f"iterations must be an int >= 1, got {self.iterations!r}")
        if is_concrete(self.epsilon) and not float(self.epsilon) > 0.0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon!r}")

    def __call__(self, key, E, log_w):
        del key
        E = jnp.asarray(E)
        X = ot_resample(E, log_w, epsilon=self.epsilon, iterations=self.iterations,
                        tol=self.tol)
        return X, uniform_log_weights(E.shape[0], E.dtype)


register_dataclass(SoftResampler, data_fields=("alpha",), meta_fields=("resampler",))
register_dataclass(OTResampler, data_fields=("epsilon", "tol"), meta_fields=("iterations",))
