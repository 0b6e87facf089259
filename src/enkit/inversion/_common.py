"""What every inversion process shares (private): states, diagnostics, input
checks, the per-iteration key, the guarded zero step, and the block-diagonal
noise of augmented (prior-in-the-data) formulations.

A process is a frozen dataclass registered as a pytree with three pure
methods (STYLE 1):

- ``init(key, ensemble) -> state``;
- ``ask(state) -> (N, p)`` parameters at which to run the forward map;
- ``tell(state, G, y, noise, *, dt) -> (state, info)``, G: (N, d) outputs of
  the asked parameters, y: (d,) data, noise: covariance operator Γ.

Stochastic processes store the key given to ``init`` in the state and derive
the key of iteration n as ``fold_in(key, n)``; no key is ever used twice.
Diagnostics come back in ``info``, never inside the state.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._checks import (  # noqa: F401 - check_bool is used by the processes
    check_bool,
    check_finite,
    check_float,
    check_ndim,
    check_spread,
    is_concrete,
    zero_spread_columns,
)
from enkit._pytree import register_dataclass
from enkit.covariance import BlockDiagonal as _BlockDiagonal
from enkit.covariance import Covariance, as_covariance
from enkit.filters._common import as_key
from enkit.linalg import SOLVE_METHODS, check_solve_method


class EnsembleState(NamedTuple):
    """Carried state of an ensemble process.

    ensemble: (N, p) parameter ensemble, members on axis 0; iteration: int32
    scalar, number of completed ``tell`` calls; time: scalar algorithmic time
    Σ Δtᵢ; key: the PRNG key given to ``init`` (None for deterministic
    processes), from which iteration n draws with ``fold_in(key, n)``.
    """

    ensemble: Array
    iteration: Array
    time: Array
    key: Array | None


class InversionInfo(NamedTuple):
    """Diagnostics of one ``tell``, returned beside the new state.

    misfit: ‖Γ^{-1/2}(y − Ḡ)‖ of the outputs that were told (Ḡ the ensemble
    mean of G; for UKI the output of the central sigma point), i.e. of the
    parameters *before* the update; dt: the step Δt that was applied.
    """

    misfit: Array
    dt: Array


def check_ensemble(ensemble, name: str = "ensemble") -> Array:
    """Validate an (N, p) parameter ensemble (float, N ≥ 2, finite)."""
    check_float(name, ensemble)
    E = jnp.asarray(ensemble)
    check_ndim(name, E, 2, "(N, p): members on axis 0")
    if E.shape[0] < 2:
        raise ValueError(
            f"{name} must hold at least N=2 members on axis 0, got shape {E.shape}"
        )
    check_finite(name, E)
    return E


SPREAD_ADVICE = (
    "Draw the initial ensemble from the prior, e.g. "
    "enkit.GaussianPrior(mean, covariance).sample(key, N) (or "
    "enkit.ParameterSpace.sample(key, N) for named, bounded parameters)"
)


def check_initial_spread(E, name: str = "ensemble") -> None:
    """Refuse a concrete initial ensemble of identical members, and warn
    about parameters with zero spread across the members.

    Every ensemble Kalman update moves the members within the span of their
    anomalies (the subspace property), so identical members never move at
    all: an error. A single parameter with the same value in every member
    stays at that value too (unless a prior couples it to others, as in
    GNKI), which may be meant (a parameter held fixed): a ``UserWarning``
    naming the parameters.
    """
    check_spread(name, E, consequence="the process can never update it (every update "
                 "moves the members within the span of their anomalies)",
                 advice=SPREAD_ADVICE)
    cols = zero_spread_columns(E)
    if cols.size:
        warnings.warn(
            f"{name}: the parameters {cols.tolist()} have zero spread (the same value in "
            f"all {np.shape(E)[0]} members); ensemble Kalman updates move the members "
            "within the span of their anomalies, so these parameters will typically "
            "never change. " + SPREAD_ADVICE + ", unless you mean to hold them fixed",
            UserWarning, stacklevel=3)


def check_tell(G, y, noise, n_rows: int, dtype, *, what: str = "N"):
    """Validate ``G: (n_rows, d)``, ``y: (d,)`` and wrap ``noise`` (dim d).

    The forward outputs must be finite: a crashed member (NaN/inf) raises
    here, naming the rows. (Failure policies that drop or resample members
    belong to a later layer; this check is their seam.)
    """
    check_ndim("G", G, 2, f"({what}, d) = ({n_rows}, d): one row per asked member")
    G = jnp.asarray(G)
    if G.shape[0] != n_rows:
        raise ValueError(
            f"G must have shape ({what}, d) = ({n_rows}, d), one row per asked "
            f"member, got shape {G.shape}"
        )
    d = G.shape[1]
    check_ndim("y", y, 1, f"(d,) = ({d},)")
    y = jnp.asarray(y, dtype)
    if y.shape != (d,):
        raise ValueError(f"y must have shape (d,) = ({d},) to match G, got shape {y.shape}")
    check_finite("y", y)
    if is_concrete(G):
        bad = ~np.all(np.isfinite(np.asarray(G)), axis=1)
        if bad.any():
            raise ValueError(
                f"G must be finite, but the rows {np.flatnonzero(bad).tolist()} "
                "contain NaN or inf (forward-model failures)"
            )
    noise = as_covariance(noise, d, name="noise").astype(dtype)
    return G.astype(dtype), y, noise


def check_dt(dt, dtype, *, below_one: bool = False, at_most_one: bool = False) -> Array:
    """Δt as a scalar of ``dtype``; concrete values must be finite and ≥ 0
    (and < 1 where ``below_one``, ≤ 1 where ``at_most_one``: a step length)."""
    dt = jnp.asarray(dt, dtype)
    if dt.ndim != 0:
        raise ValueError(f"dt must be a scalar, got shape {dt.shape}")
    if is_concrete(dt):
        v = float(dt)
        if not np.isfinite(v) or v < 0 or (below_one and v >= 1):
            bound = "in [0, 1)" if below_one else "finite and >= 0"
            raise ValueError(f"dt must be {bound}, got {v}")
        if at_most_one and v > 1:
            raise ValueError(f"dt (the step length) must be in [0, 1], got {v}")
    return dt


def init_key(key, stochastic: bool, name: str):
    """The key stored by ``init``: required (or an int seed) when stochastic,
    None otherwise."""
    if not stochastic:
        return None
    return as_key(key, name)


def iteration_key(state) -> Array:
    """Key of the current iteration: ``fold_in(state.key, state.iteration)``."""
    return jax.random.fold_in(state.key, state.iteration)


def innermost_state(state):
    """The state of the innermost process: wrapper states (inflation,
    momentum) hold the wrapped process's state in a field ``inner``."""
    while not hasattr(state, "ensemble") and hasattr(state, "inner"):
        state = state.inner
    return state


