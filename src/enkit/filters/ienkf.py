"""Iterative ensemble Kalman filter, IEnKF (Sakov, Oliver & Bertino 2012):
Gauss–Newton in ensemble space, transform and bundle variants."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._checks import is_concrete
from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, observe, prepare_analysis
from enkit.filters._iterative import (
    IterationInfo,
    check_iteration_options,
    iterate,
    no_iterations,
)
from enkit.linalg import inverse_sqrt_identity_plus

__all__ = ["ienkf"]


def ienkf(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
    bundle_epsilon: float | None = None,
    max_iterations: int = 20,
    tolerance: float | None = 1e-6,
    return_info: bool = False,
) -> Array | tuple[Array, IterationInfo]:
    """IEnKF analysis: Gauss–Newton minimisation in ensemble space.

    With x̄, X the mean and normalised anomalies (rows, divided by
    sqrt(N − 1)) of E and ``x = x̄ + Xᵀ w``, the analysis minimises

        J(w) = ½ wᵀw + ½ ‖y − h(x̄ + Xᵀ w)‖²_R

    by Gauss–Newton iterations from w = 0, T = I. Iteration i rebuilds an
    ensemble around the current estimate, observes it, and takes one step:

        Eᵢ = x + sqrt(N − 1) T X        (transform variant)
        Eᵢ = x + sqrt(N − 1) ε X        (bundle variant, ε = bundle_epsilon)
        ȳ, Yᵢ = mean and normalised anomalies of h(Eᵢ)
        S = R^{-1/2} T⁻¹ Yᵢ  (transform)  or  R^{-1/2} Yᵢ / ε  (bundle)
        Δw = (I + S Sᵀ)⁻¹ (S R^{-1/2}(y − ȳ) − w),   w ← w + Δw,
        T = (I + S Sᵀ)^{-1/2},

    until ``‖Δw‖ ≤ tolerance`` or ``max_iterations``. S is the sensitivity
    of the observations to w, estimated from the ensemble: the transform
    variant de-conditions anomalies that were rescaled by the current T
    (an average sensitivity over the analysis spread), the bundle variant
    uses a small ε so that S approaches the tangent-linear sensitivity at x.
    The analysis is ``Eₐ = x̄ + Xᵀ w + sqrt(N − 1) T X`` with the last T
    (symmetric square root, so the mean stays x). The first iteration of the
    transform variant is the ETKF (it reuses h(E)); for linear h the
    second iteration changes nothing, so the result is the Kalman update of
    the sample statistics.

    The iteration is plain Gauss–Newton without step control, so it is not
    guaranteed to converge: with a strongly nonlinear h and few members the
    transform variant can stall or run away (curvature of h leaks into
    ensemble directions that T has shrunk, and T⁻¹ amplifies it); the bundle
    variant is more robust. ``return_info=True`` reports the last increment.
    An iteration that produces non-finite values is discarded (see
    ``IterationInfo``).

    h may include a model propagation (``h = h_obs ∘ M`` applied to members
    at the previous analysis time, as in the paper): Eₐ is then the
    ensemble at the time of E, conditioned on the later observation, and
    the caller propagates it. Nothing is assumed of h beyond being a
    function of one member.

    E: (N, n); y: (m,); h: callable on one member or (m, n) matrix;
    R: covariance operator or array; key: unused (deterministic scheme);
    bundle_epsilon: None for the transform variant, or ε > 0 for the bundle
    variant (Sakov et al. use 1e-4); max_iterations: Gauss–Newton iterations
    at most (1 gives the ETKF in the transform variant); tolerance: stop when
    ``‖Δw‖ ≤ tolerance`` (w has prior covariance I), None runs all
    ``max_iterations`` in a reverse-mode differentiable ``fori_loop``;
    return_info: also return an ``IterationInfo``.
    Returns Eₐ: (N, n) (and the info).

    Reference: Sakov, Oliver & Bertino (2012), Mon. Wea. Rev. 140,
    1988–2004.
    """
    del key
    check_iteration_options(max_iterations, tolerance, return_info)
    if bundle_epsilon is not None and is_concrete(bundle_epsilon):
        eps_arr = np.asarray(bundle_epsilon)
        if eps_arr.ndim != 0 or not np.isfinite(eps_arr) or eps_arr <= 0:
            raise ValueError(
                f"bundle_epsilon must be None or a number > 0, got {bundle_epsilon!r}"
            )
    E, y, HE, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return (E, no_iterations(E.dtype)) if return_info else E
    N = E.shape[0]
    c = jnp.sqrt(jnp.asarray(N - 1, E.dtype))
    xbar, X = scaled_anomalies(E)
    eye = jnp.eye(N, dtype=E.dtype)
    bundle = bundle_epsilon is not None
    if bundle:
        eps = jnp.asarray(bundle_epsilon, E.dtype)

    def gauss_newton(w, HEi, Tinv):
        ybar, Yi = scaled_anomalies(HEi)
        S = R.whiten(Yi / eps if bundle else Tinv @ Yi)
        d = R.whiten(y - ybar)
        A = S @ S.T
        T = inverse_sqrt_identity_plus(A)  # (I + A)^{-1/2}
        dw = T @ (T @ (S @ d - w))  # (I + A)⁻¹ (S d − w)
        Tinv = Tinv if bundle else (eye + A) @ T  # (I + A)^{1/2}
        return (w + dw, T, Tinv), jnp.linalg.norm(dw)

    def step(state):
        w, T, Tinv = state
        x = xbar + w @ X
        Ei = x + c * (eps * X if bundle else T @ X)
        return gauss_newton(w, observe(h, Ei), Tinv)

    w0 = jnp.zeros(N, E.dtype)
    if bundle:
        state, info = iterate(
            step, (w0, eye, eye), tolerance=tolerance, max_iterations=max_iterations
        )
    else:
        # The first ensemble is E itself: reuse h(E) from prepare_analysis.
        state, inc = gauss_newton(w0, HE, eye)
        state, info = iterate(
            step, state, tolerance=tolerance, max_iterations=max_iterations,
            done=1, increment=inc,
        )
    w, T, _ = state
    Ea = xbar + w @ X + c * (T @ X)
    return (Ea, info) if return_info else Ea
