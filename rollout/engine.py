"""One vLLM ``AsyncLLM`` engine with in-flight weight sync and per-token policy versions.

``RolloutEngine`` is what a :class:`rollout.worker.RolloutWorker` actor owns; it also runs
in-process (benchmarks). It generates groups of ``n`` samples per prompt and records, per completion
token, the behaviour log-prob and the policy version of the weights that sampled it. The version
labels come from the engine itself (``AsyncLLM.update_weight_version``: vLLM stamps every scheduler
step's output with the current label), so tagging is exact even for tokens sampled just before a
pause.

Weight sync (:meth:`RolloutEngine.load_weights`): validate the update against the checkpoint's
names/shapes (a stale version or malformed tensor is rejected before anything changes), write it to
a safetensors file in shared memory (``/dev/shm``), ``pause_generation(mode="keep",
clear_cache=False)``, reload in place through :mod:`rollout.weight_extension`, relabel the version,
``resume_generation()``. In-flight requests keep their KV cache and continue; optionally
(``reprefill_after_versions = k``) a sequence whose KV cache is ``k`` or more versions stale is
aborted and resubmitted as prompt + tokens so far, so its cache is recomputed with the new weights
(its earlier tokens keep their versions).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.config import RolloutConfig, SamplingConfig
from rollout.trajectory import Group, Sample

log = logging.getLogger(__name__)

EXTENSION = "rollout.weight_extension.WeightReloadExtension"


class WeightUpdateError(ValueError):
    """A weight update that was rejected; the engine keeps its previous weights and version."""


@dataclass
class SyncRecord:
    """One weight update as seen by an engine."""

    version: int
    sync_s: float
    """Wall time of the whole update (staging + pause + reload + resume)."""
    stall_s: float
    """Time generation was paused."""
    in_flight: int
    """Engine requests in flight (a group without re-prefill is one request of ``n`` sequences)."""
    reprefilled: int = 0
    stage_s: float = 0.0
    """Part of ``sync_s`` before the pause (validation, staging the tensors in shared memory)."""
    pause_s: float = 0.0
    """Part of the stall waiting for the engine to stop between steps (the running step finishes)."""
    reload_s: float = 0.0
    """Part of the stall spent loading the weights into the model."""


@dataclass
class _Seq:
    """Book-keeping of one in-flight sequence (one sample)."""

    request_id: str
    kv_version: int
    """Version of the weights its KV cache was (last) prefilled with."""
    reprefill: bool = False
    can_reprefill: bool = True
    """False for a request that carries all ``n`` samples of a group (fast path, cache always kept)."""


@dataclass
class EngineStats:
    tokens: int = 0
    groups: int = 0
    samples: int = 0
    busy_s: float = 0.0
    syncs: list[SyncRecord] = field(default_factory=list)


def to_sampling_config(sampling: SamplingConfig | dict | None) -> SamplingConfig:
    if isinstance(sampling, SamplingConfig):
        return sampling
    return SamplingConfig.model_validate(sampling or {})


def checkpoint_tensor_shapes(model_dir: str | Path) -> dict[str, tuple[list[int], str]]:
    """Names -> (shape, dtype) of a local safetensors checkpoint, read from the headers only."""
    import json
    import struct

    out: dict[str, tuple[list[int], str]] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                out[name] = (list(meta["shape"]), meta["dtype"])
    return out


def validate_update(version: int, current: int, weights: dict, expected: dict[str, tuple[list[int], str]]) -> None:
    """Raise :class:`WeightUpdateError` for a stale version or a tensor that does not fit the model."""
    import torch

    if not isinstance(version, int) or isinstance(version, bool):
        raise WeightUpdateError(f"weight version must be an int, got {type(version).__name__}")
    if version <= current:
        raise WeightUpdateError(f"stale weight update: version {version} <= current version {current}")
    if not isinstance(weights, dict) or not weights:
        raise WeightUpdateError("weight update must be a non-empty dict name -> tensor")
    for name, t in weights.items():
        if not isinstance(t, torch.Tensor):
            raise WeightUpdateError(f"weight {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if not t.is_floating_point():
            raise WeightUpdateError(f"weight {name!r} has dtype {t.dtype}; expected a floating-point tensor")
        if expected:
            if name not in expected:
                raise WeightUpdateError(f"unknown weight {name!r}: the model has no such parameter")
            shape = expected[name][0]
            if list(t.shape) != shape:
                raise WeightUpdateError(f"weight {name!r} has shape {list(t.shape)}, the model expects {shape}")


class RolloutEngine:
    """An ``AsyncLLM`` plus version tagging, group sampling and in-flight weight loading."""

    def __init__(self, cfg: RolloutConfig, worker_id: str = "engine") -> None:
        self.cfg = cfg
        self.worker_id = worker_id
        self.version = 0
        self.stats = EngineStats()
        self._llm = None
        self._seqs: dict[str, _Seq] = {}
        self._busy_since = 0.0
        self._sync_lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._expected = checkpoint_tensor_shapes(cfg.model) if Path(cfg.model).is_dir() else {}
        self._shm_dir = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        self.tokenizer = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Build the engine once (concurrent callers wait for the first)."""
        async with self._start_lock:
            if self._llm is None:
                await self._start()

    async def _start(self) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cfg.kv_cache_gib))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        t0 = time.perf_counter()
        args = AsyncEngineArgs(
            model=self.cfg.model, served_model_name=self.cfg.model_name, dtype=self.cfg.dtype,
            max_model_len=self.cfg.max_model_len, tensor_parallel_size=self.cfg.tensor_parallel_size,
            gpu_memory_utilization=self.cfg.gpu_memory_utilization, enforce_eager=self.cfg.enforce_eager,
            logprobs_mode=self.cfg.logprobs_mode, seed=self.cfg.seed, worker_extension_cls=EXTENSION,
            disable_log_stats=True, **self._transfer_args(),
        )
        self._llm = AsyncLLM.from_engine_args(args)
        self.tokenizer = self._llm.get_tokenizer() if hasattr(self._llm, "get_tokenizer") else None
        await self._llm.update_weight_version(str(self.version))
        log.info("%s: engine for %s up in %.1f s", self.worker_id, self.cfg.model, time.perf_counter() - t0)

    def _transfer_args(self) -> dict:
        if self.cfg.weight_transport != "nccl":
            return {}
        from vllm.config import WeightTransferConfig

        return {"weight_transfer_config": WeightTransferConfig(backend="nccl")}

    @property
    def llm(self):
        if self._llm is None:
            raise RuntimeError(f"{self.worker_id}: engine not started (call start() first)")
        return self._llm

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    @property
    def in_flight(self) -> int:
        return len(self._seqs)

    def _track(self, rid: str, seq: _Seq | None) -> None:
        """Add (``seq``) or drop (None) an in-flight sequence; accumulate busy time (>= 1 in flight)."""
        now = time.perf_counter()
        if seq is not None:
            if not self._seqs:
                self._busy_since = now
            self._seqs[rid] = seq
        elif self._seqs.pop(rid, None) is not None and not self._seqs:
            self.stats.busy_s += now - self._busy_since

    # ---------------------------------------------------------------- generation
    def _params(self, s: SamplingConfig, index: int, max_tokens: int, **extra):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=max_tokens, stop=list(s.stop) or None,
            seed=None if s.seed is None else s.seed + index, logprobs=extra.pop("logprobs", 0),
            output_kind=extra.pop("output_kind", RequestOutputKind.FINAL_ONLY), **extra,
        )

    @staticmethod
    def _engine_prompt(prompt: dict) -> dict:
        if prompt.get("prompt_token_ids"):
            return {"prompt_token_ids": [int(t) for t in prompt["prompt_token_ids"]]}
        if isinstance(prompt.get("text"), str) and prompt["text"]:
            return {"prompt": prompt["text"]}
        raise ValueError(f"prompt {prompt.get('prompt_id')!r} has neither prompt_token_ids nor text")

    async def generate_sample(self, prompt: dict, s: SamplingConfig, index: int) -> tuple[list[int], Sample]:
        """One completion; returns (prompt token ids, sample). Re-prefills when asked to by a sync."""
        t0 = time.perf_counter()
        engine_prompt = self._engine_prompt(prompt)
        prompt_ids: list[int] | None = engine_prompt.get("prompt_token_ids")
        tokens: list[int] = []
        logprobs: list[float] = []
        versions: list[int] = []
        text = ""
        finish = "abort"
        while True:
            await self._resumed.wait()  # never submit into a paused engine mid-update
            rid = f"{self.worker_id}-{prompt.get('prompt_id', 'p')}-{index}-{uuid.uuid4().hex[:8]}"
            seq = _Seq(rid, self.version)
            self._track(rid, seq)
            final = None
            try:
                params = self._params(s, index, s.max_tokens - len(tokens))
                async for out in self.llm.generate(engine_prompt, params, request_id=rid):
                    final = out
            finally:
                self._track(rid, None)
            if final is None:
                break
            if prompt_ids is None:
                prompt_ids = list(final.prompt_token_ids)
            c = final.outputs[0]
            tokens += list(c.token_ids)
            logprobs += [float(lp[t].logprob) for lp, t in zip(c.logprobs or [], c.token_ids)]
            versions += _expand_versions(c.weight_versions, len(c.token_ids), seq.kv_version)
            text += c.text
            finish = c.finish_reason or "abort"
            if finish == "abort" and seq.reprefill and len(tokens) < s.max_tokens:
                engine_prompt = {"prompt_token_ids": list(prompt_ids) + tokens}  # recompute KV with new weights
                continue
            break
        self.stats.tokens += len(tokens)
        self.stats.samples += 1
        sample = Sample(completion_token_ids=tokens, logprobs=logprobs, versions=versions, finish_reason=finish,
                        text=text, generation_s=time.perf_counter() - t0)
        return list(prompt_ids or []), sample

    async def generate_group(self, prompt: dict, sampling: SamplingConfig | dict | None = None) -> dict:
        """``n`` samples for one prompt dict; returns ``Group.to_dict()``.

        Without re-prefill the group is one engine request with ``n`` samples (vLLM's parallel
        sampling: one prompt prefill, ~10-25% more tokens/s than ``n`` separate requests); with
        ``reprefill_after_versions`` set, each sample is its own request so it can be re-prefilled alone.
        """
        s = to_sampling_config(sampling)
        t0 = time.perf_counter()
        if self.cfg.reprefill_after_versions is None:
            prompt_ids, samples = await self._generate_fanout(prompt, s)
        else:
            results = await asyncio.gather(*(self.generate_sample(prompt, s, i) for i in range(s.n)))
            prompt_ids, samples = results[0][0], [smp for _, smp in results]
        group = Group(
            group_id=str(prompt.get("prompt_id", uuid.uuid4().hex)), prompt_token_ids=prompt_ids,
            samples=samples, prompt=prompt.get("text", "") or "",
            gold=str(prompt.get("gold", "") or ""), stage=int(prompt.get("stage", 0) or 0),
            meta={"worker": self.worker_id, "generation_s": time.perf_counter() - t0},
        )
        self.stats.groups += 1
        return group.to_dict()

    async def _generate_fanout(self, prompt: dict, s: SamplingConfig) -> tuple[list[int], list[Sample]]:
        t0 = time.perf_counter()
        await self._resumed.wait()
        rid = f"{self.worker_id}-{prompt.get('prompt_id', 'p')}-g{uuid.uuid4().hex[:8]}"
        seq = _Seq(rid, self.version, can_reprefill=False)
        params = self._params(s, 0, s.max_tokens)
        params.n = s.n
        params.seed = s.seed  # vLLM gives sample i the seed + i, as generate_sample does
        self._track(rid, seq)
        final = None
        try:
            async for out in self.llm.generate(self._engine_prompt(prompt), params, request_id=rid):
                final = out
        finally:
            self._track(rid, None)
        if final is None:
            raise RuntimeError(f"{self.worker_id}: request {rid} ended without output")
        samples = []
        for c in sorted(final.outputs, key=lambda c: c.index):
            samples.append(Sample(
                completion_token_ids=list(c.token_ids),
                logprobs=[float(lp[t].logprob) for lp, t in zip(c.logprobs or [], c.token_ids)],
                versions=_expand_versions(c.weight_versions, len(c.token_ids), seq.kv_version),
                finish_reason=c.finish_reason or "abort", text=c.text, generation_s=time.perf_counter() - t0))
            self.stats.tokens += len(c.token_ids)
        self.stats.samples += len(samples)
        return list(final.prompt_token_ids or []), samples

    async def stream_completion(self, prompt: dict, params: dict) -> AsyncIterator[dict]:
        """Stream one request's deltas (for the OpenAI-compatible API): dicts with ``index``,
        ``text``, ``token_ids``, ``logprobs`` (sampled token), ``top_logprobs``, ``finish_reason``,
        ``prompt_token_ids`` (first delta only)."""
        from vllm.sampling_params import RequestOutputKind

        s = to_sampling_config({k: params[k] for k in ("temperature", "top_p", "max_tokens", "stop", "seed")
                                if params.get(k) is not None} | {"n": params.get("n", 1)})
        top = int(params.get("logprobs") or 0)
        await self._resumed.wait()
        rid = f"{self.worker_id}-api-{uuid.uuid4().hex[:12]}"
        sp = self._params(s, 0, s.max_tokens, logprobs=top, output_kind=RequestOutputKind.DELTA)
        sp.n = s.n
        sp.seed = s.seed
        self._track(rid, _Seq(rid, self.version))
        first = True
        try:
            async for out in self.llm.generate(self._engine_prompt(prompt), sp, request_id=rid):
                for c in out.outputs:
                    lps = c.logprobs or []
                    d = {"index": c.index, "text": c.text, "token_ids": list(c.token_ids),
                         "logprobs": [float(lp[t].logprob) for lp, t in zip(lps, c.token_ids)],
                         "top_logprobs": [{v.decoded_token or "": float(v.logprob) for v in lp.values()}
                                          for lp in lps] if top else None,
                         "finish_reason": c.finish_reason, "version": self.version}
                    if first:
                        d["prompt_token_ids"] = list(out.prompt_token_ids or [])
                        first = False
                    self.stats.tokens += len(c.token_ids)
                    yield d
        finally:
            self._track(rid, None)
            if self._llm is not None:
                await self._llm.abort(rid)  # no-op when finished; frees the slot if the client went away

    # ---------------------------------------------------------------- weights
    async def load_weights(self, version: int, weights: dict) -> SyncRecord:
        """Load ``{name: CPU tensor}`` as ``version`` while generation is paused (requests kept)."""
        from safetensors.torch import save_file

        async with self._sync_lock:
            validate_update(version, self.version, weights, self._expected)
            t0 = time.perf_counter()
            path = self._shm_dir / f"flywheel-{self.worker_id}-{os.getpid()}-v{version}.safetensors"
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
            await asyncio.to_thread(save_file, tensors, str(path))
            try:
                return await self._swap(version, lambda: self.llm.collective_rpc(
                    "flywheel_reload_files", args=([str(path)],)), t0)
            finally:
                path.unlink(missing_ok=True)

    async def load_weight_files(self, version: int, paths: list[str]) -> SyncRecord:
        """Load safetensors files (already on storage this engine can read) as ``version``."""
        from safetensors import safe_open

        async with self._sync_lock:
            if not isinstance(version, int) or version <= self.version:
                raise WeightUpdateError(f"stale weight update: version {version} <= current version {self.version}")
            for path in paths:
                try:
                    with safe_open(path, framework="pt", device="cpu") as f:
                        meta = {n: (list(f.get_slice(n).get_shape()), f.get_slice(n).get_dtype()) for n in f.keys()}
                except Exception as e:  # noqa: BLE001 - any parse failure is a malformed update
                    raise WeightUpdateError(f"{path}: not a readable safetensors file ({e})") from e
                for name, (shape, dtype) in meta.items():
                    if self._expected and name not in self._expected:
                        raise WeightUpdateError(f"unknown weight {name!r}: the model has no such parameter")
                    if self._expected and shape != self._expected[name][0]:
                        raise WeightUpdateError(f"weight {name!r} has shape {shape}, the model expects "
                                                f"{self._expected[name][0]}")
                    if dtype not in ("F32", "F16", "BF16", "F64"):
                        raise WeightUpdateError(f"weight {name!r} has dtype {dtype}; expected floating point")
            t0 = time.perf_counter()
            return await self._swap(version, lambda: self.llm.collective_rpc(
                "flywheel_reload_files", args=(list(paths),)), t0)

    async def _pause(self) -> None:
        """``pause_generation(mode="keep", clear_cache=False)`` without its cosmetic 20 ms sleep
        (it only orders log output), so the stall is what the engine needs, not more."""
        core = getattr(self.llm, "engine_core", None)
        if core is not None and hasattr(core, "pause_scheduler_async"):
            await core.pause_scheduler_async(mode="keep", clear_cache=False)
        else:
            await self.llm.pause_generation(mode="keep", clear_cache=False)

    async def _swap(self, version: int, reload, t0: float) -> SyncRecord:
        """pause(keep) -> reload -> relabel -> [mark stale sequences] -> resume."""
        llm = self.llm
        t_pause = time.perf_counter()
        self._resumed.clear()
        await self._pause()
        t_paused = time.perf_counter()
        try:
            await reload()
            t_loaded = time.perf_counter()
            in_flight = len(self._seqs)
            stale = self._stale_sequences(version)
            await llm.update_weight_version(str(version))
            self.version = version
            if stale:  # their coroutines resubmit prompt + tokens so far once generation resumes
                await llm.abort([s.request_id for s in stale])
        finally:
            await llm.resume_generation()
            self._resumed.set()
        t_end = time.perf_counter()
        rec = SyncRecord(version=version, sync_s=t_end - t0, stall_s=t_end - t_pause, in_flight=in_flight,
                         reprefilled=len(stale), stage_s=t_pause - t0, pause_s=t_paused - t_pause,
                         reload_s=t_loaded - t_paused)
        self.stats.syncs.append(rec)
        log.info("%s: loaded weights v%d in %.3f s (stall %.3f s: pause %.3f, reload %.3f; %d in flight, "
                 "%d re-prefilled)", self.worker_id, version, rec.sync_s, rec.stall_s, rec.pause_s, rec.reload_s,
                 in_flight, len(stale))
        return rec

    def _stale_sequences(self, new_version: int) -> list[_Seq]:
        k = self.cfg.reprefill_after_versions
        if k is None:
            return []
        stale = [s for s in self._seqs.values() if s.can_reprefill and new_version - s.kv_version >= k]
        for s in stale:
            s.reprefill = True
        return stale

    # ---------------------------------------------------------------- NCCL (GPU) path
    async def nccl_init(self, init_info: dict) -> None:
        """Join the learner's NCCL group (vLLM weight-transfer engine; ``weight_transport = 'nccl'``)."""
        await self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": init_info})

    async def nccl_begin(self, version: int) -> None:
        """Pause (keep requests) and open a weight update; the learner then broadcasts."""
        if version <= self.version:
            raise WeightUpdateError(f"stale weight update: version {version} <= current version {self.version}")
        await self._sync_lock.acquire()
        self._nccl_t0 = time.perf_counter()
        self._resumed.clear()
        await self._pause()
        await self.llm.collective_rpc("start_weight_update")

    async def nccl_receive(self, update_info: dict | list) -> None:
        """Receive one broadcast (names/dtypes/shapes in ``update_info``) into the model."""
        await self.llm.collective_rpc("update_weights", kwargs={"update_info": update_info})

    async def nccl_finish(self, version: int) -> SyncRecord:
        """Close the update, relabel the version and resume generation."""
        try:
            await self.llm.collective_rpc("finish_weight_update")
            stale = self._stale_sequences(version)
            await self.llm.update_weight_version(str(version))
            self.version = version
            if stale:
                await self.llm.abort([s.request_id for s in stale])
        finally:
            await self.llm.resume_generation()
            self._resumed.set()
            self._sync_lock.release()
        dt = time.perf_counter() - self._nccl_t0
        rec = SyncRecord(version=version, sync_s=dt, stall_s=dt, in_flight=len(self._seqs), reprefilled=len(stale))
        self.stats.syncs.append(rec)
        return rec

    # ---------------------------------------------------------------- stats
    def stats_dict(self) -> dict[str, Any]:
        syncs = self.stats.syncs
        return {
            "worker": self.worker_id, "version": self.version, "in_flight": self.in_flight,
            "tokens": self.stats.tokens, "samples": self.stats.samples, "groups": self.stats.groups,
            "busy_s": self.stats.busy_s + (time.perf_counter() - self._busy_since if self._seqs else 0.0),
            "syncs": [s.__dict__ for s in syncs],
            "last_sync_s": syncs[-1].sync_s if syncs else None,
            "last_stall_s": syncs[-1].stall_s if syncs else None,
        }


def _expand_versions(spans, n: int, default: int) -> list[int]:
    """vLLM's ``WeightVersionSpan`` list -> one int version per token."""
    if not spans:
        return [default] * n
    out: list[int] = []
    for sp in spans:
        out += [int(sp.version)] * (sp.end - sp.start)
    if len(out) != n:  # spans cover the whole output; pad defensively with the last label
        out = (out + [out[-1] if out else default] * n)[:n]
    return out
