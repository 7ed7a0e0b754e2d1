"""Reward shaping: correctness values, format reward and the DAPO overlong penalty."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rewards import RewardConfig, overlong_penalty, score, score_batch


def test_default_rewards_are_one_and_zero():
    assert score("\\boxed{4}", "4").total == 1.0
    assert score("\\boxed{5}", "4").total == 0.0
    assert score("no answer here", "4").verdict.status == "no_answer"


def test_dapo_correctness_values():
    cfg = RewardConfig(correct_reward=1.0, wrong_reward=-1.0)
    assert score("\\boxed{5}", "4", config=cfg).correctness == -1.0


@pytest.mark.parametrize("length,expected", [(None, 0.0), (100, 0.0), (768, 0.0), (896, -0.5), (1024, -1.0),
                                             (1025, -1.0), (5000, -1.0)])
def test_overlong_penalty(length, expected):
    assert overlong_penalty(length, 1024, 256) == pytest.approx(expected)


def test_overlong_off_without_max_length():
    assert overlong_penalty(10**6, None, 0) == 0.0
    assert overlong_penalty(1025, 1024, 0) == -1.0 and overlong_penalty(1024, 1024, 0) == 0.0


def test_parts_add_up():
    cfg = RewardConfig(format_weight=0.1, max_response_tokens=1000, overlong_buffer_tokens=200)
    r = score("The final answer is 3", "3", response_tokens=900, config=cfg)
    assert (r.correctness, r.format, r.overlong) == (1.0, 1.0, -0.5)
    assert r.total == pytest.approx(1.0 + 0.1 - 0.5)
    unmarked = score("3", "3", config=cfg)
    assert unmarked.format == 0.0


def test_score_batch_order():
    items = [{"completion": f"#### {i}", "gold": "3", "response_tokens": 10} for i in range(6)]
    assert [r.correctness for r in score_batch(items)] == [1.0 if i == 3 else 0.0 for i in range(6)]


def test_config_validation():
    with pytest.raises(ValidationError, match="overlong_buffer_tokens"):
        RewardConfig(max_response_tokens=100, overlong_buffer_tokens=200)
    with pytest.raises(ValidationError):
        RewardConfig(bogus=1)
