"""No silent failures: bad inputs to every analysis scheme and every
inversion process raise an error that names the argument and the expected
form; the degenerate-but-legal inputs (no observations) give the neutral
answer.

Defects covered (each test failed before the fix):
1. NaN/inf in an H matrix, or a callable h returning NaN/inf, produced a NaN
   analysis: now a ValueError naming h, the kind of failure and the first
   member and observation.
2. m = 0 observations was refused by the covariance constructor: now every
   scheme returns E unchanged (eager and under jit), with neutral extras.
3. Scalar hyperparameters (inflation factors, relaxation coefficients, taper
   length scales, scheme and process options, steps) are checked where they
   are given, with the valid range in the message; traced values still work.
4. A zero-spread ensemble (identical members) was accepted and never moved:
   now refused by the analyses and by the processes' ``init``; a single
   parameter with zero spread warns.

Tiny problems (N = 6, n = 4, m = 3) keep the file fast.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit import inflation as infl
from enkit import localization as loc
from enkit.filters import SCHEMES
from enkit.filters.ensemble_space import ENSEMBLE_SPACE, analysis_transform
from enkit.inversion import (
    ALDI,
    EKI,
    EKS,
    ESMDA,
    ETKI,
    GNKI,
    IES,
    TEKI,
    UKI,
    DataMisfitController,
    FixedStep,
    GaussianPrior,
    MultiplicativeInflation,
    SparseEKI,
    SubspaceInflation,
    calibrate,
    discrepancy_principle,
    ensemble_collapsed,
    esmda_constant_alpha,
    max_iterations_reached,
)

N, n, m = 6, 4, 3
rng = np.random.default_rng(0)
E = rng.normal(size=(N, n))
H = rng.normal(size=(m, n))
y = rng.normal(size=m)
R = 0.5

STATE = np.arange(n, dtype=float)[:, None]
OBS = np.array([[0.5], [1.5], [2.5]])
GRID = np.stack(np.meshgrid(np.arange(2.0), np.arange(2.0), indexing="ij"), -1).reshape(-1, 2)
OBS2 = np.array([[0.2, 0.3], [0.9, 0.1], [0.5, 0.8]])
LOCAL = {
    "letkf": functools.partial(enkit.letkf, state_coords=STATE, obs_coords=OBS, radius=3.0),
    "patch_etkf": functools.partial(enkit.patch_etkf, grid_shape=(2, 2), patch_shape=(1, 1),
                                    state_coords=GRID, obs_coords=OBS2, radius=3.0),
}
# m = 0: the local schemes need observation coordinates with no rows.
LOCAL_EMPTY = {
    "letkf": functools.partial(enkit.letkf, state_coords=STATE, obs_coords=np.zeros((0, 1)),
                               radius=3.0),
    "patch_etkf": functools.partial(enkit.patch_etkf, grid_shape=(2, 2), patch_shape=(1, 1),
                                    state_coords=GRID, obs_coords=np.zeros((0, 2)), radius=3.0),
}
ALL = {**SCHEMES, **LOCAL}
NAMES = sorted(ALL)


def analyse(name, E=E, y=y, h=H, R=R, **options):
    table = LOCAL_EMPTY if np.shape(y) == (0,) and name in LOCAL else ALL
    return table[name](E, y, h, R, key=0, **options)


# ------------------------------------------------- 1. non-finite observation operator


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value, kind", [(np.nan, "NaN"), (np.inf, "inf")])
def test_nonfinite_H_matrix_is_refused_naming_h_and_the_entry(name, value, kind):
    Hb = H.copy()
    Hb[1, 2] = value
    with pytest.raises(ValueError, match=(
            rf"h must be finite, but the \(m, n\) matrix holds {kind} at h\[1, 2\] "
            r"\(observation index 1, state index 2\).*member 0")):
        analyse(name, h=Hb)


# Members 2 and 4 (E[:, 0] > 5) make observation 1 non-finite.
E_BAD = E.copy()
E_BAD[[2, 4], 0] = 10.0


def h_fails_on_large_x0(x):
    return (jnp.asarray(H) @ x).at[1].multiply(jnp.where(x[0] > 5.0, jnp.nan, 1.0))


@pytest.mark.parametrize("name", NAMES)
def test_callable_h_returning_nonfinite_is_refused_naming_member_and_observation(name):
    with pytest.raises(ValueError, match=(
            r"h must return finite values.*h\(E\[2\]\) is NaN at observation index 1 "
            r"\(member 2 is the first of 2 members with non-finite observations: \[2, 4\]\)")):
        analyse(name, E=E_BAD, h=h_fails_on_large_x0)


# Members symmetric about x0 = 0: the ensemble mean has x0 exactly 0.
E_SYM = E.copy()
E_SYM[:, 0] = [1.0, 2.0, 4.0, -1.0, -2.0, -4.0]


@pytest.mark.parametrize("name", ["kalman", "sqrt_kalman"])
def test_linearised_schemes_refuse_nonfinite_h_or_jacobian_at_the_mean(name):
    def h_pole(x):  # finite at every member, infinite at the mean
        return jnp.asarray(H) @ x / x[0]

    def h_kink(x):  # finite everywhere, no derivative at x0 = 0
        return jnp.asarray(H) @ x + jnp.sqrt(jnp.abs(x[0]))

    with pytest.raises(ValueError, match=r"at the ensemble mean .* h\(x̄\) is (inf|NaN) "
                                         r"at observation index 0"):
        SCHEMES[name](E_SYM, y, h_pole, R)
    with pytest.raises(ValueError, match=r"h's Jacobian at the ensemble mean must be finite"
                                         r".*\[0, 0\] \(observation index 0, state index 0\)"):
        SCHEMES[name](E_SYM, y, h_kink, R)


# --------------------------------------------------------------- 2. no observations

Y0 = np.zeros(0)
H0 = np.zeros((0, n))


def h_none(x):
    return x[:0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("h0, R0", [(H0, 1.0), (H0, np.ones(0)), (h_none, np.zeros((0, 0)))],
                         ids=["matrix-scalarR", "matrix-vectorR", "callable-matrixR"])
def test_no_observations_return_the_forecast_unchanged(name, h0, R0):
    out = analyse(name, y=Y0, h=h0, R=R0)
    np.testing.assert_array_equal(out, E)


@pytest.mark.parametrize("name", NAMES)
def test_no_observations_under_jit(name):
    scheme = LOCAL_EMPTY.get(name, ALL[name])
    out = jax.jit(lambda E, y: scheme(E, y, H0, 1.0, key=0))(E, Y0)
    np.testing.assert_array_equal(out, E)


@pytest.mark.parametrize("name", ["etkf_n", "etkf_n_dual", "ienkf", "mlef"])
def test_no_observations_give_neutral_iteration_info(name):
    out, info = SCHEMES[name](E, Y0, H0, 1.0, return_info=True)
    np.testing.assert_array_equal(out, E)
    assert int(info.iterations) == 0 and float(info.increment) == 0.0


@pytest.mark.parametrize("scheme", sorted(ENSEMBLE_SPACE, key=lambda f: f.__name__),
                         ids=lambda f: f.__name__)
def test_no_observations_give_the_identity_transform(scheme):
    Ea, G = analysis_transform(scheme, E, Y0, H0, 1.0, key=jax.random.key(0))
    np.testing.assert_array_equal(Ea, E)
    np.testing.assert_array_equal(G, np.eye(N))


@pytest.mark.parametrize("name", ["etkf", "enkf", "letkf"])
@pytest.mark.parametrize("R0, match", [
    (np.ones(3), r"R must be a scalar, a \(0,\) vector of variances or a \(0, 0\) matrix "
                 r"for m = 0 observations, got shape \(3,\)"),
    (-1.0, "variance must be positive"),
    (enkit.Scalar(1.0, 2), r"R has dimension 2, expected 0"),
])
def test_no_observations_still_check_R(name, R0, match):
    with pytest.raises(ValueError, match=match):
        analyse(name, y=Y0, h=H0, R=R0)


def test_no_observations_still_check_h_shape():
    with pytest.raises(ValueError, match=r"h as a matrix must have shape \(m, n\) = \(0, 4\)"):
        SCHEMES["etkf"](E, Y0, H, 1.0)
    with pytest.raises(ValueError, match=r"to shape \(m,\) = \(0,\)"):
        SCHEMES["etkf"](E, Y0, lambda x: x[:1], 1.0)


# ------------------------------------------------------------------ 4. zero spread


@pytest.mark.parametrize("name", NAMES)
def test_zero_spread_forecast_is_refused(name):
    Ez = np.tile(E[0], (N, 1))
    with pytest.raises(ValueError, match=(
            r"E has zero spread: its 6 members are identical, so the analysis cannot "
            r"update it.*enkit\.Diagonal\(b\)\.sample\(key, \(N,\)\)")):
        analyse(name, E=Ez)


def test_zero_spread_forecast_is_refused_by_analysis_transform():
    with pytest.raises(ValueError, match="E has zero spread"):
        analysis_transform(enkit.etkf, np.tile(E[0], (N, 1)), y, H, R)


p_, d_ = 3, 4
A = rng.normal(size=(d_, p_))
yd = rng.normal(size=d_)
PRIOR = GaussianPrior(np.zeros(p_), 1.0)
U0 = rng.normal(size=(8, p_))
PROCESSES = {
    "EKI": EKI(), "ETKI": ETKI(), "TEKI": TEKI(PRIOR), "GNKI": GNKI(PRIOR), "EKS": EKS(PRIOR),
    "ALDI": ALDI(PRIOR), "SparseEKI": SparseEKI(l1_weight=0.1), "IES": IES(),
    "ESMDA": ESMDA(esmda_constant_alpha(2)), "UKI": UKI(PRIOR),
    "MultiplicativeInflation(EKI)": MultiplicativeInflation(EKI(), s=0.1),
}
SPREAD_MESSAGE = {
    "UKI": r"ensemble has zero spread: its 8 members are identical, so its sample covariance",
}


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_zero_spread_initial_ensemble_is_refused(name):
    Uz = np.tile(U0[0], (8, 1))
    match = SPREAD_MESSAGE.get(name, r"ensemble has zero spread: its 8 members are identical, "
                                     r"so the process can never update it")
    with pytest.raises(ValueError, match=match + r".*GaussianPrior\(mean, covariance\)"
                                                 r"\.sample\(key, N\)"):
        PROCESSES[name].init(0, Uz)


@pytest.mark.parametrize("name", sorted(set(PROCESSES) - {"UKI"}))
def test_zero_spread_parameter_warns(name):
    U = U0.copy()
    U[:, 1] = 0.3
    with pytest.warns(UserWarning, match=r"ensemble: the parameters \[1\] have zero spread "
                                         r"\(the same value in all 8 members\)"):
        PROCESSES[name].init(0, U)


def test_uki_refuses_an_ensemble_without_a_positive_definite_covariance():
    U = U0.copy()
    U[:, 1] = 0.3
    with pytest.raises(ValueError, match=r"must be positive definite for UKI's sigma points.*"
                                         r"the parameters \[1\] have zero spread"):
        UKI(PRIOR).init(None, U)
    with pytest.raises(ValueError, match=r"N = 3 members span at most 2 < p = 3"):
        UKI(PRIOR).init(None, U0[:3])


def test_calibrate_refuses_a_zero_spread_initial_ensemble():
    with pytest.raises(ValueError, match="ensemble has zero spread"):
        calibrate(lambda u: jnp.asarray(A) @ u, EKI(stochastic=False), np.tile(U0[0], (8, 1)),
                  yd, 1.0, max_iterations=1)


# ------------------------------------------------------ 3. hyperparameters at the door

nan, inf = float("nan"), float("inf")
BAD_OPTIONS = [
    # scheme options
    ("enkf center_perturbations", lambda: analyse("enkf", center_perturbations="yes"),
     TypeError, "center_perturbations must be a bool"),
    ("enkf draw_dtype", lambda: analyse("enkf", draw_dtype="int32"),
     TypeError, "draw_dtype must be None or a floating dtype"),
    ("kalman joseph", lambda: analyse("kalman", joseph=1), TypeError, "joseph must be a bool"),
    ("etkf_n return_info", lambda: analyse("etkf_n", return_info="yes"), TypeError,
     "return_info must be a bool"),
    ("mlef return_info", lambda: analyse("mlef", return_info=None), TypeError,
     "return_info must be a bool"),
    ("ienkf tolerance", lambda: analyse("ienkf", tolerance=nan), ValueError,
     "tolerance must be None or a finite number >= 0"),
    ("etkf_n_dual grid_points", lambda: analyse("etkf_n_dual", grid_points=1), ValueError,
     "grid_points must be an integer >= 2"),
    ("letkf radius", lambda: analyse("letkf", radius=-1.0), ValueError, "radius must be positive"),
    ("patch_etkf patch_shape", lambda: analyse("patch_etkf", patch_shape=(0, 1)), ValueError,
     "patch_shape must be a pair of integers >= 1"),
    # inflation
    ("multiplicative nan", lambda: infl.multiplicative(E, nan), ValueError,
     r"factor must be finite and > 0 \(a scalar or \(4,\) array\), got nan"),
    ("multiplicative -1", lambda: infl.multiplicative(E, -1.0), ValueError,
     r"factor must be finite and > 0"),
    ("multiplicative shape", lambda: infl.multiplicative(E, np.ones(3)), ValueError,
     r"factor must be a scalar or \(4,\) array, got \[1.0, 1.0, 1.0\] of shape \(3,\)"),
    ("MultiplicativeForecast", lambda: infl.MultiplicativeForecast(0.0), ValueError,
     "factor must be finite and > 0"),
    ("MultiplicativeAnalysis", lambda: infl.MultiplicativeAnalysis(nan), ValueError,
     "factor must be finite and > 0"),
    ("rtps", lambda: infl.rtps(E, 0.5 * E, 1.5), ValueError, r"alpha must be in \[0, 1\]"),
    ("rtpp", lambda: infl.rtpp(E, 0.5 * E, nan), ValueError, r"alpha must be in \[0, 1\]"),
    ("RTPS", lambda: infl.RTPS(-0.1), ValueError, r"alpha must be in \[0, 1\]"),
    ("RTPP", lambda: infl.RTPP(np.array([0.5, 2.0])), ValueError, r"alpha must be in \[0, 1\]"),
    ("AdaptiveMultiplicative initial", lambda: infl.AdaptiveMultiplicative(initial=-1.0),
     ValueError, "initial must be finite and > 0"),
    ("AdaptiveMultiplicative variance", lambda: infl.AdaptiveMultiplicative(variance=0.0),
     ValueError, "variance must be finite and > 0"),
    ("AdaptiveMultiplicative bounds",
     lambda: infl.AdaptiveMultiplicative(min_factor=2.0, max_factor=1.5), ValueError,
     "min_factor must be <= max_factor"),
    ("adaptive_inflation prior", lambda: infl.adaptive_inflation(
        E, y, H, R, infl.InflationEstimate(nan, 0.01)), ValueError,
     "prior.factor must be finite and > 0"),
    ("additive recentre", lambda: infl.additive(E, 1.0, key=0, recentre="no"), TypeError,
     "recentre must be a bool"),
    # localisation
    ("gaspari_cohn", lambda: loc.gaspari_cohn(1.0, 0.0), ValueError,
     "length_scale must be finite and > 0, got 0.0"),
    ("step", lambda: loc.step(1.0, nan), ValueError, "length_scale must be finite and > 0"),
    ("gaussian array", lambda: loc.gaussian(np.ones(2), np.array([1.0, -1.0])), ValueError,
     "length_scale must be finite and > 0"),
    ("gain_localization", lambda: loc.gain_localization(STATE, OBS, -2.0), ValueError,
     "length_scale must be finite and > 0"),
    ("periodic_distance", lambda: loc.periodic_distance(1.0, 2.0, 0.0), ValueError,
     "period must be finite and > 0"),
    ("torus_distance", lambda: loc.torus_distance(np.ones(2), np.zeros(2), [1.0, nan]),
     ValueError, "period must be finite and > 0"),
    ("great_circle radius", lambda: loc.great_circle_distance(
        np.ones(2), np.zeros(2), degrees=True, radius=-1.0), ValueError,
     "radius must be finite and > 0"),
    # inversion options
    ("UKI spread", lambda: UKI(PRIOR, spread=0.0), ValueError, "spread must be finite and > 0"),
    ("FixedStep", lambda: FixedStep(0.0), ValueError, "dt must be finite and > 0"),
    ("FixedStep nan", lambda: FixedStep(nan), ValueError, "dt must be finite and > 0"),
    ("DataMisfitController", lambda: DataMisfitController(-1.0), ValueError,
     "terminal_time must be finite and > 0"),
    ("discrepancy_principle", lambda: discrepancy_principle(1.0, 3, tau=inf), ValueError,
     "tau must be positive and finite"),
    ("ensemble_collapsed", lambda: ensemble_collapsed(U0, U0, tol=nan), ValueError,
     "tol must be finite and > 0"),
    ("max_iterations_reached", lambda: max_iterations_reached(3, -1), ValueError,
     "max_iterations must be an integer >= 0"),
    ("MultiplicativeInflation s", lambda: MultiplicativeInflation(EKI(), s=inf), ValueError,
     "s must be a finite scalar >= 0"),
    ("SubspaceInflation gamma", lambda: SubspaceInflation(EKI(), 1.0, gamma=inf), ValueError,
     "gamma must be a finite scalar >= 0"),
    ("calibrate tau", lambda: calibrate(lambda u: u, EKI(), U0, yd, 1.0, tau=inf), ValueError,
     "tau must be positive and finite"),
]


@pytest.mark.parametrize("thunk, error, match", [c[1:] for c in BAD_OPTIONS],
                         ids=[c[0] for c in BAD_OPTIONS])
def test_bad_hyperparameter_is_refused_with_its_range(thunk, error, match):
    with pytest.raises(error, match=match):
        thunk()


def tell_args(name):
    proc = PROCESSES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # U0 has spread in every parameter
        state = proc.init(0, U0) if name != "UKI" else proc.init(None)
    G = np.asarray(proc.ask(state)) @ A.T
    return proc, state, G


STEP_PROCESSES = sorted(set(PROCESSES) - {"ESMDA"})


@pytest.mark.parametrize("name", STEP_PROCESSES)
@pytest.mark.parametrize("dt", [nan, -1.0, inf])
def test_bad_step_is_refused(name, dt):
    proc, state, G = tell_args(name)
    with pytest.raises(ValueError, match=r"dt must be (finite and >= 0|in \[0, 1\))"):
        proc.tell(state, G, yd, 1.0, dt=dt)


@pytest.mark.parametrize("name, dt, match", [
    ("UKI", 1.0, r"dt must be in \[0, 1\)"),
    ("GNKI", 1.5, r"dt \(the step length\) must be in \[0, 1\]"),
    ("IES", 1.5, r"dt \(the step length\) must be in \[0, 1\]"),
])
def test_step_lengths_above_their_range_are_refused(name, dt, match):
    proc, state, G = tell_args(name)
    with pytest.raises(ValueError, match=match):
        proc.tell(state, G, yd, 1.0, dt=dt)


def test_bad_esmda_schedule_is_refused():
    with pytest.raises(ValueError, match=r"alpha must hold finite values > 0"):
        ESMDA(np.array([2.0, nan]))


# -------------------------------------------- traced values still pass the checks


def test_traced_hyperparameters_skip_the_value_checks():
    Ea = 0.5 * E
    alphas = jnp.array([0.0, 0.5, 1.0])
    out = jax.vmap(lambda a: infl.RTPS(a).after_analysis((), None, E, Ea)[0])(alphas)
    np.testing.assert_allclose(out[1], infl.rtps(E, Ea, 0.5), rtol=1e-12)
    factors = jax.vmap(lambda f: infl.MultiplicativeForecast(f).before_analysis(
        (), None, E, None, None, None, None)[0])(jnp.array([1.0, 1.1]))
    np.testing.assert_allclose(factors[1], infl.multiplicative(E, 1.1), rtol=1e-12)
    g = jax.grad(lambda L: jnp.sum(loc.gaspari_cohn(jnp.arange(3.0), L)))(2.0)
    assert np.isfinite(g)
    dts = jax.vmap(lambda dt: FixedStep(dt).step_size(0.0, U0, yd, 1.0))(jnp.array([0.5, 1.0]))
    np.testing.assert_array_equal(dts, [0.5, 1.0])
    # pytree machinery rebuilds the objects with sentinels: no check fires
    for obj in (infl.RTPS(0.5), infl.AdaptiveMultiplicative(), FixedStep(0.5),
                DataMisfitController(), UKI(PRIOR, spread=1.0)):
        leaves, tree = jax.tree_util.tree_flatten(obj)
        jax.tree_util.tree_unflatten(tree, [object()] * len(leaves))


def test_value_checks_are_skipped_under_jit():
    # Inside jit the values are unknown: a zero-spread E passes (the driver's
    # scan checks its ensembles itself) and the analysis leaves it as it is.
    Ez = np.tile(E[0], (N, 1))
    np.testing.assert_allclose(jax.jit(enkit.etkf)(Ez, y, H, R), Ez, atol=1e-12)
