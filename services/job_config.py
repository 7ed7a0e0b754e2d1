"""Typed config of the multi-stage GRPO job (``flywheel grpo`` / ``python -m services.grpo_job``).

The job composes the other components' configs (``rollout``, ``learner``, ``loss``, ``reward``,
``experience``) and adds what only the job knows: the starting checkpoint, resources and placement,
evaluation, checkpoints, and the declared ``stages``. Each stage has its data (difficulty levels of
the synthetic generator or a dataset file of problems with answers), max response length (vLLM's
``max_model_len`` follows), group size, temperature, a step budget and/or a reward-plateau stop rule,
and loss overrides. ``loss.max_staleness: 0`` is the synchronous on-policy mode; anything above is
asynchronous in-flight training (same code path). Imports no torch, vllm or ray.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_serializer, model_validator

from learner.config import ExperienceConfig, LearnerConfig, LossConfig
from pretraining.config import HeldoutConfig, MetricsConfig, PromptFields, with_defaults
from rewards.config import RewardConfig
from rollout.config import RolloutConfig


class PlateauConfig(BaseModel):
    """Stop a stage early when the batch reward stops improving."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    window: int = Field(4, ge=1, le=1000)
    """Steps in the moving average of the batch reward mean."""
    patience: int = Field(4, ge=1, le=1000)
    """Stop when the moving average has not beaten its earlier best for this many steps."""
    min_delta: float = Field(0.01, ge=0, le=1)
    """An improvement smaller than this does not count."""
    min_steps: int = Field(8, ge=0)
    """Never stop before this many steps of the stage."""


class _Overrides(BaseModel):
    """Base of an overrides model: only the fields a user set exist (and are dumped, so a job's
    ``config.json`` loads back to the same overrides)."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _only_set(self, handler):
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


def overrides_of(model: type[BaseModel]) -> type[BaseModel]:
    """A model with every field of ``model``, each optional and unset by default: what a stage overrides.
    Bounds are checked on the merged result (``stage_loss``)."""
    fields = {name: (f.annotation | None, Field(None, description=f.description))
              for name, f in model.model_fields.items()}
    return create_model(f"{model.__name__}Overrides", __base__=_Overrides, **fields)


LossOverrides = overrides_of(LossConfig)
"""Per-stage overrides of the job's ``loss`` (typed: an unknown or misspelt field is an error)."""


class StageConfig(BaseModel):
    """One GRPO stage: data, lengths, sampling, budget; weights and optimizer state carry over."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = ""
    """Display name (default ``stage<i>``)."""
    difficulties: list[int] | None = None
    """Difficulty levels of the synthetic problem generator (``pretraining.data``); ``[1]`` when neither this
    nor ``data_file`` is given."""
    data_file: str | None = None
    """Problems with gold answers instead of ``difficulties``: a JSONL or Parquet file or a ``datasets``
    save_to_disk folder (``pretraining.dataset_files``). The gold may be a bare answer, a worked solution
    whose last ``\\boxed{}`` is the answer, or a GSM8K ``#### N`` answer."""
    question_field: str = Field("question", min_length=1)
    """Column of ``data_file`` holding the question (e.g. ``problem`` for MATH-style data)."""
    answer_field: str = Field("answer", min_length=1)
    """Column of ``data_file`` holding the gold (e.g. ``solution`` for MATH-style data)."""
    num_problems: int = Field(2000, ge=1)
    """Training problems generated for the stage (synthetic data); the stage cycles through them."""
    max_response_tokens: int = Field(64, ge=1, le=1_000_000)
    """Longest completion; vLLM's ``max_model_len`` = ``max_prompt_tokens`` + this."""
    group_size: int = Field(8, ge=2, le=1024)
    """Samples per prompt (the GRPO group)."""
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    """Sampling temperature of the rollouts (> 0: greedy groups are identical and carry no signal). The
    learner scores tokens at the same temperature (``loss.temperature`` follows it)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling of the rollouts."""
    prompts_per_step: int = Field(8, ge=1, le=100_000)
    """Groups (prompts) in one optimizer step, after dynamic sampling drops the zero-variance ones."""
    steps: int = Field(20, ge=1, le=10_000_000)
    """Optimizer steps of the stage (an upper bound when ``plateau`` is set)."""
    plateau: PlateauConfig | None = None
    """Stop early when the reward plateaus; None = run all ``steps``."""
    overlong_buffer_tokens: int | None = Field(None, ge=0)
    """DAPO overlong soft penalty band below ``max_response_tokens``; None keeps ``reward``'s setting."""
    loss: LossOverrides = Field(default_factory=LossOverrides)
    """Overrides of ``loss`` fields for this stage, e.g. ``{clip_high: 0.28, kl_coef: 0.0}``."""
    lr: float | None = Field(None, gt=0)
    """Learning rate of this stage (None keeps ``learner.optim.lr``)."""

    @model_validator(mode="after")
    def _one_data_source(self) -> StageConfig:
        if self.data_file is not None and self.difficulties is not None:
            raise ValueError("give exactly one of difficulties (synthetic levels) and data_file (a dataset file)")
        if self.data_file is None and self.difficulties is None:
            self.difficulties = [1]
        if self.difficulties is not None and not self.difficulties:
            raise ValueError("difficulties is empty")
        return self


