"""ADAO's EnsembleKalmanFilter variants, each mapped to an enkit scheme.

=================  ===========================================  ==========================
ADAO Variant       enkit scheme                                 notes on ADAO 9.16
=================  ===========================================  ==========================
EnKF-05            ``enkf`` (draws not centred, gain with R)    same analysis, own draws
EnKF-16, EnKF,     ``enkf(center_perturbations=True)``          ADAO's gain inverts the
StochasticEnKF                                                  sample D Dᵀ: singular
                                                                (NaN/inf) when p ≥ N
ETKF-KFF, ETKF     ``etkf``                                     same analysis; ADAO starts
                                                                from N copies of Xb
ETKF-VAR           ``etkf`` (its cost has the ETKF minimiser)   ADAO minimises by CG to
                                                                gtol 1e-5; identical start
ETKF-N-11          ``etkf_n`` (Bocquet 2011: κ = N, full        ADAO's Hessian has w·w I
                   Hessian)                                     for the w wᵀ term
ETKF-N-15          ``etkf_n(mode_correction=True)``             ADAO's κ = N + 1; Jo
                                                                elementwise for p > 1
ETKF-N-16, ETKF-N  ``etkf_n(mode_correction=True,               ADAO's κ = N + 1, own
                   hessian="approximate")`` (DAPPER's EnKF-N)   scaling of w
MLEF-T, MLEF       ``mlef``                                     same analysis (linear h);
                                                                identical start
MLEF-B             ``mlef`` (transform form; the bundle form    identical start
                   agrees for linear h)
IEnKF-T, IEnKF     ``over_window(ienkf)``                       same analysis
IEnKF-B, IEKF      ``over_window(ienkf(bundle_epsilon=          same analysis (linear)
                   1e-3 / sqrt(N − 1)))`` (ADAO's ε on
                   normalised anomalies)
EnKS-KFF, EnKS     ``enks(etkf, lag=SmootherLagL)``             ADAO smooths the window
                                                                one time late; identical
                                                                start
E3DVAR-EnKF/-ETKF  ``variational.e3dvar(enkf / etkf / mlef,     ADAO's variants with ETKF
/-MLEF, E3DVAR     B, equilibrium=HybridCovarianceEquilibrium,  or MLEF start from
                   cost_tolerance=adao_cost_tolerance(          identical members; its
                   HybridCostDecrementTolerance), max_iter.=    3D-Var also stops at
                   HybridMaximumNumberOfIterations)``           gradient norm 1e-5
=================  ===========================================  ==========================

Every variant here starts from the same initial ensemble, drawn from
Background and BackgroundError (``enkit.adao.Case``); ADAO draws one from B
only for EnKF-05/-16, IEnKF and E3DVAR-EnKF, and starts the others from
NumberOfMembers copies of Xb, so that without model noise their ensemble
never spreads and B is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

from enkit.assimilation.types import over_window
from enkit.filters import enkf, etkf, etkf_n, ienkf, mlef

__all__ = ["VARIANTS", "Variant", "adao_cost_tolerance", "scheme_for"]


@dataclass(frozen=True)
class Variant:
    """One ADAO variant: the enkit scheme it maps to.

    base: the analysis scheme (uniform signature); window: True when the
    scheme runs over the window (``over_window``, the IEnKF); smoother: True
    for the EnKS (``enkit.enks`` with ``lag = SmootherLagL``); hybrid: True
    for the E3DVAR variants (``enkit.variational.e3dvar`` around ``base``);
    bundle: IEnKF-B's bundle ε in ADAO's units (ε on normalised anomalies).
    """

    base: Callable[..., Any]
    window: bool = False
    smoother: bool = False
    hybrid: bool = False
    bundle: float | None = None


_ENKF_05 = Variant(enkf)
_ENKF_16 = Variant(partial(enkf, center_perturbations=True))
_ETKF = Variant(etkf)
_ETKF_N_16 = Variant(partial(etkf_n, mode_correction=True, hessian="approximate"))
_MLEF = Variant(mlef)
_IENKF = Variant(ienkf, window=True)

VARIANTS: dict[str, Variant] = {
    "EnKF": _ENKF_16,
    "StochasticEnKF": _ENKF_16,
    "EnKF-16": _ENKF_16,
    "EnKF-05": _ENKF_05,
    "ETKF": _ETKF,
    "ETKF-KFF": _ETKF,
    "ETKF-VAR": _ETKF,
    "ETKF-N-11": Variant(etkf_n),
    "ETKF-N-15": Variant(partial(etkf_n, mode_correction=True)),
    "ETKF-N-16": _ETKF_N_16,
    "ETKF-N": _ETKF_N_16,
    "MLEF": _MLEF,
    "MLEF-T": _MLEF,
    "MLEF-B": _MLEF,
    "IEnKF": _IENKF,
    "IEnKF-T": _IENKF,
    "IEnKF-B": Variant(ienkf, window=True, bundle=1e-3),
    "IEKF": Variant(ienkf, window=True, bundle=1e-3),
    "EnKS": Variant(etkf, smoother=True),
    "EnKS-KFF": Variant(etkf, smoother=True),
    "E3DVAR": Variant(etkf, hybrid=True),
    "E3DVAR-ETKF": Variant(etkf, hybrid=True),
    "E3DVAR-EnKF": Variant(enkf, hybrid=True),
    "E3DVAR-MLEF": Variant(mlef, hybrid=True),
}


def adao_cost_tolerance(tolerance: float) -> float:
    """The relative cost decrease at which ADAO's L-BFGS-B stops, for its
    CostDecrementTolerance ``tolerance``: ADAO passes ``factr = tolerance ·
    10¹⁴``, and L-BFGS-B stops at a relative decrease ``factr · ε``."""
    return float(tolerance) * 1e14 * float(np.finfo(np.float64).eps)


def scheme_for(name: str, parameters: dict, B, N: int):
    """The enkit scheme (for ``enkit.assimilate``) of ADAO variant ``name``.

    parameters: the checked EnsembleKalmanFilter parameters (the E3DVAR
    ones are read); B: the background error covariance operator (E3DVAR's
    static covariance); N: the number of members (IEnKF-B's ε).
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown Variant {name!r}; valid names: {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    scheme = v.base
    if v.bundle is not None:
        scheme = partial(ienkf, bundle_epsilon=v.bundle / np.sqrt(N - 1.0))
    if v.hybrid:
        try:
            from enkit.variational import e3dvar
        except ImportError as err:
            raise ValueError(f"Variant {name!r}: the E3DVAR variants need "
                             f"enkit.variational.e3dvar, which this enkit lacks") from err
        scheme = e3dvar(scheme, B,
                        equilibrium=parameters["HybridCovarianceEquilibrium"],
                        cost_tolerance=adao_cost_tolerance(
                            parameters["HybridCostDecrementTolerance"]),
                        max_iterations=parameters["HybridMaximumNumberOfIterations"])
    return over_window(scheme) if v.window else scheme
