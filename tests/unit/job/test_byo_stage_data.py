"""A GRPO stage on a user's dataset: a Parquet file with MATH-style ``problem``/``solution`` columns and a
system prompt and instruction from config become prompt token ids in the checkpoint's own template, with
the worked solution as the gold the verifier reads; a bad row stops the job's input check naming the
file, the row and the rule."""

from __future__ import annotations

import json

import pytest

from services.config import load_config
from services.grpo_data import check_data_files, heldout_problems, stage_problems, to_prompts
from services.job_config import GRPOJobConfig
from tests.fixtures.tiny_checkpoint import family_tokenizer

ROWS = [{"problem": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}, so the answer is \\boxed{{{a + b}}}."}
        for a in range(3) for b in range(2)]
INSTRUCTION = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture()
def parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "math.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), str(path))
    return path


def _cfg(tmp_path, path, **eval_file) -> GRPOJobConfig:
    stage = {"data_file": str(path), "question_field": "problem", "answer_field": "solution", "steps": 1}
    (tmp_path / "job.yaml").write_text(json.dumps({
        "system_prompt": "You are a careful solver.", "prompt_template": INSTRUCTION, "stages": [stage],
        "eval": {"data_file": str(path), "question_field": "problem", "answer_field": "solution", **eval_file}}))
    return load_config(GRPOJobConfig, tmp_path / "job.yaml")


def test_a_parquet_stage_with_problem_solution_and_a_system_prompt(tmp_path, parquet):
    cfg = _cfg(tmp_path, parquet)
    assert cfg.stages[0].difficulties is None  # no need to null the synthetic default
    problems = stage_problems(cfg.stages[0], seed=0)
    assert [p.answer for p in problems] == [r["solution"] for r in ROWS]
    tok = family_tokenizer("qwen2")
    prompts = to_prompts(problems, tok, 0, 256, "s0", cfg.system_prompt, cfg.prompt_template)
    first = prompts[0]
    assert first["gold"] == ROWS[0]["solution"]
    assert first["text"].startswith("<|im_start|>system\nYou are a careful solver.<|im_end|>")
    assert "What is 0 + 0?\nPlease reason step by step" in first["text"]
    assert first["prompt_token_ids"] == tok(first["text"], add_special_tokens=False)["input_ids"]
    assert len(heldout_problems(cfg)) == len(ROWS)


def test_a_row_without_the_configured_field_stops_the_input_check(tmp_path, parquet):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS + [{"problem": "What is 9 + 9?", "solution": None}]), str(bad))
    with pytest.raises(ValueError) as e:
        check_data_files(_cfg(tmp_path, bad))
    assert f"stages.0.data_file: {bad}: row {len(ROWS)}: 'solution' must be a non-empty string" in str(e.value)


def test_a_prompt_template_without_the_question_is_a_config_error(tmp_path):
    from services.config import ConfigError

    with pytest.raises(ConfigError, match="prompt_template.*no \\{question\\} placeholder"):
        load_config(GRPOJobConfig, None, ["--prompt_template", "Solve it."])
