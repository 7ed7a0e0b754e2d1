"""A pool of verifier worker processes with hard per-item time limits.

Workers are started with the ``forkserver`` start method, the server preloading ``rewards.worker``
and sympy: the caller is never forked (safe from any thread, inside uvicorn, gRPC servers and Ray
actors), and a replacement worker is a ~10 ms fork instead of a ~1 s interpreter start. The
calling thread sends a task down a pipe and waits on the pipes with ``select`` until the item's
deadline; past it, the worker is killed (SIGKILL to that one process, never a signal handler in
the caller) and a replacement is started at once, so the pool recovers while the batch goes on.
Thread-safe; one pool per process (``shared_pool``).
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

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0


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


class _Worker:
    def __init__(self) -> None:
        from rewards.worker import serve

        ctx = _context()
        self.conn, child = ctx.Pipe()
        self.proc = VerifierProcess(target=serve, args=(child,), daemon=True, name="flywheel-verifier")
        self.proc.start()
        child.close()
        self.fd = self.conn.fileno()
        self.ready = False
        self.started = time.monotonic()

    def send(self, task: dict) -> None:
        self.conn.send(task)

    def read_messages(self) -> list | None:
        """Messages available now; None at EOF (the worker died)."""
        out = []
        try:
            while self.conn.poll():
                out.append(self.conn.recv())
        except (EOFError, OSError):
            return out or None
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
    """``run(tasks, timeout_s)`` -> one result dict per task, in order (``status`` is always set)."""

    def __init__(self, num_workers: int = 2):
        self.size = num_workers
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self.restarts = 0
        """Workers killed (time limit) or died, and replaced."""
        self.timeouts = 0
        self._closed = False

    def resize(self, num_workers: int) -> None:
        with self._cond:
            self.size = max(self.size, num_workers)
            self._cond.notify_all()

    def warm_up(self, wait: bool = False) -> float:
        """Start all workers now (they import sympy in parallel); with ``wait``, until all answer. Seconds taken."""
        t0 = time.monotonic()
        with self._cond:
            while self._live < self.size:
                self._idle.append(_Worker())
                self._live += 1
        if wait:
            self.run([{"ping": True}] * self.size, STARTUP_TIMEOUT_S)
        return time.monotonic() - t0

    def _acquire(self, block: bool) -> _Worker | None:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("verifier pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._live < self.size:
                    self._live += 1
                    return _Worker()
                if not block:
                    return None
                self._cond.wait()

    def _release(self, w: _Worker) -> None:
        with self._cond:
            if self._closed:
                w.kill()
                return
            self._idle.append(w)
            self._cond.notify()

    def _replace(self, w: _Worker, why: str) -> None:
        w.kill()
        with self._cond:
            self.restarts += 1
            if self._closed:
                self._live -= 1
                return
            self._idle.append(_Worker())  # starts importing now; ready by the time it is needed
            self._cond.notify()
        log.info("verifier worker pid %d replaced (%s); %d restarts so far", w.proc.pid, why, self.restarts)

    def run(self, tasks: list[dict], timeout_s: float) -> list[dict]:
        results: list[dict | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        inflight: dict[int, tuple[_Worker, int, float]] = {}  # fd -> (worker, index, deadline)
        try:
            while pending or inflight:
                while pending:
                    w = self._acquire(block=not inflight)
                    if w is None:
                        break
                    idx = pending.popleft()
                    try:
                        w.send(tasks[idx])
                    except (BrokenPipeError, OSError, ValueError):
                        results[idx] = _failed("worker pipe broken")
                        self._replace(w, "broken pipe")
                        continue
                    start = time.monotonic()
                    deadline = start + timeout_s if w.ready else w.started + STARTUP_TIMEOUT_S
                    inflight[w.fd] = (w, idx, deadline)
                now = time.monotonic()
                wait = max(0.0, min(d for _, _, d in inflight.values()) - now)
                readable, _, _ = select.select(list(inflight), [], [], wait)
                for fd in readable:
                    w, idx, deadline = inflight[fd]
                    messages = w.read_messages()
                    if messages is None:
                        del inflight[fd]
                        results[idx] = _failed(f"worker died (exit code {w.proc.exitcode})")
                        self._replace(w, "died")
                        continue
                    for msg in messages:
                        if msg == "ready":
                            w.ready = True
                            inflight[fd] = (w, idx, time.monotonic() + timeout_s)
                        else:
                            results[idx] = msg
                            del inflight[fd]
                            self._release(w)
                now = time.monotonic()
                for fd, (w, idx, deadline) in list(inflight.items()):
                    if now >= deadline:
                        del inflight[fd]
                        if w.ready:
                            self.timeouts += 1
                            results[idx] = {"equal": False, "status": "timeout",
                                            "reason": f"exceeded the {timeout_s:g} s time limit; worker killed"}
                        else:
                            results[idx] = _failed(f"worker did not start within {STARTUP_TIMEOUT_S:g} s")
                        self._replace(w, "time limit")
        finally:
            for w, idx, _ in inflight.values():  # interrupted (e.g. KeyboardInterrupt): do not leak
                self._replace(w, "interrupted")
        return [r if r is not None else _failed("not run") for r in results]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for w in idle:
            w.kill()


def _failed(reason: str) -> dict:
    return {"equal": False, "status": "error", "reason": reason}


_shared: tuple[int, WorkerPool] | None = None
_shared_lock = threading.Lock()


def shared_pool(num_workers: int = 2) -> WorkerPool:
    """The process-wide pool (re-created after a fork); grows to ``num_workers`` if asked."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            _shared = (os.getpid(), WorkerPool(num_workers))
        else:
            _shared[1].resize(num_workers)
        return _shared[1]


@atexit.register
def _close_shared() -> None:
    if _shared is not None and _shared[0] == os.getpid():
        _shared[1].close()
