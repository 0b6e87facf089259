"""Joint state–parameter estimation by state augmentation, and parameter
estimation with identity dynamics (ADAO's ``EstimationOf="Parameters"``).

**Augmentation.** Static parameters θ (p,) of a model join its state x (n,)
in the augmented state z = [x, θ] (n + p,), whose dynamics hold θ fixed:

    z ↦ [M(x; θ), θ],

each member integrating with its own θ. Any analysis scheme then updates θ
through the sample cross-covariance between θ and the observed state (h sees
x only), so a filter, a smoother or an inflation step needs nothing special:
``augment`` gives a model, ``AugmentedModel.observation`` an h, and
``BlockInflation`` an inflation step for ``enkit.assimilate`` (or
``enkit.enks``). References: Evensen (2009), "The ensemble Kalman filter
for combined state and parameter estimation", IEEE Control Syst. Mag. 29(3),
83–104; the review of Ruiz, Pulido & Miyoshi (2013), JMSJ 91(2), 79–99.

**Parameter spread.** The parameters have no dynamics that regenerate their
spread, so every analysis shrinks it and, left alone, it collapses and the
estimate freezes (Ruiz, Pulido & Miyoshi 2013). ``BlockInflation`` runs
one inflation step on the state block and another on the parameter block
(any of ``enkit.inflation``'s steps: multiplicative, RTPS, additive noise —
a random walk of the parameters —, adaptive), and ``SpreadFloor`` keeps each
parameter's spread from falling below a minimum (the conditional covariance
inflation of Aksoy, Zhang & Nielsen-Gammon 2006, MWR 134).

**Parameters only.** ``estimate_parameters`` is ADAO's ``EstimationOf=
"Parameters"``: the state is θ itself, the model is the identity with no
evolution error (ADAO: M = Id, Q = 0), and each observation y_k is of h(θ)
(or h(θ, u_k) with controls). ADAO's default ``EstimationOf="State"`` is
``enkit.assimilate`` with the model's own dynamics; joint estimation of both
is ``assimilate`` on an ``augment``-ed model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_float, check_ndim
from enkit._pytree import register_dataclass
from enkit.assimilation import BlackBoxModel, PerTime, assimilate
from enkit.filters._common import observe
from enkit.inflation import InflationStep, NoInflation, multiplicative

__all__ = [
    "AugmentedModel",
    "AugmentedResult",
    "BlockInflation",
    "FieldParameters",
    "IdentityModel",
    "SpreadFloor",
    "StateObservation",
    "augment",
    "augmented_ensemble",
    "augmented_observation",
    "estimate_parameters",
    "split",
    "spread_floor",
]


def _as_pytree(f):
    """A plain function as a pytree with no leaves (``Partial``); pytrees kept."""
    leaves = jax.tree_util.tree_leaves(f)
    if callable(f) and len(leaves) == 1 and leaves[0] is f:
        return jax.tree_util.Partial(f)
    return f


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------
# Augmented model
# --------------------------------------------------------------------------


def _fields(model) -> tuple[str, ...]:
    if dataclasses.is_dataclass(model) and not isinstance(model, type):
        return tuple(f.name for f in dataclasses.fields(model))
    if isinstance(model, tuple) and hasattr(model, "_fields"):
        return tuple(model._fields)
    return ()


def _replace(model, **values):
    if dataclasses.is_dataclass(model) and not isinstance(model, type):
        return dataclasses.replace(model, **values)
    return model._replace(**values)


@dataclasses.dataclass(frozen=True)
class FieldParameters:
    """Substitute θ into named fields of a dataclass or NamedTuple model:
    ``(model, θ) -> model`` with the fields ``names`` (in order, each of the
    given shape, ravelled) replaced by the consecutive pieces of θ.

    Built by ``augment(model, "F")``; hashable, so jit caches on it.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def __call__(self, model, theta: Array):
        values, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = math.prod(shape)
            values[name] = theta[i:i + size].reshape(shape)
            i += size
        return _replace(model, **values)

    def values(self, model) -> Array:
        """The current θ of ``model``: its fields ``names`` ravelled, (p,)."""
        return jnp.concatenate(
            [jnp.ravel(jnp.asarray(getattr(model, name))) for name in self.names])


