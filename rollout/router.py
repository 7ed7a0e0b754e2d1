"""``RolloutRouter``: several :class:`rollout.worker.RolloutWorker` actors behind one front.

Prompts go to the least-loaded live worker (load = prompts the router has outstanding on it, capped
at ``max_in_flight`` per worker), one prompt per call so a finished prompt immediately frees a slot
for the next. A worker that dies (``RayActorError``) is dropped and its outstanding prompts are
re-queued onto the others, so a batch still yields exactly one group per prompt. In continuous mode
the workers lease prompts from a :class:`rollout.prompts.PromptSource`; :meth:`RolloutRouter.check_workers`
re-queues a dead worker's leases. Weight updates fan out through the object store (one ``ray.put``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger(__name__)


class NoLiveWorkers(RuntimeError):
    """Every rollout worker is dead."""


class RolloutRouter:
    """Balance prompts across workers by load; survive worker deaths without losing prompts."""

    def __init__(self, workers: list, max_in_flight: int = 16, worker_ids: list[str] | None = None) -> None:
        if not workers:
            raise ValueError("RolloutRouter needs at least one worker")
        self.workers = list(workers)
        self.ids = worker_ids or [f"rollout-{i}" for i in range(len(workers))]
        self.max_in_flight = max_in_flight
        self.load = [0] * len(workers)
        self.alive = [True] * len(workers)
        self.requeued = 0
        self.version = 0

    # ------------------------------------------------------------------ placement
    def pick(self) -> int:
        """Index of the live worker with the fewest outstanding prompts."""
        live = [i for i, a in enumerate(self.alive) if a]
        if not live:
            raise NoLiveWorkers("all rollout workers are dead")
        return min(live, key=lambda i: (self.load[i], i))

    def mark_dead(self, i: int, err: BaseException | None = None) -> None:
        if self.alive[i]:
            log.warning("rollout worker %s died (%s); re-queueing its prompts", self.ids[i], err)
        self.alive[i] = False

    @property
    def num_alive(self) -> int:
        return sum(self.alive)

    # ------------------------------------------------------------------ batch generation
    def generate(self, prompts: list[dict], sampling: dict | None = None) -> list[dict]:
        """One group per prompt, in prompt order, spread over the workers by load."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        pending = deque(range(len(prompts)))
        results: list[dict | None] = [None] * len(prompts)
        running: dict[Any, tuple[int, int]] = {}  # ref -> (worker index, prompt index)
        while pending or running:
            while pending and any(self.alive[i] and self.load[i] < self.max_in_flight
                                  for i in range(len(self.workers))):
                w = self.pick()
                if self.load[w] >= self.max_in_flight:
                    break
                j = pending.popleft()
                running[self.workers[w].generate.remote([prompts[j]], sampling)] = (w, j)
                self.load[w] += 1
            if not running:
                self.pick()  # raises NoLiveWorkers
                continue
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                w, j = running.pop(ref)
                self.load[w] -= 1
                try:
                    results[j] = ray.get(ref)[0]
                except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                    self.mark_dead(w, e)
                    pending.appendleft(j)
                    self.requeued += 1
        return results  # type: ignore[return-value]

    async def agenerate_one(self, prompt: dict, sampling: dict | None = None) -> dict:
        """One group (asyncio; for services). Retries on another worker if the chosen one dies."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        while True:
            w = self.pick()
            self.load[w] += 1
            try:
                return (await self.workers[w].generate.remote([prompt], sampling))[0]
            except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                self.mark_dead(w, e)
                self.requeued += 1
            finally:
                self.load[w] -= 1

    async def agenerate(self, prompts: list[dict], sampling: dict | None = None) -> list[dict]:
        return list(await asyncio.gather(*(self.agenerate_one(p, sampling) for p in prompts)))

    # ------------------------------------------------------------------ continuous generation
    def start_continuous(self, source, sink, sampling: dict | None = None, max_in_flight: int | None = None) -> None:
        import ray

        ray.get([w.start_continuous.remote(source, sink, sampling, max_in_flight or self.max_in_flight)
                 for i, w in enumerate(self.workers) if self.alive[i]])
        self._source = source

    def check_workers(self, timeout_s: float = 30.0) -> list[str]:
        """Ping every live worker; dead ones are dropped and their leased prompts re-queued."""
        import ray
        from ray.exceptions import GetTimeoutError

        dead = []
        refs = {i: w.ping.remote() for i, w in enumerate(self.workers) if self.alive[i]}
        for i, ref in refs.items():
            try:
                ray.get(ref, timeout=timeout_s)
            except GetTimeoutError:
                continue  # busy, not dead
            except Exception as e:  # noqa: BLE001 - any actor failure means the worker is gone
                self.mark_dead(i, e)
                dead.append(self.ids[i])
                source = getattr(self, "_source", None)
                if source is not None:
                    self.requeued += ray.get(source.requeue_lessee.remote(self.ids[i]))
        return dead

    def stop_continuous(self) -> int:
        import ray

        return sum(ray.get([w.stop_continuous.remote() for i, w in enumerate(self.workers) if self.alive[i]]))

    # ------------------------------------------------------------------ weights
    def load_weights(self, version: int, weights) -> list[dict]:
        """Push ``{name: tensor}`` (or an ObjectRef of it) to every live worker; returns their sync records."""
        import ray

        ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        t0 = time.perf_counter()
        recs = ray.get([w.load_weights.remote(version, ref) for i, w in enumerate(self.workers) if self.alive[i]])
        self.version = version
        log.info("weights v%d on %d workers in %.3f s", version, len(recs), time.perf_counter() - t0)
        return recs

    async def aload_files(self, version: int, paths: list[str]) -> list[dict]:
        """Every live worker loads safetensors ``paths`` (shared storage) as ``version``."""
        recs = await asyncio.gather(*(w.load_weights_file.remote(version, paths)
                                      for i, w in enumerate(self.workers) if self.alive[i]))
        self.version = version
        return list(recs)

    def stats(self) -> list[dict]:
        import ray

        return ray.get([w.stats.remote() for i, w in enumerate(self.workers) if self.alive[i]])
