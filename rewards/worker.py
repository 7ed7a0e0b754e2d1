"""The verifier worker process body: ``serve(conn)``.

Started by ``rewards.worker_pool`` from a ``forkserver`` that has this module (and sympy) preloaded,
so a new worker is a cheap fork, never a fork of the caller's threads. It receives task dicts on a
pipe and sends one result dict per task; it sends ``"ready"`` first. Two kinds of task:

* a comparison ``{"gold", "pred", "config"}`` (from ``rewards.verifier``) -> ``{"equal", "reason", "status"}``;
* a whole item ``{"score": {"completion", "gold", "response_tokens"}, "reward": RewardConfig dict}`` (from
  the reward service): extraction, comparison and shaping all run here, under the one time limit the
  parent enforces -> ``{"equal", "status", "reason", "extracted", "source", "reward", "parts"}``.

The parent enforces the time limit by killing this process; a watchdog thread exits when the parent
dies, so an orphaned worker never burns CPU for long. Inside a worker, ``rewards.worker_pool.shared_pool``
returns this process's :class:`InlinePool` (:func:`inline_pool`): the verifier called from here (a whole
item scored under one limit) runs its comparisons in place.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict

MAX_CACHED_CONFIGS = 64
"""Parsed configs kept per worker (keyed by their JSON), least recently used dropped first."""


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _config(task: dict, configs: OrderedDict, field: str, cls):
    key = (field, task.get("config_key", ""))
    cfg = configs.get(key)
    if cfg is None:
        cfg = configs[key] = cls.model_validate(task.get(field) or {})
        while len(configs) > MAX_CACHED_CONFIGS:
            configs.popitem(last=False)
    else:
        configs.move_to_end(key)
    return cfg


def _score(task: dict, configs: OrderedDict) -> dict:
    from rewards.config import RewardConfig
    from rewards.shaping import score_batch

    r = score_batch([task["score"]], _config(task, configs, "reward", RewardConfig))[0]
    v = r.verdict
    return {"equal": v.correct, "status": v.status, "reason": v.reason[:300], "extracted": v.extracted,
            "source": v.source, "reward": r.total,
            "parts": {"correctness": r.correctness, "format": r.format, "overlong": r.overlong}}


def handle(task: dict, configs: OrderedDict) -> dict:
    from rewards.config import VerifyConfig
    from rewards.equivalence import GoldError, compare

    if task.get("ping"):
        return {"equal": False, "reason": "pong", "status": "ok"}
    try:
        if "score" in task:
            return _score(task, configs)
        equal, reason = compare(task["gold"], task["pred"], _config(task, configs, "config", VerifyConfig))
        return {"equal": equal, "reason": reason[:300], "status": "correct" if equal else "wrong"}
    except GoldError as e:
        return {"equal": False, "reason": str(e)[:300], "status": "unparsable_gold"}
    except RecursionError:
        return {"equal": False, "reason": "expression too deeply nested", "status": "error"}
    except Exception as e:  # noqa: BLE001 - a verdict, never a crash, for any input
        return {"equal": False, "reason": f"{type(e).__name__}: {str(e)[:200]}", "status": "error"}


class InlinePool:
    """The pool of a verifier worker process: runs tasks right here (the parent's kill is the time limit)."""

    size = 1
    restarts = 0
    timeouts = 0

    def __init__(self) -> None:
        self._configs: OrderedDict = OrderedDict()

    def run(self, tasks: list[dict], timeout_s: float, deadline: float | None = None) -> list[dict]:
        return [handle(t, self._configs) for t in tasks]

    def warm_up(self, wait: bool = False) -> float:
        return 0.0

    def resize(self, num_workers: int) -> None:
        pass

    def close(self) -> None:
        pass


_inline: tuple[int, InlinePool] | None = None


def inline_pool() -> InlinePool | None:
    """This process's :class:`InlinePool` when it is a verifier worker (``serve`` runs in it), else None."""
    return _inline[1] if _inline is not None and _inline[0] == os.getpid() else None


def serve(conn) -> None:
    """Worker loop on a ``multiprocessing`` connection; returns when the parent closes it."""
    global _inline
    sys.set_int_max_str_digits(0)
    _inline = (os.getpid(), InlinePool())  # the verifier called from here runs its comparisons in this process
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    import rewards.equivalence  # noqa: F401 - pay the sympy import (if not preloaded) before saying ready

    conn.send("ready")
    configs: OrderedDict = OrderedDict()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(handle(task, configs))