@dataclasses.dataclass(frozen=True)
class AugmentedModel:
    """One model step of the augmented state z = [x, θ]: ``z ↦ [M(x; θ), θ]``.

    M(x; θ) is ``set_parameters(model, θ)(x)`` (``(x, u)`` with controls), so
    under the driver's vmap each member integrates with its own θ; θ is
    carried unchanged. model: a pytree model (its leaves stay leaves; a plain
    function is wrapped in ``jax.tree_util.Partial``); n_state: n;
    n_parameters: p; set_parameters: ``(model, θ) -> model`` (a static,
    hashable callable, e.g. ``FieldParameters``; a new lambda on every call
    recompiles the driver). ``dt`` is the model's. Build it with ``augment``.
    Reference: Evensen (2009), IEEE Control Syst. Mag. 29(3), 83–104.
    """

    model: Any
    n_state: int
    n_parameters: int
    set_parameters: Callable[[Any, Array], Any]

    def __post_init__(self):
        _positive_int("n_state", self.n_state)
        _positive_int("n_parameters", self.n_parameters)
        if not callable(self.set_parameters):
            raise TypeError("set_parameters must be a callable (model, theta) -> model")
        object.__setattr__(self, "model", _as_pytree(self.model))

    @property
    def dim(self) -> int:
        """n + p."""
        return self.n_state + self.n_parameters

    @property
    def dt(self):
        """The wrapped model's time step (None when it has none)."""
        return getattr(self.model, "dt", None)

    def __call__(self, z: Array, u: Any = None) -> Array:
        """Advance one augmented member z: (n + p,) by one model step."""
        if jnp.shape(z) != (self.dim,):
            raise ValueError(
                f"z must have shape (n + p,) = ({self.dim},), got {jnp.shape(z)}")
        x, theta = z[:self.n_state], z[self.n_state:]
        model = self.set_parameters(self.model, theta)
        x = model(x) if u is None else model(x, u)
        return jnp.concatenate([jnp.asarray(x, z.dtype), theta])

    def observation(self, h):
        """``augmented_observation(h, n_state, n_parameters)``."""
        return augmented_observation(h, self.n_state, self.n_parameters)

    def ensemble(self, states: ArrayLike, parameters: ArrayLike) -> Array:
        """``augmented_ensemble(states, parameters)`` with the sizes checked."""
        E = augmented_ensemble(states, parameters)
        if E.shape[1] != self.dim or np.shape(states)[1] != self.n_state:
            raise ValueError(
                f"states must have shape (N, {self.n_state}) and parameters "
                f"(N, {self.n_parameters}), got {np.shape(states)} and {np.shape(parameters)}")
        return E

    def split(self, result) -> AugmentedResult:
        """``split(result, n_state)``."""
        return split(result, self.n_state)


register_dataclass(
    AugmentedModel, data_fields=["model"],
    meta_fields=["n_state", "n_parameters", "set_parameters"])


_SENTINEL = object()


def _check_field(model, name):
    fields = _fields(model)
    kind = type(model).__name__
    if name not in fields:
        listed = ", ".join(fields) if fields else "none (not a dataclass or NamedTuple)"
        raise ValueError(f"{kind} has no field {name!r} to estimate; its fields are: {listed}")
    value = getattr(model, name)
    try:
        probe = _replace(model, **{name: _SENTINEL})
        leaves = jax.tree_util.tree_leaves(probe)
    except Exception:  # its own checks refuse a non-number: not a parameter
        leaves = ()
    if not any(leaf is _SENTINEL for leaf in leaves):
        raise ValueError(
            f"field {name!r} of {kind} is static (not a pytree leaf), so it cannot "
            "be given a value per member; estimate an array-leaf field instead")
    if not np.issubdtype(np.asarray(value).dtype, np.number):
        raise ValueError(f"field {name!r} of {kind} must hold numbers, got {value!r}")
    return np.shape(value)


