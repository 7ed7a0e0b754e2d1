"""Typed configs for ``flywheel pretrain | sft | dpo | merge | eval`` (pydantic; imports no torch).

Defaults are the tiny CPU pipeline's measured values; ``configs/*_tiny.yaml`` spell them out. Pointing
the same code at a real model means changing ``model.size`` / ``init_from``, lengths and batch sizes.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

DOCUMENT_SOURCES = ("problems", "arithmetic_facts", "counting", "comparisons")  # = pretraining.data
M = TypeVar("M", bound=BaseModel)


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def with_defaults(model: type[M], name: str, **defaults: Any) -> type[M]:
    """A subclass of ``model`` whose listed fields start from other defaults, bounds and docstrings kept:
    one config class used in two places with each place's own defaults. A section given in part (``optim:
    {lr: 1e-4}``) keeps this place's defaults for the rest (an instance as a field default would not)."""
    bad = set(defaults) - set(model.model_fields)
    if bad:
        raise TypeError(f"{model.__name__} has no field(s) {sorted(bad)}")
    fields = {k: (model.model_fields[k].annotation, FieldInfo.merge_field_infos(model.model_fields[k], default=v))
              for k, v in defaults.items()}
    return create_model(name, __base__=model, __module__=model.__module__, __doc__=model.__doc__, **fields)


def refuse_moved(data: Any, moved: dict[str, str]) -> Any:
    """A ``mode="before"`` validator's body: a field that moved is an error saying where it went, instead of
    pydantic's "extra inputs are not permitted"."""
    if isinstance(data, dict):
        old = [k for k in moved if k in data]
        if old:
            raise ValueError("; ".join(f"{k!r} moved: {moved[k]}" for k in old))
    return data


class OptimConfig(_Base):
    """AdamW and its parameter groups (``pretraining.optim.build_optimizer``): decoupled weight decay on
    matrices only, learning-rate multipliers by parameter name, global-norm gradient clipping. Used as
    ``optim`` by pretrain / SFT / DPO and as ``learner.optim`` by the GRPO learner, each with its own defaults."""

    lr: float = Field(3e-3, gt=0, le=1.0)
    """Peak learning rate (AdamW)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas, each in [0, 1)."""
    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    weight_decay: float = Field(0.1, ge=0)
    """Decoupled weight decay on matrices; embeddings, norms and biases get none."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this (0 disables clipping)."""
    lr_scale: dict[str, float] = Field(default_factory=dict)
    """Learning-rate multipliers by parameter name: ``{fnmatch pattern: factor}``, the first matching
    pattern wins, every pattern must match a parameter. Adam moves every parameter by about ``lr`` per
    step whatever its size, so a norm gain near 1 moves ~20x less, relatively, than a weight matrix entry
    near 0.05; ``{"model.norm.weight": 500}`` lets the GRPO reward rescale the output logits (sharpen the
    policy) at the pace of the matrices (docs/grpo.md, "Sharpening")."""

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(data, {
            "grad_accum": "micro-batches per step are not an optimizer setting; set grad_accum beside optim "
                          "(learner.grad_accum in the GRPO job)",
            "z_loss": "the z-loss is part of the objective; set z_loss beside optim (pretrain and sft)",
            "warmup_steps": "warmup is the schedule's: schedule.warmup_steps (learner.warmup_steps in the GRPO job)"})

    @model_validator(mode="after")
    def _check(self) -> "OptimConfig":
        for b in self.betas:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        for pattern, factor in self.lr_scale.items():
            if not factor > 0:
                raise ValueError(f"lr_scale[{pattern!r}] must be > 0, got {factor}")
        return self


class ScheduleConfig(_Base):
    kind: Literal["wsd", "cosine", "constant"] = "wsd"
    """LR shape: warmup-stable-decay, cosine, or constant after warmup."""
    warmup_steps: int = Field(20, ge=0)
    """Linear warmup steps."""
    decay_fraction: float = Field(0.2, ge=0, le=1)
    """WSD: the last fraction of all steps decays linearly to ``min_lr_ratio``."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Final LR as a fraction of the peak (wsd and cosine)."""


class MetricsConfig(_Base):
    backends: list[Literal["jsonl", "tensorboard", "wandb"]] = ["jsonl", "tensorboard"]
    """Where metrics go: JSONL always; TensorBoard when installed; W&B (offline) when listed."""
    wandb_project: str = "flywheel"
    """W&B project name (offline mode)."""
    log_every: int = Field(10, ge=1)
    """Log a line every N optimizer steps (the pretraining trainers also write their metrics record then;
    the GRPO job writes every step to ``metrics.jsonl``)."""


