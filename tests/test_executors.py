"""enkit.executors: member evaluation in member order, failure records,
retries, timeouts, and the MemberExecutor / Dask doors.

The worker functions live at module level so process pools can import them.
"""

import concurrent.futures
import time
from pathlib import Path

import numpy as np
import pytest

from enkit.executors import (
    MemberExecutor,
    MemberFailure,
    MemberResult,
    dask_executor,
    evaluate_members,
    process_pool,
    thread_pool,
)

X = np.random.default_rng(3).normal(size=(8, 3))


def slow_norm(x):
    """A value that depends on every entry; later members finish first in
    a pool (so gathering in member order is tested, not arrival order)."""
    time.sleep(0.02 * (x[0] > 0))
    return np.array([np.sum(x**2), np.prod(x)])


def fails_if_negative(x):
    if x[1] < 0:
        raise ValueError(f"negative second entry {x[1]:.3f}")
    return x * 2.0


class FailOnce:
    """Fails the first call for each input (a marker file records it):
    a transient failure that one retry recovers."""

    def __init__(self, folder, error=OSError):
        self.folder, self.error = Path(folder), error

    def __call__(self, x):
        marker = self.folder / f"{hash(x.tobytes())}.seen"
        if not marker.exists():
            marker.touch()
            raise self.error("transient: licence server busy")
        return x + 1.0


def hangs_if_below_minus_one(x):
    if x[0] < -1.0:
        time.sleep(60.0)
    return x


@pytest.fixture(scope="module")
def pool():
    with process_pool(2) as ex:
        yield ex


def expected():
    return [slow_norm(x) for x in X]


def test_serial_threads_and_processes_agree_in_member_order(pool):
    want = expected()
    for executor in (None, "serial", "threads", thread_pool(3), pool):
        res = evaluate_members(slow_norm, X, executor=executor)
        assert [r.index for r in res] == list(range(len(X)))
        assert all(r.ok and r.attempts == 1 and r.elapsed >= 0 for r in res)
        for r, w in zip(res, want):
            np.testing.assert_array_equal(r.value, w)


def test_a_member_that_raises_becomes_a_failure_record(pool):
    bad = X[:, 1] < 0
    assert bad.any() and not bad.all()
    for executor in (None, "threads", pool):
        res = evaluate_members(fails_if_negative, X, executor=executor)
        assert [not r.ok for r in res] == bad.tolist()
        for r, x in zip(res, X):
            if r.ok:
                np.testing.assert_array_equal(r.value, 2.0 * x)
                assert r.error is None
            else:
                assert r.value is None and r.attempts == 1
                assert r.error == f"ValueError: negative second entry {x[1]:.3f}"


def test_retries_recover_a_transient_failure(tmp_path):
    for k, executor in enumerate(("serial", "threads")):
        folder = tmp_path / f"a{k}"
        folder.mkdir()
        res = evaluate_members(FailOnce(folder), X, executor=executor, retries=1)
        assert all(r.ok and r.attempts == 2 for r in res)
        np.testing.assert_array_equal(np.stack([r.value for r in res]), X + 1.0)
    # no retries: every member fails once and is reported
    (tmp_path / "b").mkdir()
    res = evaluate_members(FailOnce(tmp_path / "b"), X)
    assert all(not r.ok and r.attempts == 1 and r.error.startswith("OSError: transient")
               for r in res)
    # a failure outside retry_on is not retried
    (tmp_path / "c").mkdir()
    res = evaluate_members(FailOnce(tmp_path / "c"), X, retries=3, retry_on=ValueError)
    assert all(not r.ok and r.attempts == 1 for r in res)
    (tmp_path / "d").mkdir()
    res = evaluate_members(FailOnce(tmp_path / "d", KeyError), X, retries=2,
                           retry_on=(ValueError, KeyError))
    assert all(r.ok and r.attempts == 2 for r in res)