class ResourcesConfig(BaseModel):
    """Placement of the actors. CPUs/GPUs per actor live with each component (``learner.num_cpus_per_rank``,
    ``rollout.num_cpus_per_worker`` / ``num_gpus_per_worker`` / ``resources_per_worker``); this section
    adds the placement group, the learner's custom resources and the verifier actors."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    placement_group: bool = True
    """Reserve one placement group (a bundle per learner rank, then one per rollout worker) before starting
    the actors, so a job either gets all its resources or waits without starting anything."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Ray placement-group strategy."""
    learner_custom: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources per learner rank, e.g. ``{learner_node: 1}`` (rollout workers take theirs from
    ``rollout.resources_per_worker``)."""
    verifier_actors: int = Field(1, ge=1, le=1024)
    """Reward verifier Ray actors (``rewards.ray_pool.VerifierPool``)."""
    verifier_cpus: float = Field(0.0, ge=0, le=64)
    """CPUs reserved per verifier actor (0: they share cores with the others)."""


class EvalSettings(with_defaults(HeldoutConfig, "JobHeldoutConfig", num_problems=100, difficulties=None,
                                max_response_tokens=None)):
    """Held-out accuracy at the start and at every stage end, on the rollout workers: the fields of
    ``flywheel eval`` (``pretraining.config.HeldoutConfig``) plus when to evaluate."""

    enabled: bool = True
    """Evaluate at all."""
    at_start: bool = True
    """Also evaluate the starting checkpoint (the baseline of every gain)."""
    greedy: bool = True
    """Also report greedy (temperature 0) accuracy (``flywheel eval`` always does)."""


class CheckpointSettings(BaseModel):
    """Checkpoints (model, optimizer, schedule, progress, unconsumed experience) and resuming."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    every_steps: int = Field(0, ge=0)
    """Checkpoint every N optimizer steps (0: only at stage ends)."""
    resume: bool = True
    """Resume from the latest checkpoint in ``output_dir`` when there is one."""
    keep_last: int = Field(2, ge=1)
    """Step checkpoints kept on disk (stage-end HF exports are always kept)."""


JobMetricsConfig = with_defaults(MetricsConfig, "JobMetricsConfig", log_every=1)
"""Pretraining's metrics settings, a line every step by default."""