class DistributedConfig(_Base):
    fsdp: Literal["auto", "on", "off"] = "auto"
    """FSDP2 ``fully_shard``: ``auto`` turns it on when launched with WORLD_SIZE > 1 (torchrun) or when a
    CUDA device is visible (one process then trains on the GPU as a 1-rank NCCL group); ``off`` trains on
    the CPU in one process."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Process-group backend: ``auto`` = nccl on GPU, gloo on CPU."""
    mixed_precision: bool = True
    """On GPU: bf16 compute with fp32 master weights and fp32 gradient reduction (FSDP2
    ``MixedPrecisionPolicy``). CPU training is always fp32."""

    @field_validator("fsdp", mode="before")
    @classmethod
    def _yaml_on_off(cls, v):
        """YAML 1.1 reads a bare ``on`` / ``off`` (in a file or a ``--distributed.fsdp off`` override) as a bool."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class TokenizerConfig(_Base):
    path: str | None = None
    """An existing tokenizer folder; when unset a byte-level BPE is trained on the stage-1 corpus."""
    vocab_size: int = Field(512, ge=260, le=1_000_000)
    """BPE vocabulary size (incl. 256 bytes and the chat special tokens)."""
    train_docs: int = Field(4000, ge=10)
    """Documents the tokenizer is trained on."""


class DataStage(_Base):
    name: str
    """Stage name (``general``, ``reasoning``...), used in logs and checkpoint folders."""
    steps: int = Field(ge=1)
    """Optimizer steps in this stage."""
    mixture: dict[str, float]
    """Document source -> weight (sources: problems, arithmetic_facts, counting, comparisons)."""
    difficulties: list[int] = [1, 2, 3, 4, 5]
    """Problem difficulty levels that the ``problems`` source draws from."""

    @field_validator("mixture")
    @classmethod
    def _known_sources(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in DOCUMENT_SOURCES]
        if bad:
            raise ValueError(f"unknown source(s) {bad}; expected some of {list(DOCUMENT_SOURCES)}")
        if not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        return v


class PromptFields(BaseModel):
    """How a question becomes the user turn (shared by ``sft``, ``dpo``, ``eval`` and the GRPO job)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    system_prompt: str | None = None
    """System message put before every question; None keeps the chat template's default. A template that
    refuses a system role (Mistral's) gets it prepended to the question."""
    prompt_template: str = "{question}"
    """The user message, ``{question}`` replaced by the question (other braces are literal), e.g.
    ``"{question}\\nPlease reason step by step, and put your final answer within \\boxed{}."``."""

    @field_validator("prompt_template")
    @classmethod
    def _has_question(cls, v: str) -> str:
        if "{question}" not in v:
            raise ValueError(f"{v!r} has no {{question}} placeholder for the problem's question")
        return v


class _TrainCommon(_Base):
    out_dir: str
    """Run folder: metrics.jsonl, loss curve PNG, checkpoints (``final/`` is the HF export)."""
    seed: int = 0
    """Seed for data, init and shuffling."""
    seq_len: int = Field(256, ge=8, le=1_000_000)
    """Tokens per packed row (the context length used in training)."""
    batch_size: int = Field(8, ge=1)
    """Rows per micro-batch (per rank)."""
    packing: bool = True
    """Pack documents into rows (intra-document masking); False pads one document per row."""
    grad_accum: int = Field(1, ge=1, le=4096)
    """Micro-batches accumulated per optimizer step."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """Optimizer."""
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    """Learning-rate schedule."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Metrics logging."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """Multi-process (FSDP2) settings."""
    save_every: int = Field(0, ge=0)
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    resume: bool = False
    """Continue from the latest resumable checkpoint in ``out_dir``."""
    eval_n: int = Field(0, ge=0)
    """After training, greedy held-out accuracy on this many problems with vLLM (0 skips)."""
    num_threads: int = Field(0, ge=0)
    """torch intra-op threads (0: torch's default)."""


class _LanguageModelling(_Base):
    """The next-token objective of pretrain and SFT."""

    z_loss: float = Field(0.0, ge=0)
    """Weight of the z-loss (mean squared log-partition of the logits); 0 disables."""


