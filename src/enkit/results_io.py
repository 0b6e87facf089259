"""Assimilation, smoother and calibration results as xarray Datasets and
netCDF files.

``assimilation_to_xarray(result, ...)`` (``AssimilationResult.to_xarray``)
has dimensions ``time`` (K analysis times, coordinate = ``result.times``),
``member`` (N), ``state`` (n), ``state_b`` (n, the second axis of
covariances) and ``obs`` (m):

    steps, nonfinite (int8), forecast_spread, analysis_spread,
        smoothed_spread, cost_J, cost_Jb, cost_Jo, innovation_chi2,
        log_likelihood, dfs, ess, cost_J_optimum, cost_Jb_optimum,
        cost_Jo_optimum, index_of_optimum (int32), cycle_number (int32)
        (time)
    log_weights (time, member): a particle scheme's normalised log-weights
    forecast_mean, analysis_mean, smoothed_mean, analysis_variances,
        analysis_std, bma, optimum_mean (time, state)
    forecast_ensemble, analysis_ensemble, smoothed_ensemble
        (time, member, state)
    forecast_covariance, analysis_covariance, analysis_correlations
        (time, state, state_b)
    innovation_forecast, innovation_analysis, simulated_obs_forecast,
        simulated_obs_analysis, simulated_obs_optimum (time, obs);
        simulated_obs_forecast_ensemble, innovation_forecast_ensemble
        (time, member, obs); ragged (lists of (m_k,) or (N, m_k) arrays, the
        Python path) are padded with NaN to the longest m_k, and
        ``obs_present`` (time, obs) int8 says which entries are real
    final_ensemble (member, state): the run's final ensemble
    truth (time, state), observations (time, obs), observation_mask
        (time, obs) int8: when given

— only the outputs the run stored — and attributes ``enkit_kind``
("assimilation" or "smoother"), ``enkit_version``, ``method`` and
``option_<name>`` for each of the run's options (``result.info``), plus
the given settings. Every array keeps its dtype except booleans (int8:
netCDF3 has no bool) and int64 (int32: netCDF3 has no 64-bit integers).

Calibration results:

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

__all__ = ["assimilation_to_xarray", "calibration_to_xarray", "file_format", "read_netcdf",
           "write_netcdf"]

_TIME = ("steps", "nonfinite", "forecast_spread", "analysis_spread", "smoothed_spread",
         "cost_J", "cost_Jb", "cost_Jo", "innovation_chi2", "log_likelihood", "dfs", "ess",
         "cost_J_optimum", "cost_Jb_optimum", "cost_Jo_optimum", "index_of_optimum",
         "cycle_number")
_STATE = ("forecast_mean", "analysis_mean", "smoothed_mean", "analysis_variances",
          "analysis_std", "bma", "optimum_mean")
_MEMBERS = ("forecast_ensemble", "analysis_ensemble", "smoothed_ensemble")
_WEIGHTS = ("log_weights",)
_COVARIANCES = ("forecast_covariance", "analysis_covariance", "analysis_correlations")
_OBS = ("innovation_forecast", "innovation_analysis", "simulated_obs_forecast",
        "simulated_obs_analysis", "simulated_obs_optimum")
_OBS_MEMBERS = ("simulated_obs_forecast_ensemble", "innovation_forecast_ensemble")


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


def _netcdf_array(a) -> np.ndarray:
    """``a`` as a NumPy array netCDF3 can hold (bool → int8, int64 → int32)."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.int8)
    if a.dtype.kind in "iu" and a.dtype.itemsize > 4:
        if a.size and (a.max() > np.iinfo(np.int32).max or a.min() < np.iinfo(np.int32).min):
            raise ValueError("integers beyond int32 cannot be written to netCDF3")
        return a.astype(np.int32)
    return a


def _padded(rows: list) -> tuple[np.ndarray, np.ndarray]:
    """Ragged (..., m_k) rows as (K, ..., max m_k) padded with NaN, and the
    (K, max m_k) int8 mask."""
    rows = [np.asarray(r) for r in rows]
    m = max((r.shape[-1] for r in rows), default=0)
    lead = rows[0].shape[:-1] if rows else ()
    out = np.full((len(rows), *lead, m), np.nan)
    present = np.zeros((len(rows), m), np.int8)
    for k, r in enumerate(rows):
        out[k, ..., :r.shape[-1]] = r
        present[k, :r.shape[-1]] = 1
    return out, present


