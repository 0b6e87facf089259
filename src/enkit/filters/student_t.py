"""Outlier-robust EnKF analysis with Student-t observation errors, by
variational-Bayes reweighting of R (Piché, Särkkä & Hartikainen 2012;
Roth, Özkan & Gustafsson 2013)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array

from enkit._checks import is_concrete
from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, observe, prepare_analysis
from enkit.filters.etkf import etkf

__all__ = ["student_t_enkf", "student_t_weight"]


def student_t_weight(nu, m: int, chi2) -> Array:
    """The expected precision scale of a Student-t error with ν degrees of
    freedom in m dimensions given the expected squared Mahalanobis residual
    χ²: E[λ] = (ν + m)/(ν + χ²); exactly 1 for ν = inf."""
    nu = jnp.asarray(nu, jnp.result_type(chi2))
    finite = jnp.isfinite(nu)
    safe = jnp.where(finite, nu, 1.0)
    return jnp.where(finite, (safe + m) / (safe + chi2), jnp.ones_like(chi2))


def student_t_enkf(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | int | None = None,
    nu: float | Array = 4.0,
    iterations: int = 5,
    scheme: Callable = etkf,
) -> Array:
    """EnKF analysis for Student-t observation errors, y = h(x) + v,
    v ~ t_ν(0, R) (R the scale matrix), written as the Gaussian scale
    mixture v | λ ~ N(0, R/λ), λ ~ Gamma(ν/2, ν/2), and solved by the
    variational-Bayes fixed point of Piché, Särkkä & Hartikainen (2012):
    starting from λ = 1 (the Gaussian analysis), repeat ``iterations``
    times

        Eₐ = scheme(E, y, h, R/λ),
        χ² = ‖R^{-½}(y − ȳₐ)‖² + tr(R^{-½} Yₐ Yₐᵀ R^{-½})
           = E_q[(y − h(x))ᵀ R⁻¹ (y − h(x))],
        λ  = (ν + m) / (ν + χ²),

    with ȳₐ and Yₐ the mean and (N − 1)-scaled anomalies of h(Eₐ) (the
    expectation under the analysis ensemble), and return the analysis of
    the last λ. An observation far from the ensemble (χ² ≫ m) gets its
    error variance inflated by 1/λ ≈ χ²/(ν + m): it moves the analysis
    far less than under the Gaussian likelihood (the analysis mean stays
    bounded as the outlier grows, where the Gaussian one follows it
    linearly); a consistent observation (χ² ≈ m) keeps λ ≈ 1. As ν → ∞,
    λ = 1 and the result is ``scheme``'s: ``nu=jnp.inf`` gives it exactly.
    R/λ enters as the equivalent scaled problem (√λ y, √λ h, R), so R keeps
    its structure (a diagonal R stays diagonal).

    The base scheme is the deterministic ``etkf`` by default (then no key
    is needed and ν = inf reproduces ``etkf`` to the bit); any scheme with
    the uniform signature works, e.g. ``scheme=enkf`` (stochastic, key
    required: every iteration reuses the same key, hence the same
    perturbations, so the fixed point is that of one smooth map of λ). One
    λ is shared by all m observations (the multivariate t of Roth, Özkan &
    Gustafsson 2013); for independent heavy-tailed errors per observation,
    assimilate them one at a time (``ensrf_serial``-style batches) with
    this analysis.

    E: (N, n) forecast ensemble; y: (m,); h: callable on one member or
    (m, n) matrix; R: covariance operator or array (m,), the scale of the
    t errors (their covariance is ν/(ν − 2)·R for ν > 2); key: passed to
    ``scheme`` (None for the deterministic default); nu: > 0, the degrees
    of freedom (array: may be traced or vmapped; inf: Gaussian); iterations:
    int ≥ 1 (static), the number of λ updates (each one analysis; a few
    suffice: the fixed point contracts fast unless ν is tiny); scheme: the
    Gaussian analysis. Jit-compatible and differentiable (the iteration is
    a ``lax.scan``). Returns the (N, n) analysis ensemble.

    References: Piché, Särkkä & Hartikainen (2012), "Recursive outlier-
    robust filtering and smoothing for nonlinear systems using the
    multivariate Student-t distribution", IEEE MLSP; Roth, Özkan &
    Gustafsson (2013), "A Student's t filter for heavy tailed process and
    measurement noise", IEEE ICASSP; Roth, Hendeby, Fritsche & Gustafsson
    (2017), "The Ensemble Kalman filter: a signal processing perspective",
    EURASIP J. Adv. Signal Process. 2017:56 (the EnKF as a linear
    regression update, which this reweighting wraps).
    """
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    if not callable(scheme):
        raise TypeError(f"scheme must be an analysis scheme(E, y, h, R, *, key), got "
                        f"{type(scheme).__name__}")
    if is_concrete(nu) and not float(nu) > 0.0:
        raise ValueError(f"nu must be > 0 (degrees of freedom; inf for Gaussian errors), "
                         f"got {nu!r}")
    E, y, HE, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return E
    m = y.shape[0]
    H = h if callable(h) else jnp.asarray(h, E.dtype)

    def analysis(lam):
        s = jnp.sqrt(lam)
        if callable(H):
            hs = (lambda x: s * H(x)) if not _is_one(lam) else H
        else:
            hs = H if _is_one(lam) else s * H
        ys = y if _is_one(lam) else s * y
        return scheme(E, ys, hs, R, key=key)

    def step(lam, _):
        Ea = analysis(lam)
        ybar, Y = scaled_anomalies(observe(h, Ea))
        r = R.whiten(y - ybar)
        chi2 = jnp.sum(r * r) + jnp.sum(R.whiten(Y) ** 2)
        return student_t_weight(nu, m, chi2).astype(E.dtype), None

    one = jnp.ones((), E.dtype)
    if is_concrete(nu) and jnp.isinf(nu):
        return analysis(1.0)  # the Gaussian analysis itself, bit for bit
    lam, _ = jax.lax.scan(step, one, None, length=iterations)
    return analysis(lam)


def _is_one(lam) -> bool:
    """True for the Python float 1.0 (the ν = inf shortcut), never for arrays."""
    return isinstance(lam, float) and lam == 1.0
