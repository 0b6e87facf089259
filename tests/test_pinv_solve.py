"""The opt-in Moore–Penrose innovation solve (``method="pinv"``) for a
rank-deficient ``S = Yᵀ Y + R``.

The singular case: state component 0 observed twice (rows 0 and 1 of H) with
a variance far below the resolution of S (1e-20 against O(1): ``a + 1e-20 == a``
in float64, so the computed S is exactly singular), or with a zero variance
inside a trace (where the operators' positivity checks do not run). Data of
the two copies agree, so the duplicate adds no information: the analysis
must equal the one with row 1 removed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.covariance import Dense, Diagonal
from enkit.linalg import (
    default_rcond,
    kalman_solve,
    kalman_solve_observation_space,
    kalman_solve_pinv,
)

H_DUP = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
TINY = 1e-20


def _singular_problem(dtype=np.float64, tiny=TINY):
    rng = np.random.default_rng(3)
    N = 6
    E = (rng.normal(size=(N, 3)) @ np.array([[1.0, 0.3, 0], [0, 1.0, 0.4], [0, 0, 1.0]]))
    y = np.array([0.7, 0.7, -0.4, 1.1])  # the two copies of component 0 agree
    var = np.array([tiny, tiny, 0.5, 0.3])
    return E.astype(dtype), y.astype(dtype), var.astype(dtype)


def _closed_form_mean(E, y, H, Rm):
    """The Kalman mean with the ensemble's sample covariance, S⁺ by NumPy."""
    E = np.asarray(E, np.float64)
    xbar = E.mean(0)
    X = (E - xbar) / np.sqrt(E.shape[0] - 1)
    P = X.T @ X
    S = H @ P @ H.T + Rm
    return xbar + P @ H.T @ np.linalg.pinv(S, hermitian=True) @ (y - H @ xbar)


# --- full rank: pinv is the Cholesky solve ---------------------------------


@pytest.mark.parametrize("N,m", [(8, 5), (4, 7)])
@pytest.mark.parametrize("kind", ["scalar", "diagonal", "dense"])
def test_full_rank_pinv_equals_cholesky(N, m, kind):
    rng = np.random.default_rng(N + 10 * m)
    A = rng.normal(size=(m, m))
    R = {"scalar": enkit.Scalar(0.4, m),
         "diagonal": enkit.Diagonal(rng.uniform(0.2, 2.0, m)),
         "dense": enkit.Dense(A @ A.T + 0.5 * np.eye(m))}[kind]
    Y = rng.normal(size=(N, m)) / np.sqrt(N - 1)
    D = rng.normal(size=(3, m))
    ref = kalman_solve_observation_space(Y, R, D)
    np.testing.assert_allclose(kalman_solve(Y, R, D, method="pinv"), ref, rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(kalman_solve_pinv(Y, R, D), ref, rtol=1e-10, atol=1e-10)


def test_full_rank_schemes_pinv_equal_observation(problem):
    p = problem
    for scheme in (enkit.enkf, enkit.denkf):
        a = scheme(p.E, p.y, p.H, p.R, key=1, method="observation")
        b = scheme(p.E, p.y, p.H, p.R, key=1, method="pinv")
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)
    loc = enkit.GainLocalization(jnp.ones((p.n, p.m)), jnp.ones((p.m, p.m)))
    a = enkit.denkf(p.E, p.y, p.H, p.R, localization=loc)
    b = enkit.denkf(p.E, p.y, p.H, p.R, localization=loc, method="pinv")
    np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)


# --- rank-deficient S ----------------------------------------------------------


def test_singular_denkf_matches_numpy_pinv_and_duplicate_removed():
    E, y, var = _singular_problem()
    a = enkit.denkf(E, y, H_DUP, var, method="pinv")
    np.testing.assert_allclose(a.mean(0), _closed_form_mean(E, y, H_DUP, np.diag(var)),
                               rtol=1e-10, atol=1e-10)
    # The same information without the duplicate: S is then positive
    # definite and the Cholesky solve is exact.
    b = enkit.denkf(E, y[1:], H_DUP[1:], var[1:], method="observation")
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    # and the perfect observation is matched
    np.testing.assert_allclose(a.mean(0)[0], y[0], atol=1e-10)


