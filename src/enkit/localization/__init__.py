"""Localisation: distances, tapers, localisation matrices (``_core``).

See ``enkit.localization._core`` for the distances and tapers. Names are
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
)

__all__ = [
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
]
