"""A small linear-Gaussian state-space model with non-diagonal everything,
and its Kalman filter in plain NumPy (the ground truth of the Gaussian
filter cycles: the reduced-rank square-root filter, the EKF and the UKF)."""

import jax.numpy as jnp
import numpy as np


class LinearStateSpace:
    """x_k = M x_{k−1} + η_k, η ~ N(0, Q); y_k = H x_k + v_k, v ~ N(0, R);
    x₀ ~ N(x0, P0). n states, m = 3 observations, K analysis times."""

    def __init__(self, n, seed=0, K=5):
        rng = np.random.default_rng(seed)
        m = 3
        self.n, self.m, self.K = n, m, K
        self.M = np.eye(n) + 0.2 * rng.normal(size=(n, n))
        self.H = rng.normal(size=(m, n))
        A = rng.normal(size=(m, m))
        self.R = A @ A.T + 0.5 * np.eye(m)
        B = 0.3 * rng.normal(size=(n, n))
        self.Q = B @ B.T + 0.01 * np.eye(n)
        C = rng.normal(size=(n, n))
        self.P0 = C @ C.T + np.eye(n)
        self.x0 = rng.normal(size=n)
        self.ys = rng.normal(size=(K, m))

    def model(self, x):
        return jnp.asarray(self.M) @ x

    def h(self, x):
        return jnp.asarray(self.H) @ x

    def kalman_filter(self, R=None, steps=1, inflation=1.0):
        """The Kalman filter with ``steps`` model steps per analysis (the
        forecast covariance multiplied by ``inflation`` at every step) and
        R (default self.R): (xf, xa, Pf, Pa), each with K rows."""
        R = self.R if R is None else R
        x, P = self.x0, self.P0
        out = [[], [], [], []]
        for y in self.ys:
            for _ in range(steps):
                x, P = self.M @ x, inflation * self.M @ P @ self.M.T + self.Q
            out[0].append(x)
            out[2].append(P)
            S = self.H @ P @ self.H.T + R
            K = np.linalg.solve(S, self.H @ P).T
            x = x + K @ (y - self.H @ x)
            P = P - K @ S @ K.T
            out[1].append(x)
            out[3].append(0.5 * (P + P.T))
        return tuple(np.array(o) for o in out)
