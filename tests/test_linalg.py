"""Gain solves and symmetric matrix functions."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.linalg import (
    kalman_solve,
    kalman_solve_ensemble_space,
    kalman_solve_observation_space,
    kalman_solve_weights,
    spd_solve,
    spd_solve_rows,
    sym_matrix_functions,
)


def _operators(m, rng):
    A = rng.normal(size=(m, m))
    return {
        "scalar": enkit.Scalar(0.3, m),
        "diagonal": enkit.Diagonal(rng.uniform(0.2, 2.0, size=m)),
        "dense": enkit.Dense(A @ A.T + 0.5 * np.eye(m)),
    }


@pytest.mark.parametrize("N,m", [(8, 30), (30, 8), (10, 10)])
@pytest.mark.parametrize("kind", ["scalar", "diagonal", "dense"])
def test_woodbury_and_observation_space_agree(N, m, kind):
    rng = np.random.default_rng(N * m)
    R = _operators(m, rng)[kind]
    Y = rng.normal(size=(N, m)) / np.sqrt(N - 1)
    D = rng.normal(size=(5, m))
    a = kalman_solve_observation_space(Y, R, D)
    b = kalman_solve_ensemble_space(Y, R, D)
    exact = np.linalg.solve(Y.T @ Y + np.asarray(R.dense()), D.T).T
    np.testing.assert_allclose(a, exact, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kalman_solve(Y, R, D), a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("N,m", [(8, 30), (30, 8), (10, 10)])
@pytest.mark.parametrize("kind", ["scalar", "diagonal", "dense"])
def test_kalman_solve_weights_are_the_solve_times_y_transposed(N, m, kind):
    # D C⁻¹ Yᵀ for every method; the ensemble-space weights come from the
    # N×N system alone (push-through), the others from kalman_solve
    rng = np.random.default_rng(3 * N + m)
    R = _operators(m, rng)[kind]
    Y = jnp.asarray(rng.normal(size=(N, m)) / np.sqrt(N - 1))
    D = jnp.asarray(rng.normal(size=(5, m)))
    exact = np.linalg.solve(Y.T @ Y + np.asarray(R.dense()), D.T).T @ Y.T
    for method in ("auto", "observation", "ensemble", "pinv"):
        got = kalman_solve_weights(Y, R, D, method=method)
        assert got.shape == (5, N)
        np.testing.assert_allclose(got, exact, rtol=1e-9, atol=1e-11, err_msg=method)
    with pytest.raises(ValueError, match="rcond"):
        kalman_solve_weights(Y, R, D, method="ensemble", rcond=1e-3)

    def loss(Y, D, method):
        return jnp.sum(jnp.sin(kalman_solve_weights(Y, R, D, method=method)))

    for argnum in (0, 1):
        got = jax.grad(loss, argnum)(Y, D, "ensemble")
        want = jax.grad(loss, argnum)(Y, D, "observation")
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_spd_solve_rows_forms_the_inverse_from_twice_as_many_rows_as_columns():
    from enkit.linalg import spd_solve_rows_by_inverse

    assert spd_solve_rows_by_inverse(14, 7) and spd_solve_rows_by_inverse(101, 40)
    assert not spd_solve_rows_by_inverse(13, 7) and not spd_solve_rows_by_inverse(41, 40)


# (7, 13), (12, 5), (7, 7): two triangular solves; (1, 3), (6, 12), (4, 40): the inverse
@pytest.mark.parametrize("k,r", [(1, 3), (7, 7), (12, 5), (7, 13), (6, 12), (4, 40)])
def test_spd_solve_rows_gives_the_rows_of_b_times_the_inverse(k, r):
    rng = np.random.default_rng(k + 10 * r)
    M = rng.normal(size=(k, k))
    A = M @ M.T + 0.3 * np.eye(k)
    B = rng.normal(size=(r, k))
    exact = np.linalg.solve(A, B.T).T
    np.testing.assert_allclose(spd_solve_rows(A, B), exact, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(spd_solve_rows(A, B), spd_solve(A, B.T).T, rtol=1e-12, atol=1e-13)
    # Only the lower triangle is read, like spd_solve.
    junk = np.tril(A) + np.triu(rng.normal(size=(k, k)), 1)
    np.testing.assert_allclose(spd_solve_rows(junk, B), exact, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("r", [3, 9])  # two triangular solves; the explicit inverse (r >= 2k)
def test_spd_solve_rows_is_nan_for_an_indefinite_matrix_and_differentiable(r):
    A = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    assert np.all(np.isnan(spd_solve_rows(A, np.ones((r, 2)))))
    rng = np.random.default_rng(4)
    M = rng.normal(size=(4, 4))
    A = jnp.asarray(M @ M.T + np.eye(4))
    B = jnp.asarray(rng.normal(size=(r, 4)))
    W = jnp.asarray(rng.normal(size=(r, 4)))

    def loss(A, B, solve):
        return jnp.sum(W * solve(0.5 * (A + A.T), B))

    dense = lambda A, B: jnp.linalg.solve(A, B.T).T  # noqa: E731
    for argnum in (0, 1):
        got = jax.grad(loss, argnum)(A, B, spd_solve_rows)
        want = jax.grad(loss, argnum)(A, B, dense)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_kalman_solve_rejects_unknown_method():
    R = enkit.Scalar(1.0, 3)
    with pytest.raises(ValueError, match="method must be"):
        kalman_solve(jnp.ones((4, 3)), R, jnp.ones((1, 3)), method="svd")


def _largest_intermediate(fn, *args):
    """Size of the largest array in the traced program of fn(*args)."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    sizes = [1]

    def visit(jp):
        for eqn in jp.eqns:
            for v in list(eqn.outvars) + list(eqn.invars):
                aval = getattr(v, "aval", None)
                if aval is not None and hasattr(aval, "shape"):
                    sizes.append(int(np.prod(aval.shape)))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return max(sizes)


