"""Covariance operators: noise covariances as small structured operators.

Observation and model noise covariances are operators, not matrices
(DESIGN.md principle 4). Each operator ``C`` of dimension m provides

- ``solve(x)``     C⁻¹ x
- ``whiten(x)``    L⁻¹ x, with ``C = L Lᵀ``
- ``colorize(x)``  L x
- ``log_pdet``     log det C
- ``sample(key, shape)``  draws from N(0, C), shape ``shape + (m,)``
- ``dense()``, ``cholesky()``, ``diagonal()``  explicit forms, when wanted

following the naming of ``scipy.stats.Covariance``. Vector arguments carry
the m entries on their last axis, so an ``(N, m)`` block of rows is
processed in one call. Operators are JAX pytrees: they pass through ``jit``
and ``vmap`` and their entries may be differentiated.

A ``Diagonal`` operator is never densified by the solves, nor is a
``Circulant`` one (FFT solves, O(m log m)); ``dense()`` and ``cholesky()``
exist for callers that explicitly ask for an m×m matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.linalg import solve_triangular
from jax.typing import ArrayLike

from enkit._checks import check_finite, is_concrete
from enkit._random import normal

__all__ = ["Circulant", "Covariance", "Scalar", "Diagonal", "Dense", "as_covariance"]


class Covariance:
    """Base class of covariance operators (see the module docstring)."""

    @property
    def dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def dtype(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def solve(self, x: ArrayLike) -> Array:
        """C⁻¹ x along the last axis of x: (..., m) -> (..., m)."""
        return self.whiten_t(self.whiten(x))

    def whiten(self, x: ArrayLike) -> Array:  # pragma: no cover - abstract
        """L⁻¹ x along the last axis, ``C = L Lᵀ``: (..., m) -> (..., m)."""
        raise NotImplementedError

    def whiten_t(self, x: ArrayLike) -> Array:  # pragma: no cover - abstract
        """L⁻ᵀ x along the last axis: (..., m) -> (..., m)."""
        raise NotImplementedError

    def colorize(self, x: ArrayLike) -> Array:  # pragma: no cover - abstract
        """L x along the last axis: (..., m) -> (..., m)."""
        raise NotImplementedError

    @property
    def log_pdet(self) -> Array:  # pragma: no cover - abstract
        """log det C."""
        raise NotImplementedError

    def diagonal(self) -> Array:  # pragma: no cover - abstract
        """The variances, shape (m,)."""
        raise NotImplementedError

    def dense(self) -> Array:  # pragma: no cover - abstract
        """C as an explicit (m, m) matrix."""
        raise NotImplementedError

    def cholesky(self) -> Array:  # pragma: no cover - abstract
        """The lower-triangular factor L of ``C = L Lᵀ``, (m, m)."""
        raise NotImplementedError

    def astype(self, dtype) -> "Covariance":
        """The same operator with its entries cast to ``dtype``."""
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), self)

    def sample(self, key: Array, shape: tuple[int, ...] = ()) -> Array:
        """Draws from N(0, C): ``L z`` with z standard normal.

        key: a JAX PRNG key. Returns an array of shape ``shape + (m,)``.
        z is ``jax.random.normal(key, shape + (m,), dtype)``, bit for bit,
        made by ``enkit._random.normal`` (cheaper under jit on CPU).
        """
        z = normal(key, tuple(shape) + (self.dim,), self.dtype)
        return self.colorize(z)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, dtype={self.dtype})"


@jax.tree_util.register_pytree_node_class
class Scalar(Covariance):
    """Isotropic covariance ``C = σ² I`` of dimension ``dim``.

    variance: σ² > 0 (a scalar leaf, differentiable); dim: m.
    """

    def __init__(self, variance: ArrayLike, dim: int):
        variance = jnp.asarray(variance)
        if variance.ndim != 0:
            raise ValueError(f"variance must be a scalar, got shape {variance.shape}")
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if is_concrete(variance):
            check_finite("variance", variance)
            if not float(variance) > 0:
                raise ValueError(f"variance must be positive, got {float(variance)}")
        self.variance = _float(variance)
        self._dim = int(dim)

    def tree_flatten(self):
        return (self.variance,), self._dim

    @classmethod
    def tree_unflatten(cls, dim, leaves):
        obj = object.__new__(cls)
        obj.variance, obj._dim = leaves[0], dim
        return obj

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self):
        return self.variance.dtype

    def solve(self, x):
        return jnp.asarray(x) / self.variance

    def whiten(self, x):
        return jnp.asarray(x) / jnp.sqrt(self.variance)

    whiten_t = whiten

    def colorize(self, x):
        return jnp.asarray(x) * jnp.sqrt(self.variance)

    @property
    def log_pdet(self):
        return self.dim * jnp.log(self.variance)

    def diagonal(self):
        return jnp.full((self.dim,), self.variance)

    def dense(self):
        return self.variance * jnp.eye(self.dim, dtype=self.dtype)

    def cholesky(self):
        return jnp.sqrt(self.variance) * jnp.eye(self.dim, dtype=self.dtype)


@jax.tree_util.register_pytree_node_class
class Diagonal(Covariance):
    """Diagonal covariance ``C = diag(variances)``; never densified by solves.

    variances: (m,) positive entries.
    """

    def __init__(self, variances: ArrayLike):
        variances = jnp.asarray(variances)
        if variances.ndim != 1 or variances.shape[0] < 1:
            raise ValueError(
                f"variances must have shape (m,), got shape {variances.shape}"
            )
        if is_concrete(variances):
            check_finite("variances", variances)
            if not np.all(np.asarray(variances) > 0):
                raise ValueError("variances must all be positive")
        self.variances = _float(variances)

    def tree_flatten(self):
        return (self.variances,), None

    @classmethod
    def tree_unflatten(cls, _, leaves):
        obj = object.__new__(cls)
        obj.variances = leaves[0]
        return obj

    @property
    def dim(self) -> int:
        return self.variances.shape[0]

    @property
    def dtype(self):
        return self.variances.dtype

    def solve(self, x):
        return jnp.asarray(x) / self.variances

    def whiten(self, x):
        return jnp.asarray(x) / jnp.sqrt(self.variances)

    whiten_t = whiten

    def colorize(self, x):
        return jnp.asarray(x) * jnp.sqrt(self.variances)

    @property
    def log_pdet(self):
        return jnp.sum(jnp.log(self.variances))

    def diagonal(self):
        return self.variances

    def dense(self):
        return jnp.diag(self.variances)

    def cholesky(self):
        return jnp.diag(jnp.sqrt(self.variances))


@jax.tree_util.register_pytree_node_class
class Dense(Covariance):
    """Full covariance matrix, held with its Cholesky factor ``C = L Lᵀ``.

    covariance: (m, m) symmetric positive-definite. The factor is computed
    once at construction; every solve is a pair of triangular solves.
    """

    def __init__(self, covariance: ArrayLike):
        C = _float(jnp.asarray(covariance))
        if C.ndim != 2 or C.shape[0] != C.shape[1]:
            raise ValueError(f"covariance must have shape (m, m), got shape {C.shape}")
        if is_concrete(C):
            check_finite("covariance", C)
            Cn = np.asarray(C)
            scale = max(np.abs(Cn).max(), np.finfo(Cn.dtype).tiny)
            if np.abs(Cn - Cn.T).max() > 1e3 * np.finfo(Cn.dtype).eps * scale:
                raise ValueError("covariance must be symmetric")
        C = 0.5 * (C + C.T)
        L = jnp.linalg.cholesky(C)
        if is_concrete(L) and not np.all(np.isfinite(np.asarray(L))):
            raise ValueError("covariance must be positive definite (Cholesky failed)")
        self.covariance, self.factor = C, L

    def tree_flatten(self):
        return (self.covariance, self.factor), None

    @classmethod
    def tree_unflatten(cls, _, leaves):
        obj = object.__new__(cls)
        obj.covariance, obj.factor = leaves
        return obj

    @property
    def dim(self) -> int:
        return self.covariance.shape[0]

    @property
    def dtype(self):
        return self.covariance.dtype

    def _tri(self, x, trans: int):
        x = jnp.asarray(x)
        flat = x.reshape(-1, self.dim).T
        out = solve_triangular(self.factor, flat, lower=True, trans=trans)
        return out.T.reshape(x.shape)

    def whiten(self, x):
        return self._tri(x, 0)

    def whiten_t(self, x):
        return self._tri(x, 1)

    def colorize(self, x):
        return jnp.asarray(x) @ self.factor.T

    @property
    def log_pdet(self):
        return 2.0 * jnp.sum(jnp.log(jnp.diagonal(self.factor)))

    def diagonal(self):
        return jnp.diagonal(self.covariance)

    def dense(self):
        return self.covariance

    def cholesky(self):
        return self.factor


@jax.tree_util.register_pytree_node_class
class Circulant(Covariance):
    """Stationary covariance on a periodic 1-D grid: ``C[i, j] = c[(i − j) mod m]``,
    applied by FFT and never densified (O(m log m) per vector).

    column: (m,) first column c, symmetric (c[j] = c[m − j]) with a
    positive spectrum (the real FFT of c, C's eigenvalues, all > 0),
    checked on concrete values; a leaf (differentiable). The square root
    used by ``whiten``/``colorize`` is the symmetric one, C^{1/2} (itself
    circulant), so ``whiten_t = whiten``; ``cholesky()`` is the triangular
    factor of ``dense()``, built only on request. The eigenvalue of the
    Nyquist mode (m even) and the constant mode count once, the others
    twice, in ``log_pdet``.
    """

    def __init__(self, column: ArrayLike):
        c = _float(jnp.asarray(column))
        if c.ndim != 1 or c.shape[0] < 1:
            raise ValueError(f"column must have shape (m,), got shape {c.shape}")
        if is_concrete(c):
            check_finite("column", c)
            cn = np.asarray(c)
            scale = max(np.abs(cn).max(), np.finfo(cn.dtype).tiny)
            if np.abs(cn - np.roll(cn[::-1], 1)).max() > 1e3 * np.finfo(cn.dtype).eps * scale:
                raise ValueError("column must be symmetric, c[j] = c[m - j] "
                                 "(the first column of a symmetric circulant matrix)")
            spectrum = np.fft.rfft(cn).real
            if not np.all(spectrum > 0):
                raise ValueError(f"column must have a positive spectrum (C positive definite); "
                                 f"its smallest eigenvalue is {spectrum.min():.3g}")
        self.column = c

    def tree_flatten(self):
        return (self.column,), None

    @classmethod
    def tree_unflatten(cls, _, leaves):
        obj = object.__new__(cls)
        obj.column = leaves[0]
        return obj

    @property
    def dim(self) -> int:
        return self.column.shape[0]

    @property
    def dtype(self):
        return self.column.dtype

    def _eigenvalues(self):
        return jnp.fft.rfft(self.column).real

    def _apply(self, x, power):
        x = jnp.asarray(x, self.dtype)
        return jnp.fft.irfft(jnp.fft.rfft(x, axis=-1) * self._eigenvalues() ** power,
                             n=self.dim, axis=-1).astype(self.dtype)

    def solve(self, x):
        return self._apply(x, -1.0)

    def whiten(self, x):
        return self._apply(x, -0.5)

    whiten_t = whiten

    def colorize(self, x):
        return self._apply(x, 0.5)

    @property
    def log_pdet(self):
        m = self.dim
        logs = jnp.log(self._eigenvalues())
        # rfft keeps modes 0 … m//2; all but 0 (and m/2 for even m) occur twice.
        twice = jnp.ones_like(logs).at[0].set(0.0)
        if m % 2 == 0:
            twice = twice.at[-1].set(0.0)
        return jnp.sum(logs) + jnp.sum(twice * logs)

    def diagonal(self):
        return jnp.full((self.dim,), self.column[0])

    def dense(self):
        m = self.dim
        i = jnp.arange(m)
        return self.column[(i[:, None] - i[None, :]) % m]

    def cholesky(self):
        return jnp.linalg.cholesky(self.dense())


def as_covariance(R, dim: int, *, name: str = "R") -> Covariance:
    """Wrap ``R`` as a covariance operator of dimension ``dim``.

    A ``Covariance`` is returned as it is (after checking its dimension).
    Arrays are wrapped by their shape, which is unambiguous once m is known:
    a scalar σ² → ``Scalar(σ², m)``, an (m,) vector of variances →
    ``Diagonal``, an (m, m) matrix → ``Dense``.
    """
    if isinstance(R, Covariance):
        if R.dim != dim:
            raise ValueError(f"{name} has dimension {R.dim}, expected {dim} (= m)")
        return R
    try:
        arr = jnp.asarray(R)
    except TypeError as err:
        raise TypeError(
            f"{name} must be a Covariance operator or an array, got {type(R).__name__}"
        ) from err
    if arr.ndim == 0:
        return Scalar(arr, dim)
    if arr.shape == (dim,):
        return Diagonal(arr)
    if arr.shape == (dim, dim):
        return Dense(arr)
    raise ValueError(
        f"{name} must be a scalar, an ({dim},) vector of variances or a "
        f"({dim}, {dim}) matrix, got shape {arr.shape}"
    )


def _float(a: Array) -> Array:
    if not jnp.issubdtype(a.dtype, jnp.floating):
        return a.astype(jnp.result_type(float))
    return a