class GRPOJobConfig(PromptFields):
    """The multi-stage asynchronous GRPO job (``ray job submit -- python -m services.grpo_job``).
    ``system_prompt`` and ``prompt_template`` shape every training and held-out prompt."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str = "runs/dpo/final"
    """Starting HF checkpoint folder (the DPO or SFT output of the pretraining pipeline)."""
    output_dir: str = "runs/grpo"
    """Checkpoints, HF exports per stage, metrics.jsonl, plots."""
    seed: int = 0
    """Seed of data order and sampling."""
    ray_address: str | None = None
    """Ray cluster to join: None = the one ``ray job submit`` runs in (``RAY_ADDRESS``), else a fresh local
    one; ``auto`` = the cluster ``ray start`` runs on this machine; or ``host:port``."""
    max_prompt_tokens: int = Field(128, ge=8, le=1_000_000)
    """Longest prompt (chat-formatted question); longer problems are skipped with a warning."""
    engine_per_stage: bool = True
    """Restart the rollout engines when a stage needs a longer ``max_model_len`` (prompt + that stage's
    response budget). False sizes them once for the longest stage: no restarts, which on a CPU (or with
    CUDA-graph capture) saves the engine start-up per stage."""
    stages: list[StageConfig] = Field(default_factory=lambda: [StageConfig()], min_length=1)
    """The declared stages, run in order."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """Rollout workers (its model path and max_model_len are set by the job per stage)."""
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    """FSDP2 learner."""
    loss: LossConfig = Field(default_factory=LossConfig)
    """GRPO-family objective, dynamic sampling and staleness (``max_staleness: 0`` = synchronous mode)."""
    reward: RewardConfig = Field(default_factory=RewardConfig)
    """Reward shaping and verifier settings."""
    experience: ExperienceConfig = Field(default_factory=ExperienceConfig)
    """Experience stream backend (Ray queue or Redis Streams)."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """Actor resources and placement."""
    eval: EvalSettings = Field(default_factory=EvalSettings)
    """Held-out evaluation."""
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    """Checkpointing and resume."""
    issue_ahead_steps: int = Field(2, ge=0, le=1000)
    """Batches of prompts kept in flight ahead of the learner, capped at ``loss.max_staleness`` (0 there =
    synchronous). Keep it below ``max_staleness``: a prompt issued k batches ahead is trained about k+1
    versions after the weights that generate it (the worker loads each update while the learner already
    computes the next), so ahead == max_staleness drops many samples as too stale. Measured on the tiny
    config: ahead 2 with max_staleness 2 dropped 40 of 64 samples in most steps; with max_staleness 4 none."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal (no signal) and keep pulling until the batch is full (DAPO)."""
    max_draws_per_step: float = Field(4.0, ge=1.0, le=1000.0)
    """Give up dropping after drawing this many times ``prompts_per_step`` groups for one step (a model
    that gets everything wrong or right would otherwise never fill a batch); later groups are kept."""
    worker_stats: bool = True
    """Ask the rollout workers for their stats every step (idle share, sync stall)."""
    stop_after_steps: int | None = Field(None, ge=1)
    """Stop this run (checkpointed) after this many optimizer steps; rerun to resume. For time-boxed runs
    on preemptible machines; None = run every stage to the end."""
    metrics: JobMetricsConfig = Field(default_factory=JobMetricsConfig)
    """Where step metrics go (the same settings as pretraining's); the per-step line is printed every
    ``metrics.log_every`` steps, and every step goes to ``metrics.jsonl``."""
    plots: bool = True
    """Write PNG plots of reward and accuracy per stage at the end."""
    progress_bar: bool = True
    """Show a tqdm bar per stage."""

    @model_validator(mode="after")
    def _stage_losses_valid(self) -> GRPOJobConfig:
        why = "(the learner scores tokens at the temperature the stage samples them at)"
        if self.loss.temperature != 1.0:  # the default passes: the job's own config.json dump carries it
            raise ValueError(f"loss.temperature: set each stage's temperature instead {why}")
        for i, stage in enumerate(self.stages):
            if "temperature" in stage.loss.model_fields_set:
                raise ValueError(f"stages.{i}.loss.temperature: set stages.{i}.temperature instead {why}")
            try:
                stage_loss(self, i)
            except ValidationError as e:
                bad = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
                raise ValueError(f"stages.{i}.loss overrides are invalid: {bad}") from None
        return self


    @model_validator(mode="after")
    def _fits_the_checkpoint(self) -> GRPOJobConfig:
        from rollout.config import context_overflow

        for i, stage in enumerate(self.stages):
            n = self.max_prompt_tokens + stage.max_response_tokens
            why = context_overflow(self.model, n, f"stages.{i}: max_prompt_tokens + max_response_tokens = "
                                                  f"{self.max_prompt_tokens} + {stage.max_response_tokens} = {n}")
            if why:
                raise ValueError(why)
        return self


def stage_loss(cfg: GRPOJobConfig, index: int) -> LossConfig:
    """The loss config of stage ``index``: ``cfg.loss`` with the stage's overrides applied, and the stage's
    sampling temperature (the engine records log-probs of the temperature-scaled distribution, so the
    learner's ratios and TIS weights compare against that distribution only at the same temperature)."""
    stage = cfg.stages[index]
    return LossConfig.model_validate({**cfg.loss.model_dump(), **stage.loss.model_dump(),
                                      "temperature": stage.temperature})


def stage_reward(cfg: GRPOJobConfig, index: int) -> RewardConfig:
    """The reward config of stage ``index``: the overlong penalty follows the stage's response budget."""
    stage = cfg.stages[index]
    if stage.overlong_buffer_tokens is None:
        return cfg.reward
    return cfg.reward.model_copy(update={"max_response_tokens": stage.max_response_tokens,
                                         "overlong_buffer_tokens": stage.overlong_buffer_tokens})


def stage_name(cfg: GRPOJobConfig, index: int) -> str:
    return cfg.stages[index].name or f"stage{index}"