def test_singular_enkf_matches_numpy_pinv_member_by_member():
    E, y, var = _singular_problem()
    R = Diagonal(var)
    a = enkit.enkf(E, y, H_DUP, R, key=5, method="pinv")
    D = np.asarray(enkit.perturbed_observations(jax.random.key(5), y, R, E.shape[0]))
    X = (E - E.mean(0)) / np.sqrt(E.shape[0] - 1)
    P = X.T @ X
    K = P @ H_DUP.T @ np.linalg.pinv(H_DUP @ P @ H_DUP.T + np.diag(var), hermitian=True)
    np.testing.assert_allclose(a, E + (D - E @ H_DUP.T) @ K.T, rtol=1e-10, atol=1e-10)


def test_exact_zero_variance_and_rank_deficient_dense_inside_jit():
    """Zero variances (or a singular dense R) pass only inside a trace;
    there "pinv" gives the analysis without the duplicate."""
    E, y, var = _singular_problem(tiny=0.0)

    @jax.jit
    def diag(var):
        return enkit.denkf(E, y, H_DUP, Diagonal(var), method="pinv")

    # One zero variance left: S is positive definite, Cholesky is exact.
    ref = jax.jit(lambda v: enkit.denkf(E, y[1:], H_DUP[1:], Diagonal(v)))(var[1:])
    assert np.all(np.isfinite(ref))
    np.testing.assert_allclose(diag(var), ref, rtol=1e-10, atol=1e-10)
    # Both copies share one error of variance 0.2 (fully correlated): a
    # singular dense R, the same information as one observation with 0.2.
    Rm = np.diag([0.2, 0.2, 0.5, 0.3])
    Rm[0, 1] = Rm[1, 0] = 0.2

    @jax.jit
    def dense(Rm):
        return enkit.denkf(E, y, H_DUP, Dense(Rm), method="pinv")

    ref = enkit.denkf(E, y[1:], H_DUP[1:], np.array([0.2, 0.5, 0.3]))
    np.testing.assert_allclose(dense(Rm), ref, rtol=1e-10, atol=1e-10)


def test_auto_never_falls_back_to_pinv():
    """"auto" (and the other exact forms) keep Cholesky/Woodbury: on the
    singular S they give NaN, loudly, never the pinv answer."""
    E, y, var = _singular_problem()
    for method in ("auto", "observation", "ensemble"):
        out = enkit.denkf(E, y, H_DUP, var, method=method)
        assert not np.any(np.isfinite(out)), method
    Y = (E - E.mean(0)) @ H_DUP.T / np.sqrt(E.shape[0] - 1)
    assert not np.any(np.isfinite(kalman_solve(Y, Diagonal(var), np.ones((1, 4)))))
    assert np.all(np.isfinite(kalman_solve(Y, Diagonal(var), np.ones((1, 4)),
                                           method="pinv")))


def test_rcond_sets_the_cut():
    # Y = 0: S = R, eigenvalues 1, 1e-3, 1e-8, 1e-17 (positive: R passes its check).
    lam = np.array([1.0, 1e-3, 1e-8, 1e-17])
    R, Y, D = Diagonal(lam), np.zeros((3, 4)), np.eye(4)

    def rank(rcond):
        Z = np.asarray(kalman_solve(Y, R, D, method="pinv", rcond=rcond))
        cut = default_rcond(4, np.float64) if rcond is None else rcond
        np.testing.assert_allclose(Z, np.linalg.pinv(np.diag(lam), rcond=cut, hermitian=True),
                                   rtol=1e-12)
        return int(np.sum(np.abs(np.diag(Z)) > 0))

    assert rank(None) == 3  # default 10·m·eps ≈ 8.9e-15: only 1e-17 is cut
    assert rank(1e-10) == 3
    assert rank(1e-5) == 2
    assert rank(1e-2) == 1
    assert rank(0.0) == 4  # every nonzero eigenvalue kept
    np.testing.assert_allclose(kalman_solve(Y, R, D, method="pinv"),
                               jnp.linalg.pinv(jnp.diag(lam), hermitian=True), rtol=1e-12)
    assert default_rcond(4, jnp.float64) == 10 * 4 * np.finfo(np.float64).eps
    assert default_rcond(4, jnp.float32) == 10 * 4 * float(np.finfo(np.float32).eps)


