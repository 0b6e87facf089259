"""The continuous-time EKI flow (Schillings & Stuart 2017).

Exact answer on a linear map G(u) = A u, Φ(u) = ½‖Γ^{-1/2}(y − A u)‖²,
B = Aᵀ Γ⁻¹ A. The members move as duᵢ/dt = −C(t) ∇Φ(uᵢ) with C = X Xᵀ
(columns of X the anomalies over √(N − 1)), and the anomalies as
dX/dt = −C B X. With X(t) = X₀ Q(t) this is dQ/dt = −Q Qᵀ S Q,
S = X₀ᵀ B X₀, solved by Q = (I + 2tS)^{-1/2}. Writing uᵢ(t) = uᵢ(0) + X₀ aᵢ(t)
gives daᵢ/dt = −(I + 2tS)⁻¹ (gᵢ + S aᵢ), gᵢ = X₀ᵀ ∇Φ(uᵢ(0)); in the
eigenbasis of S, zₖ = gₖ + sₖ aₖ obeys dzₖ/dt = −sₖ zₖ/(1 + 2t sₖ), so
aₖ = −gₖ (1 − (1 + 2t sₖ)^{-1/2}) / sₖ (and aₖ = 0 where sₖ = 0, where gₖ
vanishes too). That is ``eki_flow_linear``; its t → ∞ limit is the
Gauss–Newton step in the span, the least-squares solution there.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.inversion import EKI, eki_flow, eki_flow_linear, eki_flow_vector_field

pytest.importorskip("diffrax")


@pytest.fixture(scope="module")
def linear():
    """p = 10 parameters, d = 6 data, N = 5 members: the span is 4-D."""
    rng = np.random.default_rng(0)
    p, d, N = 10, 6, 5
    A = rng.normal(size=(d, p))
    y = rng.normal(size=d)
    noise = enkit.Diagonal(rng.uniform(0.2, 0.5, d))
    U0 = rng.normal(size=(N, p))
    times = np.array([0.0, 0.01, 0.1, 1.0, 10.0, 100.0, 1e4, 1e8])
    res = eki_flow(lambda u: jnp.asarray(A) @ u, U0, y, noise, 1e8, saveat=times,
                   rtol=1e-10, atol=1e-12)
    return A, y, noise, U0, times, res


def misfit(A, y, noise, U):
    r = noise.whiten(y - U @ A.T)
    return np.sum(np.asarray(r) ** 2, axis=-1)


def test_vector_field_is_the_cross_covariance_gain():
    rng = np.random.default_rng(1)
    U, G = rng.normal(size=(7, 4)), rng.normal(size=(7, 3))
    y = rng.normal(size=3)
    Gam = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, 0.1], [0.0, 0.1, 0.5]])
    Cug = (U - U.mean(0)).T @ (G - G.mean(0)) / 6
    expected = (Cug @ np.linalg.solve(Gam, (y - G).T)).T
    got = eki_flow_vector_field(jnp.asarray(U), jnp.asarray(G), jnp.asarray(y),
                                enkit.Dense(Gam))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_integrated_flow_equals_the_closed_form_at_every_saved_time(linear):
    A, y, noise, U0, times, res = linear
    np.testing.assert_array_equal(res.times, times)
    assert res.ensembles.shape == (times.size,) + U0.shape
    for k, t in enumerate(times):
        exact = eki_flow_linear(A, U0, y, noise, t)
        np.testing.assert_allclose(res.ensembles[k], exact, atol=1e-8, err_msg=f"t = {t}")
    # the adaptive step grows with t: eight decades in a few hundred steps
    assert int(res.num_steps) < 1000


def test_misfit_never_increases_on_a_linear_problem(linear):
    A, y, noise, U0, _, _ = linear
    times = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 60)])
    res = eki_flow(lambda u: jnp.asarray(A) @ u, U0, y, noise, 1e3, saveat=times)
    mean_misfit = np.asarray(res.misfit)
    assert np.all(np.diff(mean_misfit) <= 1e-9 * mean_misfit[0])
    members = misfit(A, y, noise, np.asarray(res.ensembles))  # (T, N)
    assert np.all(np.diff(members, axis=0) <= 1e-9 * members[0].max())
    # and it falls most of the way to the misfit of the span's least-squares point
    best = np.sqrt(misfit(A, y, noise, np.asarray(eki_flow_linear(A, U0, y, noise, jnp.inf))))
    assert best[0] <= mean_misfit[-1] < best[0] + 0.05 * (mean_misfit[0] - best[0])
    np.testing.assert_allclose(
        mean_misfit, np.sqrt(misfit(A, y, noise, np.asarray(res.ensembles).mean(1))),
        rtol=1e-12)


def test_long_time_limit_is_least_squares_in_the_ensemble_span(linear):
    A, y, noise, U0, _, res = linear
    limit = np.asarray(eki_flow_linear(A, U0, y, noise, jnp.inf))
    X = (U0 - U0.mean(0)).T
    W = np.asarray(noise.whiten(A.T).T)
    for i in range(U0.shape[0]):
        c, *_ = np.linalg.lstsq(W @ X, np.asarray(noise.whiten(y - A @ U0[i])), rcond=None)
        np.testing.assert_allclose(limit[i], U0[i] + X @ c, atol=1e-10)
    # the members collapse onto one point (the span's least-squares solution is
    # the same from every member, since all share the affine span)
    np.testing.assert_allclose(limit, np.broadcast_to(limit[0], limit.shape), atol=1e-10)
    # and the integrated flow approaches it like t^{-1/2}
    gap = [np.max(np.abs(np.asarray(res.ensembles[k]) - limit)) for k in (-3, -1)]
    assert gap[1] < 1e-3 and gap[1] < 0.1 * gap[0]


def test_deterministic_eki_converges_to_the_flow_at_first_order(linear):
    A, y, noise, U0, _, _ = linear
    exact = np.asarray(eki_flow_linear(A, U0, y, noise, 1.0))
    errors = []
    for steps in (40, 400):
        proc = EKI(stochastic=False)
        st = proc.init(None, U0)
        for _ in range(steps):
            st, _ = proc.tell(st, st.ensemble @ A.T, y, noise, dt=1.0 / steps)
        errors.append(np.max(np.abs(np.asarray(st.ensemble) - exact)))
    assert 7 < errors[0] / errors[1] < 13  # error ∝ Δt


def test_nonlinear_forward_and_float32():
    def forward(u):
        return jnp.stack([u[0] + u[1] ** 3 / 10, jnp.sin(u[1]), u[0] * u[1]])

    rng = np.random.default_rng(3)
    U0 = rng.normal(size=(20, 2))
    y = np.asarray(forward(jnp.array([0.5, -0.3])))
    res = eki_flow(forward, U0, y, 0.01 * np.eye(3), 50.0, saveat=[0.0, 5.0, 50.0])
    assert res.misfit[-1] < 0.2 * res.misfit[0]
    res32 = eki_flow(forward, U0.astype(np.float32), y, 0.01 * np.eye(3), 50.0,
                     saveat=[0.0, 5.0, 50.0], rtol=1e-4, atol=1e-6)
    assert res32.ensembles.dtype == jnp.float32
    np.testing.assert_allclose(res32.ensembles[-1], res.ensembles[-1], atol=2e-2)


def test_bad_arguments_raise():
    U0 = np.random.default_rng(0).normal(size=(4, 2))
    f = lambda u: u  # noqa: E731
    with pytest.raises(ValueError, match="t1"):
        eki_flow(f, U0, np.zeros(2), 1.0, 0.0)
    with pytest.raises(ValueError, match="saveat"):
        eki_flow(f, U0, np.zeros(2), 1.0, 1.0, saveat=[0.0, 2.0])
    with pytest.raises(ValueError, match="saveat"):
        eki_flow(f, U0, np.zeros(2), 1.0, 1.0, saveat=[0.5, 0.2])
    with pytest.raises(ValueError, match="y must have shape"):
        eki_flow(f, U0, np.zeros(3), 1.0, 1.0)
    with pytest.raises(TypeError, match="callable"):
        eki_flow(np.eye(2), U0, np.zeros(2), 1.0, 1.0)
    with pytest.raises(ValueError, match="rtol"):
        eki_flow(f, U0, np.zeros(2), 1.0, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match="identical|spread"):
        eki_flow(f, np.ones((4, 2)), np.zeros(2), 1.0, 1.0)
    with pytest.raises(RuntimeError, match="max_steps"):
        eki_flow(f, U0, np.zeros(2), 1.0, 1e6, max_steps=3)
    with pytest.raises(ValueError, match="non-finite"):
        eki_flow(lambda u: jnp.log(u - 100.0), U0, np.zeros(2), 1.0, 1.0)
    # finite at the start, NaN on the way: the controller rejects every step
    with pytest.raises(RuntimeError, match="finite"):
        eki_flow(lambda u: jnp.where(u > 3.0, jnp.nan, u), U0, np.full(2, 10.0), 0.01, 10.0,
                 max_steps=200)
