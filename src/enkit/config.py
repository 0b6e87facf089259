"""Calibration configuration files: TOML → a validated ``CalibrationConfig``.

``load_config(path)`` reads a TOML file (``tomllib``), checks every key
against ``KEYS`` (the one table that ``enkit calibrate --help`` prints)
and builds everything a run needs before any model runs: the named,
bounded parameters (``ParameterSpace``), the process wrapped in a
``ConstrainedProcess`` (updates in the unconstrained space, the model sees
constrained values), the data y and noise variances, the forward callable
(an ``ExternalModel`` command or a Python ``module:function``), the
executor spec, the checkpoint and output paths and the stopping options.

Every problem raises ``ConfigError`` naming the TOML key path
(``parameters.k.bounds``) and the problem; an unknown key lists the
allowed ones and suggests the nearest (``difflib``). Relative paths are
relative to the configuration file's directory. Build the config inside
``jax.enable_x64(True)`` for a float64 run (the CLI does; the library never
changes JAX's global configuration).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import importlib
import math
import os
import re
import sys
import tomllib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from enkit.inversion import (
    EKI,
    EKS,
    ESMDA,
    ETKI,
    TEKI,
    UKI,
    ConstrainedProcess,
    EKSStableScheduler,
    FixedStep,
    Parameter,
    ParameterSpace,
    esmda_constant_alpha,
)

__all__ = ["KEYS", "CalibrationConfig", "ConfigError", "keys_help", "load_config"]

# (key path, type, default, meaning). "<name>" stands for a parameter name.
KEYS: tuple[tuple[str, str, str, str], ...] = (
    ("calibration.members", "int >= 2", "20", "ensemble size N (UKI: unused, 2p+1 sigma points)"),
    ("calibration.seed", "int", "0", "seed of the initial ensemble and of the process"),
    ("calibration.max_iterations", "int >= 0", "10 (ESMDA: steps)", "most updates"),
    ("calibration.tau", "float > 0", "none", "stop when misfit <= tau*sqrt(d) (discrepancy)"),
    ("calibration.collapse_tol", "float in (0,1)", "none", "stop when the ensemble collapses"),
    ("calibration.failure", "str", "raise", "failed members: raise, ignore or resample"),
    ("calibration.checkpoint", "path", "none", "checkpoint file (.npz) saved every iteration"),
    ("calibration.output", "path", "<config>.nc", "netCDF file with the results"),
    ("parameters.<name>.bounds", "[lower, upper]", "[-inf, inf]",
     "bounds of the parameter (inf for an open side)"),
    ("parameters.<name>.mean", "float", "0", "prior mean of the UNCONSTRAINED value"),
    ("parameters.<name>.guess", "float", "none",
     "prior centre as a constrained value (instead of mean)"),
    ("parameters.<name>.std", "float > 0", "1", "prior std of the UNCONSTRAINED value"),
    ("observations.values", "list of float", "-", "the data y (or give file)"),
    ("observations.file", "path", "-", "CSV (header row) or netCDF file holding y"),
    ("observations.column", "str", "first column / y", "column (CSV) or variable (netCDF) of y"),
    ("observations.noise_std", "float or list", "-", "noise standard deviation(s)"),
    ("observations.noise_variance", "float or list", "-", "noise variance(s) (or noise_std)"),
    ("observations.noise_column", "str", "none", "column/variable of the file with noise std"),
    ("observations.length", "int", "none", "expected number of observations d"),
    ("process.name", "str", "-", "EKI, ETKI, TEKI, UKI, EKS or ESMDA"),
    ("process.dt", "float > 0", "1 (UKI 0.5; EKS adaptive)",
     "fixed step Δt (EKI/ETKI/TEKI/UKI/EKS; EKS default: EKSStableScheduler)"),
    ("process.stochastic", "bool", "true", "perturbed data (EKI, TEKI, ESMDA)"),
    ("process.spread", "float > 0", "min(sqrt(p),2)", "sigma-point spread (UKI)"),
    ("process.steps", "int >= 1", "4", "number of ES-MDA steps K (constant alpha = K)"),
    ("model.command", "list of str", "-",
     ("program and arguments; placeholders {input} {output} {run_dir} {python} "
      "{config_dir}")),
    ("model.entry_point", "str", "-",
     ("Python 'module:function' called with a dict name -> value, returning d "
      "numbers (instead of command); the config's directory is put on sys.path")),
    ("model.output_file", "str", "output.json", "output file of the command (.json/.npy/.txt)"),
    ("model.timeout", "float > 0", "none", "seconds before a command run is killed"),
    ("model.work_dir", "path", "temporary", "where run directories are made"),
    ("model.keep", "str", "failed", "run directories kept: failed, all or none"),
    ("model.env", "table of str", "none", "extra environment variables for the command"),
    ("executor.serial", "bool", "true", "run members one after another"),
    ("executor.threads", "int >= 1", "-", "thread pool of this size"),
    ("executor.processes", "int >= 1", "-", "process pool of this size"),
    ("executor.dask", "str", "-", "Dask scheduler address, e.g. tcp://scheduler:8786"),
)

PROCESS_OPTIONS = {"EKI": ("dt", "stochastic"), "ETKI": ("dt",), "TEKI": ("dt", "stochastic"),
                   "UKI": ("dt", "spread"), "EKS": ("dt",), "ESMDA": ("steps", "stochastic")}
_ALIASES = {"ES-MDA": "ESMDA", "ES_MDA": "ESMDA"}
_FAILURES = ("raise", "ignore", "resample")


class ConfigError(ValueError):
    """A bad configuration; ``key`` is the TOML key path at fault."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key


