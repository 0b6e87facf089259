"""Evaluate a black-box function on every member: serially, in a thread or
process pool, or through any ``concurrent.futures.Executor``.

The one entry point is ``evaluate_members(fn, inputs, executor=...)``. It
submits member i's input, gathers the results in member order and never
raises because a member failed: each member gives a ``MemberResult`` (its
index, value or error text, elapsed time, attempts), and the caller's
failure policy (``enkit.inversion.failures``) decides what a failure means.

Executors: ``None``/``"serial"`` runs the members here, one after another;
``"threads"`` and ``"processes"`` make a pool for the call
(``thread_pool``, ``process_pool``); any object with ``submit`` is used as
it is, so ``concurrent.futures`` pools, ``mpi4py.futures.MPIPoolExecutor``
and Dask (``dask_executor``, a ``distributed.Client``'s executor) plug in.
``MemberExecutor`` bundles an executor with a per-member policy (timeout,
retries) into one ``Executor``, so the policy travels through drivers that
take an ``executor`` argument (``calibrate``, ``BlackBoxModel``).

Timeouts (``timeout=T``), what holds with each executor:

- enkit's process pools (``"processes"``, ``process_pool(...)``, alone or
  in a ``MemberExecutor``): each member has T seconds of run time, counted
  from when its call began in a worker; waiting for a free worker, a
  worker's start-up and loading the function and input in the worker (on a
  worker's first task, importing fn's module) do not count. A member still
  running at T fails with ``MemberTimeout`` ("ran past T s"); its worker is
  sent SIGTERM (raised there as ``SystemExit``, so ``finally`` blocks run
  and an ``ExternalModel`` kills its program), SIGKILL 2 s later if still
  alive, and a fresh worker takes its place, so the other members run as if
  nothing had happened. A worker that dies running a member fails only that
  member (``WorkerDied``, a ``RuntimeError``). Each worker runs one member at
  a time, so nothing is queued behind a hung member in its worker.
- thread pools (``"threads"``, ``thread_pool(...)``, any
  ``ThreadPoolExecutor``): T is counted from when the member's call began in
  a thread, too, but a thread cannot be stopped: a member still running at T
  fails with ``MemberTimeout`` and its call runs on in the background,
  holding its thread (and the interpreter's exit, which waits for it). In a
  pool enkit made (``"threads"``, ``MemberExecutor("threads")``) the members
  still waiting for a thread when one times out move to a fresh pool of the
  same size (not counted as an attempt), so they run, and a pool left with
  held threads is replaced before the next round of retries or the next
  call. In a pool the caller made they cannot: once no member is running
  within its limit and nothing has started or finished for T seconds, each
  member that never started fails with ``MemberTimeout`` ("did not start
  within T s"; it never ran; elapsed 0).
- any other executor (a ``ProcessPoolExecutor``, ``mpi4py.futures``, Dask):
  enkit can neither see when a member starts nor stop it, so T limits
  *waiting*: results are gathered in member order and member i is given up
  ("no result within T s") when none came T seconds after the driver began
  waiting for it. A member thus has at least T seconds of wall time, but one
  queued behind hung members can be given up without having run, and a hung
  task keeps its worker busy.
- serial evaluation cannot stop or wait on anything: a timeout is an error.
- external programs (``enkit.external.ExternalModel(timeout=...)``): the
  model kills the program's whole process group when its time is up, in
  whichever worker it runs; the worker is free again. This is the timeout
  to use for simulators, with every executor.

Retries: a member whose failure is an instance of ``retry_on`` is submitted
again, up to ``retries`` more times (all members due a retry are resubmitted
together, so they run concurrently). Only the last attempt's error is kept.

Logging goes to the ``"enkit.executors"`` logger.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from enkit._workers import Overrun, ProcessPool

__all__ = [
    "DaskExecutor",
    "MemberExecutor",
    "MemberFailure",
    "MemberResult",
    "MemberTimeout",
    "ProcessPool",
    "dask_executor",
    "evaluate_members",
    "process_pool",
    "thread_pool",
]

_LOG = logging.getLogger("enkit.executors")
_NAMED = ("serial", "threads", "processes")


class MemberTimeout(TimeoutError):
    """A member did not finish within its time limit."""


class MemberFailure(RuntimeError):
    """Raised by ``MemberExecutor.map`` for a member that failed; ``result``
    is its ``MemberResult`` (index, error text, attempts)."""

    def __init__(self, message: str, result: Any):
        super().__init__(message)
        self.result = result


class _Star:
    """``fn(*args)`` from one tuple (picklable when ``fn`` is)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, args: tuple) -> Any:
        return self.fn(*args)


