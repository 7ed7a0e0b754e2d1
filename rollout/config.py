"""Typed config of the rollout side: sampling settings and the rollout workers. Imports no torch.

``SamplingConfig`` is what a caller asks for (group size ``n``, temperature, ...); ``RolloutConfig``
says how the vLLM workers are built and placed and how weights reach them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


MAX_TEMPERATURE = 2.0
"""Highest sampling temperature vLLM accepts."""


class SamplingConfig(BaseModel):
    """How to sample a group of completions for one prompt."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    n: int = Field(8, ge=1, le=1024)
    """Samples per prompt (the GRPO group size)."""
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE)
    """Sampling temperature; 0 is greedy."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(256, ge=1, le=1_000_000)
    """Most completion tokens per sample."""
    stop: list[str] = Field(default_factory=list)
    """Strings that end a completion (not included in it)."""
    seed: int | None = None
    """Base seed; sample ``i`` of a group uses ``seed + i``. None: nondeterministic."""


class RolloutConfig(BaseModel):
    """How the rollout workers are built, placed and fed new weights."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str = "runs/dpo/final"
    """Hugging Face checkpoint folder (or hub id) the workers serve."""
    served_model_name: str | None = None
    """Name clients use in ``model`` (OpenAI API); defaults to the checkpoint folder's name."""
    num_workers: int = Field(1, ge=1, le=1024)
    """Rollout worker actors, each owning one vLLM engine."""
    max_in_flight: int = Field(16, ge=1, le=100_000)
    """Prompts a worker keeps in flight in continuous mode (each expands to ``n`` sequences)."""
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    """GPUs per engine (tensor parallel); must be 1 on CPU."""
    max_model_len: int | None = Field(None, ge=16, le=1_048_576)
    """Longest prompt + completion a sequence may reach. None: what the checkpoint supports
    (``max_position_embeddings`` in its ``config.json``), capped by what the caller needs (the service:
    ``max_prompt_tokens + max_tokens``; the GRPO job: its longest stage). A value above the checkpoint's
    limit is refused, naming both numbers."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Engine dtype. ``auto`` is vLLM's choice: the checkpoint's own (``torch_dtype``), except that a float32
    checkpoint runs in bfloat16 where the hardware has it (so the GRPO job's engines sample the float32
    pipeline checkpoints in bfloat16); ``float32`` for rollouts in the learner's precision."""
    kv_cache_gib: int = Field(1, ge=1, le=4096)
    """CPU KV-cache size per engine in GiB (``VLLM_CPU_KVCACHE_SPACE``); ignored on GPU."""
    cpu_threads_bind: list[str] | None = None
    """CPU engines only: ``VLLM_CPU_OMP_THREADS_BIND`` per worker, worker ``i`` gets entry ``i % len``
    (e.g. ``["0", "1"]`` or ``["0-7", "8-15"]``). None keeps vLLM's ``auto``, which pins every engine's
    compute to the same first core(s) of its node, so several workers on one host share those cores."""
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    """Fraction of each GPU's memory vLLM may use (GPU only)."""
    enforce_eager: bool = True
    """Skip compilation (fast engine start). False is vLLM's own default: CUDA graphs on GPU; on CPU
    inductor compiles the model once (~40 s on 2 cores, cached in ``~/.cache/vllm``), 1.3x the tokens/s
    of eager on the pipeline's tiny checkpoint (``bench/rollout.py --compile``). Without a C++ compiler
    on a CPU machine the engine falls back to eager with a warning."""
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = "processed_logprobs"
    """Behaviour log-probs after temperature/top-p (what was sampled from) or of the raw logits."""
    weight_transport: Literal["object_store", "collective", "nccl"] = "object_store"
    """How new weights reach the engines: ``object_store`` (CPU tensors through the Ray object store, the
    simple default on one machine) or ``collective`` (a bucketed broadcast from a sender on the learner's
    node into every engine's worker process: NCCL on GPUs, gloo on CPU; an engine that cannot join gets
    the object store). ``nccl`` is the GPU spelling of ``collective`` (it also builds the engines with
    vLLM's own NCCL weight-transfer engine, for ``rollout.weight_sync.nccl_sender``)."""
    weight_bucket_mib: int = Field(64, ge=1, le=65536)
    """``collective``: MiB per broadcast bucket (the transport's extra memory: two buckets on the sender,
    the next bucket on each receiver)."""
    prepare_updates: bool = True
    """CPU: build each weight update (tensors, repacked GEMM handles) while generating and pause only
    to swap it in; False: vLLM's ``reload_weights`` with the engine paused (slower; the fallback)."""
    reprefill_after_versions: int | None = Field(None, ge=1, le=1_000_000)
    """Re-prefill an in-flight sequence whose KV cache is this many versions stale; None keeps the cache."""
    num_cpus_per_worker: float = Field(1.0, gt=0.0, le=1024.0)
    """Ray CPUs reserved per worker actor."""
    num_gpus_per_worker: float = Field(0.0, ge=0.0, le=64.0)
    """Ray GPUs reserved per worker actor (set to ``tensor_parallel_size`` on GPU)."""
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources each worker needs (e.g. ``{"rollout_node": 1}``)."""
    seed: int = Field(0, ge=0)
    """Engine seed (per-request seeds come from ``SamplingConfig.seed``)."""
    worker_restarts: int = Field(2, ge=-1, le=1000)
    """Ray ``max_restarts`` per worker actor (-1: unlimited); the router re-queues a dead worker's prompts."""

    @model_validator(mode="after")
    def _check(self) -> RolloutConfig:
        if self.weight_transport == "nccl" and self.num_gpus_per_worker <= 0:
            raise ValueError("weight_transport = 'nccl' needs GPUs: set num_gpus_per_worker >= 1")
        if self.tensor_parallel_size > 1 and self.num_gpus_per_worker < self.tensor_parallel_size:
            raise ValueError(f"tensor_parallel_size = {self.tensor_parallel_size} needs num_gpus_per_worker >= "
                             f"{self.tensor_parallel_size}, got {self.num_gpus_per_worker}")
        if self.max_model_len is not None:
            why = context_overflow(self.model, self.max_model_len, f"max_model_len = {self.max_model_len}")
            if why:
                raise ValueError(why)
        return self

    def context_len(self, need: int | None = None) -> int:
        """The engine's ``max_model_len``: the explicit value, else the checkpoint's limit capped by
        ``need`` (else ``need``, else 2048 for a checkpoint whose config cannot be read here)."""
        if self.max_model_len is not None:
            return self.max_model_len
        limit = checkpoint_max_len(self.model)
        if limit is None:
            return need or 2048
        return min(limit, need) if need else limit

    def describe_dtype(self) -> str:
        """``dtype`` for logs and messages, with the checkpoint's own where ``auto`` leaves it to vLLM."""
        if self.dtype != "auto":
            return self.dtype
        saved = (c := checkpoint_config(self.model)).get("torch_dtype") or c.get("dtype")
        return f"auto (checkpoint: {saved}; vLLM runs float32 as bfloat16 where it can)" if saved else "auto"

    @property
    def model_name(self) -> str:
        """The name served to clients."""
        from pathlib import PurePath

        return self.served_model_name or PurePath(self.model.rstrip("/")).name or self.model


