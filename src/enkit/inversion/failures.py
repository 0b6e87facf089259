"""Forward-model failures inside a calibration: evaluation and policies.

A member "fails" when its forward output holds NaN/inf or, for a black-box
model, when evaluating it raises. ``calibrate`` hands every failure to a
declared policy (DESIGN principle 7, never a silent NaN):

- ``Raise()``  (default): stop with a ``ForwardFailure`` naming the failed
  members, the iteration and the recorded errors. Works for every process.
- ``Ignore(min_fraction=0.5)``: tell the process with the successful members
  only (a sub-ensemble), then give each failed member a fresh draw from the
  Gaussian fitted to the *updated* successful members, mean ū and sample
  covariance XᵀX (N_ok − 1), drawn as ``ū + zᵀX`` (``gaussian_draws``): the
  draws stay in the span of the ensemble (the EKI subspace property holds).
  This is the "SampleSuccGauss" idea of EnsembleKalmanProcesses.jl.
- ``Resample(max_retries=3, source="successful")``: before the update,
  replace each failed member by a draw from the Gaussian fitted to the
  successful members (``source="successful"``) or to the initial ensemble
  (``source="initial"``), evaluate the redrawn members again, and repeat up
  to ``max_retries`` times; members still failing then raise.

``Ignore`` and ``Resample`` need an ensemble process (EKI, ETKI, TEKI, GNKI,
ESMDA, or one of these inside ``ConstrainedProcess``): UKI's sigma points
cannot be dropped or redrawn, and asking for it is an error.

Keys: ``calibrate`` splits its key once, ``k_process, k_fail =
jax.random.split(key)``; iteration n, attempt a of a policy draws with
``fold_in(fold_in(k_fail, n), a)`` (a = 0 for ``Ignore``'s refill,
a = 1, 2, … for ``Resample``'s retries). No key is used twice.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit.executors import evaluate_members
from enkit.inversion._common import EnsembleState
from enkit.inversion.gnki import GNKIState

__all__ = [
    "ForwardFailure",
    "NonFiniteEnsemble",
    "Ignore",
    "Raise",
    "Resample",
    "as_policy",
    "evaluate",
    "gaussian_draws",
]


class ForwardFailure(FloatingPointError):
    """Forward-model failures a policy could not (or was told not to) absorb.

    members: sorted indices of the failed members (rows of the asked
    parameters); iteration: the calibration iteration; errors: member →
    message of the exception it raised (black-box models; NaN/inf outputs
    have no entry).
    """

    def __init__(self, message: str, members, iteration: int, errors=None):
        super().__init__(message)
        self.members = [int(i) for i in members]
        self.iteration = int(iteration)
        self.errors = dict(errors or {})


class NonFiniteEnsemble(FloatingPointError):
    """An update left NaN or inf in the ensemble although the forward
    outputs it was given were finite (a step too long for the dynamics, an
    ill-posed solve). iteration: the calibration iteration whose update
    failed; members: sorted indices of the non-finite members; dt: the step
    that was applied (None for processes without one).
    """

    def __init__(self, process: str, iteration: int, members, dt=None):
        self.iteration = int(iteration)
        self.members = [int(i) for i in members]
        self.dt = None if dt is None else float(dt)
        step = "" if dt is None else f" with Δt = {self.dt:.6g}"
        hint = ("; take shorter steps: a smaller fixed Δt, an adaptive scheduler "
                "(EKSStableScheduler, DataMisfitController), or dt=None for EKS/ALDI's "
                "adaptive step" if dt is not None else "")
        super().__init__(
            f"the {process} update of iteration {self.iteration}{step} gave NaN or inf "
            f"for members {_members(self.members)} although the forward outputs it was "
            f"given were finite{hint}")


def _members(members) -> str:
    return str(members) if len(members) <= 20 else f"{members[:20]} ... ({len(members)} in all)"


def failure_message(what: str, failed: np.ndarray, iteration: int, errors: dict) -> str:
    idx = np.flatnonzero(failed).tolist()
    msg = (f"{what}: the forward model failed for members {idx} "
           f"({len(idx)} of {failed.size}) at iteration {iteration}")
    if errors:
        shown = [f"member {i}: {errors[i]}" for i in sorted(errors)[:5]]
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        msg += "; errors: " + "; ".join(shown) + more
    else:
        msg += " (NaN or inf in their outputs)"
    return msg


# ------------------------------------------------------------ evaluation ----


def _one(forward: Callable, u: np.ndarray, d: int) -> np.ndarray:
    """Run one member and check its output shape (raises on any problem)."""
    g = np.asarray(forward(u), dtype=float)
    if g.shape != (d,):
        raise ValueError(f"forward returned shape {g.shape}, expected (d,) = ({d},)")
    return g


def evaluate(forward: Callable[[np.ndarray], ArrayLike], U: ArrayLike,
             executor: concurrent.futures.Executor | None = None, *,
             output_dim: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Evaluate a black-box forward map on every member, never crashing.

    forward: a Python callable on one member's NumPy parameters (p,) →
    (d,) outputs; U: (N, p) parameters; executor: any
    ``concurrent.futures.Executor`` (members are submitted one by one and
    run concurrently; an ``enkit.executors.MemberExecutor`` adds its
    per-member timeout and retries), or None to run them here one after
    another; output_dim: d. The members go through
    ``enkit.executors.evaluate_members``.

    A member whose call raises, returns a shape other than (d,), or returns
    NaN/inf is a failure: its row of G is NaN, ``failed[i]`` is True and, for
    an exception, ``errors[i]`` holds ``"TypeName: message"``.
    Returns ``(G (N, d) float64, failed (N,) bool, errors dict)``.
    """
    U = np.asarray(U)
    N = U.shape[0]
    G = np.full((N, output_dim), np.nan)
    errors: dict[int, str] = {}
    results = evaluate_members(partial(_one, forward, d=output_dim),
                               [U[i].copy() for i in range(N)], executor=executor)
    for r in results:
        if r.ok:
            G[r.index] = r.value
        else:
            errors[r.index] = r.error
    failed = ~np.all(np.isfinite(G), axis=1)
    return G, failed, errors


