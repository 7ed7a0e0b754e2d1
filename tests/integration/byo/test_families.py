"""Every command on a released-style checkpoint of each family (Llama, Qwen2, Qwen3, Mistral), built with
transformers' own config classes, with its own tokenizer, chat template and end-of-turn token:
``flywheel serve-rollout`` answering the official ``openai`` client, a 2-step GRPO job reading a Parquet
file with ``problem``/``solution`` columns and a system prompt from config, 2 steps of ``flywheel sft``
(``messages`` file) and of ``flywheel dpo`` (conversational pairs), ``flywheel merge`` and
``flywheel eval`` on a data file.

The Llama family (bf16, tied embeddings, no pad token, BOS in the tokenizer's post-processor, Llama-3
headers with a default system header) runs in the default suite; the other families run with
``-m slow``. The engines share one local Ray per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.cli import main as flywheel
from tests.conftest import free_port, terminate
from tests.fixtures.tiny_checkpoint import FAMILIES, build_family

REPO = Path(__file__).resolve().parents[3]
FLYWHEEL = Path(sys.executable).parent / "flywheel"
FAST = "llama"
ALL = [pytest.param(f, marks=() if f == FAST else pytest.mark.slow) for f in sorted(FAMILIES)]


@pytest.fixture(scope="module", params=ALL)
def family(request, tmp_path_factory) -> tuple[str, Path]:
    name = request.param
    return name, build_family(name, tmp_path_factory.mktemp(f"byo-{name}") / name)


@pytest.fixture(scope="module")
def sft_out(family, byo_data, tmp_path_factory) -> Path:
    """``flywheel sft --init_from <family> --data_file sft.jsonl``: 8 conversations, 4 per step = 2 steps."""
    name, ckpt = family
    out = tmp_path_factory.mktemp(f"sft-{name}")
    code = flywheel(["sft", "--init_from", str(ckpt), "--data_file", str(byo_data["sft"]), "--out_dir", str(out),
                     "--epochs", "1", "--batch_size", "4", "--packing", "false", "--seq_len", "160",
                     "--metrics.log_every", "1", "--num_threads", "1", "--system_prompt", "Answer briefly."])
    assert code == 0
    return out


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_sft_two_steps_on_the_familys_template(family, sft_out):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, ckpt = family
    assert [r["step"] for r in _metrics(sft_out) if "loss" in r][-1] == 2
    final = sft_out / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.tie_word_embeddings == FAMILIES[name]["tied"]
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.chat_template == AutoTokenizer.from_pretrained(ckpt).chat_template  # the family's own template
    eos = json.loads((final / "generation_config.json").read_text())["eos_token_id"]
    assert tok.convert_tokens_to_ids(FAMILIES[name]["eos"]) in eos  # the end-of-turn survives the export


def test_dpo_two_steps_on_conversational_pairs(family, byo_data, tmp_path):
    name, ckpt = family
    code = flywheel(["dpo", "--init_from", str(ckpt), "--data_file", str(byo_data["dpo"]), "--out_dir", str(tmp_path),
                     "--batch_size", "4", "--seq_len", "160", "--loss", "sigmoid", "--metrics.log_every", "1",
                     "--num_threads", "1"])
    assert code == 0
    rows = [r for r in _metrics(tmp_path) if "loss" in r]
    assert rows[-1]["step"] == 2 and all(r["loss"] == r["loss"] for r in rows)  # finite, no NaN
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_merge_of_the_base_and_its_sft(family, sft_out, tmp_path):
    import torch
    from safetensors.torch import load_file

    name, ckpt = family
    assert flywheel(["merge", "--checkpoints", f"[{ckpt}, {sft_out / 'final'}]", "--out_dir", str(tmp_path)]) == 0
    merged, base = load_file(str(tmp_path / "model.safetensors")), load_file(str(ckpt / "model.safetensors"))
    assert set(merged) == set(base)  # a tied head stays stored once
    assert all(merged[k].dtype == base[k].dtype for k in base)  # bf16 stays bf16
    assert (tmp_path / "chat_template.jinja").is_file() or "chat_template" in (tmp_path / "tokenizer_config.json").read_text()
    k = next(iter(base))
    sft = load_file(str(sft_out / "final" / "model.safetensors"))[k]
    assert torch.allclose(merged[k].float(), ((base[k].float() + sft.float()) / 2).to(base[k].dtype).float())


def test_eval_on_a_data_file(family, byo_data, tmp_path):
    name, ckpt = family
    out = tmp_path / "eval.json"
    proc = subprocess.run([str(FLYWHEEL), "eval", "--checkpoint", str(ckpt), "--data_file", str(byo_data["math"]),
                           "--question_field", "problem", "--answer_field", "solution", "--num_problems", "4", "--k", "2",
                           "--max_response_tokens", "12", "--prompt_template", "{question} Put the answer in \\boxed{}.",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["n"] == 4 and r["k"] == 2 and 0.0 <= r["greedy_accuracy"] <= 1.0
    assert r["samples"][0]["answer"].endswith("\\boxed{2}.")  # the worked solution is the gold


def test_serve_rollout_answers_the_openai_client(family, byo_ray):
    from openai import OpenAI

    name, ckpt = family
    http, grpc_port = free_port(), free_port()
    cmd = [str(FLYWHEEL), "serve-rollout", "--model", str(ckpt), "--rollout.max_model_len", "512",
           "--host", "127.0.0.1", "--http_port", str(http), "--grpc_port", str(grpc_port),
           "--rollout.num_cpus_per_worker", "1", "--ray_address", byo_ray.get_runtime_context().gcs_address]
    env = {**os.environ, "FLYWHEEL_ROLLOUT_TOKEN": "byo-test-token"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="unused", max_retries=0, timeout=120)
        deadline = time.monotonic() + 600
        while True:  # wait for the engine: the models list answers once the service is up
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            try:
                [model] = [m.id for m in client.models.list().data]
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, "serve-rollout did not come up in 600 s"
                time.sleep(1)
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2 + 3?"}],
                                              max_tokens=8, temperature=1.0)
        assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason in ("stop", "length")
        comp = client.completions.create(model=model, prompt="Ann has 3 pens", max_tokens=6, n=2, logprobs=1)
        assert len(comp.choices) == 2 and all(len(c.logprobs.tokens) > 0 for c in comp.choices)
    finally:
        terminate(proc, timeout=60)


def test_grpo_two_steps_on_a_parquet_stage_with_a_system_prompt(family, byo_ray, byo_data, tmp_path):
    from transformers import AutoModelForCausalLM

    from services.config import load_config
    from services.grpo_job import GRPOJob
    from services.job_config import GRPOJobConfig

    name, ckpt = family
    out = tmp_path / "grpo"
    stage = (f"[{{name: math, data_file: '{byo_data['math']}', question_field: problem, answer_field: solution, "
             "max_response_tokens: 16, group_size: 4, prompts_per_step: 2, steps: 2}]")
    cfg = load_config(GRPOJobConfig, REPO / "configs" / "grpo_test.yaml", [
        "--model", str(ckpt), "--output_dir", str(out), "--stages", stage, "--max_prompt_tokens", "256",
        "--system_prompt", "You are a careful solver.", "--prompt_template",
        "{question}\nPlease reason step by step, and put your final answer within \\boxed{}.",
        "--eval.difficulties", "null", "--eval.data_file", str(byo_data["math"]), "--eval.question_field", "problem",
        "--eval.answer_field", "solution", "--eval.at_start", "false", "--dynamic_sampling", "false"])
    assert GRPOJob(cfg).run() == 0
    rows = _metrics(out)
    assert [r["global_step"] for r in rows if "global_step" in r][-1] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["evals"]
    export = AutoModelForCausalLM.from_pretrained(out / "math_hf")
    assert export.config.tie_word_embeddings == FAMILIES[name]["tied"]
