"""Bounded parameters, named parameter groups and constrained processes.

Every inversion process works on an unconstrained Gaussian parameter vector
u ∈ ℝᵖ. Physical parameters x often live in intervals (a rate > 0, a
fraction in (0, 1)); they are reached through an elementwise bijection
x = T(u) applied to the members the process asks for:

    Unbounded         x = u
    BoundedBelow(a)   x = a + exp(u)                     (a, ∞)
    BoundedAbove(b)   x = b − exp(−u)                    (−∞, b)
    Bounded(a, b)     x = a + (b − a) σ(u),  σ(u) = 1/(1 + e⁻ᵘ)   (a, b)

(the usual log/logit transforms, as in EnsembleKalmanProcesses.jl's
constrained priors). The prior is Gaussian in u; the updates happen in u;
``ConstrainedProcess.ask`` returns x. Rounding: near a bound the exact
x can round onto the bound (e.g. a + exp(−800) = a), so every ``forward``
clips its result into the closed interval [a, b] (and an infinite side into
the largest finite float), and a bound is cast to the working dtype rounding
*inwards* (a float32 run never sees a float64 bound rounded outwards). Hence
every value returned lies in [a, b] for every input that is not NaN, in
float64 and float32 alike; ``forward(±inf)`` is the bound itself.

``Parameter`` names one scalar or a vector group of size k with its prior
N(mean, C) in the unconstrained space and its bijection; ``ParameterSpace``
orders them into one vector of dimension p = Σ k, samples initial
ensembles, maps (N, p) ensembles both ways, unpacks a member into a dict,
and gives the prior (``prior_mean``, ``prior_covariance``, ``prior``) for
TEKI, UKI and GNKI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_ndim, is_concrete
from enkit.covariance import Covariance, Diagonal, Scalar, as_covariance
from enkit.inversion._common import BlockDiagonal
from enkit.inversion.prior import GaussianPrior

__all__ = [
    "Bijection",
    "Bounded",
    "BoundedAbove",
    "BoundedBelow",
    "ConstrainedProcess",
    "Parameter",
    "ParameterSpace",
    "Unbounded",
]


def _register(cls, data: Sequence[str], meta: Sequence[str] = ()):
    """Register a frozen dataclass as a pytree whose unflattening bypasses
    ``__init__`` (so validation runs once, on the user's values, never on
    tracers or placeholder leaves)."""
    data, meta = tuple(data), tuple(meta)

    def flatten(obj):
        return tuple(getattr(obj, f) for f in data), tuple(getattr(obj, f) for f in meta)

    def unflatten(aux, leaves):
        obj = object.__new__(cls)
        for f, v in zip(data, leaves):
            object.__setattr__(obj, f, v)
        for f, v in zip(meta, aux):
            object.__setattr__(obj, f, v)
        return obj

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls


def _as_float(name: str, v) -> Array:
    v = jnp.asarray(v)
    if not jnp.issubdtype(v.dtype, jnp.floating):
        v = v.astype(jnp.result_type(float))
    if v.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a (k,) vector, got shape {v.shape}")
    check_finite(name, v)
    return v


def _work_dtype(u: Array):
    return u.dtype if jnp.issubdtype(u.dtype, jnp.floating) else jnp.result_type(float)


def _inward(v: Array, dtype, lower: bool) -> Array:
    """Bound ``v`` cast to ``dtype``, rounded into the interval: a lower
    bound is rounded up, an upper bound down (exact when no rounding)."""
    c = v.astype(dtype)
    back = c.astype(jnp.promote_types(v.dtype, dtype))
    vv = v.astype(back.dtype)
    if lower:
        return jnp.where(back < vv, jnp.nextafter(c, jnp.asarray(jnp.inf, dtype)), c)
    return jnp.where(back > vv, jnp.nextafter(c, jnp.asarray(-jnp.inf, dtype)), c)


class Bijection:
    """Elementwise map ``forward: u ∈ ℝ → x`` in an interval, and its inverse.

    ``forward(u)`` and ``inverse(x)`` act elementwise on arrays whose last
    axis broadcasts against the bounds (scalars or (k,) vectors); the result
    has u's floating dtype. Subclasses are frozen pytrees (bounds are
    leaves), so they pass through ``jit`` and ``vmap``.
    """

    def forward(self, u: ArrayLike) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, x: ArrayLike) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def bounds(self, dtype=None) -> tuple[Array, Array]:
        """(lower, upper), ∓inf for an open side, cast inwards to ``dtype``."""
        raise NotImplementedError  # pragma: no cover - abstract


@dataclasses.dataclass(frozen=True, eq=False)
class Unbounded(Bijection):
    """The identity: x = u ∈ ℝ."""

    def forward(self, u):
        u = jnp.asarray(u)
        return u.astype(_work_dtype(u))

    def inverse(self, x):
        x = jnp.asarray(x)
        return x.astype(_work_dtype(x))

    def bounds(self, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        return jnp.asarray(-jnp.inf, dtype), jnp.asarray(jnp.inf, dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class BoundedBelow(Bijection):
    """x = lower + exp(u) ∈ (lower, ∞);  u = log(x − lower).

    lower: finite scalar or (k,) vector (a pytree leaf). ``forward`` clips
    into [lower, largest finite float]: u ≪ 0 rounds onto ``lower``, u ≫ 0
    gives the largest float instead of inf. ``inverse(lower) = −inf``.
    """

    lower: ArrayLike

    def __post_init__(self):
        object.__setattr__(self, "lower", _as_float("lower", self.lower))

    def bounds(self, dtype=None):
        dtype = self.lower.dtype if dtype is None else dtype
        lo = _inward(self.lower, dtype, lower=True)
        return lo, jnp.full_like(lo, jnp.inf)

    def forward(self, u):
        u = jnp.asarray(u)
        dt = _work_dtype(u)
        u = u.astype(dt)
        lo, _ = self.bounds(dt)
        return jnp.clip(lo + jnp.exp(u), lo, jnp.finfo(dt).max)

    def inverse(self, x):
        x = jnp.asarray(x)
        dt = _work_dtype(x)
        lo, _ = self.bounds(dt)
        return jnp.log(x.astype(dt) - lo)


@dataclasses.dataclass(frozen=True, eq=False)
class BoundedAbove(Bijection):
    """x = upper − exp(−u) ∈ (−∞, upper);  u = −log(upper − x).

    upper: finite scalar or (k,) vector. ``forward`` clips into
    [−largest finite float, upper]. ``inverse(upper) = +inf``.
    """

    upper: ArrayLike

    def __post_init__(self):
        object.__setattr__(self, "upper", _as_float("upper", self.upper))

    def bounds(self, dtype=None):
        dtype = self.upper.dtype if dtype is None else dtype
        up = _inward(self.upper, dtype, lower=False)
        return jnp.full_like(up, -jnp.inf), up

    def forward(self, u):
        u = jnp.asarray(u)
        dt = _work_dtype(u)
        u = u.astype(dt)
        _, up = self.bounds(dt)
        return jnp.clip(up - jnp.exp(-u), -jnp.finfo(dt).max, up)

    def inverse(self, x):
        x = jnp.asarray(x)
        dt = _work_dtype(x)
        _, up = self.bounds(dt)
        return -jnp.log(up - x.astype(dt))


@dataclasses.dataclass(frozen=True, eq=False)
class Bounded(Bijection):
    """x = lower + (upper − lower) σ(u) ∈ (lower, upper);
    u = log(x − lower) − log(upper − x)  (the logit of the fraction).

    Evaluated as ``upper − w σ(−u)`` for u ≥ 0 and ``lower + w σ(u)`` for
    u < 0 (w = upper − lower), so each side keeps its relative accuracy and
    nothing overflows for any u; the result is clipped into [lower, upper].
    lower, upper: finite scalars or (k,) vectors with lower < upper and a
    finite width (pytree leaves).
    """

    lower: ArrayLike
    upper: ArrayLike

    def __post_init__(self):
        lo = _as_float("lower", self.lower)
        up = _as_float("upper", self.upper)
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", up)
        if is_concrete(lo) and is_concrete(up):
            a, b = np.asarray(lo), np.asarray(up)
            try:
                a, b = np.broadcast_arrays(a, b)
            except ValueError:
                raise ValueError(
                    f"lower {a.shape} and upper {b.shape} must have the same shape"
                ) from None
            if not np.all(a < b):
                raise ValueError(f"lower must be < upper, got lower={a}, upper={b}")
            with np.errstate(over="ignore"):
                width = b - a
            if not np.all(np.isfinite(width)):
                raise ValueError("upper − lower must be finite")

    def bounds(self, dtype=None):
        dtype = jnp.promote_types(self.lower.dtype, self.upper.dtype) if dtype is None else dtype
        return _inward(self.lower, dtype, lower=True), _inward(self.upper, dtype, lower=False)

    def forward(self, u):
        u = jnp.asarray(u)
        dt = _work_dtype(u)
        u = u.astype(dt)
        lo, up = self.bounds(dt)
        w = up - lo
        s = jax.nn.sigmoid(-jnp.abs(u))  # in [0, 1/2]
        x = jnp.where(u >= 0, up - w * s, lo + w * s)
        return jnp.clip(x, lo, up)

    def inverse(self, x):
        x = jnp.asarray(x)
        dt = _work_dtype(x)
        x = x.astype(dt)
        lo, up = self.bounds(dt)
        return jnp.log(x - lo) - jnp.log(up - x)


_register(Unbounded, [])
_register(BoundedBelow, ["lower"])
_register(BoundedAbove, ["upper"])
_register(Bounded, ["lower", "upper"])


def bijection_for(lower=None, upper=None) -> Bijection:
    """The bijection of the given bounds (None: that side is open)."""
    if lower is None and upper is None:
        return Unbounded()
    if upper is None:
        return BoundedBelow(lower)
    if lower is None:
        return BoundedAbove(upper)
    return Bounded(lower, upper)


@dataclasses.dataclass(frozen=True, eq=False)
class Parameter:
    """One named parameter (size None) or vector group (size k), with its
    Gaussian prior in the UNCONSTRAINED space and its bijection.

    name: unique name; mean: scalar or (k,) prior mean of u; std: scalar or
    (k,) prior standard deviation of u (default 1), or instead covariance:
    a covariance operator of dimension k or an array (``as_covariance``:
    σ², (k,) variances or (k, k)); lower/upper: bounds of x (scalars or
    (k,); None for an open side), or instead an explicit ``bijection``;
    size: None for a scalar, k ≥ 1 for a group.

    After construction the object holds ``name``, ``size``, ``mean`` (k,),
    ``covariance`` (an operator) and ``bijection``; ``std``, ``lower`` and
    ``upper`` are construction arguments only. Every invalid argument
    raises ValueError naming the parameter.
    """

    name: str
    mean: ArrayLike = 0.0
    std: dataclasses.InitVar[ArrayLike | None] = None
    lower: dataclasses.InitVar[ArrayLike | None] = None
    upper: dataclasses.InitVar[ArrayLike | None] = None
    size: int | None = None
    covariance: Covariance | ArrayLike | None = None
    bijection: Bijection | None = None

    def __post_init__(self, std, lower, upper):
        name = self.name
        if not isinstance(name, str) or not name:
            raise TypeError(f"Parameter name must be a non-empty str, got {name!r}")
        try:
            self._build(std, lower, upper)
        except ValueError as err:
            raise ValueError(f"parameter {name!r}: {err}") from None

    def _build(self, std, lower, upper):
        size = self.size
        if size is not None and (not isinstance(size, (int, np.integer))
                                 or isinstance(size, bool) or size < 1):
            raise ValueError(f"size must be None (a scalar) or an integer >= 1, got {size!r}")
        k = 1 if size is None else int(size)
        shape = "()" if size is None else f"() or ({k},)"

        def vec(arg, v):
            v = _as_float(arg, v)
            if v.shape not in ((), (k,)) or (size is None and v.ndim):
                raise ValueError(f"{arg} must have shape {shape}, got shape {v.shape}")
            return jnp.broadcast_to(v, (k,))

        mean = vec("mean", self.mean)
        if std is not None and self.covariance is not None:
            raise ValueError("give std or covariance, not both")
        if self.covariance is not None:
            cov = as_covariance(self.covariance, k, name="covariance")
        else:
            s = vec("std", 1.0 if std is None else std)
            if is_concrete(s) and not np.all(np.asarray(s) > 0):
                raise ValueError("std must be positive")
            cov = Diagonal(s * s) if size is not None else Scalar(s[0] ** 2, 1)
        if self.bijection is not None:
            if lower is not None or upper is not None:
                raise ValueError("give lower/upper or a bijection, not both")
            if not isinstance(self.bijection, Bijection):
                raise ValueError(
                    f"bijection must be a Bijection, got {type(self.bijection).__name__}"
                )
            bij = self.bijection
        else:
            bij = bijection_for(lower, upper)
        for f in ("lower", "upper"):
            v = getattr(bij, f, None)
            if v is not None and (jnp.shape(v) not in ((), (k,))
                                  or (size is None and jnp.ndim(v))):
                raise ValueError(f"{f} must have shape {shape}, got shape {jnp.shape(v)}")
        object.__setattr__(self, "size", None if size is None else k)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "covariance", cov)
        object.__setattr__(self, "bijection", bij)

    @property
    def dim(self) -> int:
        """k: 1 for a scalar, the group size otherwise."""
        return 1 if self.size is None else self.size


_register(Parameter, ["mean", "covariance", "bijection"], ["name", "size"])


@jax.tree_util.register_pytree_node_class
class ParameterSpace:
    """Ordered named parameters (scalars and vector groups) as one vector.

    parameters: a sequence of ``Parameter`` with unique names. The vector
    u (unconstrained) or x (constrained) of dimension p = Σ kᵢ holds the
    parameters in the given order, each group's k entries contiguous.
    Ensembles are (N, p), members on axis 0; the maps act on the last axis.
    A pytree (the parameters' means, covariances and bounds are leaves).
    """

    def __init__(self, parameters: Sequence[Parameter]):
        params = tuple(parameters)
        if not params:
            raise ValueError("parameters must hold at least one Parameter")
        for q in params:
            if not isinstance(q, Parameter):
                raise TypeError(f"parameters must be Parameter objects, got {type(q).__name__}")
        names = [q.name for q in params]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"parameter names must be unique, repeated: {dup}")
        self.parameters = params

    def tree_flatten(self):
        return (self.parameters,), None

    @classmethod
    def tree_unflatten(cls, _, leaves):
        obj = object.__new__(cls)
        obj.parameters = tuple(leaves[0])
        return obj

    def __repr__(self) -> str:
        parts = [q.name if q.size is None else f"{q.name}[{q.size}]" for q in self.parameters]
        return f"ParameterSpace({', '.join(parts)}; p={self.dim})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(q.name for q in self.parameters)

    @property
    def dim(self) -> int:
        """p = Σ kᵢ, the length of the parameter vector."""
        return sum(q.dim for q in self.parameters)

    @property
    def slices(self) -> dict[str, slice]:
        """name → slice of the parameter's entries in the p-vector."""
        out, i = {}, 0
        for q in self.parameters:
            out[q.name] = slice(i, i + q.dim)
            i += q.dim
        return out

    @property
    def prior_mean(self) -> Array:
        """(p,) prior mean of u (unconstrained)."""
        return jnp.concatenate([q.mean for q in self.parameters])

    @property
    def prior_covariance(self) -> Covariance:
        """Prior covariance operator of u: ``Diagonal`` when every group is
        diagonal, else the block diagonal of the groups (never densified;
        call ``.dense()`` for the (p, p) matrix)."""
        covs = [q.covariance for q in self.parameters]
        if all(isinstance(c, (Scalar, Diagonal)) for c in covs):
            return Diagonal(jnp.concatenate([c.diagonal() for c in covs]))
        out = covs[-1]
        for c in reversed(covs[:-1]):
            out = BlockDiagonal(c, out)
        return out

    @property
    def prior(self) -> GaussianPrior:
        """``GaussianPrior(prior_mean, prior_covariance)``, for TEKI/UKI/GNKI."""
        return GaussianPrior(self.prior_mean, self.prior_covariance)

    def bounds(self, dtype=None) -> tuple[Array, Array]:
        """(p,) lower and upper bounds of x (∓inf for open sides)."""
        lo, up = [], []
        for q in self.parameters:
            a, b = q.bijection.bounds(dtype)
            lo.append(jnp.broadcast_to(a, (q.dim,)))
            up.append(jnp.broadcast_to(b, (q.dim,)))
        dt = jnp.result_type(*lo, *up)
        return (jnp.concatenate([a.astype(dt) for a in lo]),
                jnp.concatenate([b.astype(dt) for b in up]))

    def sample(self, key: Array | int, N: int) -> Array:
        """N draws of u from the prior (unconstrained): (N, p).
        key: PRNG key or integer seed (required)."""
        return self.prior.sample(key, N)

    def _check_last(self, name: str, a) -> Array:
        a = jnp.asarray(a)
        if a.ndim < 1 or a.shape[-1] != self.dim:
            raise ValueError(
                f"{name} must have shape (N, p) = (N, {self.dim}) (or (p,)), got shape {a.shape}"
            )
        return a

    def to_constrained(self, U: ArrayLike) -> Array:
        """x = T(u) for every member: U (N, p) unconstrained → (N, p) within
        the bounds (the last axis holds the p entries; (p,) works too)."""
        U = self._check_last("U", U)
        parts = [q.bijection.forward(U[..., s]) for q, s in
                 zip(self.parameters, self.slices.values())]
        return jnp.concatenate(parts, axis=-1)

    def to_unconstrained(self, X: ArrayLike) -> Array:
        """u = T⁻¹(x): X (N, p) constrained → (N, p). Concrete values must lie
        strictly inside the bounds (ValueError naming the parameter)."""
        X = self._check_last("X", X)
        parts = []
        for q, s in zip(self.parameters, self.slices.values()):
            x = X[..., s]
            if is_concrete(x):
                lo, up = (np.asarray(b, np.float64) for b in q.bijection.bounds(
                    _work_dtype(x)))
                xv = np.asarray(x, np.float64)
                if not np.all((xv > lo) & (xv < up)):
                    raise ValueError(
                        f"X: parameter {q.name!r} must lie strictly inside its bounds "
                        f"({lo.tolist()}, {up.tolist()}) to be mapped back"
                    )
            parts.append(q.bijection.inverse(x))
        return jnp.concatenate(parts, axis=-1)

    def unpack(self, x: ArrayLike) -> dict[str, Array]:
        """name → value of one member x (p,): a scalar () for a scalar
        parameter, (k,) for a group. An (N, p) ensemble gives (N,) / (N, k)."""
        x = self._check_last("x", x)
        out = {}
        for q, s in zip(self.parameters, self.slices.values()):
            out[q.name] = x[..., s.start] if q.size is None else x[..., s]
        return out

    def pack(self, values: dict) -> Array:
        """Inverse of ``unpack`` for one member: dict name → value → (p,)."""
        missing = [n for n in self.names if n not in values]
        extra = [n for n in values if n not in self.names]
        if missing or extra:
            raise ValueError(f"values must have exactly the keys {list(self.names)}; "
                             f"missing {missing}, unknown {extra}")
        parts = []
        for q in self.parameters:
            v = jnp.asarray(values[q.name])
            want = () if q.size is None else (q.size,)
            if v.shape != want:
                raise ValueError(f"values[{q.name!r}] must have shape {want}, got {v.shape}")
            parts.append(v.reshape(q.dim))
        return jnp.concatenate(parts)


@dataclasses.dataclass(frozen=True, eq=False)
class ConstrainedProcess:
    """Any inversion process (EKI, ETKI, TEKI, UKI, GNKI, …) asked in the
    constrained space of a ``ParameterSpace``.

    The wrapped process carries and updates the unconstrained u;
    ``ask`` returns x = T(u) (every entry inside its bounds), at which the
    forward map is run; ``tell`` passes the outputs on unchanged:

        state = cp.init(key, space.sample(key0, N))   # U0: (N, p) unconstrained
        X = cp.ask(state)                               # (N, p) constrained
        state, info = cp.tell(state, G(X), y, noise)

    For TEKI, UKI and GNKI give the process ``space.prior`` (its dimension
    is checked). A pytree (the process and the space are leaves).
    """

    process: object
    space: ParameterSpace

    def __post_init__(self):
        if not isinstance(self.space, ParameterSpace):
            raise TypeError(f"space must be a ParameterSpace, got {type(self.space).__name__}")
        for method in ("init", "ask", "tell"):
            if not callable(getattr(self.process, method, None)):
                raise TypeError(f"process must have init/ask/tell, "
                                f"{type(self.process).__name__} lacks {method}")
        prior = getattr(self.process, "prior", None)
        if isinstance(prior, GaussianPrior) and prior.dim != self.space.dim:
            raise ValueError(
                f"the process's prior has dimension {prior.dim} but the space has "
                f"p={self.space.dim} parameters"
            )

    def init(self, key: Array | int | None, ensemble: ArrayLike | None = None):
        """The wrapped process's ``init(key, ensemble)``; ensemble: (N, p)
        UNCONSTRAINED members (e.g. ``space.sample``). None is passed on only
        to processes that accept it (UKI starts from its prior)."""
        if ensemble is None:
            return self.process.init(key)
        check_ndim("ensemble", ensemble, 2, f"(N, p) = (N, {self.space.dim})")
        if np.shape(ensemble)[1] != self.space.dim:
            raise ValueError(
                f"ensemble must have shape (N, p) = (N, {self.space.dim}) "
                f"(unconstrained), got shape {np.shape(ensemble)}"
            )
        return self.process.init(key, ensemble)

    def ask(self, state) -> Array:
        """Constrained parameters x = T(u) of the asked members: (rows, p)."""
        return self.space.to_constrained(self.process.ask(state))

    def ask_unconstrained(self, state) -> Array:
        """The wrapped process's own ``ask``: the unconstrained u."""
        return self.process.ask(state)

    def tell(self, state, G, y, noise, *, dt=None):
        """The wrapped process's ``tell`` with the outputs of ``ask(state)``
        (rows in ``ask``'s order); dt: Δt, or None for the process's default."""
        if dt is None:
            return self.process.tell(state, G, y, noise)
        return self.process.tell(state, G, y, noise, dt=dt)


_register(ConstrainedProcess, ["process", "space"])