# -------------------------------------------------------------- policies ----


@dataclasses.dataclass(frozen=True)
class Raise:
    """Stop at the first failure with a ``ForwardFailure`` naming the members."""

    needs_ensemble = False


@dataclasses.dataclass(frozen=True)
class Ignore:
    """Update with the successful members; refill the failed ones from the
    Gaussian of the updated successful members (see the module docstring).

    min_fraction: the smallest fraction of successful members (in (0, 1])
    with which an update is still made; fewer raise ``ForwardFailure``. At
    least 2 successes are always required (a sample covariance needs them).
    """

    min_fraction: float = 0.5
    needs_ensemble = True

    def __post_init__(self):
        f = self.min_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"min_fraction must be a number in (0, 1], got {f!r}")

    def min_successes(self, N: int) -> int:
        return max(2, int(np.ceil(self.min_fraction * N - 1e-12)))


@dataclasses.dataclass(frozen=True)
class Resample:
    """Redraw failed members and evaluate them again, before the update.

    max_retries: number of redraw rounds (≥ 1) before ``ForwardFailure``;
    source: ``"successful"`` draws from the Gaussian fitted to the members
    that succeeded (≥ 2 needed), ``"initial"`` from the Gaussian fitted to
    the initial ensemble (the prior draws). Draws are ``ū + zᵀX``
    (``gaussian_draws``), so they stay in the span of those members.
    """

    max_retries: int = 3
    source: str = "successful"
    needs_ensemble = True

    def __post_init__(self):
        r = self.max_retries
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
            raise ValueError(f"max_retries must be an integer >= 1, got {r!r}")
        if self.source not in ("successful", "initial"):
            raise ValueError(
                f"source must be 'successful' or 'initial', got {self.source!r}")


