"""The B-localised gain shared by enkf and denkf, and the tapers' checks (private).

With X (N, n), Y (N, m) the state and observation anomalies divided by
sqrt(N − 1) and the tapers ``(ρ_xy (n, m), ρ_yy (m, m))`` of a
``localization`` object (``enkit.localization.adaptive``):

    K = (ρ_xy ∘ Xᵀ Y) (ρ_yy ∘ Yᵀ Y + R)⁻¹.

``ρ_yy ∘ Yᵀ Y`` has full rank in general, so the ensemble-space (Woodbury)
solve does not apply: the m×m matrix is factorised by Cholesky, cost
O(m³ + N m² + N n m), or, with ``method="pinv"``, pseudo-inverted through
its eigendecomposition (``enkit.linalg.symmetric_pinv_solve``). The n×n
state covariance is never formed.
"""

from __future__ import annotations

from jax import Array

from enkit.covariance import Covariance
from enkit.linalg import SOLVE_METHODS, check_solve_method, spd_solve_rows, symmetric_pinv_solve
from enkit.localization.adaptive import AdaptiveLocalization, GainLocalization

# What the schemes' ``localization=`` takes: any object with
# ``tapers(X, Y) -> (ρ_xy (n, m), ρ_yy (m, m))``; these two are provided.
Localization = GainLocalization | AdaptiveLocalization


def check_localization(localization, method: str = "auto", rcond=None) -> None:
    """Refuse what a localised analysis cannot honour, naming the argument."""
    if not callable(getattr(localization, "tapers", None)):
        raise TypeError(
            "localization must be None or an object with a tapers(X, Y) method, such as "
            "enkit.GainLocalization (taper matrices state_obs (n, m), obs_obs (m, m); "
            "build one with enkit.gain_localization) or enkit.AdaptiveLocalization, "
            f"got {type(localization).__name__}"
        )
    check_solve_method(
        method, rcond, allowed=tuple(a for a in SOLVE_METHODS if a != "ensemble"),
        reason="method='ensemble' (Woodbury) cannot be used with localization: the "
               "localised ρ_yy ∘ YᵀY has full rank")


def localized_gain_solve(
    localization: Localization, X: Array, Y: Array, R: Covariance, D: Array,
    method: str = "auto", rcond=None,
) -> tuple[Array, Array]:
    """``(Z, G)``: the localised innovation solve and cross-covariance.

    With ``C = ρ_yy ∘ Yᵀ Y + R`` and ``G = ρ_xy ∘ Xᵀ Y`` (n, m), returns
    ``Z = D C⁻¹`` (k, m) and ``G`` so that the rows of ``D Kᵀ`` are
    ``Z Gᵀ`` (k, n). X: (N, n), Y: (N, m), R: covariance operator, D: (k, m);
    method: "auto" or "observation" (Cholesky) or "pinv" (``D C⁺``, cut
    ``rcond``, see ``enkit.linalg.kalman_solve``).
    """
    rho_xy, rho_yy = localization.tapers(X, Y)
    C = rho_yy * (Y.T @ Y) + R.dense()
    if method == "pinv":
        Z = symmetric_pinv_solve(C, D, rcond)
    else:
        Z = spd_solve_rows(C, D)
    return Z, rho_xy * (X.T @ Y)