class MemberResult(NamedTuple):
    """The outcome of one member (a failure record when ``error`` is set).

    index: the member's row; value: what ``fn`` returned (None on failure);
    error: None, or ``"TypeName: message"`` of the last failed attempt;
    elapsed: seconds spent over all attempts; attempts: calls made (≥ 1).
    """

    index: int
    value: Any
    error: str | None
    elapsed: float
    attempts: int

    @property
    def ok(self) -> bool:
        """True when the member succeeded."""
        return self.error is None


class _Outcome(NamedTuple):
    """What one attempt sends back from the worker (exceptions are turned
    into text there, so unpicklable exceptions cannot break a pool)."""

    value: Any
    error: str | None
    retryable: bool
    elapsed: float


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class _Attempt:
    """Call ``fn`` on one input, timing it and catching any exception
    (picklable when ``fn`` is)."""

    def __init__(self, fn: Callable, retry_on: tuple[type[BaseException], ...]):
        self.fn, self.retry_on = fn, retry_on

    def __call__(self, x: Any) -> _Outcome:
        t0 = time.perf_counter()
        try:
            value = self.fn(x)
        except Exception as err:  # noqa: BLE001 - any crash of a member is a failure record
            return _Outcome(None, _describe(err), isinstance(err, self.retry_on),
                            time.perf_counter() - t0)
        return _Outcome(value, None, False, time.perf_counter() - t0)


# ------------------------------------------------------------- pools ----


def _check_workers(n_workers: int | None) -> int:
    if n_workers is None:
        return os.cpu_count() or 1
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer or None, got {n_workers!r}")
    return n_workers


def thread_pool(n_workers: int | None = None) -> concurrent.futures.ThreadPoolExecutor:
    """A thread pool with ``n_workers`` threads (None: the CPU count).

    Threads suit members that wait on something else (an external program,
    I/O) or release the GIL; pure-Python members do not run in parallel.
    """
    return concurrent.futures.ThreadPoolExecutor(max_workers=_check_workers(n_workers))


def process_pool(n_workers: int | None = None, *,
                 start_method: str = "forkserver") -> ProcessPool:
    """A process pool with ``n_workers`` processes (None: the CPU count).

    An ``Executor`` (``submit``, ``map``, ``shutdown``, a context manager)
    whose workers each run one task at a time and start when there is work.
    Under ``evaluate_members(timeout=T)`` a member that runs past T has its
    worker stopped and replaced (module docstring, "Timeouts").

    start_method: ``"forkserver"`` (default) or ``"spawn"``; ``"fork"`` is
    refused because forking a process that has started JAX's threads can
    deadlock. The function and inputs must be picklable, and the function
    importable by the workers (defined in a module, not a notebook cell).
    """
    if start_method not in ("forkserver", "spawn"):
        raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r} "
                         "(fork is unsafe once JAX has started its threads)")
    if start_method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"start_method {start_method!r} is not available on this platform "
                         f"(available: {multiprocessing.get_all_start_methods()})")
    return ProcessPool(_check_workers(n_workers),
                       mp_context=multiprocessing.get_context(start_method))


def _make_pool(name: str) -> concurrent.futures.Executor | None:
    return {"serial": lambda: None, "threads": thread_pool, "processes": process_pool}[name]()


def _close_pool(pool: concurrent.futures.Executor, timed_out: bool, aborted: bool) -> None:
    """Shut down a pool enkit created for one call: a process pool waits for
    its workers to exit (after an interruption it stops them); a thread pool
    does not wait for threads still running members that timed out."""
    if isinstance(pool, ProcessPool):
        if aborted:
            pool.terminate()
        else:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    pool.shutdown(wait=not (timed_out or aborted), cancel_futures=True)


# ------------------------------------------------------------ policy ----


