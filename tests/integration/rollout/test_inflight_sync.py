"""In-flight weight sync on a real vLLM worker: exact per-token versions, logprobs that match a
transformers forward pass of the weights that produced them, no lost or restarted requests,
rejected updates leave the old weights in place."""

from __future__ import annotations

import pytest
import torch

from rollout.tiny_checkpoint import perturbed_state_dict

PROMPTS = [[5, 6, 7, 8], [40, 41, 42], [100, 3, 200, 7, 9], [11, 12]]


def hf_logprobs(model_dir: str, state_dict: dict | None, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Log-prob of every completion token under a transformers forward pass (float32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    model.eval()
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return lp.gather(1, torch.tensor(completion)[:, None])[:, 0]


class _HF:
    """Cache of transformers models per weight version (loading is the slow part)."""

    def __init__(self, model_dir: str):
        from transformers import AutoModelForCausalLM

        self.dir = model_dir
        self.cls = AutoModelForCausalLM
        self.models: dict[int, torch.nn.Module] = {}

    def add(self, version: int, state_dict: dict | None) -> None:
        m = self.cls.from_pretrained(self.dir, dtype=torch.float32)
        if state_dict is not None:
            m.load_state_dict(state_dict, strict=True)
        self.models[version] = m.eval()

    def logprobs(self, version: int, prompt: list[int], completion: list[int]) -> torch.Tensor:
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = self.models[version](ids).logits[0].float()
        lp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
        return lp.gather(1, torch.tensor(completion)[:, None])[:, 0]


def _generate_with_update_midway(ray, worker, version: int, weights: dict, max_tokens: int = 160):
    """Start long completions, wait until tokens are flowing (watched through a streaming request
    batched with them), push ``version``, return (groups, sync record)."""
    sampling = {"n": 2, "max_tokens": max_tokens, "temperature": 1.0, "top_p": 1.0, "seed": 7}
    ref = worker.generate.remote([{"prompt_id": f"v{version}-{i}", "prompt_token_ids": p} for i, p in
                                  enumerate(PROMPTS)], sampling)
    watch = worker.stream_completion.options(num_returns="streaming").remote(
        {"prompt_token_ids": [9, 9, 9]}, {"max_tokens": max_tokens, "temperature": 1.0})
    seen = 0
    for piece in watch:
        seen += len(ray.get(piece)["token_ids"])
        if seen >= 20:
            break
    rec = ray.get(worker.load_weights.remote(version, ray.put(weights)))
    for _ in watch:  # let the watcher finish
        pass
    return ray.get(ref), rec


def _split(sample: dict, old: int, new: int) -> int:
    """Index of the first token of version ``new``; asserts versions are old...old new...new."""
    v = sample["versions"]
    assert set(v) <= {old, new}, v
    k = v.index(new) if new in v else len(v)
    assert all(x == old for x in v[:k]) and all(x == new for x in v[k:]), v
    return k


@pytest.fixture(scope="module")
def hf(tiny_model):
    return _HF(tiny_model)


def test_tokens_carry_their_version_and_logprobs_match_the_weights(ray_session, worker, tiny_model, hf):
    ray = ray_session
    v0 = ray.get(worker.get_version.remote())
    new = perturbed_state_dict(tiny_model, scale=0.05, seed=11)
    base = None if v0 == 0 else hf.models.get(v0)
    if v0 not in hf.models:
        hf.add(v0, None if v0 == 0 else base)
    hf.add(v0 + 1, new)
    groups, rec = _generate_with_update_midway(ray, worker, v0 + 1, new)
    assert rec["version"] == v0 + 1 and rec["in_flight"] > 0
    assert ray.get(worker.get_version.remote()) == v0 + 1
    switched = 0
    for g in groups:
        for s in g["samples"]:
            assert s["finish_reason"] in ("length", "stop")
            k = _split(s, v0, v0 + 1)
            toks = s["completion_token_ids"]
            got = torch.tensor(s["logprobs"])
            if k > 0:  # tokens before the switch: exactly the old weights
                ref_old = hf.logprobs(v0, g["prompt_token_ids"], toks)[:k]
                torch.testing.assert_close(got[:k], ref_old, atol=2e-3, rtol=0)
            if 0 < k < len(toks):
                switched += 1
                # after the switch the query path runs the new weights over a KV cache kept from the
                # old ones: closer to the new weights' forward than to the old one's
                ref_new = hf.logprobs(v0 + 1, g["prompt_token_ids"], toks)[k:]
                ref_old_after = hf.logprobs(v0, g["prompt_token_ids"], toks)[k:]
                d_new = (got[k:] - ref_new).abs().mean()
                d_old = (got[k:] - ref_old_after).abs().mean()
                print(f"keep-cache: |lp - new| {d_new:.4f}  |lp - old| {d_old:.4f}")
                assert d_new < d_old
    assert switched > 0, "no sample straddled the update; the test did not exercise in-flight sync"


def test_reprefilled_sequences_match_the_new_weights_exactly(ray_session, worker, tiny_model, hf):
    ray = ray_session
    v0 = ray.get(worker.get_version.remote())
    assert v0 in hf.models, "runs after the keep-cache test (shares its transformers models)"
    new = perturbed_state_dict(tiny_model, scale=0.05, seed=12)
    hf.add(v0 + 1, new)
    ray.get(worker.set_reprefill_after_versions.remote(1))
    try:
        groups, rec = _generate_with_update_midway(ray, worker, v0 + 1, new)
    finally:
        ray.get(worker.set_reprefill_after_versions.remote(None))
    assert rec["reprefilled"] > 0
    switched = 0
    for g in groups:
        for s in g["samples"]:
            assert s["finish_reason"] in ("length", "stop")
            k = _split(s, v0, v0 + 1)
            toks = s["completion_token_ids"]
            got = torch.tensor(s["logprobs"])
            if k > 0:
                torch.testing.assert_close(got[:k], hf.logprobs(v0, g["prompt_token_ids"], toks)[:k], atol=2e-3,
                                           rtol=0)
            if k < len(toks):
                switched += k > 0
                torch.testing.assert_close(got[k:], hf.logprobs(v0 + 1, g["prompt_token_ids"], toks)[k:],
                                           atol=2e-3, rtol=0)
    assert switched > 0
