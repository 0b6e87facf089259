"""Assimilation configuration files: TOML → a validated ``RunConfig``.

``load_run_config(path)`` reads the TOML file of ``enkit run`` and checks
every key against ``RUN_KEYS`` (the table ``enkit run --help`` prints), then
builds everything the run needs before any model step: the model (a
built-in system or a Python ``module:function``), the initial ensemble, the
observations read from their file (``enkit.read_observations``: times,
values with missing entries masked, positions, error variances), the
observation operator on the state grid, the analysis scheme with its
options, inflation and localisation, and the output path. A problem raises
``enkit.config.ConfigError`` naming the key path (``analysis.scheme``) and
what is wrong; an unknown key lists the allowed ones with the nearest as a
suggestion. Relative paths are relative to the file's directory.

A state is a field on a 1-D grid of n points at positions 0..n−1 (periodic
with ``observations.periodic``): an observation at position p observes the
state there, by linear interpolation between the neighbouring points.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import sys
import tomllib
from collections.abc import Callable
from typing import Any

import numpy as np

from enkit.config import ConfigError, _check_keys, _flatten, _get, _positive, keys_help
from enkit.config import _allowed as _allowed_in

__all__ = ["RUN_KEYS", "RunConfig", "load_run_config", "run_keys_help"]

# (key path, type, default, meaning)
RUN_KEYS: tuple[tuple[str, str, str, str], ...] = (
    ("model.name", "str", "-", "built-in model: lorenz63, lorenz96 (or give entry_point)"),
    ("model.entry_point", "str", "-",
     "Python 'module:function': one model step of one member, (n,) -> (n,), JAX-traceable "
     "(the config's directory is put on sys.path)"),
    ("model.size", "int >= 1", "built-in: its n", "state size n (needed with entry_point)"),
    ("model.dt", "float > 0", "built-in: its dt; else 1", "model time step (converts times)"),
    ("model.parameters", "table", "none",
     "constants of the built-in model (lorenz96: n, F, dt; lorenz63: sigma, rho, beta, dt)"),
    ("ensemble.members", "int >= 2", "40", "ensemble size N"),
    ("ensemble.mean", "float or list of n", "0", "mean of the Gaussian initial ensemble"),
    ("ensemble.std", "float > 0 or list", "1", "standard deviation of the initial ensemble"),
    ("ensemble.seed", "int", "0", "seed of the initial ensemble"),
    ("observations.file", "path", "-", "netCDF or CSV observation file (enkit.read_observations)"),
    ("observations.periodic", "bool", "false", "positions on a periodic grid of n points"),
    ("observations.error_std", "float > 0", "from the file",
     "observation error std when the file holds none"),
    ("truth.file", "path", "none",
     "netCDF (variable truth (time, state)) or CSV (time, x0..) truth for RMSE"),
    ("analysis.scheme", "str", "etkf", "analysis scheme: a name of enkit.SCHEMES or letkf"),
    ("analysis.options", "table", "none", "keyword options of the scheme (checked by name)"),
    ("analysis.inflation", "float >= 1", "none", "multiplicative inflation of the analysis"),
    ("analysis.rtps", "float in [0,1]", "none", "relaxation to prior spread (instead)"),
    ("analysis.rtpp", "float in [0,1]", "none", "relaxation to prior perturbations (instead)"),
    ("analysis.radius", "float > 0", "none",
     "localisation radius in grid points (letkf: half the Gaspari-Cohn support)"),
    ("run.seed", "int", "0", "seed of the analysis (stochastic schemes)"),
    ("run.steps_per_obs", "int >= 1", "from the times", "model steps between analyses"),
    ("run.store", "list of str", "means and spreads", "outputs kept per cycle (enkit.OUTPUTS)"),
    ("run.forecast_steps", "int >= 0", "0", "model steps after the last analysis"),
    ("run.on_nonfinite", "str", "raise", "raise, warn or ignore NaN/inf ensembles"),
    ("run.checkpoint", "path", "none", "checkpoint file (.npz) of the run"),
    ("run.checkpoint_every", "int >= 1", "100", "analysis cycles between checkpoints"),
    ("output.file", "path", "<config>.nc", "netCDF file of the result"),
)

_DEFAULT_STORE = ("forecast_mean", "analysis_mean", "forecast_spread", "analysis_spread",
                  "innovation_chi2")


def run_keys_help() -> str:
    """Every key, its type, default and meaning: the text ``--help`` prints."""
    return keys_help(RUN_KEYS)


def _allowed(table: str) -> list[str]:
    return _allowed_in(table, RUN_KEYS)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A validated assimilation setup (see ``RUN_KEYS``).

    model: one step (n,) -> (n,); E0: (N, n); inputs: the keyword arguments
    of ``enkit.assimilate`` built from the observations (observations, mask,
    h, R, steps_per_obs); scheme: the analysis callable with its
    options bound; scheme_name; inflation: number, ``InflationStep`` or
    None; truth: (K, n) or None; settings: the flat key → value of the file.
    """

    path: str
    model: Callable
    E0: np.ndarray
    inputs: dict
    scheme: Callable
    scheme_name: str
    inflation: Any
    seed: int
    store: tuple[str, ...]
    forecast_steps: int
    on_nonfinite: str
    checkpoint: str | None
    checkpoint_every: int | None
    output: str
    truth: np.ndarray | None
    observations: Any
    settings: dict

    def assimilate_kwargs(self) -> dict:
        """Everything ``enkit.assimilate(model, E0, **kwargs)`` needs, but
        ``progress``."""
        import jax

        return dict(scheme=self.scheme, inflation=self.inflation,
                    key=jax.random.key(self.seed), store=self.store,
                    forecast_steps=self.forecast_steps, on_nonfinite=self.on_nonfinite,
                    checkpoint=self.checkpoint, checkpoint_every=self.checkpoint_every,
                    **self.inputs)