def _check_policy(timeout, retries, retry_on, serial: bool):
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, "
                             f"got {timeout!r}")
        if serial:
            raise ValueError(
                "timeout needs a pool executor ('threads', 'processes' or an Executor): "
                "serial evaluation cannot stop a running Python call; for an external "
                "program give ExternalModel(timeout=...), which kills the program")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if retry_on is None:
        retry_on = (Exception,)
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    retry_on = tuple(retry_on)
    if not retry_on or not all(isinstance(t, type) and issubclass(t, BaseException)
                               for t in retry_on):
        raise TypeError(f"retry_on must be an exception type or a tuple of them, "
                        f"got {retry_on!r}")
    return timeout, retries, retry_on


def _is_executor(x) -> bool:
    return callable(getattr(x, "submit", None))


class MemberExecutor(concurrent.futures.Executor):
    """An executor with a per-member policy, usable wherever an
    ``Executor`` is expected (``calibrate(executor=...)``).

    executor: ``"serial"``, ``"threads"``, ``"processes"`` (a pool made on
    first use and kept until ``shutdown``; a thread pool whose threads are
    held by members that timed out is let go and a fresh one made) or any
    ``Executor``; timeout,
    retries, retry_on: as in ``evaluate_members``, which applies them
    whenever it is given this executor. ``submit``/``map`` go straight to
    the underlying executor (serial: run at once). Use it as a context
    manager, or call ``shutdown()``, to release a pool it made.
    """

    def __init__(self, executor: str | concurrent.futures.Executor = "serial", *,
                 timeout: float | None = None, retries: int = 0,
                 retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None):
        if not (_is_executor(executor) or executor in _NAMED):
            raise ValueError(f"executor must be one of {_NAMED} or a "
                             f"concurrent.futures.Executor, got {executor!r}")
        self.timeout, self.retries, self.retry_on = _check_policy(
            timeout, retries, retry_on, serial=executor == "serial")
        self.executor = executor
        self._pool = None

    def __repr__(self) -> str:
        name = self.executor if isinstance(self.executor, str) else type(self.executor).__name__
        return (f"MemberExecutor({name!r}, timeout={self.timeout}, retries={self.retries}, "
                f"retry_on={tuple(t.__name__ for t in self.retry_on)})")

    def _get(self) -> concurrent.futures.Executor | None:
        if not isinstance(self.executor, str):
            return self.executor
        if self._pool is None and self.executor != "serial":
            self._pool = _make_pool(self.executor)
        return self._pool

    def _fresh_threads(self) -> concurrent.futures.ThreadPoolExecutor:
        """A new thread pool in place of one made here whose threads are held
        by members that timed out (they run on; the old pool is let go)."""
        old, self._pool = self._pool, _make_pool("threads")
        old.shutdown(wait=False)
        return self._pool

    def submit(self, fn, /, *args, **kwargs):
        pool = self._get()
        if pool is not None:
            return pool.submit(fn, *args, **kwargs)
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 - delivered through the future
            future.set_exception(err)
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1):
        """``fn`` over the members under this executor's policy (used by
        ``BlackBoxModel`` forecasts). Evaluates all members at once, then
        yields their values in order; a member that still failed raises
        ``MemberFailure`` when reached. timeout must be None (the
        per-member timeout is this executor's)."""
        if timeout is not None:
            raise ValueError("MemberExecutor.map takes no timeout: give the per-member "
                             "timeout to MemberExecutor(timeout=...)")
        results = evaluate_members(_Star(fn), list(zip(*iterables)), executor=self)

        def values():
            for r in results:
                if not r.ok:
                    raise MemberFailure(f"member {r.index} failed after {r.attempts} "
                                        f"attempt(s): {r.error}", r)
                yield r.value

        return values()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
            self._pool = None


# -------------------------------------------------------- evaluation ----


def _timed_out(text: str, retry_on: tuple, elapsed: float) -> _Outcome:
    return _Outcome(None, f"MemberTimeout: {text}", issubclass(MemberTimeout, retry_on), elapsed)


def _from_future(f: concurrent.futures.Future, timeout: float | None,
                 retry_on: tuple) -> _Outcome:
    """The outcome of a finished future: the ``_Attempt``'s, or the pool's error."""
    try:
        return f.result()
    except Overrun as err:
        return _timed_out(f"ran past {timeout} s; its worker process was stopped", retry_on,
                          err.elapsed)
    except Exception as err:  # noqa: BLE001 - raised by the pool itself
        return _Outcome(None, _describe(err), isinstance(err, retry_on), 0.0)


