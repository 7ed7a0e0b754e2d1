"""No prompt is lost, duplicated or restarted across in-flight updates (batch and continuous modes);
stale or malformed updates are rejected and the worker keeps serving its old weights."""

from __future__ import annotations

import time

import pytest
import torch

from rollout.prompts import GroupSink, create_prompt_source
from rollout.weight_update import WeightUpdate, WeightUpdateError
from tests.fixtures.tiny_checkpoint import perturbed_state_dict


def _prompts(tag: str, n: int) -> list[dict]:
    return [{"prompt_id": f"{tag}-{i}", "prompt_token_ids": [5 + i, 17, 30 + i], "gold": str(i)} for i in range(n)]


def _check_groups(groups: list[dict], prompts: list[dict], n: int) -> None:
    assert sorted(g["group_id"] for g in groups) == sorted(p["prompt_id"] for p in prompts)
    for g in groups:
        assert len(g["samples"]) == n
        for s in g["samples"]:
            assert s["finish_reason"] in ("stop", "length"), s["finish_reason"]
            assert len(s["versions"]) == len(s["logprobs"]) == len(s["completion_token_ids"]) > 0
            assert s["versions"] == sorted(s["versions"]), "versions must never go backwards within a sample"


def test_no_loss_in_batch_mode_with_updates_in_between(ray_session, worker, tiny_model, pushed_weights):
    ray = ray_session
    prompts = _prompts("batch", 6)
    v = ray.get(worker.get_version.remote())
    ref = worker.generate.remote(prompts, {"n": 3, "max_tokens": 60, "temperature": 1.0})
    for k in (1, 2):
        sd = perturbed_state_dict(tiny_model, scale=0.01, seed=100 + v + k)
        rec = ray.get(worker.load_weights.remote(WeightUpdate(v + k, tensors=ray.put(sd))))
        pushed_weights[v + k] = sd
        assert rec["version"] == v + k and rec["stall_s"] >= 0
    groups = ray.get(ref)
    assert [g["group_id"] for g in groups] == [p["prompt_id"] for p in prompts]  # prompt order
    _check_groups(groups, prompts, 3)
    assert {g["gold"] for g in groups} == {p["gold"] for p in prompts}


def test_no_loss_in_continuous_mode_with_updates_in_between(ray_session, worker, tiny_model, pushed_weights):
    ray = ray_session
    prompts = _prompts("cont", 10)
    source = create_prompt_source(prompts)
    sink = ray.remote(GroupSink).options(num_cpus=0).remote()
    ray.get(worker.start_continuous.remote(source, sink, {"n": 2, "max_tokens": 40}, 3))
    v = ray.get(worker.get_version.remote())
    for k in (1, 2):
        while ray.get(sink.count.remote()) < 3 * k:  # updates land while groups are streaming out
            time.sleep(0.05)
        sd = perturbed_state_dict(tiny_model, scale=0.01, seed=200 + v + k)
        ray.get(worker.load_weights.remote(WeightUpdate(v + k, tensors=ray.put(sd))))
        pushed_weights[v + k] = sd
    deadline = time.time() + 300
    while ray.get(sink.count.remote()) < len(prompts) and time.time() < deadline:
        time.sleep(0.1)
    ray.get(worker.stop_continuous.remote())
    groups = ray.get(sink.take.remote())
    _check_groups(groups, prompts, 2)
    assert ray.get(source.done.remote())
    assert max(max(s["versions"]) for g in groups for s in g["samples"]) == v + 2


def _greedy(ray, worker) -> list[dict]:
    return ray.get(worker.generate.remote(_prompts("greedy", 2), {"n": 1, "max_tokens": 12, "temperature": 0.0}))


@pytest.mark.parametrize("bad", ["stale", "shape", "unknown", "not_tensor", "int_dtype"])
def test_bad_update_is_rejected_and_old_weights_stay(ray_session, worker, tiny_model, bad):
    ray = ray_session
    v = ray.get(worker.get_version.remote())
    before = _greedy(ray, worker)
    sd = perturbed_state_dict(tiny_model, scale=0.5, seed=3)
    version = v + 1
    if bad == "stale":
        version = v
    elif bad == "shape":
        sd["lm_head.weight"] = sd["lm_head.weight"][:, :3]
    elif bad == "unknown":
        sd["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)
    elif bad == "not_tensor":
        sd["lm_head.weight"] = [1.0, 2.0]
    else:
        sd["lm_head.weight"] = sd["lm_head.weight"].to(torch.int32)
    with pytest.raises(WeightUpdateError):  # Ray re-raises the worker's refusal as its own class
        ray.get(worker.load_weights.remote(WeightUpdate(version, tensors=sd)))
    assert ray.get(worker.get_version.remote()) == v
    after = _greedy(ray, worker)
    for a, b in zip(before, after):  # same weights -> same greedy tokens and log-probs
        assert a["samples"][0]["completion_token_ids"] == b["samples"][0]["completion_token_ids"]
        torch.testing.assert_close(torch.tensor(a["samples"][0]["logprobs"]),
                                   torch.tensor(b["samples"][0]["logprobs"]), atol=1e-4, rtol=0)
