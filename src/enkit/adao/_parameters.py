"""ADAO's algorithm parameters: names, defaults and checks.

ADAO keeps any key of ``AlgorithmParameters`` it does not know and never
reads it, so a misspelt option silently changes nothing. Here every name is
checked against the algorithm's list and an unknown one is refused with the
list of valid names; the values are checked against ADAO's bounds and lists.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

__all__ = ["ALGORITHMS", "ENKF_STORABLE", "check_parameters"]

# ADAO 9.16's EnsembleKalmanFilter variant names (listval and listadv).
VARIANT_NAMES = (
    "EnKF", "ETKF", "ETKF-N", "MLEF", "IEnKF", "E3DVAR", "EnKS",
    "StochasticEnKF", "EnKF-05", "EnKF-16", "ETKF-KFF", "ETKF-VAR",
    "ETKF-N-11", "ETKF-N-15", "ETKF-N-16", "MLEF-T", "MLEF-B",
    "IEnKF-T", "IEnKF-B", "EnKS-KFF", "IEKF",
    "E3DVAR-EnKF", "E3DVAR-ETKF", "E3DVAR-MLEF",
)

# The inflation types ADAO's ensemble filters apply (its other listed types,
# covariance-based, additive, hybrid and relaxation, are accepted by ADAO
# and then never applied by these filters: refused here).
INFLATION_TYPES = ("MultiplicativeOnAnalysisAnomalies", "MultiplicativeOnBackgroundAnomalies")

# StoreSupplementaryCalculations names this front end fills, each with the
# enkit output it reads ("Analysis" and "CurrentStepNumber" are built by the
# case itself).
ENKF_STORABLE = {
    "Analysis": "analysis_mean",
    "APosterioriCorrelations": "analysis_correlations",
    "APosterioriCovariance": "analysis_covariance",
    "APosterioriStandardDeviations": "analysis_std",
    "APosterioriVariances": "analysis_variances",
    "BMA": "bma",
    "CostFunctionJ": "cost_J",
    "CostFunctionJAtCurrentOptimum": "cost_J_optimum",
    "CostFunctionJb": "cost_Jb",
    "CostFunctionJbAtCurrentOptimum": "cost_Jb_optimum",
    "CostFunctionJo": "cost_Jo",
    "CostFunctionJoAtCurrentOptimum": "cost_Jo_optimum",
    "CurrentOptimum": "optimum_mean",
    "CurrentState": "analysis_ensemble",
    "CurrentStepNumber": None,
    "ForecastCovariance": "forecast_covariance",
    "ForecastState": "forecast_ensemble",
    "IndexOfOptimum": "index_of_optimum",
    "InnovationAtCurrentAnalysis": "innovation_analysis",
    "InnovationAtCurrentState": "innovation_forecast_ensemble",
    "SimulatedObservationAtCurrentAnalysis": "simulated_obs_analysis",
    "SimulatedObservationAtCurrentOptimum": "simulated_obs_optimum",
    "SimulatedObservationAtCurrentState": "simulated_obs_forecast_ensemble",
}

LINEARITY_STORABLE = ("Residu",)
RESIDUE_FORMULAS = ("CenteredDL", "Taylor", "NominalTaylor", "NominalTaylorRMS")


def _int(low=None, high=None):
    return ("int", low, high)


def _float(low=None, high=None):
    return ("float", low, high)


# name -> (default, check); check: ("int"|"float", low, high), a tuple of
# allowed strings, "bool", "seed", "store", "vector".
ALGORITHMS: dict[str, dict[str, tuple[Any, Any]]] = {
    "EnsembleKalmanFilter": {
        "Variant": ("EnKF", VARIANT_NAMES),
        "NumberOfMembers": (100, _int(2)),
        "EstimationOf": ("State", ("State", "Parameters")),
        "InflationType": ("MultiplicativeOnAnalysisAnomalies", INFLATION_TYPES),
        "InflationFactor": (1.0, _float(1.0)),
        "SmootherLagL": (0, _int(0)),
        "HybridCovarianceEquilibrium": (0.5, _float(0.0, 1.0)),
        "HybridMaximumNumberOfIterations": (15000, _int(1)),
        "HybridCostDecrementTolerance": (1e-7, _float(0.0)),
        "SetSeed": (None, "seed"),
        "StoreInternalVariables": (False, "bool"),
        "StoreSupplementaryCalculations": ((), ("store", tuple(ENKF_STORABLE))),
    },
    "LinearityTest": {
        "ResiduFormula": ("CenteredDL", RESIDUE_FORMULAS),
        "EpsilonMinimumExponent": (-8, _int(-20, 0)),
        "InitialDirection": ((), "vector"),
        "AmplitudeOfInitialDirection": (1.0, "nonzero"),
        "AmplitudeOfTangentPerturbation": (1e-2, _float(1e-10, 1.0)),
        "SetSeed": (None, "seed"),
        "NumberOfPrintedDigits": (5, _int(0)),
        "ResultTitle": ("", "str"),
        "StoreSupplementaryCalculations": ((), ("store", LINEARITY_STORABLE)),
    },
}


def check_parameters(algorithm: str, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """ADAO's parameters of ``algorithm`` with its defaults filled in.

    Raises ``ValueError`` for an unknown algorithm, an unknown parameter
    name (listing the valid ones) or a value outside ADAO's list or bounds.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown Algorithm {algorithm!r}; this front end runs: "
                         f"{', '.join(ALGORITHMS)}")
    spec = ALGORITHMS[algorithm]
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, Mapping):
        raise TypeError(f"Parameters must be a dict, got {type(parameters).__name__}")
    unknown = [k for k in parameters if k not in spec]
    if unknown:
        raise ValueError(f"unknown {algorithm} parameter(s) {', '.join(map(repr, unknown))}; "
                         f"valid names: {', '.join(sorted(spec))}")
    out = {}
    for name, (default, check) in spec.items():
        value = parameters.get(name, default)
        out[name] = _checked(name, value, check)
    return out


def _checked(name, value, check):
    if check == "seed":
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, numbers.Integral) or value < 0):
            raise ValueError(f"SetSeed must be a non-negative integer, got {value!r}")
        return None if value is None else int(value)
    if check == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        return value
    if check == "str":
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if check == "vector":
        return tuple(float(v) for v in value)
    if check == "nonzero":
        value = _number(name, value, float)
        if value == 0.0:
            raise ValueError(f"{name} must not be zero")
        return value
    if isinstance(check, tuple) and check and check[0] == "store":
        names = (value,) if isinstance(value, str) else tuple(value)
        bad = [s for s in names if s not in check[1]]
        if bad:
            raise ValueError(f"StoreSupplementaryCalculations: unknown or unsupported name(s) "
                             f"{', '.join(map(repr, bad))}; supported: {', '.join(check[1])}")
        return names
    if isinstance(check, tuple) and check and check[0] in ("int", "float"):
        kind, low, high = check
        value = _number(name, value, int if kind == "int" else float)
        if (low is not None and value < low) or (high is not None and value > high):
            lo = "-inf" if low is None else low
            hi = "inf" if high is None else high
            bounds = f"[{lo}, {hi}]"
            raise ValueError(f"{name} must lie in {bounds}, got {value!r}")
        return value
    if value not in check:  # a tuple of allowed strings
        raise ValueError(f"{name} {value!r} is not one of: {', '.join(check)}")
    return value


def _number(name, value, kind):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}")
    return kind(value)
