"""Observation series from files and datasets into the driver's inputs.

``read_observations(source)`` reads an observation series held

- in an ``xarray.Dataset`` (or a netCDF file of one) with dimensions
  ``time`` and ``obs``: a data variable ``y`` (or ``observations``,
  ``value``; or name it with ``variable=``) on ``(time, obs)``, NaN where an
  observation is missing; a coordinate ``time`` (model time units); the
  coordinate or variable ``position`` on ``(obs,)`` or ``(time, obs)``
  (grid positions 0..n−1, fractional allowed); optionally ``instrument`` on
  ``(obs,)`` and ``error_variance`` (or ``error_std``) on ``()``, ``(obs,)``
  or ``(time, obs)``;
- in a CSV file in long form, one row per observation: a header naming
  the columns ``time``, ``position``, ``value`` and optionally
  ``error_variance`` (or ``error_std``) and ``instrument``; an empty
  ``value`` (or ``nan``) is a missing observation. The observation
  dimension is the set of distinct (instrument, position) pairs, in order
  of instrument then position; a pair not reported at a time is missing
  there.

and returns an ``ObservationData``: times (K,), values (K, m) with NaN
where missing, mask (K, m), positions ((m,) or (K, m)), error variances
(K, m) and instruments (m,). ``ObservationData.driver_inputs(n)`` turns it
into the keyword arguments of ``enkit.assimilate`` for a state on a 1-D
grid of n points: ``observations`` (missing entries set to 0), ``mask``,
``h`` (an (m, n) matrix, or ``per_time`` of (K, m, n) when positions move;
linear interpolation between the two neighbouring grid points, so an
integer position selects its point), ``R`` (``Diagonal``, or
``stack_covariances`` of one per time when the variances change) and
``obs_times``.

Files are recognised by their first bytes (``enkit.results_io.file_format``:
netCDF3, netCDF4/HDF5, or text with a ``.csv`` name); nothing is unpickled
or evaluated. Every problem
raises ``ValueError`` naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any

import numpy as np

__all__ = ["ObservationData", "read_observations"]

_VALUE_NAMES = ("y", "observations", "value")


@dataclasses.dataclass(frozen=True)
class ObservationData:
    """An observation series on named time and observation axes.

    times: (K,) increasing analysis times. values: (K, m), NaN where an
    observation is missing. positions: (m,) or (K, m) grid positions.
    error_variance: (K, m) observation error variances (1.0 where missing).
    instrument: (m,) names (all "" when the source names none).
    source: where it was read from (for messages).
    """

    times: np.ndarray
    values: np.ndarray
    positions: np.ndarray
    error_variance: np.ndarray
    instrument: np.ndarray
    source: str = "<dataset>"

    @property
    def mask(self) -> np.ndarray:
        """(K, m) booleans: True where an observation is present."""
        return np.isfinite(self.values)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def operator(self, n: int, *, periodic: bool = False) -> np.ndarray:
        """The linear-interpolation observation matrix on a grid of ``n``
        points at 0..n−1: (m, n) for fixed positions, (K, m, n) for
        positions that change with time. Periodic grids wrap position n to 0."""
        return interpolation_matrix(self.positions, n, periodic=periodic, source=self.source)

    def driver_inputs(self, n: int, *, periodic: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``enkit.assimilate``: observations, mask, h,
        R and obs_times (see the module docstring)."""
        from enkit.assimilation.types import per_time, stack_covariances
        from enkit.covariance import Diagonal

        H = self.operator(n, periodic=periodic)
        mask = self.mask
        values = np.where(mask, self.values, 0.0)
        var = np.where(mask, self.error_variance, 1.0)
        if np.all(var == var[:1]):
            R = Diagonal(var[0])
        else:
            R = stack_covariances([Diagonal(v) for v in var])
        return {"observations": values, "mask": mask,
                "h": per_time(H) if H.ndim == 3 else H, "R": R,
                "obs_times": np.asarray(self.times, float)}

    def to_xarray(self):
        """This series as an ``xarray.Dataset`` in the layout
        ``read_observations`` reads (variables y, error_variance; coordinates
        time, position, instrument)."""
        from enkit.results_io import _xarray

        xr = _xarray()
        pos_dims = ("obs",) if self.positions.ndim == 1 else ("time", "obs")
        return xr.Dataset(
            {"y": (("time", "obs"), self.values),
             "error_variance": (("time", "obs"), self.error_variance)},
            coords={"time": ("time", self.times), "position": (pos_dims, self.positions),
                    "instrument": ("obs", self.instrument.astype(str))})


