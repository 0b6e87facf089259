"""The small linear-Gaussian problems the particle-filter tests share: a
2-D Gaussian prior observed once (one analysis), and a 2-D linear model
x_k = A x_{k−1} + η, η ~ N(0, Q), observed through the same H (cycled runs),
with their closed-form Kalman answers in plain NumPy."""

import jax
import jax.numpy as jnp
import numpy as np

MU = np.array([0.5, -1.0])
P0 = np.array([[1.0, 0.4], [0.4, 0.6]])
H1 = np.array([[1.0, 0.5]])
R1 = 0.5
Y1 = np.array([1.2])

A2 = np.array([[0.9, 0.2], [-0.1, 0.8]])
Q2 = np.array([[0.2, 0.05], [0.05, 0.1]])


def kalman(mu, P, H, R, y):
    """The Kalman analysis (mean, covariance) of N(mu, P) given y = H x + v, v ~ N(0, R)."""
    S = H @ P @ H.T + R
    K = P @ H.T @ np.linalg.inv(S)
    return mu + K @ (y - H @ mu), P - K @ H @ P


def prior_draws(key, N, mu=MU, P=P0):
    """N draws of N(mu, P); key: a JAX key (traceable) or an int seed (NumPy)."""
    if isinstance(key, int):
        return mu + np.random.default_rng(key).normal(size=(N, 2)) @ np.linalg.cholesky(P).T
    z = jax.random.normal(key, (N, 2), dtype=jnp.float64)
    return mu + z @ np.linalg.cholesky(P).T


def linear_model(x):
    """One step of the cycled problem's model, x ↦ A x (noise added by the driver)."""
    return jnp.asarray(A2, x.dtype) @ x


def kalman_filter(m, P, ys):
    """The Kalman filter of the cycled problem from N(m, P): analysis means
    (K, 2) and spreads sqrt(tr Pₐ / 2) (K,)."""
    means, stds = [], []
    for y in ys:
        m, P = A2 @ m, A2 @ P @ A2.T + Q2
        m, P = kalman(m, P, H1, R1, y)
        means.append(m)
        stds.append(np.sqrt(np.trace(P) / 2))
    return np.array(means), np.array(stds)
