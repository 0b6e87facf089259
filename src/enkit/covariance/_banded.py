"""Banded and Toeplitz covariance operators, never densified by their methods.

``Banded`` holds a symmetric positive-definite matrix of half-bandwidth b in
a compact lower-band form and its banded Cholesky factor (O(m b²) to build,
O(m b) per vector). ``Toeplitz`` holds a stationary covariance on a
non-periodic 1-D grid, ``C[i, j] = c[|i − j|]``, with the Levinson–Durbin
factorisation of C⁻¹ (O(m²) time once, O(m) memory; O(m²) per vector for
the exact triangular maps, an optional FFT-preconditioned conjugate-gradient
``solve`` in O(m log m) per iteration). Both are JAX pytrees whose sizes
are static, so they pass through ``jit``/``vmap`` and differentiate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.scipy.linalg import solve_triangular
from jax.scipy.sparse.linalg import cg
from jax.typing import ArrayLike

from enkit._checks import check_finite, is_concrete
from enkit.covariance._core import Covariance, _float

__all__ = ["Banded", "Toeplitz"]


# --------------------------------------------------------------------------- banded


def _band_to_rows(bands: Array) -> Array:
    """Lower-band form (b + 1, m) -> row form (m, b + 1):
    ``rows[i, t] = A[i, i − b + t]`` (zero where the column is negative)."""
    b1, m = bands.shape
    b = b1 - 1
    padded = jnp.pad(bands, ((0, 0), (b, 0)))  # padded[j, k + b] = A[k + j, k]
    return jnp.stack([padded[b - t, t:t + m] for t in range(b1)], axis=1)


def _rows_to_band(rows: Array) -> Array:
    """Row form (m, b + 1) -> lower-band form (b + 1, m), the inverse of
    ``_band_to_rows``: ``bands[j, k] = rows[k + j, b − j]``."""
    m, b1 = rows.shape
    b = b1 - 1
    padded = jnp.pad(rows, ((0, b), (0, 0)))
    return jnp.stack([padded[j:j + m, b - j] for j in range(b1)], axis=0)


def _banded_cholesky(bands: Array) -> tuple[Array, Array]:
    """The banded Cholesky factor of C in lower-band form, and its pivots.

    Row i of L solves the b×b triangular system of the previous b rows,
    ``L[i−b:i, i−b:i] ℓ = C[i, i−b:i]``, then ``L[i, i] = √(C[i, i] − ℓ·ℓ)``
    (the pivot); one ``lax.scan`` over rows with that b×b block as carry,
    O(m b²) time, O(m b) memory (Golub & Van Loan 2013, §4.3.5).
    """
    b1, m = bands.shape
    b = b1 - 1
    if b == 0:
        return jnp.sqrt(bands), bands[0]
    rows = _band_to_rows(bands)

    def step(W, row):
        # W: L on the b previous rows and columns; identity for rows before 0,
        # whose entries of C are the zero padding, so they never couple.
        ell = solve_triangular(W, row[:b], lower=True)
        pivot = row[b] - ell @ ell
        new = jnp.concatenate([ell, jnp.sqrt(pivot)[None]])  # L[i, i−b … i]
        W = jnp.zeros_like(W).at[:-1, :-1].set(W[1:, 1:]).at[-1].set(new[1:])
        return W, (new, pivot)

    _, (Lrows, pivots) = lax.scan(step, jnp.eye(b, dtype=bands.dtype), rows)
    return _rows_to_band(Lrows), pivots


def _band_dense(bands: Array, symmetric: bool) -> Array:
    """The (m, m) matrix of a lower-band form (mirrored when symmetric)."""
    b1, m = bands.shape
    out = jnp.diag(bands[0])
    for j in range(1, b1):
        out = out + jnp.diag(bands[j, :m - j], -j)
        if symmetric:
            out = out + jnp.diag(bands[j, :m - j], j)
    return out


def _rows_last(x: ArrayLike, m: int, dtype) -> tuple[Array, tuple[int, ...]]:
    """x (..., m) -> (m, K) with the m entries leading, and x's shape."""
    x = jnp.asarray(x, dtype)
    return x.reshape(-1, m).T, x.shape


