"""Structured covariance operators built from smaller pieces.

- ``LowRankDiagonal``  C = D + U Uᵀ (diagonal plus rank k), Woodbury solves, O(m k²);
- ``Kronecker``        C = A ⊗ B of two operators (separable covariances);
- ``BlockDiagonal``    C = diag(C₁, …, C_K) of operators (independent groups,
  e.g. two instruments).

None of them forms an m×m array in ``solve``, ``whiten``, ``whiten_t``,
``colorize``, ``log_pdet``, ``diagonal`` or ``sample``; ``dense()`` and
``cholesky()`` build one on request only. Like the operators of
``enkit.covariance._core`` they are JAX pytrees (leaves: arrays, and the
child operators' leaves) and act on the last axis of their arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import block_diag, cho_factor, cho_solve
from jax.typing import ArrayLike

from enkit._checks import check_finite, is_concrete
from enkit.covariance._core import Covariance, _float

__all__ = ["BlockDiagonal", "Kronecker", "LowRankDiagonal"]


def _root(lam):
    # ((1 + λ)^{1/2} − 1) / λ, written without the removable singularity at λ = 0.
    return 1.0 / (1.0 + jnp.sqrt(1.0 + lam))


def _inverse_root(lam):
    # ((1 + λ)^{-1/2} − 1) / λ, likewise.
    s = jnp.sqrt(1.0 + lam)
    return -1.0 / (s * (1.0 + s))


@jax.tree_util.register_pytree_node_class
class LowRankDiagonal(Covariance):
    """Diagonal plus low rank: ``C = D + U Uᵀ``, D = diag(diagonal), U = factor.

    diagonal: (m,) positive entries; factor: (m, k) with any k ≥ 0 (need not
    have full rank). Both are leaves (differentiable); they are cast to a
    common floating dtype.

    With ``V = D^{-1/2} U`` and the k×k Gram matrix ``G = Vᵀ V``:

    - ``solve`` by the Woodbury identity,
      ``C⁻¹ = D⁻¹ − D⁻¹ U (I_k + G)⁻¹ Uᵀ D⁻¹`` (Cholesky of ``I_k + G``);
    - ``log_pdet`` by the matrix determinant lemma,
      ``log det C = Σ log dᵢ + log det(I_k + G)``;
    - the square root of ``whiten``/``colorize`` is ``L = D^{1/2} S`` with
      ``S = (I_m + V Vᵀ)^{1/2}`` the symmetric root, applied as
      ``S = I + V f(G) Vᵀ``, ``S⁻¹ = I + V g(G) Vᵀ`` with
      ``f(λ) = ((1+λ)^{1/2} − 1)/λ`` and ``g(λ) = ((1+λ)^{-1/2} − 1)/λ``
      evaluated through one eigendecomposition of G
      (``enkit.linalg.sym_matrix_functions``, gradients finite at repeated
      eigenvalues). L is not triangular; ``L⁻ᵀ = D^{-1/2} S⁻¹``.

    Every method costs O(m k² + k³) and no m×m array is formed;
    ``cholesky()`` is the triangular factor of ``dense()``, built on request.

    References: Woodbury (1950), "Inverting modified matrices"; Higham
    (2008), "Functions of Matrices", for f(A) through the eigenvalues.
    """

    def __init__(self, diagonal: ArrayLike, factor: ArrayLike):
        d, U = jnp.asarray(diagonal), jnp.asarray(factor)
        if d.ndim != 1 or d.shape[0] < 1:
            raise ValueError(f"diagonal must have shape (m,), got shape {d.shape}")
        m = d.shape[0]
        if U.ndim != 2 or U.shape[0] != m:
            raise ValueError(
                f"factor must have shape (m, k) = ({m}, k) with m = len(diagonal) = {m}, "
                f"got shape {U.shape}"
            )
        dtype = jnp.result_type(_float(d).dtype, _float(U).dtype)
        d, U = d.astype(dtype), U.astype(dtype)
        if is_concrete(d):
            check_finite("diagonal", d)
            if not np.all(np.asarray(d) > 0):
                raise ValueError(
                    f"diagonal must be positive; its smallest entry is {float(np.min(d)):.3g}"
                )
        if is_concrete(U):
            check_finite("factor", U)
        self.diag, self.factor = d, U

    def tree_flatten(self):
        return (self.diag, self.factor), None

    @classmethod
    def tree_unflatten(cls, _, leaves):
        obj = object.__new__(cls)
        obj.diag, obj.factor = leaves
        return obj

    @property
    def dim(self) -> int:
        return self.diag.shape[0]

    @property
    def rank(self) -> int:
        """k, the number of columns of the factor."""
        return self.factor.shape[1]

    @property
    def dtype(self):
        return self.diag.dtype

    def _scaled_factor(self):
        return self.factor / jnp.sqrt(self.diag)[:, None]  # V = D^{-1/2} U

    def _gram(self, V):
        return V.T @ V  # G = Vᵀ V, (k, k)

    def _apply_root(self, z, f):
        # (I + V f(G) Vᵀ) z along the last axis of z.
        from enkit.linalg import sym_matrix_functions  # (enkit.linalg imports this package)

        V = self._scaled_factor()
        (M,) = sym_matrix_functions(self._gram(V), (f,))
        return z + ((z @ V) @ M) @ V.T

    def solve(self, x):
        x = jnp.asarray(x, self.dtype)
        V = self._scaled_factor()
        k = V.shape[1]
        eye = jnp.eye(k, dtype=self.dtype)
        P = cho_solve(cho_factor(eye + self._gram(V), lower=True), eye)  # (I_k + G)⁻¹
        z = x / jnp.sqrt(self.diag)
        return (z - ((z @ V) @ P) @ V.T) / jnp.sqrt(self.diag)

    def whiten(self, x):
        x = jnp.asarray(x, self.dtype)
        return self._apply_root(x / jnp.sqrt(self.diag), _inverse_root)

    def whiten_t(self, x):
        x = jnp.asarray(x, self.dtype)
        return self._apply_root(x, _inverse_root) / jnp.sqrt(self.diag)

    def colorize(self, x):
        x = jnp.asarray(x, self.dtype)
        return jnp.sqrt(self.diag) * self._apply_root(x, _root)

    @property
    def log_pdet(self):
        V = self._scaled_factor()
        k = V.shape[1]
        chol = jnp.linalg.cholesky(jnp.eye(k, dtype=self.dtype) + self._gram(V))
        return jnp.sum(jnp.log(self.diag)) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))

    def diagonal(self):
        return self.diag + jnp.sum(self.factor**2, axis=1)

    def dense(self):
        return jnp.diag(self.diag) + self.factor @ self.factor.T

    def cholesky(self):
        return jnp.linalg.cholesky(self.dense())


def _check_operator(name: str, C) -> Covariance:
    if not isinstance(C, Covariance):
        raise TypeError(
            f"{name} must be a Covariance operator (e.g. enkit.Dense(matrix) or "
            f"enkit.Diagonal(variances)), got {type(C).__name__}"
        )
    return C


def _common_dtype(ops):
    dtype = jnp.result_type(*[op.dtype for op in ops])
    return tuple(op if op.dtype == dtype else op.astype(dtype) for op in ops)


@jax.tree_util.register_pytree_node_class
class Kronecker(Covariance):
    """Separable covariance ``C = A ⊗ B`` of two covariance operators.

    left: A, a ``Covariance`` of dimension a; right: B, of dimension b (any
    kind, a ``Kronecker`` too, so products of three or more factors nest).
    Arrays are not accepted: wrap them as ``enkit.Dense(matrix)``,
    ``enkit.Diagonal(variances)`` or ``enkit.Scalar(σ², dim)`` (a scalar
    alone carries no dimension). Both factors are cast to a common dtype.

    C has dimension m = a·b; entry i of a vector is the pair
    (i // b, i mod b), i.e. the vector reshaped row-major to (a, b), on which
    ``(A ⊗ B) vec(X) = vec(A X Bᵀ)``. Every method applies the factors along
    the two axes: ``solve`` with A⁻¹ and B⁻¹, the square root is
    ``L = L_A ⊗ L_B`` (each factor's own), so ``whiten``, ``whiten_t`` and
    ``colorize`` are those of the factors; ``log_pdet = b log det A +
    a log det B``; ``diagonal() = diag A ⊗ diag B``. ``cholesky()`` is
    ``chol A ⊗ chol B`` (lower triangular with a positive diagonal, hence the
    Cholesky factor of C), built on request.

    Reference: Van Loan (2000), "The ubiquitous Kronecker product",
    J. Comput. Appl. Math. 123.
    """

    def __init__(self, left: Covariance, right: Covariance):
        left, right = _check_operator("left", left), _check_operator("right", right)
        self.left, self.right = _common_dtype((left, right))

    def tree_flatten(self):
        return (self.left, self.right), None

    @classmethod
    def tree_unflatten(cls, _, children):
        obj = object.__new__(cls)
        obj.left, obj.right = children
        return obj

    @property
    def dim(self) -> int:
        return self.left.dim * self.right.dim

    @property
    def dtype(self):
        return self.left.dtype

    def _apply(self, x, f_left, f_right):
        x = jnp.asarray(x, self.dtype)
        a, b = self.left.dim, self.right.dim
        # The barriers keep each factor's input and output in the standard row-major
        # layout: without them XLA's CPU backend may give an FFT (Circulant factor) a
        # transposed operand layout, which its FFT refuses at run time.
        barrier = jax.lax.optimization_barrier
        X = barrier(f_right(x.reshape(x.shape[:-1] + (a, b))))  # B-side, last axis
        X = barrier(f_left(barrier(jnp.swapaxes(X, -1, -2))))  # A-side, on the transpose
        return jnp.swapaxes(X, -1, -2).reshape(x.shape)

    def solve(self, x):
        return self._apply(x, self.left.solve, self.right.solve)

    def whiten(self, x):
        return self._apply(x, self.left.whiten, self.right.whiten)

    def whiten_t(self, x):
        return self._apply(x, self.left.whiten_t, self.right.whiten_t)

    def colorize(self, x):
        return self._apply(x, self.left.colorize, self.right.colorize)

    @property
    def log_pdet(self):
        return self.right.dim * self.left.log_pdet + self.left.dim * self.right.log_pdet

    def diagonal(self):
        return jnp.kron(self.left.diagonal(), self.right.diagonal())

    def dense(self):
        return jnp.kron(self.left.dense(), self.right.dense())

    def cholesky(self):
        return jnp.kron(self.left.cholesky(), self.right.cholesky())


@jax.tree_util.register_pytree_node_class
class BlockDiagonal(Covariance):
    """Block-diagonal covariance ``C = diag(C₁, …, C_K)`` of operators.

    blocks: a non-empty sequence of ``Covariance`` operators (any kind) of
    dimensions m₁, …, m_K; C has dimension m = Σ mₖ and the entries of a
    vector are the blocks' in order. The blocks are independent groups of
    observations, e.g. one instrument with a ``Diagonal`` error and another
    with a ``Dense`` one. Every method splits the last axis at the (static)
    block sizes and applies each block's own method; the square root is
    ``L = diag(L₁, …, L_K)``, ``log det C = Σ log det Cₖ``. ``dense()`` and
    ``cholesky()`` (the blocks' Cholesky factors on the diagonal) are built
    on request. The blocks are cast to a common dtype.

    Reference: Golub & Van Loan (2013), "Matrix Computations", 4th ed.,
    §1.3 (block matrices).
    """

    def __init__(self, blocks: Sequence[Covariance]):
        if isinstance(blocks, Covariance) or not isinstance(blocks, Sequence):
            raise TypeError(
                "blocks must be a list or tuple of Covariance operators, got "
                f"{type(blocks).__name__}"
            )
        if len(blocks) == 0:
            raise ValueError("blocks must hold at least one Covariance operator, got none")
        for i, C in enumerate(blocks):
            _check_operator(f"blocks[{i}]", C)
        self.blocks = _common_dtype(tuple(blocks))

    def tree_flatten(self):
        return (self.blocks,), None

    @classmethod
    def tree_unflatten(cls, _, children):
        obj = object.__new__(cls)
        obj.blocks = tuple(children[0])
        return obj

    @property
    def dim(self) -> int:
        return sum(C.dim for C in self.blocks)

    @property
    def sizes(self) -> tuple[int, ...]:
        """(m₁, …, m_K), the block dimensions."""
        return tuple(C.dim for C in self.blocks)

    @property
    def dtype(self):
        return self.blocks[0].dtype

    def _apply(self, x, method: str):
        x = jnp.asarray(x, self.dtype)
        parts, start = [], 0
        for C in self.blocks:
            parts.append(getattr(C, method)(x[..., start:start + C.dim]))
            start += C.dim
        return jnp.concatenate(parts, axis=-1)

    def solve(self, x):
        return self._apply(x, "solve")

    def whiten(self, x):
        return self._apply(x, "whiten")

    def whiten_t(self, x):
        return self._apply(x, "whiten_t")

    def colorize(self, x):
        return self._apply(x, "colorize")

    @property
    def log_pdet(self):
        return sum(C.log_pdet for C in self.blocks)

    def diagonal(self):
        return jnp.concatenate([C.diagonal() for C in self.blocks])

    def dense(self):
        return block_diag(*[C.dense() for C in self.blocks])

    def cholesky(self):
        return block_diag(*[C.cholesky() for C in self.blocks])
