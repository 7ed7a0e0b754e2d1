"""Hostile input through the real reward service (uvicorn + gRPC + worker pool): thousands of generated
nasty items over HTTP and gRPC (unary and stream) and every kind of malformed request. Nothing gets a
5xx (gRPC: UNKNOWN / INTERNAL), every response comes back within its request deadline (plus a generous
allowance for a loaded machine: this bounds the wait, it claims no speed), ``/healthz`` keeps answering
while the batches run, the server serves a normal request afterwards and its memory stays bounded."""

from __future__ import annotations

import random
import threading
import time

import grpc
import httpx
import psutil
import pytest
from hostile_inputs import bad_bodies, bad_grpc_payloads, nasty_items
from reward_server_process import start_server, stop_server

from protos import reward_pb2, reward_pb2_grpc

ITEM_LIMIT_S, SLACK_S = 1.0, 1.0
DEADLINE_S = ITEM_LIMIT_S + SLACK_S
GRACE_S = 60.0
"""Allowance over the deadline for a response to arrive on a loaded 2-core machine."""
MAX_CHARS, BATCH = 20_000, 100
STATUSES = {"correct", "wrong", "no_answer", "unparsable_gold", "timeout", "error"}
NORMAL = {"items": [{"id": "n", "completion": "so \\boxed{\\frac{1}{2}}", "gold": "0.5"}]}


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


@pytest.fixture(scope="module")
def server():
    proc, http_port, grpc_port = start_server(
        "--timeout_s", str(ITEM_LIMIT_S), "--request_slack_s", str(SLACK_S), "--max_item_chars", str(MAX_CHARS),
        "--max_batch_items", str(BATCH), "--max_request_bytes", str(8 * 2**20), "--workers", "2")
    yield {"http": f"http://127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}", "pid": proc.pid}
    assert stop_server(proc) == 0


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(server["grpc"], options=[("grpc.max_send_message_length", 64 * 2**20)])
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def health_probe(server):
    """Polls /healthz in the background for the whole module; records every answer's status."""
    seen: list[int | str] = []
    stop = threading.Event()

    def poll():
        with httpx.Client(timeout=GRACE_S) as c:
            while not stop.is_set():
                try:
                    seen.append(c.get(f"{server['http']}/healthz").status_code)
                except httpx.HTTPError as e:
                    seen.append(type(e).__name__)
                stop.wait(0.2)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    yield seen
    stop.set()
    t.join(timeout=GRACE_S)


def check_verdicts(items, verdicts):
    assert len(verdicts) == len(items)
    for it, v in zip(items, verdicts):
        assert v["id"] == it["id"] and v["status"] in STATUSES, v
        assert (v["status"] == "correct") == v["correct"]


def test_nasty_items_over_http(server, health_probe):
    rng = random.Random(19)
    rss_before = tree_rss(server["pid"])
    with httpx.Client(timeout=DEADLINE_S + GRACE_S) as c:
        for _ in range(15):
            items = nasty_items(rng, BATCH, MAX_CHARS)
            t0 = time.monotonic()
            r = c.post(f"{server['http']}/v1/verify", json={"items": items})
            assert time.monotonic() - t0 < DEADLINE_S + GRACE_S
            assert r.status_code == 200, r.text[:500]
            check_verdicts(items, r.json()["verdicts"])
        assert c.post(f"{server['http']}/v1/verify", json=NORMAL).json()["verdicts"][0]["status"] == "correct"
    assert tree_rss(server["pid"]) - rss_before < 300 * 2**20
    assert health_probe and all(s == 200 for s in health_probe), health_probe


def test_nasty_items_over_grpc(server, channel):
    rng = random.Random(15)
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    for _ in range(5):
        items = nasty_items(rng, BATCH, MAX_CHARS)
        resp = stub.Verify(reward_pb2.VerifyRequest(items=[reward_pb2.VerifyItem(**it) for it in items]),
                           timeout=DEADLINE_S + GRACE_S)
        check_verdicts(items, [{"id": v.id, "status": v.status, "correct": v.correct} for v in resp.verdicts])
    items = nasty_items(rng, 300, MAX_CHARS)
    got = list(stub.VerifyStream(iter([reward_pb2.VerifyItem(**it) for it in items]), timeout=300))
    assert sorted(v.id for v in got) == sorted(it["id"] for it in items)
    assert all(v.status in STATUSES for v in got)
    ok = stub.Verify(reward_pb2.VerifyRequest(items=[reward_pb2.VerifyItem(**NORMAL["items"][0])]), timeout=60)
    assert ok.verdicts[0].status == "correct"


def test_malformed_http_requests_get_4xx_naming_no_internals(server):
    with httpx.Client(timeout=60) as c:
        for body in bad_bodies(random.Random(5)):
            r = c.post(f"{server['http']}/v1/verify", content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (body[:200], r.status_code, r.text[:300])
            err = r.json()
            assert err["request_id"] == r.headers["x-request-id"] and err["detail"]
            for leak in ("Traceback", "/work/", "site-packages", ".py", "max_completion_chars", "wrong_reward"):
                assert leak not in r.text, (leak, r.text[:300])
        chunked = c.post(f"{server['http']}/v1/verify", content=iter([b" " * 2**20] * 12),  # no content-length
                         headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and "max_request_bytes" in chunked.json()["detail"]
        assert c.post(f"{server['http']}/v1/verify", json=NORMAL).json()["verdicts"][0]["status"] == "correct"


def test_malformed_grpc_messages_are_invalid_argument(server, channel):
    raw = channel.unary_unary("/flywheel.reward.v1.RewardService/Verify", request_serializer=None,
                              response_deserializer=None)
    for payload in bad_grpc_payloads():
        with pytest.raises(grpc.RpcError) as e:
            raw(payload, timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (payload, e.value.code(), e.value.details())
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    for options, field in [({"timeout_s": float("nan")}, "timeout_s"), ({"timeout_s": float("inf")}, "timeout_s"),
                           ({"max_response_tokens": -1}, "max_response_tokens"),
                           ({"overlong_buffer_tokens": -7}, "overlong_buffer_tokens"),
                           ({"extraction": "regex"}, "extraction")]:
        request = reward_pb2.VerifyRequest(items=[reward_pb2.VerifyItem(completion="1", gold="1")],
                                           options=reward_pb2.VerifyOptions(**options))
        with pytest.raises(grpc.RpcError) as e:
            stub.Verify(request, timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.value.details()
    bad_item = reward_pb2.VerifyItem(completion="1", gold="1", response_tokens=-3)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.VerifyStream(iter([bad_item]), timeout=60))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "response_tokens" in e.value.details()