@jax.tree_util.register_pytree_node_class
class Banded(Covariance):
    """Symmetric positive-definite banded covariance, ``C[i, j] = 0`` for
    ``|i − j| > b``, held with its banded Cholesky factor ``C = L Lᵀ``.

    bands: (b + 1, m) lower-band form, ``bands[j, i] = C[i + j, i]`` (row j
    is the j-th subdiagonal, starting at column 0); the b(b + 1)/2 entries
    with ``i + j ≥ m`` lie outside the matrix and are set to zero. A leaf
    (differentiable); ``Banded.from_dense(C, bandwidth)`` builds it from a
    matrix. The factor L has the same bandwidth (no fill-in) and the same
    layout (``factor[j, i] = L[i + j, i]``); it is computed once at
    construction by one ``lax.scan`` over rows, O(m b²) (Golub & Van Loan
    2013, *Matrix Computations*, §4.3.5). ``whiten`` is banded forward
    substitution, ``whiten_t`` back substitution, ``colorize`` the banded
    product ``L x`` (O(m b) per vector, no m×m array); ``log_pdet =
    2 Σ log Lᵢᵢ``. Positive definiteness is checked on concrete values: a
    non-positive pivot ``C[i, i] − Σₖ L[i, k]²`` raises a ``ValueError``
    naming the row. ``whiten`` equals the triangular solve with the
    Cholesky factor of ``dense()``.

    Typical uses: a Gaspari–Cohn-tapered or autoregressive observation-error
    covariance on a line.
    """

    def __init__(self, bands: ArrayLike):
        B = _float(jnp.asarray(bands))
        if B.ndim != 2 or B.shape[0] < 1 or B.shape[1] < 1:
            raise ValueError(f"bands must have shape (b + 1, m) (row j the j-th "
                             f"subdiagonal), got shape {B.shape}")
        b1, m = B.shape
        if b1 > m:
            raise ValueError(f"bands must have shape (b + 1, m) with b < m, got shape "
                             f"{B.shape} (half-bandwidth {b1 - 1} for m = {m})")
        if is_concrete(B):
            check_finite("bands", B)
        inside = (np.arange(m)[None, :] + np.arange(b1)[:, None]) < m
        B = jnp.where(inside, B, 0.0).astype(B.dtype)
        L, pivots = _banded_cholesky(B)
        if is_concrete(pivots):
            pv = np.asarray(pivots)
            bad = np.flatnonzero(~(pv > 0))
            if bad.size:
                i = int(bad[0])
                raise ValueError(
                    f"bands must describe a positive-definite matrix: the Cholesky pivot "
                    f"of row {i} is {pv[i]:.3g} (≤ 0), so the leading {i + 1}×{i + 1} "
                    f"block is not positive definite")
        self.bands, self.factor = B, L

    @classmethod
    def from_dense(cls, covariance: ArrayLike, bandwidth: int) -> "Banded":
        """The banded operator of an (m, m) symmetric matrix whose entries
        with ``|i − j| > bandwidth`` are zero (checked on concrete values)."""
        C = _float(jnp.asarray(covariance))
        if C.ndim != 2 or C.shape[0] != C.shape[1]:
            raise ValueError(f"covariance must have shape (m, m), got shape {C.shape}")
        m = C.shape[0]
        if not isinstance(bandwidth, (int, np.integer)) or not 0 <= bandwidth < m:
            raise ValueError(f"bandwidth must be an integer in [0, m) = [0, {m}), "
                             f"got {bandwidth!r}")
        if is_concrete(C):
            check_finite("covariance", C)
            Cn = np.asarray(C)
            tol = 1e3 * np.finfo(Cn.dtype).eps * max(np.abs(Cn).max(), np.finfo(Cn.dtype).tiny)
            if np.abs(Cn - Cn.T).max() > tol:
                raise ValueError("covariance must be symmetric")
            i = np.arange(m)
            outside = np.abs(i[:, None] - i[None, :]) > bandwidth
            if np.any(np.abs(Cn[outside]) > tol):
                raise ValueError(f"covariance has non-zero entries outside the band "
                                 f"|i − j| ≤ {bandwidth}")
        i = jnp.arange(m)
        bands = jnp.stack([C[jnp.minimum(i + j, m - 1), i] for j in range(bandwidth + 1)])
        return cls(bands)

    def tree_flatten(self):
        return (self.bands, self.factor), None

    @classmethod
    def tree_unflatten(cls, _, leaves):
        obj = object.__new__(cls)
        obj.bands, obj.factor = leaves
        return obj

    @property
    def dim(self) -> int:
        return self.bands.shape[1]

    @property
    def bandwidth(self) -> int:
        """The half-bandwidth b."""
        return self.bands.shape[0] - 1

    @property
    def dtype(self):
        return self.bands.dtype

    def whiten(self, x):
        b = self.bandwidth
        X, shape = _rows_last(x, self.dim, self.dtype)

        def step(zwin, inp):  # zwin: z of the b previous rows
            row, xi = inp
            zi = (xi - row[:b] @ zwin) / row[b]
            return jnp.concatenate([zwin, zi[None]])[1:], zi

        zwin = jnp.zeros((b, X.shape[1]), self.dtype)
        _, Z = lax.scan(step, zwin, (_band_to_rows(self.factor), X))
        return Z.T.reshape(shape)

    def whiten_t(self, x):
        b = self.bandwidth
        X, shape = _rows_last(x, self.dim, self.dtype)

        def step(zwin, inp):  # zwin: z of the b following rows
            col, xk = inp
            zk = (xk - col[1:] @ zwin) / col[0]
            return jnp.concatenate([zk[None], zwin])[:-1], zk

        zwin = jnp.zeros((b, X.shape[1]), self.dtype)
        _, Z = lax.scan(step, zwin, (self.factor.T, X), reverse=True)
        return Z.T.reshape(shape)

    def colorize(self, x):
        b, m = self.bandwidth, self.dim
        x = jnp.asarray(x, self.dtype)
        rows = _band_to_rows(self.factor)  # rows[i, t] = L[i, i − b + t]
        xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(b, 0)])
        return sum(rows[:, t] * xp[..., t:t + m] for t in range(b + 1))

    @property
    def log_pdet(self):
        return 2.0 * jnp.sum(jnp.log(self.factor[0]))

    def diagonal(self):
        return self.bands[0]

    def dense(self):
        return _band_dense(self.bands, symmetric=True)

    def cholesky(self):
        return _band_dense(self.factor, symmetric=False)

    def __repr__(self) -> str:
        return f"Banded(dim={self.dim}, bandwidth={self.bandwidth}, dtype={self.dtype})"


