"""The experience stream: rollout groups from the rollout workers to the learner.

Two backends behind one interface (``put`` / ``get`` / ``ack`` / ``size`` and a ``sink`` for the
rollout workers, an actor handle whose ``put.remote(groups: list[dict])`` appends):

- ``RayExperienceStream`` (default, embedded): an async Ray actor (``ExperienceQueue``) holding the
  groups in memory, FIFO, with optional back-pressure (``maxsize``). It lives and dies with the job, so
  the job saves ``snapshot()`` (and its own buffer) into the learner checkpoint.
- ``RedisExperienceStream`` (decoupled deployments): a Redis stream written with XADD (msgpack via
  ``Group.to_msgpack``, never pickle) and read through a consumer group with XREADGROUP. Delivered entries
  stay pending until ``ack()`` (XACK); a restarted learner first reclaims every pending entry (XAUTOCLAIM),
  so a crash between delivery and acknowledgement loses nothing. The rollout side writes through a
  ``RedisExperienceSink`` actor (same ``put`` as the Ray queue) or ``put`` directly.

When to ``ack``: right after the learner checkpoint that covers the delivered groups (trained into the
weights, or saved as unconsumed experience in ``extra``). Then a resumed run neither loses nor repeats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Protocol

from learner.config import ExperienceConfig
from rollout.trajectory import Group

log = logging.getLogger(__name__)

PAYLOAD_FIELD = b"group"


def _as_dict(g: Group | dict) -> dict[str, Any]:
    """Validate a group (dict or ``Group``) and return it as a plain dict."""
    return (g if isinstance(g, Group) else Group.from_dict(g)).to_dict()


class ExperienceStream(Protocol):
    sink: Any
    """Actor handle for rollout workers: ``sink.put.remote(groups: list[dict])``."""

    def put(self, groups: list) -> None: ...
    def get(self, n: int, timeout: float) -> list[dict]: ...
    def ack(self) -> int: ...
    def size(self) -> int: ...
    def close(self) -> None: ...


# ---- Ray queue ------------------------------------------------------------------------------------
class ExperienceQueue:
    """Async Ray actor: a FIFO of group dicts. ``put`` waits while the queue holds ``maxsize`` or more."""

    def __init__(self, maxsize: int = 0):
        self.maxsize = maxsize
        self.items: deque[dict] = deque()
        self.cond = asyncio.Condition()
        self.total_put = 0

    async def put(self, groups: list) -> int:
        groups = [_as_dict(g) for g in groups]
        async with self.cond:
            if self.maxsize:
                await self.cond.wait_for(lambda: len(self.items) < self.maxsize)
            self.items.extend(groups)
            self.total_put += len(groups)
            self.cond.notify_all()
            return len(self.items)

    async def get(self, n: int, timeout: float | None = None) -> list[dict]:
        """Up to ``n`` groups: returns once ``n`` are there (or the queue is full), or after ``timeout`` s
        with what there is."""
        want = min(n, self.maxsize) if self.maxsize else n
        async with self.cond:
            try:
                await asyncio.wait_for(self.cond.wait_for(lambda: len(self.items) >= want), timeout)
            except asyncio.TimeoutError:
                pass
            out = [self.items.popleft() for _ in range(min(n, len(self.items)))]
            self.cond.notify_all()
            return out

    def size(self) -> int:
        return len(self.items)

    def snapshot(self) -> list[dict]:
        """The queued groups, without removing them (for checkpoints)."""
        return list(self.items)

    def stats(self) -> dict[str, int]:
        return {"size": len(self.items), "total_put": self.total_put}


class RayExperienceStream:
    """The embedded default: one ``ExperienceQueue`` actor (0 CPUs). Call ``ray.init`` first."""

    def __init__(self, maxsize: int = 0, name: str | None = None):
        import ray

        opts: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1000}
        if name:
            opts["name"] = name
        self.actor = ray.remote(ExperienceQueue).options(**opts).remote(maxsize)
        self.sink = self.actor

    def put(self, groups: list) -> None:
        import ray

        ray.get(self.actor.put.remote([_as_dict(g) for g in groups]))

    def get(self, n: int, timeout: float = 0.0) -> list[dict]:
        import ray

        return ray.get(self.actor.get.remote(n, timeout))

    def ack(self) -> int:
        """Nothing to acknowledge: delivery from the in-job queue is final."""
        return 0

    def size(self) -> int:
        import ray

        return ray.get(self.actor.size.remote())

    def snapshot(self) -> list[dict]:
        import ray

        return ray.get(self.actor.snapshot.remote())

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


# ---- Redis Streams --------------------------------------------------------------------------------
def _redis(url: str):
    import redis

    return redis.Redis.from_url(url)


def redis_put(client, stream: str, groups: list) -> list[bytes]:
    """XADD each group as one msgpack entry; returns the entry ids."""
    pipe = client.pipeline(transaction=False)
    for g in groups:
        payload = (g if isinstance(g, Group) else Group.from_dict(g)).to_msgpack()
        pipe.xadd(stream, {PAYLOAD_FIELD: payload})
    return pipe.execute()


class RedisExperienceSink:
    """Ray actor for rollout workers: ``put(groups)`` appends to the Redis stream (like the Ray queue)."""

    def __init__(self, redis_url: str, stream: str):
        self.client = _redis(redis_url)
        self.stream = stream

    def put(self, groups: list) -> int:
        return len(redis_put(self.client, self.stream, groups))


class RedisExperienceStream:
    """The learner's side of a Redis stream: consumer ``consumer`` of group ``consumer_group``."""

    def __init__(self, redis_url: str, stream: str = "flywheel:experience", consumer_group: str = "learner",
                 consumer: str = "learner-0", reclaim_idle_ms: int = 0, trim_acked: bool = True,
                 with_sink: bool = False):
        import redis

        self.url, self.stream, self.group, self.consumer = redis_url, stream, consumer_group, consumer
        self.reclaim_idle_ms, self.trim_acked = reclaim_idle_ms, trim_acked
        self.client = _redis(redis_url)
        try:
            self.client.xgroup_create(stream, consumer_group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._reclaimed: deque[tuple[bytes, dict]] = deque(self._reclaim())
        self._unacked: list[bytes] = []
        self.bad_entries = 0
        self.sink = None
        if with_sink:
            import ray

            self.sink = ray.remote(RedisExperienceSink).options(num_cpus=0).remote(redis_url, stream)

    def _reclaim(self) -> list[tuple[bytes, dict]]:
        """Claim every pending entry of the group (delivered to a consumer that never acknowledged it)."""
        out, start = [], "0-0"
        while True:
            res = self.client.xautoclaim(self.stream, self.group, self.consumer, self.reclaim_idle_ms,
                                         start_id=start, count=100)
            start, entries = res[0], res[1]
            out += [e for e in (self._decode(i, f) for i, f in entries if f is not None) if e is not None]
            if start in (b"0-0", "0-0"):
                break
        if out:
            log.info("reclaimed %d pending experience entries from %s", len(out), self.stream)
        return out

    def _decode(self, entry_id: bytes, fields: dict) -> tuple[bytes, dict] | None:
        try:
            return entry_id, Group.from_msgpack(fields[PAYLOAD_FIELD]).to_dict()
        except Exception as e:  # a malformed entry must not stop training: acknowledge and skip it
            log.warning("dropping malformed experience entry %s: %s", entry_id, e)
            self.client.xack(self.stream, self.group, entry_id)
            self.bad_entries += 1
            return None

    def put(self, groups: list) -> list[bytes]:
        return redis_put(self.client, self.stream, groups)

    def get(self, n: int, timeout: float = 0.0) -> list[dict]:
        """Up to ``n`` groups (reclaimed pending ones first); waits at most ``timeout`` s for the rest.

        Delivered entries stay pending in Redis until ``ack()``.
        """
        out: list[tuple[bytes, dict]] = []
        while self._reclaimed and len(out) < n:
            out.append(self._reclaimed.popleft())
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left_ms = int(max(deadline - time.monotonic(), 0) * 1000)
            res = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=n - len(out),
                                         block=left_ms if left_ms > 0 else None)
            entries = res[0][1] if res else []
            out += [e for e in (self._decode(i, f) for i, f in entries) if e is not None]
            if time.monotonic() >= deadline and not entries:
                break
        self._unacked += [i for i, _ in out]
        return [g for _, g in out]

    def ack(self) -> int:
        """Acknowledge (and by default delete) everything delivered so far; returns how many."""
        ids, self._unacked = self._unacked, []
        if ids:
            self.client.xack(self.stream, self.group, *ids)
            if self.trim_acked:
                self.client.xdel(self.stream, *ids)
        return len(ids)

    def pending(self) -> int:
        """Entries delivered to any consumer of the group and not yet acknowledged."""
        return int(self.client.xpending(self.stream, self.group)["pending"])

    def size(self) -> int:
        """Entries not yet delivered to this group (plus reclaimed ones not yet handed out)."""
        for g in self.client.xinfo_groups(self.stream):
            if g["name"] in (self.group, self.group.encode()):
                lag = g.get("lag")
                if lag is None:  # Redis < 7 or an unknown lag: count entries after last-delivered-id
                    lag = len(self.client.xrange(self.stream, min=f"({g['last-delivered-id'].decode()}"))
                return int(lag) + len(self._reclaimed)
        return len(self._reclaimed)

    def close(self) -> None:
        if self.sink is not None:
            import ray

            ray.kill(self.sink)
        self.client.close()


def make_stream(cfg: ExperienceConfig, with_sink: bool = True) -> RayExperienceStream | RedisExperienceStream:
    """The stream ``cfg`` asks for; ``with_sink`` also starts the Redis sink actor (needs Ray)."""
    if cfg.backend == "ray":
        return RayExperienceStream(cfg.maxsize)
    return RedisExperienceStream(cfg.redis_url, cfg.stream, cfg.consumer_group, cfg.consumer,
                                 cfg.reclaim_idle_ms, cfg.trim_acked, with_sink=with_sink)