def test_timeout_in_a_process_pool_fails_only_the_hung_member():
    hung = X[:, 0] < -1.0
    assert hung.sum() == 1  # one hung member: the other worker serves the rest
    with MemberExecutor("processes", timeout=3.0) as ex:
        # workers started first (submit has no time limit): a timeout is a
        # wait limit, and a worker's start-up (it imports this module) would
        # count against the first member
        warm = [ex.submit(slow_norm, x) for x in X]
        assert all(f.result() is not None for f in warm)
        res = evaluate_members(hangs_if_below_minus_one, X, executor=ex)
        assert [not r.ok for r in res] == hung.tolist(), [r.error for r in res]
        assert all(r.error == "MemberTimeout: no result within 3.0 s" for r in res if not r.ok)
        np.testing.assert_array_equal(np.stack([r.value for r in res if r.ok]), X[~hung])
        # the hung workers were stopped and a fresh pool serves the next call
        assert ex._pool is None
        np.testing.assert_array_equal(ex.submit(slow_norm, X[0]).result(), slow_norm(X[0]))


def test_member_executor_submits_and_carries_its_policy(tmp_path):
    ex = MemberExecutor("serial", retries=1, retry_on=OSError)
    assert ex.submit(sum, [1, 2]).result() == 3
    assert isinstance(ex.submit(int, "x").exception(), ValueError)
    res = evaluate_members(FailOnce(tmp_path), X, executor=ex)
    assert all(r.ok and r.attempts == 2 for r in res)
    assert "retries=1" in repr(ex)
    with pytest.raises(ValueError, match="not both"):
        evaluate_members(slow_norm, X, executor=ex, retries=2)
    # map (BlackBoxModel forecasts) follows the same policy, raising for a failed member
    (tmp_path / "m").mkdir()
    with MemberExecutor("threads", retries=1) as threads:
        np.testing.assert_array_equal(np.stack(list(threads.map(FailOnce(tmp_path / "m"), X))),
                                      X + 1.0)
    (tmp_path / "n").mkdir()
    values = MemberExecutor("serial").map(FailOnce(tmp_path / "n"), X)
    with pytest.raises(MemberFailure, match="member 0 failed after 1 attempt") as e:
        next(values)
    assert e.value.result.index == 0 and e.value.result.error.startswith("OSError")
    with pytest.raises(ValueError, match="takes no timeout"):
        ex.map(slow_norm, X, timeout=1.0)


def test_options_that_cannot_be_honoured_are_errors():
    with pytest.raises(ValueError, match="timeout needs a pool"):
        evaluate_members(slow_norm, X, timeout=1.0)
    with pytest.raises(ValueError, match="timeout needs a pool"):
        MemberExecutor("serial", timeout=1.0)
    with pytest.raises(ValueError, match="executor must be"):
        evaluate_members(slow_norm, X, executor="gpu")
    with pytest.raises(ValueError, match="retries must be"):
        evaluate_members(slow_norm, X, retries=-1)
    with pytest.raises(TypeError, match="retry_on must be"):
        evaluate_members(slow_norm, X, retry_on=("OSError",))
    with pytest.raises(ValueError, match="timeout must be"):
        evaluate_members(slow_norm, X, executor="threads", timeout=0)
    with pytest.raises(ValueError, match="n_workers"):
        thread_pool(0)
    with pytest.raises(ValueError, match="fork is unsafe"):
        process_pool(2, start_method="fork")
    with pytest.raises(TypeError, match="fn must be callable"):
        evaluate_members(3, X)


def test_a_broken_pool_gives_failure_records_not_a_crash():
    ex = concurrent.futures.ThreadPoolExecutor(1)
    ex.shutdown()
    res = evaluate_members(slow_norm, X[:3], executor=ex)
    assert all(isinstance(r, MemberResult) and not r.ok and
               r.error.startswith("RuntimeError: cannot schedule") for r in res)


def test_dask_executor_matches_serial():
    pytest.importorskip("distributed")
    want = expected()
    with dask_executor(n_workers=2, processes=False) as ex:
        res = evaluate_members(fails_if_negative, X, executor=ex)
        assert [not r.ok for r in res] == (X[:, 1] < 0).tolist()
        for r, w in zip(evaluate_members(slow_norm, X, executor=ex), want):
            np.testing.assert_array_equal(r.value, w)
    with pytest.raises(ValueError, match="leave them unset"):
        dask_executor("tcp://127.0.0.1:1", n_workers=2)
