"""Localisers for ensemble Kalman inversion: tapers and sampling-error correction.

In inversion the parameters and the outputs rarely share a grid, so
localisation acts on the two sample covariances the EKI update consumes,

    C^{uG} = Xᵀ Y  (p, d),   C^{GG} = Yᵀ Y  (d, d),

(X, Y the parameter and output anomalies divided by √(N − 1)), each
multiplied elementwise by a taper:

    C^{uG} ← ρ_uG ∘ C^{uG},   C^{GG} ← ρ_GG ∘ C^{GG}.

The Schur product can raise the rank of the cross-covariance above the
N − 1 of the sample (up to rank(ρ)·(N − 1)), so localised EKI can leave the
affine span of its initial ensemble (the subspace property no longer binds).

Interface (one for all localisers). A localiser is a frozen dataclass
registered as a pytree, its tuning values array leaves (so a sweep over
them is a ``vmap``), with two methods:

- ``tapers(key, U, G) -> (ρ_uG: (p, d), ρ_GG: (d, d))``;
- ``localize(key, U, G) -> (ρ_uG ∘ C^{uG}: (p, d), ρ_GG ∘ C^{GG}: (d, d))``,

U: (N, p) parameters, G: (N, d) their outputs, members on axis 0; key: a
PRNG key for a random localiser (``needs_key`` is True), else ignored
(may be None).

Two families:

- fixed tapers of the indices, ``Delta``, ``RBF(length_scale)`` and the
  random ``BernoulliDropout(prob)``: by default they taper C^{uG} only
  (ρ_GG = 1), as EnsembleKalmanProcesses.jl does. Parameter i and output j
  sit at positions i and j (0-based indices of their vectors), so they
  mean something when parameters and outputs share one index grid (e.g. a
  state observed in full: p = d). For p ≠ d the index rule still applies
  (``Delta`` keeps the entries (i, i), i < min(p, d)); for any other
  geometry build the matrices from coordinates with ``localization_matrix``
  and use ``FixedTaper``. ``Delta`` and ``RBF`` take ``taper_outputs=True``
  to taper C^{GG} too, with the same kernel of the output indices (see
  "Tapering C^{GG}" below);
- sampling-error corrections, ``SEC(alpha, r_min)`` (Lee 2021),
  ``SECFisher()`` (Flowerdew 2015) and ``SECNice()`` (Vishny et al. 2024):
  the taper of an entry is a function of its sample correlation r and of
  N; they need no positions and taper both C^{uG} and C^{GG} (a variance,
  the diagonal of C^{GG}, is never changed).

Correlations are ``r = C / (σ σ')`` with the sample standard deviations;
an entry of a member-constant row (σ = 0) has r = 0 (its covariance is 0
whatever the taper).

Tapering C^{GG}. With ρ_GG = 1 the gain K = (ρ_uG ∘ C^{uG})(C^{GG} +
Δt⁻¹Γ)⁻¹ no longer matches its normaliser: C^{GG} keeps the rank N − 1 of
the sample, so in the d − N + 1 data directions outside the span of the
output anomalies the inverse is only Δt Γ⁻¹ (for Γ = σ²I exactly), and
there the tapered C^{uG}, now of full rank, acts unnormalised. On the
linearisation G(u) ≈ G(ū) + J (u − ū) a step maps the error of the mean by
I − K J; when J has a large norm (a chaotic forward map) its spectral
radius exceeds 1, the steps overshoot, the states grow, J grows with them,
and the ensemble diverges. In ``examples/lorenz96_localized_eki.py``
(Δt = 1) the spectral radius for ``Delta`` grew 0.96, 1.43, 3.36, 9.63 over
the first four steps, ‖K‖₂ from 1.3 to 23, until the forward model
overflowed; with ``taper_outputs=True`` it stayed within 0.97–1.11 and
‖K‖₂ ≤ 0.61 for all 20 steps. The linear problem of Tong & Morzfeld (2022,
§6.1), J = I and a prior spread of 0.5, is stable either way.
``taper_outputs=True`` multiplies C^{GG} by the same kernel of the output
indices, ρ_GG[j, j'] = k(j, j'), as the localised EnKF does with P Hᵀ and
H P Hᵀ (Houtekamer & Mitchell 2001). Both kernels offered (the identity
and the Gaussian) are positive semi-definite, so ρ_GG ∘ C^{GG} + Δt⁻¹Γ
stays positive definite (Schur product theorem). ``BernoulliDropout`` has
no such option: its 0/1 mask is not positive semi-definite, and applied to
C^{GG} it made the same run diverge within two steps; use small or
adaptive steps with it instead (e.g. ``DataMisfitController``).

References: Tong & Morzfeld (2022), "Localization in ensemble Kalman
inversion", arXiv:2201.10821; Houtekamer & Mitchell (2001), "A sequential
ensemble Kalman filter for atmospheric data assimilation", Mon. Wea. Rev.
129, 123–137.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_bool, check_finite, check_ndim
from enkit._checks import user_value as _user_value
from enkit._pytree import register_dataclass
from enkit.ensemble import scaled_anomalies
from enkit.localization._core import gaussian

__all__ = [
    "RBF",
    "SEC",
    "BernoulliDropout",
    "Delta",
    "FixedTaper",
    "Localizer",
    "SECFisher",
    "SECNice",
]


def _clip_r(r: Array) -> Array:
    """r inside ±(1 − τ), τ = max(10⁸ ε₆₄, 4 ε) (ε of r's dtype), where atanh
    must stay finite."""
    tol = max(1e8 * float(np.finfo(np.float64).eps), 4.0 * float(jnp.finfo(r.dtype).eps))
    return jnp.clip(r, -1.0 + tol, 1.0 - tol)


def _scalar(name: str, x, *, low: float, high: float = np.inf,
            low_open: bool = False, high_open: bool = False):
    """Validate a concrete scalar tuning value in a (half-)open interval."""
    if not _user_value(x):
        return x
    a = np.asarray(x)
    if a.ndim != 0 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be a real scalar, got shape {a.shape} ({a.dtype})")
    v = float(a)
    lo_ok = v > low if low_open else v >= low
    hi_ok = v < high if high_open else v <= high
    if not (np.isfinite(v) and lo_ok and hi_ok):
        lb = "(" if low_open else "["
        hb = ")" if high_open or high == np.inf else "]"
        raise ValueError(f"{name} must lie in {lb}{low}, {high}{hb}, got {v}")
    return x


class Localizer:
    """Base of the localisers: ``localize`` from ``tapers`` (see module doc)."""

    needs_key: ClassVar[bool] = False

    def _tapers(self, key, r_uG: Array, r_GG: Array, N: int) -> tuple[Array, Array]:
        raise NotImplementedError

    def tapers(self, key: Array | None, U: ArrayLike, G: ArrayLike) -> tuple[Array, Array]:
        """The tapers ``(ρ_uG: (p, d), ρ_GG: (d, d))`` for U: (N, p), G: (N, d)."""
        U, G = _check(U, G)
        return _tapers_jit(self, self._key(key), U, G)

    def localize(self, key: Array | None, U: ArrayLike, G: ArrayLike) -> tuple[Array, Array]:
        """Localised ``(ρ_uG ∘ C^{uG}: (p, d), ρ_GG ∘ C^{GG}: (d, d))``.

        U: (N, p) parameters; G: (N, d) outputs of the same members; key:
        PRNG key when ``needs_key``, else ignored. Sample covariances use
        N − 1. Cost O(N (p d + d²)) time, O(p d + d²) memory.
        """
        U, G = _check(U, G)
        return _localize_jit(self, self._key(key), U, G)

    def _key(self, key):
        if self.needs_key and key is None:
            raise TypeError(f"{type(self).__name__} is random and needs a PRNG key")
        return key


@jax.jit
def _tapers_jit(loc, key, U, G):
    _, _, r_uG, r_GG = _statistics(U, G)
    return loc._tapers(key, r_uG, r_GG, U.shape[0])


@jax.jit
def _localize_jit(loc, key, U, G):
    C_uG, C_GG, r_uG, r_GG = _statistics(U, G)
    rho_uG, rho_GG = loc._tapers(key, r_uG, r_GG, U.shape[0])
    return rho_uG * C_uG, rho_GG * C_GG


def _check(U, G):
    """U: (N, p) and G: (N, d) as floating arrays of one dtype."""
    check_ndim("U", U, 2, "(N, p): members on axis 0")
    check_ndim("G", G, 2, "(N, d): members on axis 0")
    U, G = jnp.asarray(U), jnp.asarray(G)
    if U.shape[0] != G.shape[0] or U.shape[0] < 2:
        raise ValueError(
            "U: (N, p) and G: (N, d) must hold the same N >= 2 members on axis 0, "
            f"got shapes {U.shape} and {G.shape}"
        )
    dtype = jnp.result_type(U, G)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return U.astype(dtype), G.astype(dtype)


def _statistics(U, G):
    """C^{uG}, C^{GG} and their correlations (U, G checked by ``_check``)."""
    _, X = scaled_anomalies(U)
    _, Y = scaled_anomalies(G)
    C_uG, C_GG = X.T @ Y, Y.T @ Y
    s_u = jnp.sqrt(jnp.sum(X * X, axis=0))
    s_G = jnp.sqrt(jnp.diagonal(C_GG))
    return C_uG, C_GG, _correlation(C_uG, s_u, s_G), _correlation(C_GG, s_G, s_G)


def _correlation(C, s_a, s_b):
    den = s_a[:, None] * s_b[None, :]
    pos = den > 0
    return jnp.where(pos, C / jnp.where(pos, den, 1.0), 0.0)


def _ones(r):
    return jnp.ones_like(r)


def _unit_diagonal(rho):
    """ρ with its diagonal set to 1 (variances are not corrected)."""
    d = rho.shape[0]
    return jnp.where(jnp.eye(d, dtype=bool), jnp.ones((), rho.dtype), rho)


def _register(cls, data=(), meta=()):
    register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))
    return cls


def _index_distance(a: int, b: int, dtype) -> Array:
    """|i − j| for i < a, j < b: (a, b)."""
    return jnp.abs(jnp.arange(a)[:, None] - jnp.arange(b)[None, :]).astype(dtype)


# --------------------------------------------------------------------------
# fixed tapers


@dataclasses.dataclass(frozen=True)
class Delta(Localizer):
    """Delta (identity) localiser: ``ρ_uG[i, j] = 1 if i = j else 0``; ρ_GG = 1,
    or ``ρ_GG = I`` with ``taper_outputs=True``.

    Keeps only the covariance of parameter i with output i: the
    cross-covariance becomes diagonal (rectangular when p ≠ d, entries (i, i)
    for i < min(p, d)). Meant for problems whose output i is a direct
    (noisy, transformed) view of parameter i.

    taper_outputs: also keep only the variances of C^{GG} (ρ_GG = I; for a
    diagonal Γ the gain is then diagonal, K_ii = C^{uG}_ii / (C^{GG}_ii +
    Γ_ii/Δt)); static, default False (ρ_GG = 1, the
    EnsembleKalmanProcesses.jl behaviour). The default is not wrong, but
    with steps of Δt ~ 1 on a forward map with a large Jacobian it can
    overshoot and diverge; see "Tapering C^{GG}" in the module doc.
    """

    taper_outputs: bool = False

    def __post_init__(self):
        check_bool("taper_outputs", self.taper_outputs)

    def _tapers(self, key, r_uG, r_GG, N):
        p, d = r_uG.shape
        rho_GG = jnp.eye(d, dtype=r_GG.dtype) if self.taper_outputs else _ones(r_GG)
        return jnp.eye(p, d, dtype=r_uG.dtype), rho_GG


_register(Delta, meta=["taper_outputs"])


@dataclasses.dataclass(frozen=True)
class RBF(Localizer):
    """Gaussian (radial basis function) taper of the index distance:

        ρ_uG[i, j] = exp(−(i − j)² / (2 ℓ²)),   ρ_GG = 1,

    i the parameter index, j the output index (see the module doc for p ≠ d);
    with ``taper_outputs=True`` also ρ_GG[j, j'] = exp(−(j − j')² / (2 ℓ²)).

    length_scale: ℓ > 0 in index units (an array leaf).
    taper_outputs: also taper C^{GG} with the Gaussian of the output index
    distance (a positive semi-definite kernel, so the tapered C^{GG} stays
    so); static, default False (ρ_GG = 1, the EnsembleKalmanProcesses.jl
    behaviour). The default is not wrong, but with steps of Δt ~ 1 on a
    forward map with a large Jacobian it can overshoot and diverge; see
    "Tapering C^{GG}" in the module doc.
    """

    length_scale: ArrayLike
    taper_outputs: bool = False

    def __post_init__(self):
        _scalar("length_scale", self.length_scale, low=0.0, low_open=True)
        check_bool("taper_outputs", self.taper_outputs)

    def _tapers(self, key, r_uG, r_GG, N):
        p, d = r_uG.shape
        ell = jnp.asarray(self.length_scale, r_uG.dtype)
        rho_uG = gaussian(_index_distance(p, d, r_uG.dtype), ell)
        if self.taper_outputs:
            rho_GG = gaussian(_index_distance(d, d, r_GG.dtype), ell.astype(r_GG.dtype))
        else:
            rho_GG = _ones(r_GG)
        return rho_uG, rho_GG


_register(RBF, ["length_scale"], ["taper_outputs"])


@dataclasses.dataclass(frozen=True)
class BernoulliDropout(Localizer):
    """Random dropout of cross-covariance entries, redrawn at every call.

    ρ_uG[i, i] = 1; every other entry is kept (1) with probability ``prob``
    and dropped (0) otherwise, independently, except that the square
    leading block is symmetric (ρ_uG[i, j] = ρ_uG[j, i] for i, j < min(p,
    d)); ρ_GG = 1 (as in EnsembleKalmanProcesses.jl). Random:
    ``tapers``/``localize`` need a key. There is no ``taper_outputs``: the
    mask is not positive semi-definite (see "Tapering C^{GG}" in the module
    doc); with steps of Δt ~ 1 on a strongly nonlinear map use small or
    adaptive steps (``DataMisfitController``).

    prob: probability of keeping an off-diagonal entry, in [0, 1] (a leaf).
    """

    prob: ArrayLike
    needs_key: ClassVar[bool] = True

    def __post_init__(self):
        _scalar("prob", self.prob, low=0.0, high=1.0)

    def _tapers(self, key, r_uG, r_GG, N):
        p, d = r_uG.shape
        m = max(p, d)
        keep = jax.random.bernoulli(key, jnp.asarray(self.prob, r_uG.dtype), (m, m))
        upper = jnp.triu(keep.astype(r_uG.dtype), 1)
        full = upper + upper.T + jnp.eye(m, dtype=r_uG.dtype)
        return full[:p, :d], _ones(r_GG)


_register(BernoulliDropout, ["prob"])


@dataclasses.dataclass(frozen=True, eq=False)
class FixedTaper(Localizer):
    """Given taper matrices: ``ρ_uG = param_output``, ``ρ_GG = output_output``.

    For parameters and outputs with coordinates, e.g.
    ``FixedTaper(localization_matrix(xu, xg, L), localization_matrix(xg, xg, L))``;
    ``FixedTaper(ones((p, d)), ones((d, d)))`` is no localisation.
    param_output: (p, d); output_output: (d, d) (array leaves).
    """

    param_output: ArrayLike
    output_output: ArrayLike

    def __post_init__(self):
        if _user_value(self.param_output):
            check_ndim("param_output", self.param_output, 2, "(p, d)")
            check_finite("param_output", self.param_output)
        if _user_value(self.output_output):
            check_ndim("output_output", self.output_output, 2, "(d, d)")
            check_finite("output_output", self.output_output)
            d = np.shape(self.output_output)
            if d[0] != d[1]:
                raise ValueError(f"output_output must have shape (d, d), got shape {d}")

    def _tapers(self, key, r_uG, r_GG, N):
        if jnp.shape(self.param_output) != r_uG.shape or \
                jnp.shape(self.output_output) != r_GG.shape:
            raise ValueError(
                f"FixedTaper holds matrices of shapes {jnp.shape(self.param_output)} and "
                f"{jnp.shape(self.output_output)}, but the ensemble needs (p, d) = "
                f"{r_uG.shape} and (d, d) = {r_GG.shape}"
            )
        return (jnp.asarray(self.param_output, r_uG.dtype),
                jnp.asarray(self.output_output, r_GG.dtype))


_register(FixedTaper, ["param_output", "output_output"])


# --------------------------------------------------------------------------
# sampling-error correction


@dataclasses.dataclass(frozen=True)
class SEC(Localizer):
    """Sampling error correction by a power of the sample correlation (Lee 2021):

        ρ = |r|^α · 1{|r|^{1+α} > r_min},

    i.e. the correlation r becomes r|r|^α, and corrected correlations of
    magnitude ≤ r_min are set to zero (sparsity). Applied to C^{uG} and the
    off-diagonal of C^{GG}. α = 0, r_min = 0 is no localisation (up to
    exactly-zero correlations).

    alpha: α ≥ 0; r_min: cutoff in [0, 1) (default 0, no cutoff); leaves.
    Reference: Lee (2021), "Sampling error correction in ensemble Kalman
    inversion", arXiv:2105.11341.
    """

    alpha: ArrayLike
    r_min: ArrayLike = 0.0

    def __post_init__(self):
        _scalar("alpha", self.alpha, low=0.0)
        _scalar("r_min", self.r_min, low=0.0, high=1.0, high_open=True)

    def _one(self, r):
        a = jnp.abs(r)
        alpha = jnp.asarray(self.alpha, r.dtype)
        rho = a ** alpha
        return jnp.where(a * rho > jnp.asarray(self.r_min, r.dtype), rho, 0.0)

    def _tapers(self, key, r_uG, r_GG, N):
        return self._one(r_uG), _unit_diagonal(self._one(r_GG))


_register(SEC, ["alpha", "r_min"])


def _check_fisher_size(name: str, N: int) -> None:
    if N < 4:
        raise ValueError(
            f"{name} uses the Fisher transformation, with standard error 1/√(N − 3): "
            f"it needs N >= 4 members, got N = {N}"
        )


@dataclasses.dataclass(frozen=True)
class SECFisher(Localizer):
    """Sampling error correction from the Fisher transformation (Flowerdew
    2015, as used for EKI by Lee 2021). No tuning value.

    With s = atanh(r) ~ N(atanh ρ, 1/(N − 3)), the sampling spread of r is
    estimated as σ_r = (tanh(s + σ_s) − tanh(s − σ_s)) / 2, σ_s = 1/√(N − 3),
    and the taper is the signal-to-noise weight

        ρ = Q² / (1 + Q²),   Q = r / σ_r,

    applied to C^{uG} and the off-diagonal of C^{GG}. Needs N ≥ 4. r is
    clipped to ±(1 − 10⁸ ε₆₄) (4 ε in float32) so that atanh stays finite.

    References: Flowerdew (2015), "Towards a theory of optimal
    localisation", Tellus A 67, 25257; Lee (2021), arXiv:2105.11341.
    """

    def _one(self, r, N):
        r = _clip_r(r)
        s = jnp.arctanh(r)
        ss = float(1.0 / np.sqrt(N - 3.0))
        sr = 0.5 * (jnp.tanh(s + ss) - jnp.tanh(s - ss))
        q2 = (r / sr) ** 2
        return q2 / (1.0 + q2)

    def _tapers(self, key, r_uG, r_GG, N):
        _check_fisher_size("SECFisher", N)
        return self._one(r_uG, N), _unit_diagonal(self._one(r_GG, N))


_register(SECFisher)


def _correlation_std(r: Array, N: int, n_nodes: int = 40) -> Array:
    """Standard deviation of the sample correlation of N Gaussian pairs with
    correlation r, from the Fisher transformation: the std of tanh(Z),
    Z ~ N(atanh r, 1/(N − 3)), by Gauss–Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(n_nodes)
    w = w / w.sum()
    s = jnp.arctanh(_clip_r(r))[..., None]
    t = jnp.tanh(s + jnp.asarray(z / np.sqrt(N - 3.0), r.dtype))
    w = jnp.asarray(w, r.dtype)
    mean = t @ w
    return jnp.sqrt(jnp.maximum((t * t) @ w - mean * mean, 0.0))


