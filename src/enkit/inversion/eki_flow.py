"""The continuous-time EKI flow (Schillings & Stuart 2017), integrated with diffrax.

    duᵢ/dt = C^{uG}(t) Γ⁻¹ (y − G(uᵢ)),   i = 1, …, N,

with the sample covariance C^{uG} of the current ensemble (N − 1). It is
the Δt → 0 limit of deterministic EKI (``EKI(stochastic=False)``, whose
step Δt is a tamed Euler step of this flow). On a linear map G(u) = A u
every member's misfit and the mean's misfit decrease monotonically, and as
t → ∞ each member tends to the least-squares solution within its affine
span (the subspace property); ``eki_flow_linear`` is the closed form.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite
from enkit.covariance import Covariance, as_covariance
from enkit.ensemble import scaled_anomalies
from enkit.inversion._common import check_ensemble, check_initial_spread

__all__ = ["EKIFlowResult", "eki_flow", "eki_flow_linear", "eki_flow_vector_field"]


class EKIFlowResult(NamedTuple):
    """The EKI flow at the requested times.

    times: (T,); ensembles: (T, N, p); misfit: (T,) ‖Γ^{-1/2}(y − Ḡ)‖ of the
    mean output of each saved ensemble; num_steps: accepted plus rejected
    steps of the integrator (int scalar).
    """

    times: Array
    ensembles: Array
    misfit: Array
    num_steps: Array


def eki_flow_vector_field(U: Array, G: Array, y: Array, noise: Covariance) -> Array:
    """The EKI flow's velocity ``C^{uG} Γ⁻¹ (y − G(uᵢ))`` for every member.

    U: (N, p) ensemble; G: (N, d) its outputs; y: (d,); noise: Γ.
    Returns (N, p), computed as ``((y − G) Γ⁻¹ Yᵀ) X`` with X, Y the
    anomalies divided by √(N − 1): O(N² (p + d)), no (p, d) matrix.
    """
    _, X = scaled_anomalies(U)
    _, Y = scaled_anomalies(G)
    W = noise.solve(y - G)  # rows Γ⁻¹ (y − G(uᵢ))
    return (W @ Y.T) @ X


def eki_flow(forward: Callable[[Array], Array], ensemble: ArrayLike, y: ArrayLike, noise,
             t1: float, *, saveat: ArrayLike | None = None, rtol: float = 1e-6,
             atol: float = 1e-9, dt0: float | None = None, max_steps: int = 16384,
             solver=None) -> EKIFlowResult:
    """Integrate the continuous-time EKI flow from t = 0 to ``t1``.

        duᵢ/dt = C^{uG} Γ⁻¹ (y − G(uᵢ))   (Schillings & Stuart 2017)

    forward: JAX-traceable G, (p,) -> (d,), applied to every member with
    ``jax.vmap`` (black-box models cannot enter an ODE solver: use
    ``EKI(stochastic=False)`` with small Δt through ``calibrate``);
    ensemble: (N, p) initial members; y: (d,) data; noise: Γ, a covariance
    operator or an array (``as_covariance``); t1: final time > 0;
    saveat: increasing times in [0, t1] at which to return the ensemble
    (default ``[0, t1]``); rtol, atol: tolerances of the adaptive step
    control (diffrax ``PIDController``); dt0: first step (default: chosen
    by the controller); max_steps: the integrator's step budget (an error
    is raised when it runs out, which is also what a forward map that
    turns non-finite on the way leads to: every such step is rejected);
    solver: a diffrax solver (default ``diffrax.Tsit5()``, an explicit
    Runge–Kutta 5(4) pair).

    The flow slows as the ensemble collapses (C^{uG} ∝ 1/t on a linear
    problem), so an adaptive step grows with t and long horizons (t1 =
    10⁸) cost tens of steps per decade. Requires ``diffrax`` (``pip install
    'enkit[ode]'``). Returns an ``EKIFlowResult``.

    References: Schillings & Stuart (2017), SIAM J. Numer. Anal. 55, 1264
    (the flow and its linear analysis); Kidger (2021), diffrax.
    """
    try:
        import diffrax
    except ImportError as err:  # pragma: no cover - diffrax is in the test extra
        raise ImportError("eki_flow integrates with diffrax: pip install 'enkit[ode]' "
                          "(or pip install diffrax)") from err
    if not callable(forward):
        raise TypeError(f"forward must be a callable (p,) -> (d,), got {type(forward).__name__}")
    U0 = check_ensemble(ensemble)
    check_initial_spread(U0)
    dtype = U0.dtype
    G0 = jax.vmap(forward)(U0)
    if G0.ndim != 2:
        raise ValueError(f"forward must map (p,) to (d,), got outputs of shape {G0.shape[1:]}")
    if not bool(jnp.all(jnp.isfinite(G0))):
        bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(G0)), axis=1)).tolist()
        raise ValueError(f"forward gives non-finite outputs at the initial members {bad}")
    d = G0.shape[1]
    y = jnp.asarray(y, dtype)
    if y.shape != (d,):
        raise ValueError(f"y must have shape (d,) = ({d},) to match forward, got {y.shape}")
    check_finite("y", y)
    noise = as_covariance(noise, d, name="noise").astype(dtype)
    t1 = float(t1)
    if not np.isfinite(t1) or t1 <= 0:
        raise ValueError(f"t1 must be finite and > 0, got {t1}")
    ts = np.asarray([0.0, t1] if saveat is None else saveat, dtype=float)
    if ts.ndim != 1 or ts.size == 0 or np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] > t1:
        raise ValueError(f"saveat must be increasing times in [0, t1] = [0, {t1}], got {ts}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be finite and > 0, got {v}")
    if dt0 is not None and not (np.isfinite(dt0) and dt0 > 0):
        raise ValueError(f"dt0 must be None or finite and > 0, got {dt0}")
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps}")
    solver = diffrax.Tsit5() if solver is None else solver
    return _integrate(forward, U0, y, noise, jnp.asarray(ts, dtype), t1, rtol, atol, dt0,
                      int(max_steps), solver)


def _integrate(forward, U0, y, noise, ts, t1, rtol, atol, dt0, max_steps, solver):
    import diffrax

    def field(t, U, args):
        y, noise = args
        return eki_flow_vector_field(U, jax.vmap(forward)(U), y, noise)

    @jax.jit
    def run(U0, y, noise, ts):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), solver, t0=0.0, t1=t1, dt0=dt0, y0=U0, args=(y, noise),
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps, throw=False)
        Us = sol.ys
        Gbar = jnp.mean(jax.vmap(jax.vmap(forward))(Us), axis=1)
        r = noise.whiten(y - Gbar)
        return Us, jnp.sqrt(jnp.sum(r * r, axis=-1)), sol.stats["num_steps"], sol.result

    Us, mis, steps, result = run(U0, y, noise, ts)
    if result != diffrax.RESULTS.successful:
        raise RuntimeError(
            f"eki_flow: the integrator stopped before t1 = {t1} ({result}); raise max_steps "
            f"(now {max_steps}), loosen rtol/atol, or check that forward is finite near the "
            "members (the step controller rejects every step that meets a NaN or inf)")
    return EKIFlowResult(ts, Us, mis, steps)


def eki_flow_linear(A: ArrayLike, ensemble: ArrayLike, y: ArrayLike, noise,
                    t: ArrayLike) -> Array:
    """The EKI flow's exact solution at time t for a linear map G(u) = A u.

    With X₀ the initial anomalies divided by √(N − 1), B = Aᵀ Γ⁻¹ A and
    S = X₀ᵀ B X₀ = V diag(s) Vᵀ, every member moves as

        uᵢ(t) = uᵢ(0) − X₀ᵀ V diag(fₖ(t)) Vᵀ X₀ ∇Φ(uᵢ(0)),
        fₖ(t) = (1 − (1 + 2 t sₖ)^{-1/2}) / sₖ   (t for sₖ = 0),

    with Φ(u) = ½‖Γ^{-1/2}(y − A u)‖²: the anomalies evolve as
    X(t) = (I + 2tS)^{-1/2} X₀ in ensemble space. As t → ∞ (``t=inf``),
    fₖ → 1/sₖ, and each member lands on the least-squares solution within
    ``uᵢ(0) + span(X₀)``. Used to test ``eki_flow``; derived in its test
    module's docstring.

    A: (d, p); ensemble: (N, p); y: (d,); noise: Γ; t: scalar ≥ 0 (or inf).
    Returns (N, p).
    """
    U0 = jnp.asarray(ensemble)
    A = jnp.asarray(A, U0.dtype)
    noise = as_covariance(noise, A.shape[0], name="noise").astype(U0.dtype)
    _, X0 = scaled_anomalies(U0)  # (N, p), rows: anomalies
    W = noise.whiten(A.T).T @ X0.T  # Γ^{-1/2} A X₀ᵀ, (d, N)
    S = W.T @ W
    s, V = jnp.linalg.eigh(S)
    t = jnp.asarray(t, U0.dtype)
    tiny = s <= jnp.finfo(U0.dtype).eps * jnp.max(s) * S.shape[0]
    s_safe = jnp.where(tiny, 1.0, s)
    # t = inf gives (1 + inf)^{-1/2} = 0, hence fₖ = 1/sₖ, in the same formula;
    # fₖ = 0 on S's null space, where ∇Φ has no component
    f = jnp.where(tiny, 0.0, (1.0 - (1.0 + 2.0 * t * s_safe) ** -0.5) / s_safe)
    grad = noise.solve(U0 @ A.T - y) @ A  # rows ∇Φ(uᵢ(0))
    return U0 - ((grad @ X0.T) @ V * f) @ V.T @ X0
