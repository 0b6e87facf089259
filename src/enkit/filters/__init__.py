"""L1 analysis schemes, all with the signature

    scheme(E, y, h, R, *, key=None, **options) -> Ea

E: (N, n) forecast ensemble (members on axis 0); y: (m,) observation;
h: callable on one member ``(n,) -> (m,)`` or an (m, n) matrix; R: a
covariance operator (``enkit.Scalar``, ``Diagonal``, ``Dense``) or an array
that is wrapped by its shape; key: a PRNG key, required by stochastic schemes.

``SCHEMES`` maps each scheme's name to its function; the CLI and the tests
iterate over it, so a new scheme is covered by adding one line here.
``STOCHASTIC`` names the schemes that draw random numbers.
"""

from enkit.filters._common import observe
from enkit.filters.enkf import enkf, perturbed_observations
from enkit.filters.ensrf import ensrf
from enkit.filters.etkf import etkf
from enkit.filters.kalman import ensemble_with_covariance, kalman, kalman_update

SCHEMES = {
    "enkf": enkf,
    "etkf": etkf,
    "ensrf": ensrf,
    "kalman": kalman,
}

STOCHASTIC = frozenset({"enkf"})

__all__ = [
    "SCHEMES",
    "STOCHASTIC",
    "enkf",
    "ensrf",
    "etkf",
    "kalman",
    "kalman_update",
    "ensemble_with_covariance",
    "observe",
    "perturbed_observations",
]