def interpolation_matrix(positions, n: int, *, periodic: bool = False,
                         source: str = "positions") -> np.ndarray:
    """Rows of linear-interpolation weights on a grid 0..n−1 for each
    position: (m,) positions → (m, n); (K, m) → (K, m, n). A position must
    lie in [0, n−1], or in [0, n) on a periodic grid (between n−1 and n it
    interpolates between the last point and the first)."""
    pos = np.asarray(positions, float)
    if pos.ndim not in (1, 2):
        raise ValueError(f"{source}: positions must have shape (m,) or (K, m), got {pos.shape}")
    if n < 1:
        raise ValueError(f"the grid needs n >= 1 points, got {n}")
    if not np.all(np.isfinite(pos)):
        raise ValueError(f"{source}: every observation needs a finite position")
    hi = n if periodic else n - 1
    bad = (pos < 0) | (pos >= hi) if periodic else (pos < 0) | (pos > hi)
    if np.any(bad):
        rng = f"[0, {n})" if periodic else f"[0, {n - 1}]"
        raise ValueError(f"{source}: positions must lie in {rng} on a grid of n = {n} points"
                         f"{' (periodic)' if periodic else ''}; found {pos[bad].flat[0]:g}")
    lo = np.floor(pos)
    w = pos - lo
    i0 = lo.astype(np.int64)
    i1 = (i0 + 1) % n if periodic else np.minimum(i0 + 1, n - 1)
    H = np.zeros(pos.shape + (n,))
    np.put_along_axis(H, i0[..., None], (1.0 - w)[..., None], axis=-1)
    # Add (not put): i1 == i0 when n == 1 or at the last point.
    extra = np.zeros_like(H)
    np.put_along_axis(extra, i1[..., None], w[..., None], axis=-1)
    return H + extra


