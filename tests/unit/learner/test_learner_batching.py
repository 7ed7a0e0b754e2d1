"""Batch shaping: zero-variance filtering, staleness rules, padding/alignment, rank/micro-batch split."""

from __future__ import annotations

import pytest
import torch

from learner.batching import (TrainSequence, collate, is_zero_variance, sequences_from_groups,
                              shard_steps, token_budget_micro_batches)
from learner.config import LossConfig
from rollout.trajectory import Group, Sample


def sample(reward: float, versions: list[int], ids: list[int] | None = None) -> Sample:
    ids = ids or [10 + i for i in range(len(versions))]
    return Sample(completion_token_ids=ids, logprobs=[-1.0] * len(ids), versions=versions,
                  finish_reason="stop", reward=reward)


def group(rewards: list[float], versions: list[list[int]] | None = None, gid: str = "g") -> Group:
    versions = versions or [[0, 0]] * len(rewards)
    return Group(group_id=gid, prompt_token_ids=[5, 6, 7], samples=[sample(r, v) for r, v in zip(rewards, versions)])


def test_zero_variance_groups_are_recognised_as_objects_and_dicts():
    groups = [group([1, 1, 1], gid="a"), group([0, 1, 0], gid="b").to_dict(), group([0.5, 0.5], gid="c")]
    assert [is_zero_variance(g) for g in groups] == [True, False, True]


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


def test_collate_padded_aligns_completion_tokens_with_the_predicting_positions():
    a = TrainSequence([5, 6, 7], [8, 9], [-0.1, -0.2], [3, 4], 1.5, [1.0, 0.5])
    b = TrainSequence([5], [11], [-0.3], [4], -1.0, [1.0])
    t = collate([a, b], pad_id=0, packed=False)
    assert t["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 11, 0, 0, 0]]
    assert t["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # position 2 of row 0 predicts 8, position 3 predicts 9; position 0 of row 1 (flat 5) predicts 11
    assert t["positions"].tolist() == [2, 3, 5] and t["targets"].tolist() == [8, 9, 11]
    assert t["completion_mask"].tolist() == [[True, True], [True, False]]
    assert t["loss_mask"].tolist() == [[1.0, 0.5], [1.0, 0.0]]
    assert t["behaviour_logprobs"].flatten().tolist() == pytest.approx([-0.1, -0.2, -0.3, 0.0])
    assert t["versions"].tolist() == [[3, 4], [4, -1]]
    assert t["advantages"].tolist() == [1.5, -1.0] and t["n_tokens"] == 7


def test_collate_packed_puts_sequences_in_one_row_with_positions_restarting():
    a = TrainSequence([5, 6, 7], [8, 9], [-0.1, -0.2], [3, 4], 1.5, [1.0, 0.5])
    b = TrainSequence([5], [11], [-0.3], [4], -1.0, [1.0])
    t = collate([a, b], pad_id=0)
    assert t["input_ids"].tolist() == [[5, 6, 7, 8, 9, 5, 11]]
    assert t["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1]] and "attention_mask" not in t
    assert t["positions"].tolist() == [2, 3, 5] and t["targets"].tolist() == [8, 9, 11]
    padded = collate([a, b], pad_id=0, packed=False)
    for key in ("completion_mask", "loss_mask", "behaviour_logprobs", "versions", "advantages"):
        assert torch.equal(t[key], padded[key]), key


def test_one_long_and_seven_short_responses_are_not_padded():
    seqs = [TrainSequence([1, 2], [3] * n, [0.0] * n, [0] * n, 0.0, [1.0] * n) for n in [500] + [4] * 7]
    t = collate(seqs)
    assert t["input_ids"].shape == (1, 502 + 7 * 6) and t["n_tokens"] == 502 + 7 * 6
    assert collate(seqs, packed=False)["input_ids"].numel() == 8 * 502  # what padding would cost


def test_collate_of_nothing_is_an_all_masked_dummy():
    t = collate([])
    assert t["input_ids"].shape == (1, 2) and float(t["loss_mask"].sum()) == 0.0


def test_shard_steps_splits_steps_ranks_and_micro_batches():
    seqs = list(range(10))
    steps = shard_steps(seqs, micro_batch_size=2, grad_accum=2, world_size=2, sort_by_length=False)
    assert steps == [[[[0, 2], [4, 6]], [[1, 3], [5, 7]]], [[[8]], [[9]]]]


def test_shard_steps_gives_every_rank_the_same_number_of_micro_batches():
    steps = shard_steps([0, 1, 2], micro_batch_size=1, grad_accum=4, world_size=2, sort_by_length=False)
    assert steps == [[[[0], [2]], [[1], []]]]


def test_shard_steps_groups_similar_lengths_into_micro_batches():
    seqs = [TrainSequence([1], [2] * n, [0.0] * n, [0] * n, 0.0, [1.0] * n) for n in (9, 1, 8, 2)]
    (ranks,) = shard_steps(seqs, micro_batch_size=2, grad_accum=2, world_size=1)
    assert [[len(s.completion_ids) for s in mb] for mb in ranks[0]] == [[1, 2], [8, 9]]


def seq(n: int) -> TrainSequence:
    return TrainSequence([1], [2] * (n - 1), [0.0] * (n - 1), [0] * (n - 1), 0.0, [1.0] * (n - 1))


def test_token_budget_micro_batches_stay_under_the_budget():
    seqs = [seq(n) for n in (700, 100, 300, 250, 600, 50)]
    bins = token_budget_micro_batches(seqs, max_tokens=800)
    assert all(sum(len(s) for s in b) <= 800 for b in bins)
    assert sorted(len(s) for b in bins for s in b) == sorted(len(s) for s in seqs)
    assert len(bins) == 3  # 2000 tokens need at least 3 bins of 800


def test_a_sequence_over_the_budget_gets_a_micro_batch_of_its_own():
    bins = token_budget_micro_batches([seq(5000), seq(10), seq(20)], max_tokens=1000)
    assert sorted([len(s) for s in b] for b in bins) == [[20, 10], [5000]]


def test_shard_steps_with_a_token_budget_keeps_the_step_size_and_equalises_ranks():
    seqs = [seq(n) for n in (400, 30, 30, 30, 400, 400, 30, 30)]
    steps = shard_steps(seqs, micro_batch_size=2, grad_accum=2, world_size=2, max_tokens=500)
    assert len(steps) == 1  # 2 x 2 x 2 = 8 sequences per optimizer step, as without the budget
    rank0, rank1 = steps[0]
    assert len(rank0) == len(rank1)
    assert sorted(len(s) for mb in rank0 + rank1 for s in mb) == sorted(len(s) for s in seqs)
    assert all(sum(len(s) for s in mb) <= 500 for mb in rank0 + rank1)
