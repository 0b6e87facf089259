"""enkit's process pool (what ``enkit.executors.process_pool`` returns):
worker processes that each run one task at a time, so that a task that runs
past its time limit can be stopped without touching the others.

Each worker is a ``multiprocessing`` process with a pipe of its own. The
pool's manager thread hands a queued task to an idle worker; the worker
loads the function and its arguments, says that the call has begun, calls
it and sends back the value or the exception. A task submitted with a limit
(``ProcessPool.submit_limited``) that is still running ``limit`` seconds
after its call began has its future failed with ``Overrun``; its worker is
sent SIGTERM (raised in the worker as ``SystemExit``, so ``finally`` blocks
run and an ``enkit.external.ExternalModel`` kills its program), SIGKILL
``_GRACE`` seconds later if still alive, and a fresh worker takes its place
when there is work for it. A worker that dies during a task (a crash,
``os._exit``, a signal) fails that task with ``WorkerDied`` and is replaced
likewise. The loading of a task and a worker's start-up do not count
against its limit.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import concurrent.futures.process
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.util  # (imported first: its exit handler must run after ours)
import os
import pickle
import signal
import threading
import time
import traceback
import weakref
from multiprocessing.reduction import ForkingPickler
from typing import Any

__all__ = ["Overrun", "ProcessPool", "WorkerDied"]

_LOG = logging.getLogger("enkit.executors")
_GRACE = 2.0  # seconds from SIGTERM to SIGKILL for a worker being stopped
_FAILED_STARTS = 3  # workers in a row that die before they are ready: the pool is broken


class Overrun(TimeoutError):
    """A task was still running ``limit`` seconds after its call began; its
    worker process was stopped. elapsed: seconds from the call's start."""

    def __init__(self, limit: float, elapsed: float):
        super().__init__(f"ran past its limit of {limit} s; its worker process was stopped")
        self.limit, self.elapsed = limit, elapsed


