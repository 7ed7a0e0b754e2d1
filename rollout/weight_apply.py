"""Applying a :class:`rollout.weight_update.WeightUpdate` to one running vLLM engine, in flight.

:class:`WeightApplier` is the weight half of :class:`rollout.engine.RolloutEngine` (``engine.weights``):
it owns the engine's policy version and its update history. ``apply(update)``:

1. validates the update once, before anything changes (:meth:`WeightUpdate.validate`: version, then
   names/shapes/dtypes against the served checkpoint); a rejected update leaves weights and version;
2. stages it for the engine process: tensors are written to a safetensors file in shared memory
   (``/dev/shm``; tensors cannot travel as ``collective_rpc`` arguments through vLLM's engine-core
   IPC), files are used as they are;
3. lets the engine process prepare it in the background while generation goes on
   (:mod:`rollout.weight_extension`), then pauses (mode ``keep``, cache kept), commits, relabels the
   version and resumes, sent back to back so the model idles only for the commit. In-flight requests
   keep their KV cache and continue; optionally (``reprefill_after_versions = k``) a sequence whose
   KV cache is ``k`` or more versions stale is aborted and resubmitted as prompt + tokens so far.

The int version becomes vLLM's string label in :meth:`WeightApplier.label` only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rollout.config import RolloutConfig
from rollout.weight_update import WeightUpdate, WeightUpdateError, check_version, model_specs, vllm_label

log = logging.getLogger(__name__)


class ServingEngine(Protocol):
    """What the applier uses of the engine it updates (:class:`rollout.engine.RolloutEngine`, which makes
    its applier; the engine module imports this one, never the other way)."""

    cfg: RolloutConfig
    worker_id: str
    _llm: Any
    """The vLLM ``AsyncLLM``, None before start-up."""
    _seqs: dict[str, Any]
    """Requests in flight by id (``request_id``, ``kv_version``, ``can_reprefill``, ``reprefill``)."""
    _resumed: asyncio.Event
    """Set while the engine takes new requests; cleared around an update."""

    @property
    def llm(self) -> Any: ...


@dataclass
class SyncRecord:
    """One weight update as seen by an engine."""

    version: int
    sync_s: float
    """Wall time of the whole update (staging + preparing + pause + commit + resume)."""
    stall_s: float
    """Client side: from sending the pause to the resume acknowledgement. Includes the wait for
    the step running when the pause arrived (tokens are still produced then); the time the model
    really sat idle is ``idle_s``."""
    in_flight: int
    """Engine requests in flight (a group without re-prefill is one request of ``n`` sequences)."""
    reprefilled: int = 0
    bytes: int = 0
    """Bytes of weights this engine received for the update."""
    stage_s: float = 0.0
    """Part of ``sync_s`` before the pause: staging the tensors in shared memory."""
    prepare_s: float = 0.0
    """Part of ``sync_s`` before the pause: building the new tensors and GEMM handles in the engine
    process while it keeps generating (0 when the update is reloaded with the engine paused)."""
    pause_s: float = 0.0
    """Part of ``stall_s`` until the commit/reload was acknowledged: mostly waiting for the step
    that was running when the pause arrived."""
    reload_s: float = 0.0
    """Part of ``stall_s`` from the commit/reload acknowledgement to the resume acknowledgement."""
    prepared: bool = False
    """True: prepared ahead and committed while paused; False: ``reload_weights`` while paused."""
    commit_s: float | None = None
    """Engine process: time the commit (or reload) itself ran. Filled shortly after the update."""
    idle_s: float | None = None
    """Engine process: the model's idle gap around the update, from the end of the last step
    before it to the start of the first step after it: the generation stall. None when no step
    followed (nothing in flight). Filled shortly after the update."""
    prepare_thread_s: float | None = None
    """Engine process: time the background preparation took (part of ``prepare_s``)."""
    receive_s: float | None = None
    """Engine process: part of ``prepare_thread_s`` spent reading the staged file or receiving the broadcast."""
    resume_to_step_s: float | None = None
    """Engine process: from the end of the commit to the start of the next step."""


class WeightApplier:
    """In-flight weight updates of one :class:`rollout.engine.RolloutEngine`; owns its version."""

    def __init__(self, engine: ServingEngine) -> None:
        self.engine = engine
        self.version = 0
        """Policy version of the weights the engine holds (labels every token sampled from now on)."""
        self.syncs: list[SyncRecord] = []
        self.expected = model_specs(engine.cfg.model)
        """Specs of the served checkpoint (empty for a hub id: the engine's loader checks then)."""
        self._sync_lock = asyncio.Lock()
        self._shm_dir = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        self._prepare_supported = True
        self._timing_tokens: dict[str, SyncRecord] = {}
        self._timing_task: asyncio.Future | None = None
        self.step_gaps: list[float] = []
        """Recent normal gaps between two model steps (s), for comparison with ``idle_s``."""

    async def label(self, version: int) -> None:
        """Make vLLM stamp ``version`` on every step from now on (vLLM's boundary: its string label)."""
        await self.engine.llm.update_weight_version(vllm_label(version))

    async def apply(self, update: WeightUpdate) -> SyncRecord:
        """Validate, stage and swap in ``update`` (tensors already fetched, or files) while generating."""
        from safetensors.torch import save_file

        async with self._sync_lock:
            if update.collective is not None:
                return await self._apply_broadcast(update)
            update.validate(self.version, self.expected)
            t0 = time.perf_counter()
            if update.files is not None:
                rec = await self._update(update.version, list(update.files), t0)
                rec.bytes = sum(Path(f).stat().st_size for f in update.files)
                return rec
            path = self._shm_dir / f"flywheel-{self.engine.worker_id}-{os.getpid()}-v{update.version}.safetensors"
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in update.tensors.items()}
            await asyncio.to_thread(save_file, tensors, str(path))
            try:
                rec = await self._update(update.version, [str(path)], t0)
                rec.bytes = sum(t.numel() * t.element_size() for t in tensors.values())
                return rec
            finally:
                path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- collective transport
    async def join(self, handle: dict) -> str:
        """Join the weight group of ``handle`` (:mod:`rollout.weight_sync`); "ok" or why not."""
        llm = self.engine.llm
        await llm.collective_rpc("flywheel_join", args=(handle,))
        timeout_s = float(handle.get("timeout_s", 60.0))
        deadline = time.monotonic() + 2 * timeout_s + 60.0  # arrivals, then the group itself
        while time.monotonic() < deadline:
            statuses = await llm.collective_rpc("flywheel_joined", args=(handle["group"],))
            if all(st is not None for st in statuses):
                bad = [st for st in statuses if st != "ok"]
                return bad[0] if bad else "ok"
            await asyncio.sleep(0.05)
        return f"weight group {handle['group']} not joined within {2 * timeout_s + 60:.0f} s"

    async def _apply_broadcast(self, update: WeightUpdate) -> SyncRecord:
        """Receive a broadcast update (prepared in the background while generating), then swap it in as
        usual. A refused update still drains the broadcast (the other receivers must not stall); one that
        fails to arrive changes nothing."""
        t0 = time.perf_counter()
        handle, llm = update.collective, self.engine.llm
        try:
            update.validate(self.version, self.expected)
        except WeightUpdateError:
            await llm.collective_rpc("flywheel_receive", args=(handle, f"discard-{update.version}", "discard"))
            raise
        version = update.version
        token = f"{self.engine.worker_id}-v{version}-{uuid.uuid4().hex[:8]}"
        mode = "prepare" if self.engine.cfg.prepare_updates else "stage"
        started = await llm.collective_rpc("flywheel_receive", args=(handle, token, mode))
        if not all(started):
            raise RuntimeError(f"{self.engine.worker_id}: not a member of weight group {handle['group']}")
        status = await self._wait_prepared(token)
        if status == "ok" and mode == "prepare":
            load, pipelined = ("flywheel_commit", (token,)), True
        elif status == "ok" or status.startswith("staged"):
            if mode == "prepare":
                log.warning("%s: v%d cannot be prepared ahead (%s); reloading it with the engine paused",
                            self.engine.worker_id, version, status)
            load, pipelined = ("flywheel_reload_staged", (token,)), False
        else:
            await llm.collective_rpc("flywheel_discard", args=(token,))
            raise RuntimeError(f"{self.engine.worker_id}: weight update v{version} did not arrive ({status}); "
                               f"weights and version {self.version} unchanged")
        t_received = time.perf_counter()
        rec = await self._swap(version, load, pipelined=pipelined)
        rec.sync_s = time.perf_counter() - t0
        rec.prepare_s, rec.prepared, rec.bytes = t_received - t0, pipelined, int(handle.get("bytes", 0))
        self._timing_tokens[token] = rec
        self._schedule_timing_refresh()
        return rec

    async def _update(self, version: int, paths: list[str], t0: float) -> SyncRecord:
        """Prepare the update while generating, then pause -> commit -> relabel -> resume.

        The prepare-then-commit path (:mod:`rollout.weight_extension`) builds the new tensors and
        GEMM handles in a background thread of the engine process, so the pause only covers
        in-place copies. Where it does not apply (not CPU, or an update it cannot map) the whole
        ``reload_weights`` runs paused instead.
        """
        token = f"{self.engine.worker_id}-v{version}-{uuid.uuid4().hex[:8]}"
        t_staged = time.perf_counter()
        commit = None
        if self.engine.cfg.prepare_updates and self._prepare_supported:
            [started] = await self.engine.llm.collective_rpc("flywheel_prepare", args=(paths, token))
            status = await self._wait_prepared(token) if started else "not supported on this platform"
            if status == "ok":
                commit = ("flywheel_commit", (token,))
            else:
                self._prepare_supported = started  # a platform that cannot, never will
                log.warning("%s: v%d cannot be prepared ahead (%s); reloading it with the engine paused",
                            self.engine.worker_id, version, status)
        t_prepared = time.perf_counter()
        load = commit or ("flywheel_reload_files", (paths, token))
        rec = await self._swap(version, load, pipelined=commit is not None)
        rec.sync_s = time.perf_counter() - t0
        rec.stage_s, rec.prepare_s, rec.prepared = t_staged - t0, t_prepared - t_staged, commit is not None
        self._timing_tokens[token] = rec
        self._schedule_timing_refresh()
        return rec

    async def _wait_prepared(self, token: str) -> str:
        """Poll the background preparation (each poll is a sub-millisecond engine-loop call)."""
        delay = 0.002
        while True:
            [status] = await self.engine.llm.collective_rpc("flywheel_prepared", args=(token,))
            if status is not None:
                return status
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def _pause(self) -> None:
        """``pause_generation(mode="keep", clear_cache=False)`` without its cosmetic 20 ms sleep
        (it only orders log output), so the stall is what the engine needs, not more."""
        core = getattr(self.engine.llm, "engine_core", None)
        if core is not None and hasattr(core, "pause_scheduler_async"):
            await core.pause_scheduler_async(mode="keep", clear_cache=False)
        else:
            await self.engine.llm.pause_generation(mode="keep", clear_cache=False)

    async def _swap(self, version: int, load: tuple[str, tuple], pipelined: bool) -> SyncRecord:
        """pause(keep) -> load -> relabel -> [abort stale sequences] -> resume.

        The engine core runs these calls in the order they arrive, between two steps, and does
        not step while paused, so they can be sent back to back (``pipelined``): the engine then
        stays paused only as long as it takes to run them, with no client round trip inside. That
        is done for a prepared commit, which cannot fail half-way (copies of checked tensors into
        parameters of the same shape). A ``reload_weights`` can fail, and must then leave the old
        version label, so the relabel waits for its result (one round trip while paused).

        A pipelined pause is not awaited: vLLM answers a keep-mode pause only once the engine is
        idle, which after the resume may be much later; its answer is dropped when it comes.
        """
        llm = self.engine.llm
        times: dict[str, float] = {}

        async def timed(key: str, coro):
            try:
                return await coro
            finally:
                times[key] = time.perf_counter()

        self.engine._resumed.clear()
        in_flight = len(self.engine._seqs)
        stale = self._stale_sequences(version)
        ids = [s.request_id for s in stale]
        method, args = load
        t_pause = time.perf_counter()
        try:
            # each ensure_future sends its request to the engine core in this order
            pause = asyncio.ensure_future(self._pause())
            loading = asyncio.ensure_future(timed("loaded", llm.collective_rpc(method, args=args)))
            if pipelined:
                pause.add_done_callback(_drop_result)
                rest = [asyncio.ensure_future(self.label(version))]
                rest += [asyncio.ensure_future(llm.abort(ids))] if ids else []
                rest.append(asyncio.ensure_future(timed("resumed", llm.resume_generation())))
                results = await asyncio.gather(loading, *rest, return_exceptions=True)
                self.version = version  # the engine now labels new tokens with it, whatever happened
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise RuntimeError(f"{self.engine.worker_id}: weight update v{version} failed in the engine "
                                       f"({errors[0]!r}); its weights may be partly updated") from errors[0]
            else:
                try:
                    await asyncio.gather(pause, loading)
                except BaseException:
                    for s in stale:
                        s.reprefill = False
                    await llm.resume_generation()
                    raise
                rest = [self.label(version)] + ([llm.abort(ids)] if ids else [])
                await asyncio.gather(*rest, timed("resumed", llm.resume_generation()))
                self.version = version
        finally:
            self.engine._resumed.set()
        rec = SyncRecord(version=version, sync_s=time.perf_counter() - t_pause, stall_s=times["resumed"] - t_pause,
                         in_flight=in_flight, reprefilled=len(stale), pause_s=times["loaded"] - t_pause,
                         reload_s=times["resumed"] - times["loaded"])
        self.syncs.append(rec)
        log.info("%s: loaded weights v%d (pause window %.1f ms; %d in flight, %d re-prefilled)", self.engine.worker_id,
                 version, 1000 * rec.stall_s, in_flight, len(stale))
        return rec

    def _schedule_timing_refresh(self) -> None:
        if self._timing_task is None or self._timing_task.done():
            self._timing_task = asyncio.ensure_future(self._refresh_timings_later())

    async def _refresh_timings_later(self) -> None:
        """Fill the engine-side timings of recent updates once the next model step has started."""
        for _ in range(20):
            await asyncio.sleep(0.05)
            try:
                if not await self.refresh_sync_timings():
                    return
            except Exception:  # timings are diagnostics; never break generation
                log.debug("%s: could not read update timings", self.engine.worker_id, exc_info=True)
                return

    async def refresh_sync_timings(self) -> int:
        """Ask the engine process when the model stepped around each pending update and fill
        ``commit_s`` / ``idle_s`` of their records; returns how many are still pending."""
        if not self._timing_tokens or self.engine._llm is None:
            return 0
        [data] = await self.engine.llm.collective_rpc("flywheel_commit_gaps", args=(list(self._timing_tokens),))
        self.step_gaps = list(data["gaps"])
        for c in data["commits"]:
            rec = self._timing_tokens.get(c["token"])
            if rec is None:
                continue
            rec.commit_s = c["commit_end"] - c["commit_start"]
            if "prepare_end" in c:
                rec.prepare_thread_s = c["prepare_end"] - c["prepare_start"]
                rec.receive_s = c.get("received", c["prepare_start"]) - c["prepare_start"]
            if not rec.in_flight:  # the engine was idle: no step straddles the update
                del self._timing_tokens[c["token"]]
            elif c["next_step_start"] is not None and c["prev_step_end"]:
                rec.idle_s = c["next_step_start"] - c["prev_step_end"]
                rec.resume_to_step_s = c["next_step_start"] - c["commit_end"]
                del self._timing_tokens[c["token"]]
            elif not self.engine._seqs:  # nothing left to generate: no next step to wait for
                del self._timing_tokens[c["token"]]
        return len(self._timing_tokens)

    def _stale_sequences(self, new_version: int) -> list:
        k = self.engine.cfg.reprefill_after_versions
        if k is None:
            return []
        stale = [s for s in self.engine._seqs.values() if s.can_reprefill and new_version - s.kv_version >= k]
        for s in stale:
            s.reprefill = True
        return stale

    # ---------------------------------------------------------------- NCCL (GPU) path
    async def nccl_init(self, init_info: dict) -> None:
        """Join the learner's NCCL group (vLLM weight-transfer engine; ``weight_transport = 'nccl'``)."""
        await self.engine.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": init_info})

    async def nccl_begin(self, version: int) -> None:
        """Pause (keep requests) and open a weight update; the learner then broadcasts."""
        check_version(version, self.version)
        await self._sync_lock.acquire()
        self._nccl_t0 = time.perf_counter()
        self.engine._resumed.clear()
        await self._pause()
        await self.engine.llm.collective_rpc("start_weight_update")

    async def nccl_receive(self, update_info: dict | list) -> None:
        """Receive one broadcast (names/dtypes/shapes in ``update_info``) into the model."""
        await self.engine.llm.collective_rpc("update_weights", kwargs={"update_info": update_info})

    async def nccl_finish(self, version: int) -> SyncRecord:
        """Close the update, relabel the version and resume generation."""
        try:
            await self.engine.llm.collective_rpc("finish_weight_update")
            stale = self._stale_sequences(version)
            await self.label(version)
            self.version = version
            if stale:
                await self.engine.llm.abort([s.request_id for s in stale])
        finally:
            await self.engine.llm.resume_generation()
            self.engine._resumed.set()
            self._sync_lock.release()
        dt = time.perf_counter() - self._nccl_t0
        rec = SyncRecord(version=version, sync_s=dt, stall_s=dt, in_flight=len(self.engine._seqs), reprefilled=len(stale))
        self.syncs.append(rec)
        return rec


def _drop_result(fut: asyncio.Future) -> None:
    """Retrieve (and ignore) a background request's outcome so asyncio does not log it."""
    if not fut.cancelled():
        fut.exception()