def test_large_diagonal_R_is_never_densified():
    m, N, n = 100_000, 20, 30
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    idx = jnp.arange(m) % n  # each observation looks at one state entry

    def h(x):
        return x[idx]

    E = jax.random.normal(k1, (N, n))
    R = enkit.Diagonal(jnp.full((m,), 2.0))
    y = h(jnp.zeros(n)) + jax.random.normal(k2, (m,))
    for name in ("enkf", "etkf"):
        fn = lambda E, y: enkit.SCHEMES[name](E, y, h, R, key=k3)  # noqa: E731
        # No intermediate of O(m²): the largest array is O(N m).
        assert _largest_intermediate(fn, E, y) <= 2 * N * m
        Ea = fn(E, y)
        assert Ea.shape == (N, n) and np.all(np.isfinite(np.asarray(Ea)))


def test_sym_matrix_functions_values():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(6, 6))
    A = B @ B.T
    sq, inv = sym_matrix_functions(jnp.asarray(A), (jnp.sqrt, lambda x: 1.0 / x))
    np.testing.assert_allclose(sq @ sq, A, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(inv @ A, np.eye(6), atol=1e-9)


def _rsqrt1p(x):
    return 1.0 / jnp.sqrt(1.0 + x)


@pytest.mark.parametrize("spectrum", ["distinct", "repeated", "zero"])
def test_sym_matrix_functions_derivative_matches_finite_differences(spectrum):
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    lam = {"distinct": np.arange(1.0, 7.0),
           "repeated": np.array([0.0, 0.0, 0.0, 2.0, 2.0, 5.0]),
           "zero": np.zeros(6)}[spectrum]
    A = jnp.asarray(Q @ np.diag(lam) @ Q.T)
    dA = rng.normal(size=(6, 6))
    dA = jnp.asarray(dA + dA.T)

    def f(A):
        return sym_matrix_functions(A, (_rsqrt1p,))[0]

    _, tangent = jax.jvp(f, (A,), (dA,))
    h = 1e-6
    fd = (f(A + h * dA) - f(A - h * dA)) / (2 * h)
    assert np.all(np.isfinite(np.asarray(tangent)))
    np.testing.assert_allclose(tangent, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lam_max", [0.0, 0.2, 0.5, 20.0, 5000.0])  # series, NS, eigh
def test_inverse_sqrt_identity_plus_is_exact_on_every_path(lam_max):
    from enkit.linalg import inverse_sqrt_identity_plus

    rng = np.random.default_rng(4)
    B = rng.normal(size=(12, 7))  # rank 7 < 12: repeated zero eigenvalues
    A = B @ B.T
    A = A * (lam_max / np.linalg.eigvalsh(A)[-1])
    lam, V = np.linalg.eigh(A)
    ref = (V / np.sqrt(1 + lam)) @ V.T
    Z = inverse_sqrt_identity_plus(jnp.asarray(A))
    np.testing.assert_allclose(Z, ref, atol=1e-13)
    np.testing.assert_allclose(Z, Z.T, rtol=0, atol=4e-16)  # symmetric to round-off
    dA = rng.normal(size=(12, 12))
    dA = jnp.asarray(dA + dA.T)
    _, t = jax.jvp(inverse_sqrt_identity_plus, (jnp.asarray(A),), (dA,))
    _, t_ref = jax.jvp(lambda A: sym_matrix_functions(A, (_rsqrt1p,))[0], (jnp.asarray(A),), (dA,))
    np.testing.assert_allclose(t, t_ref, atol=1e-12)


def _psd_with_bound(k, bound, seed):
    """A k×k symmetric positive semi-definite matrix (rank k − 2, so zero
    eigenvalues repeat) scaled so that ‖A⁴‖_F^{1/4} equals ``bound``."""
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(k, k - 2))
    A = B @ B.T
    return A * (bound / np.sum(np.linalg.eigvalsh(A) ** 8) ** 0.125)


def _reference(A, f):
    lam, V = np.linalg.eigh(A)
    return (V * f(lam)) @ V.T


_FUNCTIONS = {"isqrt": lambda lam: 1 / np.sqrt(1 + lam),
              "isqrt_factor": lambda lam: -1 / (np.sqrt(1 + lam) * (1 + np.sqrt(1 + lam)))}


def _plans():
    from enkit import linalg
    return [(name, k) for (name, precision), plans in linalg._SERIES_PLANS.items()
            if precision == "float64" for k in range(len(plans))]


@pytest.mark.parametrize("name,k", _plans())
def test_each_series_plan_alone_is_exact_on_its_whole_interval(name, k):
    from enkit import linalg

    degree, L = linalg._SERIES_PLANS[name, "float64"][k]
    form = linalg._SERIES_FORMS[name, "float64"][k]
    # the product form takes the top 17 coefficients, the blocks the rest
    n_low = degree + 1 if form.top is None else degree - 16
    assert form.low.shape == (n_low,) and n_low % 4 == 0
    for fraction in (1.0, 0.5, 0.01):  # the spectrum fills the interval, or part of it
        A = _psd_with_bound(10, fraction * L, seed=k)
        powers, bound = linalg._powers_and_bound(jnp.asarray(A))
        assert float(bound) <= L * (1 + 1e-12)
        got = linalg._series(jnp.asarray(A), powers, bound, form)
        np.testing.assert_allclose(got, _reference(A, _FUNCTIONS[name]), atol=2e-15)


def _count_products(fn, *args):
    return str(jax.make_jaxpr(fn)(*args)).count("dot_general")


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("name", ["isqrt", "isqrt_factor"])
def test_plans_from_degree_16_take_one_product_fewer_than_paterson_stockmeyer(name, precision):
    """Degree 16 + 4r in 5 + r products (A², A³, A⁴, the two of the product
    form, r Horner steps); Paterson–Stockmeyer in blocks of four reaches
    degree 15 + 4r with 6 + r. Below degree 16, 3 + (d + 1)/4 − 1."""
    from enkit import linalg

    A = jnp.asarray(_psd_with_bound(6, 0.1, seed=0), dtype=precision)
    for (degree, _), form in zip(linalg._SERIES_PLANS[name, precision],
                                 linalg._SERIES_FORMS[name, precision]):
        def f(A, form=form):
            powers, bound = linalg._powers_and_bound(A)
            return linalg._series(A, powers, bound, form)

        want = 5 + (degree - 16) // 4 if degree >= 16 else 3 + (degree + 1) // 4 - 1
        assert (form.top is not None) == (degree >= 16)
        assert _count_products(f, A) == want, (degree, want)


@pytest.mark.parametrize("name", ["isqrt", "isqrt_factor"])
def test_product_form_reproduces_the_top_coefficients_in_extended_precision(name):
    """σ (y₀ + Σ bᵢ uⁱ)(y₀ + Σ eᵢ uⁱ) + f y₀ + Σ gᵢ uⁱ, y₀ = u⁴ Σ aᵢ uⁱ,
    expanded with its unrounded parameters, is the polynomial it was solved
    for, whatever the free parameter f (where real)."""
    from numpy.polynomial import polynomial as P

    from enkit import linalg

    ld = np.longdouble
    fn = linalg._SCALAR_FUNCTIONS[name]
    for L, basis in ((0.6, "lambda"), (2.0, "shifted")):
        p = linalg._chebyshev_interpolant(fn, L, 16)
        if basis == "lambda":
            p = P.polyval(np.polynomial.Polynomial([ld(-1), ld(2) / ld(L)]), p).coef
        f = np.asarray([-3.0, -0.5, 0.5, 3.0], ld)
        sigma, a, b, e, f, g = linalg._product_form(p, f)
        real = np.all(np.isfinite(b), axis=0)
        assert real.any() and not real.all()  # f on one side of a threshold only
        for j in np.flatnonzero(real):
            y0 = P.polymul([0, 0, 0, 0, 1], a[:, j])
            got = P.polyadd(P.polyadd(sigma * P.polymul(P.polyadd(y0, b[:, j]),
                                                        P.polyadd(y0, e[:, j])),
                                      f[j] * y0), g[:, j])
            np.testing.assert_allclose(np.asarray(got[:17], np.float64),
                                       np.asarray(p, np.float64), rtol=0,
                                       atol=1e-17 * float(np.max(np.abs(p))))


@pytest.mark.parametrize("name", ["isqrt", "isqrt_factor"])
def test_series_in_powers_of_lambda_where_well_conditioned_equals_the_shifted_form(name):
    """Plans up to L ≈ 1 (cycled ensembles' spectra) evaluate in powers of
    λ, the rest in powers of t = 2λ/L − 1; where λ is used, the shifted form
    of the same interpolant gives the same matrix to round-off."""
    from enkit import linalg

    plans = linalg._SERIES_PLANS[name, "float64"]
    forms = linalg._SERIES_FORMS[name, "float64"]
    assert [f.basis for f in forms[:2]] == ["lambda"] * 2 and forms[-1].basis == "shifted"
    for k, ((degree, L), form) in enumerate(zip(plans, forms)):
        if form.basis != "lambda":
            continue
        fn = linalg._SCALAR_FUNCTIONS[name]
        # the rule that chose λ: the interpolant's λ-coefficients are well conditioned on [0, L]
        ld = np.longdouble
        c = np.polynomial.polynomial.polyval(
            np.polynomial.Polynomial([ld(-1), ld(2) / ld(L)]),
            linalg._chebyshev_interpolant(fn, L, degree)).coef
        condition = np.sum(np.abs(c) * ld(L) ** np.arange(c.shape[0])) / abs(fn(ld(L)))
        assert condition <= linalg._MONOMIAL_MAX_CONDITION
        shifted = linalg._series_form(fn, L, degree, np.float64, basis="shifted")
        A = jnp.asarray(_psd_with_bound(12, L, seed=k))
        powers, bound = linalg._powers_and_bound(A)
        np.testing.assert_allclose(linalg._series(A, powers, bound, form),
                                   linalg._series(A, powers, bound, shifted), rtol=0, atol=2e-15)


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("name", ["isqrt", "isqrt_factor"])
def test_series_coefficients_are_within_their_tolerance_in_high_precision(name, precision):
    """Each plan's polynomial, with its parameters rounded to the working
    precision and evaluated in the plan's own form (blocks, product form) in
    its basis (powers of λ or of t = 2λ/L − 1), is within one unit round-off
    of the function on all of [0, L] (error measured with 40-digit
    decimals, not in floating point)."""
    from decimal import Decimal, getcontext

    from enkit import linalg

    getcontext().prec = 40
    dtype = np.float64 if precision == "float64" else np.float32
    eps = Decimal(float(np.finfo(dtype).eps))
    one = Decimal(1)

    def exact(x):
        s = (one + x).sqrt()
        return one / s if name == "isqrt" else -one / (s * (one + s))

    plans = linalg._SERIES_PLANS[name, precision]
    for (degree, L), form in zip(plans, linalg._SERIES_FORMS[name, precision]):
        worst = Decimal(0)
        for i in range(201):
            t = Decimal(-1) + Decimal(i) / 100
            x = Decimal(float(L)) * (one + t) / 2
            u = x if form.basis == "lambda" else t
            p = linalg._evaluate_form(form, [one, u, u * u, u * u * u, u * u * u * u],
                                      lambda a, b: a * b,
                                      cast=lambda c: Decimal(float(dtype(c))))
            worst = max(worst, abs(p - exact(x)) / abs(exact(x)))
        assert worst <= eps, (degree, L, float(worst))


@pytest.mark.parametrize("name", ["isqrt", "isqrt_factor"])
def test_newton_schulz_path_alone_is_exact(name):
    from enkit import linalg

    fn = {"isqrt": linalg._newton_schulz_isqrt,
          "isqrt_factor": linalg._newton_schulz_isqrt_factor}[name]
    A = _psd_with_bound(10, 30.0, seed=5)
    _, bound = linalg._powers_and_bound(jnp.asarray(A))
    np.testing.assert_allclose(fn(jnp.asarray(A), bound), _reference(A, _FUNCTIONS[name]),
                               atol=2e-15)


@pytest.mark.parametrize("name", ["isqrt", "isqrt_factor"])
def test_the_path_is_the_lowest_series_degree_whose_interval_holds_the_bound(name):
    # one spectrum inside each interval (above the previous one), then
    # Newton-Schulz, then eigh; the result is exact on each
    from enkit import linalg

    fn = {"isqrt": linalg.inverse_sqrt_identity_plus,
          "isqrt_factor": linalg.inverse_sqrt_identity_plus_factor}[name]
    plans = linalg._SERIES_PLANS[name, "float64"]
    edges = [0.0] + [L for _, L in plans]
    bounds = [0.5 * (lo + hi) for lo, hi in zip(edges[:-1], edges[1:])] + [50.0, 5000.0]
    seen = []
    for i, b in enumerate(bounds):
        A = _psd_with_bound(9, b, seed=6)
        seen.append(int(linalg._choose_path(linalg._powers_and_bound(jnp.asarray(A))[1],
                                            plans)))
        ref = _reference(A, _FUNCTIONS[name])
        np.testing.assert_allclose(fn(jnp.asarray(A)), ref, atol=1e-13 * max(1.0, abs(ref).max()))
    assert seen == list(range(len(plans) + 2)), seen


def test_a_batch_shares_the_path_of_its_largest_bound():
    from enkit import linalg

    A = np.stack([_psd_with_bound(8, 0.01, seed=1), _psd_with_bound(8, 2.0, seed=2)])
    got = linalg.inverse_sqrt_identity_plus(jnp.asarray(A))
    for i in range(2):
        np.testing.assert_allclose(got[i], _reference(A[i], _FUNCTIONS["isqrt"]), atol=2e-15)


@pytest.mark.parametrize("bound", [0.05, 0.5, 3.0, 20.0])
def test_float32_inputs_take_the_float32_plans_and_are_exact_in_float32(bound):
    from enkit import linalg

    A = _psd_with_bound(12, bound, seed=3)
    ref = _reference(A, _FUNCTIONS["isqrt"])
    got = linalg.inverse_sqrt_identity_plus(jnp.asarray(A, jnp.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, atol=2e-6)
    G = linalg.inverse_sqrt_identity_plus_factor(jnp.asarray(A, jnp.float32))
    np.testing.assert_allclose(np.asarray(G, np.float64), _reference(A, _FUNCTIONS["isqrt_factor"]),
                               atol=2e-6)


@pytest.mark.parametrize("lam_max", [0.0, 0.3, 2.5, 20.0, 5000.0])  # series, NS, eigh
def test_inverse_sqrt_identity_plus_factor_gives_the_n_by_n_root(lam_max):
    """(I + S Sᵀ)^{-1/2} = I + S g(Sᵀ S) Sᵀ, and the derivative is the
    Daleckiĭ–Kreĭn one of g."""
    from enkit.linalg import _rsqrt1p_factor, inverse_sqrt_identity_plus_factor

    rng = np.random.default_rng(7)
    S = rng.normal(size=(11, 4))
    M = S.T @ S
    scale = np.sqrt(lam_max / np.linalg.eigvalsh(M)[-1])
    S, M = S * scale, M * scale**2
    G = inverse_sqrt_identity_plus_factor(jnp.asarray(M))
    root = np.eye(11) + S @ np.asarray(G) @ S.T
    np.testing.assert_allclose(root, _reference(S @ S.T, _FUNCTIONS["isqrt"]), atol=1e-13)
    np.testing.assert_allclose(G, np.asarray(G).T, rtol=0, atol=4e-16)
    dM = rng.normal(size=(4, 4))
    dM = jnp.asarray(dM + dM.T)
    _, t = jax.jvp(inverse_sqrt_identity_plus_factor, (jnp.asarray(M),), (dM,))
    _, t_ref = jax.jvp(lambda M: sym_matrix_functions(M, (_rsqrt1p_factor,))[0],
                       (jnp.asarray(M),), (dM,))
    np.testing.assert_allclose(t, t_ref, atol=1e-12)
