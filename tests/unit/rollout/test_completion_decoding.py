"""The rollout path's text and log-probs without per-step engine work: ``CompletionDecoder`` must give
the exact text vLLM's own incremental detokenizer gives, and ``sampled_logprobs`` the sampled
token's log-prob from either of vLLM's log-prob containers."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from rollout.engine import CompletionDecoder, sampled_logprobs


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tests.fixtures.tiny_checkpoint import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def _vllm_text(tokenizer, prompt_ids: list[int], ids: list[int], stop_terminated: bool) -> str:
    """What vLLM's engine-side detokenizer reports as the final text of these tokens."""
    from vllm import SamplingParams
    from vllm.v1.engine.detokenizer import FastIncrementalDetokenizer

    request = SimpleNamespace(request_id="r", prompt_token_ids=prompt_ids, sampling_params=SamplingParams())
    detok = FastIncrementalDetokenizer(tokenizer, request)
    for i, t in enumerate(ids):  # one token per engine step, as in decoding
        detok.update([t], stop_terminated=stop_terminated and i == len(ids) - 1)
    return detok.get_next_output_text(finished=True, delta=False)


def test_decoder_matches_vllm_detokenizer(tokenizer):
    decoder = CompletionDecoder.for_tokenizer(tokenizer)
    assert decoder is not None
    rng = random.Random(0)
    prompt = tokenizer("Ann has 3 pens and gets 4 more.")["input_ids"]
    special = tokenizer.all_special_ids
    cases = [tokenizer(" The answer is \\boxed{7}.")["input_ids"] + [tokenizer.eos_token_id]]
    # random ids: byte pieces that split UTF-8 characters, special tokens in the middle, leading spaces
    cases += [[rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))] for _ in range(200)]
    cases += [[rng.choice(special), *c] for c in cases[1:20]]
    for ids in cases:
        stop = ids[-1] == tokenizer.eos_token_id
        assert decoder.decode(prompt, ids, stop_terminated=stop) == _vllm_text(tokenizer, prompt, ids, stop), ids


def test_decoder_leaves_out_the_stop_token_only_when_stop_terminated(tokenizer):
    decoder = CompletionDecoder.for_tokenizer(tokenizer)
    ids = tokenizer(" 7 pens")["input_ids"]
    assert decoder.decode([], ids, stop_terminated=True) == decoder.decode([], ids[:-1])
    assert decoder.decode([], ids) == " 7 pens"
    assert CompletionDecoder.for_tokenizer(None) is None


def test_sampled_logprobs_from_flat_and_dict_containers():
    from vllm.logprobs import FlatLogprobs, Logprob

    ids = [5, 9, 2]
    flat = FlatLogprobs()
    for t, lp in zip(ids, [-0.5, -1.25, -3.0]):  # logprobs=0: only the sampled token per position
        flat.append({t: Logprob(logprob=lp, rank=1)})
    assert sampled_logprobs(flat, ids) == [-0.5, -1.25, -3.0]

    topk = FlatLogprobs()  # logprobs=2: top-2 first, the sampled token somewhere among them
    for t, lp in zip(ids, [-0.5, -1.25, -3.0]):
        topk.append({1: Logprob(-0.1, 1), t: Logprob(lp, 3), 7: Logprob(-0.2, 2)})
    assert sampled_logprobs(topk, ids) == [-0.5, -1.25, -3.0]

    dicts = [{t: Logprob(lp, 1), 0: Logprob(-9.0, 2)} for t, lp in zip(ids, [-0.5, -1.25, -3.0])]
    assert sampled_logprobs(dicts, ids) == [-0.5, -1.25, -3.0]
    assert sampled_logprobs(None, ids) == [] and sampled_logprobs(FlatLogprobs(), []) == []
