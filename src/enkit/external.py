"""External-program models: a forward model (or one forecast step) that is
a program run once per member.

``ExternalModel(command=[...])`` is a callable on one member's parameters
(or state) x: (p,) → (d,), so it is used wherever a black-box callable is:
``calibrate(model, ..., black_box=True)`` or with an ``executor``, and
``BlackBoxModel(step=model, executor=...)`` for forecasts. Each call

1. makes a fresh run directory under ``work_dir`` (``<tag>-<random>``),
2. writes x to ``input.json`` (a JSON list of numbers) or ``input.npy``,
3. runs the command there as an argument list (no shell: parameter values
   never enter the command line; the placeholders ``{input}``,
   ``{output}`` and ``{run_dir}`` become absolute paths), with standard
   output and error written to ``stdout.log`` and ``stderr.log`` in the
   run directory,
4. reads the outputs from ``output_file`` (JSON list, ``.npy`` or
   whitespace-separated text): a 1-D array of finite numbers,
5. removes the run directory, unless ``keep`` says otherwise (by default
   the directories of failed members are kept, with their logs).

A member fails, with an exception naming the run directory, when the
program exits with a non-zero status, runs past ``timeout`` (its whole
process group is killed: ``MemberTimeout``), or leaves a missing,
unreadable, non-numeric, non-1-D or non-finite output (garbage). The
executors turn these exceptions into failure records, so they reach the
calibration's failure policy, never crash the run.

Logging goes to the ``"enkit.external"`` logger.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import string
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from jax.typing import ArrayLike

from enkit.executors import MemberTimeout

__all__ = ["ExternalModel", "ExternalModelError"]

_LOG = logging.getLogger("enkit.external")
PLACEHOLDERS = ("input", "output", "run_dir")
INPUT_FORMATS = ("json", "npy")
OUTPUT_FORMATS = {".json": "json", ".npy": "npy", ".txt": "txt", ".dat": "txt"}
KEEP = ("failed", "all", "none")
_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")


class ExternalModelError(RuntimeError):
    """The program failed (non-zero exit) or left unusable outputs.

    run_dir: the member's run directory (None if it was removed).
    """

    def __init__(self, message: str, run_dir: str | None = None):
        super().__init__(message)
        self.run_dir = run_dir


def _fields(arg: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(arg) if f is not None]
    except ValueError as err:
        raise ValueError(f"command argument {arg!r} is not a valid template: {err}") from err


@dataclasses.dataclass(frozen=True)
class ExternalModel:
    """A forward model run as an external program, one run per member.

    command: the argument list, e.g. ``[sys.executable, "model.py",
    "{input}", "{output}"]``; the first entry is the program (found on the
    PATH or a path to an executable, checked here); the others may hold
    the placeholders ``{input}``, ``{output}``, ``{run_dir}`` (``{{``/``}}``
    for literal braces). A single string is refused (no shell).
    output_file: the output file's name inside the run directory.
    input_format: ``"json"`` (default) or ``"npy"``. output_format:
    ``"json"``, ``"npy"`` or ``"txt"``; None infers it from output_file's
    suffix (.json, .npy, .txt, .dat). work_dir: where run directories are
    made (created if missing); None makes a fresh temporary directory.
    timeout: None or seconds after which the program's process group is
    killed (the member fails with ``MemberTimeout``). keep: which run
    directories stay: ``"failed"`` (default), ``"all"`` or ``"none"``.
    env: extra environment variables for the program (added to this
    process's environment), or None. input_names: None (the JSON input is a
    list of the p values) or p distinct names (the JSON input is an object
    name → value; needs input_format="json").

    Call: ``model(x, tag=None)`` with x: (p,) → (d,) float64 outputs. tag:
    the run directory's name prefix (letters, digits, ``_.-``; e.g.
    ``"it003-m017"``), default ``"run"``; the directory is always fresh.
    Picklable: process pools and Dask workers can run it.
    """

    command: Sequence[str]
    output_file: str = "output.json"
    input_format: str = "json"
    output_format: str | None = None
    work_dir: str | os.PathLike | None = None
    timeout: float | None = None
    keep: str = "failed"
    env: Mapping[str, str] | None = None
    input_names: Sequence[str] | None = None

    def __post_init__(self):
        cmd = self.command
        if isinstance(cmd, (str, bytes)) or not isinstance(cmd, Sequence) or not cmd:
            raise TypeError("command must be a non-empty list of arguments (no shell string), "
                            f"got {cmd!r}")
        if not all(isinstance(a, str) for a in cmd):
            raise TypeError(f"command entries must be strings, got {cmd!r}")
        # The program is taken literally (never formatted: a path may hold
        # braces); only the placeholders a user might expect expanded are refused.
        if any("{" + p + "}" in cmd[0] for p in PLACEHOLDERS):
            raise ValueError(f"command[0] is the program and cannot hold placeholders, "
                             f"got {cmd[0]!r}")
        for arg in cmd[1:]:
            unknown = [f for f in _fields(arg) if f not in PLACEHOLDERS]
            if unknown:
                raise ValueError(f"command argument {arg!r} has unknown placeholder(s) "
                                 f"{unknown}; known: {['{' + p + '}' for p in PLACEHOLDERS]}")
        if shutil.which(cmd[0]) is None:
            raise FileNotFoundError(f"command[0]: program {cmd[0]!r} not found on the PATH "
                                    "or not an executable file")
        out = Path(self.output_file)
        if out.is_absolute() or ".." in out.parts or str(out) in ("", "."):
            raise ValueError(f"output_file must be a relative name inside the run directory, "
                             f"got {self.output_file!r}")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, "
                             f"got {self.input_format!r}")
        fmt = self.output_format
        if fmt is None:
            fmt = OUTPUT_FORMATS.get(out.suffix.lower())
            if fmt is None:
                raise ValueError(f"cannot infer output_format from {self.output_file!r}; give "
                                 f"output_format, one of {sorted(set(OUTPUT_FORMATS.values()))}")
        elif fmt not in OUTPUT_FORMATS.values():
            raise ValueError(f"output_format must be one of "
                             f"{sorted(set(OUTPUT_FORMATS.values()))}, got {fmt!r}")
        t = self.timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                              or not t > 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {t!r}")
        if self.keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, got {self.keep!r}")
        names = self.input_names
        if names is not None:
            if isinstance(names, str) or not all(isinstance(n, str) for n in names) \
                    or len(set(names)) != len(names) or not names:
                raise TypeError(f"input_names must be a non-empty sequence of distinct "
                                f"strings or None, got {names!r}")
            if self.input_format != "json":
                raise ValueError("input_names needs input_format='json' (the input is "
                                 "then a JSON object name -> value)")
            object.__setattr__(self, "input_names", tuple(names))
        env = self.env
        if env is not None:
            if not isinstance(env, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
                raise TypeError(f"env must be a mapping of str to str or None, got {env!r}")
            env = tuple(sorted(env.items()))
        work = (Path(tempfile.mkdtemp(prefix="enkit-external-")) if self.work_dir is None
                else Path(self.work_dir))
        work.mkdir(parents=True, exist_ok=True)
        for name, value in (("command", tuple(cmd)), ("output_format", fmt),
                            ("work_dir", str(work.resolve())),
                            ("env", None if env is None else dict(env))):
            object.__setattr__(self, name, value)

    # a dict field is unhashable: hash the sorted items instead
    def __hash__(self) -> int:
        env = None if self.env is None else tuple(sorted(self.env.items()))
        return hash((self.command, self.output_file, self.input_format, self.output_format,
                     self.work_dir, self.timeout, self.keep, env, self.input_names))

    def __call__(self, x: ArrayLike, tag: str | None = None) -> np.ndarray:
        """Run the program on one member. x: (p,) → (d,) float64."""
        x = np.asarray(x, dtype=float)
        if x.ndim != 1:
            raise ValueError(f"x must be one member's (p,) vector, got shape {x.shape}")
        if tag is not None and not (isinstance(tag, str) and _TAG.match(tag)):
            raise ValueError(f"tag must be a name of letters, digits and '_.-', got {tag!r}")
        run_dir = Path(tempfile.mkdtemp(prefix=f"{tag or 'run'}-", dir=self.work_dir))
        ok = False
        try:
            out = self._run(x, run_dir)
            ok = True
            return out
        finally:
            if self.keep == "none" or (ok and self.keep == "failed"):
                shutil.rmtree(run_dir, ignore_errors=True)

    # ------------------------------------------------------------ steps ----

    def _args(self, run_dir: Path, input_path: Path, output_path: Path) -> list[str]:
        values = {"input": str(input_path), "output": str(output_path), "run_dir": str(run_dir)}
        return [self.command[0]] + [a.format(**values) for a in self.command[1:]]

    def _where(self, run_dir: Path) -> str:
        return ("run directory removed (keep='none')" if self.keep == "none"
                else f"run directory {run_dir}")

    def _run(self, x: np.ndarray, run_dir: Path) -> np.ndarray:
        input_path = run_dir / f"input.{self.input_format}"
        output_path = run_dir / self.output_file
        if self.input_format == "json" and self.input_names is not None:
            if len(self.input_names) != x.shape[0]:
                raise ValueError(f"x has {x.shape[0]} values but input_names names "
                                 f"{len(self.input_names)}")
            input_path.write_text(json.dumps(dict(zip(self.input_names, x.tolist()))))
        elif self.input_format == "json":
            input_path.write_text(json.dumps(x.tolist()))
        else:
            np.save(input_path, x)
        args = self._args(run_dir, input_path, output_path)
        env = None if self.env is None else {**os.environ, **self.env}
        _LOG.debug("running %s in %s", args, run_dir)
        with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
            proc = subprocess.Popen(args, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, env=env, start_new_session=True)
            try:
                code = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise MemberTimeout(f"{self.command[0]} ran past timeout={self.timeout} s and "
                                    f"was killed; {self._where(run_dir)}") from None
            except BaseException:  # interrupted: never leave the program running
                _kill_group(proc)
                raise
        if code != 0:
            raise ExternalModelError(
                f"{self.command[0]} exited with status {code}; {self._where(run_dir)}; "
                f"stderr ends: {_tail(run_dir / 'stderr.log')!r}", self._kept(run_dir))
        return self._read(output_path, run_dir)

    def _kept(self, run_dir: Path) -> str | None:
        return None if self.keep == "none" else str(run_dir)

    def _read(self, path: Path, run_dir: Path) -> np.ndarray:
        def fail(what: str):
            return ExternalModelError(f"output {self.output_file!r} {what}; "
                                      f"{self._where(run_dir)}", self._kept(run_dir))

        if not path.is_file():
            raise fail("was not written")
        try:
            if self.output_format == "json":
                raw = json.loads(path.read_text())
            elif self.output_format == "npy":
                raw = np.load(path, allow_pickle=False)
            else:
                raw = np.loadtxt(path, dtype=float, ndmin=1)
            g = np.asarray(raw, dtype=float)
        except (ValueError, TypeError, OSError, UnicodeDecodeError) as err:
            raise fail(f"is not a {self.output_format} array of numbers "
                       f"({type(err).__name__}: {err})") from None
        if g.ndim != 1:
            raise fail(f"must hold a 1-D array (d,), got shape {g.shape}")
        if not np.all(np.isfinite(g)):
            raise fail("holds NaN or inf")
        return g


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the program and everything it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(path: Path, n: int = 300) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
