"""The verifier pool's retry delays: exponential and bounded (``rewards.ray_pool.backoff_delay``)."""

from __future__ import annotations

from rewards.ray_pool import backoff_delay


def test_backoff_doubles_from_the_base_and_stops_at_the_cap():
    assert [backoff_delay(a, 0.5, 8.0) for a in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_default_tries_wait_15_5_seconds_in_all():
    # VerifierPool defaults: 6 tries -> 5 waits of 0.5, 1, 2, 4, 8 s before the error naming the actor
    assert sum(backoff_delay(a, 0.5, 8.0) for a in range(1, 6)) == 15.5