def read_observations(source, *, error_variance=None, variable: str | None = None
                      ) -> ObservationData:
    """Read an observation series (see the module docstring).

    source: an ``xarray.Dataset``, or the path of a netCDF or CSV file.
    error_variance: observation error variance (a number, or (m,)) used
    when the source holds none; an error when neither gives one.
    variable: name of the observation variable in a dataset (default the
    first of y, observations, value).
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such file")
        from enkit.results_io import file_format

        found = file_format(path)  # by the first bytes: nothing is unpickled
        if found in ("netCDF3", "netCDF4/HDF5"):
            return _from_dataset(_open_netcdf(path, found), error_variance, variable, path)
        if found == "text" and path.lower().endswith(".csv"):
            return _from_csv(path, error_variance)
        raise ValueError(f"{path}: expected a netCDF file or a .csv text file, found {found}")
    if hasattr(source, "data_vars") and hasattr(source, "dims"):
        return _from_dataset(source, error_variance, variable, "<dataset>")
    raise TypeError("read_observations takes an xarray.Dataset or a file path, got "
                    f"{type(source).__name__}")


def _open_netcdf(path: str, found: str):
    from enkit.results_io import _xarray

    xr = _xarray()
    engine = "scipy" if found == "netCDF3" else None  # netCDF4 needs netCDF4 or h5netcdf
    try:
        with xr.open_dataset(path, engine=engine, decode_times=False) as ds:
            return ds.load()
    except (TypeError, ValueError, OSError) as err:
        raise ValueError(f"{path}: cannot read this netCDF file ({err})") from None


def _from_dataset(ds, error_variance, variable, src: str) -> ObservationData:
    names = [variable] if variable is not None else [v for v in _VALUE_NAMES if v in ds]
    if not names or names[0] not in ds:
        want = repr(variable) if variable is not None else "one of " + ", ".join(_VALUE_NAMES)
        raise ValueError(f"{src}: no observation variable {want} (found "
                         f"{', '.join(map(str, ds.data_vars)) or 'none'})")
    y = ds[names[0]]
    if set(y.dims) != {"time", "obs"}:
        raise ValueError(f"{src}: {names[0]} must have dimensions (time, obs), got {y.dims}")
    y = y.transpose("time", "obs")
    values = _floats(src, names[0], y.values)
    K, m = values.shape
    if "time" not in ds.coords and "time" not in ds:
        raise ValueError(f"{src}: needs a time coordinate")
    times = _floats(src, "time", ds["time"].values)
    if "position" not in ds:
        raise ValueError(f"{src}: needs a position coordinate on (obs,) or (time, obs)")
    p = ds["position"]
    if p.dims == ("obs",) or set(p.dims) == {"time", "obs"}:
        p = p if p.ndim == 1 else p.transpose("time", "obs")
    else:
        raise ValueError(f"{src}: position must be on (obs,) or (time, obs), got {p.dims}")
    positions = _floats(src, "position", p.values)
    positions = _constant_positions(positions, values)
    if "instrument" in ds:
        if ds["instrument"].dims != ("obs",):
            raise ValueError(f"{src}: instrument must be on (obs,), got {ds['instrument'].dims}")
        instrument = np.asarray(ds["instrument"].values).astype(str)
    else:
        instrument = np.full(m, "")
    var = None
    for name, power in (("error_variance", 1), ("error_std", 2)):
        if name in ds:
            v = ds[name]
            if v.dims not in ((), ("obs",)) and set(v.dims) != {"time", "obs"}:
                raise ValueError(f"{src}: {name} must be on (), (obs,) or (time, obs), "
                                 f"got {v.dims}")
            v = v if v.ndim < 2 else v.transpose("time", "obs")
            var = np.broadcast_to(_floats(src, name, v.values) ** power, (K, m))
            break
    return _finish(src, times, values, positions, var, instrument, error_variance)


def _from_csv(path: str, error_variance) -> ObservationData:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None
    if not rows:
        raise ValueError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    for need in ("time", "position", "value"):
        if need not in header:
            raise ValueError(f"{path}: the header needs columns time, position, value "
                             f"(optional: error_variance or error_std, instrument); "
                             f"got {','.join(header)}")
    allowed = {"time", "position", "value", "error_variance", "error_std", "instrument"}
    unknown = [h for h in header if h not in allowed]
    if unknown:
        raise ValueError(f"{path}: unknown column {unknown[0]!r}; allowed: "
                         + ", ".join(sorted(allowed)))
    if "error_variance" in header and "error_std" in header:
        raise ValueError(f"{path}: give error_variance or error_std, not both")
    col = {h: i for i, h in enumerate(header)}
    records = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} fields, the header has "
                             f"{len(header)}")
        records.append((line, row))
    if not records:
        raise ValueError(f"{path}: no observation rows")

    def number(line, row, name, missing_ok):
        text = row[col[name]].strip()
        if text == "" and missing_ok:
            return math.nan
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"{path}, line {line}: {name} {text!r} is not a number") from None
        if not missing_ok and not math.isfinite(v):
            raise ValueError(f"{path}, line {line}: {name} must be finite, got {text!r}")
        return v

    ev = "error_variance" if "error_variance" in col else "error_std" if "error_std" in col \
        else None
    t = np.array([number(ln, r, "time", False) for ln, r in records])
    p = np.array([number(ln, r, "position", False) for ln, r in records])
    v = np.array([number(ln, r, "value", True) for ln, r in records])
    e = None if ev is None else np.array([number(ln, r, ev, True) for ln, r in records])
    inst = np.array([r[col["instrument"]].strip() if "instrument" in col else ""
                     for _, r in records])
    times = np.unique(t)
    keys = sorted(set(zip(inst.tolist(), p.tolist())))
    K, m = times.size, len(keys)
    ti = np.searchsorted(times, t)
    where = {k: j for j, k in enumerate(keys)}
    oi = np.array([where[k] for k in zip(inst.tolist(), p.tolist())])
    seen = np.zeros((K, m), bool)
    values = np.full((K, m), np.nan)
    var = np.full((K, m), np.nan)
    for r, (k, j) in enumerate(zip(ti, oi)):
        if seen[k, j]:
            raise ValueError(f"{path}, line {records[r][0]}: a second row for time "
                             f"{times[k]:g}, position {p[r]:g}"
                             + (f", instrument {inst[r]!r}" if inst[r] else ""))
        seen[k, j] = True
        values[k, j] = v[r]
        if e is not None:
            var[k, j] = e[r] if ev == "error_variance" else e[r] ** 2
    positions = np.array([q for _, q in keys], float)
    instrument = np.array([i for i, _ in keys], dtype=str)
    return _finish(path, times, values, positions, None if e is None else var, instrument,
                   error_variance)


def _floats(src, name, a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{src}: {name} must hold numbers, got dtype {a.dtype}")
    return a.astype(np.float64)


def _constant_positions(positions, values):
    """(K, m) positions that are equal at every time (where observed) as (m,)."""
    if positions.ndim == 2 and np.all(positions == positions[:1]):
        return positions[0]
    return positions


def _finish(src, times, values, positions, var, instrument, default) -> ObservationData:
    K, m = values.shape
    if times.shape != (K,):
        raise ValueError(f"{src}: time has shape {times.shape}, expected ({K},)")
    if K == 0 or m == 0:
        raise ValueError(f"{src}: no observations ({K} times, {m} observations)")
    if not np.all(np.isfinite(times)):
        raise ValueError(f"{src}: times must be finite")
    if np.any(np.diff(times) <= 0):
        raise ValueError(f"{src}: times must be strictly increasing")
    if np.any(np.isinf(values)):
        raise ValueError(f"{src}: observation values must be finite (NaN marks a missing one)")
    if positions.shape not in ((m,), (K, m)):
        raise ValueError(f"{src}: position has shape {positions.shape}, expected ({m},) or "
                         f"({K}, {m})")
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"{src}: positions must be finite")
    present = np.isfinite(values)
    if var is None:
        if default is None:
            raise ValueError(f"{src}: no observation error variance in the file: add an "
                             "error_variance (or error_std) column or variable, or pass "
                             "error_variance=")
        d = np.asarray(default, float)
        if d.shape not in ((), (m,)):
            raise ValueError(f"error_variance must be a number or ({m},), got shape {d.shape}")
        var = np.broadcast_to(d, (K, m))
    var = np.array(var, float)
    bad = present & ~(np.isfinite(var) & (var > 0))
    if np.any(bad):
        k, j = np.argwhere(bad)[0]
        raise ValueError(f"{src}: error variances must be positive and finite where a value is "
                         f"present; time {times[k]:g}, observation {j} has {var[k, j]!r}")
    var = np.where(present, var, 1.0)
    return ObservationData(times=np.asarray(times, float), values=values,
                           positions=positions, error_variance=var,
                           instrument=np.asarray(instrument, dtype=str), source=src)