def load_run_config(path: str | os.PathLike) -> RunConfig:
    """Read and validate the TOML file at ``path`` (see ``RUN_KEYS``)."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as err:
        raise ConfigError("<file>", f"cannot read {path}: {err.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError("<file>", f"not valid TOML: {err}") from None
    base = os.path.dirname(path)
    _check_keys("", raw, sorted({k.split(".")[0] for k, *_ in RUN_KEYS}))
    for table in ("model", "observations"):
        if table not in raw:
            raise ConfigError(table, f"missing table [{table}] (required)")
    model, n, dt = _model(raw["model"], base)
    E0 = _ensemble(raw.get("ensemble", {}), n)
    obs, inputs, periodic = _observations(raw["observations"], base, n)
    truth = _truth(raw.get("truth", {}), base, n, obs)
    run = _check_keys("run", raw.get("run", {}), _allowed("run"))
    scheme, name = _scheme(raw.get("analysis", {}), obs, n, periodic)
    inflation = _inflation(raw.get("analysis", {}))
    steps = _get(run, "run", "steps_per_obs", "int")
    inputs.pop("obs_times", None)
    if steps is not None:
        if steps < 1:
            raise ConfigError("run.steps_per_obs", f"must be >= 1, got {steps}")
        inputs["steps_per_obs"] = steps
    else:
        inputs["steps_per_obs"] = _steps_between(np.asarray(obs.times, float), dt)
    store = _store(run)
    forecast_steps = _get(run, "run", "forecast_steps", "int", 0)
    _positive("run.forecast_steps", forecast_steps, strict=False)
    on_nonfinite = _get(run, "run", "on_nonfinite", "str", "raise")
    if on_nonfinite not in ("raise", "warn", "ignore"):
        raise ConfigError("run.on_nonfinite",
                          f"must be raise, warn or ignore, got {on_nonfinite!r}")
    ckpt = _get(run, "run", "checkpoint", "path")
    ckpt = None if ckpt is None else _output_path("run.checkpoint", base, ckpt)
    every = _get(run, "run", "checkpoint_every", "int")
    if every is not None and every < 1:
        raise ConfigError("run.checkpoint_every", f"must be >= 1, got {every}")
    out_t = _check_keys("output", raw.get("output", {}), _allowed("output"))
    out = _get(out_t, "output", "file", "path",
               os.path.splitext(os.path.basename(path))[0] + ".nc")
    out = _output_path("output.file", base, out)
    settings = {"config_file": path}
    for sect, table in raw.items():
        for k, v in _flatten(table, sect):
            settings[k] = v
    return RunConfig(path=path, model=model, E0=E0, inputs=inputs, scheme=scheme,
                     scheme_name=name, inflation=inflation,
                     seed=_get(run, "run", "seed", "int", 0), store=store,
                     forecast_steps=forecast_steps, on_nonfinite=on_nonfinite,
                     checkpoint=ckpt, checkpoint_every=every, output=out, truth=truth,
                     observations=obs, settings=settings)


def _output_path(key: str, base: str, p: str) -> str:
    p = os.path.join(base, p)
    if not os.path.isdir(os.path.dirname(p)):
        raise ConfigError(key, f"directory of {p} does not exist")
    if os.path.isdir(p):
        raise ConfigError(key, f"{p} is a directory")
    return p


def _builtin(name: str):
    from enkit.models import Lorenz63, Lorenz96

    return {"lorenz63": Lorenz63, "lorenz96": Lorenz96}.get(name)


def _model(t, base: str):
    t = _check_keys("model", t, _allowed("model"))
    name = _get(t, "model", "name", "str")
    entry = _get(t, "model", "entry_point", "str")
    if (name is None) == (entry is None):
        raise ConfigError("model", "give exactly one of model.name and model.entry_point")
    params = t.get("parameters", {})
    if not isinstance(params, dict):
        raise ConfigError("model.parameters", f"must be a table, got {params!r}")
    if name is not None:
        cls = _builtin(name)
        if cls is None:
            raise ConfigError("model.name",
                              f"unknown model {name!r}; built-in: lorenz63, lorenz96")
        fields = [f.name for f in dataclasses.fields(cls)]
        _check_keys("model.parameters", params, fields)
        for k, v in params.items():
            kind = "int" if k == "n" else "float"
            _get(params, "model.parameters", k, kind)
        for key in ("size", "dt"):
            if key in t:
                raise ConfigError(f"model.{key}",
                                  "set a built-in model's constants in [model.parameters]")
        try:
            model = cls(**params)
        except (TypeError, ValueError) as err:
            raise ConfigError("model.parameters", str(err)) from None
        return model, int(model.dim), float(model.dt)
    if params:
        raise ConfigError("model.parameters", "only for a built-in model (model.name)")
    module, sep, attr = entry.partition(":")
    if not sep or not module or not attr:
        raise ConfigError("model.entry_point", f"must be 'module:function', got {entry!r}")
    if base not in sys.path:
        sys.path.insert(0, base)
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError("model.entry_point", f"cannot import {entry!r}: {err}") from None
    if not callable(fn):
        raise ConfigError("model.entry_point", f"{entry!r} is not callable")
    n = _get(t, "model", "size", "int", required=True)
    if n < 1:
        raise ConfigError("model.size", f"must be >= 1, got {n}")
    dt = _positive("model.dt", _get(t, "model", "dt", "float", 1.0))
    return fn, n, dt


def _vector(key: str, v, n: int, positive: bool) -> np.ndarray:
    if isinstance(v, bool) or not isinstance(v, (int, float, list)):
        raise ConfigError(key, f"must be a number or a list of {n} numbers, got {v!r}")
    a = np.asarray(v, float) if not isinstance(v, list) or all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) else None
    if a is None or a.ndim > 1 or (a.ndim == 1 and a.size != n):
        raise ConfigError(key, f"must be a number or a list of {n} numbers (n = model "
                          f"size), got {v!r}" if a is None or a.ndim > 1 else
                          f"has {a.size} entries, expected {n} (the model size)")
    if not np.all(np.isfinite(a)) or (positive and np.any(a <= 0)):
        raise ConfigError(key, f"must be finite{' and > 0' if positive else ''}, got {v!r}")
    return a


def _ensemble(t, n: int):
    t = _check_keys("ensemble", t, _allowed("ensemble"))
    N = _get(t, "ensemble", "members", "int", 40)
    if N < 2:
        raise ConfigError("ensemble.members", f"must be >= 2, got {N}")
    mean = _vector("ensemble.mean", t.get("mean", 0.0), n, False)
    std = _vector("ensemble.std", t.get("std", 1.0), n, True)
    seed = _get(t, "ensemble", "seed", "int", 0)
    z = np.random.default_rng(seed).standard_normal((N, n))
    return mean + std * z


def _observations(t, base: str, n: int):
    from enkit.observation_io import read_observations

    t = _check_keys("observations", t, _allowed("observations"))
    file = os.path.join(base, _get(t, "observations", "file", "path", required=True))
    if not os.path.isfile(file):
        raise ConfigError("observations.file", f"no such file {file}")
    periodic = _get(t, "observations", "periodic", "bool", False)
    std = _positive("observations.error_std", _get(t, "observations", "error_std", "float"))
    try:
        obs = read_observations(file, error_variance=None if std is None else std**2)
    except (ValueError, OSError) as err:
        raise ConfigError("observations.file", str(err)) from None
    try:
        inputs = obs.driver_inputs(n, periodic=periodic)
    except ValueError as err:
        raise ConfigError("observations.file", str(err)) from None
    return obs, inputs, periodic


def _steps_between(times: np.ndarray, dt: float) -> np.ndarray:
    """(K,) model steps before each analysis, from the observation times."""
    s = times / dt
    steps = np.rint(s).astype(np.int64)
    if np.any(np.abs(s - steps) > 1e-6 * np.maximum(1.0, np.abs(s))):
        raise ConfigError("observations.file",
                          f"observation times must be multiples of the model step dt = {dt:g} "
                          "(model.dt, or set run.steps_per_obs)")
    spo = np.diff(np.concatenate([[0], steps]))
    if np.any(spo < 1):
        raise ConfigError("observations.file", "observation times must increase, the first "
                          f"after time 0, by at least one model step dt = {dt:g}")
    return spo


def _truth(t, base: str, n: int, obs):
    t = _check_keys("truth", t, _allowed("truth"))
    file = _get(t, "truth", "file", "path")
    if file is None:
        return None
    file = os.path.join(base, file)
    if not os.path.isfile(file):
        raise ConfigError("truth.file", f"no such file {file}")
    times, truth = _read_truth(file)
    K = np.asarray(obs.times).shape[0]
    if truth.shape != (K, n):
        raise ConfigError("truth.file", f"truth has shape {truth.shape}, expected ({K}, {n}) "
                          "(observation times × model size)")
    if not np.allclose(times, np.asarray(obs.times, float), rtol=1e-9, atol=1e-12):
        raise ConfigError("truth.file", "its times differ from the observation times")
    return truth


def _read_truth(file: str) -> tuple[np.ndarray, np.ndarray]:
    """(times (K,), truth (K, n)) from a netCDF file (variable ``truth`` on
    (time, state)) or a CSV file (header ``time,x0,x1,…``)."""
    from enkit.results_io import file_format, read_netcdf

    found = file_format(file)
    if found == "netCDF3":
        ds = read_netcdf(file)
        if "truth" not in ds or ds["truth"].dims != ("time", "state"):
            raise ConfigError("truth.file", f"{file}: needs a variable truth (time, state)")
        return np.asarray(ds["time"].values, float), np.asarray(ds["truth"].values, float)
    if found != "text" or not file.lower().endswith(".csv"):
        raise ConfigError("truth.file", f"{file}: expected a netCDF3 file or a .csv text "
                          f"file, found {found}")
    try:
        with open(file, encoding="utf-8") as f:
            header = f.readline().strip().split(",")
            data = np.loadtxt(f, delimiter=",", ndmin=2)
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError("truth.file", f"{file}: not a CSV table of numbers ({err})") from None
    if not header or header[0].strip() != "time" or data.shape[1] != len(header):
        raise ConfigError("truth.file", f"{file}: expected a header time,x0,x1,... and one "
                          "number per column in every row")
    return data[:, 0], data[:, 1:]


def _scheme(t, obs, n: int, periodic: bool):
    from enkit.filters import SCHEMES, letkf
    from enkit.localization import periodic_distance

    t = _check_keys("analysis", t, _allowed("analysis"))
    name = _get(t, "analysis", "scheme", "str", "etkf")
    names = sorted(SCHEMES) + ["letkf"]
    if name not in names:
        import difflib

        near = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError("analysis.scheme", f"unknown scheme {name!r}{hint}; choose one of "
                          + ", ".join(names))
    fn = letkf if name == "letkf" else SCHEMES[name]
    options = t.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError("analysis.options", f"must be a table, got {options!r}")
    sig = inspect.signature(fn)
    fixed = {"E", "y", "h", "R", "key", "state_coords", "obs_coords", "radius", "distance",
             "localization"}
    allowed = [p for p, v in sig.parameters.items()
               if v.kind is inspect.Parameter.KEYWORD_ONLY and p not in fixed]
    _check_keys("analysis.options", options, allowed)
    for k, v in options.items():
        d = sig.parameters[k].default
        if isinstance(d, bool) and not isinstance(v, bool):
            raise ConfigError(f"analysis.options.{k}", f"must be true or false, got {v!r}")
        if callable(d) or isinstance(v, dict):
            raise ConfigError(f"analysis.options.{k}", "cannot be set from a file")
    radius = _positive("analysis.radius", _get(t, "analysis", "radius", "float"))
    if name == "letkf":
        if radius is None:
            raise ConfigError("analysis.radius", "letkf needs a localisation radius")
        pos = np.asarray(obs.positions, float)
        if pos.ndim != 1:
            raise ConfigError("analysis.scheme", "letkf needs observation positions that do "
                              "not change with time (an (obs,) position coordinate)")
        if periodic:
            distance = functools.partial(_ring, n=float(n), ring=periodic_distance)
        else:
            distance = _line
        options = dict(options, state_coords=np.arange(n, dtype=float), obs_coords=pos,
                       radius=radius, distance=distance)
    elif radius is not None:
        raise ConfigError("analysis.radius", f"localisation from a file is for letkf; "
                          f"{name!r} takes none here")
    return (functools.partial(fn, **options) if options else fn), name


def _ring(a, b, *, n, ring):
    return ring(a, b, n)


def _line(a, b):
    import jax.numpy as jnp

    return jnp.abs(a - b)


def _inflation(t):
    from enkit.inflation import RTPP, RTPS

    given = [k for k in ("inflation", "rtps", "rtpp") if k in t]
    if len(given) > 1:
        raise ConfigError(f"analysis.{given[1]}", f"give one of analysis.{given[0]} and "
                          f"analysis.{given[1]}")
    if not given:
        return None
    k = given[0]
    v = _get(t, "analysis", k, "float")
    if k == "inflation":
        if not 1.0 <= v < 10.0:
            raise ConfigError("analysis.inflation", f"must be in [1, 10), got {v}")
        return v
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"analysis.{k}", f"must be in [0, 1], got {v}")
    return (RTPS if k == "rtps" else RTPP)(v)


def _store(t) -> tuple[str, ...]:
    from enkit.assimilation import cycle

    store = t.get("store", list(_DEFAULT_STORE))
    if not isinstance(store, list) or not all(isinstance(s, str) for s in store):
        raise ConfigError("run.store", f"must be a list of output names, got {store!r}")
    for s in store:
        if s not in cycle.OUTPUTS and s not in cycle._ALIASES:
            import difflib

            near = difflib.get_close_matches(s, sorted(cycle.OUTPUTS), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError("run.store", f"unknown output {s!r}{hint}; allowed: "
                              + ", ".join(sorted(cycle.OUTPUTS)))
    return tuple(store)
