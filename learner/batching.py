"""Batch shaping: from rollout ``Group``s to padded micro-batches of tensors.

- ``dynamic_sampling``: drop groups whose rewards are all equal (zero advantage, no signal; DAPO); the
  job keeps pulling from the experience stream until the batch is full.
- ``staleness``: a sample whose oldest token is more than ``max_staleness`` policy versions behind the
  learner is dropped, or its too-old tokens are down-weighted (per-token versions are in the record).
- ``sequences_from_groups``: group advantages (computed on the whole group, before any sample is
  dropped) and one ``TrainSequence`` per kept sample.
- ``collate``: right-padded tensors aligned with the shifted logits (position j predicts token j+1):
  input ids, attention mask, loss mask (completion tokens, with stale-token weights), behaviour
  log-probs, per-token versions, per-sequence advantages.
- ``shard_steps``: split the sequences of one ``train_step`` into optimizer steps, ranks and
  micro-batches so that every rank runs the same number of forward/backward passes.

Groups arrive as dicts (``Group.to_dict()``) or ``Group`` objects.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from learner.config import LossConfig
from rollout.trajectory import Group


def as_group(g: Group | dict[str, Any]) -> Group:
    return g if isinstance(g, Group) else Group.from_dict(g)


def is_zero_variance(group: Group | dict[str, Any]) -> bool:
    """True when every sample of the group has the same reward (the group carries no learning signal)."""
    rewards = [s.reward for s in as_group(group).samples]
    return len(rewards) == 0 or max(rewards) == min(rewards)


def dynamic_sampling(groups: list) -> tuple[list, int]:
    """Keep the groups with some reward variance; returns ``(kept, number_dropped)``."""
    kept = [g for g in groups if not is_zero_variance(g)]
    return kept, len(groups) - len(kept)


def version_lag(versions: list[int], current_version: int) -> list[int]:
    """How many policy versions behind ``current_version`` each token is (never negative)."""
    return [max(current_version - v, 0) for v in versions]


@dataclass
class TrainSequence:
    """One sample ready for the learner."""

    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logprobs: list[float]
    versions: list[int]
    advantage: float
    token_weights: list[float]
    """Loss weight of each completion token (1, or ``stale_weight`` for down-weighted stale tokens)."""
    group_id: str = ""

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass
class ShapeStats:
    samples_in: int = 0
    samples_kept: int = 0
    dropped_stale: int = 0
    downweighted_tokens: int = 0
    lag_histogram: Counter = field(default_factory=Counter)
    """Oldest-token lag (versions behind) of every incoming sample -> count."""

    def as_metrics(self) -> dict[str, Any]:
        return {"samples_in": self.samples_in, "samples_kept": self.samples_kept,
                "dropped_stale": self.dropped_stale, "downweighted_tokens": self.downweighted_tokens,
                "staleness_histogram": {int(k): v for k, v in sorted(self.lag_histogram.items())}}


def sequences_from_groups(groups: list, cfg: LossConfig, current_version: int) -> tuple[list[TrainSequence], ShapeStats]:
    """Advantages per group, then the staleness rule per sample; empty completions are skipped."""
    import torch

    from learner.losses import group_advantages

    stats = ShapeStats()
    out: list[TrainSequence] = []
    for g in map(as_group, groups):
        if not g.samples:
            continue
        rewards = torch.tensor([[s.reward for s in g.samples]], dtype=torch.float64)
        adv = group_advantages(rewards, cfg.advantage == "grpo", cfg.advantage_eps)[0].tolist()
        for s, a in zip(g.samples, adv):
            stats.samples_in += 1
            lags = version_lag(s.versions, current_version)
            stats.lag_histogram[max(lags, default=0)] += 1
            weights = [1.0] * len(lags)
            if cfg.max_staleness is not None and any(lag > cfg.max_staleness for lag in lags):
                if cfg.staleness_mode == "drop":
                    stats.dropped_stale += 1
                    continue
                weights = [cfg.stale_weight if lag > cfg.max_staleness else 1.0 for lag in lags]
                stats.downweighted_tokens += sum(lag > cfg.max_staleness for lag in lags)
            if not s.completion_token_ids:
                continue
            out.append(TrainSequence(list(g.prompt_token_ids), list(s.completion_token_ids), list(s.logprobs),
                                     list(s.versions), float(a), weights, g.group_id))
            stats.samples_kept += 1
    return out, stats


def collate(seqs: list[TrainSequence], pad_id: int = 0) -> dict[str, Any]:
    """Right-padded tensors for one micro-batch; per-token tensors are aligned with ``logits[:, :-1]``.

    Keys: ``input_ids``, ``attention_mask`` (B, T); ``targets``, ``loss_mask``, ``behaviour_logprobs``,
    ``versions`` (B, T-1); ``advantages`` (B,). An empty list gives a one-token dummy batch whose mask is
    all zero (a rank with no data still joins the FSDP collectives).
    """
    import torch

    if not seqs:
        seqs = [TrainSequence([pad_id], [pad_id], [0.0], [0], 0.0, [0.0])]
    T = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    loss_mask = torch.zeros((B, T - 1), dtype=torch.float32)
    behaviour = torch.zeros((B, T - 1), dtype=torch.float32)
    versions = torch.full((B, T - 1), -1, dtype=torch.long)
    advantages = torch.tensor([s.advantage for s in seqs], dtype=torch.float32)
    for i, s in enumerate(seqs):
        ids = s.prompt_ids + s.completion_ids
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        p, c = len(s.prompt_ids), len(s.completion_ids)
        if p == 0:
            raise ValueError(f"group {s.group_id!r}: empty prompt; the first completion token has no context")
        sl = slice(p - 1, p - 1 + c)  # shifted position p-1+k predicts completion token k
        loss_mask[i, sl] = torch.tensor(s.token_weights, dtype=torch.float32)
        behaviour[i, sl] = torch.tensor(s.behaviour_logprobs, dtype=torch.float32)
        versions[i, sl] = torch.tensor(s.versions, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": input_ids[:, 1:].clone(),
            "loss_mask": loss_mask, "behaviour_logprobs": behaviour, "versions": versions,
            "advantages": advantages}


def shard_steps(seqs: list, micro_batch_size: int, grad_accumulation: int, world_size: int,
                sort_by_length: bool = True) -> list[list[list[list[TrainSequence]]]]:
    """Split sequences into ``steps[step][rank][micro]`` lists of sequences.

    One optimizer step takes ``micro_batch_size * grad_accumulation * world_size`` sequences (the last
    step takes the rest); inside a step sequence i goes to rank i % world_size, and each rank's share
    is sorted by length before it is cut into micro-batches (less padding; the loss denominators are
    step-wide, so the order does not change the update). Every rank of a step gets the same number of
    micro-batches (possibly empty ones) because each forward pass is a collective under FSDP.
    """
    per_step = micro_batch_size * grad_accumulation * world_size
    steps = []
    for start in range(0, len(seqs), per_step):
        chunk = seqs[start:start + per_step]
        per_rank = [chunk[r::world_size] for r in range(world_size)]
        if sort_by_length:
            per_rank = [sorted(p, key=len) for p in per_rank]
        n_micro = max(1, max(-(-len(p) // micro_batch_size) for p in per_rank))
        steps.append([[p[m * micro_batch_size:(m + 1) * micro_batch_size] for m in range(n_micro)]
                      for p in per_rank])
    return steps
