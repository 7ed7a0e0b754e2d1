"""Ray queue backend on a real local Ray: rollout-side ``sink.put.remote`` -> learner-side ``get``."""

from __future__ import annotations

import threading
import time

import pytest

from learner.config import ExperienceConfig
from learner.experience import make_stream


def test_rollout_workers_put_through_the_sink_and_the_learner_gets_fifo(ray_local, groups_factory):
    ray = ray_local
    stream = make_stream(ExperienceConfig(backend="ray"))

    @ray.remote(num_cpus=0)
    def rollout_worker(sink, groups):
        ray.get(sink.put.remote(groups))
        return len(groups)

    a, b = groups_factory(3, 2, seed=10), groups_factory(2, 2, seed=11)
    assert ray.get(rollout_worker.remote(stream.sink, a)) == 3
    assert ray.get(rollout_worker.remote(stream.sink, b)) == 2
    assert stream.size() == 5 and stream.snapshot() == a + b
    assert stream.get(4, timeout=1.0) == a + b[:1]
    assert stream.get(4, timeout=0.2) == b[1:]  # fewer than asked once the timeout passes
    assert stream.get(1, timeout=0.0) == [] and stream.ack() == 0
    stream.close()


def test_get_waits_for_late_puts(ray_local, groups_factory):
    stream = make_stream(ExperienceConfig(backend="ray"))
    groups = groups_factory(2, 2, seed=12)
    threading.Timer(0.5, lambda: stream.sink.put.remote(groups)).start()
    assert stream.get(2, timeout=30.0) == groups
    stream.close()


def test_maxsize_applies_back_pressure(ray_local, groups_factory):
    ray = ray_local
    stream = make_stream(ExperienceConfig(backend="ray", maxsize=2))
    g = groups_factory(4, 2, seed=13)
    stream.put(g[:2])
    blocked = stream.sink.put.remote(g[2:])
    ready, _ = ray.wait([blocked], timeout=0.5)
    assert not ready and stream.size() == 2  # the rollout worker's put waits
    assert stream.get(2, timeout=1.0) == g[:2]
    ray.get(blocked, timeout=30)
    assert stream.get(10, timeout=None) == g[2:]  # a full queue answers at once, even without a timeout
    stream.close()


def test_invalid_group_is_rejected_with_a_clear_error(ray_local):
    stream = make_stream(ExperienceConfig(backend="ray"))
    with pytest.raises(Exception, match="tokens but"):
        stream.put([{"group_id": "x", "prompt_token_ids": [1],
                     "samples": [{"completion_token_ids": [1, 2], "logprobs": [0.0], "versions": [0, 0],
                                  "finish_reason": "stop"}]}])
    stream.close()


def test_redis_sink_actor_writes_like_the_ray_queue(ray_local, redis_url, groups_factory):
    ray = ray_local
    stream = make_stream(ExperienceConfig(backend="redis", redis_url=redis_url, stream=f"t:sink:{time.time_ns()}"))
    groups = groups_factory(3, 2, seed=14)
    assert ray.get(stream.sink.put.remote(groups)) == 3
    assert stream.get(3, timeout=2.0) == groups
    assert stream.ack() == 3
    stream.close()
