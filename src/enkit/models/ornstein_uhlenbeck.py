"""The multivariate Ornstein–Uhlenbeck process, with its exact transition.

    dX = −Θ (X − μ) dt + Σ^{1/2} dW

A stochastic model: ``model(key, x)`` advances one member by one step of
length dt, exactly (the Gaussian transition, the default) or with an SDE
scheme of ``enkit.models.sde``. ``assimilate`` passes each member its own
key at every step (see ``enkit.assimilation.cycle``).

References: Uhlenbeck & Ornstein (1930), Phys. Rev. 36; Van Loan (1978),
IEEE Trans. Autom. Control 23 (the covariance integral by one matrix
exponential); Gardiner (2009), Stochastic Methods, §4.5.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.linalg import expm

from enkit._checks import check_number, user_value
from enkit._pytree import register_dataclass
from enkit.covariance import Covariance, Diagonal

__all__ = ["OrnsteinUhlenbeck"]


@dataclasses.dataclass(frozen=True)
class OrnsteinUhlenbeck:
    """Ornstein–Uhlenbeck process ``dX = −Θ (X − μ) dt + Σ^{1/2} dW``.

    Its transition over a time t is Gaussian with

        mean  μ + e^{−Θt} (x − μ),
        cov   C(t) = ∫₀ᵗ e^{−Θs} Σ e^{−Θᵀs} ds,

    C(t) computed by Van Loan's block exponential: with
    ``M = [[−Θ, Σ], [0, Θᵀ]]``, ``e^{Mt} = [[e^{−Θt}, F], [0, e^{Θᵀt}]]``
    and ``C(t) = F e^{−Θᵀt}``. When every eigenvalue of Θ has a positive
    real part the process is stationary, with ``Θ C∞ + C∞ Θᵀ = Σ``.

    mu: (n,) mean (sets n); theta: Θ as a scalar, an (n,) diagonal or an
    (n, n) matrix (stored as (n, n)); sigma: the diffusion, as the standard
    deviations σ > 0 of n independent noises (a scalar or (n,); Σ =
    diag(σ²)) or a covariance operator Σ (``enkit.Dense`` for correlated
    noise); dt: the step of ``model(key, x)``, > 0; scheme: None (default:
    the exact transition) or an SDE step of ``enkit.models.sde``
    (``euler_maruyama_step``, ``heun_step``; the noise is additive).
    """

    theta: Any
    mu: Any
    sigma: Any
    dt: float = 0.01
    scheme: Callable | None = None

    stochastic: ClassVar[bool] = True

    def __post_init__(self):
        mu = self.mu
        if user_value(mu):
            mu = jnp.asarray(mu)
            if mu.ndim != 1 or mu.shape[0] < 1:
                raise ValueError(f"mu must have shape (n,), got shape {mu.shape}")
            if not np.all(np.isfinite(np.asarray(mu))):
                raise ValueError("mu must be finite, but it contains NaN or inf")
            mu = mu.astype(jnp.result_type(float)) if not jnp.issubdtype(
                mu.dtype, jnp.floating) else mu
            object.__setattr__(self, "mu", mu)
        n = np.shape(self.mu)[0]
        theta = self.theta
        if user_value(theta):
            a = jnp.asarray(theta, dtype=self.mu.dtype)
            if a.shape == ():
                a = a * jnp.eye(n, dtype=a.dtype)
            elif a.shape == (n,):
                a = jnp.diag(a)
            elif a.shape != (n, n):
                raise ValueError(f"theta must be a scalar, an ({n},) diagonal or an ({n}, {n}) "
                                 f"matrix, got shape {a.shape}")
            if not np.all(np.isfinite(np.asarray(a))):
                raise ValueError("theta must be finite, but it contains NaN or inf")
            object.__setattr__(self, "theta", a)
        sigma = self.sigma
        if isinstance(sigma, Covariance):
            if sigma.dim != n:
                raise ValueError(f"sigma as a covariance operator must have dimension n={n}, "
                                 f"got {sigma.dim}")
        elif user_value(sigma):
            check_number("sigma", sigma, low=0.0, shape=(n,),
                         what=f"the noise standard deviations, a scalar or ({n},) array > 0")
            s = jnp.broadcast_to(jnp.asarray(sigma, dtype=self.mu.dtype), (n,))
            object.__setattr__(self, "sigma", Diagonal(s * s))
        check_number("dt", self.dt, low=0.0, what="the time step, a real scalar > 0")
        if self.scheme is not None and not callable(self.scheme):
            raise TypeError(f"scheme must be None (exact transition) or an SDE step such as "
                            f"enkit.euler_maruyama_step, got {self.scheme!r}")

    @property
    def dim(self) -> int:
        return np.shape(self.mu)[0]

    def drift(self, x: Array) -> Array:
        """f(x) = −Θ (x − μ): (n,) -> (n,)."""
        return -self.theta @ (x - self.mu)

    def diffusion(self, x: Array) -> Array:
        """g(x) = Σ^{1/2} (lower Cholesky factor; (n,) for a diagonal Σ)."""
        del x
        if isinstance(self.sigma, Diagonal):
            return jnp.sqrt(self.sigma.variances)
        return self.sigma.cholesky()

    def transition(self, x: Array, t) -> tuple[Array, Array]:
        """Mean (n,) and covariance (n, n) of X(t) given X(0) = x: (n,)."""
        n = self.dim
        Th = self.theta
        S = self.sigma.dense().astype(Th.dtype)
        M = jnp.block([[-Th, S], [jnp.zeros_like(Th), Th.T]]) * t
        F = expm(M)
        decay = F[:n, :n]  # e^{−Θt}
        C = F[:n, n:] @ decay.T
        return self.mu + decay @ (x - self.mu), 0.5 * (C + C.T)

    def sample_transition(self, key: Array, x: Array, t) -> Array:
        """One exact draw of X(t) given X(0) = x: (n,) -> (n,)."""
        mean, C = self.transition(x, t)
        L = jnp.linalg.cholesky(C)
        return mean + L @ jax.random.normal(key, mean.shape, dtype=mean.dtype)

    def stationary_covariance(self) -> Array:
        """C∞ (n, n), solving ``Θ C + C Θᵀ = Σ`` (Θ must be stable)."""
        n = self.dim
        eye = jnp.eye(n, dtype=self.theta.dtype)
        K = jnp.kron(eye, self.theta) + jnp.kron(self.theta, eye)
        S = self.sigma.dense().astype(self.theta.dtype)
        C = jnp.linalg.solve(K, S.reshape(-1)).reshape(n, n)
        return 0.5 * (C + C.T)

    def __call__(self, key: Array, x: Array) -> Array:
        """Advance one member x: (n,) by one step of length dt."""
        if self.scheme is None:
            return self.sample_transition(key, x, self.dt)
        return self.scheme(key, self.drift, self.diffusion, x, self.dt)


register_dataclass(OrnsteinUhlenbeck, data_fields=["theta", "mu", "sigma", "dt"],
                   meta_fields=["scheme"])
