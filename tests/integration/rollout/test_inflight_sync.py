"""In-flight weight sync on a real vLLM worker: exact per-token versions, logprobs that match a
transformers forward pass of the weights that produced them, no lost or restarted requests,
rejected updates leave the old weights in place; through the object store and through the
collective transport (a gloo broadcast from a sender actor into the engine's worker process)."""

from __future__ import annotations

import pytest
import torch

from rollout.weight_update import WeightUpdate
from tests.fixtures.tiny_checkpoint import perturbed_state_dict

PROMPTS = [[5, 6, 7, 8], [40, 41, 42], [100, 3, 200, 7, 9], [11, 12]]


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

    def logprobs_over_kept_cache(self, old: int, new: int, prompt: list[int], completion: list[int],
                                 k: int) -> torch.Tensor:
        """Log-probs of ``completion[k:]`` when the weights switch from ``old`` to ``new`` right before
        sampling token ``k`` while the KV cache of earlier positions is kept: the old model fills the
        cache for ``prompt + completion[:k-1]``, the new model runs the rest on top of it."""
        ids = prompt + completion
        cut = len(prompt) + k - 1  # position whose forward (input completion[k-1]) sampled token k
        with torch.no_grad():
            cache = self.models[old](torch.tensor([ids[:cut]]), use_cache=True).past_key_values
            logits = self.models[new](torch.tensor([ids[cut:-1]]), past_key_values=cache).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        return lp.gather(1, torch.tensor(completion[k:])[:, None])[:, 0]

    def logprobs(self, version: int, prompt: list[int], completion: list[int]) -> torch.Tensor:
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = self.models[version](ids).logits[0].float()
        lp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
        return lp.gather(1, torch.tensor(completion)[:, None])[:, 0]


def _generate_with_update_midway(ray, worker, version: int, weights: dict, max_tokens: int = 160, fleet=None):
    """Start long completions, wait until tokens are flowing (watched through a streaming request
    batched with them), push ``version``, return (groups, sync record)."""
    sampling = {"n": 2, "max_tokens": max_tokens, "temperature": 1.0, "top_p": 1.0, "seed": 7}
    ref = worker.generate.remote([{"prompt_id": f"v{version}-{i}", "prompt_token_ids": p} for i, p in
                                  enumerate(PROMPTS)], sampling)
    watch = worker.stream_completion.options(num_returns="streaming").remote(
        {"prompt_token_ids": [9, 9, 9]}, {"max_tokens": max_tokens, "temperature": 1.0})
    seen = 0
    deltas = []
    for piece in watch:
        deltas.append(ray.get(piece))
        seen += len(deltas[-1]["token_ids"])
        if seen >= 20:
            break
    update = WeightUpdate(version, tensors=ray.put(weights))
    if fleet is None:
        rec = ray.get(worker.load_weights.remote(update))
    else:  # the fleet forwards it by broadcast
        fleet.publish(update, wait=True)
        assert fleet.last_publish["transport"] == "collective", fleet.last_publish
        rec = ray.get(worker.stats.remote())["syncs"][-1]
    deltas += [ray.get(piece) for piece in watch]  # let the watcher finish
    _check_streamed_versions(deltas, before=seen, old=version - 1, new=version)
    return ray.get(ref), rec


def _check_streamed_versions(deltas: list[dict], before: int, old: int, new: int) -> None:
    """The last delta of a stream carries the exact version of every token of the completion: the
    ``before`` tokens streamed before the update was sent are ``old``, then old...old new...new."""
    final = deltas[-1]
    assert final["finish_reason"] in ("length", "stop")
    versions = final["completion_versions"]
    assert len(versions) == sum(len(d["token_ids"]) for d in deltas)
    assert versions[:before] == [old] * before
    _split({"versions": versions}, old, new)


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


@pytest.fixture(scope="module")
def collective_fleet(worker):
    """The shared worker in a fleet with the collective transport (small buckets: several per update)."""
    from rollout.fleet import RolloutFleet

    fleet = RolloutFleet([worker], transport="collective", collective={"bucket_mib": 1, "join_timeout_s": 20})
    assert fleet.weight_group.ready_members(fleet.up()) == [0]  # joined before any generation starts
    yield fleet
    import ray

    if fleet.weight_group.broadcaster is not None:
        ray.kill(fleet.weight_group.broadcaster)


def _greedy(ray, worker) -> list[tuple[list[int], list[float]]]:
    groups = ray.get(worker.generate.remote([{"prompt_id": f"gr{i}", "prompt_token_ids": p} for i, p in
                                             enumerate(PROMPTS[:2])], {"n": 1, "max_tokens": 12, "temperature": 0.0}))
    return [(g["samples"][0]["completion_token_ids"], g["samples"][0]["logprobs"]) for g in groups]


