"""Rollout groups carry the same completion text the engine's own detokenizer gives.

The trainer-facing path (``generate``) does not detokenize per step; it decodes each completion
once at the end (``rollout.engine.CompletionDecoder``). The streaming path keeps vLLM's incremental
detokenization, so with greedy sampling the two must agree on tokens and on text, byte for byte.
"""

from __future__ import annotations

PROMPTS = [[5, 6, 7, 8], [40, 41, 42], [100, 3, 200, 7, 9], [11, 12], [300, 301]]


def test_group_text_matches_engine_detokenized_stream(ray_session, worker):
    ray = ray_session
    sampling = {"n": 1, "max_tokens": 48, "temperature": 0.0}
    groups = ray.get(worker.generate.remote(
        [{"prompt_id": f"t{i}", "prompt_token_ids": p} for i, p in enumerate(PROMPTS)], sampling))
    compared = 0
    for p, g in zip(PROMPTS, groups):
        [s] = g["samples"]
        deltas = [ray.get(r) for r in worker.stream_completion.options(num_returns="streaming").remote(
            {"prompt_token_ids": p}, {"max_tokens": 48, "temperature": 0.0})]
        ids = [t for d in deltas for t in d["token_ids"]]
        assert ids == s["completion_token_ids"], "greedy: both paths sample the same tokens"
        assert s["text"] == "".join(d["text"] for d in deltas)
        assert len(s["logprobs"]) == len(ids) and all(lp <= 0.0 for lp in s["logprobs"])
        compared += bool(s["text"])
    assert compared >= 3  # random weights still produce text for most prompts
