"""``rewards.ray_pool.VerifierPool`` on a real local Ray cluster: from the driver and from inside an actor."""

from __future__ import annotations

import asyncio

import pytest

ray = pytest.importorskip("ray")

from rewards import RewardConfig  # noqa: E402
from rewards.ray_pool import VerifierPool  # noqa: E402

ITEMS = [{"completion": f"\\boxed{{\\sqrt{{{i * i}}}}}", "gold": str(i if i % 4 else i + 1), "response_tokens": 10 * i}
         for i in range(1, 13)]
EXPECTED = [1.0 if i % 4 else -1.0 for i in range(1, 13)]


@pytest.fixture(scope="module")
def ray_cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def test_pool_scores_in_order_from_the_driver(ray_cluster):
    cfg = RewardConfig(wrong_reward=-1.0, max_response_tokens=100, overlong_buffer_tokens=40)
    pool = VerifierPool(num_actors=2, config=cfg, num_cpus=0.5)
    try:
        rewards = pool.score_batch(ITEMS)
        assert [r.correctness for r in rewards] == EXPECTED
        assert rewards[-1].overlong == -1.0  # 120 tokens > L_max = 100
        assert rewards[7].overlong == pytest.approx((60 - 80) / 40)
        assert all(r.verdict.status in ("correct", "wrong") for r in rewards)
        assert [r.correctness for r in asyncio.run(pool.score_batch_async(ITEMS))] == EXPECTED
    finally:
        pool.shutdown()


@ray.remote(num_cpus=0.5)
class _Trainer:
    """Stands in for the GRPO learner/driver actor that owns a VerifierPool."""

    def __init__(self):
        self.pool = VerifierPool(num_actors=1, config=RewardConfig(wrong_reward=-1.0), num_cpus=0.5)

    def score(self, items):
        return [r.correctness for r in self.pool.score_batch(items)]

    async def score_async(self, items):
        return [r.correctness for r in await self.pool.score_batch_async(items)]


def test_pool_works_inside_another_actor(ray_cluster):
    trainer = _Trainer.remote()
    try:
        assert ray.get(trainer.score.remote(ITEMS)) == EXPECTED
        assert ray.get(trainer.score_async.remote(ITEMS)) == EXPECTED
    finally:
        ray.kill(trainer)