def test_a_broadcast_that_fails_changes_nothing_and_the_update_goes_by_object_store(ray_session, worker, tiny_model,
                                                                                   collective_fleet, pushed_weights):
    ray, fleet = ray_session, collective_fleet
    v = ray.get(worker.get_version.remote())
    before = _greedy(ray, worker)
    sd = perturbed_state_dict(tiny_model, scale=0.5, seed=21)
    # 1) a broadcast that never comes (the sender is silent): the receive times out, nothing changes
    assert fleet.weight_group.ready_members(fleet.up()) == [0]
    handle = ray.get(fleet.weight_group.broadcaster.plan.remote(ray.put(sd), fleet.weight_group.epoch))
    with pytest.raises(RuntimeError, match="did not arrive"):
        ray.get(worker.load_weights.remote(WeightUpdate(v + 1, collective=handle, specs=handle["specs"])))
    assert ray.get(worker.get_version.remote()) == v
    after = _greedy(ray, worker)
    for (ta, la), (tb, lb) in zip(before, after):
        assert ta == tb
        torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), atol=1e-4, rtol=0)
    fleet.weight_group.broken("test: the sender stayed silent")
    # 2) the sender is gone (its node restarted, say): the fleet starts a new one, the update is broadcast
    dead = fleet.weight_group.broadcaster
    ray.kill(dead)
    for k, seed in ((1, 21), (2, 22)):  # the same update as before the failure, then the next one
        sd = perturbed_state_dict(tiny_model, scale=0.05 * k, seed=seed)
        fleet.publish(WeightUpdate(v + k, tensors=ray.put(sd)), wait=True)
        pushed_weights[v + k] = sd
        assert fleet.last_publish["transport"] == "collective" and ray.get(worker.get_version.remote()) == v + k
    assert fleet.weight_group.broadcaster is not dead


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_tokens_carry_their_version_and_logprobs_match_the_weights(ray_session, worker, tiny_model, hf,
                                                                   pushed_weights, transport, request):
    ray = ray_session
    fleet = request.getfixturevalue("collective_fleet") if transport == "collective" else None
    v0 = ray.get(worker.get_version.remote())
    new = perturbed_state_dict(tiny_model, scale=0.05, seed=11 + (transport == "collective"))
    if v0 not in hf.models:
        hf.add(v0, pushed_weights[v0])
    hf.add(v0 + 1, new)
    groups, rec = _generate_with_update_midway(ray, worker, v0 + 1, new, fleet=fleet)
    if fleet is not None:
        assert rec["bytes"] == fleet.last_publish["bytes"] > 0 and fleet.weight_group.members == [0]
    pushed_weights[v0 + 1] = new
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
                # after the switch: the new weights, running over the KV cache kept from the old ones
                ref_new = hf.logprobs_over_kept_cache(v0, v0 + 1, g["prompt_token_ids"], toks, k)
                torch.testing.assert_close(got[k:], ref_new, atol=2e-3, rtol=0)
                # ... which is not what the old weights would have given
                assert (got[k:] - hf.logprobs(v0, g["prompt_token_ids"], toks)[k:]).abs().mean() > 0.05
    assert switched > 0, "no sample straddled the update; the test did not exercise in-flight sync"


def test_reprefilled_sequences_match_the_new_weights_exactly(ray_session, worker, tiny_model, hf,
                                                             pushed_weights):
    ray = ray_session
    v0 = ray.get(worker.get_version.remote())
    if v0 not in hf.models:
        hf.add(v0, pushed_weights[v0])
    new = perturbed_state_dict(tiny_model, scale=0.05, seed=12)
    hf.add(v0 + 1, new)
    ray.get(worker.set_reprefill_after_versions.remote(1))
    try:
        groups, rec = _generate_with_update_midway(ray, worker, v0 + 1, new)
    finally:
        ray.get(worker.set_reprefill_after_versions.remote(None))
    pushed_weights[v0 + 1] = new
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


@pytest.fixture(scope="module")
def no_engine_worker(ray_session):
    """A rollout worker stand-in with no engine process: it can never join a weight group."""
    import asyncio
    import os
    import uuid

    @ray_session.remote(num_cpus=0)
    class NoEngine:
        def __init__(self) -> None:
            self.version, self.incarnation = 0, uuid.uuid4().hex

        async def health(self) -> dict:
            return {"worker_id": "no-engine", "incarnation": self.incarnation, "version": self.version,
                    "continuous": False, "pid": os.getpid()}

        async def watch(self) -> None:
            await asyncio.Event().wait()

        async def join_collective(self, handle: dict) -> str:
            return "no engine process to join with"

        async def load_weights(self, update: WeightUpdate) -> dict:
            tensors = await update.tensors  # the object store: the only way it can get weights
            self.version = update.version
            return {"version": update.version, "bytes": sum(t.numel() * t.element_size() for t in tensors.values())}

    actor = NoEngine.remote()
    yield actor
    ray_session.kill(actor)


def test_a_worker_that_cannot_join_does_not_stop_the_others_getting_broadcasts(ray_session, worker, tiny_model,
                                                                               no_engine_worker, pushed_weights):
    """Also what a resumed job does: a new fleet and a new sender over engines that may already hold weights;
    its updates go by broadcast, with the versions going on from the checkpoint's."""
    from rollout.fleet import RolloutFleet

    ray = ray_session
    fleet = RolloutFleet([worker, no_engine_worker], transport="collective",
                         collective={"bucket_mib": 1, "join_timeout_s": 20})
    try:
        v = ray.get(worker.get_version.remote())
        for k in (1, 2):
            sd = perturbed_state_dict(tiny_model, scale=0.05, seed=30 + k)
            fleet.publish(WeightUpdate(v + k, tensors=ray.put(sd)), wait=True)
            pushed_weights[v + k] = sd
            assert fleet.weight_group.members == [0], fleet.weight_group.fallback
            assert fleet.weight_group.fallback == {1: "no engine process to join with"}
            assert fleet.last_publish["transport"] == "collective"
            assert fleet.last_publish["broadcast_to"] == [fleet.ids[0]]  # the stand-in: the object store
            assert ray.get(worker.get_version.remote()) == v + k
            assert ray.get(no_engine_worker.health.remote())["version"] == v + k
    finally:
        ray.kill(fleet.weight_group.broadcaster)
