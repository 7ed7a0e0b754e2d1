"""The rollout service over a real vLLM worker: the official ``openai`` client (completions, chat,
streaming), the trainer endpoints (HTTP ``/v1/rollouts``, gRPC), authenticated in-flight weight
loading from safetensors with a checksum, health/metrics, and 4xx for bad requests while the
service keeps serving."""

from __future__ import annotations

import hashlib

import grpc
import httpx
import pytest

from tests.fixtures.tiny_checkpoint import perturbed_state_dict


@pytest.fixture(scope="module")
def client(service):
    from openai import OpenAI

    return OpenAI(base_url=service["http"] + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_name(service):
    return service["service"].model_name


def test_models_lists_the_served_model(client, model_name):
    assert [m.id for m in client.models.list().data] == [model_name]


def test_openai_completions_with_n_and_logprobs(client, model_name):
    r = client.completions.create(model=model_name, prompt="Bob has 3 coins", max_tokens=8, n=2, logprobs=2,
                                  temperature=1.0, seed=1)
    assert len(r.choices) == 2 and {c.index for c in r.choices} == {0, 1}
    for c in r.choices:
        assert c.finish_reason in ("length", "stop")
        assert len(c.logprobs.token_logprobs) == len(c.logprobs.tokens) > 0
        assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
        assert all(1 <= len(t) <= 3 for t in c.logprobs.top_logprobs)  # top-2 (+ sampled token)
        assert c.logprobs.text_offset[0] == 0 and c.text  # (byte-level tokens may split UTF-8 characters)
    assert r.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in r.choices)


def test_openai_completions_streaming(client, model_name):
    chunks = list(client.completions.create(model=model_name, prompt=[5, 6, 7], max_tokens=10, stream=True,
                                            temperature=0.0))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    # the session's engine holds whatever weights earlier tests loaded: greedy may reach EOS before 10 tokens
    assert finish in (["length"], ["stop"]) and (len(chunks) >= 2 or finish == ["stop"])
    whole = client.completions.create(model=model_name, prompt=[5, 6, 7], max_tokens=10, temperature=0.0)
    assert whole.choices[0].text == text  # greedy: streaming and non-streaming agree


def test_openai_chat_and_chat_streaming(client, model_name):
    msgs = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "Ann has 2 pens."}]
    r = client.chat.completions.create(model=model_name, messages=msgs, max_tokens=8, logprobs=True,
                                       top_logprobs=1)
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    stream = client.chat.completions.create(model=model_name, messages=msgs, max_tokens=8, stream=True,
                                            temperature=0.0)
    parts = [c.choices[0].delta for c in stream if c.choices]
    assert parts[0].role == "assistant"
    text = "".join(p.content or "" for p in parts)
    again = client.chat.completions.create(model=model_name, messages=msgs, max_tokens=8, temperature=0.0)
    assert again.choices[0].message.content == text


def test_rollouts_endpoint_returns_tokens_logprobs_versions(service, model_name):
    body = {"model": model_name, "prompts": [{"prompt_id": "a", "text": "Cleo has 4 books", "gold": "4"},
                                             {"prompt_id": "b", "prompt_token_ids": [7, 8, 9]}],
            "sampling": {"n": 3, "max_tokens": 12}}
    r = httpx.post(service["http"] + "/v1/rollouts", json=body, timeout=120)
    assert r.status_code == 200, r.text
    groups = r.json()["groups"]
    assert [g["group_id"] for g in groups] == ["a", "b"] and groups[0]["gold"] == "4"
    assert groups[1]["prompt_token_ids"] == [7, 8, 9]
    for g in groups:
        assert len(g["samples"]) == 3
        for s in g["samples"]:
            assert len(s["completion_token_ids"]) == len(s["logprobs"]) == len(s["versions"]) > 0


