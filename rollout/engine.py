"""One vLLM ``AsyncLLM`` engine with in-flight weight sync and per-token policy versions.

``RolloutEngine`` is what a :class:`rollout.worker.RolloutWorker` actor owns; it also runs
in-process (benchmarks). It generates groups of ``n`` samples per prompt and records, per completion
token, the behaviour log-prob and the policy version of the weights that sampled it. The version
labels come from the engine itself (``AsyncLLM.update_weight_version``: vLLM stamps every scheduler
step's output with the current label), so tagging is exact even for tokens sampled just before a
pause.

Weight sync (:meth:`RolloutEngine.load_weights`): validate the update against the checkpoint's
names/shapes (a stale version or malformed tensor is rejected before anything changes), write it to
a safetensors file in shared memory (``/dev/shm``), let the engine process prepare it in the
background while generation goes on (:mod:`rollout.weight_extension`), then pause (mode ``keep``,
cache kept), commit, relabel the version and resume, sent back to back so the model idles only for
the commit. In-flight requests keep their KV cache and continue; optionally
(``reprefill_after_versions = k``) a sequence whose KV cache is ``k`` or more versions stale is
aborted and resubmitted as prompt + tokens so far, so its cache is recomputed with the new weights
(its earlier tokens keep their versions).
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.config import RolloutConfig, SamplingConfig
from rollout.trajectory import Group, Sample
from rollout.weight_update import WeightUpdateError, check_version

log = logging.getLogger(__name__)

EXTENSION = "rollout.weight_extension.WeightReloadExtension"




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
    resume_to_step_s: float | None = None
    """Engine process: from the end of the commit to the start of the next step."""


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

    check_version(version, current)
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
        self._prepare_supported = True
        self._timing_tokens: dict[str, SyncRecord] = {}
        self._timing_task: asyncio.Future | None = None
        self.step_gaps: list[float] = []
        """Recent normal gaps between two model steps (s), for comparison with ``idle_s``."""
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
            gpu_memory_utilization=self.cfg.gpu_memory_utilization, enforce_eager=self._eager(),
            logprobs_mode=self.cfg.logprobs_mode, seed=self.cfg.seed, worker_extension_cls=EXTENSION,
            disable_log_stats=True, **self._transfer_args(),
        )
        self._llm = AsyncLLM.from_engine_args(args)
        self.tokenizer = self._llm.get_tokenizer() if hasattr(self._llm, "get_tokenizer") else None
        self._decoder = CompletionDecoder.for_tokenizer(self.tokenizer)
        await self._llm.update_weight_version(str(self.version))
        await self._llm.collective_rpc("flywheel_install_step_clock")
        log.info("%s: engine for %s up in %.1f s", self.worker_id, self.cfg.model, time.perf_counter() - t0)

    def _eager(self) -> bool:
        """``cfg.enforce_eager``, or True when compiling on a CPU is impossible (inductor needs a C++ compiler)."""
        if self.cfg.enforce_eager:
            return True
        import shutil

        import torch

        if torch.cuda.is_available() or any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++") if c):
            return False
        log.warning("%s: rollout.enforce_eager=false but no C++ compiler (g++/c++ or $CXX) is on PATH; vLLM's "
                    "CPU compilation needs one, so the engine runs eager", self.worker_id)
        return True

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

    def _rollout_params(self, s: SamplingConfig, index: int, max_tokens: int):
        """Sampling params of the trainer-facing path (groups): final output only, the sampled
        token's log-prob in vLLM's flat container, and no per-step detokenization when the text can
        be decoded once at the end (:class:`CompletionDecoder`; not with stop strings, which the
        engine must see as text while generating).

        Why: on CPU the ``AsyncLLM`` front end shares the cores with the model, and its per-step,
        per-sequence work is the rollout's main overhead on small models: incremental
        detokenization (a ``DecodeStream`` step plus a decoded string for the log-prob entry per
        token) cost ~30% of tokens/s in an in-process A/B on the tiny model, and one ``Logprob``
        object and dict per token another ~15%.
        """
        detokenize = bool(s.stop) or self._decoder is None
        return self._params(s, index, max_tokens, detokenize=detokenize, flat_logprobs=True)

    def _completion_text(self, c, params, prompt_ids: list[int], token_ids: list[int]) -> str:
        """The completion's text: the engine's when it detokenized, else decoded here once."""
        if params.detokenize:  # always so without a decoder (``_rollout_params``)
            return c.text
        return self._decoder.decode(prompt_ids, token_ids, stop_terminated=_stop_terminated(c))

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
        texts: list[str] = []
        finish = "abort"
        while True:
            await self._resumed.wait()  # never submit into a paused engine mid-update
            rid = f"{self.worker_id}-{prompt.get('prompt_id', 'p')}-{index}-{uuid.uuid4().hex[:8]}"
            seq = _Seq(rid, self.version)
            self._track(rid, seq)
            final = None
            try:
                params = self._rollout_params(s, index, s.max_tokens - len(tokens))
                async for out in self.llm.generate(engine_prompt, params, request_id=rid):
                    final = out
            finally:
                self._track(rid, None)
            if final is None:
                break
            if prompt_ids is None:
                prompt_ids = list(final.prompt_token_ids)
            c = final.outputs[0]
            new_ids = list(c.token_ids)
            texts.append(self._completion_text(c, params, list(prompt_ids) + tokens, new_ids))
            tokens += new_ids
            logprobs += sampled_logprobs(c.logprobs, new_ids)
            versions += _expand_versions(c.weight_versions, len(new_ids), seq.kv_version)
            finish = c.finish_reason or "abort"
            if finish == "abort" and seq.reprefill and len(tokens) < s.max_tokens:
                engine_prompt = {"prompt_token_ids": list(prompt_ids) + tokens}  # recompute KV with new weights
                continue
            break
        self.stats.tokens += len(tokens)
        self.stats.samples += 1
        sample = Sample(completion_token_ids=tokens, logprobs=logprobs, versions=versions, finish_reason=finish,
                        text="".join(texts), generation_s=time.perf_counter() - t0)
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
        params = self._rollout_params(s, 0, s.max_tokens)
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
        prompt_ids = list(final.prompt_token_ids or [])
        for c in sorted(final.outputs, key=lambda c: c.index):
            ids = list(c.token_ids)
            samples.append(Sample(
                completion_token_ids=ids, logprobs=sampled_logprobs(c.logprobs, ids),
                versions=_expand_versions(c.weight_versions, len(ids), seq.kv_version),
                finish_reason=c.finish_reason or "abort", text=self._completion_text(c, params, prompt_ids, ids),
                generation_s=time.perf_counter() - t0))
            self.stats.tokens += len(ids)
        self.stats.samples += len(samples)
        return prompt_ids, samples

    async def stream_completion(self, prompt: dict, params: dict) -> AsyncIterator[dict]:
        """Stream one request's deltas (for the OpenAI-compatible API): dicts with ``index``,
        ``text``, ``token_ids``, ``logprobs`` (sampled token), ``top_logprobs``, ``finish_reason``,
        ``prompt_token_ids`` (first delta only), ``version`` and, in the last delta of each choice,
        ``completion_versions``.

        ``version`` is this engine's version when the delta was handed over, which can differ from
        the version that sampled its tokens for deltas delivered around an update (outputs are
        processed asynchronously). ``completion_versions`` is exact: one version per token of the
        whole completion, from the labels the engine stamped on every step (vLLM reports them only
        when a completion finishes, so they cannot be attached to earlier deltas).
        """
        from vllm.sampling_params import RequestOutputKind

        s = to_sampling_config({k: params[k] for k in ("temperature", "top_p", "max_tokens", "stop", "seed")
                                if params.get(k) is not None} | {"n": params.get("n", 1)})
        top = int(params.get("logprobs") or 0)
        await self._resumed.wait()
        rid = f"{self.worker_id}-api-{uuid.uuid4().hex[:12]}"
        sp = self._params(s, 0, s.max_tokens, logprobs=top, output_kind=RequestOutputKind.DELTA)
        sp.n = s.n
        sp.seed = s.seed
        self._track(rid, _Seq(rid, self.version, can_reprefill=False))  # a stream cannot be resubmitted
        first = True
        sent: dict[int, int] = {}  # tokens streamed so far per choice
        try:
            async for out in self.llm.generate(self._engine_prompt(prompt), sp, request_id=rid):
                for c in out.outputs:
                    lps = c.logprobs or []
                    d = {"index": c.index, "text": c.text, "token_ids": list(c.token_ids),
                         "logprobs": [float(lp[t].logprob) for lp, t in zip(lps, c.token_ids)],
                         "top_logprobs": [{v.decoded_token or "": float(v.logprob) for v in lp.values()}
                                          for lp in lps] if top else None,
                         "finish_reason": c.finish_reason, "version": self.version}
                    sent[c.index] = sent.get(c.index, 0) + len(c.token_ids)
                    if c.finish_reason is not None:  # exact, from the engine's per-step labels
                        d["completion_versions"] = _expand_versions(c.weight_versions, sent[c.index], self.version)
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
                return await self._update(version, [str(path)], t0)
            finally:
                path.unlink(missing_ok=True)

    async def load_weight_files(self, version: int, paths: list[str]) -> SyncRecord:
        """Load safetensors files (already on storage this engine can read) as ``version``."""
        from safetensors import safe_open

        async with self._sync_lock:
            check_version(version, self.version)
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
            return await self._update(version, list(paths), time.perf_counter())

    async def _update(self, version: int, paths: list[str], t0: float) -> SyncRecord:
        """Prepare the update while generating, then pause -> commit -> relabel -> resume.

        The prepare-then-commit path (:mod:`rollout.weight_extension`) builds the new tensors and
        GEMM handles in a background thread of the engine process, so the pause only covers
        in-place copies. Where it does not apply (not CPU, or an update it cannot map) the whole
        ``reload_weights`` runs paused instead.
        """
        token = f"{self.worker_id}-v{version}-{uuid.uuid4().hex[:8]}"
        t_staged = time.perf_counter()
        commit = None
        if self.cfg.prepare_updates and self._prepare_supported:
            [started] = await self.llm.collective_rpc("flywheel_prepare", args=(paths, token))
            status = await self._wait_prepared(token) if started else "not supported on this platform"
            if status == "ok":
                commit = ("flywheel_commit", (token,))
            else:
                self._prepare_supported = started  # a platform that cannot, never will
                log.warning("%s: v%d cannot be prepared ahead (%s); reloading it with the engine paused",
                            self.worker_id, version, status)
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
            [status] = await self.llm.collective_rpc("flywheel_prepared", args=(token,))
            if status is not None:
                return status
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def _pause(self) -> None:
        """``pause_generation(mode="keep", clear_cache=False)`` without its cosmetic 20 ms sleep
        (it only orders log output), so the stall is what the engine needs, not more."""
        core = getattr(self.llm, "engine_core", None)
        if core is not None and hasattr(core, "pause_scheduler_async"):
            await core.pause_scheduler_async(mode="keep", clear_cache=False)
        else:
            await self.llm.pause_generation(mode="keep", clear_cache=False)

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
        llm = self.llm
        times: dict[str, float] = {}

        async def timed(key: str, coro):
            try:
                return await coro
            finally:
                times[key] = time.perf_counter()

        self._resumed.clear()
        in_flight = len(self._seqs)
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
                rest = [asyncio.ensure_future(llm.update_weight_version(str(version)))]
                rest += [asyncio.ensure_future(llm.abort(ids))] if ids else []
                rest.append(asyncio.ensure_future(timed("resumed", llm.resume_generation())))
                results = await asyncio.gather(loading, *rest, return_exceptions=True)
                self.version = version  # the engine now labels new tokens with it, whatever happened
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise RuntimeError(f"{self.worker_id}: weight update v{version} failed in the engine "
                                       f"({errors[0]!r}); its weights may be partly updated") from errors[0]
            else:
                try:
                    await asyncio.gather(pause, loading)
                except BaseException:
                    for s in stale:
                        s.reprefill = False
                    await llm.resume_generation()
                    raise
                rest = [llm.update_weight_version(str(version))] + ([llm.abort(ids)] if ids else [])
                await asyncio.gather(*rest, timed("resumed", llm.resume_generation()))
                self.version = version
        finally:
            self._resumed.set()
        rec = SyncRecord(version=version, sync_s=time.perf_counter() - t_pause, stall_s=times["resumed"] - t_pause,
                         in_flight=in_flight, reprefilled=len(stale), pause_s=times["loaded"] - t_pause,
                         reload_s=times["resumed"] - times["loaded"])
        self.stats.syncs.append(rec)
        log.info("%s: loaded weights v%d (pause window %.1f ms; %d in flight, %d re-prefilled)", self.worker_id,
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
                log.debug("%s: could not read update timings", self.worker_id, exc_info=True)
                return

    async def refresh_sync_timings(self) -> int:
        """Ask the engine process when the model stepped around each pending update and fill
        ``commit_s`` / ``idle_s`` of their records; returns how many are still pending."""
        if not self._timing_tokens or self._llm is None:
            return 0
        [data] = await self.llm.collective_rpc("flywheel_commit_gaps", args=(list(self._timing_tokens),))
        self.step_gaps = list(data["gaps"])
        for c in data["commits"]:
            rec = self._timing_tokens.get(c["token"])
            if rec is None:
                continue
            rec.commit_s = c["commit_end"] - c["commit_start"]
            if "prepare_end" in c:
                rec.prepare_thread_s = c["prepare_end"] - c["prepare_start"]
            if not rec.in_flight:  # the engine was idle: no step straddles the update
                del self._timing_tokens[c["token"]]
            elif c["next_step_start"] is not None and c["prev_step_end"]:
                rec.idle_s = c["next_step_start"] - c["prev_step_end"]
                rec.resume_to_step_s = c["next_step_start"] - c["commit_end"]
                del self._timing_tokens[c["token"]]
            elif not self._seqs:  # nothing left to generate: no next step to wait for
                del self._timing_tokens[c["token"]]
        return len(self._timing_tokens)

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
        check_version(version, self.version)
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
            "last_idle_s": syncs[-1].idle_s if syncs else None,
            "step_gap_s_median": statistics.median(self.step_gaps) if self.step_gaps else None,
        }


def _drop_result(fut: asyncio.Future) -> None:
    """Retrieve (and ignore) a background request's outcome so asyncio does not log it."""
    if not fut.cancelled():
        fut.exception()


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


