"""The verifier as a pool of Ray actors, called in-process by the GRPO job (no HTTP hop).

    pool = VerifierPool(num_actors=2, config=RewardConfig(wrong_reward=-1.0))
    rewards = pool.score_batch([{"completion": c, "gold": g, "response_tokens": n}, ...])
    rewards = await pool.score_batch_async(items)   # from async code (e.g. inside another actor)

Each actor owns its own worker-process pool (``rewards.worker_pool``), so hard time limits hold
inside Ray too. A batch is split into contiguous chunks, one per actor, and reassembled in order.
Ray is imported lazily, so ``import rewards`` never pulls it in.

Faults: the actors have ``max_restarts`` (Ray restarts a dead one) and ``max_task_retries`` (a chunk
in flight when its actor died is re-run on the restarted actor: scoring is a pure function, so a
re-run is harmless). What Ray does not absorb (a call made while the actor is restarting fails at
once with ``ActorUnavailableError``; restarts used up) the pool retries itself: each failed chunk
goes to the next actor after an exponential backoff (``backoff_s`` doubling up to ``max_backoff_s``),
and after ``attempts`` failed tries a :class:`VerifierUnavailableError` names the actor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from rewards.config import RewardConfig
from rewards.shaping import Reward

log = logging.getLogger(__name__)


class VerifierUnavailableError(RuntimeError):
    """Every try of a chunk failed because its verifier actor was dead or restarting."""


class _VerifierActor:
    """Ray actor body: scores chunks with the in-process verifier."""

    def __init__(self, config: dict):
        from rewards.worker_pool import shared_pool

        self.config = RewardConfig.model_validate(config)
        shared_pool(self.config.verify.num_workers).warm_up(wait=True)

    def score_batch(self, items: list[dict]) -> list[Reward]:
        from rewards.shaping import score_batch

        return score_batch(items, self.config)

    def ping(self) -> bool:
        return True

    def pid(self) -> int:
        """The actor's process id (fault tests kill it with SIGKILL)."""
        import os

        return os.getpid()


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): ``base_s * 2**(attempt - 1)``, at most ``max_s``."""
    return min(max_s, base_s * 2 ** max(0, attempt - 1))


class VerifierPool:
    """``num_actors`` Ray actors scoring batches; usable from the driver or from inside another actor."""

    def __init__(self, num_actors: int = 1, config: RewardConfig | None = None, num_cpus: float = 1.0,
                 max_restarts: int = -1, max_task_retries: int = 2, attempts: int = 6, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0):
        """``max_restarts`` / ``max_task_retries``: Ray's per-actor fault tolerance (-1: unlimited restarts);
        ``attempts``: tries per chunk in the pool (>= 1) before :class:`VerifierUnavailableError`, with
        ``backoff_s`` doubling up to ``max_backoff_s`` between them (defaults: 15.5 s of waiting in all)."""
        import ray

        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        self.config = config or RewardConfig()
        self.attempts, self.backoff_s, self.max_backoff_s = attempts, backoff_s, max_backoff_s
        self.retries = 0
        """Chunk re-submissions after an actor failure (over the pool's life)."""
        self.outage_s: list[float] = []
        """Per recovered chunk: seconds from its first failure to its successful try."""
        actor_cls = ray.remote(num_cpus=num_cpus, max_restarts=max_restarts,
                               max_task_retries=max_task_retries)(_VerifierActor)
        self.actors = [actor_cls.remote(self.config.model_dump()) for _ in range(num_actors)]
        ray.get([a.ping.remote() for a in self.actors])

    def _chunks(self, items: list[dict]) -> list[list[dict]]:
        size = max(1, -(-len(items) // len(self.actors)))
        return [items[start:start + size] for start in range(0, len(items), size)]

    def _actor_name(self, k: int) -> str:
        return f"verifier actor {k} ({self.actors[k]._actor_id.hex()})"

    def _failed(self, chunk: int, attempt: int, actor: int, err: Exception) -> float:
        """Book a failed try; returns the backoff before the next, or raises after the last try."""
        if attempt >= self.attempts:
            raise VerifierUnavailableError(
                f"{self._actor_name(actor)} failed {self.attempts} tries of a {len(self.actors)}-actor pool; "
                f"last error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
        delay = backoff_delay(attempt, self.backoff_s, self.max_backoff_s)
        log.warning("%s failed (%s); chunk %d retried in %.1f s (try %d/%d)", self._actor_name(actor),
                    type(err).__name__, chunk, delay, attempt + 1, self.attempts)
        self.retries += 1
        return delay

    def score_batch(self, items: list[dict]) -> list[Reward]:
        """Rewards for ``items`` (dicts with ``completion``, ``gold``, optional ``response_tokens``), in order."""
        import ray
        from ray.exceptions import RayActorError

        chunks = self._chunks(list(items))
        n = len(self.actors)
        out: list[list[Reward] | None] = [None] * len(chunks)
        refs = {k: self.actors[k % n].score_batch.remote(c) for k, c in enumerate(chunks)}
        for k, c in enumerate(chunks):
            attempt, first_fail = 1, None
            while out[k] is None:
                try:
                    out[k] = ray.get(refs[k])
                except RayActorError as e:
                    first_fail = first_fail or time.monotonic()
                    time.sleep(self._failed(k, attempt, (k + attempt - 1) % n, e))
                    attempt += 1
                    refs[k] = self.actors[(k + attempt - 1) % n].score_batch.remote(c)
            if first_fail is not None:
                self.outage_s.append(time.monotonic() - first_fail)
        return [r for chunk in out for r in chunk]

    async def score_batch_async(self, items: list[dict]) -> list[Reward]:
        """Awaitable ``score_batch`` (Ray object refs are awaitable), with the same retries."""
        from ray.exceptions import RayActorError

        n = len(self.actors)

        async def one(k: int, chunk: list[dict]) -> list[Reward]:
            attempt, first_fail = 1, None
            while True:
                try:
                    got = await self.actors[(k + attempt - 1) % n].score_batch.remote(chunk)
                    if first_fail is not None:
                        self.outage_s.append(time.monotonic() - first_fail)
                    return got
                except RayActorError as e:
                    first_fail = first_fail or time.monotonic()
                    await asyncio.sleep(self._failed(k, attempt, (k + attempt - 1) % n, e))
                    attempt += 1

        chunks = await asyncio.gather(*[one(k, c) for k, c in enumerate(self._chunks(list(items)))])
        return [r for chunk in chunks for r in chunk]

    def stats(self) -> dict[str, Any]:
        return {"verifier_retries": self.retries, "verifier_recoveries": len(self.outage_s),
                "verifier_outage_s_max": max(self.outage_s, default=0.0)}

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
