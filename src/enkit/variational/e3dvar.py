"""E3DVAR: an ensemble analysis recentred on a hybrid-covariance 3D-Var mean.

ADAO's ``Hybrid="E3DVAR"`` (EnKF, ETKF and MLEF): the base ensemble analysis
is done, then its ensemble is moved so that its mean is the 3D-Var analysis
of the forecast mean with the hybrid background covariance

    B_h = (1 − a) B + a P_e,    P_e = Xᵀ X   (the forecast ensemble covariance),

a the equilibrium (ADAO's ``HybridCovarianceEquilibrium``); the anomalies
are the base analysis's. The 3D-Var is solved in the concatenated control
variable (Lorenc 2003; Wang, Snyder & Hamill 2007): with X the forecast
anomalies over sqrt(N − 1),

    x(v, w) = x̄_f + sqrt(1 − a) B^{1/2} v + sqrt(a) Xᵀ w,
    J(v, w) = ½ ‖v‖² + ½ ‖w‖² + ½ ‖y − h(x)‖²_{R⁻¹},

whose background term is ``½ (x − x̄_f)ᵀ B_h⁻¹ (x − x̄_f)`` (no n×n matrix is
formed), minimised by the L-BFGS of ``var3d``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._checks import check_number
from enkit._pytree import register_dataclass
from enkit.covariance import Covariance, Scalar, as_covariance
from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, prepare_analysis
from enkit.variational._common import (apply_h, check_count, check_tolerance, half_sq,
                                       lbfgs)

__all__ = ["COST_DECREASE_SCALE", "E3DVar", "e3dvar", "hybrid_3dvar_mean"]

#: ADAO's scale of HybridCostDecrementTolerance: L-BFGS-B's ``factr = tolerance · 10¹⁴``
#: stops at a relative cost decrease of ``factr · ε`` (ε of float64).
COST_DECREASE_SCALE = 1e14 * float(np.finfo(np.float64).eps)


def hybrid_3dvar_mean(xf: Array, X: Array, B: Covariance, y: Array, h, R: Covariance, *,
                      equilibrium, max_iterations: int, tolerance: float,
                      cost_tolerance: float | None, memory_size: int):
    """The 3D-Var analysis of the background ``xf`` with the hybrid covariance
    ``(1 − a) B + a XᵀX`` (a = equilibrium), in the concatenated control
    variable (see the module docstring); traceable.

    xf: (n,) background; X: (N, n) anomalies with ``XᵀX`` the ensemble
    covariance; B: covariance operator of dimension n; y: (m,); h: callable
    or (m, n) matrix; R: covariance operator of dimension m;
    max_iterations, tolerance, memory_size: as ``var3d``; cost_tolerance:
    ``lbfgs``'s relative cost-decrease stop (not ADAO-scaled) or None.
    Returns ``(x_a, iterations)``.
    """
    n = xf.shape[0]
    a = jnp.asarray(equilibrium, xf.dtype)
    static, ensemble = jnp.sqrt(1.0 - a), jnp.sqrt(a)

    def state(u):
        return xf + static * B.colorize(u[:n]) + ensemble * (u[n:] @ X)

    def cost(u):
        return half_sq(u) + half_sq(R.whiten(y - apply_h(h, state(u))))

    u, iterations = lbfgs(cost, jnp.zeros(n + X.shape[0], xf.dtype),
                          max_iterations=max_iterations, tolerance=tolerance,
                          memory_size=memory_size, cost_tolerance=cost_tolerance)
    return state(u), iterations


@dataclasses.dataclass(frozen=True)
class E3DVar:
    """An E3DVAR analysis scheme, ``scheme(E, y, h, R, *, key=None) -> Ea``
    (build it with ``e3dvar``, which documents the fields).

    A pytree: B and ``equilibrium`` are leaves (vmap over equilibria without
    recompiling), the base scheme and the minimiser's settings are static.
    """

    base: Callable[..., Array]
    B: Any
    equilibrium: Any = 0.5
    cost_tolerance: float | None = 1e-7
    max_iterations: int = 15000
    tolerance: float | None = None
    memory_size: int = 10

    def __post_init__(self):
        check_number("equilibrium", self.equilibrium, low=0.0, high=1.0, low_open=False)

    def __call__(self, E: Array, y: Array, h: ObservationOperator, R, *,
                 key: Array | None = None) -> Array:
        """The base analysis of (E, y, h, R), recentred on the hybrid 3D-Var mean.

        E: (N, n) forecast ensemble; y: (m,); h: callable on one member or
        (m, n) matrix; R: covariance operator or array; key: passed to the
        base scheme (required when it is stochastic, e.g. ``enkf``).
        Returns Eₐ: (N, n).
        """
        Ea = self.base(E, y, h, R, **({} if key is None else {"key": key}))
        E, y, _, R = prepare_analysis(E, y, h, R)
        if y.shape[0] == 0:  # no observations: the base analysis returned E
            return Ea
        n = E.shape[1]
        if isinstance(self.B, Covariance):
            B = as_covariance(self.B, n, name="B")
        else:
            B = Scalar(self.B, n)
        xf, X = scaled_anomalies(E)
        tolerance = check_tolerance("tolerance", self.tolerance, E.dtype)
        xa, _ = hybrid_3dvar_mean(xf, X, B.astype(E.dtype), y, h, R,
                                  equilibrium=self.equilibrium,
                                  max_iterations=self.max_iterations, tolerance=tolerance,
                                  cost_tolerance=None if self.cost_tolerance is None
                                  else self.cost_tolerance * COST_DECREASE_SCALE,
                                  memory_size=self.memory_size)
        return xa + (Ea - jnp.mean(Ea, axis=0))


register_dataclass(E3DVar, data_fields=["B", "equilibrium"],
                   meta_fields=["base", "cost_tolerance", "max_iterations", "tolerance",
                                "memory_size"])


def e3dvar(
    base: Callable[..., Array],
    B: Any,
    *,
    equilibrium: float = 0.5,
    cost_tolerance: float | None = 1e-7,
    max_iterations: int = 15000,
    tolerance: float | None = None,
    memory_size: int = 10,
) -> E3DVar:
    """The hybrid ensemble-3D-Var scheme E3DVAR built on an ensemble analysis.

    ``e3dvar(base, B)(E, y, h, R, key=key)`` first runs the base analysis
    ``Eₐ' = base(E, y, h, R, key=key)``, then minimises the 3D-Var cost of
    the forecast mean x̄_f with the hybrid background covariance

        B_h = (1 − a) B + a P_e,   P_e = (E − x̄_f)ᵀ (E − x̄_f) / (N − 1),

        J(x) = ½ (x − x̄_f)ᵀ B_h⁻¹ (x − x̄_f) + ½ (y − h(x))ᵀ R⁻¹ (y − h(x)),

    (in the concatenated control variable ``x = x̄_f + sqrt(1 − a) B^{1/2} v +
    sqrt(a) Xᵀ w``, so no inverse of B_h is formed) and returns
    ``Eₐ = x_a + (Eₐ' − mean(Eₐ'))``: the base analysis's anomalies about
    the 3D-Var mean x_a. With a = 0 x_a is ``var3d``'s analysis with B; with
    a = 1 and a linear h it is the Kalman mean of the forecast sample
    statistics (the ETKF/EnKF-with-exact-gain mean). For a linear h the
    minimiser is ``x̄_f + B_h Hᵀ (H B_h Hᵀ + R)⁻¹ (y − H x̄_f)``.

    base: an analysis scheme ``base(E, y, h, R, *, key=None) -> Ea`` (e.g.
    ``enkit.etkf``, ``enkit.enkf``, ``enkit.mlef``, or a
    ``functools.partial`` of one with options); B: the static background
    covariance (a Covariance operator of dimension n, or a positive scalar
    variance); equilibrium: a in [0, 1], the ensemble covariance's weight
    (ADAO's HybridCovarianceEquilibrium, default 0.5); cost_tolerance:
    ADAO's HybridCostDecrementTolerance (default 1e-7; None: no such
    stop), with ADAO's meaning: ADAO hands it to L-BFGS-B as ``factr =
    cost_tolerance · 10¹⁴``, which stops when an iteration's relative cost
    decrease ``(J_k − J_{k+1}) / max(|J_k|, |J_{k+1}|, 1)`` is at most
    ``factr · ε`` (ε = 2.2e-16, float64's machine epsilon), so the L-BFGS
    here stops at a relative decrease of ``cost_tolerance · 10¹⁴ · ε``
    (2.2e-9 for the default; ``COST_DECREASE_SCALE`` = 10¹⁴ ε);
    max_iterations: L-BFGS iterations at most (ADAO's
    HybridMaximumNumberOfIterations, default 15000, which bounds its cost
    evaluations); tolerance: also stop
    when the control-space gradient norm is at most this (None: ``ε^{3/4}``
    of E's dtype); memory_size: L-BFGS history length.
    Returns an ``E3DVar`` scheme (a pytree), usable in ``enkit.assimilate``,
    under ``jit`` and ``vmap``. Needs optax (``pip install enkit[optax]``).

    References: Hamill & Snyder (2000), MWR 128; Lorenc (2003), QJRMS 129;
    Wang, Snyder & Hamill (2007), MWR 135; ADAO (EDF), the ``E3DVAR``
    hybrid of its EnsembleKalmanFilter.
    """
    try:
        import optax  # noqa: F401
    except ImportError as err:  # pragma: no cover - optax is an optional extra
        raise ImportError("enkit.e3dvar needs optax: pip install 'enkit[optax]'") from err
    if not callable(base):
        raise TypeError(f"base must be an analysis scheme base(E, y, h, R, *, key=None) -> Ea, "
                        f"got {type(base).__name__}")
    if not isinstance(B, Covariance):
        try:
            arr = jnp.asarray(B)
        except (TypeError, ValueError) as err:
            raise TypeError(f"B must be a Covariance operator or an array, got "
                            f"{type(B).__name__}") from err
        if arr.ndim == 0:
            check_number("B", B, low=0.0, what="a positive scalar variance")
        else:
            B = as_covariance(arr, arr.shape[0], name="B")
    if cost_tolerance is not None:
        cost_tolerance = check_tolerance("cost_tolerance", cost_tolerance, np.float64)
    if tolerance is not None:
        tolerance = check_tolerance("tolerance", tolerance, np.float64)
    return E3DVar(base, B, equilibrium,
                  cost_tolerance=cost_tolerance,
                  max_iterations=check_count("max_iterations", max_iterations),
                  tolerance=tolerance,
                  memory_size=check_count("memory_size", memory_size))
