"""Forward-model failures: evaluation of black boxes, the raise / ignore /
resample policies, and the ensemble-collapse diagnostic.

The convergence test uses deterministic EKI with geometrically growing steps
on G(u) = A u (N > p), whose limit is the least-squares solution u_LS
(exact answer); with 20% of the members failing at random the refilled
ensemble stays in the same span and must reach the same u_LS.
"""

import concurrent.futures
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enkit._pytree import register_dataclass
from enkit.inversion import (
    EKI,
    GNKI,
    UKI,
    ForwardFailure,
    GaussianPrior,
    Ignore,
    Raise,
    Resample,
    calibrate,
    calibrate_scan,
    ensemble_collapsed,
    evaluate,
)
from enkit.inversion.failures import as_policy, gaussian_draws

P, D, N = 3, 5, 30
RNG = np.random.default_rng(1)
A = RNG.normal(size=(D, P))
GAMMA = 0.05 * np.eye(D)
Y = A @ np.array([0.5, -1.0, 1.5]) + np.sqrt(0.05) * RNG.normal(size=D)
U0 = RNG.normal(size=(N, P))
U_LS = np.linalg.lstsq(A, Y, rcond=None)[0]  # Γ ∝ I: the whitened LS solution


@dataclasses.dataclass(frozen=True)
class Growing:
    """Δt = 3 max(t, 1): the time grows fourfold per step (test scheduler)."""

    def step_size(self, time, G, y, noise):
        return 3.0 * jnp.maximum(jnp.asarray(time, G.dtype), 1.0)


register_dataclass(Growing, data_fields=[], meta_fields=[])


def hashed_failure(u, rate=0.2):
    """A pseudo-random, value-determined 20% failure: any bit change of u
    gives an independent verdict (a 64-bit mixing hash)."""
    bits = jax.lax.bitcast_convert_type(u, jnp.uint64)
    h = jnp.uint64(0x9E3779B97F4A7C15)
    for j in range(u.shape[0]):
        h = (h ^ bits[j]) * jnp.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> jnp.uint64(31))
        h = h * jnp.uint64(0x94D049BB133111EB)
        h = h ^ (h >> jnp.uint64(29))
    return (h >> jnp.uint64(11)).astype(jnp.float64) / 2.0**53 < rate


def G_ok(u):
    return jnp.asarray(A) @ u


def G_flaky(u):
    return jnp.where(hashed_failure(u), jnp.nan, jnp.asarray(A) @ u)


def test_evaluate_turns_exceptions_bad_shapes_and_nan_into_failures():
    def f(u):
        if u[0] > 1.0:
            raise RuntimeError("solver diverged")
        if u[1] > 1.5:
            return np.zeros(D + 1)
        return A @ u if u[2] < 1.5 else np.full(D, np.inf)

    U = RNG.normal(size=(40, P))
    want_exc = U[:, 0] > 1.0
    want_shape = ~want_exc & (U[:, 1] > 1.5)
    want_inf = ~want_exc & ~want_shape & (U[:, 2] >= 1.5)
    assert want_exc.any() and want_shape.any() and want_inf.any()
    G, failed, errors = evaluate(f, U, output_dim=D)
    np.testing.assert_array_equal(failed, want_exc | want_shape | want_inf)
    assert sorted(errors) == np.flatnonzero(want_exc | want_shape).tolist()
    assert all("solver diverged" in errors[i] for i in np.flatnonzero(want_exc))
    assert all("shape (6,)" in errors[i] for i in np.flatnonzero(want_shape))
    assert np.all(np.isnan(G[want_exc | want_shape]))
    np.testing.assert_allclose(G[~failed], U[~failed] @ A.T)
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        G2, failed2, errors2 = evaluate(f, U, ex, output_dim=D)
    np.testing.assert_array_equal(G2, G)
    np.testing.assert_array_equal(failed2, failed)
    assert errors2 == errors


def test_raise_names_the_failed_members_and_the_iteration():
    bad = np.flatnonzero(np.asarray(jax.vmap(hashed_failure)(jnp.asarray(U0))))
    assert 0 < bad.size < N
    with pytest.raises(ForwardFailure, match=re.escape(f"members {bad.tolist()}") + ".*iteration 0") as e:
        calibrate(G_flaky, EKI(), U0, Y, GAMMA, key=0)
    assert e.value.members == bad.tolist() and e.value.iteration == 0
    with pytest.raises(ForwardFailure, match=re.escape(f"members {bad.tolist()}")):
        calibrate_scan(G_flaky, EKI(), U0, Y, GAMMA, key=0, n_iterations=2)

    def boom(u):  # black box: members with u[0] > 1 raise
        if u[0] > 1.0:
            raise RuntimeError(f"no convergence at {u[0]:.2f}")
        return A @ u

    bad = np.flatnonzero(U0[:, 0] > 1.0)
    with pytest.raises(ForwardFailure, match=re.escape(f"members {bad.tolist()}") + ".*no convergence"):
        calibrate(boom, EKI(), U0, Y, GAMMA, key=0, black_box=True)
    # The finiteness check of a direct tell is unchanged (the default).
    s = EKI().init(0, U0)
    G = np.asarray(U0 @ A.T)
    G[[2, 5]] = np.nan
    with pytest.raises(ValueError, match=r"rows \[2, 5\]"):
        EKI().tell(s, G, Y, GAMMA)


