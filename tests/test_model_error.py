"""EKI with model error (augment_model_error): the augmented update equals
the enlarged-noise update Γ + B Q Bᵀ for an additive error, runs with any
process, and recovers a forcing error the enlarged noise cannot express."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.filters import ensemble_with_covariance
from enkit.inversion import ModelErrorProblem, augment_model_error, etki_update

rng = np.random.default_rng(0)
p, r, d, N = 3, 2, 4, 12
A = rng.normal(size=(d, p))
B = rng.normal(size=(d, r))
Gam = np.diag(rng.uniform(0.2, 0.5, d))
Qm = np.array([[0.6, 0.2], [0.2, 0.4]])
m_u = rng.normal(size=p)
C_u = np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]])
y = rng.normal(size=d)


def _linear(u, q):
    return A @ u + B @ q


def _exact_problem():
    """The augmented problem with members whose sample statistics are exactly
    (m_u, 0) and blockdiag(C_u, Q): no sampled cross-covariance."""
    prob = augment_model_error(_linear, rng.normal(size=(N, p)), Qm, key=0)
    Cz = np.zeros((p + r, p + r))
    Cz[:p, :p], Cz[p:, p:] = C_u, Qm
    Z = ensemble_with_covariance(jax.random.normal(jax.random.key(1), (N, p + r)),
                                 jnp.concatenate([m_u, jnp.zeros(r)]), jnp.asarray(Cz))
    return prob._replace(ensemble=Z)


def test_additive_error_equals_the_enlarged_noise_to_round_off():
    prob = _exact_problem()
    Z = prob.ensemble
    G = jax.vmap(prob.forward)(Z)
    Za = etki_update(Z, G, y, enkit.Dense(Gam), 1.0)
    Ua, qa = prob.split(Za)
    # the Kalman update of u with the model error folded into the noise
    S = A @ C_u @ A.T + Gam + B @ Qm @ B.T
    K = C_u @ A.T @ np.linalg.inv(S)
    np.testing.assert_allclose(Ua.mean(0), m_u + K @ (y - A @ m_u), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.cov(np.asarray(Ua).T), C_u - K @ A @ C_u, atol=1e-12)
    # ... which is also what ETKI on u alone gives with noise Γ + B Q Bᵀ
    U = prob.split(Z)[0]
    Ub = etki_update(U, U @ A.T, y, enkit.Dense(Gam + B @ Qm @ B.T), 1.0)
    np.testing.assert_allclose(Ub.mean(0), Ua.mean(0), atol=1e-12)
    np.testing.assert_allclose(np.cov(np.asarray(Ub).T), np.cov(np.asarray(Ua).T), atol=1e-12)
    # the errors' posterior: the Kalman update of q, Q Bᵀ S⁻¹ the gain
    Kq = Qm @ B.T @ np.linalg.inv(S)
    np.testing.assert_allclose(qa.mean(0), Kq @ (y - A @ m_u), atol=1e-12)


def test_draws_split_prior_and_a_compiled_calibration():
    U0 = rng.normal(size=(400, p))
    prob = augment_model_error(_linear, U0, enkit.Dense(Qm), key=jax.random.key(5))
    assert isinstance(prob, ModelErrorProblem) and prob.n_params == p
    U, q = prob.split(prob.ensemble)
    np.testing.assert_array_equal(U, U0)
    np.testing.assert_allclose(np.cov(np.asarray(q).T), Qm, atol=0.15)  # 400 draws
    np.testing.assert_array_equal(  # the key fixes the draws; an integer is a seed
        augment_model_error(_linear, U0, Qm, key=5).ensemble,
        augment_model_error(_linear, U0, Qm, key=5).ensemble)
    assert prob.split(prob.ensemble.mean(0))[1].shape == (r,)
    # the prior of z for processes that take one
    prior = prob.prior(enkit.GaussianPrior(m_u, C_u))
    np.testing.assert_allclose(prior.mean, np.concatenate([m_u, np.zeros(r)]))
    Cz = np.zeros((p + r, p + r))
    Cz[:p, :p], Cz[p:, p:] = C_u, Qm
    np.testing.assert_allclose(prior.covariance.dense(), Cz, atol=1e-15)
    # any process runs on it: ETKI in one compiled loop reaches the Kalman posterior of u
    ex = _exact_problem()
    res = enkit.calibrate_scan(ex.forward, enkit.ETKI(), ex.ensemble, y, Gam, key=0,
                               n_iterations=1)
    S = A @ C_u @ A.T + Gam + B @ Qm @ B.T
    np.testing.assert_allclose(ex.split(res.mean)[0],
                               m_u + C_u @ A.T @ np.linalg.solve(S, y - A @ m_u), atol=1e-12)


def _decay(u, q, t=jnp.linspace(0.1, 2.0, 12)):
    """x' = −u₀ x + q₀ sin(t) + q₁ (a forcing error), x(0) = u₁; RK4, 40 steps."""

    def f(x, s):
        return -u[0] * x + q[0] * jnp.sin(s) + q[1]

    def step(carry, _):
        x, s = carry
        h = 2.0 / 40
        k1 = f(x, s)
        k2 = f(x + 0.5 * h * k1, s + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, s + 0.5 * h)
        k4 = f(x + h * k3, s + h)
        return (x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), s + h), x

    _, xs = jax.lax.scan(step, (u[1], 0.0), None, length=41)
    return jnp.interp(t, jnp.linspace(0.0, 2.0, 41), xs)


