"""Ensemble Kalman processes as optax gradient transformations.

``ensemble_kalman(process, forward, y, noise, ...)`` wraps an ask/tell
process of ``enkit.inversion`` (``EKI``, ``ETKI``, ``TEKI``, ``EKS``,
``ALDI``, ``UKI``, ...) as an ``optax.GradientTransformationExtraArgs``:

    tx = enkit.optax.ensemble_kalman(enkit.EKI(), forward, y, noise, key=0)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)   # grads are ignored
    params = optax.apply_updates(params, updates)

``params`` is any pytree of float arrays (flattened with
``jax.flatten_util.ravel_pytree``); ``forward(params) -> (d,)`` is a JAX
function of one member's parameters, evaluated on every member with
``vmap``. Each ``update`` re-centres the carried ensemble on the ``params``
it is given (so whatever else a chain did to them, e.g.
``optax.scale_by_schedule``, is kept), asks the process for its members,
evaluates them, tells the process, and returns ``new mean − params`` as the
update. So a bare transformation reproduces the process's own ask/tell loop,
a chain with a schedule scales its steps, and ``optax.multi_transform`` can
update neural-network weights by SGD and physics parameters by the ensemble
process in one jitted loop (there ``forward`` receives the whole params
tree with the other labels' leaves replaced by ``optax.MaskedNode()``).

Extra arguments of ``update`` (all optional): ``forward=`` replaces the
forward map for this call (a closure over the current network weights, say);
``outputs=`` (N, d) supplies the members' outputs computed elsewhere (a
black-box simulator run on ``ask_members(process, state, params)``), instead of calling
any forward map; ``y=`` and ``noise=`` replace the data (minibatches). The
state's ``misfit`` is the data misfit of the members just told (the
process's ``InversionInfo.misfit``).

The gradient argument is ignored: the process uses forward evaluations
only. Needs optax (``pip install optax``); ``import enkit`` does not import
this module.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.flatten_util import ravel_pytree

from enkit.inversion import UKI
from enkit.inversion.uki import UKIState

try:
    import optax as _optax
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError("enkit.optax needs optax: pip install optax") from err

__all__ = ["EnsembleKalmanState", "ask_members", "ensemble_kalman"]


class EnsembleKalmanState(NamedTuple):
    """State of ``ensemble_kalman``: the process's own state (its ensemble
    or, for UKI, its mean and covariance), the data misfit of the last
    members told (NaN before the first update), and the update count."""

    process_state: Any
    misfit: Array
    count: Array


def _ensemble_state(process, key, theta: Array, members_: int, std) -> Any:
    if isinstance(process, UKI):
        p = theta.shape[0]
        return UKIState(theta, jnp.eye(p, dtype=theta.dtype) * jnp.square(std),
                        jnp.asarray(0, jnp.int32), jnp.zeros((), theta.dtype))
    z = jax.random.normal(jax.random.fold_in(key, 0), (members_, theta.shape[0]), theta.dtype)
    z = z - jnp.mean(z, axis=0)
    return process.init(jax.random.fold_in(key, 1), theta + std * z)


def _recentred(pstate, theta: Array):
    """``pstate`` moved so that its mean is ``theta``."""
    if isinstance(pstate, UKIState):
        return pstate._replace(mean=theta)
    E = pstate.ensemble
    return pstate._replace(ensemble=E - jnp.mean(E, axis=0) + theta)


def _mean(pstate) -> Array:
    if isinstance(pstate, UKIState):
        return pstate.mean
    return jnp.mean(pstate.ensemble, axis=0)


def ask_members(process, state: EnsembleKalmanState, params) -> Any:
    """The members the next ``update(..., params)`` of the transformation of
    ``process`` evaluates: a pytree like ``params`` with a leading member
    axis (N, ...), for computing their outputs elsewhere (``outputs=``)."""
    theta, unravel = ravel_pytree(params)
    return jax.vmap(unravel)(process.ask(_recentred(state.process_state, theta)))


def ensemble_kalman(process, forward: Callable | None, y, noise, *, key=None,
                    members: int = 20, initial_std=1.0, dt=None):
    """An ensemble Kalman process as an optax gradient transformation.

    process: an ``enkit.inversion`` process with ``init/ask/tell`` (EKI,
    ETKI, TEKI, EKS, ALDI, UKI, ...); forward: ``params -> (d,)`` JAX
    function of one member (or None when every ``update`` gets
    ``outputs=`` or ``forward=``); y: (d,) data; noise: Γ (covariance
    operator or array). key: PRNG key or integer seed of the initial
    ensemble and of the process (required except for UKI). members: N
    (ignored by UKI, which uses its 2p + 1 sigma points). initial_std: the
    initial ensemble's standard deviation around ``params`` (a scalar, or an
    array shaped like the flattened params); the members are
    ``params + std·(z − z̄)`` (mean exactly ``params``), UKI starts from
    N(params, std² I). dt: Δt of every ``tell`` — None (the process's
    default; EKS/ALDI need one: give a number or a scheduler), a number, or
    a scheduler with ``step_size(time, G, y, noise)`` (``enkit.FixedStep``,
    ``enkit.DataMisfitController``, ``enkit.EKSStableScheduler``).

    Returns an ``optax.GradientTransformationExtraArgs``.
    """
    if not all(hasattr(process, a) for a in ("init", "ask", "tell")):
        raise TypeError(f"process must have init, ask and tell (an enkit.inversion process), "
                        f"got {type(process).__name__}")
    if not isinstance(members, int) or isinstance(members, bool) or members < 2:
        raise ValueError(f"members must be an integer >= 2, got {members!r}")
    if key is None and not isinstance(process, UKI):
        raise ValueError(f"{type(process).__name__} needs key= (a PRNG key or an integer "
                         "seed) for its initial ensemble")
    if isinstance(key, int):
        key = jax.random.key(key)
    if forward is not None and not callable(forward):
        raise TypeError(f"forward must be callable or None, got {type(forward).__name__}")

    def init(params) -> EnsembleKalmanState:
        theta, _ = ravel_pytree(params)
        if not jnp.issubdtype(theta.dtype, jnp.floating):
            raise TypeError(f"params must hold float arrays, got dtype {theta.dtype}")
        std = jnp.asarray(initial_std, theta.dtype)
        pstate = _ensemble_state(process, key, theta, members, std)
        return EnsembleKalmanState(pstate, jnp.full((), jnp.nan, theta.dtype),
                                   jnp.zeros((), jnp.int32))

    def update(updates, state: EnsembleKalmanState, params=None, *, forward=forward,
               outputs=None, y=y, noise=noise, **extra):
        del updates, extra  # the gradient is not used; other transforms' extra args
        if params is None:
            raise ValueError("ensemble_kalman's update needs params (the current values)")
        theta, unravel = ravel_pytree(params)
        pstate = _recentred(state.process_state, theta)
        U = process.ask(pstate)
        if outputs is None:
            if forward is None:
                raise ValueError("update needs outputs= (N, d) or a forward map")
            G = jax.vmap(lambda u: jnp.ravel(jnp.asarray(forward(unravel(u)))))(U)
        else:
            G = jnp.asarray(outputs, theta.dtype)
            if G.ndim != 2 or G.shape[0] != U.shape[0]:
                raise ValueError(f"outputs must have shape ({U.shape[0]}, d): one row per "
                                 f"member, got {G.shape}")
        kwargs = {}
        if dt is not None:
            kwargs["dt"] = dt.step_size(pstate.time, G, y, noise) if hasattr(
                dt, "step_size") else dt
        pstate, info = process.tell(pstate, G, y, noise, **kwargs)
        step = unravel(_mean(pstate) - theta)
        return step, EnsembleKalmanState(pstate, jnp.asarray(info.misfit, theta.dtype),
                                         state.count + 1)

    return _optax.GradientTransformationExtraArgs(init, update)