def test_ignore_with_20_percent_nan_converges_to_the_same_solution():
    proc = EKI(stochastic=False)
    clean = calibrate(G_ok, proc, U0, Y, GAMMA, scheduler=Growing(), max_iterations=18)
    flaky = calibrate(G_flaky, proc, U0, Y, GAMMA, key=4, scheduler=Growing(),
                      max_iterations=18, failure="ignore")
    assert 0.12 < np.mean(flaky.failure_fractions) < 0.28  # about 20% failed
    assert flaky.failed.sum() > 50
    err_clean = np.linalg.norm(clean.mean - U_LS) / np.linalg.norm(U_LS)
    err_flaky = np.linalg.norm(flaky.mean - U_LS) / np.linalg.norm(U_LS)
    assert err_clean < 1e-5 and err_flaky < 1e-5, (err_clean, err_flaky)
    # the prior mean is far from u_LS: the test can fail
    assert np.linalg.norm(U0.mean(0) - U_LS) / np.linalg.norm(U_LS) > 0.3
    # records: failed rows are NaN, the misfit is that of the successful rows
    k = int(np.argmax(flaky.failed.sum(1)))
    out = np.asarray(flaky.outputs(k))
    assert np.all(np.isnan(out[flaky.failed[k]])) and np.all(np.isfinite(out[~flaky.failed[k]]))
    r = (Y - out[~flaky.failed[k]].mean(0)) / np.sqrt(0.05)
    np.testing.assert_allclose(flaky.misfit(k), np.linalg.norm(r), rtol=1e-10)


def test_ignore_refills_from_the_updated_successful_members():
    bad = np.asarray(jax.vmap(hashed_failure)(jnp.asarray(U0)))
    key = jax.random.key(9)
    res = calibrate(G_flaky, EKI(stochastic=False), U0, Y, GAMMA, key=key, max_iterations=1,
                    failure="ignore")
    # successful members: the EKI update of the sub-ensemble, by hand
    proc = EKI(stochastic=False)
    s = proc.init(None, U0[~bad])
    s, _ = proc.tell(s, U0[~bad] @ A.T, Y, GAMMA, dt=1.0)
    U1 = np.asarray(res.parameters(1))
    np.testing.assert_allclose(U1[~bad], s.ensemble, rtol=1e-12)
    # failed members: draws ū + zᵀX with the documented key
    k_fail = jax.random.split(key)[1]
    draws = gaussian_draws(jax.random.fold_in(jax.random.fold_in(k_fail, 0), 0), U1, ~bad)
    np.testing.assert_allclose(U1[bad], np.asarray(draws)[bad], rtol=1e-12)
    # GNKI: the anchors (prior draws) of every member are kept
    g = calibrate(G_flaky, GNKI(GaussianPrior(np.zeros(P), np.eye(P))), U0, Y, GAMMA, key=1,
                  max_iterations=2, failure=Ignore(min_fraction=0.5))
    np.testing.assert_allclose(g.state.anchors, U0)


def test_ignore_needs_enough_successes_an_ensemble_and_a_key():
    def mostly_bad(u):
        return jnp.where(u[0] > -0.5, jnp.nan, jnp.asarray(A) @ u)

    with pytest.raises(ForwardFailure, match="needs at least 15 successes"):
        calibrate(mostly_bad, EKI(), U0, Y, GAMMA, key=0, failure="ignore")
    prior = GaussianPrior(np.zeros(P), np.eye(P))
    # UKI honours 'raise': the sigma points with u[0] > 0.5 are named
    chi = np.asarray(UKI(prior).ask(UKI(prior).init()))
    with pytest.raises(ForwardFailure, match=re.escape(
            f"members {np.flatnonzero(chi[:, 0] > 0.5).tolist()}")):
        calibrate(lambda u: jnp.where(u[0] > 0.5, jnp.inf, jnp.asarray(A) @ u), UKI(prior),
                  None, Y, GAMMA)
    with pytest.raises(ValueError, match="needs an ensemble process"):
        calibrate(G_ok, UKI(prior), None, Y, GAMMA, key=0, failure="resample")
    with pytest.raises(TypeError, match="needs key"):
        calibrate(G_ok, EKI(stochastic=False), U0, Y, GAMMA, failure="ignore")