# ------------------------------------------------------------------------- Toeplitz


def _shift(r: Array) -> Array:
    """``r`` moved one place towards the end along axis 0 (a zero enters)."""
    return jnp.concatenate([jnp.zeros_like(r[:1]), r[:-1]])


def _levinson(c: Array) -> tuple[Array, Array]:
    """Reflection coefficients κ (m − 1,) and prediction-error variances
    v (m,) of the symmetric Toeplitz matrix with first column c.

    Levinson–Durbin: with the order-k predictor f (``f[0] = 1``) and its
    reverse r (``r[i] = f[k − i]``), ``Δ = r · c[1:]``, ``κ = −Δ / v``,
    ``f ← f + κ shift(r)``, ``r ← shift(r) + κ f``, ``v ← v (1 − κ²)``.
    """
    m = c.shape[0]
    e0 = jnp.zeros_like(c).at[0].set(1.0)
    c_next = jnp.concatenate([c[1:], jnp.zeros_like(c[:1])])

    def step(carry, _):
        f, r, v = carry
        kappa = -(r @ c_next) / v
        rs = _shift(r)
        return (f + kappa * rs, rs + kappa * f, v * (1.0 - kappa**2)), (kappa, v)

    _, (kappas, vs) = lax.scan(step, (e0, e0, c[0]), None, length=m)
    return kappas[:-1], vs


