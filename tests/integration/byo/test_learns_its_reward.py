"""RL learns what it is rewarded for, on a released-style checkpoint of another family than the project's.

A random-init Qwen2 (transformers' ``Qwen2Config``, ChatML with a default system prompt) is first taught
the answer format by ``flywheel sft`` on a ``messages`` file: "What is a + b?" -> "The answer is
\\boxed{a+b}." Then GRPO trains it on a dataset whose gold is ``7`` for every question, a reward that is
learnable by construction and contradicts what SFT taught. Within a few dozen steps the batch reward
and the held-out greedy accuracy (held-out questions, gold also ``7``) must rise well above their start.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from services.cli import main as flywheel
from tests.fixtures.tiny_checkpoint import build_family

REPO = Path(__file__).resolve().parents[3]
PAIRS = [(a, b) for a in range(10) for b in range(10)]


def _question(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def _answer(a: int, b: int) -> str:
    return f"The answer is \\boxed{{{a + b}}}."


def _corpus() -> list[str]:
    return [f"You are a helpful assistant. {_question(a, b)} {_answer(a, b)}" for a, b in PAIRS] * 4


@pytest.mark.slow
def test_grpo_learns_a_constant_gold_that_contradicts_its_sft(byo_ray, tmp_path):
    from services.config import load_config
    from services.grpo_job import GRPOJob
    from services.job_config import GRPOJobConfig

    base = build_family("qwen2", tmp_path / "qwen2", hidden_size=64, num_layers=2, corpus=_corpus())
    rng = random.Random(0)
    order = PAIRS[:]
    rng.shuffle(order)
    train, held = order[:80], order[80:]
    train_q, held_q = [_question(*p) for p in train], [_question(*p) for p in held]
    sft_rows = [{"messages": [{"role": "user", "content": _question(*p)}, {"role": "assistant", "content": _answer(*p)}]}
                for p in train]
    (tmp_path / "sft.jsonl").write_text("\n".join(json.dumps(r) for r in sft_rows * 8) + "\n")
    assert flywheel(["sft", "--init_from", str(base), "--data_file", str(tmp_path / "sft.jsonl"),
                     "--out_dir", str(tmp_path / "sft"), "--epochs", "3", "--batch_size", "16", "--seq_len", "128",
                     "--optim.lr", "3e-3", "--schedule.warmup_steps", "10", "--metrics.log_every", "20",
                     "--num_threads", "1"]) == 0
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"question": q, "answer": "7"}) for q in train_q))
    (tmp_path / "held.jsonl").write_text("\n".join(json.dumps({"question": q, "answer": "7"}) for q in held_q))

    out = tmp_path / "grpo"
    stage = (f"[{{name: seven, data_file: '{tmp_path / 'train.jsonl'}', max_response_tokens: 16, group_size: 8, "
             "prompts_per_step: 8, steps: 30, temperature: 1.0}]")
    cfg = load_config(GRPOJobConfig, REPO / "configs" / "grpo_test.yaml", [
        "--model", str(tmp_path / "sft" / "final"), "--output_dir", str(out), "--stages", stage,
        "--learner.optim.lr", "1e-3", "--dynamic_sampling", "false", "--loss.max_staleness", "1",
        "--eval.difficulties", "null", "--eval.data_file", str(tmp_path / "held.jsonl"), "--eval.num_problems", "20",
        "--eval.k", "2", "--eval.at_start", "true", "--checkpoint.every_steps", "0", "--plots", "false"])
    assert GRPOJob(cfg).run() == 0

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
    evals = json.loads((out / "summary.json").read_text())["evals"]
    start, end = evals[0]["greedy_accuracy"], evals[-1]["greedy_accuracy"]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print(f"batch reward {first:.2f} -> {last:.2f}; held-out greedy {start:.2f} -> {end:.2f}")
    assert last >= first + 0.3, rewards
    assert end >= start + 0.3, evals
