"""Localisation: distances, tapers, localisation matrices (``_core``).

See ``enkit.localization._core`` for the distances and tapers, and
``enkit.localization.sec`` for the localisers of ensemble Kalman inversion
(``Delta``, ``RBF``, ``BernoulliDropout``, ``SEC``, ``SECFisher``,
``SECNice``, ``FixedTaper``); see ``enkit.localization.adaptive`` for the
B-localisation tapers of the EnKF, DEnKF and serial EnSRF
(``GainLocalization``, ``gain_localization``) and Anderson's (2012)
adaptive localisation (``AdaptiveLocalization``, ``sampling_error_table``). Names are
re-exported here flat (``enkit.localization.gaspari_cohn``) and in ``enkit``.
"""

from enkit.localization._core import (
    LocalizationMatrices,
    cartesian_distance,
    exponential,
    gaspari_cohn,
    gaussian,
    great_circle_distance,
    localization_matrices,
    localization_matrix,
    pairwise_distances,
    periodic_distance,
    soar,
    step,
    torus_distance,
)
from enkit.localization.adaptive import (
    AdaptiveLocalization,
    GainLocalization,
    SamplingErrorTable,
    gain_localization,
    sample_correlations,
    sampling_error_factors,
    sampling_error_table,
)
from enkit.localization.sec import (
    RBF,
    SEC,
    BernoulliDropout,
    Delta,
    FixedTaper,
    Localizer,
    SECFisher,
    SECNice,
)

__all__ = [
    "AdaptiveLocalization",
    "GainLocalization",
    "SamplingErrorTable",
    "gain_localization",
    "sample_correlations",
    "sampling_error_factors",
    "sampling_error_table",
    "RBF",
    "SEC",
    "BernoulliDropout",
    "Delta",
    "FixedTaper",
    "Localizer",
    "SECFisher",
    "SECNice",
    "LocalizationMatrices",
    "cartesian_distance",
    "exponential",
    "gaspari_cohn",
    "gaussian",
    "great_circle_distance",
    "localization_matrices",
    "localization_matrix",
    "pairwise_distances",
    "periodic_distance",
    "soar",
    "step",
    "torus_distance",
]
