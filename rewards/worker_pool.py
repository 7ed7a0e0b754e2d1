"""A pool of verifier worker processes with hard per-item time limits and fair scheduling.

Workers are started with the ``forkserver`` start method, the server preloading ``rewards.worker``
and sympy: the caller is never forked (safe from any thread, inside uvicorn, gRPC servers and Ray
actors), and a replacement worker is a ~10 ms fork instead of a ~1 s interpreter start.

One dispatcher thread owns the workers. ``run(tasks, timeout_s, deadline)`` hands it a *job* and
waits. Each free worker takes the next task of the job that has used the least worker time so far
(least attained service; ties go round robin), so a caller with many or slow items never starves
the others: a fresh request overtakes one whose items already ran into their limit. Items cannot be
preempted, so while items run longer than ``SLOW_ITEM_S`` and work waits, the pool starts up to
``burst`` extra workers (retired when idle again): a few slow items never hold every worker. A worker
whose item turns slow is also lowered to nice ``SLOW_NICE`` (and replaced by a fresh one when that item
ends), so under CPU contention slow items get the CPU that quick ones leave. The
dispatcher waits on the workers' pipes with ``select``; an item past its time limit (or past its
job's deadline) is answered ``timeout``, its worker killed (SIGKILL to that one process, never a
signal handler in the caller) and replaced at once. Tasks a job could not start before its deadline
get ``timeout`` without running. Thread-safe; one pool per process (``shared_pool``). Inside a worker process
``shared_pool`` returns the worker's :class:`rewards.worker.InlinePool` instead, so code that calls the
verifier there (a whole item scored under one limit) runs in place.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import select
import threading
import time
from collections import deque
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.context import ForkServerProcess, set_spawning_popen

from rewards.worker import inline_pool, serve

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0
"""How long a new worker may take to say it is ready."""
SLOW_ITEM_S = 0.25
"""An item running longer than this counts as slow: its worker is niced, and while it runs and work waits, a
burst worker may start."""
SLOW_NICE = 10
"""Niceness of a worker running a slow item."""


def _context():
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["rewards.worker", "rewards.worker_preload"])  # no "__main__": never re-run scripts
    return ctx


class _NoMainPopen(popen_forkserver.Popen):
    """Forkserver launch whose child skips re-importing the caller's ``__main__`` script.

    multiprocessing normally re-runs an unguarded ``__main__`` script in every child; the worker
    only needs ``rewards.worker``, so the main-module entries are dropped from the preparation data.
    """

    def _launch(self, process_obj):  # CPython's _launch, minus the __main__ preparation
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class VerifierProcess(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        return _NoMainPopen(process_obj)


class _Job:
    """One ``run`` call: its tasks, limits and results (touched by the dispatcher thread only)."""

    def __init__(self, tasks: list[dict], timeout_s: float, deadline: float | None):
        self.tasks = tasks
        self.timeout_s = timeout_s
        self.deadline = deadline
        self.results: list[dict | None] = [None] * len(tasks)
        self.pending = deque(range(len(tasks)))
        self.inflight = 0
        self.attained = 0.0
        """Worker seconds its finished items used (the scheduler serves the least first)."""
        self.dispatched = 0
        self.done = threading.Event()

    def settle(self, idx: int, result: dict) -> None:
        self.results[idx] = result
        self.inflight -= 1
        self.attained += result.get("elapsed_ms", 0.0) / 1e3
        self.check_done()

    def check_done(self) -> None:
        if not self.pending and self.inflight == 0:
            self.done.set()


class _Worker:
    def __init__(self) -> None:
        ctx = _context()
        self.conn, child = ctx.Pipe()
        self.proc = VerifierProcess(target=serve, args=(child,), daemon=True, name="flywheel-verifier")
        self.proc.start()
        child.close()
        self.fd = self.conn.fileno()
        self.ready = False
        self.started = time.monotonic()
        self.job: _Job | None = None
        self.idx = -1
        self.sent = 0.0
        self.deadline = 0.0
        self.niced = False

    def read_messages(self) -> list | None:
        """Messages available now; None at EOF (the worker died)."""
        out = []
        try:
            while self.conn.poll():
                out.append(self.conn.recv())
        except (EOFError, OSError):
            return None
        return out

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass
        try:
            self.conn.close()
        except OSError:
            pass


class WorkerPool:
    """``run(tasks, timeout_s, deadline)`` -> one result dict per task, in order (``status`` is always set)."""

    def __init__(self, num_workers: int = 2, burst: int | None = None):
        self.size = num_workers
        self.burst = num_workers if burst is None else burst
        """Extra workers allowed while slow items run and work waits (None: as many as ``num_workers``)."""
        self.restarts = 0
        """Workers killed (time limit) or died, and replaced."""
        self.timeouts = 0
        """Items that hit their time limit or their job's deadline."""
        self.start_error: str | None = None
        """Why the last worker start failed (None once one starts again)."""
        self.dispatcher_error: str | None = None
        """Set if the dispatcher thread stopped on an unexpected error (the pool then refuses work)."""
        self._lock = threading.Condition()
        self._new: deque[_Job] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # owned by the dispatcher thread:
        self._workers: dict[int, _Worker] = {}
        self._rotation: deque[_Job] = deque()
        self._ready = 0
        self._next_start = 0.0

    # ---- callers
    def resize(self, num_workers: int) -> None:
        with self._lock:
            self.size = max(self.size, num_workers)
        self._wake()

    def warm_up(self, wait: bool = False) -> float:
        """Start all workers now (they import sympy in parallel); with ``wait``, until all are ready. Seconds taken."""
        t0 = time.monotonic()
        self._ensure_thread()
        if wait:
            with self._lock:
                self._lock.wait_for(lambda: self._ready >= self.size or self._stopped(),
                                    timeout=STARTUP_TIMEOUT_S)
        return time.monotonic() - t0

    def run(self, tasks: list[dict], timeout_s: float, deadline: float | None = None) -> list[dict]:
        """Results in order; each has ``elapsed_ms`` (time in a worker). ``deadline`` is a ``time.monotonic()``
        instant after which every unfinished task is answered ``timeout``."""
        if not tasks:
            return []
        job = _Job(list(tasks), timeout_s, deadline)
        self._ensure_thread()
        with self._lock:
            if self._stopped():
                raise RuntimeError("verifier pool is closed" if self._closed else
                                   f"verifier pool stopped: {self.dispatcher_error}")
            self._new.append(job)
        self._wake()
        try:
            job.done.wait()
        finally:
            if not job.done.is_set():  # the caller was interrupted: stop what has not started
                job.deadline = time.monotonic()
                self._wake()
        return [r if r is not None else _failed("not run") for r in job.results]

    def score(self, items: list[dict], config, deadline: float | None = None) -> list[dict]:
        """Score whole items (``completion``, ``gold``, ``response_tokens``) with a ``RewardConfig``: extraction,
        comparison and shaping all run in a worker under ``config.verify.timeout_s``. Each result has ``status``,
        ``reason``, ``elapsed_ms``; a scored one also ``equal``, ``extracted``, ``source``, ``reward``, ``parts``."""
        cfg, key = config.model_dump(), config.model_dump_json()
        tasks = [{"score": {k: it.get(k) for k in ("completion", "gold", "response_tokens")}, "reward": cfg,
                  "config_key": key} for it in items]
        return self.run(tasks, config.verify.timeout_s, deadline)

    def state(self) -> dict:
        """``ready`` workers of ``size`` (``busy`` of them running an item), ``restarts``, ``timeouts``, and
        ``error`` (None when the pool can serve)."""
        error = self.dispatcher_error or ("closed" if self._closed else None)
        if error is None and self._ready == 0 and self.start_error:
            error = f"no verifier worker is running: {self.start_error}"
        busy = sum(w.job is not None for w in list(self._workers.values()))
        return {"ready": self._ready, "busy": busy, "size": self.size, "restarts": self.restarts,
                "timeouts": self.timeouts, "error": error}

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    # ---- dispatcher
    def _stopped(self) -> bool:
        return self._closed or self.dispatcher_error is not None

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None and not self._stopped():
                self._thread = threading.Thread(target=self._dispatch, name="flywheel-verifier-dispatch",
                                                daemon=True)
                self._thread.start()

    def _dispatch(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                    self._rotation.extend(self._new)
                    self._new.clear()
                self._top_up()
                now = time.monotonic()
                self._expire(now)
                self._deprioritize_slow(now)
                self._assign(now)
                self._wait(now)
        except BaseException as e:  # noqa: BLE001 - never leave callers waiting on a dead dispatcher
            log.exception("verifier dispatcher stopped")
            self.dispatcher_error = f"{type(e).__name__}: {e}"
        finally:
            reason = "verifier pool closed" if self._closed else "verifier pool stopped"
            with self._lock:
                jobs = list(self._rotation) + list(self._new)
                self._new.clear()
                self._lock.notify_all()
            jobs += [w.job for w in self._workers.values() if w.job is not None]
            for w in list(self._workers.values()):
                w.kill()
            self._workers.clear()
            self._ready = 0
            for job in jobs:
                for i, r in enumerate(job.results):
                    if r is None:
                        job.results[i] = _failed(reason)
                job.pending.clear()
                job.done.set()

    def _target(self, now: float) -> int:
        """Workers wanted now: ``size``, plus one per slow item running (up to ``burst``) while work waits."""
        if not any(j.pending for j in self._rotation):
            return self.size
        slow = sum(1 for w in self._workers.values() if w.job is not None and now - w.sent > SLOW_ITEM_S)
        return self.size + min(slow, self.burst)

    def _top_up(self) -> None:
        now = time.monotonic()
        target = self._target(now)
        spare = max(0, len(self._workers) - target)
        for w in [w for w in self._workers.values() if w.ready and w.job is None][:spare]:
            self._retire(w)  # a burst worker nobody needs any more
        while len(self._workers) < target and now >= self._next_start:
            try:
                w = _Worker()
            except Exception as e:  # noqa: BLE001 - e.g. the forkserver cannot start: retry, say so in state()
                self.start_error = f"{type(e).__name__}: {e}"
                self._next_start = now + 1.0
                log.error("cannot start a verifier worker (%s); retrying in 1 s", self.start_error)
                if not self._workers:  # nothing can run: answer what waits instead of hanging
                    self._fail_pending(f"no verifier worker could be started: {self.start_error}")
                return
            self._workers[w.fd] = w

    def _fail_pending(self, reason: str) -> None:
        for job in self._rotation:
            while job.pending:
                job.results[job.pending.popleft()] = _failed(reason)
            job.check_done()
        self._rotation.clear()

    def _retire(self, w: _Worker) -> None:
        self._workers.pop(w.fd, None)
        self._ready -= 1
        w.kill()

    def _replace(self, w: _Worker, why: str) -> None:
        self._workers.pop(w.fd, None)
        if w.ready:
            self._ready -= 1
        w.kill()
        self.restarts += 1
        log.info("verifier worker pid %s replaced (%s); %d restarts so far", w.proc.pid, why, self.restarts)
        self._top_up()  # starts importing now; ready by the time it is needed

    def _expire(self, now: float) -> None:
        for job in self._rotation:  # tasks that could not start before their job's deadline
            if job.deadline is not None and now >= job.deadline and job.pending:
                while job.pending:
                    self.timeouts += 1
                    job.results[job.pending.popleft()] = {
                        "equal": False, "status": "timeout", "elapsed_ms": 0.0,
                        "reason": "the request's deadline passed before this item could run"}
                job.check_done()
        for w in list(self._workers.values()):
            if w.job is not None and now >= w.deadline:
                job, idx = w.job, w.idx
                self.timeouts += 1
                limit = ("the request's deadline" if job.deadline is not None and w.deadline >= job.deadline
                         else f"the {job.timeout_s:g} s time limit")
                self._replace(w, "time limit")
                job.settle(idx, {"equal": False, "status": "timeout", "elapsed_ms": (now - w.sent) * 1e3,
                                 "reason": f"exceeded {limit}; worker killed"})
            elif not w.ready and now >= w.started + STARTUP_TIMEOUT_S:
                self.start_error = f"a worker did not start within {STARTUP_TIMEOUT_S:g} s"
                self._replace(w, "did not start")

    def _deprioritize_slow(self, now: float) -> None:
        for w in self._workers.values():
            if w.job is not None and not w.niced and now - w.sent > SLOW_ITEM_S:
                w.niced = True
                try:
                    os.setpriority(os.PRIO_PROCESS, w.proc.pid, SLOW_NICE)
                except OSError:
                    pass

    def _assign(self, now: float) -> None:
        idle = [w for w in self._workers.values() if w.ready and w.job is None]
        while idle and self._rotation:
            job = min(self._rotation, key=lambda j: (j.attained, j.dispatched))  # least attained service first
            self._rotation.remove(job)
            if not job.pending:
                continue
            idx = job.pending.popleft()
            w = idle.pop()
            job.inflight += 1
            job.dispatched += 1
            try:
                w.conn.send(job.tasks[idx])
            except (BrokenPipeError, OSError, ValueError):
                self._replace(w, "broken pipe")
                job.settle(idx, _failed("worker pipe broken"))
            else:
                w.job, w.idx, w.sent = job, idx, now
                w.deadline = now + job.timeout_s
                if job.deadline is not None:
                    w.deadline = min(w.deadline, job.deadline)
            if job.pending:
                self._rotation.append(job)

    def _wait(self, now: float) -> None:
        deadlines = [w.deadline if w.job is not None else w.started + STARTUP_TIMEOUT_S
                     for w in self._workers.values() if w.job is not None or not w.ready]
        deadlines += [j.deadline for j in self._rotation if j.deadline is not None and j.pending]
        deadlines += [w.sent + SLOW_ITEM_S for w in self._workers.values()  # wake when a running item turns slow
                      if w.job is not None and not w.niced]
        if len(self._workers) < self._target(now):
            deadlines.append(self._next_start)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        readable, _, _ = select.select([self._wake_r, *self._workers], [], [], timeout)
        for fd in readable:
            if fd == self._wake_r:
                os.read(self._wake_r, 4096)
                continue
            w = self._workers.get(fd)
            if w is not None:
                self._on_readable(w)

    def _on_readable(self, w: _Worker) -> None:
        messages = w.read_messages()
        if messages is None:
            job, idx = w.job, w.idx
            self._replace(w, "died")
            if job is not None:
                job.settle(idx, _failed(f"worker died (exit code {w.proc.exitcode})"))
            return
        for msg in messages:
            if msg == "ready":
                w.ready = True
                self.start_error = None
                with self._lock:
                    self._ready += 1
                    self._lock.notify_all()
            elif w.job is not None:
                job, idx = w.job, w.idx
                w.job = None
                job.settle(idx, {**msg, "elapsed_ms": (time.monotonic() - w.sent) * 1e3})
                if w.niced:  # a niced process cannot be un-niced without privileges: start a fresh one
                    self._retire(w)
                    self._top_up()
                    return


def _failed(reason: str) -> dict:
    return {"equal": False, "status": "error", "reason": reason, "elapsed_ms": 0.0}


_shared: tuple[int, WorkerPool] | None = None
_shared_lock = threading.Lock()


def shared_pool(num_workers: int = 2, burst: int | None = None) -> WorkerPool:
    """The process-wide pool (re-created after a fork); grows to ``num_workers`` if asked. ``burst``: extra
    workers while slow items run (None: as many as ``num_workers``; set when the pool is created). Inside a
    verifier worker process: its :class:`rewards.worker.InlinePool`, which runs tasks in place."""
    global _shared
    inline = inline_pool()
    if inline is not None:
        return inline  # type: ignore[return-value]
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            _shared = (os.getpid(), WorkerPool(num_workers, burst))
        else:
            _shared[1].resize(num_workers)
        return _shared[1]  # type: ignore[return-value]


@atexit.register
def _close_shared() -> None:
    if _shared is not None and _shared[0] == os.getpid():
        _shared[1].close()