def test_a_forcing_error_is_estimated_and_corrects_the_parameters():
    """Data from a model with a forcing error: EKI that ignores it lands far
    from u† with a large misfit; the augmented EKI fits the data and lands
    near u†, with the forcing error estimated."""
    u_true, q_true = jnp.array([1.2, 2.0]), jnp.array([0.8, -0.5])
    sigma = 0.01
    y_nl = _decay(u_true, q_true) + sigma * jax.random.normal(jax.random.key(3), (12,))
    U0 = jnp.array([1.0, 1.5]) + 0.4 * jax.random.normal(jax.random.key(4), (100, 2))
    kw = dict(key=1, n_iterations=12)
    plain = enkit.calibrate_scan(lambda u: _decay(u, jnp.zeros(2)), enkit.EKI(), U0, y_nl,
                                 sigma ** 2, **kw)
    prob = augment_model_error(_decay, U0, 1.0, key=2, n_errors=2)
    aug = enkit.calibrate_scan(prob.forward, enkit.EKI(), prob.ensemble, y_nl, sigma ** 2, **kw)
    u_aug, q_aug = prob.split(aug.mean)
    assert float(aug.misfits[-1]) < 3 * np.sqrt(12) < float(plain.misfits[-1])
    assert float(jnp.abs(u_aug - u_true).max()) < 0.1
    assert float(jnp.abs(plain.mean - u_true).max()) > 2 * float(jnp.abs(u_aug - u_true).max())
    assert float(jnp.abs(q_aug - q_true).max()) < 0.2


def test_bad_inputs():
    U0 = rng.normal(size=(5, p))
    with pytest.raises(ValueError, match="n_errors"):
        augment_model_error(_linear, U0, 0.5, key=0)
    with pytest.raises(ValueError, match="n_errors"):
        augment_model_error(_linear, U0, Qm, key=0, n_errors=3)
    with pytest.raises(ValueError, match="n_errors"):
        augment_model_error(_linear, U0, enkit.Dense(Qm), key=0, n_errors=3)
    with pytest.raises(ValueError, match="n_errors"):
        augment_model_error(_linear, U0, 0.5, key=0, n_errors=0)
    with pytest.raises(ValueError, match="Q must be"):
        augment_model_error(_linear, U0, np.ones((2, 3)), key=0)
    with pytest.raises(TypeError, match="forward"):
        augment_model_error("G", U0, Qm, key=0)
    with pytest.raises(TypeError, match="key"):
        augment_model_error(_linear, U0, Qm, key=None)
    with pytest.raises(ValueError, match="ensemble"):
        augment_model_error(_linear, np.ones(3), Qm, key=0)
    prob = augment_model_error(_linear, U0, Qm, key=0)
    with pytest.raises(ValueError, match="p \\+ r"):
        prob.split(np.ones((5, p)))
    with pytest.raises(ValueError, match="dimension p"):
        prob.prior(enkit.GaussianPrior(np.zeros(2), 1.0))
    with pytest.raises(TypeError, match="GaussianPrior"):
        prob.prior(C_u)
