"""ObservationSeries: every sample once per epoch, batches concatenate y and
block the noise, the order is a function of the key and the epoch, index
batches of one long vector take the marginal noise blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import enkit
from enkit.inversion import EKI, ObservationSeries, block_noise, restrict_noise


def samples(K=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(K):
        d = 2 + k % 2
        B = rng.normal(size=(d, d))
        out.append((rng.normal(size=d) + 10 * k, B @ B.T + np.eye(d)))
    return out


def sample_id(y):
    return round(float(np.asarray(y)[0]) / 10)  # y_k ≈ 10 k


def test_every_sample_once_per_epoch():
    series = ObservationSeries(samples(6), batch_size=2, key=0)
    assert series.n_samples == 6 and series.n_batches == 3
    orders = []
    for epoch in range(4):
        seen = []
        for j in range(3):
            idx = series.batch_indices(epoch * 3 + j)
            y, _ = series.at(epoch * 3 + j)
            seen.extend(idx.tolist())
            # the batch's y is its samples' y in batch order
            np.testing.assert_array_equal(
                y, np.concatenate([samples(6)[k][0] for k in idx]))
        assert sorted(seen) == list(range(6))
        orders.append(seen)
    assert len({tuple(o) for o in orders}) > 1  # shuffled anew each epoch


def test_batch_concatenates_y_and_blocks_noise():
    S = samples(4)
    series = ObservationSeries(S, batch_size=2, shuffle=False)
    y, noise = series.at(1)  # samples 2 and 3, in order
    np.testing.assert_array_equal(y, np.concatenate([S[2][0], S[3][0]]))
    want = scipy.linalg.block_diag(S[2][1], S[3][1])
    np.testing.assert_allclose(noise.dense(), want, rtol=1e-14)
    v = np.arange(1.0, y.shape[0] + 1)
    np.testing.assert_allclose(noise.solve(v), np.linalg.solve(want, v), rtol=1e-12)
    assert noise.dim == y.shape[0]
    # scalar and diagonal blocks stay diagonal (never densified)
    d = block_noise([enkit.Scalar(2.0, 2), enkit.Diagonal(jnp.array([1.0, 3.0, 4.0]))])
    assert isinstance(d, enkit.Diagonal)
    np.testing.assert_array_equal(d.diagonal(), [2.0, 2.0, 1.0, 3.0, 4.0])
    # the batch data work in a process's tell
    U0 = np.random.default_rng(0).normal(size=(5, 2))
    A = np.ones((y.shape[0], 2))
    _, info = EKI(stochastic=False).tell(EKI(stochastic=False).init(None, U0), U0 @ A.T,
                                          y, noise, dt=1.0)
    assert np.isfinite(float(info.misfit))


def test_same_key_same_order_and_unshuffled_cycle():
    a = ObservationSeries(samples(6), batch_size=3, key=jax.random.key(5))
    b = ObservationSeries(samples(6), batch_size=3, key=jax.random.key(5))
    c = ObservationSeries(samples(6), batch_size=3, key=jax.random.key(6))
    seq = lambda s: [s.batch_indices(n).tolist() for n in range(8)]
    assert seq(a) == seq(b)
    assert seq(a) != seq(c)
    np.testing.assert_array_equal(a.epoch_order(2),
                                  jax.random.permutation(jax.random.fold_in(jax.random.key(5),
                                                                            2), 6))
    plain = ObservationSeries(samples(6), batch_size=3, shuffle=False)
    assert seq(plain) == [[0, 1, 2], [3, 4, 5]] * 4
    assert [sample_id(plain.at(n)[0]) for n in range(4)] == [0, 3, 0, 3]


def test_index_batches_of_one_long_vector():
    rng = np.random.default_rng(1)
    d = 7
    B = rng.normal(size=(d, d))
    Gam = B @ B.T + np.eye(d)
    y = rng.normal(size=d)
    batches = [[0, 3], [6, 1, 2], [4, 5]]
    series = ObservationSeries.from_vector(y, Gam, batches, shuffle=False)
    for n, idx in enumerate(batches):
        yb, nb = series.at(n)
        np.testing.assert_array_equal(yb, y[idx])
        np.testing.assert_allclose(nb.dense(), Gam[np.ix_(idx, idx)], rtol=1e-14)
    assert isinstance(restrict_noise(enkit.Diagonal(jnp.arange(1.0, 8.0)), [6, 0]),
                      enkit.Diagonal)
    r = restrict_noise(enkit.Scalar(2.0, 7), [1, 2, 3])
    assert isinstance(r, enkit.Scalar) and r.dim == 3
    # two index batches per iteration: blocks of the marginal noises
    s2 = ObservationSeries.from_vector(y, Gam, [[0, 1], [2, 3]], batch_size=2, shuffle=False)
    yb, nb = s2.at(0)
    np.testing.assert_array_equal(yb, y[:4])
    want = scipy.linalg.block_diag(Gam[:2, :2], Gam[2:4, 2:4])
    np.testing.assert_allclose(nb.dense(), want, rtol=1e-14)


def test_validation():
    with pytest.raises(ValueError, match="batch_size must be an integer in \\[1, 6\\] dividing"):
        ObservationSeries(samples(6), batch_size=4, key=0)
    with pytest.raises(TypeError, match="needs key"):
        ObservationSeries(samples(6))
    with pytest.raises(ValueError, match="at least one"):
        ObservationSeries([], shuffle=False)
    with pytest.raises(ValueError, match="samples\\[1\\] noise"):
        ObservationSeries([(np.zeros(2), 1.0), (np.zeros(3), np.eye(2))], shuffle=False)
    with pytest.raises(ValueError, match="batches\\[0\\] must hold indices in \\[0, 3\\)"):
        ObservationSeries.from_vector(np.zeros(3), 1.0, [[0, 3]], shuffle=False)
    series = ObservationSeries(samples(2), shuffle=False)
    with pytest.raises(ValueError, match="iteration must be an integer >= 0"):
        series.at(-1)
    with pytest.raises(TypeError, match="concrete"):
        jax.jit(lambda n: series.at(n)[0])(0)


def test_calibrate_with_index_batches_selects_the_observed_outputs():
    """A series of index batches of one vector: the forward map returns the
    whole vector and each iteration uses the batch's columns; equal to a hand
    loop of EKI on the rows of A in the batch."""
    import jax.numpy as jnp
    import numpy as np

    from enkit.inversion import EKI, ObservationSeries, calibrate

    rng = np.random.default_rng(3)
    p, D = 3, 6
    A = rng.normal(size=(D, p))
    y = A @ np.array([0.5, -1.0, 2.0]) + 0.1 * rng.normal(size=D)
    batches = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    series = ObservationSeries.from_vector(jnp.asarray(y), 0.01 * np.ones(D), batches,
                                           shuffle=True, key=5)
    U0 = jnp.asarray(rng.normal(size=(8, p)))
    proc = EKI(stochastic=False)
    res = calibrate(lambda u: jnp.asarray(A) @ u, proc, U0, series, key=0, max_iterations=4)
    state = proc.init(None, U0)
    for k in range(4):
        idx = np.concatenate([batches[j] for j in series.batch_indices(k)])
        y_k, noise_k = series.at(k)
        G = state.ensemble @ jnp.asarray(A[idx]).T
        np.testing.assert_allclose(res.outputs(k), G, rtol=1e-12, atol=1e-12)
        state, _ = proc.tell(state, G, y_k, noise_k, dt=1.0)
    np.testing.assert_allclose(res.parameters(-1), state.ensemble, rtol=1e-10, atol=1e-12)
    assert series.output_selection(0)[1] == D


def test_series_of_samples_selects_nothing():
    import numpy as np

    from enkit.inversion import ObservationSeries

    series = ObservationSeries([(np.zeros(2), 1.0), (np.ones(2), 1.0)], shuffle=False)
    assert series.output_selection(0) is None