SFTOptimConfig = with_defaults(OptimConfig, "SFTOptimConfig", lr=1e-3, weight_decay=0.0)
SFTScheduleConfig = with_defaults(ScheduleConfig, "SFTScheduleConfig", kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
DPOOptimConfig = with_defaults(OptimConfig, "DPOOptimConfig", lr=1e-4, weight_decay=0.0)
DPOScheduleConfig = with_defaults(ScheduleConfig, "DPOScheduleConfig", kind="cosine", warmup_steps=5, min_lr_ratio=0.1)


class ModelChoice(_Base):
    size: str = "tiny"
    """Named size (tiny ~1M, mini, small, qwen3-0.6b, qwen3-1.7b, qwen3-4b)."""


class PretrainConfig(_TrainCommon, _LanguageModelling):
    out_dir: str = "runs/pretrain"
    """Run folder: metrics.jsonl, loss curve PNG, ``stage-N/`` checkpoints, ``final/`` HF export."""
    model: ModelChoice = Field(default_factory=ModelChoice)
    """Architecture."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """Tokenizer to use or train."""
    stages: list[DataStage] = [
        DataStage(name="general", steps=250,
                  mixture={"problems": 0.5, "arithmetic_facts": 0.3, "counting": 0.1, "comparisons": 0.1}),
        DataStage(name="reasoning", steps=100, mixture={"problems": 0.9, "arithmetic_facts": 0.1}),
    ]
    """Data stages run in order with one LR schedule across all of them."""

    @model_validator(mode="after")
    def _stages(self) -> "PretrainConfig":
        if not self.stages:
            raise ValueError("stages: at least one data stage is needed")
        return self


class SFTConfig(_TrainCommon, _LanguageModelling, PromptFields):
    out_dir: str = "runs/sft"
    """Run folder; ``final/`` is the HF export."""
    init_from: str = "runs/pretrain/final"
    """Checkpoint folder to fine-tune (any HF causal-LM folder with a chat template)."""
    data_file: str | None = None
    """Conversations to train on instead of the synthetic problems (TRL's conversational format: one
    ``{"messages": [{role, content}, ...]}`` per row), a JSONL or Parquet file or a ``datasets``
    save_to_disk folder. Loss is on the assistant turns as the checkpoint's own template renders them."""
    messages_field: str = Field("messages", min_length=1)
    """Column of ``data_file`` holding the conversation."""
    n_examples: int = Field(3000, ge=1)
    """Training conversations generated from the train split (synthetic data only)."""
    difficulties: list[int] = [1, 2, 3, 4, 5]
    """Difficulty levels of the SFT problems (synthetic data only: ignored with ``data_file``)."""
    epochs: int = Field(2, ge=1)
    """Passes over the packed data."""
    optim: SFTOptimConfig = Field(default_factory=SFTOptimConfig)
    """Optimizer."""
    schedule: SFTScheduleConfig = Field(default_factory=SFTScheduleConfig)
    """Learning-rate schedule."""


class DPOConfig(_TrainCommon, PromptFields):
    out_dir: str = "runs/dpo"
    """Run folder; ``final/`` is the HF export."""
    init_from: str = "runs/sft/final"
    """Checkpoint to optimise; also the frozen reference model (any HF causal-LM folder with a chat template)."""
    data_file: str | None = None
    """Preference pairs instead of the built-in ones (``pairs`` and ``difficulties`` are then ignored), TRL
    style: ``prompt`` / ``chosen`` / ``rejected`` as strings or message lists, in a JSONL or Parquet file
    or a ``datasets`` save_to_disk folder."""
    n_pairs: int = Field(600, ge=1)
    """Preference pairs from the train split (``on_policy``: problems sampled; those without a wrong
    sample give no pair)."""
    pairs: Literal["synthetic", "on_policy"] = "synthetic"
    """``synthetic``: correct vs plausible wrong solution; ``on_policy``: the starting model's own correct
    vs wrong samples (vLLM + ``rewards.verify``)."""
    samples_per_prompt: int = Field(4, ge=1)
    """``on_policy``: samples per problem."""
    sample_max_tokens: int = Field(160, ge=8)
    """``on_policy``: token limit per sample (truncated samples are dropped)."""
    difficulties: list[int] = [1, 2, 3, 4, 5]
    """Difficulty levels of the pairs."""
    loss: Literal["sigmoid", "ipo", "apo_zero"] = "apo_zero"
    """Preference loss: DPO ``sigmoid``, ``ipo`` (length-normalised log-ratios), ``apo_zero``."""
    beta: float = Field(0.1, gt=0, le=10)
    """Strength of the implicit KL to the reference."""
    rpo_alpha: float = Field(0.0, ge=0)
    """Weight of the chosen response's per-token NLL added to the preference loss (RPO; 0 = plain)."""
    epochs: int = Field(1, ge=1)
    """Passes over the pairs."""
    batch_size: int = Field(8, ge=1)
    """Pairs per micro-batch."""
    packing: bool = False
    """DPO pads each sequence (pairs are scored per sequence)."""
    optim: DPOOptimConfig = Field(default_factory=DPOOptimConfig)
    """Optimizer (about 10x below SFT, as SmolLM3 used)."""
    schedule: DPOScheduleConfig = Field(default_factory=DPOScheduleConfig)
    """Learning-rate schedule."""


class MergeConfig(_Base):
    checkpoints: list[str] = Field(default_factory=list)
    """Two or more checkpoint folders of one architecture to average."""
    weights: list[float] | None = None
    """Per-checkpoint weights (normalised to sum to 1); uniform when unset."""
    out_dir: str = "runs/merged"
    """Folder for the merged HF checkpoint (tokenizer copied from the first input)."""

    @model_validator(mode="after")
    def _check(self) -> "MergeConfig":
        if len(self.checkpoints) < 1:
            raise ValueError("checkpoints: give at least one folder (--checkpoints '[a, b]')")
        if self.weights is not None:
            if len(self.weights) != len(self.checkpoints):
                raise ValueError(f"weights has {len(self.weights)} entries for {len(self.checkpoints)} checkpoints")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be >= 0 with a positive sum")
        return self


class HeldoutConfig(_Base):
    """Held-out evaluation: which problems and how they are sampled. The same fields for ``flywheel eval``
    (``EvalConfig``) and the GRPO job's ``eval`` section (``services.job_config.EvalSettings``), each with
    its own defaults; both report ``greedy_accuracy``, ``avg@k`` and ``pass@k``."""

    num_problems: int = Field(200, ge=1)
    """Held-out problems: drawn from the synthetic ``heldout`` split (never in any training corpus), or the
    first ``num_problems`` rows of ``data_file``."""
    k: int = Field(4, ge=1, le=256)
    """Samples per problem for avg@k and pass@k."""
    difficulties: list[int] | None = [1, 2, 3, 4, 5]
    """Difficulty levels of the synthetic held-out problems (ignored with ``data_file``); None = every level
    (``flywheel eval``) or the union of the stages' levels (the GRPO job)."""
    temperature: float = Field(1.0, ge=0, le=5)
    """Sampling temperature of the k samples."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling of the k samples."""
    max_response_tokens: int | None = Field(160, ge=1)
    """Longest completion; None = up to the engine's context length (``flywheel eval``) or the stage's
    ``max_response_tokens`` (the GRPO job)."""
    seed: int = 1234
    """Seed of the synthetic held-out draw (the same seed gives the same problems in ``flywheel eval`` and
    the GRPO job); ``flywheel eval`` also seeds its engine's sampling with it."""
    data_file: str | None = None
    """Problems with gold answers instead of the synthetic held-out split (``difficulties`` is then
    ignored), a JSONL or Parquet file or a ``datasets`` save_to_disk folder; the gold may be a bare answer,
    a worked solution ending in ``\\boxed{}`` or a GSM8K ``#### N`` answer."""
    question_field: str = Field("question", min_length=1)
    """Column of ``data_file`` holding the question (e.g. ``problem``)."""
    answer_field: str = Field("answer", min_length=1)
    """Column of ``data_file`` holding the gold (e.g. ``solution``)."""


class EvalConfig(HeldoutConfig, PromptFields):
    """``flywheel eval``: held-out accuracy of one checkpoint with a fresh vLLM engine (greedy, avg@k, pass@k)."""

    checkpoint: str = "runs/dpo/final"
    """Checkpoint folder to evaluate."""
    out: str | None = None
    """Write the result (and per-problem completions) as JSON here."""
    kv_cache_gib: float = Field(1.0, gt=0)
    """vLLM CPU KV-cache size (GiB) when VLLM_CPU_KVCACHE_SPACE is not set."""

    @model_validator(mode="before")
    @classmethod
    def _old_spellings(cls, data: Any) -> Any:
        """``n`` and ``max_tokens`` (the command's first names) still work: they are ``num_problems`` and
        ``max_response_tokens``, the names the GRPO job's ``eval`` section uses too."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in (("n", "num_problems"), ("max_tokens", "max_response_tokens")):
            if old in data:
                if new in data:
                    raise ValueError(f"give {new} once ({old} is its old name)")
                data[new] = data.pop(old)
        return data