def test_resample_redraws_and_reevaluates_failed_members():
    bad0 = np.asarray(jax.vmap(hashed_failure)(jnp.asarray(U0)))
    for policy in (Resample(max_retries=6), Resample(max_retries=6, source="initial")):
        res = calibrate(G_flaky, EKI(), U0, Y, GAMMA, key=2, max_iterations=5, failure=policy)
        np.testing.assert_array_equal(res.failed[0], bad0)
        assert res.failure_fractions[0] == pytest.approx(bad0.mean())
        assert np.all(np.isfinite(np.asarray(res.forward_outputs)))
        U = np.asarray(res.parameters(0))
        np.testing.assert_allclose(U[~bad0], U0[~bad0])  # the others are untouched
        assert np.all(np.abs(U[bad0] - U0[bad0]).max(1) > 1e-3)  # redrawn
        for k in range(res.n_iterations + 1):  # outputs belong to the recorded ensembles
            np.testing.assert_allclose(res.outputs(k), res.parameters(k) @ A.T, rtol=1e-12)


def test_resample_gives_up_after_max_retries_and_black_box_exceptions_are_failures():
    first = set(map(tuple, U0[5:]))

    def only_original(u):  # members 0-4 fail, and so does every redraw
        if tuple(u) not in first:
            raise RuntimeError("mesh generation failed")
        return A @ u

    with pytest.raises(ForwardFailure, match=r"after 2 redraws.*members \[0, 1, 2, 3, 4\]"
                       r".*mesh generation failed") as e:
        calibrate(only_original, EKI(), U0, Y, GAMMA, key=0, failure=Resample(max_retries=2),
                  black_box=True)
    assert e.value.members == [0, 1, 2, 3, 4]

    def flaky_bb(u):
        if bool(hashed_failure(jnp.asarray(u))):
            raise RuntimeError("licence server busy")
        return A @ u

    serial = calibrate(flaky_bb, EKI(), U0, Y, GAMMA, key=3, max_iterations=3, failure="ignore",
                       black_box=True)
    assert serial.stopped_by == "max_iterations" and serial.failed.sum() > 0
    k = int(np.argmax(serial.failed.sum(1)))
    assert sorted(serial.errors[k]) == np.flatnonzero(serial.failed[k]).tolist()
    assert all("licence server busy" in m for m in serial.errors[k].values())
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        pooled = calibrate(flaky_bb, EKI(), U0, Y, GAMMA, key=3, max_iterations=3,
                           failure="ignore", executor=ex)
    np.testing.assert_allclose(pooled.ensembles, serial.ensembles, rtol=1e-12)
    assert "black_box=True" in repr(pooled)


def test_gaussian_draws_and_ensemble_collapse():
    E = RNG.normal(size=(4, 6))  # rank-deficient: 3 anomaly directions in R^6
    full = np.concatenate([E, 100.0 + RNG.normal(size=(2, 6))])  # 2 rows left out
    mask = np.array([True] * 4 + [False] * 2)
    keys = jax.random.split(jax.random.key(0), 4000)
    Z = np.asarray(jax.vmap(lambda k: gaussian_draws(k, full, mask))(keys)).reshape(-1, 6)
    X = E - E.mean(0)
    resid = (Z - E.mean(0)) - (Z - E.mean(0)) @ np.linalg.pinv(X) @ X
    assert np.abs(resid).max() < 1e-10  # in the affine span of E
    C = np.cov(E.T)
    assert np.abs(np.cov(Z.T) - C).max() < 6 * np.sqrt(2 * np.max(np.diag(C)) ** 2 / Z.shape[0])
    assert np.abs(Z.mean(0) - E.mean(0)).max() < 6 * np.sqrt(np.max(np.diag(C)) / Z.shape[0])
    E0 = RNG.normal(size=(10, 3))
    E1 = E0.mean(0) + 0.01 * (E0 - E0.mean(0))
    assert bool(ensemble_collapsed(E1, E0, tol=0.02))
    assert not bool(ensemble_collapsed(E1, E0, tol=0.005))
    with pytest.raises(ValueError, match="share p"):
        ensemble_collapsed(E1[:, :2], E0)


def test_policy_objects_validate_their_options():
    assert as_policy("raise") == Raise() and as_policy("ignore") == Ignore()
    assert as_policy("resample") == Resample()
    assert Ignore(min_fraction=0.5).min_successes(30) == 15
    assert Ignore(min_fraction=0.01).min_successes(30) == 2
    with pytest.raises(ValueError, match="min_fraction"):
        Ignore(min_fraction=1.5)
    with pytest.raises(ValueError, match="max_retries"):
        Resample(max_retries=0)
    with pytest.raises(ValueError, match="source"):
        Resample(source="prior")
    with pytest.raises(ValueError, match="failure must be"):
        as_policy(None)
