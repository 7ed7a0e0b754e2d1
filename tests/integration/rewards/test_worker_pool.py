"""``rewards.worker_pool.WorkerPool`` with real worker processes: whole items scored under the hard limit,
fair scheduling across callers (least attained service, burst workers while slow items run), job
deadlines, health state."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from rewards import RewardConfig
from rewards.worker_pool import SLOW_NICE, WorkerPool

SLOW = "\\boxed{(9999!)^{999}}"  # passes every cap, takes minutes: only the kill stops it
CFG = RewardConfig().model_dump()


def task(completion: str, gold: str = "1") -> dict:
    return {"score": {"completion": completion, "gold": gold, "response_tokens": None}, "reward": CFG,
            "config_key": "default"}


def _nice(p: psutil.Process) -> int | None:
    try:
        return p.nice()
    except psutil.NoSuchProcess:
        return None


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(2)
    p.warm_up(wait=True)
    yield p
    p.close()


def test_whole_item_is_scored_in_a_worker(pool):
    item = {"completion": "so \\boxed{\\sqrt{8}}", "gold": "2\\sqrt{2}", "response_tokens": None}
    [r] = pool.score([item], RewardConfig())
    assert (r["status"], r["equal"], r["extracted"], r["source"]) == ("correct", True, "\\sqrt{8}", "boxed")
    assert r["parts"]["correctness"] == 1.0 and r["elapsed_ms"] > 0
    assert pool.state() == {**pool.state(), "ready": 2, "size": 2, "error": None}


def test_a_caller_with_slow_items_does_not_starve_another(pool):
    """Ten items that each run to a 1 s limit keep the workers busy for seconds; a second caller's item is
    served long before the first caller is done (a burst worker, or the next free one: the caller that
    has used the least worker time goes first), and the workers running slow items are niced."""
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
    niced = False  # the workers running slow items yield the CPU to quick ones
    while not niced and not slow_done.is_set():
        niced = any(_nice(p) == SLOW_NICE for p in psutil.Process().children(recursive=True))
        time.sleep(0.02)
    t.join(timeout=120)
    assert niced
    assert fast["status"] == "correct"
    assert served_before_slow_finished
    assert [r["status"] for r in results["slow"]] == ["timeout"] * 10


def test_job_deadline_answers_unstarted_items_without_running_them(pool):
    restarts = pool.restarts
    out = pool.run([task(SLOW)] * 8, 5.0, deadline=time.monotonic() + 1.0)
    assert [r["status"] for r in out] == ["timeout"] * 8
    ran = pool.restarts - restarts  # each item that started was killed at the deadline
    assert 2 <= ran <= 2 + pool.burst  # the two workers, plus burst workers while slow items ran
    assert sum("before this item could run" in r["reason"] for r in out) == 8 - ran


def test_a_pool_that_cannot_start_workers_says_so_and_never_hangs(monkeypatch):
    """When no worker process can be started (the OS refuses to fork), waiting items are answered with an
    error and ``state()`` names the cause (the service's health turns 503 / NOT_SERVING on it)."""
    import rewards.worker_pool as wp

    def refuse():
        raise OSError("fork refused")

    monkeypatch.setattr(wp, "_Worker", refuse)
    broken = WorkerPool(1)
    try:
        [r] = broken.run([task("\\boxed{1}")], 5.0)
        assert r["status"] == "error" and "fork refused" in r["reason"]
        assert "fork refused" in broken.state()["error"]
    finally:
        broken.close()