@jax.tree_util.register_pytree_node_class
class Toeplitz(Covariance):
    """Stationary covariance on a non-periodic 1-D grid, ``C[i, j] = c[|i − j|]``,
    held with the Levinson–Durbin factorisation of its inverse.

    column: (m,) first column c (a leaf, differentiable), C positive
    definite. The Levinson–Durbin recursion (Levinson 1947; Durbin 1960)
    gives the order-k linear predictors of a stationary sequence with
    autocovariance c: a unit lower-triangular A whose row k is the
    prediction-error filter of order k (``A[k, k] = 1``), with
    ``A C Aᵀ = V = diag(v₀ … v_{m−1})``, the prediction-error variances. So
    ``C⁻¹ = Aᵀ V⁻¹ A`` and the Cholesky factor of C is ``L = A⁻¹ V^{1/2}``:
    ``whiten(x) = V^{−1/2} A x`` (equal to the triangular solve with the
    Cholesky factor of ``dense()``), ``whiten_t(x) = Aᵀ V^{−1/2} x``,
    ``colorize(x) = A⁻¹ V^{1/2} x`` and ``log_pdet = Σ log vₖ``.
    Construction runs the recursion once (O(m²) time, O(m) memory) and keeps
    the reflection coefficients ``reflection`` (m − 1,) and ``variances`` v
    (m,) as leaves; positive definiteness is checked on concrete values
    (every vₖ > 0, else ``ValueError`` naming k). Each method regenerates
    the rows of A from the reflection coefficients in one ``lax.scan``,
    O(m²) time and O(m) memory per vector, no m×m array (reverse-mode
    derivatives store the O(m) scan state of each step, O(m²) memory).

    cg_tol: ``None`` (default): ``solve`` is exact, ``Aᵀ V⁻¹ A x`` in one
    pass (O(m²)). A float: ``solve`` is the conjugate-gradient iteration with
    FFT products by C (circulant embedding of size 2m) and T. Chan's optimal
    circulant preconditioner (Chan 1988, SIAM J. Sci. Stat. Comput. 9,
    positive definite with C), O(m log m) per iteration, stopped when
    ``‖C x − b‖ ≤ cg_tol ‖b‖`` for each right-hand side or after cg_maxiter
    iterations (default m). ``cholesky()`` is the factor of ``dense()``,
    built only on request.
    """

    def __init__(self, column: ArrayLike, *, cg_tol: float | None = None,
                 cg_maxiter: int | None = None):
        c = _float(jnp.asarray(column))
        if c.ndim != 1 or c.shape[0] < 1:
            raise ValueError(f"column must have shape (m,), got shape {c.shape}")
        if cg_tol is not None and not (isinstance(cg_tol, (float, int)) and cg_tol > 0):
            raise ValueError(f"cg_tol must be None or a positive float, got {cg_tol!r}")
        if cg_maxiter is not None and not (isinstance(cg_maxiter, (int, np.integer))
                                           and cg_maxiter >= 1):
            raise ValueError(f"cg_maxiter must be None or a positive integer, "
                             f"got {cg_maxiter!r}")
        if is_concrete(c):
            check_finite("column", c)
        kappas, vs = _levinson(c)
        if is_concrete(vs):
            vn = np.asarray(vs)
            bad = np.flatnonzero(~(vn > 0))
            if bad.size:
                k = int(bad[0])
                raise ValueError(
                    f"column must describe a positive-definite Toeplitz matrix: the "
                    f"prediction-error variance of order {k} is {vn[k]:.3g} (≤ 0), so the "
                    f"leading {k + 1}×{k + 1} block is not positive definite")
        self.column, self.reflection, self.variances = c, kappas, vs
        self._cg = (None if cg_tol is None else float(cg_tol),
                    None if cg_maxiter is None else int(cg_maxiter))

    def tree_flatten(self):
        return (self.column, self.reflection, self.variances), self._cg

    @classmethod
    def tree_unflatten(cls, cg, leaves):
        obj = object.__new__(cls)
        obj.column, obj.reflection, obj.variances = leaves
        obj._cg = cg
        return obj

    @property
    def dim(self) -> int:
        return self.column.shape[0]

    @property
    def dtype(self):
        return self.column.dtype

    def _scan_rows(self, body, init, xs):
        """Run ``body(state, r_k, inputs_k) -> (state, out_k)`` over the rows
        r_k of A (k = 0 … m − 1), regenerated from the reflection
        coefficients: ``f ← f + κ shift(r)``, ``r ← shift(r) + κ f``."""
        e0 = jnp.zeros((self.dim,), self.dtype).at[0].set(1.0)
        kappas = jnp.concatenate([self.reflection, jnp.zeros((1,), self.dtype)])

        def step(carry, inp):
            f, r, state = carry
            kappa, x = inp
            state, out = body(state, r, x)
            rs = _shift(r)
            return (f + kappa * rs, rs + kappa * f, state), out

        (_, _, state), outs = lax.scan(step, (e0, e0, init), (kappas, xs))
        return state, outs

    def whiten(self, x):
        X, shape = _rows_last(x, self.dim, self.dtype)
        _, Z = self._scan_rows(lambda s, r, _: (s, r @ X), None, None)
        Z = Z / jnp.sqrt(self.variances)[:, None]
        return Z.T.reshape(shape)

    def whiten_t(self, x):
        X, shape = _rows_last(x, self.dim, self.dtype)
        U = X / jnp.sqrt(self.variances)[:, None]
        acc, _ = self._scan_rows(lambda s, r, u: (s + r[:, None] * u[None, :], None),
                                 jnp.zeros_like(U), U)
        return acc.T.reshape(shape)

    def colorize(self, x):
        X, shape = _rows_last(x, self.dim, self.dtype)
        W = X * jnp.sqrt(self.variances)[:, None]

        def body(state, r, inp):  # A y = w, row by row; y is zero past k
            Y, k = state
            Y = Y.at[k].set(inp - r @ Y)
            return (Y, k + 1), None

        (Y, _), _ = self._scan_rows(body, (jnp.zeros_like(W), 0), W)
        return Y.T.reshape(shape)

    def solve(self, x):
        if self._cg[0] is not None:
            return self._solve_cg(x)
        X, shape = _rows_last(x, self.dim, self.dtype)
        acc, _ = self._scan_rows(lambda s, r, iv: (s + r[:, None] * (iv * (r @ X))[None, :],
                                                   None),
                                 jnp.zeros_like(X), 1.0 / self.variances)
        return acc.T.reshape(shape)

    def _solve_cg(self, x):
        tol, maxiter = self._cg
        m = self.dim
        x = jnp.asarray(x, self.dtype)
        c = self.column
        # C as the leading block of a 2m circulant: c, 0, reversed c[1:].
        embed = jnp.fft.rfft(jnp.concatenate([c, jnp.zeros((1,), c.dtype), c[:0:-1]]))
        j = jnp.arange(m)
        chan = ((m - j) * c + j * jnp.concatenate([jnp.zeros((1,), c.dtype), c[:0:-1]])) / m
        chan_eig = jnp.fft.rfft(chan).real

        def matvec(v):
            full = jnp.fft.irfft(embed * jnp.fft.rfft(v, n=2 * m), n=2 * m)
            return full[:m].astype(self.dtype)

        def precond(v):
            return jnp.fft.irfft(jnp.fft.rfft(v) / chan_eig, n=m).astype(self.dtype)

        def one(b):
            sol, _ = cg(matvec, b, tol=tol, atol=0.0,
                        maxiter=m if maxiter is None else maxiter, M=precond)
            return sol

        flat = x.reshape(-1, m)
        return jax.vmap(one)(flat).reshape(x.shape)

    @property
    def log_pdet(self):
        return jnp.sum(jnp.log(self.variances))

    def diagonal(self):
        return jnp.full((self.dim,), self.column[0])

    def dense(self):
        i = jnp.arange(self.dim)
        return self.column[jnp.abs(i[:, None] - i[None, :])]

    def cholesky(self):
        return jnp.linalg.cholesky(self.dense())

    def __repr__(self) -> str:
        return f"Toeplitz(dim={self.dim}, dtype={self.dtype}, cg_tol={self._cg[0]})"
