"""Ensemble Kalman inversion (Iglesias, Law & Stuart 2013)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from enkit.covariance import Covariance
from enkit.ensemble import add_transform, scaled_anomalies
from enkit.inversion._common import (
    EnsembleProcess,
    EnsembleState,
    InversionInfo,
    check_bool,
    check_dt,
    check_process_solve,
    check_tell,
    iteration_key,
    misfit,
    new_state,
    register,
)
from enkit.linalg import kalman_solve_weights, symmetric_pinv_solve
from enkit.localization.sec import Localizer

__all__ = ["EKI", "eki_update"]


def eki_update(U: Array, G: Array, y: Array, noise: Covariance, dt: Array,
               xi: Array | None = None, *, localizer: Localizer | None = None,
               key: Array | None = None, method: str = "auto",
               rcond: float | Array | None = None, overwrite: bool = False) -> Array:
    """One EKI update of the ensemble U (pure function, no checks).

        uᵢ ← uᵢ + C^{uG} (C^{GG} + Δt⁻¹Γ)⁻¹ (y + ηᵢ − G(uᵢ)),  ηᵢ = Δt^{-1/2} ξᵢ,

    with sample covariances normalised by N − 1. It is evaluated as
    ``Xᵀ Y' (Y'ᵀ Y' + Γ)⁻¹ (√Δt (y − G(uᵢ)) + ξᵢ)`` with ``Y' = √Δt Y`` (X, Y
    the anomalies divided by √(N − 1)), which is the same update with no
    division by Δt, so Δt = 0 is a zero step. The innovation solve gives
    the weights ``D C⁻¹ Y'ᵀ`` directly (``enkit.linalg.kalman_solve_weights``;
    Woodbury when d > N: a diagonal Γ is never densified, and no (N, N, d)
    product follows the N×N solve).

    U: (N, p); G: (N, d); y: (d,); noise: Γ, dimension d; dt: Δt ≥ 0;
    xi: (N, d) draws from N(0, Γ), or None for the deterministic update;
    method: innovation solve, see ``enkit.linalg.kalman_solve`` (static;
    ``"pinv"``, with its eigenvalue cut ``rcond``, for a singular
    ``Δt C^{GG} + Γ``). Returns (N, p).

    With a ``localizer`` (``enkit.localization.sec``) the covariances are
    tapered elementwise,

        uᵢ ← uᵢ + (ρ_uG ∘ C^{uG}) ((ρ_GG ∘ C^{GG}) + Δt⁻¹Γ)⁻¹ (y + ηᵢ − G(uᵢ)),

    evaluated as ``√Δt (ρ_uG ∘ C^{uG}) (Δt ρ_GG ∘ C^{GG} + Γ)⁻¹ (√Δt (y −
    G(uᵢ)) + ξᵢ)`` (again a zero step at Δt = 0) with the explicit (p, d)
    and (d, d) matrices: O(p d + d²) memory and O(N (p d + d²) + d³) time,
    Γ densified, instead of the O(N² d) ensemble-space solve. The (d, d)
    system is solved by LU, since a tapered C^{GG} need not stay positive
    semi-definite; with ``method="pinv"`` it is pseudo-inverted instead
    (``enkit.linalg.symmetric_pinv_solve``). key: PRNG key of a random
    localiser (else unused).

    Compiled with ``jax.jit`` (inlined when called inside a traced function),
    so eager callers (``tell`` with NumPy outputs of a black-box model) get
    the fused program, not one dispatch per operation.

    overwrite: reuse U's buffer for the result (static; default False). The
    compiled update then donates U (an eager call deletes the array passed
    as U) and applies ``U + T U`` in column blocks written back into it
    (``enkit.ensemble.add_transform(..., blocked=True)``), so no (N, p)
    array is allocated: at large p a fresh (N, p) output costs one
    first-touch page fault per 4 kB page, kernel time that grows with the
    machine's load. The result is the same update. Inside a traced function
    the donation is the caller's: donate the ensemble at the outer
    ``jax.jit`` (``donate_argnums``), else XLA copies U before the in-place
    loop.
    """
    fn = _eki_update_donating if overwrite else _eki_update_jit
    return fn(U, G, y, noise, dt, xi, localizer=localizer, key=key, method=method,
              rcond=rcond, overwrite=overwrite)


def _eki_update(U, G, y, noise, dt, xi=None, *, localizer=None, key=None, method="auto",
                rcond=None, overwrite=False):
    """The update of ``eki_update`` (traced by its two compiled forms)."""
    if localizer is not None:
        return _localized_update(U, G, y, noise, dt, xi, localizer, key, method, rcond)
    _, Y = scaled_anomalies(G)
    sdt = jnp.sqrt(dt)
    Ys = sdt * Y
    D = sdt * (y - G)
    if xi is not None:
        D = D + xi
    # The weights M = D C⁻¹ Ysᵀ (rows) and M X = T U with T = M Π / sqrt(N - 1),
    # Π the centring projector: one (N, N) x (N, p) product on U itself, no
    # (N, p) anomaly array (the product dominates for large p).
    M = kalman_solve_weights(Ys, noise, D, method=method, rcond=rcond)
    T = (M - jnp.mean(M, axis=1, keepdims=True)) / jnp.sqrt(jnp.asarray(U.shape[0] - 1.0, U.dtype))
    return add_transform(T, U, blocked=overwrite)


_eki_update_jit = jax.jit(_eki_update, static_argnames=("method", "overwrite"))
_eki_update_donating = jax.jit(_eki_update, static_argnames=("method", "overwrite"),
                               donate_argnums=0)


def _localized_update(U, G, y, noise, dt, xi, localizer, key, method="auto", rcond=None):
    """The localised EKI update of ``eki_update`` (explicit matrices)."""
    C_uG, C_GG = localizer.localize(key, U, G)
    sdt = jnp.sqrt(dt)
    D = sdt * (y - G)
    if xi is not None:
        D = D + xi
    S = dt * C_GG + noise.dense()
    if method == "pinv":
        return U + sdt * symmetric_pinv_solve(S, D, rcond) @ C_uG.T
    Z = jnp.linalg.solve(S, D.T)  # (d, N): columns S⁻¹ Dᵢ
    return U + sdt * (C_uG @ Z).T


@dataclasses.dataclass(frozen=True)
class EKI(EnsembleProcess):
    """Ensemble Kalman inversion (Iglesias, Law & Stuart 2013).

    Each ``tell`` moves every member with the Kalman gain of the ensemble's
    sample statistics (N − 1 normalisation) and a noise inflated by 1/Δt:

        uᵢ ← uᵢ + C^{uG} (C^{GG} + Δt⁻¹Γ)⁻¹ (y + ηᵢ − G(uᵢ)),   ηᵢ ~ N(0, Δt⁻¹Γ).

    With Δt = 1 one step is the stochastic EnKF analysis of the prior
    ensemble; iterating drives the ensemble towards the least-squares
    solution inside the affine span of the initial ensemble (the subspace
    property). ``stochastic=False`` omits ηᵢ (the deterministic variant).

    stochastic: draw the perturbations ηᵢ (static; then ``init`` needs a key).
    localizer: None (default: the ensemble-space update, cost O(N² d)) or a
    localiser of ``enkit.localization.sec`` (``Delta``, ``RBF``,
    ``BernoulliDropout``, ``SEC``, ``SECFisher``, ``SECNice``,
    ``FixedTaper``; a pytree leaf) that tapers C^{uG} and C^{GG} elementwise
    (see ``eki_update``: explicit (p, d) and (d, d) matrices; the index
    tapers ``Delta``, ``RBF`` and ``BernoulliDropout`` leave C^{GG}
    untouched, ``Delta`` and ``RBF`` unless ``taper_outputs=True``; untouched,
    steps of Δt ~ 1 can diverge on a strongly nonlinear map, see
    ``enkit.localization.sec``). A random
    localiser (``BernoulliDropout``) needs a key at ``init`` even when
    ``stochastic=False``: iteration n then splits its key ``kₙ = fold_in(key,
    n)`` into ``fold_in(kₙ, 0)`` for the perturbations ξᵢ and ``fold_in(kₙ,
    1)`` for the localiser. A deterministic localiser takes no key, and ξᵢ
    draw from kₙ exactly as without a localiser.
    method: innovation solve, see ``enkit.linalg.kalman_solve`` (static;
    default "auto"); ``"pinv"`` pseudo-inverts a singular ``Δt C^{GG} + Γ``
    (e.g. duplicated data with a zero or negligible noise) with the relative
    eigenvalue cut rcond (static float; None: ``enkit.linalg.default_rcond``).
    With a localizer only "auto" (LU of the tapered matrix) and "pinv" apply.
    overwrite: write the new ensemble into the buffer of the told state's
    ensemble (static; default False): an eager ``tell`` donates it (the
    state passed to ``tell`` is invalid afterwards); inside a traced
    function donate the state at the outer jit
    (``jax.jit(step, donate_argnums=0)``). No (N, p) array is allocated per
    iteration (see ``eki_update``).

    References: Iglesias, Law & Stuart (2013), Inverse Problems 29, 045001;
    localisation for EKI: Tong & Morzfeld (2022), arXiv:2201.10821.
    """

    stochastic: bool = True
    localizer: Localizer | None = None
    method: str = "auto"
    rcond: float | None = None
    overwrite: bool = False

    def __post_init__(self):
        check_bool("stochastic", self.stochastic)
        check_bool("overwrite", self.overwrite)
        if self.localizer is None:
            check_process_solve(self)
        else:
            check_process_solve(self, ("auto", "pinv"), "with a localizer the tapered "
                                "matrix is solved by LU ('auto') or pseudo-inverted ('pinv')")
        if self.localizer is not None and not isinstance(self.localizer, Localizer):
            raise TypeError(
                "localizer must be None or a localiser of enkit.localization.sec "
                f"(Delta, RBF, BernoulliDropout, SEC, SECFisher, SECNice, FixedTaper), "
                f"got {type(self.localizer).__name__}"
            )

    @property
    def needs_key(self) -> bool:
        """A key is needed for the perturbations or a random localiser."""
        return self.stochastic or (self.localizer is not None and self.localizer.needs_key)

    def tell(self, state: EnsembleState, G, y, noise, *, dt=1.0
             ) -> tuple[EnsembleState, InversionInfo]:
        """One EKI iteration from the forward outputs of ``ask(state)``.

        G: (N, d) outputs of the asked members; y: (d,) data; noise: Γ, a
        covariance operator of dimension d or an array (``as_covariance``);
        dt: Δt ≥ 0 (Δt = 0 leaves the ensemble unchanged).
        Returns ``(state, InversionInfo)``.
        """
        U = state.ensemble
        G, y, noise = check_tell(G, y, noise, U.shape[0], U.dtype)
        dt = check_dt(dt, U.dtype)
        k = iteration_key(state) if state.key is not None else None
        k_loc = None
        if self.localizer is not None and self.localizer.needs_key:
            k, k_loc = jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)
        xi = noise.sample(k, (U.shape[0],)) if self.stochastic else None
        info = InversionInfo(misfit(G, y, noise), dt)
        new = eki_update(U, G, y, noise, dt, xi, localizer=self.localizer, key=k_loc,
                         method=self.method, rcond=self.rcond, overwrite=self.overwrite)
        return new_state(state, new, dt, guard=False), info


register(EKI, data=["localizer"], meta=["stochastic", "method", "rcond", "overwrite"])