_NAMES = {"raise": Raise, "ignore": Ignore, "resample": Resample}


def as_policy(failure: Any) -> Raise | Ignore | Resample:
    """A policy object from ``"raise"``, ``"ignore"``, ``"resample"`` (their
    defaults) or a ``Raise``/``Ignore``/``Resample`` instance."""
    if isinstance(failure, (Raise, Ignore, Resample)):
        return failure
    if isinstance(failure, str) and failure in _NAMES:
        return _NAMES[failure]()
    raise ValueError(
        "failure must be 'raise', 'ignore', 'resample' or a Raise/Ignore/Resample "
        f"policy, got {failure!r}"
    )


# ------------------------------------------------ member-wise state edits ----


def member_fields(state) -> tuple[str, ...] | None:
    """The fields of a process state holding one row per member, or None
    for states that are not an ensemble (UKI)."""
    if isinstance(state, GNKIState):
        return ("ensemble", "anchors")
    if isinstance(state, EnsembleState):
        return ("ensemble",)
    return None


def take_members(state, idx: np.ndarray):
    """The state restricted to the members ``idx`` (a sub-ensemble)."""
    return state._replace(**{f: jnp.asarray(np.asarray(getattr(state, f))[idx])
                             for f in member_fields(state)})


@jax.jit
def gaussian_draws(key: Array, E: ArrayLike, mask: ArrayLike) -> Array:
    """One draw per row of E from N(ē, XᵀX), the Gaussian fitted to the rows
    of E where ``mask`` is True.

    E: (N, p); mask: (N,) bool with M ≥ 2 True rows; ē their mean and X
    their anomalies divided by √(M − 1) (rows outside the mask zero). Row i
    of the result is ``ē + zᵢᵀX`` with z = ``jax.random.normal(key, (N, N))``:
    an exact sample of the (possibly rank-deficient) fitted Gaussian, in the
    affine span of the masked rows. The policies give failed member i row i.
    Fixed shapes: one compilation per (N, p), whatever M. Returns (N, p).
    """
    E = jnp.asarray(E)
    w = jnp.asarray(mask, E.dtype)
    M = jnp.sum(w)
    ebar = (w @ E) / M
    X = w[:, None] * (E - ebar) / jnp.sqrt(M - 1.0)
    z = jax.random.normal(key, (E.shape[0], E.shape[0]), dtype=E.dtype)
    return ebar + z @ X


def refill(sub_new, old, ok: np.ndarray, key: Array):
    """Full state after an update of the successful members ``ok``: their
    updated rows, and for each failed member i row i of ``gaussian_draws``
    of the updated successful members (other member-wise fields, e.g.
    GNKI's anchors, keep their old rows)."""
    ok_idx, bad_idx = np.flatnonzero(ok), np.flatnonzero(~ok)
    fields = {}
    for f in member_fields(old):  # assembled in NumPy: no compilation per count
        full = np.array(getattr(old, f))
        full[ok_idx] = np.asarray(getattr(sub_new, f))
        if f == "ensemble":
            draws = gaussian_draws(key, jnp.asarray(full), jnp.asarray(ok))
            full[bad_idx] = np.asarray(draws)[bad_idx]
        fields[f] = jnp.asarray(full)
    return sub_new._replace(**fields)


def redraw(state, failed: np.ndarray, key: Array, source: ArrayLike, source_mask):
    """The state with each failed member i's parameters replaced by row i of
    ``gaussian_draws(key, source, source_mask)`` (source: (N, p))."""
    bad = np.flatnonzero(failed)
    E = np.array(state.ensemble)
    E[bad] = np.asarray(gaussian_draws(key, source, source_mask))[bad]
    return state._replace(ensemble=jnp.asarray(E))
