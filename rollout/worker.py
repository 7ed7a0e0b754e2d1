"""``RolloutWorker``: a Ray actor owning one vLLM engine (:class:`rollout.engine.RolloutEngine`).

Two ways to use it:

- batch: ``generate(prompts, sampling) -> [Group.to_dict(), ...]`` (all groups, in prompt order);
- continuous: ``start_continuous(prompt_source, sink, sampling, max_in_flight)`` keeps up to
  ``max_in_flight`` prompts in flight, pulling from ``prompt_source.next.remote(k)`` and pushing each
  group to ``sink.put.remote([group])`` the moment its last sample finishes. If the source also has
  ``release`` (like :class:`rollout.prompts.PromptSource`), prompts are leased under this worker's id
  so the router can re-queue them should the worker die.

Weights: ``load_weights(update)`` applies one :class:`rollout.weight_update.WeightUpdate` (its
tensors as a ``{name: CPU tensor}`` dict or an ``ObjectRef`` of one, fanned out to many workers
through the object store; or safetensors files the worker can read); the GPU path joins vLLM's NCCL
weight-transfer engine (:mod:`rollout.weight_sync`). Build workers with :func:`create_workers`.

Restarts: with ``max_restarts`` (``worker_restarts``) Ray restarts a dead worker by re-running
``__init__``: a fresh ``incarnation`` id, version 0, no continuous loop. A driver keeps ``watch()``
in flight (it fails the moment the process dies) and, on failure, polls ``health()`` until it answers
with a new incarnation, then starts the engine, republishes the current weights and restarts the
continuous loop (:class:`rollout.fleet.RolloutFleet` does this).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

from rollout.config import RolloutConfig, SamplingConfig
from rollout.engine import RolloutEngine
from rollout.weight_update import WeightUpdate, WeightUpdateError, check_version

log = logging.getLogger(__name__)


class RolloutWorker:
    """Ray actor (async) around one :class:`RolloutEngine`; create it with :func:`create_workers`."""

    def __init__(self, cfg: dict | RolloutConfig, worker_id: str = "rollout-0") -> None:
        self.cfg = cfg if isinstance(cfg, RolloutConfig) else RolloutConfig.model_validate(cfg)
        self.worker_id = worker_id
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.cfg.kv_cache_gib)
        self.engine = RolloutEngine(self.cfg, worker_id)
        self._continuous: asyncio.Task | None = None
        self._running = False
        self._inflight_prompts: dict[str, dict] = {}
        self._t_start = time.time()
        self.incarnation = uuid.uuid4().hex
        """Changes on every (re)start of the actor: how a driver tells a restarted worker from a slow one."""

    async def ready(self) -> dict:
        """Start the engine (idempotent); returns ``stats()``."""
        await self.engine.start()
        return await self.stats()

    # ------------------------------------------------------------------ batch
    async def generate(self, prompts: list[dict], sampling: dict | None = None) -> list[dict]:
        """``n`` samples for every prompt; returns the groups in prompt order."""
        await self.engine.start()
        s = SamplingConfig.model_validate(sampling or {})
        return list(await asyncio.gather(*(self.engine.generate_group(p, s) for p in prompts)))

    async def stream_completion(self, prompt: dict, params: dict):
        """Streaming generator (call with ``.options(num_returns="streaming")``) of one request's deltas."""
        await self.engine.start()
        async for delta in self.engine.stream_completion(prompt, params):
            yield delta

    # ------------------------------------------------------------------ continuous
    async def start_continuous(self, prompt_source, sink, sampling: dict | None = None,
                               max_in_flight: int | None = None) -> bool:
        """Begin pulling prompts and streaming groups out; returns at once (runs in the background)."""
        await self.engine.start()
        if self._continuous is not None and not self._continuous.done():
            raise RuntimeError(f"{self.worker_id}: continuous generation is already running")
        s = SamplingConfig.model_validate(sampling or {})
        limit = int(max_in_flight or self.cfg.max_in_flight)
        self._running = True
        self._continuous = asyncio.create_task(self._continuous_loop(prompt_source, sink, s, limit))
        return True

    async def _continuous_loop(self, source, sink, s: SamplingConfig, limit: int) -> None:
        leased = hasattr(source, "release")
        tasks: set[asyncio.Task] = set()

        async def one(prompt: dict) -> None:
            pid = str(prompt.get("prompt_id"))
            try:
                group = await self.engine.generate_group(prompt, s)
                await sink.put.remote([group])
                if leased:
                    await source.release.remote(self.worker_id, [pid])
            except Exception:
                log.exception("%s: prompt %s failed; it stays leased for re-queueing", self.worker_id, pid)
                raise
            finally:
                self._inflight_prompts.pop(pid, None)

        idle = 0.01
        while self._running:
            free = limit - len(tasks)
            if free > 0:
                ref = source.next.remote(free, self.worker_id) if leased else source.next.remote(free)
                prompts = await ref
                for p in prompts:
                    self._inflight_prompts[str(p.get("prompt_id"))] = p
                    t = asyncio.create_task(one(p))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                if prompts:
                    idle = 0.01
                    continue
            await asyncio.sleep(idle)  # nothing to pull or no free slot
            idle = min(idle * 2, 0.2)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop_continuous(self) -> int:
        """Stop pulling prompts, let the in-flight ones finish and stream out; returns groups made so far."""
        self._running = False
        if self._continuous is not None:
            await self._continuous
            self._continuous = None
        return self.engine.stats.groups

    async def in_flight_prompts(self) -> list[dict]:
        return list(self._inflight_prompts.values())

    # ------------------------------------------------------------------ weights
    async def load_weights(self, update: WeightUpdate) -> dict:
        """Pause (keeping requests), swap ``update`` in, resume; returns the sync record. A stale or
        malformed update raises :class:`rollout.weight_update.WeightUpdateError` and changes nothing."""
        import ray

        await self.engine.start()
        if not isinstance(update, WeightUpdate):
            raise WeightUpdateError(f"load_weights takes a WeightUpdate, got {type(update).__name__}")
        t0 = time.perf_counter()
        if isinstance(update.tensors, ray.ObjectRef):
            check_version(update.version, self.engine.version)  # before fetching anything
            update = update.resolved(await update.tensors)
        fetch_s = time.perf_counter() - t0
        return {**(await self.engine.apply_update(update)).__dict__, "fetch_s": fetch_s}

    async def join_collective(self, handle: dict) -> str:
        """Join the weight group of ``handle`` (collective transport); returns "ok" or why it could not."""
        await self.engine.start()
        try:
            return await self.engine.weights.join(handle)
        except Exception as e:  # noqa: BLE001 - the fleet falls back to the object store for this worker
            return f"{type(e).__name__}: {e}"

    async def nccl_init(self, init_info: dict) -> None:
        await self.engine.weights.nccl_init(init_info)

    async def nccl_begin(self, version: int) -> None:
        await self.engine.weights.nccl_begin(version)

    async def nccl_receive(self, update_info: dict | list) -> None:
        await self.engine.weights.nccl_receive(update_info)

    async def nccl_finish(self, version: int) -> dict:
        return (await self.engine.weights.nccl_finish(version)).__dict__

    async def set_reprefill_after_versions(self, k: int | None) -> None:
        """Change ``reprefill_after_versions`` at run time (None keeps every sequence's KV cache)."""
        self.cfg = self.cfg.model_copy(update={"reprefill_after_versions": k})
        self.engine.cfg = self.cfg

    async def get_version(self) -> int:
        return self.engine.version

    async def stats(self) -> dict[str, Any]:
        d = self.engine.stats_dict()
        d["in_flight_prompts"] = len(self._inflight_prompts)
        d["uptime_s"] = time.time() - self._t_start
        d["model"] = self.cfg.model_name
        return d

    async def ping(self) -> str:
        return self.worker_id

    async def health(self) -> dict[str, Any]:
        """Cheap liveness answer (no engine call): who this is, which incarnation, weights, loop state, and
        ``engine``: ``starting`` (not started yet), ``ok``, or why it can no longer generate."""
        dead = self.engine.dead_error()
        engine = dead or ("ok" if self.engine._llm is not None else "starting")
        return {"worker_id": self.worker_id, "incarnation": self.incarnation, "version": self.engine.version,
                "continuous": self._continuous is not None and not self._continuous.done(), "pid": os.getpid(),
                "engine": engine}

    async def watch(self) -> None:
        """Never returns while the worker can generate: a driver keeps one call in flight, and Ray fails it
        the moment this actor dies. An engine whose engine-core process died (a crash in vLLM, a signal)
        cannot be brought back inside this process, so the actor then exits and Ray restarts it (a fresh
        process, a fresh engine): a dead engine looks to the driver exactly like a dead worker."""
        while True:
            await asyncio.sleep(1.0)
            dead = self.engine.dead_error()
            if dead:
                log.error("%s: %s; exiting so that Ray restarts this worker with a fresh engine", self.worker_id, dead)
                os._exit(70)

    async def shutdown(self) -> None:
        self._running = False
        self.engine.shutdown()


