"""Covariance operators: noise covariances as small structured operators.

Observation and model noise covariances are operators, not matrices
(DESIGN.md principle 4). Each operator ``C`` of dimension m provides
``solve``, ``whiten``, ``whiten_t``, ``colorize``, ``log_pdet``, ``sample``
and the explicit forms ``dense()``, ``cholesky()``, ``diagonal()``
(naming after ``scipy.stats.Covariance``); see ``enkit.covariance._core``.
One module per structure family; this package re-exports them.
"""

from enkit.covariance._core import (
    Circulant,
    Covariance,
    Dense,
    Diagonal,
    Scalar,
    as_covariance,
)
from enkit.covariance._banded import Banded, Toeplitz
from enkit.covariance._lowrank import BlockDiagonal, Kronecker, LowRankDiagonal

__all__ = ["Circulant", "Covariance", "Scalar", "Diagonal", "Dense", "as_covariance",
           "Banded", "BlockDiagonal", "Kronecker", "LowRankDiagonal", "Toeplitz"]