def keys_help(keys=None) -> str:
    """Every key of ``keys`` (default ``KEYS``), its type, default and
    meaning: the text ``--help`` prints."""
    keys = KEYS if keys is None else keys
    w = max(len(k) for k, *_ in keys)
    lines = [f"  {k:<{w}}  {t}; default {d}\n  {'':<{w}}  {m}" for k, t, d, m in keys]
    return "configuration keys (TOML):\n" + "\n".join(lines)


def _allowed(table: str, keys=None) -> list[str]:
    """The keys a table may hold, from ``keys`` (default ``KEYS``)."""
    pre = table + "."
    keys = KEYS if keys is None else keys
    return sorted({k[len(pre):].split(".")[0] for k, *_ in keys if k.startswith(pre)})


def _check_keys(where: str, table: Any, allowed: list[str]) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(where, f"must be a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{where}.{key}" if where else key,
                              f"unknown key{hint}; allowed: {', '.join(allowed)}")
    return table


def _get(table: dict, where: str, key: str, kind, default=None, required=False):
    """table[key] checked against ``kind`` ("int", "float", "bool", "str", "path")."""
    path = f"{where}.{key}"
    if key not in table:
        if required:
            raise ConfigError(path, "missing (required)")
        return default
    v = table[key]
    ok = {"int": isinstance(v, int) and not isinstance(v, bool),
          "float": isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": isinstance(v, bool), "str": isinstance(v, str) and v != "",
          "path": isinstance(v, str) and v != ""}[kind]
    if not ok:
        want = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a non-empty string", "path": "a non-empty path string"}[kind]
        raise ConfigError(path, f"must be {want}, got {v!r}")
    return float(v) if kind == "float" else v


def _positive(path: str, v, strict=True):
    if v is not None and not (v > 0 if strict else v >= 0):
        raise ConfigError(path, f"must be {'>' if strict else '>='} 0, got {v!r}")
    return v


