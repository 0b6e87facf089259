"""enkit: ensemble Kalman methods in JAX.

Ensembles are (N, n) arrays with members on axis 0 (EnsembleKalmanProcesses.jl
and iterative_ensemble_smoother hold (n, N) columns; enkit holds rows).
The public names are re-exported here; the subpackages hold the code.
"""

from enkit import covariance, diagnostics, ensemble, filters, inflation, linalg, models
from enkit.assimilate import (
    OUTPUTS,
    AssimilationResult,
    BlackBoxModel,
    PerTime,
    assimilate,
    over_window,
    per_time,
    stack_covariances,
)
from enkit.covariance import Covariance, Dense, Diagonal, Scalar, as_covariance
from enkit.diagnostics import rmse
from enkit.ensemble import (
    anomalies,
    cross_covariance,
    ensemble_covariance,
    ensemble_mean,
    ensemble_spread,
    scaled_anomalies,
)
from enkit.filters import (
    SCHEMES,
    STOCHASTIC,
    denkf,
    enkf,
    ensemble_with_covariance,
    ensrf,
    ensrf_serial,
    estkf,
    etkf,
    etkf_rotated,
    kalman,
    kalman_update,
    observe,
    perturbed_observations,
    sqrt_kalman,
    sqrt_kalman_update,
)
from enkit.inflation import (
    RTPP,
    RTPS,
    AdaptiveMultiplicative,
    AdditiveAnalysis,
    AdditiveForecast,
    InflationEstimate,
    InflationStep,
    MultiplicativeAnalysis,
    MultiplicativeForecast,
    NoInflation,
    adaptive_inflation,
    ledoit_wolf,
    rtpp,
    rtps,
)
from enkit.inflation import additive as additive_inflation
from enkit.inflation import multiplicative as multiplicative_inflation
from enkit.linalg import (
    kalman_solve,
    kalman_solve_ensemble_space,
    kalman_solve_observation_space,
    sym_matrix_functions,
)
from enkit.models import Lorenz63, Lorenz96, TwinExperiment, twin_experiment

__version__ = "0.1.0"

__all__ = [
    "additive_inflation",
    "adaptive_inflation",
    "ledoit_wolf",
    "rtps",
    "rtpp",
    "AdaptiveMultiplicative",
    "AdditiveAnalysis",
    "AdditiveForecast",
    "InflationEstimate",
    "InflationStep",
    "MultiplicativeAnalysis",
    "MultiplicativeForecast",
    "NoInflation",
    "RTPP",
    "RTPS",
    "AssimilationResult",
    "BlackBoxModel",
    "OUTPUTS",
    "PerTime",
    "over_window",
    "per_time",
    "stack_covariances",
    "Covariance",
    "Dense",
    "Diagonal",
    "Lorenz63",
    "Lorenz96",
    "SCHEMES",
    "STOCHASTIC",
    "Scalar",
    "TwinExperiment",
    "anomalies",
    "as_covariance",
    "assimilate",
    "covariance",
    "cross_covariance",
    "diagnostics",
    "enkf",
    "ensemble",
    "ensemble_covariance",
    "ensemble_mean",
    "ensemble_spread",
    "scaled_anomalies",
    "ensemble_with_covariance",
    "ensrf",
    "etkf",
    "filters",
    "inflation",
    "kalman",
    "kalman_solve",
    "kalman_solve_ensemble_space",
    "kalman_solve_observation_space",
    "kalman_update",
    "denkf",
    "ensrf_serial",
    "estkf",
    "etkf_rotated",
    "sqrt_kalman",
    "sqrt_kalman_update",
    "linalg",
    "models",
    "multiplicative_inflation",
    "observe",
    "perturbed_observations",
    "rmse",
    "sym_matrix_functions",
    "twin_experiment",
]
