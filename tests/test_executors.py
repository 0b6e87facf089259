"""enkit.executors: member evaluation in member order, failure records,
retries, timeouts, and the MemberExecutor / Dask doors.

The worker functions live at module level so process pools can import them.
"""

import concurrent.futures
import multiprocessing
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from enkit.executors import (
    MemberExecutor,
    MemberFailure,
    MemberResult,
    MemberTimeout,
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


class Member:
    """Member i (an int) gives (i², the worker's pid); the members in
    ``hung`` note their pid in ``folder`` and hang for a minute."""

    def __init__(self, hung, folder):
        self.hung, self.folder = tuple(hung), Path(folder)

    def __call__(self, i):
        if i in self.hung:
            (self.folder / f"{i}.pid").write_text(str(os.getpid()))
            time.sleep(60.0)
        time.sleep(0.02)
        return i * i, os.getpid()


class HangOrSleep:
    """("hang",): hang for a minute, noting in ``folder`` if it was stopped
    in a way that runs ``finally``; ("sleep", s): sleep s seconds."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def __call__(self, task):
        if task[0] == "hang":
            try:
                time.sleep(60.0)
            finally:
                (self.folder / "cleaned-up").touch()
            return None
        time.sleep(task[1])
        return task[1]


def exits_if_below_minus_one(x):
    if x[0] < -1.0:
        os._exit(7)
    return x


class HangsInThread:
    """Member i gives i²; the members in ``hung`` wait (up to a minute) for
    ``release``, so the test can free their threads when it is done."""

    def __init__(self, hung, release):
        self.hung, self.release = tuple(hung), release

    def __call__(self, i):
        if i in self.hung:
            self.release.wait(60.0)
        time.sleep(0.01)
        return i * i


class HangsTheFirstTime:
    """Member i gives i²; the members in ``hung`` hang on their first call
    (a marker file records it): for a minute, or (threads) until ``release``."""

    def __init__(self, hung, folder, release=None):
        self.hung, self.folder, self.release = tuple(hung), Path(folder), release

    def __call__(self, i):
        marker = self.folder / f"{i}.seen"
        if i in self.hung and not marker.exists():
            marker.touch()
            self.release.wait(60.0) if self.release is not None else time.sleep(60.0)
        return i * i


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
    assert hung.sum() == 1
    # no warm-up: a worker's start-up (it imports this module) does not count
    with MemberExecutor("processes", timeout=2.0) as ex:
        res = evaluate_members(hangs_if_below_minus_one, X, executor=ex)
        assert [not r.ok for r in res] == hung.tolist(), [r.error for r in res]
        assert all(r.error == "MemberTimeout: ran past 2.0 s; its worker process was stopped"
                   for r in res if not r.ok)
        np.testing.assert_array_equal(np.stack([r.value for r in res if r.ok]), X[~hung])
        # the pool is kept (its hung worker was replaced) and serves the next call
        assert ex._pool is not None
        np.testing.assert_array_equal(ex.submit(slow_norm, X[0]).result(), slow_norm(X[0]))


HUNG = (3, 11)  # of 20 members: once both hang, both of the 2 workers are held


@pytest.mark.parametrize("kind", ["processes", "pool"])
def test_hung_members_in_a_process_pool_fail_alone(tmp_path, monkeypatch, kind):
    """The bug: with a wait limit gathered in member order, the members
    queued behind two hung ones were all declared timed out."""
    T = 2.0
    before = set(multiprocessing.active_children())
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # "processes": 2 workers
    t0 = time.perf_counter()
    if kind == "processes":
        res = evaluate_members(Member(HUNG, tmp_path), range(20), executor="processes",
                               timeout=T)
    else:
        with process_pool(2) as pool:
            res = evaluate_members(Member(HUNG, tmp_path), range(20),
                                   executor=MemberExecutor(pool, timeout=T))
    wall = time.perf_counter() - t0
    assert [r.index for r in res if not r.ok] == list(HUNG), [r.error for r in res]
    for r in res:
        assert r.attempts == 1
        if r.index in HUNG:
            assert r.value is None
            assert r.error == f"MemberTimeout: ran past {T} s; its worker process was stopped"
            assert T <= r.elapsed < T + 5.0  # generous: the machine may be loaded
        else:
            assert r.error is None and r.value[0] == r.index**2
    # bounded: a worker start-up, T, a replacement's start-up (not 60 s, not 18 T)
    assert wall < 30.0, wall  # far below the 60 s a hung member sleeps (loaded machines)
    pids = {r.value[1] for r in res if r.ok}
    hung_pids = {int((tmp_path / f"{i}.pid").read_text()) for i in HUNG}
    # the members after the second hung one ran on workers started in their place
    assert not {r.value[1] for r in res[HUNG[1] + 1:]} & hung_pids
    assert not any(_alive(pid) for pid in pids | hung_pids)  # no process left behind
    assert set(multiprocessing.active_children()) <= before


def test_a_member_queued_behind_a_hung_one_gets_its_full_time(tmp_path):
    T = 2.0
    with process_pool(1) as pool:  # one worker: member 1 waits for member 0's
        t0 = time.perf_counter()
        res = evaluate_members(HangOrSleep(tmp_path), [("hang",), ("sleep", 0.75 * T)],
                               executor=pool, timeout=T)
        wall = time.perf_counter() - t0
    assert not res[0].ok and res[0].error.startswith(f"MemberTimeout: ran past {T} s")
    # member 1 ran 0.75 T, on a fresh worker whose start-up did not count
    assert res[1].ok and res[1].attempts == 1 and res[1].value == 0.75 * T
    assert res[1].elapsed >= 0.75 * T and wall >= T + 0.75 * T
    # the hung worker was stopped with SIGTERM, which runs its finally blocks
    # (so an ExternalModel in it kills its program)
    assert (tmp_path / "cleaned-up").exists()


def test_a_worker_that_dies_fails_only_its_member():
    died = X[:, 0] < -1.0
    with process_pool(2) as pool:
        res = evaluate_members(exits_if_below_minus_one, X, executor=pool)
    assert [not r.ok for r in res] == died.tolist(), [r.error for r in res]
    assert all(r.error.startswith("WorkerDied: the worker process") and
               r.error.endswith("died running the task (exit code 7)") for r in res if not r.ok)
    np.testing.assert_array_equal(np.stack([r.value for r in res if r.ok]), X[~died])


def test_members_waiting_behind_hung_threads_still_run(monkeypatch):
    """Threads cannot be stopped, but in a pool enkit made the members that
    never began (waiting behind two hung threads) move to a fresh pool."""
    T = 1.0
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # "threads": 2 threads
    release = threading.Event()
    try:
        for executor in ("threads", MemberExecutor("threads", timeout=T)):
            kw = {} if isinstance(executor, MemberExecutor) else {"timeout": T}
            t0 = time.perf_counter()
            res = evaluate_members(HangsInThread((1, 2), release), range(20),
                                   executor=executor, **kw)
            wall = time.perf_counter() - t0
            assert [r.index for r in res if not r.ok] == [1, 2], [r.error for r in res]
            assert all(r.error.startswith(f"MemberTimeout: ran past {T} s (a thread cannot")
                       for r in res if not r.ok)
            assert all(r.value == r.index**2 and r.attempts == 1 for r in res if r.ok)
            assert wall < 30.0, wall  # far below the 60 s of a hung member
            if isinstance(executor, MemberExecutor):
                executor.shutdown(wait=False)
    finally:
        release.set()


@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_a_member_that_timed_out_is_retried_on_a_free_worker(tmp_path, monkeypatch, kind):
    T = 1.0
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    release = threading.Event() if kind == "threads" else None
    try:
        with MemberExecutor(kind, timeout=T, retries=1, retry_on=MemberTimeout) as ex:
            t0 = time.perf_counter()
            res = evaluate_members(HangsTheFirstTime((0, 1), tmp_path, release), range(6),
                                   executor=ex)
            wall = time.perf_counter() - t0
    finally:
        if release is not None:
            release.set()
    assert all(r.ok and r.value == r.index**2 for r in res), [r.error for r in res]
    assert [r.attempts for r in res] == [2, 2, 1, 1, 1, 1]
    # the retries ran at once on free workers (threads: a fresh pool), not
    # after another T of waiting behind the held ones
    assert wall < 30.0, wall  # far below the 60 s of a hung member


def test_members_that_never_start_in_the_callers_thread_pool_say_so():
    T = 1.0
    release = threading.Event()
    try:
        with thread_pool(2) as pool:  # the caller's: enkit cannot add threads to it
            t0 = time.perf_counter()
            res = evaluate_members(HangsInThread((0, 1), release), range(6), executor=pool,
                                   timeout=T)
            wall = time.perf_counter() - t0
            release.set()
    finally:
        release.set()
    assert not any(r.ok for r in res)
    assert all(r.error.startswith(f"MemberTimeout: ran past {T} s") for r in res[:2])
    assert all(r.error == f"MemberTimeout: did not start within {T} s: every thread of the "
               "pool was busy (it never ran)" and r.elapsed == 0.0 for r in res[2:])
    assert wall < 30.0, wall  # far below the 60 s of a hung member


class Opaque(concurrent.futures.Executor):
    """An executor enkit cannot look into (like mpi4py's or Dask's)."""

    def __init__(self, n):
        self.pool = concurrent.futures.ThreadPoolExecutor(n)

    def submit(self, fn, /, *args, **kwargs):
        return self.pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def test_with_any_other_executor_a_timeout_limits_waiting():
    release = threading.Event()
    try:
        with Opaque(4) as ex:
            res = evaluate_members(HangsInThread((0,), release), range(4), executor=ex,
                                   timeout=0.5)
            release.set()
    finally:
        release.set()
    assert res[0].error == "MemberTimeout: no result within 0.5 s"
    assert all(r.ok and r.value == r.index**2 for r in res[1:])


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