def assimilation_to_xarray(result, *, truth=None, observations=None, mask=None,
                           settings: dict | None = None):
    """The ``AssimilationResult`` ``result`` as an ``xarray.Dataset`` (layout
    in the module docstring). truth: (K, n); observations: (K, m); mask:
    (K, m) booleans; settings: extra attributes (name → value)."""
    from enkit import __version__

    xr = _xarray()
    if result.times is None:
        raise ValueError("result has no times: an AssimilationResult from assimilate or a "
                         "smoother is needed")
    times = np.asarray(result.times)
    K = times.shape[0]
    data: dict = {}

    def add(name, dims, value):
        a = _netcdf_array(value)
        if a.shape[:1] != (K,) and dims[0] == "time":
            raise ValueError(f"{name} has {a.shape[0] if a.ndim else 0} rows, the result "
                             f"has K = {K} analysis times")
        if a.ndim != len(dims):
            raise ValueError(f"{name} must have {len(dims)} axes {dims}, got shape {a.shape}")
        data[name] = (dims, a)

    for names, dims in ((_TIME, ("time",)), (_STATE, ("time", "state")),
                        (_MEMBERS, ("time", "member", "state")),
                        (_WEIGHTS, ("time", "member")),
                        (_COVARIANCES, ("time", "state", "state_b"))):
        for name in names:
            value = getattr(result, name)
            if value is not None:
                add(name, dims, value)
    for names, dims in ((_OBS, ("time", "obs")), (_OBS_MEMBERS, ("time", "member", "obs"))):
        for name in names:
            value = getattr(result, name)
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                value, present = _padded(value)
                data["obs_present"] = (("time", "obs"), present)
            add(name, dims, value)
    if result.ensemble is not None:
        add("final_ensemble", ("member", "state"), result.ensemble)
    if truth is not None:
        add("truth", ("time", "state"), truth)
    if observations is not None:
        add("observations", ("time", "obs"), observations)
    if mask is not None:
        add("observation_mask", ("time", "obs"), np.asarray(mask, bool))
    info = result.info
    kind = getattr(info, "kind", None) or (
        "smoother" if result.smoothed_mean is not None or result.smoothed_ensemble is not None
        else "assimilation")
    attrs = {"enkit_kind": kind, "enkit_version": __version__,
             "method": getattr(info, "method", "") or "unknown"}
    for name, text in getattr(info, "options", ()):
        attrs[f"option_{name}"] = text
    for k, v in (settings or {}).items():
        attrs[k] = _attr(v)
    ds = xr.Dataset(data, attrs=attrs)
    coords = {"time": times}
    for dim in ("member", "state", "state_b", "obs"):
        if dim in ds.dims:
            coords[dim] = np.arange(ds.sizes[dim], dtype=np.int32)
    return ds.assign_coords(coords)


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
    from enkit import __version__

    attrs = {"enkit_kind": "calibration", "enkit_version": __version__,
             "stopped_by": str(result.stopped_by), "n_iterations": result.n_iterations}
    attrs["method"] = str(dict(result.settings).get("process", "")).split("(")[0]
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


_SIGNATURES = ((b"CDF\x01", "netCDF3"), (b"CDF\x02", "netCDF3"), (b"CDF\x05", "netCDF3"),
               (b"\x89HDF\r\n\x1a\n", "netCDF4/HDF5"), (b"PK\x03\x04", "a zip archive (e.g. .npz)"),
               (b"\x93NUMPY", "a NumPy .npy file"), (b"\x1f\x8b", "a gzip file"))


def file_format(path: str | os.PathLike) -> str:
    """What a file holds, from its first bytes (nothing is parsed or run):
    "netCDF3", "netCDF4/HDF5", "a pickle", "a zip archive (e.g. .npz)", ...,
    "text" (UTF-8 in its first 4 KiB) or "binary data"."""
    with open(os.fspath(path), "rb") as f:
        head = f.read(4096)
    for sig, name in _SIGNATURES:
        if head.startswith(sig):
            return name
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at 4 KiB
            return "binary data"
    return "text" if b"\x00" not in head else "binary data"


def read_netcdf(path: str | os.PathLike):
    """The Dataset written by ``write_netcdf`` (loaded into memory). A file
    that is not netCDF3 (by its first bytes) raises ``ValueError``."""
    xr = _xarray()
    path = os.fspath(path)
    found = file_format(path)
    if found != "netCDF3":
        hint = " (enkit writes and reads netCDF3)" if found == "netCDF4/HDF5" else ""
        raise ValueError(f"{path} is not a netCDF3 file: it holds {found}{hint}")
    try:
        with xr.open_dataset(path, engine="scipy") as ds:
            return ds.load()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: cannot read this netCDF file ({err})") from None
