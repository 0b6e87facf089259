"""Reverse-mode gradients of the analyses: finite at degenerate ensembles
(zero spread, repeated singular values, N = 2 with H = I, N > n) and equal
to central finite differences away from them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.finite_differences import central_differences

import enkit

N_STATE = 3


def _enkf(E, y, h, R):
    return enkit.enkf(E, y, h, R, key=0)


def _mlef_fixed(E, y, h, R):
    return enkit.mlef(E, y, h, R, tolerance=None, max_iterations=5)


SCHEMES = {"kalman": enkit.kalman, "sqrt_kalman": enkit.sqrt_kalman, "etkf": enkit.etkf,
           "ensrf": enkit.ensrf, "enkf": _enkf, "ienkf": enkit.ienkf, "mlef": enkit.mlef,
           "mlef(tolerance=None)": _mlef_fixed}
# Iterative too (Newton on the EnKF-N cost); checked against finite differences only.
FD_ONLY = {"etkf_n": enkit.etkf_n, "etkf_n_dual": enkit.etkf_n_dual}

DEGENERATE = {
    "zero spread": np.ones((5, N_STATE)),
    "repeated singular values": np.vstack([np.eye(N_STATE), -np.eye(N_STATE)]),
    "N = 2": np.array([[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]]),
}


def _quadratic(x):
    """A nonlinear observation of one member (for the iterative schemes)."""
    return jnp.array([x[0] + 0.1 * x[1] ** 2, x[1], x[2] - 0.05 * x[0] * x[2]])


def _loss(scheme, E, r, H):
    y = jnp.array([0.5, -1.0, 2.0])
    Ea = scheme(E, y, H, enkit.Diagonal(r * jnp.arange(1.0, 4.0)))
    w = jnp.linspace(0.3, 1.7, Ea.size).reshape(Ea.shape)
    return jnp.sum(w * Ea) + 0.1 * jnp.sum(Ea**2)


# One compiled gradient program per scheme and ensemble shape (the scheme is static).
_grad_loss = jax.jit(jax.grad(_loss, argnums=(1, 2)), static_argnums=0)


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_gradients_are_finite_at_degenerate_ensembles(name, case):
    gE, gr = _grad_loss(SCHEMES[name], jnp.asarray(DEGENERATE[case]), 1.0, jnp.eye(N_STATE))
    assert np.all(np.isfinite(gE)) and np.isfinite(gr)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_gradients_are_finite_for_a_zero_observation_operator(name):
    E = jnp.asarray(np.random.default_rng(1).standard_normal((4, N_STATE)))
    gE, gr = _grad_loss(SCHEMES[name], E, 1.0, jnp.zeros((3, N_STATE)))
    assert np.all(np.isfinite(gE)) and np.isfinite(gr)


@pytest.mark.parametrize("members", [3, 6])  # N − 1 < n and N − 1 > n
@pytest.mark.parametrize("name", ["kalman", "sqrt_kalman", "ienkf", "mlef",
                                  "mlef(tolerance=None)", "etkf_n", "etkf_n_dual"])
def test_gradients_equal_finite_differences_away_from_degenerate_points(name, members):
    rng = np.random.default_rng(members)
    E = rng.standard_normal((members, N_STATE))
    iterative = name.startswith(("ienkf", "mlef"))
    H = _quadratic if iterative else np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0],
                                               [0.2, 0.0, 1.0]])
    scheme = {**SCHEMES, **FD_ONLY}[name]
    # One compiled program gives the gradient and the values the differences use.
    vg = jax.jit(jax.value_and_grad(lambda E, r: _loss(scheme, E, r, H), argnums=(0, 1)))

    def f(E, r):
        return float(vg(jnp.asarray(E), r)[0])

    gE, gr = vg(jnp.asarray(E), 0.7)[1]
    np.testing.assert_allclose(gE, central_differences(lambda e: f(e, 0.7), E), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(gr, central_differences(lambda r: f(E, float(r)), np.array(0.7)),
                               rtol=1e-5)


def test_ensemble_with_covariance_is_exact_and_keeps_the_span():
    rng = np.random.default_rng(0)
    E = rng.standard_normal((4, 6))
    X = E - E.mean(0)
    W = rng.standard_normal((4, 4))
    cov = X.T @ (W @ W.T) @ X / 3.0  # in the span of the anomalies
    Ea = enkit.ensemble_with_covariance(jnp.asarray(E), jnp.zeros(6), jnp.asarray(cov))
    np.testing.assert_allclose(np.cov(np.asarray(Ea), rowvar=False), cov, atol=1e-12)
    np.testing.assert_allclose(np.asarray(Ea).mean(0), 0.0, atol=1e-12)
