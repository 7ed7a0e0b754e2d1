"""gRPC adapter of the reward verifier (``protos/reward.proto``) plus standard health checking.

``Verify``: one batch, verdicts in order. ``VerifyStream``: each incoming item is verified as it
arrives and its verdict sent when ready (matched by id; order may differ). Messages are decoded
here, not by gRPC, so a malformed one (invalid UTF-8, a wrong wire type) is an INVALID_ARGUMENT
instead of an internal error, and then validated by the same models as the HTTP API
(``services.reward_api``). Refusals: UNAUTHENTICATED (token), INVALID_ARGUMENT (bad field, named),
RESOURCE_EXHAUSTED (too many items, item or message too large, server busy). A client deadline
shorter than the server's request deadline is honoured. ``grpc.health.v1`` reports NOT_SERVING
while the verifier pool cannot run and once shutdown begins (updated every second).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import reward_pb2
from services.reward_api import RequestError, parse_request
from services.reward_service import RewardServerConfig, RewardService

log = logging.getLogger("flywheel.reward_server")

SERVICE = "flywheel.reward.v1.RewardService"
HEALTH_THREADS = 2
"""gRPC threads kept free of verify calls, so health checks always answer."""
STREAM_WINDOW = 32
"""Items of one stream being verified at once (the stream reads no further until one is answered)."""
_OPTION_FIELDS = ("timeout_s", "last_number_fallback", "format_reward", "max_response_tokens",
                  "overlong_buffer_tokens", "extraction")
_CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
          "busy": grpc.StatusCode.RESOURCE_EXHAUSTED, "unavailable": grpc.StatusCode.UNAVAILABLE}


def _item(msg: reward_pb2.VerifyItem) -> dict:
    return {"id": msg.id, "completion": msg.completion, "gold": msg.gold,
            **({"response_tokens": msg.response_tokens} if msg.HasField("response_tokens") else {})}


def _request(msg: reward_pb2.VerifyRequest) -> dict:
    out: dict = {"items": [_item(m) for m in msg.items]}
    if msg.HasField("options"):
        out["options"] = {f: getattr(msg.options, f) for f in _OPTION_FIELDS if msg.options.HasField(f)}
    return out


def _verdict(d: dict) -> reward_pb2.Verdict:
    v = reward_pb2.Verdict(id=d["id"], correct=d["correct"], status=d["status"], reason=d["reason"],
                           reward=d["reward"], parts=reward_pb2.RewardParts(**d["parts"]),
                           latency_ms=d["latency_ms"], cached=d["cached"])
    if d["extracted"] is not None:
        v.extracted = d["extracted"]
    return v


def _decode(cls, raw: bytes, what: str):
    try:
        return cls.FromString(raw)
    except (DecodeError, ValueError, UnicodeDecodeError):
        raise RequestError(f"{what}: not a valid {cls.DESCRIPTOR.full_name} message (wire format or UTF-8)") \
            from None


class RewardServicer:
    """Method bodies; registered with raw (bytes) requests by :func:`start_grpc_server`."""

    def __init__(self, service: RewardService):
        self.service = service
        self.calls = threading.BoundedSemaphore(max(1, service.cfg.grpc_threads - HEALTH_THREADS))

    def _refuse(self, context: grpc.ServicerContext, e: RequestError, rid: str) -> None:
        self.service.metrics.errors.labels("grpc", e.kind).inc()
        log.info("request %s refused: %s", rid, str(e)[:500])
        context.abort(_CODES.get(e.kind, grpc.StatusCode.INVALID_ARGUMENT), f"{e} (request id {rid})")

    def _enter(self, context: grpc.ServicerContext, rid: str) -> None:
        header = dict(context.invocation_metadata()).get("authorization")
        if not self.service.authorized(header if isinstance(header, str) else None):
            self.service.metrics.errors.labels("grpc", "unauthenticated").inc()
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (metadata 'authorization')")
        if not self.calls.acquire(blocking=False):
            self._refuse(context, RequestError("the server is busy (every gRPC thread is serving); retry shortly",
                                               "busy"), rid)

    def Verify(self, raw: bytes, context: grpc.ServicerContext) -> reward_pb2.VerifyResponse:
        from rewards.verifier import VERIFIER_VERSION

        rid = uuid.uuid4().hex[:16]
        self._enter(context, rid)
        t0 = time.perf_counter()
        try:
            request = parse_request(self.service.models, _request(_decode(reward_pb2.VerifyRequest, raw, "request")))
            verdicts = self.service.verify(request, context.time_remaining())
        except RequestError as e:
            self._refuse(context, e, rid)
        except Exception:  # noqa: BLE001 - a bug: logged with the id; the client gets the id, not the message
            log.exception("request %s failed", rid)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")
        finally:
            self.calls.release()
            self.service.metrics.latency.labels("grpc").observe(time.perf_counter() - t0)
        return reward_pb2.VerifyResponse(verdicts=[_verdict(d) for d in verdicts], verifier_version=VERIFIER_VERSION)

    def VerifyStream(self, raw_iterator, context: grpc.ServicerContext):
        rid = uuid.uuid4().hex[:16]
        self._enter(context, rid)
        try:
            try:
                self.service.open_stream()
            except RequestError as e:
                self._refuse(context, e, rid)
            try:
                yield from self._stream(raw_iterator, context, rid)
            finally:
                self.service.close_stream()
        finally:
            self.calls.release()

    def _stream(self, raw_iterator, context, rid: str):
        results: queue.Queue = queue.Queue()
        pending = threading.Semaphore(STREAM_WINDOW)
        models = self.service.models

        def work(raw: bytes, k: int) -> None:
            try:
                item = _item(_decode(reward_pb2.VerifyItem, raw, f"stream item {k}"))
                results.put(self.service.verify(parse_request(models, {"items": [item]}), in_stream=True)[0])
            except RequestError as e:
                results.put(e)
            except Exception as e:  # noqa: BLE001 - a bug: logged with the id, the stream ends with INTERNAL
                log.exception("request %s: stream item %d failed", rid, k)
                results.put(e)
            finally:
                pending.release()

        def feed() -> None:
            threads = []
            try:
                for k, raw in enumerate(raw_iterator):
                    pending.acquire()
                    t = threading.Thread(target=work, args=(raw, k), daemon=True)
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
                self._refuse(context, r, rid)
            if isinstance(r, Exception):
                if context.is_active():
                    context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")
                return
            yield _verdict(r)


def _handlers(servicer: RewardServicer) -> grpc.GenericRpcHandler:
    ser = reward_pb2.VerifyResponse.SerializeToString
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Verify": grpc.unary_unary_rpc_method_handler(servicer.Verify, request_deserializer=None,
                                                      response_serializer=ser),
        "VerifyStream": grpc.stream_stream_rpc_method_handler(servicer.VerifyStream, request_deserializer=None,
                                                              response_serializer=reward_pb2.Verdict.SerializeToString),
    })


class GrpcServer:
    """The running gRPC server and a thread that keeps its health status true."""

    def __init__(self, service: RewardService, cfg: RewardServerConfig):
        self.service = service
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.grpc_threads),
            options=[("grpc.max_receive_message_length", cfg.max_request_bytes),
                     ("grpc.max_send_message_length", max(cfg.max_request_bytes, 64 * 2**20))])
        self.server.add_generic_rpc_handlers((_handlers(RewardServicer(service)),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._stop = threading.Event()
        self._update()
        if self.server.add_insecure_port(f"{cfg.host}:{cfg.grpc_port}") == 0:
            raise RuntimeError(f"cannot bind gRPC port {cfg.host}:{cfg.grpc_port}")
        self.server.start()
        threading.Thread(target=self._watch, name="flywheel-reward-health", daemon=True).start()

    def _update(self) -> None:
        ok = self.service.health()["status"] == "ok"
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            self.health.set(name, status)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self._update()

    def stop(self, grace_s: float) -> None:
        self._stop.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()


def start_grpc_server(service: RewardService, cfg: RewardServerConfig) -> GrpcServer:
    """Start the gRPC server (RewardService + grpc.health.v1) on ``cfg.host:cfg.grpc_port``."""
    return GrpcServer(service, cfg)