def augment(
    model: Any,
    parameters: str | Sequence[str] | Callable[[Any, Array], Any],
    *,
    n_state: int | None = None,
    n_parameters: int | None = None,
) -> AugmentedModel:
    """The augmented model ``z = [x, θ] ↦ [M(x; θ), θ]`` for joint
    state–parameter estimation (θ static; see the module docstring).

    model: one step of one member, ``(n,) -> (n,)`` or ``(x, u) -> x``, a
    pytree (e.g. ``enkit.Lorenz96(n=40)``). parameters: the name of an
    array-leaf field of a dataclass/NamedTuple model (``"F"``), a sequence of
    names (θ is their ravelled values, in order), or a function
    ``(model, θ) -> model`` that substitutes θ (then ``n_parameters`` is
    required). n_state: n, default ``model.dim``. Example:
    ``augment(enkit.Lorenz96(n=40), "F")`` has n = 40, p = 1.
    Reference: Evensen (2009), IEEE Control Syst. Mag. 29(3), 83–104.
    """

    if isinstance(model, BlackBoxModel):
        raise TypeError(
            "augment needs a JAX-traceable model; for a BlackBoxModel, augment its "
            "step yourself: BlackBoxModel(lambda z: np.concatenate([step(z[:n], z[n:]), z[n:]]))")
    if isinstance(parameters, str):
        parameters = (parameters,)
    if callable(parameters):
        if n_parameters is None:
            raise TypeError("a function `parameters` needs n_parameters= (the size p of θ)")
        setter = parameters
    else:
        names = tuple(parameters)
        if not names or not all(isinstance(s, str) for s in names):
            raise TypeError(
                "parameters must be a field name, a sequence of field names or a "
                f"function (model, theta) -> model, got {parameters!r}")
        shapes = tuple(_check_field(model, s) for s in names)
        setter = FieldParameters(names, shapes)
        if n_parameters is not None and n_parameters != setter.size:
            raise ValueError(
                f"n_parameters={n_parameters} disagrees with the fields {names}, "
                f"which hold {setter.size} numbers")
        n_parameters = setter.size
    if n_state is None:
        n_state = getattr(model, "dim", None)
        if n_state is None:
            raise TypeError(
                f"{type(model).__name__} has no `dim`: pass n_state= (the size n of x)")
    return AugmentedModel(model, int(n_state), int(n_parameters), setter)


# --------------------------------------------------------------------------
# Observation operator, ensembles, results
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StateObservation:
    """``h`` of the state x applied to an augmented member z = [x, θ]:
    ``z ↦ h(z[:n])`` (``h(z[:n], u)`` with controls). h: a pytree callable
    (a plain function is wrapped in ``Partial``); n_state: n, static."""

    h: Any
    n_state: int

    def __post_init__(self):
        _positive_int("n_state", self.n_state)
        object.__setattr__(self, "h", _as_pytree(self.h))

    def __call__(self, z: Array, u: Any = None) -> Array:
        x = z[:self.n_state]
        return self.h(x) if u is None else self.h(x, u)


register_dataclass(StateObservation, data_fields=["h"], meta_fields=["n_state"])


def _pad_matrix(H, n_state, n_parameters, name):
    H = jnp.asarray(H)
    if H.shape[-1] != n_state:
        raise ValueError(
            f"{name} as a matrix must have n_state = {n_state} columns, got shape {H.shape}")
    pad = [(0, 0)] * (H.ndim - 1) + [(0, n_parameters)]
    return jnp.pad(H, pad)


def augmented_observation(h: Any, n_state: int, n_parameters: int):
    """h of the state as an operator on z = [x, θ] (θ unobserved).

    h: a callable on x (``(n,) -> (m,)`` or ``(x, u)``) → ``StateObservation``;
    an (m, n) matrix → ``[H, 0]`` of shape (m, n + p); ``per_time(H)`` with H
    (K, m, n) → ``per_time`` of (K, m, n + p); a list of K of these (the
    driver's ragged path) → the list of each.
    """

    _positive_int("n_state", n_state)
    _positive_int("n_parameters", n_parameters)
    if isinstance(h, (list, tuple)):
        return [augmented_observation(hk, n_state, n_parameters) for hk in h]
    if isinstance(h, PerTime):
        if callable(h.value) or np.ndim(h.value) != 3:
            raise ValueError(
                "per_time(h) must hold a (K, m, n) stack of matrices, got "
                f"{type(h.value).__name__} of shape {np.shape(h.value)}")
        return PerTime(_pad_matrix(h.value, n_state, n_parameters, "per_time(h)"))
    if callable(h):
        return StateObservation(h, n_state)
    if np.ndim(h) != 2:
        raise ValueError(
            f"h must be a callable or an (m, n) matrix (per_time(H) for a stack), "
            f"got shape {np.shape(h)}")
    return _pad_matrix(h, n_state, n_parameters, "h")


