"""``rewards.worker_pool.WorkerPool`` with real worker processes: whole items scored under the hard limit,
round-robin scheduling across callers, job deadlines, health state."""

from __future__ import annotations

import threading
import time

import pytest

from rewards import RewardConfig
from rewards.worker_pool import WorkerPool

SLOW = "\\boxed{(9999!)^{999}}"  # passes every cap, takes minutes: only the kill stops it
CFG = RewardConfig().model_dump()


def task(completion: str, gold: str = "1") -> dict:
    return {"score": {"completion": completion, "gold": gold, "response_tokens": None}, "reward": CFG,
            "config_key": "default"}


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(2)
    p.warm_up(wait=True)
    yield p
    p.close()


def test_whole_item_is_scored_in_a_worker(pool):
    [r] = pool.run([task("so \\boxed{\\sqrt{8}}", "2\\sqrt{2}")], 30.0)
    assert (r["status"], r["equal"], r["extracted"], r["source"]) == ("correct", True, "\\sqrt{8}", "boxed")
    assert r["parts"]["correctness"] == 1.0 and r["elapsed_ms"] > 0
    assert pool.state() == {**pool.state(), "ready": 2, "size": 2, "error": None}


def test_a_caller_with_slow_items_does_not_starve_another(pool):
    """Ten items that each run to a 1 s limit hold both workers for ~5 s; a second caller's item is served
    by the next free worker (round robin across callers), long before the first caller is done."""
    slow_done = threading.Event()
    results = {}

    def slow_caller():
        results["slow"] = pool.run([task(SLOW)] * 10, 1.0)
        slow_done.set()

    t = threading.Thread(target=slow_caller)
    t.start()
    while pool.state()["busy"] < 2:
        time.sleep(0.01)  # wait until the slow caller holds both workers
    [fast] = pool.run([task("\\boxed{1}")], 30.0)
    served_before_slow_finished = not slow_done.is_set()
    t.join(timeout=120)
    assert fast["status"] == "correct"
    assert served_before_slow_finished
    assert [r["status"] for r in results["slow"]] == ["timeout"] * 10


def test_job_deadline_answers_unstarted_items_without_running_them(pool):
    restarts = pool.restarts
    out = pool.run([task(SLOW)] * 6, 5.0, deadline=time.monotonic() + 1.0)
    assert [r["status"] for r in out] == ["timeout"] * 6
    assert sum("before this item could run" in r["reason"] for r in out) == 4  # two ran (and were killed)
    assert pool.restarts - restarts == 2
