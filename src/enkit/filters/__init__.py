"""L1 analysis schemes, all with the signature

    scheme(E, y, h, R, *, key=None, **options) -> Ea

E: (N, n) forecast ensemble (members on axis 0); y: (m,) observation;
h: callable on one member ``(n,) -> (m,)`` or an (m, n) matrix; R: a
covariance operator (``enkit.Scalar``, ``Diagonal``, ``Dense``) or an array
that is wrapped by its shape; key: a PRNG key, required by stochastic schemes.

Called on concrete arrays, every scheme refuses NaN/inf in E, y, an H
matrix or h(E) (naming the first member and observation) and a forecast of
identical members (zero spread); under ``jit`` these value checks are
skipped. With no observations (y of shape (0,)) every scheme returns E
unchanged (see ``enkit.filters._common``).

``SCHEMES`` maps each scheme's name to its function; the CLI and the tests
iterate over it, so a new scheme is covered by adding one line here.
``STOCHASTIC`` names the schemes that draw random numbers.
"""

from enkit.filters._common import observe
from enkit.filters.denkf import denkf
from enkit.filters.enkf import DEFAULT_DRAW_DTYPE, enkf, perturbed_observations
from enkit.filters.enkf_bucy import enkf_bucy, enkf_bucy_analysis
from enkit.filters.ensrf import ensrf
from enkit.filters.ensrf_serial import ensrf_serial
from enkit.filters.estkf import estkf
from enkit.filters.etkf import etkf
from enkit.filters.etkf_n import etkf_n, etkf_n_dual
from enkit.filters.etkf_rotated import etkf_rotated
from enkit.filters.ienkf import ienkf
from enkit.filters.kalman import ensemble_with_covariance, kalman, kalman_update
from enkit.filters.letkf import letkf
from enkit.filters.mlef import mlef
from enkit.filters.patches import patch_etkf
from enkit.filters.sqrt_kalman import sqrt_kalman, sqrt_kalman_update
from enkit.filters.student_t import student_t_enkf, student_t_weight
from enkit.filters.rrsqrt import (
    RRSQRTResult,
    RRSQRTState,
    ensemble_to_modes,
    modes_to_ensemble,
    rrsqrt_analysis,
    rrsqrt_filter,
    rrsqrt_forecast,
    rrsqrt_init,
    rrsqrt_reduce,
)
from enkit.filters._gaussian import GaussianFilterResult
from enkit.filters.ekf import ekf_filter, ekf_forecast, ekf_update
from enkit.filters.ukf import ukf, ukf_ensemble, ukf_filter, ukf_forecast, ukf_moments, ukf_update

SCHEMES = {
    "enkf": enkf,
    "etkf": etkf,
    "ensrf": ensrf,
    "kalman": kalman,
    "denkf": denkf,
    "ensrf_serial": ensrf_serial,
    "estkf": estkf,
    "etkf_rotated": etkf_rotated,
    "sqrt_kalman": sqrt_kalman,
    "etkf_n": etkf_n,
    "etkf_n_dual": etkf_n_dual,
    "ienkf": ienkf,
    "mlef": mlef,
}

STOCHASTIC = frozenset({"enkf", "etkf_rotated"})

__all__ = [
    "SCHEMES",
    "STOCHASTIC",
    "enkf",
    "ensrf",
    "etkf",
    "kalman",
    "kalman_update",
    "denkf",
    "ensrf_serial",
    "estkf",
    "etkf_rotated",
    "sqrt_kalman",
    "sqrt_kalman_update",
    "etkf_n",
    "etkf_n_dual",
    "ienkf",
    "mlef",
    "letkf",
    "patch_etkf",
    "ensemble_with_covariance",
    "observe",
    "perturbed_observations",
    "DEFAULT_DRAW_DTYPE",
    "RRSQRTResult",
    "RRSQRTState",
    "ensemble_to_modes",
    "modes_to_ensemble",
    "rrsqrt_analysis",
    "rrsqrt_filter",
    "rrsqrt_forecast",
    "rrsqrt_init",
    "rrsqrt_reduce",
    "enkf_bucy",
    "enkf_bucy_analysis",
    "student_t_enkf",
    "student_t_weight",
    "GaussianFilterResult",
    "ekf_filter",
    "ekf_forecast",
    "ekf_update",
    "ukf",
    "ukf_ensemble",
    "ukf_filter",
    "ukf_forecast",
    "ukf_moments",
    "ukf_update",
]