@pytest.mark.parametrize("rcond", [-1e-3, np.nan, np.inf, True, "1e-3", [1e-3, 1e-3]])
def test_bad_rcond_raises(rcond, problem):
    p = problem
    with pytest.raises(ValueError, match="rcond"):
        kalman_solve(jnp.ones((4, 3)), enkit.Scalar(1.0, 3), jnp.ones((1, 3)),
                     method="pinv", rcond=rcond)
    with pytest.raises(ValueError, match="rcond"):
        enkit.denkf(p.E, p.y, p.H, p.R, method="pinv", rcond=rcond)
    with pytest.raises(ValueError, match="rcond"):
        enkit.EKI(method="pinv", rcond=rcond)


def test_bad_method_and_misplaced_rcond_raise(problem):
    p = problem
    with pytest.raises(ValueError, match="'auto', 'observation', 'ensemble', 'pinv'"):
        enkit.enkf(p.E, p.y, p.H, p.R, key=0, method="svd")
    with pytest.raises(ValueError, match="only"):  # rcond without "pinv"
        enkit.denkf(p.E, p.y, p.H, p.R, rcond=1e-8)
    with pytest.raises(ValueError, match="only"):
        kalman_solve(jnp.ones((4, 3)), enkit.Scalar(1.0, 3), jnp.ones((1, 3)), rcond=1e-8)
    loc = enkit.GainLocalization(jnp.ones((p.n, p.m)), jnp.ones((p.m, p.m)))
    with pytest.raises(ValueError, match="'auto', 'observation', 'pinv'.*localization"):
        enkit.denkf(p.E, p.y, p.H, p.R, method="ensemble", localization=loc)
    for cls in (enkit.EKI, enkit.ESMDA, enkit.IES):
        args = (enkit.esmda_constant_alpha(2),) if cls is enkit.ESMDA else ()
        with pytest.raises(ValueError, match="method must be one of"):
            cls(*args, method="cholesky")
    with pytest.raises(ValueError, match="'auto', 'pinv'.*localizer"):
        enkit.EKI(localizer=enkit.Delta(), method="observation")


def test_jit_does_not_recompile():
    E, y, var = _singular_problem()
    traces = []

    @jax.jit
    def analysis(E, y, var, rcond):
        traces.append(1)
        return enkit.denkf(E, y, H_DUP, var, method="pinv", rcond=rcond)

    ref = enkit.denkf(E, y[1:], H_DUP[1:], var[1:])
    np.testing.assert_allclose(analysis(E, y, var, 1e-12), ref, rtol=1e-10, atol=1e-10)
    for s in (2.0, 3.0):
        out = analysis(E * s, y + s, var, 1e-10)
        assert np.all(np.isfinite(out))
    assert len(traces) == 1


@pytest.mark.parametrize("exact_zero", [False, True], ids=["tiny", "zero-in-jit"])
def test_float32(exact_zero):
    E, y, var = _singular_problem(np.float32, tiny=0.0 if exact_zero else 1e-12)
    run = jax.jit(lambda E, y, var: enkit.denkf(E, y, H_DUP, Diagonal(var), method="pinv"))
    a = run(E, y, var) if exact_zero else enkit.denkf(E, y, H_DUP, var, method="pinv")
    assert a.dtype == jnp.float32 and np.all(np.isfinite(a))
    E64, y64, v64 = (np.asarray(a, np.float64) for a in (E, y[1:], var[1:]))
    ref = jax.jit(lambda v: enkit.denkf(E64, y64, H_DUP[1:], Diagonal(v)))(v64)
    np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-4)
    b = jax.jit(lambda v: enkit.enkf(E, y, H_DUP, Diagonal(v), key=0, method="pinv",
                                     rcond=1e-5))(var)
    assert b.dtype == jnp.float32 and np.all(np.isfinite(b))


