"""Batch shaping: from rollout ``Group``s to packed (or padded) micro-batches of tensors.

- ``is_zero_variance``: a group whose rewards are all equal has zero advantages (no signal); the GRPO
  job's batch builder (``services.grpo_batch``) skips such groups (DAPO's dynamic sampling).
- ``staleness``: a sample whose oldest token is more than ``max_staleness`` policy versions behind the
  learner is dropped, or its too-old tokens are down-weighted (per-token versions are in the record).
- ``sequences_from_groups``: group advantages (computed on the whole group, before any sample is
  dropped) and one ``TrainSequence`` per kept sample.
- ``collate``: one micro-batch as tensors: a padding-free packed row (positions restart per sequence)
  or right-padded rows, plus per-completion-token tensors (loss mask with stale-token weights,
  behaviour log-probs, versions) and per-sequence advantages.
- ``shard_steps``: split the sequences of one ``train_step`` into optimizer steps, ranks and
  micro-batches (by sequence count or by a token budget) so that every rank runs the same number of
  forward/backward passes.

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


def collate(seqs: list[TrainSequence], pad_id: int = 0, packed: bool = True) -> dict[str, Any]:
    """Tensors of one micro-batch: the model inputs, and per-token tensors over completion tokens only.

    Model inputs: ``packed`` (padding-free) puts every sequence into one row, ``input_ids`` and
    ``position_ids`` ``(1, total tokens)`` with positions restarting at 0 per sequence, and ``seq_lens``
    (attention stays inside each sequence: ``learner.packed_attention``, or transformers' own
    block-diagonal mask built from the position resets); otherwise right-padded rows ``input_ids`` and
    ``attention_mask`` ``(B, T)``. ``positions`` (N,) indexes the flattened rows at the position that
    predicts each completion token (position j predicts token j+1), ``targets`` (N,) are those tokens.

    Per-token tensors are laid out ``(B, C)``, one row per sequence, C = its longest completion:
    ``completion_mask`` (bool), ``loss_mask`` (token weights, stale-token weights included),
    ``behaviour_logprobs``, ``versions`` (-1 off the completion); ``advantages`` is ``(B,)`` and
    ``n_tokens`` the real (non-padding) token count. An empty list gives a one-token dummy whose mask
    is all zero (a rank with no data still joins the FSDP collectives).
    """
    import torch

    if not seqs:
        seqs = [TrainSequence([pad_id], [pad_id], [0.0], [0], 0.0, [0.0])]
    B, C = len(seqs), max(len(s.completion_ids) for s in seqs)
    T = max(len(s) for s in seqs)
    completion_mask = torch.zeros((B, C), dtype=torch.bool)
    loss_mask = torch.zeros((B, C), dtype=torch.float32)
    behaviour = torch.zeros((B, C), dtype=torch.float32)
    versions = torch.full((B, C), -1, dtype=torch.long)
    ids, pos, positions, targets = [], [], [], []
    for i, s in enumerate(seqs):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        if p == 0:
            raise ValueError(f"group {s.group_id!r}: empty prompt; the first completion token has no context")
        start = len(ids) if packed else i * T
        seq_ids = s.prompt_ids + s.completion_ids
        ids += seq_ids if packed else seq_ids + [pad_id] * (T - len(seq_ids))
        pos += list(range(len(seq_ids)))
        positions += range(start + p - 1, start + p - 1 + c)
        targets += s.completion_ids
        completion_mask[i, :c] = True
        loss_mask[i, :c] = torch.tensor(s.token_weights, dtype=torch.float32)
        behaviour[i, :c] = torch.tensor(s.behaviour_logprobs, dtype=torch.float32)
        versions[i, :c] = torch.tensor(s.versions, dtype=torch.long)
    out = {"positions": torch.tensor(positions, dtype=torch.long), "targets": torch.tensor(targets, dtype=torch.long),
           "completion_mask": completion_mask, "loss_mask": loss_mask, "behaviour_logprobs": behaviour,
           "versions": versions, "advantages": torch.tensor([s.advantage for s in seqs], dtype=torch.float32),
           "n_tokens": sum(len(s) for s in seqs)}
    if packed:
        out["input_ids"] = torch.tensor([ids], dtype=torch.long)
        out["position_ids"] = torch.tensor([pos], dtype=torch.long)
        out["seq_lens"] = [len(s) for s in seqs]
    else:
        out["input_ids"] = torch.tensor(ids, dtype=torch.long).view(B, T)
        out["attention_mask"] = (torch.arange(T)[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    return out


def token_budget_micro_batches(seqs: list, max_tokens: int) -> list[list]:
    """Cut sequences into micro-batches of at most ``max_tokens`` tokens each (first-fit decreasing; a
    sequence longer than the budget gets a micro-batch of its own)."""
    bins: list[list] = []
    room: list[int] = []
    for s in sorted(seqs, key=len, reverse=True):
        b = next((i for i, r in enumerate(room) if r >= len(s)), None)
        if b is None:
            bins.append([])
            room.append(max_tokens)
            b = len(bins) - 1
        bins[b].append(s)
        room[b] -= len(s)
    return bins[::-1]  # shortest micro-batches first, as the count split does


def shard_steps(seqs: list, micro_batch_size: int, grad_accum: int, world_size: int,
                sort_by_length: bool = True, max_tokens: int | None = None) -> list[list[list[list[TrainSequence]]]]:
    """Split sequences into ``steps[step][rank][micro]`` lists of sequences.

    One optimizer step takes ``micro_batch_size * grad_accum * world_size`` sequences (the last
    step takes the rest); inside a step sequence i goes to rank i % world_size. Each rank's share is
    then cut into micro-batches of ``micro_batch_size`` sequences after sorting by length (less
    padding), or, with ``max_tokens``, into micro-batches of at most that many tokens. The loss
    denominators are step-wide, so neither cut changes the update. Every rank of a step gets the same
    number of micro-batches (possibly empty ones) because each forward pass is a collective under FSDP.
    """
    per_step = micro_batch_size * grad_accum * world_size
    steps = []
    for start in range(0, len(seqs), per_step):
        chunk = seqs[start:start + per_step]
        per_rank = [chunk[r::world_size] for r in range(world_size)]
        if max_tokens is not None:
            micro = [token_budget_micro_batches(p, max_tokens) for p in per_rank]
        else:
            if sort_by_length:
                per_rank = [sorted(p, key=len) for p in per_rank]
            micro = [[p[m:m + micro_batch_size] for m in range(0, len(p), micro_batch_size)] for p in per_rank]
        n_micro = max(1, max(len(m) for m in micro))
        steps.append([m + [[] for _ in range(n_micro - len(m))] for m in micro])
    return steps
