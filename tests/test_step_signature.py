"""One step signature for every inversion process: tell(state, G, y, noise, *, dt)."""

import inspect

import numpy as np
import pytest

import enkit
from enkit.inversion import esmda_constant_alpha

PROCESSES = [enkit.EKI, enkit.ETKI, enkit.TEKI, enkit.GNKI, enkit.SparseEKI, enkit.EKS,
             enkit.ALDI, enkit.ESMDA, enkit.IES, enkit.UKI, enkit.MultiplicativeInflation,
             enkit.AdditiveInflation, enkit.SubspaceInflation, enkit.NesterovAccelerated,
             enkit.ConstantMomentum, enkit.UpdateGroups, enkit.ConstrainedProcess]


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: p.__name__)
def test_every_tell_takes_dt_by_keyword(process):
    dt = inspect.signature(process.tell).parameters.get("dt")
    assert dt is not None and dt.kind is inspect.Parameter.KEYWORD_ONLY


def _linear():
    A = np.array([[1.0, 0.5], [0.0, 1.0], [1.0, -1.0]])
    U0 = np.random.default_rng(0).standard_normal((8, 2))
    return A, U0, A @ np.array([1.0, -0.5]), 0.1 * np.eye(3)


def test_esmda_tell_with_dt_none_is_its_schedule_and_a_dt_is_refused():
    A, U0, y, noise = _linear()
    es = enkit.ESMDA(esmda_constant_alpha(2), stochastic=False)
    state = es.init(None, U0)
    plain, info = es.tell(state, U0 @ A.T, y, noise)
    same, _ = es.tell(state, U0 @ A.T, y, noise, dt=None)
    np.testing.assert_array_equal(plain.ensemble, same.ensemble)
    assert float(info.dt) == 0.5
    with pytest.raises(ValueError, match="1/alpha_k of its schedule"):
        es.tell(state, U0 @ A.T, y, noise, dt=0.5)


def test_a_generic_ask_tell_loop_runs_every_process():
    A, U0, y, noise = _linear()
    for process in (enkit.EKI(stochastic=False), enkit.ETKI(),
                    enkit.ESMDA(esmda_constant_alpha(2), stochastic=False)):
        state = process.init(0, U0)
        for _ in range(2):
            U = process.ask(state)
            state, info = process.tell(state, np.asarray(U) @ A.T, y, noise,
                                       dt=None if isinstance(process, enkit.ESMDA) else 0.5)
        assert np.all(np.isfinite(process.ask(state)))


def test_calibrate_refuses_a_scheduler_for_esmda():
    A, U0, y, noise = _linear()
    with pytest.raises(ValueError, match="sets its own steps"):
        enkit.calibrate(lambda u: A @ u, enkit.ESMDA(esmda_constant_alpha(2)), U0, y, noise,
                        key=0, scheduler=enkit.FixedStep(0.5))