# --- the processes take it too -------------------------------------------------


def _processes(method, rcond=None):
    prior = enkit.GaussianPrior(np.zeros(3), np.eye(3))
    kw = dict(method=method, rcond=rcond)
    return {
        "EKI": enkit.EKI(stochastic=False, **kw),
        "ESMDA": enkit.ESMDA(enkit.esmda_constant_alpha(2), stochastic=False, **kw),
        "TEKI": enkit.TEKI(prior, stochastic=False, **kw),
        "IES": enkit.IES(stochastic=False, **kw),
        "GNKI": enkit.GNKI(prior, stochastic=False, **kw),
    }


@pytest.mark.parametrize("name", ["EKI", "ESMDA", "TEKI", "IES", "GNKI"])
def test_processes_pinv(name):
    E, y, var = _singular_problem()
    # full rank: "pinv" is the default solve
    full = np.array([0.1, 0.2, 0.5, 0.3])
    outs = {}
    for method in ("auto", "pinv"):
        proc = _processes(method)[name]
        s = proc.init(None, E)
        s, _ = proc.tell(s, proc.ask(s) @ H_DUP.T, y, full)
        outs[method] = s.ensemble
    np.testing.assert_allclose(outs["pinv"], outs["auto"], rtol=1e-10, atol=1e-10)
    # singular Γ: the duplicate removed
    proc = _processes("pinv", 1e-12)[name]
    s = proc.init(None, E)
    a, _ = proc.tell(s, proc.ask(s) @ H_DUP.T, y, var)
    proc = _processes("auto")[name]
    b, _ = proc.tell(proc.init(None, E), E @ H_DUP[1:].T, y[1:], var[1:])
    np.testing.assert_allclose(a.ensemble, b.ensemble, rtol=1e-9, atol=1e-9)


def test_sparse_eki_pinv_is_eki_pinv():
    """With λ = α = θ = 0 SparseEKI is EKI: the same pinv step on a singular Γ."""
    E, y, var = _singular_problem()
    out = []
    for proc in (enkit.SparseEKI(stochastic=False, method="pinv"),
                 enkit.EKI(stochastic=False, method="pinv")):
        s = proc.init(None, E)
        out.append(proc.tell(s, E @ H_DUP.T, y, var)[0].ensemble)
    assert np.all(np.isfinite(out[0]))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-10, atol=1e-10)


def test_localized_eki_pinv():
    """A localised EKI (taper of ones: the plain covariances, solved by LU)
    pseudo-inverts the tapered matrix with method="pinv"."""
    E, y, var = _singular_problem()
    loc = enkit.FixedTaper(np.ones((3, 4)), np.ones((4, 4)))
    full = np.array([0.1, 0.2, 0.5, 0.3])
    out = {}
    for method in ("auto", "pinv"):
        proc = enkit.EKI(stochastic=False, localizer=loc, method=method)
        s = proc.init(None, E)
        out[method] = proc.tell(s, E @ H_DUP.T, y, full)[0].ensemble
    np.testing.assert_allclose(out["pinv"], out["auto"], rtol=1e-10, atol=1e-10)
    proc = enkit.EKI(stochastic=False, localizer=loc, method="pinv")
    a = proc.tell(proc.init(None, E), E @ H_DUP.T, y, var)[0].ensemble
    b = enkit.EKI(stochastic=False).tell(enkit.EKI(stochastic=False).init(None, E),
                                         E @ H_DUP[1:].T, y[1:], var[1:])[0].ensemble
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
