"""Forming the collective transport's weight group, from the driver (:class:`WeightGroup`, used by
:class:`rollout.fleet.RolloutFleet`): the sender actor (:class:`rollout.weight_sync.WeightBroadcaster`),
which workers are members, and which get updates through the object store instead, with why.

A worker that cannot join is left out alone (:func:`form_group`): joining is two-phase
(:func:`rollout.weight_sync.join_group`), so the receivers that reach the sender's store in time form the
group without the ones that do not; a member that arrives but breaks the group is found by trying each
member alone. The group is (re-)formed lazily, at a publish whose up workers differ from its members: a
worker Ray restarted, the next stage's engines, a new sender (its predecessor died), a resumed job's new
fleet all simply join the next group. Weights travel in the members' engine dtype unless configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rollout.weight_sync import BACKENDS, WeightBroadcaster

log = logging.getLogger(__name__)


@dataclass
class JoinResult:
    """One attempt to form the weight group (:func:`form_group`)."""

    members: list[int]
    """Workers that reached the rendezvous in time (the group was built with them)."""
    formed: bool
    """The group formed: every member and the sender joined."""
    why: dict[int, str] = field(default_factory=dict)
    """Worker -> why it is not a member, or why the group failed."""


def form_group(wanted: list[int], attempt: Callable[[list[int]], JoinResult]) -> tuple[list[int], dict[int, str]]:
    """Form the weight group from ``wanted`` workers so that each worker that cannot join is left out
    alone: returns (members, {worker: why} of those left out, who get the object store).

    ``attempt(workers)`` builds one group: a worker that does not reach the rendezvous in time is left
    out by the attempt itself (the others still form). If every member arrived and the group still
    did not form (a member whose process group breaks, e.g. a port the sender cannot reach), it is
    tried once more, then each member alone, then those that joined alone together. An attempt that
    raises (the sender cannot open a group) leaves every worker out, with that reason."""
    left_out: dict[int, str] = {}

    def run(workers: list[int]) -> JoinResult:
        try:
            res = attempt(workers)
        except Exception as e:  # noqa: BLE001 - the sender itself cannot: nobody gets a broadcast
            res = JoinResult([], False, {i: f"weight group sender: {type(e).__name__}: {e}" for i in workers})
        for i in workers:
            if i not in res.members:
                left_out[i] = res.why.get(i, "did not join the weight group")
        return res

    res = run(list(wanted))
    if not res.formed and res.members:
        res = run(res.members)  # once more, as it is: a transient failure
    if not res.formed and len(res.members) > 1:  # find the member(s) that break it: each alone, then together
        alone = []
        for i in res.members:
            solo = run([i])
            if solo.formed:
                alone.append(i)
            else:
                left_out[i] = solo.why.get(i, "the weight group did not form with it alone")
        res = run(alone) if alone else JoinResult([], False)
    if res.formed:
        return res.members, left_out
    for i in res.members:
        left_out[i] = res.why.get(i, "the weight group did not form")
    return [], left_out


class WeightGroup:
    """Driver side of the collective transport for a :class:`rollout.fleet.RolloutFleet`: the
    broadcaster actor, which workers are in the current group, and which ones get updates through the
    object store instead (with why). The group is (re-)formed lazily, at a publish whose up workers
    differ from its members: a restarted worker, another stage's engines or a resumed learner (a new
    fleet) simply join the next group. A worker that cannot join is left out alone (:func:`form_group`);
    the others get broadcasts."""

    def __init__(self, workers: list, ids: list[str], bucket_mib: int = 64, dtype: str | None = None,
                 ranks_per_worker: int = 1, broadcaster_options: dict | None = None,
                 join_timeout_s: float = 60.0, backend: str = "gloo") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"weight group backend must be one of {BACKENDS}, got {backend!r}")
        self.workers, self.ids = workers, ids
        self.bucket_mib, self.ranks_per_worker = bucket_mib, ranks_per_worker
        self.dtype = dtype
        """Dtype the weights travel in: the configured one, else the members' engine dtype."""
        self._configured_dtype = dtype
        self.join_timeout_s, self.backend = join_timeout_s, backend
        self._options = broadcaster_options or {}
        self.broadcaster = None
        self.epoch = 0
        self.members: list[int] = []
        self.fallback: dict[int, str] = {}
        """Worker index -> why it gets updates through the object store (cleared when it restarts)."""
        self.plan_s = 0.0

    def ready_members(self, up: list[int]) -> list[int]:
        """The up workers that will receive the next update by broadcast (forming the group if needed)."""
        wanted = [i for i in up if i not in self.fallback]
        if wanted and (not self.epoch or wanted != self.members):
            self._form(wanted)
        return list(self.members) if self.epoch else []

    def plan(self, tensors_ref, version: int) -> dict:
        import ray

        t0 = time.perf_counter()
        handle = ray.get(self.broadcaster.plan.remote(tensors_ref, self.epoch, self.dtype))
        self.plan_s = time.perf_counter() - t0
        """Seconds the last plan took (the sender fetching the state dict from the object store)."""
        return handle

    def broadcast(self, handle: dict):
        """Start the broadcast of the update just planned (the sender already holds its tensors)."""
        return self.broadcaster.broadcast.remote(handle)

    def broken(self, why: str, sender_dead: bool = False) -> None:
        """A broadcast failed: re-form the group at the next publish (with a new broadcaster if it died)."""
        if self.epoch:
            log.warning("weight group %d broken (%s); it is re-formed at the next update", self.epoch, why)
        self.epoch, self.members = 0, []
        if sender_dead:
            self.broadcaster = None

    def rejoined(self, i: int) -> None:
        """Worker ``i`` restarted: a fresh process gets a fresh chance to join."""
        self.fallback.pop(i, None)

    def _ranks(self, k: int) -> list[int]:
        """Receiver ranks of the ``k``-th worker of an attempt (one per tensor-parallel rank)."""
        return [1 + k * self.ranks_per_worker + t for t in range(self.ranks_per_worker)]

    def _attempt(self, workers: list[int]) -> JoinResult:
        """One group: open it, wait until every worker arrived (or failed, or ``join_timeout_s``), name
        the ones that arrived as members, wait for them and the broadcaster to join."""
        import ray
        from ray.exceptions import RayActorError

        ranks = {i: self._ranks(k) for k, i in enumerate(workers)}
        for fresh in (False, True):  # a sender that died since the last group is replaced once
            if self.broadcaster is None or fresh:
                opts = {"num_cpus": 0, "max_concurrency": 4, **self._options}
                self.broadcaster = ray.remote(WeightBroadcaster).options(**opts).remote(
                    self.bucket_mib, self.join_timeout_s, self.backend)
            try:
                info = ray.get(self.broadcaster.open.remote([r for rs in ranks.values() for r in rs]), timeout=120)
                break
            except RayActorError:
                if fresh:
                    raise
        refs = {i: self.workers[i].join_collective.remote({**info, "rank": ranks[i][0]}) for i in workers}
        why: dict[int, str] = {}
        deadline = time.monotonic() + self.join_timeout_s
        while True:  # phase 1: arrivals (a join that ends now failed: it never waits for the members)
            arrived = ray.get(self.broadcaster.arrived.remote(info["epoch"]), timeout=60)
            for i, ref in refs.items():
                if i not in why and ray.wait([ref], timeout=0)[0]:
                    why[i] = _status(ref)
            present = [i for i in workers if i not in why and all(r in arrived for r in ranks[i])]
            if len(present) + len(why) == len(workers) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for i in workers:
            if i not in present:
                why.setdefault(i, f"did not reach the weight group's store within {self.join_timeout_s:.0f} s")
        if not present:
            return JoinResult([], False, why)
        dtypes = {arrived[r] for i in present for r in ranks[i]}
        root = self.broadcaster.join.remote(info["epoch"], [r for i in present for r in ranks[i]])
        failed = {i: st for i in present if (st := _status(refs[i], self.join_timeout_s + 60)) != "ok"}
        try:
            ray.get(root, timeout=self.join_timeout_s + 60)
        except Exception as e:  # noqa: BLE001 - then its members failed too
            failed.update({i: f"weight group sender: {type(e).__name__}: {e}" for i in present if i not in failed})
        if failed:
            return JoinResult(present, False, {**why, **failed})
        self.epoch, self.members = info["epoch"], list(present)
        if self._configured_dtype is None:  # send in the engines' own dtype (e.g. bfloat16 engines of fp32 weights)
            self.dtype = dtypes.pop() if len(dtypes) == 1 and "?" not in dtypes else None
        return JoinResult(present, True, why)

    def _form(self, wanted: list[int]) -> None:
        t0 = time.perf_counter()
        self.epoch, self.members = 0, []
        members, left_out = form_group(wanted, self._attempt)
        if not members:  # the last attempt failed (an earlier one may have formed a group of one)
            self.epoch, self.members = 0, []
        for i, why in left_out.items():
            self.fallback[i] = why
            log.warning("rollout worker %s cannot join the weight group (%s); it gets updates through the object "
                        "store", self.ids[i], why)
        if members:
            log.info("weight group %d: broadcaster + %d rollout worker(s) joined in %.1f s (%s, weights in %s)",
                     self.epoch, len(members), time.perf_counter() - t0, self.backend, self.dtype or "the learner's dtype")


def _status(ref, timeout: float | None = None) -> str:
    """A worker's ``join_collective`` answer: "ok", or why it could not join."""
    import ray

    try:
        return ray.get(ref, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - a dead or stuck worker cannot join either
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
