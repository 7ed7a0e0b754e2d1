"""Batch shaping: zero-variance filtering, staleness rules, padding/alignment, rank/micro-batch split."""

from __future__ import annotations

import pytest

from learner.batching import (TrainSequence, collate, dynamic_sampling, is_zero_variance, sequences_from_groups,
                              shard_steps)
from learner.config import LossConfig
from rollout.trajectory import Group, Sample


def sample(reward: float, versions: list[int], ids: list[int] | None = None) -> Sample:
    ids = ids or [10 + i for i in range(len(versions))]
    return Sample(completion_token_ids=ids, logprobs=[-1.0] * len(ids), versions=versions,
                  finish_reason="stop", reward=reward)


def group(rewards: list[float], versions: list[list[int]] | None = None, gid: str = "g") -> Group:
    versions = versions or [[0, 0]] * len(rewards)
    return Group(group_id=gid, prompt_token_ids=[5, 6, 7], samples=[sample(r, v) for r, v in zip(rewards, versions)])


def test_zero_variance_groups_are_dropped():
    groups = [group([1, 1, 1], gid="a"), group([0, 1, 0], gid="b").to_dict(), group([0.5, 0.5], gid="c")]
    assert is_zero_variance(groups[0]) and not is_zero_variance(groups[1])
    kept, dropped = dynamic_sampling(groups)
    assert dropped == 2 and [Group.from_dict(g).group_id if isinstance(g, dict) else g.group_id for g in kept] == ["b"]


def test_advantages_use_the_whole_group_before_stale_samples_are_dropped():
    g = group([1.0, 0.0], versions=[[3, 3], [0, 1]])
    seqs, stats = sequences_from_groups([g], LossConfig(advantage="drgrpo", max_staleness=2), current_version=5)
    # lags: [2, 2] kept; [5, 4] > 2 dropped; advantage of the kept one is 1 - mean(1, 0) = 0.5
    assert [s.advantage for s in seqs] == [0.5]
    assert stats.dropped_stale == 1 and stats.samples_kept == 1
    assert stats.lag_histogram == {2: 1, 5: 1}


def test_downweight_mode_weights_only_the_too_old_tokens():
    g = group([1.0, 0.0], versions=[[3, 3], [2, 4]])
    cfg = LossConfig(max_staleness=2, staleness_mode="downweight", stale_weight=0.25)
    seqs, stats = sequences_from_groups([g], cfg, current_version=5)
    assert [s.token_weights for s in seqs] == [[1.0, 1.0], [0.25, 1.0]]
    assert stats.downweighted_tokens == 1 and stats.dropped_stale == 0


def test_on_policy_mode_drops_anything_older():
    g = group([1.0, 0.0], versions=[[5, 5], [4, 5]])
    seqs, _ = sequences_from_groups([g], LossConfig(max_staleness=0), current_version=5)
    assert len(seqs) == 1
    seqs, _ = sequences_from_groups([g], LossConfig(max_staleness=None), current_version=50)
    assert len(seqs) == 2


def test_collate_aligns_completion_tokens_with_shifted_logits():
    a = TrainSequence([5, 6, 7], [8, 9], [-0.1, -0.2], [3, 4], 1.5, [1.0, 0.5])
    b = TrainSequence([5], [11], [-0.3], [4], -1.0, [1.0])
    t = collate([a, b], pad_id=0)
    assert t["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 11, 0, 0, 0]]
    assert t["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert t["targets"].tolist() == [[6, 7, 8, 9], [11, 0, 0, 0]]
    assert t["loss_mask"].tolist() == [[0, 0, 1.0, 0.5], [1.0, 0, 0, 0]]
    assert t["behaviour_logprobs"].flatten().tolist() == pytest.approx([0, 0, -0.1, -0.2, -0.3, 0, 0, 0])
    assert t["versions"].tolist() == [[-1, -1, 3, 4], [4, -1, -1, -1]]
    assert t["advantages"].tolist() == [1.5, -1.0]


def test_collate_of_nothing_is_an_all_masked_dummy():
    t = collate([])
    assert t["input_ids"].shape == (1, 2) and float(t["loss_mask"].sum()) == 0.0


def test_shard_steps_splits_steps_ranks_and_micro_batches():
    seqs = list(range(10))
    steps = shard_steps(seqs, micro_batch_size=2, grad_accumulation=2, world_size=2, sort_by_length=False)
    assert steps == [[[[0, 2], [4, 6]], [[1, 3], [5, 7]]], [[[8]], [[9]]]]


def test_shard_steps_gives_every_rank_the_same_number_of_micro_batches():
    steps = shard_steps([0, 1, 2], micro_batch_size=1, grad_accumulation=4, world_size=2, sort_by_length=False)
    assert steps == [[[[0], [2]], [[1], []]]]


def test_shard_steps_groups_similar_lengths_into_micro_batches():
    seqs = [TrainSequence([1], [2] * n, [0.0] * n, [0] * n, 0.0, [1.0] * n) for n in (9, 1, 8, 2)]
    (ranks,) = shard_steps(seqs, micro_batch_size=2, grad_accumulation=2, world_size=1)
    assert [[len(s.completion_ids) for s in mb] for mb in ranks[0]] == [[1, 2], [8, 9]]
