"""The verifier worker process body: ``serve(conn)``.

Started by ``rewards.worker_pool`` from a ``forkserver`` that has this module (and sympy) preloaded,
so a new worker is a cheap fork, never a fork of the caller's threads. It receives task dicts
(``{"gold", "pred", "config"}``) on a pipe and sends result dicts (``{"equal", "reason", "status"}``);
it sends ``"ready"`` first. The parent enforces the time limit by killing this process; a watchdog
thread exits when the parent dies, so an orphaned worker never burns CPU for long.
"""

from __future__ import annotations

import os
import sys
import threading
import time


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def handle(task: dict, configs: dict) -> dict:
    from rewards.config import VerifyConfig
    from rewards.equivalence import GoldError, compare

    if task.get("ping"):
        return {"equal": False, "reason": "pong", "status": "ok"}
    key = task.get("config_key", "")
    cfg = configs.get(key)
    if cfg is None:
        cfg = configs[key] = VerifyConfig.model_validate(task.get("config") or {})
    try:
        equal, reason = compare(task["gold"], task["pred"], cfg)
        return {"equal": equal, "reason": reason[:300], "status": "correct" if equal else "wrong"}
    except GoldError as e:
        return {"equal": False, "reason": str(e)[:300], "status": "unparsable_gold"}
    except RecursionError:
        return {"equal": False, "reason": "expression too deeply nested", "status": "error"}
    except Exception as e:  # noqa: BLE001 - a verdict, never a crash, for any input
        return {"equal": False, "reason": f"{type(e).__name__}: {str(e)[:200]}", "status": "error"}


def serve(conn) -> None:
    """Worker loop on a ``multiprocessing`` connection; returns when the parent closes it."""
    sys.set_int_max_str_digits(0)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    import rewards.equivalence  # noqa: F401 - pay the sympy import (if not preloaded) before saying ready

    conn.send("ready")
    configs: dict = {}
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(handle(task, configs))