def checkpoint_config(model: str) -> dict:
    """``config.json`` of a local checkpoint folder ({} for a hub id or an unreadable file)."""
    import json
    from pathlib import Path

    path = Path(model) / "config.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length",
                "max_seq_length", "seq_len")
"""``config.json`` fields that bound a model's context (the ones vLLM itself reads; the smallest wins)."""


def context_overflow(model: str, length: int, what: str) -> str | None:
    """Why ``length`` tokens (described by ``what``) do not fit the checkpoint's context, or None when they do
    (or when its config does not say): the one message for the config checks and the engine start-up."""
    limit = checkpoint_max_len(model)
    if limit is None or length <= limit:
        return None
    return f"{what} exceeds what the checkpoint {model} supports ({limit}, max_position_embeddings in its config.json)"


def checkpoint_max_len(model: str) -> int | None:
    """The longest sequence a local checkpoint supports (None when its config does not say), with a
    linear/dynamic/yarn ``rope_scaling`` factor applied as vLLM applies it."""
    cfg = checkpoint_config(model)
    cfg = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
    found = [int(cfg[k]) for k in CONTEXT_KEYS if isinstance(cfg.get(k), int) and not isinstance(cfg.get(k), bool)]
    if not found:
        return None
    limit = min(found)
    scaling = cfg.get("rope_scaling") or {}
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if isinstance(factor, (int, float)) and factor > 1 and kind in ("linear", "dynamic", "yarn"):
        limit = int(limit * factor)
    return limit
