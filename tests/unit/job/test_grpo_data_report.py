"""The job's data helpers (JSONL problems, prompt cursor) and its metrics (batch, evaluation, step line)."""

from __future__ import annotations

import json

import pytest

from services.grpo_data import PromptCursor, read_problems
from services.grpo_report import batch_metrics, evaluation_metrics, format_step_line


def _sample(reward, correct, n_tokens, finish="stop"):
    return {"reward": reward, "correct": correct, "completion_token_ids": [1] * n_tokens,
            "finish_reason": finish}


def test_read_problems(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n\n" + json.dumps({"question": "q", "answer": 3}) + "\n")
    probs = read_problems(f)
    assert [(p.question, p.answer) for p in probs] == [("1+1?", "2"), ("q", "3")]


def test_read_problems_names_the_bad_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"question": "ok", "answer": "1"}) + "\n" + json.dumps({"question": "no answer"}) + "\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:2"):
        read_problems(f)


def test_prompt_cursor_cycles_with_fresh_ids_and_resumes():
    prompts = [{"prompt_id": f"p{i}"} for i in range(3)]
    c = PromptCursor(prompts)
    assert [p["prompt_id"] for p in c.take(4)] == ["p0", "p1", "p2", "p0#1"]
    resumed = PromptCursor(prompts, position=c.position)
    assert [p["prompt_id"] for p in resumed.take(3)] == ["p1#1", "p2#1", "p0#2"]


def test_batch_metrics_hand_computed():
    groups = [{"samples": [_sample(1.0, True, 4), _sample(0.0, False, 8, "length")]},
              {"samples": [_sample(0.5, True, 6), _sample(0.0, False, 2)]}]
    m = batch_metrics(groups)
    assert m["reward_mean"] == pytest.approx(1.5 / 4)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["response_len_mean"] == pytest.approx(5.0)
    assert m["truncated_frac"] == pytest.approx(0.25)


def test_evaluation_metrics_avg_and_pass_at_k():
    groups = [{"samples": [_sample(1, True, 1), _sample(0, False, 1)]},
              {"samples": [_sample(0, False, 1), _sample(0, False, 1)]},
              {"samples": [_sample(1, True, 1), _sample(1, True, 1)]}]
    m = evaluation_metrics(groups, "avg", 2)
    assert m["avg@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["pass@2"] == pytest.approx(2 / 3)
    g = evaluation_metrics([{"samples": [_sample(1, True, 1)]}, {"samples": [_sample(0, False, 1)]}], "greedy", 1)
    assert g["greedy_accuracy"] == pytest.approx(0.5)


def test_step_line_is_one_readable_line():
    row = {"stage_name": "s1", "step_in_stage": 3, "stage_steps": 10, "version": 3, "reward_mean": 0.5,
           "accuracy": 0.25, "response_len_mean": 12.0, "loss": 0.1, "clip_fraction": 0.0, "kl": 0.0,
           "entropy": 1.0, "staleness_histogram": {0: 10, 1: 6}, "dropped_zero_variance": 2,
           "rollout_tokens_per_s": 100.0, "train_tokens_per_s": 50.0, "weight_sync_s": 0.1,
           "learner_wait_s": 1.0, "step_s": 2.0, "rollout_idle_share": 0.05}
    line = format_step_line(row)
    assert "\n" not in line and "step 3/10" in line and "stale {0:10,1:6}" in line and "idle 5%" in line
