"""Calibration results as xarray Datasets and netCDF files.

``calibration_to_xarray(result, ...)`` turns a ``CalibrationResult`` into an
``xarray.Dataset`` with dimensions ``iteration`` (I + 1 ensembles),
``step`` (I updates), ``member`` (N), ``parameter`` (p, the names as
coordinate values) and ``output`` (d):

    parameters (iteration, member, parameter)  asked parameters (a
        ``ConstrainedProcess`` asks constrained values)
    outputs (iteration, member, output)         forward outputs
    misfit, time, failure_fraction (iteration); failed (iteration, member)
        as int8 (netCDF3 has no bool); dt (step)
    final_mean_unconstrained (parameter), final_covariance_unconstrained
        (parameter, parameter_b): the result's mean and covariance in the
        process's own space; final_estimate (parameter): the space's
        bijection applied to that mean (when ``space`` is given)
    y, noise_variance (output): the data (when given)

and attributes ``stopped_by``, ``n_iterations`` and the given settings
(values that netCDF cannot hold are written as their ``repr``).
``write_netcdf`` writes it with the ``scipy`` engine (netCDF3, 64-bit
offsets) to a temporary file renamed over the target, so a killed run never
leaves half a file. Needs ``xarray`` (``pip install 'enkit[io]'``).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

__all__ = ["calibration_to_xarray", "read_netcdf", "write_netcdf"]


def _xarray():
    try:
        import xarray as xr
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("netCDF output needs xarray: pip install 'enkit[io]'") from err
    return xr


def _attr(v: Any):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float, str, np.integer, np.floating)):
        return v
    if isinstance(v, (list, tuple)) and v and all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in v):
        return np.asarray(v, np.float64)
    return repr(v)


def calibration_to_xarray(result, *, space=None, y=None, noise_variance=None,
                          settings: dict | None = None):
    """The ``CalibrationResult`` ``result`` as an ``xarray.Dataset`` (layout
    in the module docstring).

    space: the ``ParameterSpace`` (names and bijections) or None (names
    ``p0, p1, …``); y: (d,) data or None; noise_variance: (d,) or None;
    settings: extra attributes (name → value), or None.
    """
    xr = _xarray()
    if isinstance(result.forward_outputs, tuple):
        raise TypeError("result.forward_outputs is a tuple (the output dimension changed "
                         "between iterations); a Dataset needs one output dimension d")
    U = np.asarray(result.ensembles)
    n_it, N, p = U.shape
    names = [f"p{i}" for i in range(p)] if space is None else _entry_names(space)
    if len(names) != p:
        raise ValueError(f"space has {len(names)} entries but the ensembles have p={p}")
    G = np.asarray(result.forward_outputs)
    mean = np.asarray(result.mean)
    data = {
        "parameters": (("iteration", "member", "parameter"), U),
        "outputs": (("iteration", "member", "output"), G),
        "misfit": ("iteration", np.asarray(result.misfits)),
        "time": ("iteration", np.asarray(result.times)),
        "failure_fraction": ("iteration", np.asarray(result.failure_fractions, np.float64)),
        "failed": (("iteration", "member"), np.asarray(result.failed).astype(np.int8)),
        "dt": ("step", np.asarray(result.dts)),
        "final_mean_unconstrained": ("parameter", mean),
        "final_covariance_unconstrained": (("parameter", "parameter_b"),
                                           np.asarray(result.covariance)),
    }
    if space is not None:
        data["final_estimate"] = ("parameter", np.asarray(space.to_constrained(mean)))
    if y is not None:
        data["y"] = ("output", np.asarray(y, np.float64))
    if noise_variance is not None:
        data["noise_variance"] = ("output", np.asarray(noise_variance, np.float64))
    attrs = {"stopped_by": str(result.stopped_by), "n_iterations": result.n_iterations}
    for k, v in {**dict(result.settings), **(settings or {})}.items():
        attrs[k] = _attr(v)
    coords = {"iteration": np.arange(n_it), "step": np.arange(result.n_iterations),
              "member": np.arange(N), "parameter": np.asarray(names, dtype=object),
              "parameter_b": np.asarray(names, dtype=object), "output": np.arange(G.shape[-1])}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _entry_names(space) -> list[str]:
    out = []
    for q in space.parameters:
        out += [q.name] if q.size is None else [f"{q.name}[{i}]" for i in range(q.size)]
    return out


def write_netcdf(dataset, path: str | os.PathLike) -> str:
    """Write ``dataset`` (e.g. from ``calibration_to_xarray``) to ``path`` as
    netCDF3 (scipy engine), atomically (temporary file, then rename).
    Returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(path))
    os.close(fd)
    try:
        dataset.to_netcdf(tmp, engine="scipy", format="NETCDF3_64BIT")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_netcdf(path: str | os.PathLike):
    """The Dataset written by ``write_netcdf`` (loaded into memory)."""
    xr = _xarray()
    with xr.open_dataset(os.fspath(path), engine="scipy") as ds:
        return ds.load()
