"""The rollout service's view of its engines: what ``/healthz``, ``/readyz`` and gRPC health report, and
what brings a dead engine back.

Every ``interval_s`` (and at once when a request saw an engine fail) :meth:`FleetHealth.check`
moves the :class:`rollout.fleet.RolloutFleet` on (``poll()``: a worker whose process died is
restarted by Ray and rejoins with the current weights) and asks each up worker for its
``health()``, which says whether its vLLM engine can still generate. A worker whose engine died
exits on its own (``RolloutWorker.watch``), so Ray restarts it like any dead worker. When no worker
is left and none can come back, :attr:`FleetHealth.fatal` says why and the server exits non-zero.

- **ready** (``/readyz`` 200, gRPC ``SERVING``): at least one engine answered ``ok`` at the last check.
- **healthy** (``/healthz`` 200): the service can still serve or recover: every worker is ``ok`` or on its
  way back. ``/healthz`` answers 503 once the fleet is beyond recovery (the server then exits).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flywheel.rollout_server")


class FleetHealth:
    """Per-worker state (fleet state + engine state) and the check loop that keeps it current."""

    def __init__(self, fleet, interval_s: float = 1.0, answer_timeout_s: float = 30.0) -> None:
        self.fleet = fleet
        self.interval_s = interval_s
        self.answer_timeout_s = answer_timeout_s
        self.engine: dict[int, str] = {i: "ok" for i in range(len(fleet.workers))}
        """Per worker: ``ok``, ``starting``, ``no answer`` or why its engine cannot generate."""
        self.last_error: dict[int, str] = {}
        """Per worker: the last failure seen (kept after it recovered, for ``/healthz``)."""
        self.fatal: str | None = None
        """Set when no worker is left and none can come back: the server exits non-zero."""
        self.checked_at = 0.0
        self.listeners: list[Callable[[bool], Any]] = []
        """Called with the new readiness whenever it changes (gRPC health)."""
        self._kick: asyncio.Event | None = None
        self._was_ready: bool | None = None

    # ------------------------------------------------------------------ state
    def worker_state(self, i: int) -> str:
        state = self.fleet.state[i]
        if state != "up":
            return state  # rejoining | dead
        return "up" if self.engine.get(i) == "ok" else "unavailable"

    @property
    def ready(self) -> bool:
        return self.fatal is None and any(self.worker_state(i) == "up" for i in range(len(self.fleet.workers)))

    @property
    def healthy(self) -> bool:
        return self.fatal is None and any(self.fleet.state[i] != "dead" for i in range(len(self.fleet.workers)))

    def can_serve(self, i: int) -> bool:
        return self.worker_state(i) == "up"

    def snapshot(self) -> dict[str, Any]:
        workers = {}
        for i, wid in enumerate(self.fleet.ids):
            w: dict[str, Any] = {"state": self.worker_state(i), "engine": self.engine.get(i, "unknown")}
            if i in self.last_error:
                w["last_error"] = self.last_error[i]
            workers[wid] = w
        if self.fatal:
            status = "failed"
        elif self.ready and all(self.worker_state(i) == "up" for i in range(len(self.fleet.workers))):
            status = "ok"
        elif self.ready:
            status = "degraded"
        else:
            status = "unavailable"
        out: dict[str, Any] = {"status": status, "ready": self.ready, "workers_detail": workers,
                               "checked_s_ago": round(time.monotonic() - self.checked_at, 1) if self.checked_at else None}
        if self.fatal:
            out["error"] = self.fatal
        return out

    # ------------------------------------------------------------------ checks
    def kick(self) -> None:
        """Check now (a request just saw an engine fail)."""
        if self._kick is not None:
            self._kick.set()

    async def check(self) -> None:
        """One round: move the fleet on, then ask every up worker how its engine is."""
        try:
            self.fleet.poll()
        except RuntimeError as e:  # every worker gone for good
            last = "; ".join(f"{self.fleet.ids[i]}: {m}" for i, m in self.last_error.items())
            self.fatal = f"{e}" + (f" (last errors: {last})" if last else "")
            log.error("rollout service cannot serve any more: %s", self.fatal)
        up = self.fleet.up()
        answers = await asyncio.gather(*(self._ask(i) for i in up))
        for i, engine in zip(up, answers):
            if engine != "ok" and engine != self.engine.get(i):
                self.last_error[i] = engine
                log.error("rollout worker %s: %s", self.fleet.ids[i], engine)
            self.engine[i] = engine
        for i, st in enumerate(self.fleet.state):
            if st != "up" and self.engine.get(i) == "ok":
                self.engine[i] = "restarting" if st == "rejoining" else "dead"
                self.last_error.setdefault(i, f"worker {st}")
        self.checked_at = time.monotonic()
        ready = self.ready
        if ready != self._was_ready:
            self._was_ready = ready
            for fn in self.listeners:
                try:
                    res = fn(ready)
                    if asyncio.iscoroutine(res):
                        await res
                except Exception:  # noqa: BLE001 - a listener must not stop the checks
                    log.exception("health listener failed")

    async def _ask(self, i: int) -> str:
        try:
            h = await asyncio.wait_for(self._health(i), self.answer_timeout_s)
        except asyncio.TimeoutError:
            return "no answer"  # busy, not necessarily dead: the watch tells a death
        except Exception as e:  # noqa: BLE001 - the worker died: poll() takes it from here
            self.kick()
            return f"worker unreachable ({type(e).__name__})"
        return str(h.get("engine", "ok"))

    async def _health(self, i: int) -> dict:
        return await self.fleet.workers[i].health.remote()

    async def run(self, stop: asyncio.Event) -> None:
        """Check every ``interval_s`` (sooner when kicked) until ``stop`` is set or the fleet is beyond recovery."""
        self._kick = asyncio.Event()
        while not stop.is_set() and self.fatal is None:
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - never let the health loop die silently
                log.exception("rollout health check failed")
            if self.fatal is not None:
                break
            try:
                await asyncio.wait_for(self._kick.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass
            self._kick.clear()
