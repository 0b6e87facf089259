"""The result type of ``calibrate`` and the record its callback receives."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
from jax import Array

__all__ = ["CalibrationResult", "IterationRecord"]


class IterationRecord(NamedTuple):
    """What ``callback`` receives after ensemble k has been evaluated.

    iteration: k; parameters: (N, p) asked parameters; outputs: (N, d)
    (NaN rows for members that failed under ``Ignore``); misfit: scalar;
    time: algorithmic time of ensemble k; failed: (N,) bool, members whose
    first evaluation failed.
    """

    iteration: int
    parameters: Array
    outputs: Array
    misfit: float
    time: float
    failed: np.ndarray


@dataclasses.dataclass(frozen=True, repr=False)
class CalibrationResult:
    """The record of a calibration (I updates, I + 1 ensembles).

    ensembles: (I+1, N, p) asked parameters; ``forward_outputs[k]`` (I+1,
    N, d) are the outputs of ``ensembles[k]`` (a tuple of (N, d_k) arrays
    when an observation series changes d); misfits: (I+1,), ``misfits[k]`` =
    ‖Γ_k^{-1/2}(y_k − Ḡ_k)‖ of the successful members of ensemble k (UKI:
    of its central sigma point); dts: (I,), ``dts[k]`` the step from
    ensemble k to k+1; times: (I+1,) algorithmic time of each ensemble;
    failure_fractions: (I+1,) fraction of members whose first evaluation
    failed; failed: (I+1, N) bool, those members; errors: I+1 dicts member
    → exception message of that first evaluation (black-box models);
    stopped_by: ``"discrepancy"``,
    ``"collapse"``, ``"scheduler"``, ``"finished"`` (the process ended
    itself: ``SMC``), ``"max_iterations"`` or ``"callback"``;
    mean, covariance: final estimate in the process's own (unconstrained)
    space, the sample mean and covariance (N − 1) of the final ensemble
    (UKI: its Gaussian; SMC: the weighted mean and covariance of its
    particles, ``weighted_covariance_root``); state: the final process
    state; settings: the
    options in force (shown by ``repr``).
    """

    ensembles: Array
    forward_outputs: Any
    misfits: Array
    dts: Array
    times: Array
    failure_fractions: Array
    failed: np.ndarray
    errors: tuple
    stopped_by: str
    mean: Array
    covariance: Array
    state: Any
    settings: dict

    @property
    def n_iterations(self) -> int:
        """I, the number of updates (``tell`` calls)."""
        return int(np.shape(self.dts)[0])

    def _index(self, i: int) -> int:
        n = self.n_iterations + 1
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise IndexError(f"iteration must be an integer in [-{n}, {n - 1}], got {i!r}")
        return int(i) % n

    def parameters(self, i: int) -> Array:
        """(N, p) parameters of ensemble i (0: initial, -1: final)."""
        return self.ensembles[self._index(i)]

    def outputs(self, i: int) -> Array:
        """(N, d) forward outputs of ensemble i."""
        return self.forward_outputs[self._index(i)]

    def misfit(self, i: int) -> Array:
        """Data misfit of ensemble i."""
        return self.misfits[self._index(i)]

    def to_xarray(self, *, space=None, y=None, noise_variance=None,
                  settings: dict | None = None):
        """This record as an ``xarray.Dataset`` (dimensions iteration, step,
        member, parameter, output; see ``enkit.results_io``). space: the
        ``ParameterSpace`` (names, and constrained values are added) or None;
        y: (d,) data; noise_variance: (d,); settings: extra attributes.
        Needs xarray (``pip install enkit[io]``)."""
        from enkit.results_io import calibration_to_xarray

        return calibration_to_xarray(self, space=space, y=y, noise_variance=noise_variance,
                                     settings=settings)

    def to_netcdf(self, path, **options) -> str:
        """Write ``to_xarray(**options)`` to ``path`` (netCDF3, atomically);
        returns the absolute path. The file opens in plain xarray."""
        from enkit.results_io import write_netcdf

        return write_netcdf(self.to_xarray(**options), path)

    def __repr__(self) -> str:
        N, p = np.shape(self.ensembles)[1:]
        opts = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return (f"CalibrationResult(iterations={self.n_iterations}, "
                f"stopped_by={self.stopped_by!r}, N={N}, p={p}, "
                f"misfit {float(self.misfits[0]):.4g} -> {float(self.misfits[-1]):.4g}, "
                f"max failure fraction={float(np.max(self.failure_fractions)):.3g};\n"
                f"  settings: {opts})")