def augmented_ensemble(states: ArrayLike, parameters: ArrayLike) -> Array:
    """The augmented ensemble ``[X, Θ]``: states (N, n) and parameters (N, p)
    (member i of one goes with member i of the other) → (N, n + p)."""
    for name, a in (("states", states), ("parameters", parameters)):
        check_float(name, a)
        check_ndim(name, a, 2, "(N, n)" if name == "states" else
                   "(N, p): one row per member (for one parameter use theta[:, None])")
        check_finite(name, a)
    X, T = jnp.asarray(states), jnp.asarray(parameters)
    if X.shape[0] != T.shape[0]:
        raise ValueError(
            f"states and parameters must have the same number of members N, "
            f"got {X.shape[0]} and {T.shape[0]}")
    dt = jnp.result_type(X.dtype, T.dtype)
    return jnp.concatenate([X.astype(dt), T.astype(dt)], axis=1)


class AugmentedResult(NamedTuple):
    """An augmented run's outputs split into the state and parameter blocks.

    state_mean (K, n), parameter_mean (K, p): the analysis means;
    state_forecast_mean, parameter_forecast_mean: the forecast means;
    state_std (K, n), parameter_std (K, p): the analysis standard deviations
    (from ``analysis_std``, or from ``analysis_ensemble``); state_ensemble
    (N, n), parameter_ensemble (N, p): the final ensemble;
    state_smoothed_mean, parameter_smoothed_mean: a smoother's
    ``smoothed_mean`` (``enkit.enks``). An output the run did not store is None.
    """

    state_mean: Any = None
    parameter_mean: Any = None
    state_forecast_mean: Any = None
    parameter_forecast_mean: Any = None
    state_std: Any = None
    parameter_std: Any = None
    state_ensemble: Any = None
    parameter_ensemble: Any = None
    state_smoothed_mean: Any = None
    parameter_smoothed_mean: Any = None


def split(result, n_state: int) -> AugmentedResult:
    """Split an ``AssimilationResult`` of the augmented state into the state
    (first ``n_state`` entries) and the parameters (the rest).

    Per-variable spreads need ``store=(..., "analysis_std")`` or
    ``"analysis_ensemble"`` (the default ``analysis_spread`` is one number
    over all variables and cannot be split).
    """
    _positive_int("n_state", n_state)
    E = result.ensemble
    if E is None or np.ndim(E) != 2 or np.shape(E)[1] <= n_state:
        raise ValueError(
            f"result.ensemble must have shape (N, n + p) with n + p > n_state = {n_state}, "
            f"got {None if E is None else np.shape(E)}")

    def cut(a):
        return (None, None) if a is None else (a[..., :n_state], a[..., n_state:])

    std = result.analysis_std
    if std is None and result.analysis_ensemble is not None:
        std = jnp.std(result.analysis_ensemble, axis=1, ddof=1)
    pieces = (result.analysis_mean, result.forecast_mean, std, E,
              getattr(result, "smoothed_mean", None))
    return AugmentedResult(*(b for a in pieces for b in cut(a)))


# --------------------------------------------------------------------------
# Inflation of the parameter block
# --------------------------------------------------------------------------


def _sub(key, i):
    return None if key is None else jax.random.fold_in(key, i)


