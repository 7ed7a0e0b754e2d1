"""One vLLM ``AsyncLLM`` engine with in-flight weight sync and per-token policy versions.

``RolloutEngine`` is what a :class:`rollout.worker.RolloutWorker` actor owns; it also runs
in-process (benchmarks). It generates groups of ``n`` samples per prompt and records, per completion
token, the behaviour log-prob and the policy version of the weights that sampled it. The version
labels come from the engine itself (``AsyncLLM.update_weight_version``: vLLM stamps every scheduler
step's output with the current label), so tagging is exact even for tokens sampled just before a
pause.

Weights: ``engine.weights`` (:class:`rollout.weight_apply.WeightApplier`) swaps a
:class:`rollout.weight_update.WeightUpdate` in while requests stay in flight and owns the version
that tags new tokens; ``apply_update`` is its entry point.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from rollout.config import RolloutConfig, SamplingConfig
from rollout.trajectory import Group, Sample
from rollout.weight_apply import SyncRecord, WeightApplier
from rollout.weight_update import WeightUpdate, from_vllm_label

log = logging.getLogger(__name__)

EXTENSION = "rollout.weight_extension.WeightReloadExtension"


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


def to_sampling_config(sampling: SamplingConfig | dict | None) -> SamplingConfig:
    if isinstance(sampling, SamplingConfig):
        return sampling
    return SamplingConfig.model_validate(sampling or {})


class RolloutEngine:
    """An ``AsyncLLM`` plus version tagging, group sampling and in-flight weight loading."""

    def __init__(self, cfg: RolloutConfig, worker_id: str = "engine") -> None:
        self.cfg = cfg
        self.worker_id = worker_id
        self.stats = EngineStats()
        self._llm = None
        self._seqs: dict[str, _Seq] = {}
        self._busy_since = 0.0
        self._start_lock = asyncio.Lock()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.tokenizer = None
        self.weights = WeightApplier(self)
        """In-flight weight updates; owns the policy version (:mod:`rollout.weight_apply`)."""

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

        from rollout.engine_startup import precheck, smoke_test, start_error

        t0 = time.perf_counter()
        dtype, max_len = self.cfg.dtype, self.cfg.context_len()
        try:  # one-line causes (EngineStartError), never vLLM's unpicklable pydantic errors
            precheck(self.cfg, max_len)
            args = AsyncEngineArgs(
                model=self.cfg.model, served_model_name=self.cfg.model_name, dtype=dtype,
                max_model_len=max_len, tensor_parallel_size=self.cfg.tensor_parallel_size,
                gpu_memory_utilization=self.cfg.gpu_memory_utilization, enforce_eager=self._eager(),
                logprobs_mode=self.cfg.logprobs_mode, seed=self.cfg.seed, worker_extension_cls=EXTENSION,
                disable_log_stats=True, **self._transfer_args(),
            )
            self._llm = AsyncLLM.from_engine_args(args)
        except Exception as e:
            raise start_error(e, self.cfg.model) from None
        try:
            await smoke_test(self._llm, self.cfg.describe_dtype())
        except Exception:
            self.shutdown()
            raise
        self.tokenizer = self._llm.get_tokenizer() if hasattr(self._llm, "get_tokenizer") else None
        self._decoder = CompletionDecoder.for_tokenizer(self.tokenizer)
        await self.weights.label(self.version)
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

    def dead_error(self) -> str | None:
        """Why the engine can no longer generate (its engine-core process died), or None."""
        from rollout.engine_startup import engine_death

        return engine_death(self._llm)

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    @property
    def version(self) -> int:
        """Policy version of the weights being served (tags every new token)."""
        return self.weights.version

    async def apply_update(self, update: WeightUpdate) -> SyncRecord:
        """Swap in a validated :class:`rollout.weight_update.WeightUpdate` while generating."""
        return await self.weights.apply(update)

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

    # ---------------------------------------------------------------- stats
    def stats_dict(self) -> dict[str, Any]:
        syncs = self.weights.syncs
        return {
            "worker": self.worker_id, "version": self.version, "in_flight": self.in_flight,
            "tokens": self.stats.tokens, "samples": self.stats.samples, "groups": self.stats.groups,
            "busy_s": self.stats.busy_s + (time.perf_counter() - self._busy_since if self._seqs else 0.0),
            "syncs": [s.__dict__ for s in syncs],
            "last_sync_s": syncs[-1].sync_s if syncs else None,
            "last_stall_s": syncs[-1].stall_s if syncs else None,
            "last_idle_s": syncs[-1].idle_s if syncs else None,
            "step_gap_s_median": statistics.median(self.weights.step_gaps) if self.weights.step_gaps else None,
        }


def _expand_versions(spans, n: int, default: int) -> list[int]:
    """vLLM's ``WeightVersionSpan`` list -> one int version per token."""
    if not spans:
        return [default] * n
    out: list[int] = []
    for sp in spans:
        out += [from_vllm_label(sp.version)] * (sp.end - sp.start)
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
