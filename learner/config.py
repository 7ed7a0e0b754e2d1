"""Typed configs of the learner: the GRPO-family objective, the FSDP2 trainer and the experience stream.

Pydantic v2 models with a docstring per field; imports no torch or ray (the CLI's ``--help`` reads
these). ``LossConfig`` is the part a stage may override (clip range, aggregation, KL, ...). The optimizer
is pretraining's ``OptimConfig`` with the learner's defaults (``LearnerOptimConfig``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pretraining.config import OptimConfig, refuse_moved, with_defaults


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    advantage: Literal["grpo", "drgrpo"] = "drgrpo"
    """Group advantage: ``grpo`` = (r - mean) / (std + eps); ``drgrpo`` = r - mean (Dr.GRPO, no std division)."""
    clip_low: float = Field(0.2, ge=0.0, le=1.0)
    """PPO ratio clip below: the ratio is clipped to >= 1 - clip_low."""
    clip_high: float = Field(0.28, ge=0.0, le=10.0)
    """PPO ratio clip above: <= 1 + clip_high (DAPO clip-higher uses 0.28 > clip_low)."""
    aggregation: Literal["token", "sequence", "constant"] = "token"
    """How token losses become a batch loss: ``token`` = mean over all completion tokens of the optimizer
    step (DAPO); ``sequence`` = mean per sequence, then mean over sequences (GRPO); ``constant`` = sum per
    sequence divided by ``constant_norm``, then mean over sequences (Dr.GRPO)."""
    constant_norm: int = Field(1024, ge=1)
    """The constant generation budget (tokens) that ``aggregation: constant`` divides by."""
    kl_coef: float = Field(0.0, ge=0.0)
    """Weight of the k3 KL estimate to the reference policy (the starting checkpoint); 0 = no KL and no
    reference model is loaded."""
    entropy_coef: float = Field(0.0, ge=-1.0, le=1.0)
    """Weight of the entropy term: ``loss -= entropy_coef * entropy``. Positive = entropy bonus (keeps the
    policy exploring); negative = entropy penalty (sharpens the policy toward its own mode, entropy
    minimisation); 0 = entropy is only measured."""
    tis_cap: float | None = Field(2.0, gt=0.0)
    """Truncated importance sampling: each token's loss is weighted by min(pi_old / pi_behaviour, tis_cap)
    with pi_behaviour the log-prob the rollout engine recorded; ``None`` = off."""
    max_staleness: int | None = Field(4, ge=0)
    """Samples whose oldest token is more than this many policy versions behind the learner are dropped or
    down-weighted (``staleness_mode``); 0 = strictly on-policy; ``None`` = no limit."""
    staleness_mode: Literal["drop", "downweight"] = "drop"
    """``drop`` removes too-stale samples; ``downweight`` keeps them and multiplies the loss of each
    too-stale token by ``stale_weight``."""
    stale_weight: float = Field(0.5, ge=0.0, le=1.0)
    """Loss weight of a token older than ``max_staleness`` versions when ``staleness_mode: downweight``."""
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    """The rollouts' sampling temperature: the learner divides logits by it before taking log-probs, so
    ratios and TIS weights compare the distribution the tokens were sampled from (the engine records
    processed log-probs). The GRPO job sets it from each stage's ``temperature``."""
    advantage_eps: float = Field(1e-6, gt=0.0)
    """Added to the group std before dividing (``advantage: grpo``)."""


LearnerOptimConfig = with_defaults(OptimConfig, "LearnerOptimConfig", lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0)
"""The learner's optimizer: pretraining's ``OptimConfig`` starting from RL fine-tuning's defaults."""


class LearnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    world_size: int = Field(1, ge=1, le=1024)
    """Number of learner ranks (Ray actors, one FSDP2 shard each). On a CPU one rank is fastest."""
    device: Literal["cpu", "cuda"] = "cpu"
    """``cpu`` = gloo over a CPU mesh; ``cuda`` = NCCL, one GPU per rank, bf16 mixed precision."""
    num_cpus_per_rank: float = Field(1.0, gt=0.0)
    """Ray CPUs each learner actor reserves."""
    optim: LearnerOptimConfig = Field(default_factory=LearnerOptimConfig)
    """AdamW (pretraining's ``OptimConfig``; here lr 1e-6, betas (0.9, 0.999), no weight decay)."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear LR warmup from 0 (``lr * min(1, (step + 1) / warmup_steps)``); constant LR
    afterwards, whatever the number of stages."""
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per forward/backward pass on each rank (unless ``max_tokens_per_micro_batch`` is set)."""
    grad_accum: int = Field(8, ge=1)
    """Micro-batches per rank per optimizer step: one optimizer step consumes
    micro_batch_size * grad_accum * world_size sequences; a bigger ``train_step`` batch makes
    several optimizer steps (PPO mini-batches)."""
    activation_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute each decoder block's activations in the backward pass (less memory, ~1/3 more compute);
    ``auto`` = on for models of at least ``activation_checkpointing_min_params`` parameters."""
    activation_checkpointing_min_params: int = Field(100_000_000, ge=0)
    """Model size (parameters) from which ``activation_checkpointing: auto`` turns it on."""
    pack_sequences: bool = True
    """Padding-free micro-batches: a micro-batch's sequences go into one row, positions restarting at 0
    per sequence and attention kept inside each sequence; off = right-padded rows (one per sequence)."""
    max_tokens_per_micro_batch: int | None = Field(None, ge=1)
    """Cut each rank's share of an optimizer step into micro-batches of at most this many tokens (prompt
    + completion; a longer sequence gets a micro-batch of its own) instead of ``micro_batch_size``
    sequences. The step's size and the loss denominators do not change."""
    logits_chunk_mib: float = Field(256.0, gt=0.0)
    """Log-probs and entropy are computed from the hidden states a chunk of positions at a time, with
    this much float32 logits per chunk (recomputed in the backward pass): memory of the loss path no
    longer grows with tokens x vocabulary."""
    mixed_precision: bool = True
    """bf16 parameters/compute with fp32 gradient reduction on ``cuda``; ignored on ``cpu`` (always fp32)."""
    seed: int = Field(0, ge=0)
    """Seed of torch's RNG on every rank."""
    timeout_s: float = Field(1800.0, gt=0.0)
    """Timeout of the process group's collectives."""

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(data, {k: f"the optimizer's settings are one section: learner.optim.{k}"
                                   for k in ("lr", "betas", "eps", "weight_decay", "grad_clip", "lr_scale")})


class ExperienceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    backend: Literal["ray", "redis"] = "ray"
    """``ray`` = an in-job queue actor (default); ``redis`` = Redis Streams with a consumer group and
    acknowledgements, for rollout workers and learner in different jobs."""
    maxsize: int = Field(0, ge=0)
    """Ray queue: most groups held before ``put`` waits (back-pressure on rollout workers); 0 = unbounded."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis server of the ``redis`` backend."""
    stream: str = "flywheel:experience"
    """Redis stream key the groups are appended to."""
    consumer_group: str = "learner"
    """Redis consumer group of the learner."""
    consumer: str = "learner-0"
    """This learner's consumer name inside the group."""
    reclaim_idle_ms: int = Field(0, ge=0)
    """On start, pending (delivered, unacknowledged) entries idle at least this long are claimed by this
    consumer (XAUTOCLAIM); 0 = all of them (a restarted learner is the only consumer)."""
    trim_acked: bool = True
    """Delete acknowledged entries from the stream (XDEL) so it does not grow without bound; turn off when
    other consumer groups read the same stream."""
