"""enkit.inversion.constraints: bijections, named parameter spaces, and
processes asked in the constrained space."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.inversion import (
    EKI,
    ETKI,
    GNKI,
    TEKI,
    UKI,
    Bounded,
    BoundedAbove,
    BoundedBelow,
    ConstrainedProcess,
    Parameter,
    ParameterSpace,
    Unbounded,
)

BIJECTIONS = {
    "unbounded": (Unbounded(), -np.inf, np.inf),
    "below": (BoundedBelow(0.1), 0.1, np.inf),
    "above": (BoundedAbove(-0.3), -np.inf, -0.3),
    "both": (Bounded(0.1, 0.3), 0.1, 0.3),
    "both_wide": (Bounded(-2.0, 5.0), -2.0, 5.0),
}


def _interior(lo, hi, rng, n=200):
    a = -5.0 if np.isinf(lo) else lo
    b = 5.0 if np.isinf(hi) else hi
    w = b - a
    return a + w * (0.01 + 0.98 * rng.uniform(size=n))


@pytest.mark.parametrize("name", list(BIJECTIONS))
def test_round_trips(name):
    bij, lo, hi = BIJECTIONS[name]
    rng = np.random.default_rng(0)
    x = _interior(lo, hi, rng)
    np.testing.assert_allclose(bij.forward(bij.inverse(x)), x, rtol=1e-12, atol=1e-14)
    u = rng.uniform(-5, 5, size=200)
    np.testing.assert_allclose(bij.inverse(bij.forward(u)), u, rtol=0, atol=1e-12)


def test_defining_formulas():
    u = np.linspace(-4, 4, 17)
    sig = 1 / (1 + np.exp(-u))
    np.testing.assert_allclose(Unbounded().forward(u), u, rtol=1e-15)
    np.testing.assert_allclose(BoundedBelow(1.5).forward(u), 1.5 + np.exp(u), rtol=1e-14)
    np.testing.assert_allclose(BoundedAbove(-2.0).forward(u), -2.0 - np.exp(-u), rtol=1e-14)
    np.testing.assert_allclose(Bounded(-1.0, 3.0).forward(u), -1.0 + 4.0 * sig, rtol=1e-14)
    # vector bounds act elementwise on the last axis
    b = Bounded(jnp.array([0.0, 10.0]), jnp.array([1.0, 20.0]))
    np.testing.assert_allclose(b.forward(jnp.zeros((3, 2))), [[0.5, 15.0]] * 3)


def _extreme(dtype, rng, n=4000):
    big = np.finfo(dtype).max
    mags = 10.0 ** rng.uniform(-3, np.log10(big), size=n)
    u = rng.choice([-1.0, 1.0], size=n) * mags
    special = [0.0, 1e3, -1e3, 88.0, -88.0, 710.0, -710.0, big, -big, np.inf, -np.inf]
    if dtype == np.float64:
        special += [1e300, -1e300]
    return np.concatenate([u, special]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(BIJECTIONS))
def test_extreme_inputs_stay_inside_bounds(name, dtype):
    bij, lo, hi = BIJECTIONS[name]
    rng = np.random.default_rng(1)
    u = jnp.asarray(_extreme(dtype, rng))
    for f in (bij.forward, jax.jit(bij.forward)):
        x = f(u)
        assert x.dtype == dtype
        xv = np.asarray(x, np.float64)  # compared against the float64 bounds
        assert not np.any(np.isnan(xv))
        assert np.all(xv >= lo) and np.all(xv <= hi), (xv.min(), xv.max())
        if name != "unbounded":
            assert np.all(np.isfinite(xv))  # no inf even for u = ±inf / huge u


def test_float32_bounds_round_inwards():
    # float32(0.3) > 0.3 and float32(0.1) > 0.1: the upper bound must be
    # rounded down, or the largest outputs would exceed 0.3.
    x = Bounded(0.1, 0.3).forward(jnp.asarray([1e30, -1e30], jnp.float32))
    assert float(x[0]) <= 0.3 and float(x[1]) >= 0.1
    x = BoundedAbove(0.3).forward(jnp.asarray([50.0], jnp.float32))
    assert float(x[0]) <= 0.3


def test_bijections_vmap_over_bounds():
    lowers = jnp.array([0.0, 1.0, 2.0])
    f = jax.vmap(lambda lo: Bounded(lo, lo + 1.0).forward(jnp.zeros(2)))
    np.testing.assert_allclose(f(lowers), np.repeat(np.asarray(lowers + 0.5)[:, None], 2, 1))
    g = jax.jit(lambda b, u: b.forward(u))
    np.testing.assert_allclose(g(BoundedBelow(2.0), jnp.zeros(3)), 3.0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Bounded(1.0, 0.0), "lower must be < upper"),
        (lambda: Bounded(1.0, 1.0), "lower must be < upper"),
        (lambda: Bounded(np.nan, 1.0), "finite"),
        (lambda: Bounded(-np.inf, 1.0), "finite"),
        (lambda: Bounded(-1e308, 1e308), "finite"),
        (lambda: BoundedBelow(np.inf), "finite"),
        (lambda: BoundedAbove(np.nan), "finite"),
        (lambda: Parameter("rate", lower=2.0, upper=1.0), "'rate'.*lower must be < upper"),
        (lambda: Parameter("k", lower=np.nan), "'k'.*finite"),
        (lambda: Parameter("w", size=2, lower=[0.0, 1.0, 2.0]), "'w'.*lower must have shape"),
        (lambda: Parameter("s", mean=[0.0, 1.0]), "'s'.*mean must have shape"),
        (lambda: Parameter("s", std=-1.0), "'s'.*std must be positive"),
        (lambda: Parameter("s", std=1.0, covariance=1.0), "'s'.*not both"),
        (lambda: Parameter("s", lower=0.0, bijection=Unbounded()), "'s'.*not both"),
        (lambda: Parameter("g", size=0), "'g'.*size"),
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def make_space():
    C = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, 0.4], [0.0, 0.4, 0.5]])
    return ParameterSpace([
        Parameter("rate", mean=0.5, std=0.2, lower=0.0),
        Parameter("w", size=3, mean=[0.0, 1.0, -1.0], covariance=C, upper=2.0),
        Parameter("frac", lower=0.0, upper=1.0),
        Parameter("free", size=2, std=[1.0, 3.0]),
    ]), C


def test_space_layout_unpack_and_pack():
    space, _ = make_space()
    assert space.dim == 7 and space.names == ("rate", "w", "frac", "free")
    assert space.slices["w"] == slice(1, 4) and space.slices["free"] == slice(5, 7)
    x = jnp.arange(7.0)
    v = space.unpack(x)
    assert v["rate"].shape == () and float(v["rate"]) == 0.0
    np.testing.assert_array_equal(v["w"], [1.0, 2.0, 3.0])
    assert float(v["frac"]) == 4.0
    np.testing.assert_array_equal(v["free"], [5.0, 6.0])
    np.testing.assert_array_equal(space.pack(v), x)
    ens = space.unpack(jnp.ones((4, 7)))
    assert ens["rate"].shape == (4,) and ens["w"].shape == (4, 3)
    with pytest.raises(ValueError, match="missing"):
        space.pack({"rate": 1.0})
    with pytest.raises(ValueError, match="unique"):
        ParameterSpace([Parameter("a"), Parameter("a")])
    with pytest.raises(ValueError, match=r"\(N, 7\)"):
        space.to_constrained(jnp.zeros((3, 6)))


def test_space_maps_each_group_with_its_bijection():
    space, _ = make_space()
    U = jax.random.normal(jax.random.key(3), (50, 7))
    X = space.to_constrained(U)
    Un = np.asarray(U)
    np.testing.assert_allclose(X[:, 0], np.exp(Un[:, 0]), rtol=1e-14)
    np.testing.assert_allclose(X[:, 1:4], 2.0 - np.exp(-Un[:, 1:4]), rtol=1e-14)
    np.testing.assert_allclose(X[:, 4], 1 / (1 + np.exp(-Un[:, 4])), rtol=1e-13)
    np.testing.assert_array_equal(X[:, 5:], Un[:, 5:])
    np.testing.assert_allclose(space.to_unconstrained(X), U, atol=1e-12)
    lo, up = space.bounds()
    np.testing.assert_array_equal(lo, [0, -np.inf, -np.inf, -np.inf, 0, -np.inf, -np.inf])
    np.testing.assert_array_equal(up, [np.inf, 2, 2, 2, 1, np.inf, np.inf])
    bad = np.asarray(X).copy()
    bad[3, 4] = 1.5
    with pytest.raises(ValueError, match="'frac'"):
        space.to_unconstrained(bad)
    # jit: the space is a pytree
    np.testing.assert_allclose(jax.jit(lambda s, u: s.to_constrained(u))(space, U), X)


def test_prior_mean_and_covariance_operators():
    space, C = make_space()
    np.testing.assert_allclose(space.prior_mean, [0.5, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0])
    dense = np.zeros((7, 7))
    dense[0, 0] = 0.04
    dense[1:4, 1:4] = C
    dense[4, 4] = 1.0
    dense[5:, 5:] = np.diag([1.0, 9.0])
    cov = space.prior_covariance
    assert not isinstance(cov, enkit.Diagonal)
    np.testing.assert_allclose(cov.dense(), dense, rtol=1e-14)
    v = np.arange(1.0, 8.0)
    np.testing.assert_allclose(cov.solve(v), np.linalg.solve(dense, v), rtol=1e-12)
    diag_space = ParameterSpace([Parameter("a", std=2.0), Parameter("b", size=2, std=[1.0, 0.5])])
    dc = diag_space.prior_covariance
    assert isinstance(dc, enkit.Diagonal)
    np.testing.assert_allclose(dc.diagonal(), [4.0, 1.0, 0.25])
    assert diag_space.prior.dim == 3


def test_sampling_statistics():
    space, _ = make_space()
    N = 40000
    U = space.sample(jax.random.key(0), N)
    assert U.shape == (N, 7)
    np.testing.assert_array_equal(U, space.sample(jax.random.key(0), N))
    dense = np.asarray(space.prior_covariance.dense())
    sd = np.sqrt(np.diag(dense))
    err = (np.asarray(U.mean(0)) - np.asarray(space.prior_mean)) / sd
    assert np.all(np.abs(err) < 5 / np.sqrt(N))
    S = np.cov(np.asarray(U).T)
    assert np.all(np.abs(S - dense) / np.outer(sd, sd) < 5 / np.sqrt(N) * 2)
    X = np.asarray(space.to_constrained(U))
    # rate = exp(u), u ~ N(0.5, 0.2²): median exp(0.5); frac median 1/2
    assert abs(np.median(X[:, 0]) - np.exp(0.5)) < 0.01
    assert abs(np.median(X[:, 4]) - 0.5) < 0.01
    lo, up = space.bounds()
    assert np.all(X >= np.asarray(lo)) and np.all(X <= np.asarray(up))
    with pytest.raises(TypeError, match="key"):
        space.sample(None, 5)


# ----- a process asked in the constrained space --------------------------------

TRUTH = np.array([2.0, 0.3])


def bounded_problem():
    space = ParameterSpace([
        Parameter("scale", lower=0.0),         # x₀ ∈ (0, ∞)
        Parameter("fraction", lower=0.0, upper=1.0),  # x₁ ∈ (0, 1)
    ])

    def G(X):
        X = jnp.asarray(X)
        return jnp.stack([X[:, 0], X[:, 0] * X[:, 1]], axis=1)

    y = np.asarray(G(TRUTH[None]))[0]
    noise = enkit.Diagonal(jnp.full(2, 1e-4))
    return space, G, y, noise


def check_inside(X, space):
    lo, up = (np.asarray(b) for b in space.bounds())
    X = np.asarray(X)
    assert np.all(np.isfinite(X)) and np.all(X >= lo) and np.all(X <= up)


def test_eki_calibration_of_bounded_problem():
    space, G, y, noise = bounded_problem()
    cp = ConstrainedProcess(EKI(), space)
    state = cp.init(jax.random.key(1), space.sample(jax.random.key(2), 50))
    tell = jax.jit(lambda c, s, g: c.tell(s, g, y, noise, dt=1.0))
    misfits = []
    for _ in range(20):
        X = cp.ask(state)
        check_inside(X, space)
        state, info = tell(cp, state, G(X))
        misfits.append(float(info.misfit))
    X = cp.ask(state)
    check_inside(X, space)
    np.testing.assert_allclose(jnp.mean(cp.ask_unconstrained(state), 0),
                               jnp.mean(state.ensemble, 0))
    est = np.asarray(space.to_constrained(jnp.mean(state.ensemble, 0)))
    np.testing.assert_allclose(est, TRUTH, rtol=0.02)
    assert misfits[-1] < 0.05 * misfits[0]


@pytest.mark.parametrize("name", ["EKI", "ETKI", "TEKI", "UKI", "GNKI"])
def test_wrapper_composes_with_every_process(name):
    space, G, y, noise = bounded_problem()
    prior = space.prior
    process = {"EKI": EKI(stochastic=False), "ETKI": ETKI(), "TEKI": TEKI(prior),
               "UKI": UKI(prior), "GNKI": GNKI(prior, stochastic=False)}[name]
    cp = ConstrainedProcess(process, space)
    U0 = None if name == "UKI" else space.sample(jax.random.key(4), 40)
    state = cp.init(0, U0)
    dt = 0.5 if name == "GNKI" else None
    first = last = None
    for _ in range(12):
        X = cp.ask(state)
        check_inside(X, space)
        np.testing.assert_allclose(X, space.to_constrained(process.ask(state)))
        state, info = cp.tell(state, G(X), y, noise, dt=dt)
        first = float(info.misfit) if first is None else first
        last = float(info.misfit)
    assert last < 0.3 * first


def test_wrapper_checks_dimensions():
    space, _, _, _ = bounded_problem()
    with pytest.raises(ValueError, match="p=2"):
        ConstrainedProcess(TEKI(enkit.GaussianPrior(np.zeros(3), 1.0)), space)
    cp = ConstrainedProcess(EKI(), space)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        cp.init(0, np.zeros((10, 3)))
    with pytest.raises(TypeError, match="init/ask/tell"):
        ConstrainedProcess(object(), space)


def test_float32_smoke():
    space, G, y, noise = bounded_problem()
    cp = ConstrainedProcess(EKI(), space)
    U0 = space.sample(jax.random.key(2), 30).astype(jnp.float32)
    state = cp.init(1, U0)
    for _ in range(5):
        X = cp.ask(state)
        assert X.dtype == jnp.float32
        check_inside(X, space)
        state, _ = cp.tell(state, G(X), y, noise)
