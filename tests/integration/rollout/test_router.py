"""``RolloutFleet``'s batch mode on real Ray actors (stand-in workers with the RolloutWorker call
surface, no vLLM: what is tested is the routing, not generation): load balancing, and a dead worker's
prompts run again elsewhere so a batch still yields exactly one group per prompt. (Continuous mode,
rejoining and weights: tests/integration/job/test_grpo_fleet.py.)"""

from __future__ import annotations

import os

import pytest

from rollout.fleet import NoLiveWorkers, RolloutFleet


class StandInWorker:
    """Answers ``generate`` like a RolloutWorker; dies (process exit) on its ``die_at``-th prompt."""

    def __init__(self, name: str, delay: float = 0.02, die_at: int | None = None) -> None:
        self.name, self.delay, self.die_at, self.seen = name, delay, die_at, 0

    async def generate(self, prompts: list[dict], sampling: dict | None = None) -> list[dict]:
        import asyncio

        self.seen += len(prompts)
        if self.die_at is not None and self.seen >= self.die_at:
            os._exit(1)
        await asyncio.sleep(self.delay)
        return [{"group_id": p["prompt_id"], "prompt_token_ids": [1], "samples": [], "meta": {"worker": self.name}}
                for p in prompts]

    async def health(self) -> dict:
        return {"worker_id": self.name, "incarnation": self.name, "version": 0, "continuous": False}

    async def watch(self) -> None:
        import asyncio

        await asyncio.Event().wait()


def _workers(ray, specs):
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test modules are not importable by workers
    cls = ray.remote(num_cpus=0, max_restarts=0)(StandInWorker)
    return [cls.options(max_concurrency=64).remote(*s) for s in specs]


def _prompts(n):
    return [{"prompt_id": f"p{i}", "prompt_token_ids": [i + 1]} for i in range(n)]


def test_balances_by_load(ray_session):
    ray = ray_session
    fast, slow = _workers(ray, [("fast", 0.01), ("slow", 0.3)])
    groups = RolloutFleet([fast, slow], max_in_flight=2).generate(_prompts(20))
    by = [g["meta"]["worker"] for g in groups]
    assert [g["group_id"] for g in groups] == [f"p{i}" for i in range(20)]
    assert by.count("fast") > by.count("slow") >= 1  # the idle worker gets the next prompt


def test_dead_worker_prompts_are_requeued(ray_session):
    ray = ray_session
    good, doomed = _workers(ray, [("good", 0.02), ("doomed", 0.02, 3)])
    fleet = RolloutFleet([good, doomed], max_in_flight=4)
    groups = fleet.generate(_prompts(16))
    assert [g["group_id"] for g in groups] == [f"p{i}" for i in range(16)]  # exactly one group each
    assert fleet.state == ["up", "dead"] and fleet.requeued >= 1
    assert all(g["meta"]["worker"] == "good" for g in groups[-4:])


def test_all_dead_raises(ray_session):
    [doomed] = _workers(ray_session, [("doomed", 0.0, 1)])
    with pytest.raises(NoLiveWorkers):
        RolloutFleet([doomed]).generate(_prompts(2))