def _block_h(h, E, lo, hi):
    """h as a function of entries lo:hi, the others held at their ensemble mean."""
    if h is None:
        return None
    zbar = jnp.mean(E, axis=0)

    def h_block(b):
        return observe(h, zbar.at[lo:hi].set(b)[None])[0]

    return h_block


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockInflation(InflationStep):
    """One inflation step on the state block ``E[:, :n_state]`` and another
    on the parameter block ``E[:, n_state:]``; each block is left bit for bit
    as the other step finds it.

    state, parameters: ``InflationStep``s (``enkit.inflation``'s steps,
    ``chain``s of them, ``SpreadFloor``); each sees its block only (init,
    forecast, analysis) and its own sub-key (``fold_in(key, 0)`` for the
    state, 1 for the parameters). A step that uses ``h`` (adaptive
    inflation) gets h as a function of its block with the other block held
    at its ensemble mean — exact when h does not depend on the other block,
    as for an augmented state observed through x only. n_state: n, static.

    E.g. ``BlockInflation(state=RTPS(0.5), parameters=SpreadFloor(0.1),
    n_state=40)``; a random walk of θ is ``parameters=AdditiveForecast(Q)``.
    Reference: Ruiz, Pulido & Miyoshi (2013), JMSJ 91(2), 79–99 (the
    treatment of the parameter ensemble spread).
    """

    state: InflationStep = NoInflation()
    parameters: InflationStep = NoInflation()
    n_state: int

    def __post_init__(self):
        _positive_int("n_state", self.n_state)
        for name in ("state", "parameters"):
            if not isinstance(getattr(self, name), InflationStep):
                raise TypeError(
                    f"{name} must be an InflationStep (e.g. enkit.RTPS(0.5)), "
                    f"got {type(getattr(self, name)).__name__}")

    def _blocks(self, E):
        n = self.n_state
        if E.shape[1] <= n:
            raise ValueError(
                f"BlockInflation(n_state={n}) needs ensembles with more than {n} "
                f"columns (state, then parameters), got shape {E.shape}")
        return E[:, :n], E[:, n:]

    def init(self, E0):
        X, T = self._blocks(jnp.asarray(E0))
        return (self.state.init(X), self.parameters.init(T))

    def before_analysis(self, state, key, Ef, y, h, R, mask):
        n, d = self.n_state, Ef.shape[1]
        X, T = self._blocks(Ef)
        X, s0 = self.state.before_analysis(state[0], _sub(key, 0), X, y,
                                           _block_h(h, Ef, 0, n), R, mask)
        T, s1 = self.parameters.before_analysis(state[1], _sub(key, 1), T, y,
                                                _block_h(h, Ef, n, d), R, mask)
        return jnp.concatenate([X, T], axis=1), (s0, s1)

    def after_analysis(self, state, key, Ef, Ea):
        Xf, Tf = self._blocks(Ef)
        Xa, Ta = self._blocks(Ea)
        Xa, s0 = self.state.after_analysis(state[0], _sub(key, 0), Xf, Xa)
        Ta, s1 = self.parameters.after_analysis(state[1], _sub(key, 1), Tf, Ta)
        return jnp.concatenate([Xa, Ta], axis=1), (s0, s1)


register_dataclass(
    BlockInflation, data_fields=["state", "parameters"], meta_fields=["n_state"])


def spread_floor(E: ArrayLike, minimum: ArrayLike, reset: ArrayLike | None = None) -> Array:
    """Conditional multiplicative inflation: per variable j with ensemble
    standard deviation σⱼ < minimumⱼ, the anomalies are rescaled so that

        σⱼ ← resetⱼ            (reset defaults to minimum: a floor),

    i.e. ``multiplicative(E, where(σ < minimum, reset/σ, 1))``; the mean and
    the other variables are unchanged, and so are the correlations between
    the member values. A variable with zero spread cannot be rescaled and is
    left as it is. E: (N, n); minimum, reset: scalars or (n,). Returns (N, n).
    Aksoy, Zhang & Nielsen-Gammon (2006, MWR 134) keep the parameter
    ensemble from collapsing with such a conditional covariance inflation,
    acting only when the spread falls below a threshold; ``reset`` above
    ``minimum`` (e.g. the initial spread) restores a larger spread when it does.
    """
    E = jnp.asarray(E)
    minimum = jnp.asarray(minimum, E.dtype)
    reset = minimum if reset is None else jnp.asarray(reset, E.dtype)
    var = jnp.var(E, axis=0, ddof=1)
    pos = var > 0
    sigma = jnp.sqrt(jnp.where(pos, var, 1.0))
    return multiplicative(E, jnp.where(pos & (sigma < minimum), reset / sigma, 1.0))