def worker_options(cfg: RolloutConfig, placement_group=None, bundle_index: int | None = None,
                   resources: dict[str, float] | None = None, index: int = 0) -> dict:
    """``ray.remote(...).options`` for worker ``index`` from the config (plus an optional placement)."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib), "TOKENIZERS_PARALLELISM": "false"}
    if cfg.cpu_threads_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cfg.cpu_threads_bind[index % len(cfg.cpu_threads_bind)]
    opts: dict[str, Any] = {
        "num_cpus": cfg.num_cpus_per_worker, "num_gpus": cfg.num_gpus_per_worker,
        "max_restarts": cfg.worker_restarts, "max_concurrency": 10_000,
        "resources": {**cfg.resources_per_worker, **(resources or {})},
        "runtime_env": {"env_vars": env},
    }
    if placement_group is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=placement_group, placement_group_bundle_index=-1 if bundle_index is None else bundle_index)
    return opts


def create_workers(cfg: RolloutConfig, placement_group=None, resources: dict[str, float] | None = None,
                   wait: bool = True, name_prefix: str = "rollout") -> list:
    """Start ``cfg.num_workers`` :class:`RolloutWorker` actors; with ``wait`` block until engines are up.

    ``placement_group``: worker ``i`` goes to bundle ``i`` (when the group has that many bundles);
    ``resources``: extra custom Ray resources each worker needs.
    """
    import ray

    actor_cls = ray.remote(RolloutWorker)
    n_bundles = len(placement_group.bundle_specs) if placement_group is not None else 0
    workers = []
    for i in range(cfg.num_workers):
        bundle = i if i < n_bundles else None
        opts = worker_options(cfg, placement_group, bundle, resources, index=i)
        workers.append(actor_cls.options(**opts).remote(cfg.model_dump(), f"{name_prefix}-{i}"))
    if wait:
        from ray.exceptions import RayTaskError

        from rollout.engine_startup import EngineStartError

        try:
            ray.get([w.ready.remote() for w in workers])
        except RayTaskError as e:  # the engine's own one-line cause, not Ray's wrapped traceback
            if isinstance(e.cause, EngineStartError):
                for w in workers:
                    ray.kill(w)
                raise EngineStartError(str(e.cause)) from None
            raise
    return workers


__all__ = ["RolloutWorker", "create_workers", "worker_options", "WeightUpdateError"]