def test_grpc_rollout_stream_and_status(service):
    from protos import rollout_pb2, rollout_pb2_grpc

    with grpc.insecure_channel(service["grpc"]) as ch:
        stub = rollout_pb2_grpc.RolloutServiceStub(ch)
        req = rollout_pb2.RolloutRequest(
            prompts=[rollout_pb2.Prompt(id="g1", token_ids=[5, 6]), rollout_pb2.Prompt(id="g2", text="Eli has")],
            sampling=rollout_pb2.SamplingParams(n=2, temperature=1.0, max_tokens=6))
        resp = stub.Rollout(req, timeout=120)
        assert [g.prompt_id for g in resp.groups] == ["g1", "g2"]
        assert all(len(s.versions) == len(s.completion_token_ids) for g in resp.groups for s in g.samples)
        streamed = list(stub.StreamRollouts(req, timeout=120))
        assert sorted(g.prompt_id for g in streamed) == ["g1", "g2"]
        st = stub.GetStatus(rollout_pb2.StatusRequest(), timeout=30)
        assert st.workers == 1 and st.model == service["service"].model_name
        with pytest.raises(grpc.RpcError) as e:
            stub.Rollout(rollout_pb2.RolloutRequest(prompts=[rollout_pb2.Prompt(id="x", token_ids=[1])],
                                                    sampling=rollout_pb2.SamplingParams(n=999, max_tokens=4)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "n = 999" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.LoadWeights(rollout_pb2.LoadWeightsRequest(version=99, path="/nope", sha256="0"))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_weights_endpoint_loads_in_flight_with_auth_and_checksum(service, tiny_model, pushed_weights):
    from pathlib import Path

    from safetensors.torch import save_file

    svc = service["service"]
    url = service["http"] + "/v1/weights"
    version = max(pushed_weights) + 1
    sd = perturbed_state_dict(tiny_model, scale=0.01, seed=300)
    path = Path(tiny_model).parent / f"update-v{version}.safetensors"
    save_file(sd, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    body = {"version": version, "path": str(path), "sha256": digest}
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    auth = {"Authorization": f"Bearer {service['token']}"}
    bad = httpx.post(url, json={**body, "sha256": "0" * 64}, headers=auth, timeout=60)
    assert bad.status_code == 400 and "sha256 mismatch" in bad.json()["error"]["message"]
    outside = httpx.post(url, json={**body, "path": "/etc/passwd"}, headers=auth, timeout=60)
    assert outside.status_code == 403
    r = httpx.post(url, json=body, headers=auth, timeout=120)
    assert r.status_code == 200, r.text
    pushed_weights[version] = sd
    assert r.json()["version"] == version and svc.version == version
    stale = httpx.post(url, json=body, headers=auth, timeout=60)
    assert stale.status_code == 409 and "stale" in stale.json()["error"]["message"]
    out = httpx.post(service["http"] + "/v1/rollouts", json={"prompts": [{"prompt_token_ids": [5, 6]}],
                                                              "sampling": {"n": 1, "max_tokens": 4}}, timeout=60)
    assert set(out.json()["groups"][0]["samples"][0]["versions"]) == {version}
    metrics = httpx.get(service["http"] + "/metrics").text
    assert f"flywheel_rollout_weight_version {float(version)}" in metrics
    assert "flywheel_rollout_weight_sync_seconds_count 1.0" in metrics
    assert "flywheel_rollout_generated_tokens_total" in metrics and "flywheel_rollout_queue_depth" in metrics


BAD_REQUESTS = [
    ("/v1/completions", {"model": "no-such-model", "prompt": "hi"}, 404, "unknown model"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 100000}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "n": 500}, 400, "n: Input should be less than or equal to 8"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 50}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x " * 2000}, 400, "max_prompt_tokens"),
    ("/v1/completions", {"prompt": [999999]}, 400, "prompt.0: Input should be less than or equal to"),
    ("/v1/completions", {"max_tokens": 4}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ("/v1/rollouts", {"prompts": [{"prompt_id": "x"}]}, 400, "neither"),
    ("/v1/rollouts", {"prompts": []}, 400, "prompts: List should have at least 1 item"),
]


@pytest.mark.parametrize("path,body,status,words", BAD_REQUESTS)
def test_bad_requests_get_4xx_with_a_message(service, path, body, status, words):
    r = httpx.post(service["http"] + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_malformed_json_is_400_and_service_keeps_serving(service, client, model_name):
    r = httpx.post(service["http"] + "/v1/completions", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    h = httpx.get(service["http"] + "/healthz").json()
    assert h["status"] == "ok" and h["workers"] == 1
    assert client.completions.create(model=model_name, prompt="Ann", max_tokens=3).choices[0].text is not None