_NICE_EXPONENTS = (2, 4, 6, 8, 10)
_NICE_WEIGHTS = tuple(float(a) for a in np.linspace(1.0, 0.0, 10))


def _nice_block(r: Array, mask: Array, N: int) -> Array:
    """The NICE taper of one block of correlations (``mask``: the entries
    that count; the diagonal of C^{GG} does not)."""
    r = jnp.where(mask, _clip_r(r), 0.0)
    sd = jnp.where(mask, _correlation_std(r, N), 0.0)
    tol = jnp.sqrt(jnp.sum(sd * sd))
    r2 = r * r
    # smallest even γ whose correction r^{γ+1} departs from r by more than the
    # noise: ‖r^{γ+1} − r‖_F > ε
    exceeds = jnp.stack([jnp.sum(((r2 ** (g // 2) - 1.0) * r) ** 2) > tol * tol
                         for g in _NICE_EXPONENTS])
    k = jnp.where(jnp.any(exceeds), jnp.argmax(exceeds), len(_NICE_EXPONENTS) - 1)
    half = jnp.asarray(_NICE_EXPONENTS, jnp.int32)[k] // 2
    hi, lo = r2 ** half, r2 ** (half - 1)
    # strongest blend ρ = a r^γ + (1 − a) r^{γ−2} within the noise:
    # ‖(ρ − 1) r‖² = a² ΣA² + 2a ΣAB + ΣB², A = (r^γ − r^{γ−2}) r, B = (r^{γ−2} − 1) r
    A, B = (hi - lo) * r, (lo - 1.0) * r
    saa, sab, sbb = jnp.sum(A * A), jnp.sum(A * B), jnp.sum(B * B)
    a = jnp.asarray(_NICE_WEIGHTS, r.dtype)
    fits = a * a * saa + 2.0 * a * sab + sbb < tol * tol
    best = a[jnp.argmax(fits)]
    rho = best * hi + (1.0 - best) * lo
    return jnp.where(jnp.any(fits), rho, jnp.ones_like(r))


@dataclasses.dataclass(frozen=True)
class SECNice(Localizer):
    """Noise-informed correlation estimation, NICE (Vishny et al. 2024).
    Tuning-free: the class has no fields.

    For each block, C^{uG} and C^{GG} (off-diagonal) separately, with r the
    sample correlations and σ_r their sampling standard deviations for N
    Gaussian members (the std of tanh(Z), Z ~ N(atanh r, 1/(N − 3))), the
    noise level is ε = ‖σ_r‖_F. The correction shrinks r to r^{γ+1} (even γ:
    the corrected matrix of a positive semi-definite one stays so): γ is the
    smallest of 2, 4, …, 10 with ‖r^{γ+1} − r‖_F > ε (10 if none), then the
    taper is the blend

        ρ = a r^γ + (1 − a) r^{γ−2}

    with the largest a in {1, 8/9, …, 0} for which ‖ρ ∘ r − r‖_F < ε (a
    discrepancy principle: correct as much as the sampling noise allows);
    ρ = 1 if none does. Needs N ≥ 4.

    Reference: Vishny, Morzfeld, Gwirtz, Bach, Dunbar & Hodyss (2024),
    "High-dimensional covariance estimation from a small number of samples",
    ESS Open Archive, doi:10.22541/essoar.171501094.44068137/v1. The
    discrepancy loop follows the NICE corrector of EnsembleKalmanProcesses.jl
    (its ``SECNice`` with tolerance scalings 1).
    """

    def _tapers(self, key, r_uG, r_GG, N):
        _check_fisher_size("SECNice", N)
        d = r_GG.shape[0]
        rho_uG = _nice_block(r_uG, jnp.ones(r_uG.shape, bool), N)
        rho_GG = _nice_block(r_GG, ~jnp.eye(d, dtype=bool), N)
        return rho_uG, _unit_diagonal(rho_GG)


_register(SECNice)