@dataclasses.dataclass(frozen=True)
class SpreadFloor(InflationStep):
    """After the analysis, ``spread_floor(Ea, minimum, reset)``: no variable's
    ensemble standard deviation stays below ``minimum`` (it is raised to
    ``reset``, default ``minimum``). Meant for the parameter block of an
    augmented state (``BlockInflation(parameters=SpreadFloor(...))``), whose
    spread nothing else regenerates. minimum, reset: scalars or (p,), leaves.
    Reference: Aksoy, Zhang & Nielsen-Gammon (2006), MWR 134, 2951–2970.
    """

    minimum: ArrayLike = 0.0
    reset: ArrayLike | None = None

    def after_analysis(self, state, key, Ef, Ea):
        return spread_floor(Ea, self.minimum, self.reset), state


register_dataclass(SpreadFloor, data_fields=["minimum", "reset"], meta_fields=[])


# --------------------------------------------------------------------------
# EstimationOf="Parameters"
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IdentityModel:
    """The model of static parameters: ``θ ↦ θ`` (``(θ, u) ↦ θ`` with
    controls). ADAO's evolution model under ``EstimationOf="Parameters"``."""

    def __call__(self, x: Array, u: Any = None) -> Array:
        return x


register_dataclass(IdentityModel, data_fields=[], meta_fields=[])


def estimate_parameters(
    theta0: ArrayLike,
    observations: ArrayLike | Sequence[ArrayLike],
    scheme: Callable[..., Array],
    *,
    h: Any,
    R: Any,
    key: Array | int | None = None,
    inflation: ArrayLike | InflationStep | None = None,
    mask: ArrayLike | None = None,
    controls: Any = None,
    model_noise: Any = None,
    store: Sequence[str] | None = None,
    checkpoint: Any = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
):
    """Sequential estimation of static parameters θ from K observation
    times: ADAO's ``EstimationOf="Parameters"``.

    The state is θ and the model is the identity, so for k = 1..K

        Θ ← inflation(Θ) → scheme(Θ, y_k, h_k, R_k),   y_k = h_k(θ) + ε_k
        (h_k(θ, u_k) with controls),

    i.e. ``enkit.assimilate(IdentityModel(), theta0, observations, scheme,
    ...)`` with one model step per observation. For a linear h and a
    deterministic square-root scheme (``enkit.etkf``) the K sequential
    updates equal, to round-off, one Kalman update of the ensemble's mean and
    covariance with all K observations stacked (errors independent between
    times). ADAO's ``EstimationOf="State"`` is ``enkit.assimilate`` with the
    model's dynamics; the two combined are ``augment``.

    theta0: (N, p) initial parameter ensemble. observations, scheme, h, R,
    key, inflation, mask, model_noise, store, checkpoint, checkpoint_every,
    resume: as in ``enkit.assimilate`` (h may be ``per_time``, or a list
    with ragged observations). controls: pytree whose leaves have a leading
    axis K: u_k goes with y_k, and a callable h is called ``h(θ, u_k)``.
    model_noise: Q of a random walk θ ← θ + N(0, Q) before each analysis
    (ADAO uses Q = 0; None). Returns the ``AssimilationResult``
    (``analysis_mean[-1]`` is the final estimate; ``times`` are 1..K).
    Reference: the ADAO user documentation (EDF/SALOME), "EstimationOf";
    Evensen (2009), IEEE Control Syst. Mag. 29(3).
    """

    check_float("theta0", theta0)
    check_ndim("theta0", theta0, 2, "(N, p): one row per member (for one parameter "
               "use theta[:, None])")
    ragged = isinstance(observations, (list, tuple))
    K = len(observations) if ragged else np.shape(observations)[0]
    if controls is not None:
        for leaf in jax.tree_util.tree_leaves(controls):
            if np.shape(leaf)[:1] != (K,):
                raise ValueError(
                    f"controls must have a leading axis of K = {K} (one per observation "
                    f"time), got a leaf of shape {np.shape(leaf)}")
        # The driver indexes controls by model time 0..K; analysis k is at time k.
        controls = jax.tree_util.tree_map(
            lambda a: jnp.concatenate([jnp.asarray(a)[:1], jnp.asarray(a)]), controls)
    options = {} if store is None else {"store": store}
    return assimilate(
        IdentityModel(), theta0, observations, scheme, h=h, R=R, key=key,
        inflation=inflation, mask=mask, steps_per_obs=1, controls=controls,
        model_noise=model_noise, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, resume=resume, **options)
