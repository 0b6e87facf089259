"""Update groups: one group with every index is the plain process exactly;
with block-diagonal A and Γ, grouped deterministic EKI equals separate EKIs
on the blocks; parameters in no group stay; invalid groups and processes
that cannot be split raise clear errors."""

import jax
import numpy as np
import pytest

import enkit
from enkit.inversion import (
    EKI,
    ESMDA,
    ETKI,
    GNKI,
    TEKI,
    UKI,
    GaussianPrior,
    UpdateGroups,
    esmda_constant_alpha,
)


def test_one_group_with_all_indices_is_the_plain_process():
    rng = np.random.default_rng(0)
    p, d, N = 4, 3, 7
    A = rng.normal(size=(d, p))
    U0 = rng.normal(size=(N, p))
    y = rng.normal(size=d)
    B = rng.normal(size=(d, d))
    Gam = enkit.Dense(B @ B.T / d + np.eye(d))
    for proc in (EKI(stochastic=True), ETKI()):
        grouped = UpdateGroups(proc, [(range(p), range(d))])
        sp, sg = proc.init(3, U0), grouped.init(3, U0)
        for _ in range(3):
            U = proc.ask(sp)
            np.testing.assert_array_equal(grouped.ask(sg), U)
            sp, ip = proc.tell(sp, U @ A.T, y, Gam, dt=0.7)
            sg, ig = grouped.tell(sg, U @ A.T, y, Gam, dt=0.7)
            assert ip.misfit == ig.misfit and ip.dt == ig.dt
        np.testing.assert_array_equal(sg.ensemble, sp.ensemble)
        assert int(sg.iteration) == 3 and float(sg.time) == float(sp.time)


def test_block_diagonal_problem_equals_separate_runs():
    rng = np.random.default_rng(1)
    p1, p2, d1, d2, N = 2, 3, 3, 2, 8
    A1, A2 = rng.normal(size=(d1, p1)), rng.normal(size=(d2, p2))
    A = np.zeros((d1 + d2, p1 + p2))
    A[:d1, :p1], A[d1:, p1:] = A1, A2
    G1, G2 = rng.normal(size=(d1, d1)), rng.normal(size=(d2, d2))
    Gam1, Gam2 = G1 @ G1.T + np.eye(d1), G2 @ G2.T + np.eye(d2)
    Gam = np.zeros((d1 + d2, d1 + d2))
    Gam[:d1, :d1], Gam[d1:, d1:] = Gam1, Gam2
    y = rng.normal(size=d1 + d2)
    U0 = rng.normal(size=(N, p1 + p2))
    # groups given out of order, data indices shuffled within the group
    P2, D2 = [4, 2, 3], [4, 3]
    grouped = UpdateGroups(EKI(stochastic=False), [(P2, D2), ([0, 1], [0, 1, 2])])
    st = grouped.init(None, U0)
    one, two = EKI(stochastic=False), EKI(stochastic=False)
    s1, s2 = one.init(None, U0[:, :2]), two.init(None, U0[:, P2])
    tell = jax.jit(lambda s, G: grouped.tell(s, G, y, Gam, dt=0.5))
    for _ in range(4):
        G = grouped.ask(st) @ A.T
        st, info = tell(st, G)
        s1, _ = one.tell(s1, s1.ensemble @ A1.T, y[:d1], Gam1, dt=0.5)
        # s2's columns follow P2 = (4, 2, 3) = columns (2, 0, 1) of A2, its data
        # D2 = (4, 3) = rows (1, 0) of A2
        s2, _ = two.tell(s2, s2.ensemble @ A2[[1, 0]][:, [2, 0, 1]].T, y[D2],
                         Gam[np.ix_(D2, D2)],
                         dt=0.5)
    np.testing.assert_allclose(st.ensemble[:, :2], s1.ensemble, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(st.ensemble[:, P2], s2.ensemble, rtol=1e-12, atol=1e-14)
    # the misfit reported is that of all the data told
    np.testing.assert_allclose(info.misfit, enkit.inversion.data_misfit(G, y, Gam), rtol=1e-12)


def test_parameters_outside_every_group_are_unchanged_and_esmda_works():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(3, 4))
    U0 = rng.normal(size=(6, 4))
    y = rng.normal(size=3)
    es = UpdateGroups(ESMDA(esmda_constant_alpha(2), stochastic=True), [([0, 2], [0, 1, 2])])
    st = es.init(1, U0)
    st, info = es.tell(st, U0 @ A.T, y, 0.1)
    np.testing.assert_array_equal(st.ensemble[:, [1, 3]], U0[:, [1, 3]])
    assert not np.allclose(st.ensemble[:, [0, 2]], U0[:, [0, 2]])
    assert float(info.dt) == 0.5


def test_two_stochastic_groups_draw_independent_perturbations():
    rng = np.random.default_rng(3)
    U0 = rng.normal(size=(5, 2))
    A = np.eye(2)  # two identical one-parameter, one-datum sub-problems
    y = np.zeros(2)
    # with identical sub-problems the groups would move alike if they shared draws
    same = UpdateGroups(EKI(stochastic=True), [([0], [0]), ([1], [1])])
    U_same = np.repeat(U0[:, :1], 2, axis=1)
    st2, _ = same.tell(same.init(0, U_same), U_same @ A.T, y, 1.0)
    assert not np.allclose(st2.ensemble[:, 0], st2.ensemble[:, 1])


def test_clear_errors():
    prior = GaussianPrior(np.zeros(2), 1.0)
    for proc in (UKI(prior), GNKI(prior), TEKI(prior)):
        with pytest.raises(TypeError, match="cannot split"):
            UpdateGroups(proc, [([0], [0])])
    with pytest.raises(ValueError, match="must be disjoint"):
        UpdateGroups(EKI(), [([0, 1], [0]), ([1], [1])])
    with pytest.raises(ValueError, match="repeats indices"):
        UpdateGroups(EKI(), [([0, 0], [0])])
    with pytest.raises(ValueError, match="non-empty"):
        UpdateGroups(EKI(), [([], [0])])
    with pytest.raises(ValueError, match="pair"):
        UpdateGroups(EKI(), [([0],)])
    with pytest.raises(ValueError, match="non-empty sequence"):
        UpdateGroups(EKI(), [])
    g = UpdateGroups(EKI(stochastic=False), [([0, 5], [0])])
    with pytest.raises(ValueError, match="param_indices must be < p=3"):
        g.init(None, np.zeros((4, 3)) + np.arange(4)[:, None])
    g = UpdateGroups(EKI(stochastic=False), [([0], [0, 4])])
    U = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(ValueError, match="data_indices must be < d=2"):
        g.tell(g.init(None, U), U[:, :2], np.zeros(2), 1.0)
