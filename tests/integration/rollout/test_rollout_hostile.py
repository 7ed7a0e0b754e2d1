"""Hostile and careless input to the rollout service, over HTTP and gRPC, against the real service and its
real vLLM worker (the session's, so no extra engine start): hundreds of malformed requests (huge and
negative integers, NaN/Infinity, lone surrogates, empty and oversized stop lists, booleans and strings
for integers, wrong types, truncated JSON, oversized bodies, invalid protobuf and invalid UTF-8 on gRPC).
Every answer is a 4xx (gRPC: INVALID_ARGUMENT and friends) naming the field, never a 5xx, never a
traceback, a path or a cluster detail; the service serves a normal request afterwards. The OpenAPI spec
is checked by schemathesis against a second service (tight limits, same worker)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import httpx
import pytest

from tests.conftest import free_port

HERE = Path(__file__).resolve().parent
LEAKS = re.compile(r"Traceback|File \"|site-packages|/tmp/|/home/|\.py\b|pid=|\bip=|ActorID|actor_id|node_id|"
                   r"\d+\.\d+\.\d+\.\d+")
RAW_SURROGATE = '"\\ud800x"'  # JSON text of a string holding a lone surrogate

# (path, JSON text of the body, words the 4xx message must contain)
GOOD_COMPLETION = '"prompt": "Ann has", "max_tokens": 2'
CASES: list[tuple[str, str, str]] = [
    ("/v1/completions", '{"prompt": "Ann", "seed": 18446744073709551617}', "seed"),
    ("/v1/completions", '{"prompt": "Ann", "seed": -1}', "seed"),
    ("/v1/completions", '{"prompt": "Ann", "stop": [""]}', "stop"),
    ("/v1/completions", '{"prompt": "Ann", "stop": ""}', "stop"),
    ("/v1/completions", '{"prompt": "Ann", "stop": ' + json.dumps(["x"] * 100) + "}", "stop"),
    ("/v1/completions", '{"prompt": "Ann", "stop": ["' + "y" * 5000 + '"]}', "stop"),
    ("/v1/completions", '{"prompt": ' + RAW_SURROGATE + "}", "prompt"),
    ("/v1/completions", '{"prompt": [' + RAW_SURROGATE + "]}", "prompt"),
    ("/v1/completions", '{"prompt": "Ann", "stop": [' + RAW_SURROGATE + "]}", "stop"),
    ("/v1/completions", '{"prompt": "Ann", "temperature": NaN}', "temperature"),
    ("/v1/completions", '{"prompt": "Ann", "temperature": Infinity}', "temperature"),
    ("/v1/completions", '{"prompt": "Ann", "top_p": -Infinity}', "top_p"),
    ("/v1/completions", '{"prompt": "Ann", "top_p": 0}', "top_p"),
    ("/v1/completions", '{"prompt": "Ann", "max_tokens": 1e400}', "max_tokens"),
    ("/v1/completions", '{"prompt": "Ann", "max_tokens": 100000000000000000000000}', "max_tokens"),
    ("/v1/completions", '{"prompt": "Ann", "max_tokens": -5}', "max_tokens"),
    ("/v1/completions", '{"prompt": "Ann", "max_tokens": true}', "max_tokens"),
    ("/v1/completions", '{"prompt": "Ann", "max_tokens": "4"}', "max_tokens"),
    ("/v1/completions", '{"prompt": "Ann", "max_tokens": 2.0}', "max_tokens"),
    ("/v1/completions", '{"prompt": "Ann", "n": 0}', "n"),
    ("/v1/completions", '{"prompt": "Ann", "n": false}', "n"),
    ("/v1/completions", '{"prompt": "Ann", "logprobs": 99}', "logprobs"),
    ("/v1/completions", '{"prompt": "Ann", "stream": "yes"}', "stream"),
    ("/v1/completions", '{"prompt": ""}', "prompt"),
    ("/v1/completions", '{"prompt": []}', "prompt"),
    ("/v1/completions", '{"prompt": [[]]}', "prompt"),
    ("/v1/completions", '{"prompt": [-1]}', "prompt"),
    ("/v1/completions", '{"prompt": [9223372036854775808]}', "prompt"),
    ("/v1/completions", '{"prompt": [1.5]}', "prompt"),
    ("/v1/completions", '{"prompt": {"a": 1}}', "prompt"),
    ("/v1/completions", '{"prompt": null}', "prompt"),
    ("/v1/completions", '{"prompt": "Ann", "model": ' + RAW_SURROGATE + "}", "model"),
    ("/v1/completions", '{"prompt": "Ann", "model": 7}', "model"),
    ("/v1/completions", '[1, 2, 3]', "body"),
    ("/v1/completions", '"just a string"', "body"),
    ("/v1/completions", '{"prompt": "Ann"', "JSON"),
    ("/v1/completions", '', "body"),
    ("/v1/completions", '{"prompt": "' + "7 " * 5000 + '"}', "max_prompt_tokens"),
    ("/v1/chat/completions", '{"messages": []}', "messages"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": ' + RAW_SURROGATE + "}]}", "content"),
    ("/v1/chat/completions", '{"messages": [{"role": "user"}]}', "content"),
    ("/v1/chat/completions", '{"messages": [{"role": "root", "content": "x"}]}', "role"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "seed": 1e30}', "seed"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "stop": [""]}', "stop"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 50, '
                             '"logprobs": true}', "top_logprobs"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature"),
    ("/v1/chat/completions", '{"messages": "hello"}', "messages"),
    ("/v1/rollouts", '{"prompts": []}', "prompts"),
    ("/v1/rollouts", '{"prompts": [{"text": ' + RAW_SURROGATE + "}]}", "text"),
    ("/v1/rollouts", '{"prompts": [{"text": "Ann", "gold": ' + RAW_SURROGATE + "}]}", "gold"),
    ("/v1/rollouts", '{"prompts": [{"text": "Ann"}], "sampling": {"seed": 18446744073709551617}}', "seed"),
    ("/v1/rollouts", '{"prompts": [{"text": "Ann"}], "sampling": {"stop": [""]}}', "stop"),
    ("/v1/rollouts", '{"prompts": [{"text": "Ann"}], "sampling": {"temperature": NaN}}', "temperature"),
    ("/v1/rollouts", '{"prompts": [{"text": "Ann"}], "sampling": {"n": 1000000}}', "n"),
    ("/v1/rollouts", '{"prompts": [{"prompt_token_ids": [1, -2]}]}', "prompt_token_ids"),
    ("/v1/rollouts", '{"prompts": [{"text": "Ann", "stage": -1}]}', "stage"),
    ("/v1/rollouts", '{"prompts": [{}]}', "neither"),
    ("/v1/rollouts", '{"prompts": ' + json.dumps([{"text": "a"}] * 1000) + "}", "prompts"),
]
# every field x a few nasty values, on each generation endpoint: hundreds more
NASTY = ["NaN", "-Infinity", "1e309", "18446744073709551617", "-9223372036854775809", "true", "null", '"x"',
         "[]", "{}", RAW_SURROGATE, "-1", "0.5"]
FIELDS = {"/v1/completions": ("{" + GOOD_COMPLETION + ', "FIELD": VALUE}',
                              ["max_tokens", "temperature", "top_p", "n", "logprobs", "seed", "stop", "stream"]),
          "/v1/rollouts": ('{"prompts": [{"text": "Ann"}], "sampling": {"max_tokens": 2, "FIELD": VALUE}}',
                           ["max_tokens", "temperature", "top_p", "n", "seed", "stop"])}
ACCEPTED = {("temperature", "0.5"), ("top_p", "0.5"), ("logprobs", "null"), ("seed", "null"), ("stop", "null"),
            ("stop", '"x"'), ("stop", "[]"), ("stream", "true")}


def _grid() -> list[tuple[str, str, str | None]]:
    out = []
    for path, (template, fields) in FIELDS.items():
        for field, value in itertools.product(fields, NASTY):
            ok = (field, value) in ACCEPTED or (path == "/v1/rollouts" and (field, value) == ("stop", "[]"))
            if path == "/v1/rollouts" and value in ("null", '"x"') and field == "stop":
                ok = False
            if path == "/v1/rollouts" and field == "seed" and value == "null":
                ok = True
            out.append((path, template.replace("FIELD", field).replace("VALUE", value), None if ok else field))
    return out


def _post(client: httpx.Client, url: str, path: str, body: str) -> httpx.Response:
    return client.post(url + path, content=body.encode("utf-8", "surrogatepass"),
                       headers={"content-type": "application/json"})


def _assert_clean_error(r: httpx.Response, words: str, what: str) -> None:
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
    err = r.json()["error"]
    assert words.lower() in err["message"].lower(), (what, err)
    assert err["request_id"] and r.headers.get("x-request-id") == err["request_id"]
    assert not LEAKS.search(err["message"]), (what, err["message"])


def test_hundreds_of_bad_http_requests_get_4xx_naming_the_field(service):
    url = service["http"]
    grid = _grid()
    assert len(CASES) + len(grid) >= 200
    with httpx.Client(timeout=120) as client:
        for path, body, words in CASES:
            _assert_clean_error(_post(client, url, path, body), words, body[:120])
        refused = 0
        for path, body, field in grid:
            r = _post(client, url, path, body)
            assert r.status_code < 500, (body, r.status_code, r.text[:300])
            if field is not None:
                _assert_clean_error(r, field, body)
                refused += 1
            else:
                assert r.status_code == 200, (body, r.text[:300])
        assert refused > 150
        big = _post(client, url, "/v1/completions", '{"prompt": "' + "a" * (9 * 2**20) + '"}')
        _assert_clean_error(big, "limit", "9 MiB body")
        assert big.status_code == 413
        # still serving: a normal request, and the health endpoints say so
        ok = _post(client, url, "/v1/completions", "{" + GOOD_COMPLETION + "}")
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("length", "stop")
        assert client.get(url + "/readyz").status_code == 200
        assert client.get(url + "/healthz").json()["status"] == "ok"


def test_streaming_errors_carry_a_request_id_not_a_traceback(service):
    """A stream whose generation fails reports it in-band: the message and a request id, nothing internal."""
    from services.rollout_http import _stream_error

    chunk = _stream_error(RuntimeError("boom at /srv/app/x.py line 3, pid=12 ip=10.0.0.7"), "abc123")
    body = json.loads(chunk.removeprefix("data: "))["error"]
    assert body["request_id"] == "abc123" and "boom" not in body["message"] and not LEAKS.search(body["message"])


def _raw_grpc(target: str, method: str, payload: bytes) -> grpc.RpcError | bytes:
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(f"/flywheel.rollout.v1.RolloutService/{method}")
        try:
            return call(payload, timeout=60)
        except grpc.RpcError as e:
            return e


def test_bad_grpc_requests_are_invalid_argument_and_never_internal(service):
    from protos import rollout_pb2, rollout_pb2_grpc

    P, S = rollout_pb2.Prompt, rollout_pb2.SamplingParams
    nan, inf = float("nan"), float("inf")
    bad = [
        (rollout_pb2.RolloutRequest(prompts=[P(text="Ann")], sampling=S(temperature=nan, max_tokens=2)), "temperature"),
        (rollout_pb2.RolloutRequest(prompts=[P(text="Ann")], sampling=S(top_p=inf, max_tokens=2)), "top_p"),
        (rollout_pb2.RolloutRequest(prompts=[P(text="Ann")], sampling=S(stop=[""], max_tokens=2)), "stop"),
        (rollout_pb2.RolloutRequest(prompts=[P(text="Ann")], sampling=S(seed=-5, max_tokens=2)), "seed"),
        (rollout_pb2.RolloutRequest(prompts=[P(text="Ann")], sampling=S(max_tokens=-3)), "max_tokens"),
        (rollout_pb2.RolloutRequest(prompts=[P(text="Ann")], sampling=S(n=-1, max_tokens=2)), "n ="),
        (rollout_pb2.RolloutRequest(prompts=[P(token_ids=[-7])], sampling=S(max_tokens=2)), "vocabulary"),
        (rollout_pb2.RolloutRequest(prompts=[], sampling=S(max_tokens=2)), "prompts"),
        (rollout_pb2.RolloutRequest(prompts=[P(text="Ann")], model="other"), "unknown model"),
    ]
    with grpc.insecure_channel(service["grpc"]) as ch:
        stub = rollout_pb2_grpc.RolloutServiceStub(ch)
        for req, words in bad:
            for call in (stub.Rollout, lambda r, **kw: list(stub.StreamRollouts(r, **kw))):
                with pytest.raises(grpc.RpcError) as e:
                    call(req, timeout=60)
                assert e.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (words, e.value)
                assert words in e.value.details() and not LEAKS.search(e.value.details()), e.value.details()
        # bytes that are not a RolloutRequest, and a text field holding invalid UTF-8
        for payload in (b"\xff\xff\xff", b"\x0a\x03\x12\x01\xff", b"\x0a\x80"):
            err = _raw_grpc(service["grpc"], "Rollout", payload)
            assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        ok = stub.Rollout(rollout_pb2.RolloutRequest(prompts=[P(text="Ann")], sampling=S(n=1, max_tokens=2)),
                          timeout=120)
        assert len(ok.groups) == 1 and ok.groups[0].samples[0].completion_token_ids
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(service["grpc"]) as ch:
        h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert h.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------------------------- the contract
@pytest.fixture(scope="module")
def tight_service(worker, rollout_cfg, tiny_model):
    """A second service over the shared worker with small limits, so generated requests stay cheap."""
    from rollout.fleet import RolloutFleet
    from services.rollout_app import serve
    from services.rollout_server import RolloutServerConfig, RolloutService, load_tokenizer

    cfg = RolloutServerConfig(model=tiny_model, rollout=rollout_cfg, http_port=free_port(), grpc_port=0,
                              auth_token="contract-token", max_tokens=4, max_n=2, max_prompt_tokens=64,
                              max_prompts_per_request=2, max_logprobs=2, weights_root=os.path.dirname(tiny_model))
    svc = RolloutService(cfg, RolloutFleet([worker], rollout_cfg.max_in_flight), load_tokenizer(tiny_model))
    loop = asyncio.new_event_loop()
    started, state = threading.Event(), {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            state["stop"] = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.create_task(serve(svc, cfg, started=ready, stop=state["stop"]))
            await ready.wait()
            started.set()
            await task

        loop.run_until_complete(main())

    t = threading.Thread(target=run, daemon=True, name="rollout-contract-service")
    t.start()
    assert started.wait(120), "contract service did not start"
    yield f"http://127.0.0.1:{cfg.http_port}"
    loop.call_soon_threadsafe(state["stop"].set)
    t.join(timeout=15)


def test_schemathesis_finds_nothing(tight_service, tmp_path):
    exe = Path(sys.executable).with_name("schemathesis")
    cli = str(exe) if exe.exists() else shutil.which("schemathesis")
    if cli is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    cmd = [cli, "--config-file", str(HERE / "schemathesis.toml"), "run", f"{tight_service}/openapi.json",
           "--checks", "all", "-H", "Authorization: Bearer contract-token", "--max-examples", "25",
           "--generation-deterministic", "--workers", "1", "--request-timeout", "120", "--max-failures", "5",
           "--no-color"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path)  # its .schemathesis/ there
    summary = r.stdout[r.stdout.find("FAILURES"):] if "FAILURES" in r.stdout else r.stdout
    assert r.returncode == 0, summary[:6000] + "\n...\n" + r.stdout[-2000:] + r.stderr[-2000:]
    assert "passed" in r.stdout