def _submit(pool, call: Callable, i: int, outcomes: dict, futures: dict) -> None:
    try:
        futures[i] = call(pool, i)
    except Exception as err:  # noqa: BLE001 - e.g. a broken or shut-down pool
        outcomes[i] = _Outcome(None, _describe(err), False, 0.0)


def _run_round(pool, attempt_fn: _Attempt, inputs: list, pending: list[int],
               timeout: float | None, retry_on: tuple,
               fresh: Callable[[], concurrent.futures.Executor] | None = None,
               ) -> tuple[dict[int, _Outcome], bool]:
    """One attempt of every pending member: ({member: outcome}, whether a
    member that timed out may still be running in a thread). fresh: None,
    or makes a thread pool to replace ``pool`` (one enkit made)."""
    if pool is None:
        return {i: attempt_fn(inputs[i]) for i in pending}, False
    if isinstance(pool, DaskExecutor) and timeout is None:
        return dict(zip(pending, pool._run_all(attempt_fn, [inputs[i] for i in pending]))), False
    if timeout is not None and isinstance(pool, concurrent.futures.ThreadPoolExecutor):
        return _run_threads(pool, attempt_fn, inputs, pending, timeout, retry_on, fresh)
    outcomes, futures = {}, {}
    if isinstance(pool, ProcessPool) and timeout is not None:
        def call(p, i):  # the pool times each member from its start and stops it
            return p.submit_limited(attempt_fn, (inputs[i],), timeout)
    else:
        def call(p, i):
            return p.submit(attempt_fn, inputs[i])
    try:
        for i in pending:
            _submit(pool, call, i, outcomes, futures)
        for i, f in futures.items():
            if timeout is None or isinstance(pool, ProcessPool):
                outcomes[i] = _from_future(f, timeout, retry_on)  # (the pool's limits)
                continue
            # an executor enkit can neither watch nor stop: a limit on waiting
            t0 = time.perf_counter()
            try:
                outcomes[i] = f.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                f.cancel()
                outcomes[i] = _timed_out(f"no result within {timeout} s", retry_on,
                                         time.perf_counter() - t0)
            except Exception as err:  # noqa: BLE001 - raised by the executor itself
                outcomes[i] = _Outcome(None, _describe(err), isinstance(err, retry_on),
                                       time.perf_counter() - t0)
    except BaseException:
        for f in futures.values():
            f.cancel()
        raise
    return outcomes, False


class _Starts:
    """When each member's call began in a thread pool (the threads share
    this process, so the call itself notes it), and a condition notified
    whenever a call begins or ends."""

    def __init__(self):
        self.cond = threading.Condition()
        self.began: dict[int, float] = {}

    def run(self, i: int, attempt_fn: _Attempt, x: Any) -> _Outcome:
        with self.cond:
            self.began[i] = time.monotonic()
            self.cond.notify_all()
        return attempt_fn(x)

    def notify(self, _future=None) -> None:
        with self.cond:
            self.cond.notify_all()


