"""A linear-Gaussian inverse problem with its closed-form posterior, shared
by the inversion tests."""

import jax
import jax.numpy as jnp
import numpy as np

from enkit.inversion import GaussianPrior
from reference.kalman_numpy import kalman_analysis


class LinearInverseProblem:
    """G(u) = A u with a correlated Gaussian prior and dense Γ."""

    def __init__(self, p=4, d=3, seed=0, noise_scale=0.3):
        rng = np.random.default_rng(seed)
        self.p, self.d = p, d
        self.A = rng.normal(size=(d, p))
        L = rng.normal(size=(p, p)) + 2 * np.eye(p)
        self.C0 = L @ L.T / p
        self.m0 = rng.normal(size=p)
        B = rng.normal(size=(d, d))
        self.Gamma = noise_scale * (B @ B.T / d + np.eye(d))
        self.u_true = self.m0 + np.linalg.cholesky(self.C0) @ rng.normal(size=p)
        self.y = self.A @ self.u_true + np.linalg.cholesky(self.Gamma) @ rng.normal(size=d)
        self.prior = GaussianPrior(self.m0, self.C0)

    def G(self, U):
        return U @ jnp.asarray(self.A).T

    def posterior(self):
        return kalman_analysis(self.m0, self.C0, self.y, self.A, self.Gamma)

    def draws(self, N, seed=1):
        return self.prior.sample(jax.random.key(seed), N)
