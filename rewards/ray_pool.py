"""The verifier as a pool of Ray actors, called in-process by the GRPO job (no HTTP hop).

    pool = VerifierPool(num_actors=2, config=RewardConfig(wrong_reward=-1.0))
    rewards = pool.score_batch([{"completion": c, "gold": g, "response_tokens": n}, ...])
    rewards = await pool.score_batch_async(items)   # from async code (e.g. inside another actor)

Each actor owns its own worker-process pool (``rewards.worker_pool``), so hard time limits hold
inside Ray too. A batch is split into contiguous chunks, one per actor, and reassembled in order.
Ray is imported lazily, so ``import rewards`` never pulls it in.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rewards.config import RewardConfig
from rewards.shaping import Reward


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


class VerifierPool:
    """``num_actors`` Ray actors scoring batches; usable from the driver or from inside another actor."""

    def __init__(self, num_actors: int = 1, config: RewardConfig | None = None, num_cpus: float = 1.0):
        import ray

        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        self.config = config or RewardConfig()
        actor_cls = ray.remote(num_cpus=num_cpus)(_VerifierActor)
        self.actors = [actor_cls.remote(self.config.model_dump()) for _ in range(num_actors)]
        ray.get([a.ping.remote() for a in self.actors])

    def _submit(self, items: list[dict]) -> list[tuple[int, Any]]:
        n = len(self.actors)
        size = max(1, -(-len(items) // n))
        return [(start, self.actors[k % n].score_batch.remote(items[start:start + size]))
                for k, start in enumerate(range(0, len(items), size))]

    def score_batch(self, items: list[dict]) -> list[Reward]:
        """Rewards for ``items`` (dicts with ``completion``, ``gold``, optional ``response_tokens``), in order."""
        import ray

        refs = self._submit(list(items))
        return [r for chunk in ray.get([ref for _, ref in refs]) for r in chunk]

    async def score_batch_async(self, items: list[dict]) -> list[Reward]:
        """Awaitable ``score_batch`` (Ray object refs are awaitable)."""
        refs = self._submit(list(items))
        chunks = await asyncio.gather(*[ref for _, ref in refs])
        return [r for chunk in chunks for r in chunk]

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