def sampled_logprobs(lps, token_ids: list[int]) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position log-probs (a ``FlatLogprobs`` or
    a list of ``{token_id: Logprob}``). With ``logprobs=0`` a flat container holds exactly one
    entry per position, the sampled token, so its ``logprobs`` list is the answer as is."""
    if not lps:
        return []
    flat_ids = getattr(lps, "token_ids", None)
    if flat_ids is not None:
        if flat_ids == token_ids and len(lps.logprobs) == len(token_ids):
            return list(lps.logprobs)
        out = []
        for i, t in zip(range(len(lps)), token_ids):  # top-k entries too: find the sampled token
            lo, hi = lps.start_indices[i], lps.end_indices[i]
            out.append(float(lps.logprobs[lo + flat_ids[lo:hi].index(t)]))
        return out
    return [float(lp[t].logprob) for lp, t in zip(lps, token_ids)]


def _stop_terminated(c) -> bool:
    """Finished on EOS or a stop token id (vLLM leaves that last token out of the text)."""
    return c.finish_reason == "stop" and not isinstance(c.stop_reason, str)


class CompletionDecoder:
    """Completion text decoded once, after generation, exactly as vLLM's incremental detokenizer
    would have produced it (same ``DecodeStream`` primed with the prompt, special tokens skipped,
    a stop-terminating token left out), so the engine need not detokenize every step."""

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer._tokenizer  # the Rust ``tokenizers.Tokenizer``

    @classmethod
    def for_tokenizer(cls, tokenizer) -> CompletionDecoder | None:
        """A decoder where vLLM itself would use the fast ``DecodeStream`` path, else None (the
        engine then keeps detokenizing, e.g. for slow or Mistral tokenizers)."""
        if tokenizer is None:
            return None
        from vllm.v1.engine.detokenizer import uses_fast_detokenizer

        return cls(tokenizer) if uses_fast_detokenizer(tokenizer) else None

    def decode(self, prompt_ids: list[int], token_ids: list[int], stop_terminated: bool = False) -> str:
        from tokenizers.decoders import DecodeStream

        ids = token_ids[:-1] if stop_terminated else token_ids
        stream = DecodeStream(ids=list(prompt_ids), skip_special_tokens=True)
        parts: list[str] = []
        for t in ids:
            try:
                piece = stream.step(self._tok, t)
            except Exception as e:  # noqa: BLE001 - vLLM's recovery from a non-monotonic UTF-8 prefix
                if not str(e).startswith("Invalid prefix encountered"):
                    raise
                stream = DecodeStream(skip_special_tokens=True)
                piece = stream.step(self._tok, t)
            parts.append(piece or "")
        return "".join(parts)
