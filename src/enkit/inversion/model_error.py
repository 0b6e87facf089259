"""EKI with model error: the errors of the forward model as extra unknowns
(the augmented form of Evensen 2019).

The forward model is imperfect: the data are ``y = G(u, q) + η``, η ~ N(0, Γ)
the measurement error and q ~ N(0, Q) an error of the model itself, which
may enter it anywhere (a forcing, a boundary value, a missing term, an
additive output error). The model errors are estimated with the
parameters: every member carries ``z = (u, q)``, its q drawn from N(0, Q),
and any process (``EKI``, ``ETKI``, ``ESMDA``, ``IES``, ...) updates z with
the forward map ``z ↦ G(z[:p], z[p:])``. The parameters' posterior is the
marginal of z's; the errors' posterior says what the data could tell about
the model's error.

Two facts set the formulation (both tested):

- an additive output error, ``G(u, q) = g(u) + B q``, makes the augmented
  update of u equal to the update with the enlarged noise ``Γ + B Q Bᵀ``
  (for a linear g and the same ensemble statistics, to round-off): the
  "Γ plus model-error covariance" form is the special case, and a user with
  only such an error may pass ``noise = Γ + B Q Bᵀ`` instead, at no extra
  unknowns;
- errors that enter the model nonlinearly (a forcing of a dynamical model)
  have no such equivalent noise; the augmented form covers them, at the
  cost of r more unknowns per member and the span of N members.

This is not the weak-constraint or time-varying error of sequential
filtering (``assimilate``'s ``noise=``) and not a learned correction
(``enkit.losses``): q is one draw per member for the whole forward run, as
in Evensen (2019) for iterative smoothers.

Reference: Evensen (2019), "Accounting for model errors in iterative
ensemble smoothers", Computational Geosciences 23.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from enkit.covariance import BlockDiagonal, Covariance, as_covariance
from enkit.inversion._common import check_ensemble
from enkit.inversion.prior import GaussianPrior

__all__ = ["ModelErrorProblem", "augment_model_error"]


class ModelErrorProblem(NamedTuple):
    """The augmented problem of ``augment_model_error``.

    forward: z (p + r,) -> G(z[:p], z[p:]) (d,), a per-member map for any
    process or ``calibrate``; ensemble: (N, p + r) initial members [U, q];
    n_params: p (static). ``split(Z)`` returns (U, q) of any (..., p + r)
    array (ensembles, means); ``prior(prior_u)`` the Gaussian prior of z for
    processes that need one (``TEKI``, ``EKS``, ``ALDI``).
    """

    forward: Callable[[Array], Array]
    ensemble: Array
    n_params: int
    Q: Covariance

    def split(self, Z) -> tuple[Array, Array]:
        """(U, q): the parameters and the model errors of (..., p + r) ``Z``."""
        Z = jnp.asarray(Z)
        p = self.n_params
        if Z.shape[-1] != p + self.Q.dim:
            raise ValueError(f"Z must end in p + r = {p + self.Q.dim} entries, got shape "
                             f"{Z.shape}")
        return Z[..., :p], Z[..., p:]

    def prior(self, prior_u: GaussianPrior) -> GaussianPrior:
        """The prior of z = (u, q): ``N((m_u, 0), blockdiag(C_u, Q))``."""
        if not isinstance(prior_u, GaussianPrior):
            raise TypeError(f"prior_u must be a GaussianPrior, got {type(prior_u).__name__}")
        if prior_u.dim != self.n_params:
            raise ValueError(f"prior_u must have dimension p = {self.n_params}, got "
                             f"{prior_u.dim}")
        dtype = prior_u.mean.dtype
        mean = jnp.concatenate([prior_u.mean, jnp.zeros(self.Q.dim, dtype)])
        return GaussianPrior(mean, BlockDiagonal((prior_u.covariance.astype(dtype),
                                                  self.Q.astype(dtype))))


def augment_model_error(
    forward: Callable[[Array, Array], Array],
    ensemble,
    Q,
    *,
    key,
    n_errors: int | None = None,
) -> ModelErrorProblem:
    """Model errors q ~ N(0, Q) as extra unknowns beside the parameters.

    forward: ``forward(u, q) -> (d,)`` on one member: u (p,) the parameters,
    q (r,) the model error (JAX-traceable for ``calibrate_scan``, any Python
    for ``calibrate``); ensemble: (N, p) prior draws of u; Q: the model
    errors' covariance (a ``Covariance`` operator of dimension r, an (r,)
    vector of variances or an (r, r) matrix; a scalar needs ``n_errors``);
    key: PRNG key or integer seed for the N draws of q; n_errors: r, needed
    only for a scalar Q.

    Returns a ``ModelErrorProblem``: run any process on its ``ensemble``
    with its ``forward``, and ``split`` the result. See the module
    docstring for the formulation (Evensen 2019) and its relation to the
    enlarged noise Γ + B Q Bᵀ.
    """
    if not callable(forward):
        raise TypeError(f"forward must be a callable (u, q) -> (d,), got {forward!r}")
    U = check_ensemble(ensemble)
    N, p = U.shape
    r = _error_dim(Q, n_errors)
    Q = as_covariance(Q, r, name="Q").astype(U.dtype)
    if isinstance(key, int):
        key = jax.random.key(key)
    elif key is None:
        raise TypeError("augment_model_error draws the model errors and needs "
                        "key=jax.random.key(seed) (or an integer seed)")
    q = Q.sample(key, (N,)).astype(U.dtype)

    def forward_z(z):
        return forward(z[:p], z[p:])

    return ModelErrorProblem(forward_z, jnp.concatenate([U, q], axis=1), p, Q)


def _error_dim(Q, n_errors) -> int:
    if n_errors is not None:
        if isinstance(n_errors, bool) or not isinstance(n_errors, int) or n_errors < 1:
            raise ValueError(f"n_errors must be a positive integer, got {n_errors!r}")
    if isinstance(Q, Covariance):
        if n_errors is not None and n_errors != Q.dim:
            raise ValueError(f"n_errors={n_errors} differs from Q's dimension {Q.dim}")
        return Q.dim
    shape = jnp.shape(Q)
    if len(shape) == 0:
        if n_errors is None:
            raise ValueError("a scalar Q needs n_errors (the number r of model errors)")
        return n_errors
    if len(shape) > 2 or (len(shape) == 2 and shape[0] != shape[1]) or shape[0] < 1:
        raise ValueError(f"Q must be a scalar, an (r,) vector of variances or an (r, r) "
                         f"matrix, got shape {shape}")
    if n_errors is not None and n_errors != shape[0]:
        raise ValueError(f"n_errors={n_errors} differs from Q's dimension {shape[0]}")
    return shape[0]
