"""A minimal Gaussian prior N(m₀, C₀) for inversion processes.

Constrained or transformed priors (bounds, named parameter blocks) are meant
to wrap this class: they map the unconstrained Gaussian space in which every
process works to the physical parameters, so the processes never see them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_ndim
from enkit._pytree import register_dataclass
from enkit.covariance import Covariance, as_covariance
from enkit.filters._common import as_key

__all__ = ["GaussianPrior"]


@dataclasses.dataclass(frozen=True)
class GaussianPrior:
    """Gaussian prior ``N(mean, covariance)`` of the p parameters.

    mean: (p,); covariance: a covariance operator of dimension p, or an array
    wrapped by ``enkit.as_covariance`` (scalar σ², (p,) variances or (p, p)).
    Both are pytree leaves, so a prior passes through ``jit`` and ``vmap``.
    """

    mean: ArrayLike
    covariance: Covariance | ArrayLike

    def __post_init__(self):
        mean = self.mean
        if not isinstance(mean, (jax.Array, np.ndarray, list, tuple)):
            return  # a placeholder leaf (pytree transformations, vmap axis specs)
        check_ndim("mean", mean, 1, "(p,)")
        mean = jnp.asarray(mean)
        if not jnp.issubdtype(mean.dtype, jnp.floating):
            mean = mean.astype(jnp.result_type(float))
        check_finite("mean", mean)
        cov = as_covariance(self.covariance, mean.shape[0], name="covariance")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "covariance", cov)

    @property
    def dim(self) -> int:
        """p, the number of parameters."""
        return self.mean.shape[0]

    def sample(self, key: Array | int, N: int) -> Array:
        """N independent draws ``m₀ + L zᵢ``, ``C₀ = L Lᵀ``, zᵢ standard normal.

        key: PRNG key or integer seed (required); N: number of members.
        Returns (N, p), members on axis 0.
        """
        key = as_key(key, "GaussianPrior.sample")
        if not isinstance(N, (int, np.integer)) or isinstance(N, bool) or N < 1:
            raise ValueError(f"N must be a positive integer, got {N!r}")
        cov = self.covariance.astype(self.mean.dtype)
        return self.mean + cov.sample(key, (int(N),))


register_dataclass(GaussianPrior, data_fields=["mean", "covariance"],
                                 meta_fields=[])


def check_prior(prior, p: int | None = None) -> None:
    """Raise unless ``prior`` is a GaussianPrior (of dimension p, if given)."""
    if not isinstance(prior, GaussianPrior):
        raise TypeError(f"prior must be a GaussianPrior, got {type(prior).__name__}")
    if p is not None and prior.dim != p:
        raise ValueError(
            f"ensemble has p={p} parameters but the prior has dimension {prior.dim}"
        )