def guarded(dt: Array, new: Array, old: Array) -> Array:
    """``new`` where Δt > 0, else exactly ``old`` (a zero step changes nothing).

    A concrete Δt (an eager call) picks one without a pass over the arrays.
    """
    if is_concrete(dt):
        return new if float(dt) > 0 else old
    return jnp.where(dt > 0, new, old)


def new_state(state, ensemble: Array, dt: Array, *, guard: bool = True):
    """The state after one step of length Δt (any state NamedTuple with
    ``ensemble``, ``iteration`` and ``time``; other fields are kept).

    guard: keep exactly the old ensemble when Δt = 0 (``guarded``); an
    update that is exactly the identity at Δt = 0 by construction passes
    False and saves a pass over the (N, p) arrays.
    """
    return state._replace(
        ensemble=guarded(dt, ensemble, state.ensemble) if guard else ensemble,
        iteration=state.iteration + 1,
        time=state.time + dt,
    )


def misfit(G: Array, y: Array, noise: Covariance) -> Array:
    """‖Γ^{-1/2}(y − Ḡ)‖, Ḡ the mean of the rows of G (N, d)."""
    r = noise.whiten(y - jnp.mean(G, axis=0))
    return jnp.sqrt(jnp.sum(r * r))


def BlockDiagonal(a: Covariance, b: Covariance) -> Covariance:
    """``blockdiag(A, B)``: the noise of the augmented data (y, m₀) in TEKI
    and UKI, ``blockdiag(Γ, C₀)``, A's entries first on the last axis
    (``enkit.covariance.BlockDiagonal`` of the two)."""
    return _BlockDiagonal((a, b))


class EnsembleProcess:
    """Shared ``init`` and ``ask`` of the processes that carry an ensemble."""

    stochastic = False  # a dataclass field in the stochastic processes

    @property
    def needs_key(self) -> bool:
        """Whether ``init`` needs a key (the process draws random numbers)."""
        return self.stochastic

    def _check_ensemble(self, E: Array) -> None:
        """Further checks of the initial ensemble (e.g. against the prior)."""

    def init(self, key: Array | int | None, ensemble) -> EnsembleState:
        """Initial state from the (N, p) ``ensemble`` (usually prior draws).

        key: PRNG key or integer seed; required when the process draws
        random numbers (``needs_key``: stored, and iteration n draws from
        ``fold_in(key, n)``),
        ignored otherwise. Returns an ``EnsembleState`` at iteration 0, time 0.
        Concrete members that are all identical raise (zero spread: no update
        could move them); a parameter with zero spread warns
        (``check_initial_spread``). A process with ``overwrite=True`` (whose
        ``tell`` reuses the told ensemble's buffer) stores a copy, so the
        array passed here is never deleted.
        """
        E = check_ensemble(ensemble)
        self._check_ensemble(E)
        check_initial_spread(E)
        if getattr(self, "overwrite", False):
            E = jnp.array(E, copy=True)
        k = init_key(key, self.needs_key, type(self).__name__)
        return EnsembleState(E, jnp.asarray(0, jnp.int32), jnp.zeros((), E.dtype), k)

    def ask(self, state: EnsembleState) -> Array:
        """The (N, p) parameters whose forward outputs ``tell`` expects."""
        return state.ensemble


def check_process_solve(obj, allowed: tuple[str, ...] = SOLVE_METHODS, reason: str = "") -> None:
    """Validate a process's ``method``/``rcond`` fields (the innovation solve,
    see ``enkit.linalg.kalman_solve``) and store ``rcond`` as a float, so the
    two stay hashable static metadata."""
    check_solve_method(obj.method, obj.rcond, allowed=allowed, reason=reason)
    if obj.rcond is not None and not isinstance(obj.rcond, float):
        if isinstance(obj.rcond, jax.core.Tracer):
            raise ValueError("rcond of a process is static: pass a Python float, "
                             "not a traced value")
        object.__setattr__(obj, "rcond", float(obj.rcond))


def register(cls, data=(), meta=()):
    """Register a frozen-dataclass process as a pytree (hyperparameters as
    data leaves, structural options as metadata)."""
    register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))
    return cls