def _run_threads(pool, attempt_fn: _Attempt, inputs: list, pending: list[int],
                 timeout: float, retry_on: tuple,
                 fresh: Callable[[], concurrent.futures.Executor] | None,
                 ) -> tuple[dict[int, _Outcome], bool]:
    """``_run_round`` in a thread pool: each member timed from when its call
    began (the module docstring says what happens to members that never
    start)."""
    starts, outcomes, futures = _Starts(), {}, {}

    def call(p, i):
        f = p.submit(starts.run, i, attempt_fn, inputs[i])
        f.add_done_callback(starts.notify)
        return f

    hung, lost = False, 0  # lost: members timed out since the pool was last replaced
    try:
        for i in pending:
            _submit(pool, call, i, outcomes, futures)
        with starts.cond:
            last, n_began = time.monotonic(), 0  # last: a call began, ended or timed out
            while futures:
                now = time.monotonic()
                if len(starts.began) > n_began:
                    last, n_began = now, len(starts.began)
                due, waiting = math.inf, []
                for i, f in list(futures.items()):
                    began = starts.began.get(i)
                    if f.done():
                        outcomes[i], last = _from_future(f, timeout, retry_on), now
                        del futures[i]
                    elif began is None:
                        if not f.running():  # (running: its call is about to note its start)
                            waiting.append(i)
                    elif now - began >= timeout:
                        outcomes[i] = _timed_out(
                            f"ran past {timeout} s (a thread cannot be stopped: its call "
                            "runs on in the background)", retry_on, now - began)
                        del futures[i]
                        hung, lost, last = True, lost + 1, now
                    else:
                        due = min(due, began + timeout)
                stalled = due == math.inf and now - last >= timeout  # nothing ran for T
                if waiting and fresh is not None and (lost or stalled):
                    # their threads are held: run the members that have not begun
                    # in a fresh pool (one attempt still)
                    moved = [i for i in waiting if futures[i].cancel()]
                    if moved:
                        pool, lost = fresh(), 0
                        _LOG.info("members %s waited behind members that timed out: moved "
                                  "to a fresh thread pool", moved)
                        for i in moved:
                            del futures[i]
                            _submit(pool, call, i, outcomes, futures)
                        continue
                if waiting and due == math.inf:
                    if stalled:  # nothing can run them: the caller's pool
                        gone = [i for i in waiting if futures[i].cancel()]
                        for i in gone:
                            outcomes[i] = _timed_out(
                                f"did not start within {timeout} s: every thread of the "
                                "pool was busy (it never ran)", retry_on, 0.0)
                            del futures[i]
                        if gone:
                            continue
                    due = max(now, last + timeout)
                if futures:
                    starts.cond.wait(None if due == math.inf else max(0.0, due - now))
    except BaseException:
        for f in futures.values():
            f.cancel()
        raise
    return outcomes, hung


