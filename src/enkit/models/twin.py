"""Twin experiments: a truth run and synthetic noisy observations of it."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from enkit._checks import check_finite, check_ndim
from enkit.covariance import as_covariance
from enkit.filters._common import ObservationOperator, observe

__all__ = ["TwinExperiment", "integrate", "twin_experiment"]


class TwinExperiment(NamedTuple):
    """A truth trajectory and its observations.

    x0: (n,) initial truth (time 0); truth: (K, n) truth at the observation
    times; observations: (K, m) ``h(truth) + ε``, ``ε ~ N(0, R)``;
    times: (K,) observation times ``k · steps_per_obs · dt``, k = 1..K.
    """

    x0: Array
    truth: Array
    observations: Array
    times: Array


def integrate(model: Callable[[Array], Array], x0: Array, n_steps: int) -> Array:
    """Advance x0 by ``n_steps`` model steps; returns the final state."""
    return jax.lax.fori_loop(0, n_steps, lambda _, x: model(x), x0)


def twin_experiment(
    model: Callable[[Array], Array],
    x0: Array,
    *,
    key: Array | int,
    n_obs: int,
    h: ObservationOperator,
    R,
    steps_per_obs: int = 1,
    spinup: int = 0,
    dt: float | None = None,
) -> TwinExperiment:
    """Run the truth from x0 and observe it every ``steps_per_obs`` steps.

    model: one-step map of one state (e.g. ``enkit.models.Lorenz96()``), or
    a stochastic model ``model(key, x)`` (``stochastic = True``; then
    ``split(key)`` gives the truth's key, step s using ``fold_in(·, s)``,
    and the observation noise's);
    x0: (n,) start, first advanced ``spinup`` steps (to reach the attractor);
    key: PRNG key or integer seed for the observation noise; n_obs: K;
    h: callable or (m, n) matrix; R: covariance operator or array;
    dt: model time step for ``times`` (default ``model.dt``).
    """
    if isinstance(key, int):
        key = jax.random.key(key)
    x0 = jnp.asarray(x0)
    check_ndim("x0", x0, 1, "(n,)")
    check_finite("x0", x0)
    if n_obs < 1 or steps_per_obs < 1 or spinup < 0:
        raise ValueError("n_obs and steps_per_obs must be >= 1 and spinup >= 0")
    if getattr(model, "stochastic", False) is True:
        # model(key, x): step s of the truth (spin-up included) uses fold_in(k_truth, s).
        k_truth, key = jax.random.split(key)

        def step(s, x):
            return model(jax.random.fold_in(k_truth, s), x)
    else:
        def step(s, x):
            return model(x)

    x0 = jax.lax.fori_loop(0, spinup, step, x0)

    def advance(x, k):
        start = spinup + k * steps_per_obs
        x = jax.lax.fori_loop(0, steps_per_obs, lambda j, x: step(start + j, x), x)
        return x, x

    _, truth = jax.lax.scan(advance, x0, jnp.arange(n_obs))
    Hx = observe(h, truth)
    R = as_covariance(R, Hx.shape[1]).astype(Hx.dtype)
    observations = Hx + R.sample(key, (n_obs,))
    dt = model.dt if dt is None else dt
    times = jnp.arange(1, n_obs + 1) * (steps_per_obs * dt)
    return TwinExperiment(x0, truth, observations, times)
