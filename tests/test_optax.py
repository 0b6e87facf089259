"""enkit.optax: ensemble Kalman processes as optax gradient transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

optax = pytest.importorskip("optax")

import enkit  # noqa: E402
import enkit.optax as eo  # noqa: E402

G = jnp.array([[1.0, 0.5, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0], [0.5, 0.0, 3.0]])
THETA = jnp.array([0.3, -0.7, 1.1])
Y = G @ THETA
NOISE = 1e-4 * jnp.ones(4)
LSQ = jnp.linalg.lstsq(G, Y)[0]


def forward(params):
    return G @ jnp.concatenate([params["a"], params["b"]])


def _params(a=(0.0, 0.0), b=(0.0,)):
    return {"a": jnp.asarray(a, float), "b": jnp.asarray(b, float)}


def _plain_loop(process, E0, key, n, dt=None):
    state = process.init(key, E0)
    for _ in range(n):
        U = process.ask(state)
        Gu = jax.vmap(lambda u: G @ u)(U)
        kw = {} if dt is None else {"dt": dt}
        state, _ = process.tell(state, Gu, Y, NOISE, **kw)
    return state


def _optax_loop(tx, params, n, chain=None):
    tx = tx if chain is None else optax.chain(tx, *chain)
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(None, s, p))
    for _ in range(n):
        upd, state = step(params, state)
        params = optax.apply_updates(params, upd)
    return params, state


@pytest.mark.parametrize("process", [enkit.EKI(), enkit.EKI(stochastic=False), enkit.ETKI()])
def test_bare_transformation_is_the_processes_own_loop(process):
    key = jax.random.key(3)
    tx = eo.ensemble_kalman(process, forward, Y, NOISE, key=key, members=12, initial_std=0.5)
    params, state = _optax_loop(tx, _params(), 6)
    # the same initial ensemble, built as the transformation builds it
    z = jax.random.normal(jax.random.fold_in(key, 0), (12, 3))
    E0 = 0.5 * (z - z.mean(0))
    plain = _plain_loop(process, E0, jax.random.fold_in(key, 1), 6)
    flat = jnp.concatenate([params["a"], params["b"]])
    np.testing.assert_allclose(flat, plain.ensemble.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state.process_state.ensemble, plain.ensemble, atol=1e-10)
    assert int(state.count) == 6 and np.isfinite(float(state.misfit))


def test_eki_converges_to_the_least_squares_solution():
    tx = eo.ensemble_kalman(enkit.EKI(stochastic=False), forward, Y, NOISE, key=0, members=10)
    params, state = _optax_loop(tx, _params(), 30)
    np.testing.assert_allclose(jnp.concatenate([params["a"], params["b"]]), LSQ, atol=1e-4)


def test_uki_matches_its_own_loop():
    prior = enkit.GaussianPrior(jnp.zeros(3), jnp.eye(3))
    uki = enkit.UKI(prior)
    tx = eo.ensemble_kalman(uki, forward, Y, NOISE, initial_std=1.0)
    params, state = _optax_loop(tx, _params(), 5)
    s = uki.init()
    for _ in range(5):
        s, _ = uki.tell(s, jax.vmap(lambda u: G @ u)(uki.ask(s)), Y, NOISE)
    np.testing.assert_allclose(jnp.concatenate([params["a"], params["b"]]), s.mean,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state.process_state.covariance, s.covariance, atol=1e-12)


def test_eks_with_a_scheduler_matches_its_own_loop():
    prior = enkit.GaussianPrior(jnp.zeros(3), jnp.eye(3))
    eks = enkit.EKS(prior)
    sched = enkit.EKSStableScheduler()
    key = jax.random.key(5)
    tx = eo.ensemble_kalman(eks, forward, Y, NOISE, key=key, members=16, dt=sched)
    params, state = _optax_loop(tx, _params(), 4)
    z = jax.random.normal(jax.random.fold_in(key, 0), (16, 3))
    s = eks.init(jax.random.fold_in(key, 1), z - z.mean(0))
    for _ in range(4):
        Gu = jax.vmap(lambda u: G @ u)(eks.ask(s))
        s, _ = eks.tell(s, Gu, Y, NOISE, dt=sched.step_size(s.time, Gu, Y, NOISE))
    np.testing.assert_allclose(state.process_state.ensemble, s.ensemble, atol=1e-9)


def test_a_schedule_in_a_chain_scales_the_steps_and_the_ensemble_follows():
    tx = eo.ensemble_kalman(enkit.EKI(stochastic=False), forward, Y, NOISE, key=1, members=10)
    state = tx.init(_params())
    upd, _ = tx.update(None, state, _params())
    half = optax.chain(tx, optax.scale(0.5))
    hstate = half.init(_params())
    hupd, hstate = half.update(None, hstate, _params())
    for k in ("a", "b"):
        np.testing.assert_allclose(hupd[k], 0.5 * upd[k], rtol=1e-12)
    # the next update re-centres the ensemble on the params it is given
    params = optax.apply_updates(_params(), hupd)
    members = eo.ask_members(enkit.EKI(stochastic=False), hstate[0], params)
    np.testing.assert_allclose(members["a"].mean(0), params["a"], atol=1e-12)


def test_outputs_supplied_from_outside_equal_the_forward_map():
    process = enkit.EKI()
    tx = eo.ensemble_kalman(process, None, Y, NOISE, key=2, members=8)
    ref = eo.ensemble_kalman(process, forward, Y, NOISE, key=2, members=8)
    p = _params((0.1, 0.2), (0.3,))
    s, r = tx.init(p), ref.init(p)
    m = eo.ask_members(process, s, p)
    outs = np.stack([np.asarray(forward({"a": m["a"][i], "b": m["b"][i]})) for i in range(8)])
    u1, _ = tx.update(None, s, p, outputs=outs)
    u2, _ = ref.update(None, r, p)
    for k in ("a", "b"):
        np.testing.assert_allclose(u1[k], u2[k], rtol=1e-12)
    with pytest.raises(ValueError, match="outputs must have shape"):
        tx.update(None, s, p, outputs=outs[:3])
    with pytest.raises(ValueError, match="outputs="):
        tx.update(None, s, p)


def test_multi_transform_trains_weights_by_sgd_and_physics_by_eki_in_one_loop():
    """A 'network' weight w fitted to data by Adam on a loss gradient, and the
    physics parameters θ by EKI on a forward map that uses the current w."""
    x = jnp.linspace(-1, 1, 20)
    target_w = 1.7
    labels = {"net": "sgd", "phys": "eki"}

    def forward_phys(q, w):
        # under multi_transform the transformation sees the whole tree, the
        # other labels' leaves replaced by optax.MaskedNode()
        return G @ q["phys"]["theta"] + 0.0 * w

    params = {"net": jnp.zeros(()), "phys": {"theta": jnp.zeros(3)}}
    eki = eo.ensemble_kalman(enkit.EKI(stochastic=False), None, Y, NOISE, key=0, members=10)
    tx = optax.multi_transform({"sgd": optax.adam(0.1), "eki": eki}, labels)
    state = tx.init(params)

    def loss(p):
        return jnp.mean((p["net"] * x - target_w * x) ** 2)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        w = p["net"]
        upd, s = tx.update(g, s, p, forward=lambda q: forward_phys(q, w))
        return optax.apply_updates(p, upd), s

    for _ in range(300):
        params, state = step(params, state)
    np.testing.assert_allclose(params["net"], target_w, atol=1e-3)
    np.testing.assert_allclose(params["phys"]["theta"], LSQ, atol=1e-4)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="init, ask and tell"):
        eo.ensemble_kalman(object(), forward, Y, NOISE, key=0)
    with pytest.raises(ValueError, match="key="):
        eo.ensemble_kalman(enkit.EKI(), forward, Y, NOISE)
    with pytest.raises(ValueError, match="members"):
        eo.ensemble_kalman(enkit.EKI(), forward, Y, NOISE, key=0, members=1)
    tx = eo.ensemble_kalman(enkit.EKI(), forward, Y, NOISE, key=0)
    with pytest.raises(TypeError, match="float"):
        tx.init({"a": jnp.zeros(2, jnp.int32)})