class WorkerDied(RuntimeError):
    """The worker process running a task died, or the pool was shut down
    while the task ran."""


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` of an exception
    raised by a task."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


# ------------------------------------------------------------ worker ----


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _reply(conn, ok: bool, payload: Any) -> None:
    tb = None if ok else traceback.format_exc()
    try:
        data = ForkingPickler.dumps(("done", ok, payload, tb))
    except Exception as err:  # noqa: BLE001 - an unpicklable value or exception
        what = "value" if ok else f"exception ({_describe(payload)})"
        data = ForkingPickler.dumps(("done", False, RuntimeError(
            f"the task's {what} could not be pickled: {_describe(err)}"), tb))
    conn.send_bytes(data)


def _worker_main(conn) -> None:
    """A worker: run the tasks that come through ``conn``, one at a time,
    until an empty message (or the parent's end of the pipe closing)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        conn.send(("ready", os.getpid()))
        while True:
            data = conn.recv_bytes()
            if not data:
                return
            try:
                fn, args, kwargs = pickle.loads(data)
            except Exception as err:  # noqa: BLE001 - the task fails; nothing ran
                _reply(conn, False, err)
                continue
            conn.send(("started",))
            try:
                value = fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - sent back to the task's future
                _reply(conn, False, err)
            else:
                _reply(conn, True, value)
            fn = args = kwargs = data = value = None  # (hold nothing between tasks)
    except (KeyboardInterrupt, SystemExit, EOFError, OSError):
        return  # stopped, interrupted, or the parent has gone


# -------------------------------------------------------------- pool ----


class _Task:
    __slots__ = ("future", "limit", "payload")

    def __init__(self, future, payload, limit):
        self.future, self.payload, self.limit = future, payload, limit


class _Worker:
    __slots__ = ("began", "conn", "process", "ready", "task")

    def __init__(self, process, conn):
        self.process, self.conn = process, conn
        self.ready, self.task, self.began = False, None, None


_POOLS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_all_pools() -> None:  # a pool never shut down must not hold the exit
    for pool in list(_POOLS):
        pool.terminate()


class ProcessPool(concurrent.futures.Executor):
    """A pool of ``n_workers`` worker processes, each running one task at a
    time (``submit``, ``map``, ``shutdown`` as for any ``Executor``).

    ``submit_limited`` gives a task a time limit, counted from when its call
    began in a worker: at the limit its future fails with ``Overrun`` and its
    worker is stopped and replaced. Workers start when there is work for
    them; at the interpreter's exit a pool not shut down is terminated.
    mp_context: a ``multiprocessing`` context (forkserver or spawn).
    """

    def __init__(self, n_workers: int, *, mp_context):
        self._n, self._ctx = n_workers, mp_context
        self._lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._workers: list[_Worker] = []
        self._dying: list[list] = []  # [process, time of SIGKILL]
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._woken = False
        self._shutdown = self._aborted = False
        self._broken: str | None = None
        self._failed_starts = 0
        self._finished: list[tuple] = []  # (future, ok, value or exception) to resolve
        self._thread: threading.Thread | None = None
        _POOLS.add(self)

    def __repr__(self) -> str:
        return f"ProcessPool(n_workers={self._n}, start_method={self._ctx.get_start_method()!r})"

    @property
    def n_workers(self) -> int:
        """The number of worker processes the pool keeps when busy."""
        return self._n

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        return self._enqueue(fn, args, kwargs, None)

    def submit_limited(self, fn, args: tuple, limit: float) -> concurrent.futures.Future:
        """``fn(*args)`` with at most ``limit`` seconds of run time (see the
        class docstring)."""
        return self._enqueue(fn, args, {}, limit)

    def _enqueue(self, fn, args, kwargs, limit) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        try:
            payload = ForkingPickler.dumps((fn, args, kwargs))
        except Exception as err:  # noqa: BLE001 - e.g. a lambda: the future fails
            future.set_exception(err)
            return future
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._broken is not None:
                raise concurrent.futures.process.BrokenProcessPool(self._broken)
            self._queue.append(_Task(future, payload, limit))
            if self._thread is None:
                self._thread = threading.Thread(target=self._manage, daemon=True,
                                                name="enkit-process-pool")
                self._thread.start()
            self._wake()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            cancelled = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
            thread = self._thread
            if thread is not None:
                self._wake()
            else:
                self._close_pipes()
        for task in cancelled:  # (callbacks run outside the lock: they may submit)
            task.future.cancel()
        if wait and thread is not None:
            thread.join()

    def terminate(self) -> None:
        """Stop at once: fail queued and running tasks, stop every worker
        (SIGTERM, then SIGKILL) and wait for them to exit."""
        with self._lock:
            self._shutdown = self._aborted = True
            procs = [w.process for w in self._workers] + [p for p, _ in self._dying]
            for task in [w.task for w in self._workers if w.task] + list(self._queue):
                self._resolve(task.future, False, WorkerDied("the pool was terminated"))
            self._workers, self._dying = [], []
            self._queue.clear()
            if self._thread is not None:
                self._wake()
            else:
                self._close_pipes()
        self._flush()
        _stop_processes(procs)

    # ---- manager thread (what follows runs there, under the lock, except
    # ---- _flush, which sets the futures' outcomes once it is released) ----

    def _wake(self) -> None:
        if not self._woken and not self._wake_w.closed:
            self._woken = True
            self._wake_w.send_bytes(b"w")

    def _resolve(self, future, ok: bool, payload: Any) -> None:
        """Note a future's outcome, to be set by ``_flush`` once the lock is
        released (its callbacks may call ``submit``)."""
        self._finished.append((future, ok, payload))

    def _flush(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
        for future, ok, payload in finished:
            try:
                if ok:
                    future.set_result(payload)
                else:
                    future.set_exception(payload)
            except concurrent.futures.InvalidStateError:
                pass  # a queued task the caller cancelled meanwhile

    def _manage(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as err:  # noqa: BLE001 - never leave a future unresolved
            _LOG.error("enkit process pool: manager thread failed: %s", _describe(err))
            with self._lock:
                self._broken = f"the pool's manager thread failed: {_describe(err)}"
            self.terminate()
        finally:
            with self._lock:
                workers, dying = self._workers, self._dying
                self._workers, self._dying = [], []
            for w in workers:
                try:
                    w.conn.send_bytes(b"")
                except OSError:
                    pass
            for process, kill_at in dying:  # already sent SIGTERM: SIGKILL when due
                process.join(max(0.0, kill_at - time.monotonic()) if kill_at < math.inf
                             else None)
                if process.exitcode is None:
                    process.kill()
                    process.join()
            _stop_processes([w.process for w in workers], patience=_GRACE)
            for w in workers:
                w.conn.close()
            with self._lock:
                self._close_pipes()
            self._flush()

    def _close_pipes(self) -> None:
        self._wake_r.close()
        self._wake_w.close()

    def _step(self) -> bool:
        try:
            return self._step_locked()
        finally:
            self._flush()

    def _step_locked(self) -> bool:
        with self._lock:
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
            self._woken = False
            if self._aborted:
                return False
            self._dispatch()
            if self._shutdown and not self._queue and all(w.task is None for w in self._workers):
                return False
            objects = [self._wake_r]
            due = math.inf
            for w in self._workers:
                objects += [w.conn, w.process.sentinel]
                if w.task is not None and w.task.limit is not None and w.began is not None:
                    due = min(due, w.began + w.task.limit)
            for p, kill_at in self._dying:
                objects.append(p.sentinel)
                due = min(due, kill_at)
        self._flush()
        timeout = None if due == math.inf else max(0.0, due - time.monotonic())
        ready = set(multiprocessing.connection.wait(objects, timeout))
        with self._lock:
            if self._aborted:
                return False
            for w in list(self._workers):
                if w.conn in ready or w.process.sentinel in ready:
                    self._read(w)
            self._enforce_limits(time.monotonic())
            self._dispatch()  # the next tasks first, then the finished ones' futures
        return True

    def _dispatch(self) -> None:
        if self._broken is not None:
            while self._queue:
                task = self._queue.popleft()
                self._resolve(task.future, False,
                              concurrent.futures.process.BrokenProcessPool(self._broken))
            return
        for w in self._workers:
            while w.ready and w.task is None and self._queue:
                task = self._queue.popleft()
                if not task.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                w.task, w.began = task, None
                try:
                    w.conn.send_bytes(task.payload)
                except OSError:
                    pass  # the worker has died: its sentinel reports it, with the task
        starting = sum(not w.ready for w in self._workers)
        for _ in range(min(self._n - len(self._workers), len(self._queue) - starting)):
            try:
                self._spawn()
            except Exception as err:  # noqa: BLE001 - e.g. out of processes
                _LOG.error("enkit process pool: cannot start a worker: %s", _describe(err))
                if not self._workers:
                    self._broken = f"cannot start a worker process: {_describe(err)}"
                    self._dispatch()
                return

    def _spawn(self) -> None:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child,),
                                    name="enkit-worker")
        try:
            process.start()
        finally:
            child.close()
        self._workers.append(_Worker(process, parent))

    def _read(self, w: _Worker) -> None:
        """Take every message ``w`` has sent; then, if it has died, fail its
        task and drop it."""
        eof = False
        try:
            while w.conn.poll():
                data = w.conn.recv_bytes()
                try:
                    message = pickle.loads(data)
                except Exception as err:  # noqa: BLE001 - e.g. a class unknown here
                    message = ("done", False, RuntimeError(
                        f"the task's result could not be unpickled: {_describe(err)}"), None)
                self._handle(w, message)
        except (EOFError, OSError):
            eof = True
        if eof:
            w.process.join(1.0)  # its end of the pipe closed: it is exiting
        if w.process.exitcode is None:
            if eof:
                self._stop(w, time.monotonic())
            return
        code = w.process.exitcode
        w.process.join()
        self._workers.remove(w)
        w.conn.close()
        if not w.ready:
            self._failed_starts += 1
            _LOG.error("enkit process pool: a worker exited (code %s) before it was ready", code)
            if self._failed_starts >= _FAILED_STARTS:
                self._broken = (f"{self._failed_starts} worker processes in a row exited "
                                f"(code {code}) before they were ready")
        if w.task is not None:
            _LOG.info("enkit process pool: worker %s died (exit code %s) running a task",
                      w.process.pid, code)
            self._resolve(w.task.future, False, WorkerDied(
                f"the worker process (pid {w.process.pid}) died running the task "
                f"(exit code {code})"))
        w.process.close()

    def _handle(self, w: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            w.ready, self._failed_starts = True, 0
        elif kind == "started":
            w.began = time.monotonic()
        elif kind == "done" and w.task is not None:
            _, ok, payload, tb = message
            task, w.task, w.began = w.task, None, None
            if not ok and tb is not None and isinstance(payload, BaseException):
                payload.__cause__ = _RemoteTraceback(tb)
            self._resolve(task.future, ok, payload)

    def _enforce_limits(self, now: float) -> None:
        for w in list(self._workers):
            task = w.task
            if task is not None and task.limit is not None and w.began is not None \
                    and now - w.began >= task.limit:
                _LOG.info("enkit process pool: stopping worker %s: its task ran past %s s",
                          w.process.pid, task.limit)
                w.task = None
                self._resolve(task.future, False, Overrun(task.limit, now - w.began))
                self._stop(w, now)
        for entry in list(self._dying):
            process, kill_at = entry
            if process.exitcode is not None:
                process.join()
                process.close()
                self._dying.remove(entry)
            elif now >= kill_at:
                process.kill()
                entry[1] = math.inf

    def _stop(self, w: _Worker, now: float) -> None:
        """Send ``w`` SIGTERM and let it go (SIGKILL after the grace time)."""
        self._workers.remove(w)
        w.conn.close()
        w.process.terminate()
        self._dying.append([w.process, now + _GRACE])
        if w.task is not None:
            self._resolve(w.task.future, False, WorkerDied(
                f"the worker process (pid {w.process.pid}) stopped answering"))


def _stop_processes(processes: list, patience: float = 0.0) -> None:
    """Wait ``patience`` seconds for processes to exit, then SIGTERM the
    rest, SIGKILL after the grace time, and reap them all."""
    deadline = time.monotonic() + patience
    for p in processes:
        try:
            p.join(max(0.0, deadline - time.monotonic()))
        except ValueError:  # already closed
            continue
    live = [p for p in processes if _exitcode(p) is None]
    for p in live:
        p.terminate()
    deadline = time.monotonic() + _GRACE
    for p in live:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join()


def _exitcode(p):
    try:
        return p.exitcode
    except ValueError:  # closed: it had exited
        return 0
