"""gRPC front end of the reward verifier (``protos/reward.proto``) plus standard health checking.

``Verify``: one batch, verdicts in order. ``VerifyStream``: each incoming item is verified on the
server's thread pool and its verdict sent as soon as it is ready (matched by id; order may differ).
Refusals: UNAUTHENTICATED (token), INVALID_ARGUMENT (bad options / items), RESOURCE_EXHAUSTED
(too many items, item or message too large), each with a message.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import reward_pb2, reward_pb2_grpc
from services.reward_server import RequestError, RewardServerConfig, RewardService

_OPTION_FIELDS = ("timeout_s", "last_number_fallback", "format_reward", "max_response_tokens", "overlong_buffer_tokens")


def _options(msg: reward_pb2.VerifyOptions) -> dict:
    return {f: getattr(msg, f) for f in _OPTION_FIELDS if msg.HasField(f)}


def _item(msg: reward_pb2.VerifyItem) -> dict:
    return {"id": msg.id, "completion": msg.completion, "gold": msg.gold,
            "response_tokens": msg.response_tokens if msg.HasField("response_tokens") else None}


def _verdict(d: dict) -> reward_pb2.Verdict:
    v = reward_pb2.Verdict(id=d["id"], correct=d["correct"], status=d["status"], reason=d["reason"],
                           reward=d["reward"], parts=reward_pb2.RewardParts(**d["parts"]),
                           latency_ms=d["latency_ms"], cached=d["cached"])
    if d["extracted"] is not None:
        v.extracted = d["extracted"]
    return v


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, service: RewardService):
        self.service = service

    def _check_auth(self, context: grpc.ServicerContext) -> None:
        header = dict(context.invocation_metadata()).get("authorization")
        if not self.service.authorized(header):
            self.service.metrics.errors.labels("grpc", "unauthenticated").inc()
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (metadata 'authorization')")

    def _run(self, items: list[dict], options: dict, context: grpc.ServicerContext) -> list[dict]:
        try:
            return self.service.verify(items, options)
        except RequestError as e:
            self.service.metrics.errors.labels("grpc", e.kind).inc()
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if e.kind == "too_large" else grpc.StatusCode.INVALID_ARGUMENT
            context.abort(code, str(e))

    def Verify(self, request, context):
        from rewards.verifier import VERIFIER_VERSION

        self._check_auth(context)
        t0 = time.perf_counter()
        try:
            verdicts = self._run([_item(m) for m in request.items], _options(request.options), context)
        finally:
            self.service.metrics.latency.labels("grpc").observe(time.perf_counter() - t0)
        return reward_pb2.VerifyResponse(verdicts=[_verdict(d) for d in verdicts], verifier_version=VERIFIER_VERSION)

    def VerifyStream(self, request_iterator, context):
        self._check_auth(context)
        results: queue.Queue = queue.Queue()
        pending = threading.Semaphore(64)  # bound the work in flight per stream

        def work(item: dict) -> None:
            try:
                results.put(self.service.verify([item])[0])
            except RequestError as e:
                results.put(e)
            finally:
                pending.release()

        def feed() -> None:
            threads = []
            try:
                for msg in request_iterator:
                    pending.acquire()
                    t = threading.Thread(target=work, args=(_item(msg),), daemon=True)
                    t.start()
                    threads.append(t)
            except Exception as e:  # noqa: BLE001 - client cancelled / stream broken
                results.put(e)
            for t in threads:
                t.join()
            results.put(None)

        threading.Thread(target=feed, daemon=True).start()
        while (r := results.get()) is not None:
            if isinstance(r, RequestError):
                code = grpc.StatusCode.RESOURCE_EXHAUSTED if r.kind == "too_large" else grpc.StatusCode.INVALID_ARGUMENT
                context.abort(code, str(r))
            if isinstance(r, Exception):
                return
            yield _verdict(r)


def start_grpc_server(service: RewardService, cfg: RewardServerConfig) -> grpc.Server:
    """Start the gRPC server (RewardService + grpc.health.v1) on ``cfg.host:cfg.grpc_port``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.grpc_threads),
                         options=[("grpc.max_receive_message_length", cfg.max_request_bytes),
                                  ("grpc.max_send_message_length", max(cfg.max_request_bytes, 64 * 2**20))])
    reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(service), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("flywheel.reward.v1.RewardService", health_pb2.HealthCheckResponse.SERVING)
    if server.add_insecure_port(f"{cfg.host}:{cfg.grpc_port}") == 0:
        raise RuntimeError(f"cannot bind gRPC port {cfg.host}:{cfg.grpc_port}")
    server.start()
    return server
