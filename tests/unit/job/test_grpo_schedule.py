"""Stage scheduling of the GRPO job: plateau rule, stop reasons, staleness-bounded issuing, progress."""

from __future__ import annotations

import pytest

from services.grpo_schedule import (
    JobProgress,
    moving_average,
    plateau_reached,
    prompts_to_issue,
    sample_staleness,
    stage_stop_reason,
    staleness_histogram,
)


def test_moving_average_hand_computed():
    assert moving_average([1, 2, 3, 4], 2) == [1.5, 2.5, 3.5]
    assert moving_average([1, 2], 3) == []


def test_plateau_fires_when_average_stops_improving():
    # averages (window 2): [0.3, 0.5, 0.5, 0.5]; best 0.5 set at index 1; last 2 do not beat it
    assert plateau_reached([0.1, 0.5, 0.5, 0.5, 0.5], window=2, patience=2, min_delta=0.0)


def test_plateau_does_not_fire_while_improving():
    assert not plateau_reached([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], window=2, patience=2, min_delta=0.0)


def test_plateau_min_delta_counts_small_gains_as_flat():
    rewards = [0.1, 0.5, 0.5, 0.505, 0.51]
    assert not plateau_reached(rewards, window=1, patience=2, min_delta=0.0)
    assert plateau_reached(rewards, window=1, patience=2, min_delta=0.02)


def test_plateau_needs_enough_history_and_min_steps():
    assert not plateau_reached([0.5, 0.5, 0.5], window=2, patience=2, min_delta=0.0)
    assert not plateau_reached([0.5] * 6, window=2, patience=2, min_delta=0.0, min_steps=8)
    assert plateau_reached([0.5] * 8, window=2, patience=2, min_delta=0.0, min_steps=8)


def test_stage_stop_reason():
    plateau = {"window": 1, "patience": 2, "min_delta": 0.0, "min_steps": 0}
    assert stage_stop_reason(5, 5, [0.1] * 5, None) == "steps"
    assert stage_stop_reason(3, 5, [0.1, 0.2, 0.3], plateau) is None
    assert stage_stop_reason(3, 5, [0.3, 0.3, 0.3], plateau) == "plateau"
    assert stage_stop_reason(3, 5, [0.3, 0.3, 0.3], None) is None


def test_sync_mode_issues_only_the_rest_of_the_batch():
    # max_staleness 0: nothing beyond the current batch is ever in flight
    assert prompts_to_issue(8, 0, accepted_in_batch=0, buffered=0, in_flight=0) == 8
    assert prompts_to_issue(8, 0, accepted_in_batch=5, buffered=0, in_flight=3) == 0
    # two groups dropped by dynamic sampling come back as nothing: their prompts are replaced
    assert prompts_to_issue(8, 0, accepted_in_batch=5, buffered=0, in_flight=1) == 2


def test_async_mode_keeps_max_staleness_batches_ahead():
    assert prompts_to_issue(8, 1, accepted_in_batch=0, buffered=0, in_flight=0) == 16
    assert prompts_to_issue(8, 2, accepted_in_batch=3, buffered=4, in_flight=10) == 5 + 16 - 14
    assert prompts_to_issue(8, 1, accepted_in_batch=0, buffered=20, in_flight=0) == 0


def test_prompts_to_issue_rejects_negative_counts():
    with pytest.raises(ValueError):
        prompts_to_issue(8, 0, accepted_in_batch=0, buffered=-1, in_flight=0)


def test_staleness_of_mixed_version_samples():
    assert sample_staleness([3, 3, 4], learner_version=5) == 2
    assert sample_staleness([5], learner_version=5) == 0
    groups = [{"samples": [{"versions": [1, 2]}, {"versions": [2, 2]}]}, {"samples": [{"versions": [3]}]}]
    assert staleness_histogram(groups, learner_version=3) == {0: 1, 1: 1, 2: 1}


def test_progress_round_trip_and_stage_transitions():
    p = JobProgress()
    p.record_step(0.25)
    p.record_step(0.5)
    p.data_position = 16
    assert (p.step_in_stage, p.global_step, p.version) == (2, 2, 2)
    p.finish_stage("steps", num_stages=2)
    assert p.stage_done and not p.finished
    q = JobProgress.from_dict(p.to_dict())
    assert q == p
    q.next_stage()
    assert (q.stage, q.step_in_stage, q.global_step, q.version, q.data_position) == (1, 0, 2, 2, 0)
    assert q.stage_rewards == [] and not q.stage_done
    q.record_step(0.1)
    q.finish_stage("plateau", num_stages=2)
    assert q.finished and q.stop_reasons == ["steps", "plateau"]


def test_idle_clock_counts_only_idle_intervals():
    from services.grpo_schedule import IdleClock

    c = IdleClock(now=0.0)       # idle from 0
    c.mark(True, 1.0)            # busy at 1 -> 1 s idle
    c.mark(True, 3.0)            # still busy
    c.mark(False, 4.0)           # idle from 4
    assert c.take(6.0) == pytest.approx(3.0)  # 1 + (6 - 4)
    c.mark(True, 6.5)
    assert c.take(10.0) == pytest.approx(0.5)
