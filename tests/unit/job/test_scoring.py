"""The scoring sink's pure parts: verifier items from groups and rewards written back in order."""

from __future__ import annotations

from rewards import Reward, verify
from services.grpo_scoring import apply_rewards, reward_items


def _groups():
    return [{"gold": "4", "samples": [{"text": "\\boxed{4}", "completion_token_ids": [1, 2, 3]},
                                      {"text": "\\boxed{5}", "completion_token_ids": [1]}]},
            {"gold": "7", "samples": [{"text": "7?", "completion_token_ids": []}]}]


def test_reward_items_one_per_sample_in_order():
    assert reward_items(_groups()) == [
        {"completion": "\\boxed{4}", "gold": "4", "response_tokens": 3},
        {"completion": "\\boxed{5}", "gold": "4", "response_tokens": 1},
        {"completion": "7?", "gold": "7", "response_tokens": 0}]


def test_apply_rewards_writes_total_parts_and_verdict():
    groups = _groups()
    rewards = [Reward(1.0, 1.0, 0.0, 0.0, verify("\\boxed{4}", "4")),
               Reward(-0.5, 0.0, 0.0, -0.5, verify("\\boxed{5}", "4")),
               Reward(0.0, 0.0, 0.0, 0.0, verify("7?", "7"))]
    apply_rewards(groups, rewards)
    a, b = groups[0]["samples"]
    assert (a["reward"], a["correct"]) == (1.0, True)
    assert (b["reward"], b["correct"], b["reward_parts"]["overlong"]) == (-0.5, False, -0.5)
    assert groups[1]["samples"][0]["reward_parts"] == {"correctness": 0.0, "format": 0.0, "overlong": 0.0}
