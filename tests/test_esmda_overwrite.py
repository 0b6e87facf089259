"""The in-place ensemble update of EKI and ES-MDA (``overwrite=True``).

Checks: ``enkit.ensemble.add_transform`` in column blocks equals ``E + T E``
for every block/remainder split, also with a donated buffer; ESMDA and EKI
with ``overwrite=True`` give the ensembles of the default update (eager
calls that donate the told ensemble, and a jitted step that donates the
state), at a p past one block so the blocked loop runs; the localised EKI
path with ``overwrite``; the option's type check.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
import enkit.ensemble as ens
from enkit.inversion import EKI, ESMDA, esmda_constant_alpha

# p past two blocks plus a remainder: the blocked loop and its tail both run.
P = 2 * ens.TRANSFORM_BLOCK + 37
N, D = 6, 5


@pytest.mark.parametrize("n", [5, 7, 21, 30])
def test_add_transform_blocked_equals_the_plain_sum(monkeypatch, n):
    monkeypatch.setattr(ens, "TRANSFORM_BLOCK", 7)
    rng = np.random.default_rng(n)
    T, E = rng.normal(size=(4, 4)), rng.normal(size=(4, n))
    ref = E + T @ E
    plain = ens.add_transform(T, E)
    blocked = ens.add_transform(T, E, blocked=True)
    np.testing.assert_allclose(plain, ref, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(blocked, ref, rtol=1e-14, atol=1e-14)
    # With the buffer donated (traced here, while the block is 7).
    donating = jax.jit(lambda T, E: ens.add_transform(T, E, blocked=True), donate_argnums=1)
    Ej = jnp.array(E)
    out = donating(jnp.asarray(T), Ej)
    np.testing.assert_allclose(out, ref, rtol=1e-14, atol=1e-14)
    assert Ej.is_deleted()


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    A = jnp.asarray(rng.normal(size=(D, P)) / np.sqrt(P))
    U0 = jnp.asarray(rng.normal(size=(N, P)))
    y = jnp.asarray(rng.normal(size=D))
    noise = enkit.Diagonal(jnp.asarray(0.1 + rng.uniform(size=D)))
    return A, U0, y, noise


def run_eager(proc, U0, problem, steps, dt=None):
    A, _, y, noise = problem
    state = proc.init(1, U0)
    told = []
    for _ in range(steps):
        told.append(state)
        kw = {} if dt is None else {"dt": dt}
        state, _ = proc.tell(state, proc.ask(state) @ A.T, y, noise, **kw)
    return state, told


def test_esmda_overwrite_equals_the_default_update(problem):
    _, U0, _, _ = problem
    alpha = esmda_constant_alpha(3)
    ref, told = run_eager(ESMDA(alpha), U0, problem, 3)
    assert not any(s.ensemble.is_deleted() for s in told)
    out, told = run_eager(ESMDA(alpha, overwrite=True), U0, problem, 3)
    np.testing.assert_allclose(out.ensemble, ref.ensemble, rtol=1e-13, atol=1e-13)
    assert int(out.iteration) == 3 and float(out.time) == pytest.approx(1.0)
    # Each told ensemble was donated: its buffer now holds the next one. The
    # array given to init is not (init stores a copy).
    assert all(s.ensemble.is_deleted() for s in told)
    assert not out.ensemble.is_deleted() and not U0.is_deleted()


def test_esmda_overwrite_in_a_jitted_step_that_donates_the_state(problem):
    A, U0, y, noise = problem
    alpha = esmda_constant_alpha(2)
    ref, _ = run_eager(ESMDA(alpha), U0, problem, 2)
    proc = ESMDA(alpha, overwrite=True)
    step = jax.jit(lambda s: proc.tell(s, proc.ask(s) @ A.T, y, noise), donate_argnums=0)
    state = proc.init(1, U0)
    first = state.ensemble
    for _ in range(2):
        state, _ = step(state)
    assert first.is_deleted() and not U0.is_deleted()
    np.testing.assert_allclose(state.ensemble, ref.ensemble, rtol=1e-12, atol=1e-12)
    # Without a donation at the outer jit the update is still the same (XLA
    # copies the ensemble first) and the told state stays valid.
    plain = jax.jit(lambda s: proc.tell(s, proc.ask(s) @ A.T, y, noise))
    state = proc.init(1, U0)
    for _ in range(2):
        told = state
        state, _ = plain(state)
    assert not told.ensemble.is_deleted() and not U0.is_deleted()
    np.testing.assert_allclose(state.ensemble, ref.ensemble, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("localizer", [None, enkit.Delta()])
def test_eki_overwrite_equals_the_default_update(problem, localizer):
    _, U0, _, _ = problem
    ref, _ = run_eager(EKI(localizer=localizer), U0, problem, 2, dt=0.5)
    out, told = run_eager(EKI(localizer=localizer, overwrite=True), U0, problem, 2, dt=0.5)
    np.testing.assert_allclose(out.ensemble, ref.ensemble, rtol=1e-12, atol=1e-12)
    assert all(s.ensemble.is_deleted() for s in told)


def test_overwrite_must_be_a_bool():
    with pytest.raises(TypeError, match="overwrite must be a bool"):
        ESMDA(esmda_constant_alpha(2), overwrite=1)
    with pytest.raises(TypeError, match="overwrite must be a bool"):
        EKI(overwrite="yes")


def test_calibrate_with_overwrite_keeps_every_ensemble():
    # calibrate records every iteration's ensemble: with overwrite=True those
    # records stay valid and equal the default run's.
    rng = np.random.default_rng(4)
    A = jnp.asarray(rng.normal(size=(3, 4)))
    U0, y = rng.normal(size=(10, 4)), np.ones(3)
    runs = [enkit.calibrate(lambda u: A @ u, ESMDA(esmda_constant_alpha(2), overwrite=ow), U0,
                            y, enkit.Diagonal(np.ones(3)), key=0) for ow in (False, True)]
    assert runs[1].ensembles.shape == (3, 10, 4)
    np.testing.assert_allclose(runs[1].ensembles, runs[0].ensembles, rtol=1e-13, atol=1e-13)