@dataclasses.dataclass(frozen=True)
class EntryPoint:
    """A Python forward model ``module:function`` on named parameters:
    ``function({name: value})`` → d numbers (a group: a list). Picklable
    (only names), so process pools and Dask workers can run it."""

    target: str
    names: tuple[str, ...]
    sizes: tuple[int | None, ...]

    def function(self) -> Callable:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def __call__(self, x) -> np.ndarray:
        x, i, values = np.asarray(x, float), 0, {}
        for name, size in zip(self.names, self.sizes):
            k = 1 if size is None else size
            values[name] = float(x[i]) if size is None else x[i:i + k].copy()
            i += k
        return np.asarray(self.function()(values), float)


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """A validated calibration setup (see ``KEYS`` for the meaning).

    space: the named parameters; process: a ``ConstrainedProcess`` around
    the chosen process; scheduler: a Δt rule or None (the process's own);
    y: (d,) data; noise_variance: (d,) variances of Γ (diagonal);
    forward: callable on one member's constrained (p,) values → (d,);
    executor: ("serial", None), ("threads", n), ("processes", n) or
    ("dask", address); settings: the flat key → value of the file.
    """

    path: str
    space: ParameterSpace
    process: ConstrainedProcess
    process_name: str
    scheduler: Any
    members: int
    seed: int
    y: np.ndarray
    noise_variance: np.ndarray
    forward: Callable
    executor: tuple[str, Any]
    checkpoint: str | None
    output: str
    max_iterations: int
    tau: float | None
    collapse_tol: float | None
    failure: str
    settings: dict

    def key(self) -> jax.Array:
        """The calibration's PRNG key, ``fold_in(key(seed), 1)``."""
        return jax.random.fold_in(jax.random.key(self.seed), 1)

    def initial_ensemble(self) -> jax.Array | None:
        """(N, p) unconstrained prior draws from ``fold_in(key(seed), 0)``
        (None for UKI, which starts from the prior itself)."""
        if self.process_name == "UKI":
            return None
        return self.space.sample(jax.random.fold_in(jax.random.key(self.seed), 0),
                                 self.members)


