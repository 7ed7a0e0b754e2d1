"""``RolloutFleet``: the rollout workers (:class:`rollout.worker.RolloutWorker` actors) as one fleet
that survives worker deaths; the GRPO job, the rollout service and the benchmarks all drive it.

- **continuous generation** (the job): each worker always has a ``watch()`` call in flight, checked by a
  local ``ray.wait(timeout=0)`` every loop iteration (:meth:`poll`, no RPC), so a death is seen at once.
  A dead worker's leased prompts go back to the prompt source, Ray restarts the actor, and the fleet
  brings the new incarnation back one non-blocking call at a time (engine, current weights, continuous
  generation). A worker Ray will not restart is dropped; with none left the job fails naming them.
- **batches** (the service, benchmarks): :meth:`generate` / :meth:`agenerate` send one prompt per call
  to the least-loaded up worker (at most ``max_in_flight`` each); a prompt whose worker dies runs on
  another, so a batch yields one group per prompt. :meth:`map` spreads whole payloads (evaluation shards).
- **weights**: :meth:`publish` / :meth:`apublish` forward one :class:`rollout.weight_update.WeightUpdate`
  to every up worker (object store or broadcast); a rejoining worker gets the latest one when back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from rollout.weight_update import WeightUpdate, stale_cause

log = logging.getLogger("flywheel.grpo")


class NoLiveWorkers(RuntimeError):
    """Every rollout worker is dead."""


@dataclass
class _Rejoin:
    """Where one lost worker is on its way back (``RolloutFleet``)."""

    since: float  # time.monotonic() when the worker was found dead
    step: str = "health"
    """``health`` (wait for a new incarnation), ``settle`` (the publish it had in flight), ``ready``
    (engine start), ``load`` (weights), ``start``."""
    ref: Any = None  # the call in flight for ``step`` (None: a ``health`` retry is due at ``not_before``)
    not_before: float = 0.0
    version: int = 0  # weight version the worker holds (0 after a restart)
    settle: tuple[int, Any] | None = None
    """(version, ref) of a publish in flight when the worker was found dead: Ray may have run it on the new
    incarnation, so its outcome decides what the worker holds (no update is sent twice or skipped)."""
    requeued: int = 0  # prompts leased to it that went back to the queue
    running: bool = False  # its continuous loop runs (started by the rejoin, or a false alarm)
    died: int = 0  # ActorDiedError answers so far (Ray gave up restarting it after a few)


class RolloutFleet:
    """The job's rollout workers, and what keeps the job going when one dies.

    Every up worker has a ``watch()`` call in flight; :meth:`poll` (a local ``ray.wait(timeout=0)``,
    no RPC, cheap enough for every driver loop iteration) sees it fail the moment the worker dies.
    The fleet then re-queues the prompts leased to the worker (``PromptSource.requeue_lessee``), polls
    ``health()`` every ``HEALTH_RETRY_S`` (a restarting actor answers ``ActorUnavailableError`` at once)
    until a new incarnation answers, and brings it back one call at a time without blocking the driver:
    start the engine, load the *current* weights (again if a newer version was published meanwhile),
    restart continuous generation, watch again. A worker that Ray no longer restarts
    (``rollout.worker_restarts`` used up) is dropped; when no worker is left the job fails, naming them.
    """

    HEALTH_RETRY_S = 1.0
    REJOIN_TIMEOUT_S = 1800.0
    """A lost worker not back after this long counts as dead (a vLLM start is 40-300 s on 2 cores)."""

    def __init__(self, workers: list[Any], max_in_flight: int = 16, transport: str = "object_store",
                 collective: dict[str, Any] | None = None):
        """``transport``: ``object_store`` or ``collective`` (a broadcast, :class:`rollout.weight_group.WeightGroup`
        built with the ``collective`` keyword arguments: ``bucket_mib``, ``dtype``, ``ranks_per_worker``,
        ``broadcaster_options``)."""
        import ray

        if not workers:
            raise ValueError("RolloutFleet needs at least one worker")
        self.workers = list(workers)
        self.max_in_flight = max_in_flight
        """Batch mode: prompts outstanding on one worker at most."""
        self.load = [0] * len(self.workers)
        """Batch mode: prompts outstanding per worker."""
        self.requeued = 0
        """Batch mode: prompts run again because their worker died."""
        health = ray.get([w.health.remote() for w in self.workers])
        self.ids = [h["worker_id"] for h in health]
        self.incarnation = [h["incarnation"] for h in health]
        self.state = ["up"] * len(self.workers)
        """``up``, ``rejoining`` or ``dead`` per worker."""
        self._watch = {i: w.watch.remote() for i, w in enumerate(self.workers)}
        self._rejoin: dict[int, _Rejoin] = {}
        self.update: WeightUpdate | None = None
        """The last published update, for rejoining workers."""
        self.continuous: tuple | None = None
        """``start_continuous`` arguments while a stage trains (a rejoined worker resumes with them)."""
        self.publish_refs: dict[int, Any] = {}
        self.restarts = 0
        self.weight_group = None
        if transport == "collective":
            from rollout.weight_group import WeightGroup

            self.weight_group = WeightGroup(self.workers, self.ids, **(collective or {}))
        self._broadcast: Any = None
        """The broadcaster's call of the publish in flight (collective transport)."""
        self._broadcast_to: set[int] = set()
        """Workers the publish in flight was sent to by broadcast."""
        self._publish_recs: list[dict] = []
        self.last_publish: dict[str, Any] = {}
        """The last publish that landed: version, transport, bytes moved, seconds to hand over, stall, and the
        workers that got it by broadcast (``broadcast_to``; the others through the object store)."""
        self.recoveries: list[dict[str, Any]] = []
        """Per rejoined worker: id, weight version it got, seconds from death to generating again."""

    @property
    def version(self) -> int:
        """Version of the last published update (0: none)."""
        return self.update.version if self.update is not None else 0

    def up(self) -> list[int]:
        return [i for i, st in enumerate(self.state) if st == "up"]

    @property
    def num_alive(self) -> int:
        return len(self.up())

    # ---- failure handling ---------------------------------------------------------------------------
    def poll(self) -> int:
        """Notice dead workers and move rejoining ones on, without blocking; returns restarts seen now."""
        import ray

        before = self.restarts
        if self._watch:
            done, _ = ray.wait(list(self._watch.values()), num_returns=len(self._watch), timeout=0)
            for i, ref in list(self._watch.items()):
                if ref in done:
                    self._lost(i, ref)
        now = time.monotonic()
        for i, r in list(self._rejoin.items()):
            if r.ref is None:
                if now >= r.not_before:
                    r.ref = self.workers[i].health.remote()
            elif ray.wait([r.ref], timeout=0)[0]:
                self._advance(i, r)
            elif now - r.since > self.REJOIN_TIMEOUT_S:  # a call that never returns (engine start hangs)
                ray.kill(self.workers[i], no_restart=True)
                self._dead(i, f"not back after {self.REJOIN_TIMEOUT_S:.0f} s (stuck in {r.step})")
        if not any(st != "dead" for st in self.state):
            raise RuntimeError(f"every rollout worker died for good ({', '.join(self.ids)}): Ray's restarts "
                               "(rollout.worker_restarts) are used up; raise it or find why they die")
        return self.restarts - before

    def _requeue(self, i: int) -> int:
        import ray

        if self.continuous is None:
            return 0
        n = ray.get(self.continuous[0].requeue_lessee.remote(self.ids[i]), timeout=60)  # back to the head
        log.warning("%s: %d leased prompt(s) re-queued", self.ids[i], n)
        return n

    def _lost(self, i: int, watch_ref: Any) -> None:
        import ray

        try:
            ray.get(watch_ref)
            err = "watch() returned"
        except Exception as e:  # RayActorError (died / restarting); anything else is just as fatal here
            err = f"{type(e).__name__}"
        del self._watch[i]
        self.state[i] = "rejoining"
        if self.weight_group is not None:  # its process left the weight group: form it again without it
            self.weight_group.broken(f"{self.ids[i]} lost")
        log.warning("rollout worker %s lost (%s); waiting for Ray to restart it", self.ids[i], err)
        requeued = self._requeue(i)
        self._rejoin[i] = _Rejoin(since=time.monotonic(), ref=self.workers[i].health.remote(), requeued=requeued,
                                  settle=self.publish_refs.pop(i, None))

    def _advance(self, i: int, r: _Rejoin) -> None:
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        try:
            out = ray.get(r.ref)
        except RayActorError as e:  # restarting (ActorUnavailableError) or gone (ActorDiedError)
            if r.step == "settle":  # the publish went to the dead incarnation (or nobody knows): ready() tells
                r.step, r.ref = "ready", self.workers[i].ready.remote()
                return
            r.died += isinstance(e, ActorDiedError)
            if r.died >= 3 or time.monotonic() - r.since > self.REJOIN_TIMEOUT_S:
                self._dead(i, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                return
            if r.step != "health":  # died again while rejoining: its new leases go back too
                r.requeued += self._requeue(i)
            r.step, r.ref, r.not_before = "health", None, time.monotonic() + self.HEALTH_RETRY_S
            return
        except Exception as e:  # the engine failed to start, a weight load was refused, ...
            stale = stale_cause(e)
            if stale is None:
                self._dead(i, f"{type(e).__name__}: {e}")
                return
            out = {"version": stale.current}  # it already holds this version (or a newer one): up to date
        w = self.workers[i]
        if r.step == "health":
            if out["incarnation"] != self.incarnation[i]:
                self.restarts += 1
                self.incarnation[i] = out["incarnation"]
                log.warning("rollout worker %s restarted by Ray (pid %s) after %.1f s; starting its engine",
                            self.ids[i], out.get("pid"), time.monotonic() - r.since)
            r.version, r.running = int(out["version"]), bool(out["continuous"])
            if r.settle is not None:
                r.step, r.ref, r.settle = "settle", r.settle[1], None
            else:
                r.step, r.ref = "ready", w.ready.remote()
            return
        if r.step == "settle":  # whatever it did (maybe on the old incarnation), ready() now says what it holds
            r.step, r.ref = "ready", w.ready.remote()
            return
        if r.step in ("ready", "load"):  # no other weight call of ours is in flight to it: this is exact
            r.version = int(out["version"])
        r.running = r.running or r.step == "start"
        if self.update is not None and self.version > r.version:  # current weights first
            r.step = "load"
            r.ref = w.load_weights.remote(self.update)
        elif self.continuous is not None and not r.running:
            r.step, r.ref = "start", w.start_continuous.remote(*self.continuous)
        else:
            self._up(i, r)

    def _up(self, i: int, r: _Rejoin) -> None:
        del self._rejoin[i]
        if self.weight_group is not None:
            self.weight_group.rejoined(i)
        self.state[i] = "up"
        self._watch[i] = self.workers[i].watch.remote()
        rec = {"worker": self.ids[i], "version": r.version, "requeued": r.requeued,
               "recovery_s": round(time.monotonic() - r.since, 2)}
        self.recoveries.append(rec)
        log.warning("rollout worker %s back: weights version %d, generating again %.1f s after it died",
                    self.ids[i], r.version, rec["recovery_s"])

    def _dead(self, i: int, why: str) -> None:
        self._rejoin.pop(i, None)
        self.state[i] = "dead"
        log.error("rollout worker %s is gone for good (%s); the job goes on with %d worker(s)", self.ids[i],
                  why, len(self.up()))

    def wait_for_up(self) -> list[int]:
        """Indices of up workers, waiting (polling) while every live worker is rejoining."""
        while not self.up():
            self.poll()
            time.sleep(0.5)
        return self.up()

    # ---- calls on the workers -----------------------------------------------------------------------
    def publish(self, update: WeightUpdate, wait: bool) -> None:
        """Send ``update`` to every up worker (rejoining ones get it when they are back): by broadcast to
        the weight group's members with the collective transport, through the object store otherwise."""
        self.wait_published()  # never pile updates up: the previous one must have landed
        self.update = update
        self._publish_recs = []
        members, sent = [], update
        for attempt in range(2 if self.weight_group is not None and update.tensors is not None else 0):
            try:
                members = self.weight_group.ready_members(self.up())
                if members:
                    handle = self.weight_group.plan(update.tensors, update.version)
                    sent = WeightUpdate(update.version, collective=handle, specs=handle["specs"])
                    self._broadcast = self.weight_group.broadcast(handle)
                break
            except Exception as e:  # noqa: BLE001 - the broadcaster died (a new one is started once), ...
                from ray.exceptions import RayActorError

                dead = isinstance(e, RayActorError)
                self.weight_group.broken(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                         sender_dead=dead)
                members, sent = [], update  # ... else this update goes through the object store
                if not dead:
                    break
        self._broadcast_to = set(members)
        for i in self.up():
            self.publish_refs[i] = (update.version, self.workers[i].load_weights.remote(sent if i in members else update))
        if wait:
            self.wait_published()

    def wire_dtype(self) -> str | None:
        """The dtype to publish the next update in: with the collective transport the engines' own (forming
        the weight group first if needed), so it is cast once, where it is made; None: as it is."""
        if self.weight_group is None:
            return None
        self.weight_group.ready_members(self.up())
        return self.weight_group.dtype

    async def apublish(self, update: WeightUpdate) -> list[dict]:
        """Every up worker applies ``update`` (asyncio; the service). Returns their sync records; a
        worker's refusal (a :class:`rollout.weight_update.WeightUpdateError`) propagates."""
        import asyncio

        recs = await asyncio.gather(*(self.workers[i].load_weights.remote(update) for i in self.up()))
        self.update = update
        return list(recs)

    def wait_published(self) -> None:
        """Wait for the last publish on the workers still up (a worker dying meanwhile is dropped)."""
        import ray
        from ray.exceptions import RayActorError

        while self.publish_refs:
            refs = [ref for _, ref in self.publish_refs.values()]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=1.0)
            for i, (version, ref) in list(self.publish_refs.items()):
                if ref in done:
                    del self.publish_refs[i]
                    try:
                        self._publish_recs.append(ray.get(ref))
                    except RayActorError:
                        pass  # its watch fails too: poll() re-queues and rejoins it
                    except Exception as e:
                        if stale_cause(e) is not None:
                            log.warning("rollout worker %s already held weights v%d (%s)", self.ids[i], version,
                                        stale_cause(e))
                        elif i in self._broadcast_to:
                            # the broadcast did not reach it: the same update through the object store
                            log.warning("rollout worker %s: broadcast of v%d failed (%s); sending it through the "
                                        "object store", self.ids[i], version, str(e).splitlines()[-1])
                            self.weight_group.broken(f"{self.ids[i]}: {type(e).__name__}")
                            self._broadcast_to.discard(i)
                            self.publish_refs[i] = (version, self.workers[i].load_weights.remote(self.update))
                        else:
                            raise
            self.poll()
        self._finish_publish()

    def publish_metrics(self) -> dict[str, float]:
        """``last_publish`` as flat numbers for the metrics log (empty before the first update landed)."""
        lp = self.last_publish
        if not lp:
            return {}
        return {"weight_update_version": lp["version"], "weight_bytes": lp["bytes"],
                "weight_handover_s": lp["handover_s"], "weight_stall_s": lp["stall_s"],
                "weight_collective": float(lp["transport"] == "collective"),
                "weight_broadcast_workers": float(len(lp.get("broadcast_to", [])))}

    def _finish_publish(self) -> None:
        """Record what the publish that just landed cost (``last_publish``): bytes the workers received,
        hand-over seconds (slowest worker, from its call arriving to generating with the new weights:
        fetching, staging or receiving, preparing, the swap), the longest generation stall."""
        import ray

        if not self._publish_recs and self._broadcast is None:
            return
        sent: dict[str, float] = {}
        if self._broadcast is not None:
            try:
                sent = ray.get(self._broadcast, timeout=60)
            except Exception as e:  # noqa: BLE001 - its receivers already got the update another way
                from ray.exceptions import RayActorError

                self.weight_group.broken(f"broadcaster: {type(e).__name__}", sender_dead=isinstance(e, RayActorError))
            self._broadcast = None
        recs = self._publish_recs
        self.last_publish = {
            "version": self.version, "transport": "collective" if sent else "object_store",
            "bytes": sum(float(r.get("bytes", 0)) for r in recs),
            "handover_s": max((float(r.get("fetch_s", 0.0)) + float(r.get("sync_s", 0.0)) for r in recs), default=0.0),
            "stall_s": max((float(r.get("stall_s", 0.0)) for r in recs), default=0.0),
            "fetch_s": max((float(r.get("fetch_s", 0.0)) for r in recs), default=0.0),
            "broadcast_s": sent.get("seconds"), "sender_peak_extra_bytes": sent.get("peak_extra_bytes"),
            "sender_plan_s": self.weight_group.plan_s if sent else None, "sender_copy_s": sent.get("copy_s"),
            "sender_wire_s": sent.get("wire_s"),
            "broadcast_to": [self.ids[i] for i in sorted(self._broadcast_to)] if sent else []}
        self._publish_recs = []

    def start_continuous(self, source: Any, sink: Any, sampling: dict, max_in_flight: int) -> None:
        self.continuous = (source, sink, sampling, max_in_flight)
        for i in self.up():
            self.workers[i].start_continuous.remote(*self.continuous)

    def stop_continuous(self) -> None:
        """Stop pulling prompts; in-flight prompts finish and stream out (dead workers are skipped)."""
        import ray
        from ray.exceptions import RayActorError

        self.continuous = None
        starting = [r.ref for r in self._rejoin.values() if r.step == "start" and r.ref is not None]
        if starting:  # a loop that is just starting is stopped too
            ray.wait(starting, num_returns=len(starting), timeout=60)
        self.poll()
        running = self.up() + [i for i, r in self._rejoin.items() if r.running]
        for r in self._rejoin.values():
            r.running = False  # the next stage's loop starts once it is back
        for i, ref in [(i, self.workers[i].stop_continuous.remote()) for i in running]:
            try:
                ray.get(ref)
            except RayActorError:
                log.warning("rollout worker %s died while stopping", self.ids[i])

    def stats(self) -> list[dict[str, Any]]:
        """``stats()`` of the up workers that answer within 30 s."""
        import ray

        refs = [self.workers[i].stats.remote() for i in self.up()]
        out = []
        for ref in ray.wait(refs, num_returns=len(refs), timeout=30)[0] if refs else []:
            try:
                out.append(ray.get(ref))
            except Exception as e:  # a worker dying now is the watch's business, not the metrics'
                log.warning("worker stats unavailable: %s", type(e).__name__)
        return out

    def pick(self) -> int:
        """Batches (least-loaded, one prompt per call): the up worker with the fewest outstanding prompts."""
        live = self.up()
        if not live:
            raise NoLiveWorkers(f"every rollout worker is dead ({', '.join(self.ids)})")
        return min(live, key=lambda i: (self.load[i], i))

    def mark_dead(self, i: int, err: BaseException | None = None) -> None:
        """Drop worker ``i`` (batch mode: a call on it failed with a Ray actor error)."""
        if self.state[i] != "dead":
            log.warning("rollout worker %s died (%s); its prompts run elsewhere", self.ids[i], err)
        self._watch.pop(i, None)
        self._rejoin.pop(i, None)
        self.state[i] = "dead"
        if self.weight_group is not None:
            self.weight_group.broken(f"{self.ids[i]} dead")

    def generate(self, prompts: list[dict], sampling: dict | None = None) -> list[dict]:
        """One group per prompt, in prompt order, spread over the up workers by load."""
        import ray
        from ray.exceptions import RayActorError

        pending = list(range(len(prompts)))[::-1]  # pop() takes the next prompt
        results: list[dict | None] = [None] * len(prompts)
        running: dict[Any, tuple[int, int]] = {}  # ref -> (worker index, prompt index)
        while pending or running:
            while pending:
                w = self.pick()  # raises NoLiveWorkers
                if self.load[w] >= self.max_in_flight:
                    break
                j = pending.pop()
                running[self.workers[w].generate.remote([prompts[j]], sampling)] = (w, j)
                self.load[w] += 1
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                w, j = running.pop(ref)
                self.load[w] -= 1
                try:
                    results[j] = ray.get(ref)[0]
                except RayActorError as e:
                    self.mark_dead(w, e)
                    pending.append(j)
                    self.requeued += 1
        return results  # type: ignore[return-value]

    async def agenerate_one(self, prompt: dict, sampling: dict | None = None) -> dict:
        """One group (asyncio; the service). Runs again on another worker if the chosen one dies."""
        from ray.exceptions import RayActorError

        while True:
            w = self.pick()
            self.load[w] += 1
            try:
                return (await self.workers[w].generate.remote([prompt], sampling))[0]
            except RayActorError as e:
                self.mark_dead(w, e)
                self.requeued += 1
            finally:
                self.load[w] -= 1

    async def agenerate(self, prompts: list[dict], sampling: dict | None = None) -> list[dict]:
        import asyncio

        return list(await asyncio.gather(*(self.agenerate_one(p, sampling) for p in prompts)))

    def map(self, method: str, payloads: list[Any], *args: Any) -> list[Any]:
        """``method(payload, *args)`` for every payload, spread over the up workers; a payload whose worker
        dies is run again on a live one. Results in payload order."""
        import ray
        from ray.exceptions import RayActorError

        results: list[Any] = [None] * len(payloads)
        todo = list(range(len(payloads)))
        while todo:
            up = self.wait_for_up()
            refs = {k: getattr(self.workers[up[j % len(up)]], method).remote(payloads[k], *args)
                    for j, k in enumerate(todo)}
            todo = []
            for k, ref in refs.items():
                try:
                    results[k] = ray.get(ref)
                except RayActorError:
                    todo.append(k)
            self.poll()
        return results

    def kill(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self._watch, self._rejoin, self.publish_refs = {}, {}, {}