def evaluate_members(
    fn: Callable[[Any], Any],
    inputs: Iterable[Any],
    *,
    executor: str | concurrent.futures.Executor | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
) -> list[MemberResult]:
    """Evaluate ``fn`` on every member's input; results in member order.

    fn: a callable on one member's input (picklable for process pools and
    Dask); inputs: one entry per member, e.g. the N rows of an (N, p)
    array; executor: None or ``"serial"`` (here, in order), ``"threads"``,
    ``"processes"`` (a pool made for this call and shut down after it), a
    ``MemberExecutor`` (its pool and policy), or any ``Executor``.
    timeout: None, or each member's time limit in seconds (the module
    docstring says, per executor, when its clock starts and what is
    stopped; an error with serial evaluation). retries: extra attempts for a member whose failure is an
    instance of ``retry_on`` (default: any ``Exception``, timeouts
    included). With a ``MemberExecutor`` these three come from it and must
    be left at their defaults here.

    Never raises for a failed member: an exception in ``fn``, a timeout or
    a pool error becomes that member's ``MemberResult`` with ``error`` set.
    Returns a list of N ``MemberResult`` (index i at position i).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    inputs = list(inputs)
    owner = None
    if isinstance(executor, MemberExecutor):
        if timeout is not None or retries != 0 or retry_on is not None:
            raise ValueError("give timeout/retries/retry_on to the MemberExecutor or to "
                             "evaluate_members, not both")
        owner = executor
        timeout, retries, retry_on = owner.timeout, owner.retries, owner.retry_on
        pool = None
    else:
        if executor is None:
            executor = "serial"
        if not (_is_executor(executor) or executor in _NAMED):
            raise ValueError(f"executor must be None, one of {_NAMED}, a MemberExecutor or a "
                             f"concurrent.futures.Executor, got {executor!r}")
        timeout, retries, retry_on = _check_policy(timeout, retries, retry_on,
                                                   serial=executor == "serial")
        pool = _make_pool(executor) if isinstance(executor, str) else executor
    owned = isinstance(executor, str) and pool is not None
    attempt_fn = _Attempt(fn, retry_on)

    def fresh_threads():
        nonlocal pool
        old, pool = pool, _make_pool("threads")
        old.shutdown(wait=False)
        return pool

    if owner is not None:
        fresh = owner._fresh_threads if owner.executor == "threads" else None
    else:
        fresh = fresh_threads if executor == "threads" else None

    N = len(inputs)
    last: list[_Outcome | None] = [None] * N
    spent, tries = [0.0] * N, [0] * N
    pending = list(range(N))
    hung, aborted = False, True
    try:
        for attempt in range(retries + 1):
            if owner is not None:
                pool = owner._get()
            outcomes, round_hung = _run_round(pool, attempt_fn, inputs, pending, timeout,
                                              retry_on, fresh)
            hung |= round_hung
            retry = []
            for i in pending:
                out = outcomes[i]
                last[i], tries[i], spent[i] = out, tries[i] + 1, spent[i] + out.elapsed
                if out.error is not None:
                    if out.retryable and attempt < retries:
                        _LOG.info("member %d failed (attempt %d), retrying: %s",
                                  i, tries[i], out.error)
                        retry.append(i)
                    else:
                        _LOG.info("member %d failed after %d attempt(s): %s",
                                  i, tries[i], out.error)
            pending = retry
            if round_hung and fresh is not None and (pending or owner is not None):
                fresh()  # threads held by members that timed out: the next round or
                # call starts with all its threads free
            if not pending:
                break
        aborted = False
    finally:
        if owned:
            _close_pool(pool, hung, aborted)
    results = [MemberResult(i, out.value, out.error, spent[i], tries[i])
               for i, out in enumerate(last)]
    _LOG.debug("evaluated %d members: %d failed", N, sum(not r.ok for r in results))
    return results


# -------------------------------------------------------------- Dask ----


class DaskExecutor(concurrent.futures.Executor):
    """The ``concurrent.futures`` face of a ``distributed.Client``
    (``client.get_executor(pure=False)``: equal inputs are evaluated again,
    never served from a cached result). ``shutdown`` closes the client
    and, for a ``LocalCluster`` it started, the cluster. ``client`` is the
    client itself (dashboards, scaling)."""

    def __init__(self, client: Any):
        self.client = client
        self._executor = client.get_executor(pure=False)

    def submit(self, fn, /, *args, **kwargs):
        return self._executor.submit(fn, *args, **kwargs)

    def _run_all(self, fn: Callable, inputs: list) -> list:
        """``[fn(x) for x in inputs]`` on the cluster, submitted in one
        ``client.map`` and gathered in one call (faster than one round trip
        per member); a member whose task itself errs (a lost worker) gets
        an ``_Outcome`` failure record."""
        futures = self.client.map(fn, inputs, pure=False)
        try:
            return self.client.gather(futures)
        except Exception:  # noqa: BLE001 - find which members erred, one by one
            out = []
            for f in futures:
                try:
                    out.append(f.result())
                except Exception as err:  # noqa: BLE001
                    out.append(_Outcome(None, _describe(err), False, 0.0))
            return out

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return self._executor.map(fn, *iterables, timeout=timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=wait)
        self.client.close()


def dask_executor(address: str | None = None, *, n_workers: int | None = None,
                  threads_per_worker: int = 1, processes: bool = True) -> DaskExecutor:
    """An executor on a Dask cluster: a new ``LocalCluster`` on this
    machine (address None), or the scheduler at ``address``
    (``"tcp://host:8786"``) for a real cluster.

    n_workers, threads_per_worker, processes: the LocalCluster's workers
    (n_workers None: Dask's default for this machine; processes=False runs
    the workers as threads of this process, enough for external programs).
    They describe a cluster enkit starts, so giving them with ``address``
    is an error. A local cluster of processes listens on 127.0.0.1 only
    (thread workers use no sockets); no dashboard is started. Needs ``distributed`` (``pip install 'enkit[dask]'``).
    Use as a context manager, or call ``shutdown()``.
    """
    try:
        from distributed import Client
    except ImportError as err:
        raise ImportError("dask_executor needs the 'distributed' package: "
                          "pip install 'enkit[dask]' (or 'dask[distributed]')") from err
    if address is not None:
        if n_workers is not None or threads_per_worker != 1 or processes is not True:
            raise ValueError("n_workers/threads_per_worker/processes describe a local cluster; "
                             "with an address the cluster already exists: leave them unset")
        return DaskExecutor(Client(address))
    if n_workers is not None:
        _check_workers(n_workers)
    _check_workers(threads_per_worker)
    # worker processes talk over TCP on the loopback interface only; thread
    # workers (processes=False) use Dask's in-process transport, no sockets
    where = {"host": "127.0.0.1"} if processes else {}
    client = Client(n_workers=n_workers, threads_per_worker=threads_per_worker,
                    processes=processes, dashboard_address=None, **where)
    return DaskExecutor(client)