def load_config(path: str | os.PathLike) -> CalibrationConfig:
    """Read and validate the TOML file at ``path`` (see ``KEYS``)."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as err:
        raise ConfigError("<file>", f"cannot read {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("<file>", f"not valid TOML: {err}") from None
    base = os.path.dirname(path)
    _check_keys("", raw, sorted({k.split(".")[0] for k, *_ in KEYS}))
    for table in ("parameters", "observations", "process", "model"):
        if table not in raw:
            raise ConfigError(table, f"missing table [{table}] (required)")
    cal = _check_keys("calibration", raw.get("calibration", {}), _allowed("calibration"))
    space = _parameters(raw["parameters"])
    y, noise_var = _observations(raw["observations"], base)
    name, process, scheduler = _process(raw["process"], space)
    executor = _executor(raw.get("executor", {}))

    members = _get(cal, "calibration", "members", "int", 20)
    if members < 2:
        raise ConfigError("calibration.members", f"must be >= 2, got {members}")
    steps = getattr(process.process, "n_steps", None)
    max_it = _get(cal, "calibration", "max_iterations", "int", 10 if steps is None else steps)
    _positive("calibration.max_iterations", max_it, strict=False)
    if steps is not None and max_it > steps:
        raise ConfigError("calibration.max_iterations",
                          f"{max_it} exceeds the {steps} ES-MDA steps (process.steps)")
    tau = _positive("calibration.tau", _get(cal, "calibration", "tau", "float"))
    ctol = _get(cal, "calibration", "collapse_tol", "float")
    if ctol is not None and not 0 < ctol < 1:
        raise ConfigError("calibration.collapse_tol", f"must be in (0, 1), got {ctol}")
    failure = _get(cal, "calibration", "failure", "str", "raise")
    if failure not in _FAILURES:
        raise ConfigError("calibration.failure", f"must be one of {_FAILURES}, got {failure!r}")
    ckpt = _get(cal, "calibration", "checkpoint", "path")
    ckpt = None if ckpt is None else os.path.join(base, ckpt)
    if ckpt is not None and not os.path.isdir(os.path.dirname(ckpt)):
        raise ConfigError("calibration.checkpoint", f"directory of {ckpt} does not exist")
    if ckpt is not None and os.path.isdir(ckpt):
        raise ConfigError("calibration.checkpoint", f"{ckpt} is a directory, not a file")
    out = os.path.join(base, _get(cal, "calibration", "output", "path",
                                  os.path.splitext(os.path.basename(path))[0] + ".nc"))
    if not os.path.isdir(os.path.dirname(out)):
        raise ConfigError("calibration.output", f"directory of {out} does not exist")
    forward = _model(raw["model"], space, base)  # last: it may make a work directory
    settings = {"config_file": path}
    for sect, table in raw.items():
        for k, v in _flatten(table, sect):
            settings[k] = v
    return CalibrationConfig(
        path=path, space=space, process=process, process_name=name, scheduler=scheduler,
        members=members, seed=_get(cal, "calibration", "seed", "int", 0), y=y,
        noise_variance=noise_var, forward=forward, executor=executor, checkpoint=ckpt,
        output=out, max_iterations=max_it, tau=tau, collapse_tol=ctol, failure=failure,
        settings=settings)


def _flatten(table, where):
    if isinstance(table, dict):
        for k, v in table.items():
            yield from _flatten(v, f"{where}.{k}")
    else:
        yield where, table


def _parameters(raw) -> ParameterSpace:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("parameters", "must hold at least one [parameters.<name>] table")
    params = []
    for name, t in raw.items():
        where = f"parameters.{name}"
        if not _NAME.fullmatch(name):
            raise ConfigError(f"parameters.{name!r}", "a parameter name must start with a "
                              "letter or '_' and hold only letters, digits, '_' and '-' (it "
                              "names the model's input and the netCDF coordinates and "
                              "attributes of the results)")
        _check_keys(where, t, _allowed("parameters.<name>"))
        lo, up = -math.inf, math.inf
        if "bounds" in t:
            b = t["bounds"]
            if (not isinstance(b, list) or len(b) != 2 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
                raise ConfigError(f"{where}.bounds", f"must be [lower, upper] (numbers, inf "
                                  f"for an open side), got {b!r}")
            lo, up = float(b[0]), float(b[1])
            if math.isnan(lo) or math.isnan(up) or not lo < up:
                raise ConfigError(f"{where}.bounds", f"lower must be < upper, got {b!r}")
        std = _positive(f"{where}.std", _get(t, where, "std", "float", 1.0))
        if "mean" in t and "guess" in t:
            raise ConfigError(f"{where}.guess", "give mean or guess, not both")
        mean = _get(t, where, "mean", "float", 0.0)
        kw = {"lower": None if lo == -math.inf else lo, "upper": None if up == math.inf else up}
        if "guess" in t:
            g = _get(t, where, "guess", "float")
            if not lo < g < up:
                raise ConfigError(f"{where}.guess", f"must lie strictly inside the bounds "
                                  f"({lo}, {up}), got {g}")
            mean = float(Parameter(name, **kw).bijection.inverse(g))
        try:
            params.append(Parameter(name, mean=mean, std=std, **kw))
        except (ValueError, TypeError) as err:
            raise ConfigError(where, str(err)) from None
    return ParameterSpace(params)


def _numbers(path: str, v) -> np.ndarray:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if (not isinstance(v, list) or not v
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v)):
        raise ConfigError(path, f"must be a number or a non-empty list of numbers, got {v!r}")
    return np.asarray(v, np.float64)


def _read_file(path: str, file: str, column: str | None) -> np.ndarray:
    """One column of a CSV file (header row) or one variable of a netCDF file."""
    from enkit.results_io import file_format, read_netcdf

    if not os.path.isfile(file):
        raise ConfigError(path, f"file {file} does not exist")
    found = file_format(file)  # by the first bytes: nothing is unpickled
    if found == "netCDF3":
        try:
            ds = read_netcdf(file)
        except ValueError as err:
            raise ConfigError(path, str(err)) from None
        names = list(ds.data_vars)
        col = column if column is not None else ("y" if "y" in names else None)
        if col not in names:
            raise ConfigError(path, f"{file} has no variable {col!r}; variables: {names}")
        return np.asarray(ds[col].values, np.float64).ravel()
    if found != "text" or file.lower().endswith((".nc", ".nc4", ".cdf")):
        raise ConfigError(path, f"{file}: expected a netCDF3 file or a CSV text file, found "
                          f"{found}")
    try:
        with open(file, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(path, f"{file}: not a CSV text file ({err})") from None
    if len(rows) < 2:
        raise ConfigError(path, f"{file} must hold a header row and at least one data row")
    head = [h.strip() for h in rows[0]]
    col = head[0] if column is None else column
    if col not in head:
        raise ConfigError(path, f"{file} has no column {col!r}; columns: {head}")
    j = head.index(col)
    try:
        return np.asarray([float(r[j]) for r in rows[1:]], np.float64)
    except (ValueError, IndexError) as err:
        raise ConfigError(path, f"{file} column {col!r} is not all numbers ({err})") from None


def _observations(t, base: str) -> tuple[np.ndarray, np.ndarray]:
    _check_keys("observations", t, _allowed("observations"))
    w = "observations"
    if ("values" in t) == ("file" in t):
        raise ConfigError(f"{w}.values", "give exactly one of observations.values and "
                          "observations.file")
    column = _get(t, w, "column", "str")
    ncol = _get(t, w, "noise_column", "str")
    if "values" in t:
        where = f"{w}.values"
        if column is not None or ncol is not None:
            raise ConfigError(f"{w}.column", "column and noise_column need observations.file")
        y = _numbers(where, t["values"])
    else:
        where = f"{w}.file"
        file = os.path.join(base, _get(t, w, "file", "path"))
        y = _read_file(where, file, column)
    if not np.all(np.isfinite(y)):
        raise ConfigError(where, f"holds NaN or inf at positions "
                          f"{np.flatnonzero(~np.isfinite(y)).tolist()}")
    d = y.size
    n = _get(t, w, "length", "int")
    if n is not None and n != d:
        raise ConfigError(where, f"has the wrong length {d}: observations.length is {n}")
    given = [k for k in ("noise_std", "noise_variance", "noise_column") if k in t]
    if len(given) != 1:
        raise ConfigError(f"{w}.noise_std", "give exactly one of noise_std, noise_variance, "
                          f"noise_column (got {given or 'none'})")
    key = f"{w}.{given[0]}"
    if given[0] == "noise_column":
        s = _read_file(key, file, ncol)
        var = s * s
    else:
        s = _numbers(key, t[given[0]])
        var = s * s if given[0] == "noise_std" else s
    if not (np.all(np.isfinite(var)) and np.all(s > 0)):
        raise ConfigError(key, "must be finite and > 0")
    if var.size == 1:
        var = np.full(d, var[0])
    if var.size != d:
        raise ConfigError(where, f"has the wrong length {d}: {key} has {var.size} entries")
    return y, var


def _process(t, space: ParameterSpace):
    _check_keys("process", t, _allowed("process"))
    raw = _get(t, "process", "name", "str", required=True)
    name = _ALIASES.get(raw.upper(), raw.upper())
    if name not in PROCESS_OPTIONS:
        near = difflib.get_close_matches(name, list(PROCESS_OPTIONS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError("process.name", f"unknown process {raw!r}{hint}; known: "
                          f"{', '.join(PROCESS_OPTIONS)}")
    for k in t:
        if k != "name" and k not in PROCESS_OPTIONS[name]:
            raise ConfigError(f"process.{k}", f"is not an option of {name}; its options: "
                              f"{', '.join(PROCESS_OPTIONS[name]) or 'none'}")
    dt = _positive("process.dt", _get(t, "process", "dt", "float"))
    if name == "UKI" and dt is not None and not dt < 1:
        raise ConfigError("process.dt", f"UKI needs 0 < dt < 1, got {dt}")
    stoch = _get(t, "process", "stochastic", "bool", True)
    scheduler = None if dt is None else FixedStep(dt)
    if name == "EKI":
        proc = EKI(stochastic=stoch)
    elif name == "ETKI":
        proc = ETKI()
    elif name == "TEKI":
        proc = TEKI(space.prior, stochastic=stoch)
    elif name == "UKI":
        proc = UKI(space.prior, spread=_positive("process.spread",
                                                 _get(t, "process", "spread", "float")))
    elif name == "EKS":
        proc = EKS(space.prior)
        scheduler = EKSStableScheduler() if dt is None else scheduler
    else:
        steps = _get(t, "process", "steps", "int", 4)
        if steps < 1:
            raise ConfigError("process.steps", f"must be >= 1, got {steps}")
        proc = ESMDA(esmda_constant_alpha(steps), stochastic=stoch)
    return name, ConstrainedProcess(proc, space), scheduler


def _model(t, space: ParameterSpace, base: str) -> Callable:
    from enkit.external import ExternalModel

    _check_keys("model", t, _allowed("model"))
    if ("command" in t) == ("entry_point" in t):
        raise ConfigError("model.command", "give exactly one of model.command and "
                          "model.entry_point")
    names = tuple(space.names)
    if "entry_point" in t:
        target = _get(t, "model", "entry_point", "str")
        extra = [k for k in t if k != "entry_point"]
        if extra:
            raise ConfigError(f"model.{extra[0]}", "applies to model.command only")
        module, _, attr = target.partition(":")
        if not module or not attr:
            raise ConfigError("model.entry_point", f"must be 'module:function', got {target!r}")
        if base not in sys.path:
            sys.path.insert(0, base)  # a module next to the config file
        try:
            fn = getattr(importlib.import_module(module), attr, None)
        except ImportError as err:
            raise ConfigError("model.entry_point", f"cannot import {module!r}: {err}") from None
        if not callable(fn):
            raise ConfigError("model.entry_point", f"{module!r} has no function {attr!r}")
        return EntryPoint(target, names, tuple(q.size for q in space.parameters))
    cmd = t["command"]
    if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
        raise ConfigError("model.command", f"must be a non-empty list of strings, got {cmd!r}")
    args = []
    for i, a in enumerate(cmd):
        values = {"python": sys.executable, "config_dir": base}
        b = _substitute(a, values, escape=False)
        uses_dir = any(m.group(1) == "config_dir" for m in _CONFIG_PLACEHOLDER.finditer(a))
        if uses_dir and not os.path.exists(b):
            raise ConfigError("model.command", f"argument {i} {a!r}: {b} does not exist")
        # Arguments after the program are templates of ExternalModel ({input}, ...):
        # substituted text goes in with its braces escaped, never expanded again.
        args.append(b if i == 0 else _substitute(a, values, escape=True))
    env = t.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ConfigError("model.env", f"must be a table of strings, got {env!r}")
    for k in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ConfigError(f"model.env.{k!r}", "an environment variable name holds only "
                              "letters, digits and '_' and does not start with a digit")
    work = _get(t, "model", "work_dir", "path")
    timeout = _positive("model.timeout", _get(t, "model", "timeout", "float"))
    try:
        return ExternalModel(
            command=args, output_file=_get(t, "model", "output_file", "str", "output.json"),
            work_dir=None if work is None else os.path.join(base, work), timeout=timeout,
            keep=_get(t, "model", "keep", "str", "failed"), env=env or None,
            input_names=tuple(names))
    except (ValueError, TypeError, FileNotFoundError) as err:
        msg = str(err)
        key = ("model.output_file" if "output_f" in msg else
               "model.keep" if msg.startswith("keep") else "model.command")
        raise ConfigError(key, msg) from None


# A parameter name: also a netCDF name (coordinate value, attribute key part).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_CONFIG_PLACEHOLDER = re.compile(r"(?<!\{)\{(python|config_dir)\}(?!\})")


def _substitute(arg: str, values: dict[str, str], *, escape: bool) -> str:
    """``{python}`` and ``{config_dir}`` of ``arg`` replaced in one pass (the
    inserted text is never expanded again); ``escape`` doubles its braces
    for a later ``str.format``; ``{{...}}`` is left as it is."""
    def put(m):
        v = values[m.group(1)]
        return v.replace("{", "{{").replace("}", "}}") if escape else v

    return _CONFIG_PLACEHOLDER.sub(put, arg)


def _executor(t) -> tuple[str, Any]:
    if isinstance(t, str):
        if t != "serial":
            raise ConfigError("executor", f"as a string must be 'serial', got {t!r}; use a "
                              "table: processes = 4, threads = 4 or dask = 'tcp://host:8786'")
        return ("serial", None)
    _check_keys("executor", t, _allowed("executor"))
    if len(t) > 1:
        raise ConfigError(f"executor.{sorted(t)[1]}", f"give one executor, got {sorted(t)}")
    if not t or "serial" in t:
        if t and _get(t, "executor", "serial", "bool") is not True:
            raise ConfigError("executor.serial", "must be true (or choose another executor)")
        return ("serial", None)
    kind = next(iter(t))
    if kind == "dask":
        return ("dask", _get(t, "executor", "dask", "str"))
    n = _get(t, "executor", kind, "int")
    if n < 1:
        raise ConfigError(f"executor.{kind}", f"must be >= 1, got {n}")
    return (kind, n)
