"""gRPC front end of the rollout service (``protos/rollout.proto``, asyncio server) plus health checking.

``Rollout``: groups for every prompt, in order. ``StreamRollouts``: each group is sent the moment it
completes. ``LoadWeights``: in-flight weight update from safetensors on shared storage (bearer token
in metadata ``authorization``). ``GetStatus``. Client errors map to INVALID_ARGUMENT / NOT_FOUND /
UNAUTHENTICATED / PERMISSION_DENIED / FAILED_PRECONDITION / UNAVAILABLE with the same messages as
HTTP; a message that does not parse (bad protobuf, invalid UTF-8 in a string) is INVALID_ARGUMENT, not
INTERNAL; a server-side failure is INTERNAL with a request id only (the traceback is logged). The
standard ``grpc.health.v1`` service says SERVING exactly when ``/readyz`` would answer 200.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import rollout_pb2, rollout_pb2_grpc
from services.rollout_server import RequestError, RolloutService

log = logging.getLogger("flywheel.rollout_server")

SERVICE = "flywheel.rollout.v1.RolloutService"
_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
           403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
           409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
           503: grpc.StatusCode.UNAVAILABLE}


class _Malformed:
    """What a tolerant deserializer returns for bytes that are not a valid message."""

    def __init__(self, why: str) -> None:
        self.why = why


def _tolerant(cls):
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except Exception as e:  # noqa: BLE001 - DecodeError, invalid UTF-8 in a string field, ...
            return _Malformed(f"request is not a valid {cls.__name__} message ({type(e).__name__})")
    return parse


def _group_msg(g: dict) -> rollout_pb2.Group:
    return rollout_pb2.Group(
        prompt_id=g["group_id"], prompt_token_ids=g["prompt_token_ids"], gold=g.get("gold", ""),
        samples=[rollout_pb2.Sample(completion_token_ids=s["completion_token_ids"], logprobs=s["logprobs"],
                                    versions=s["versions"], text=s["text"], finish_reason=s["finish_reason"],
                                    generation_s=s["generation_s"]) for s in g["samples"]])


class RolloutServicer(rollout_pb2_grpc.RolloutServiceServicer):
    def __init__(self, service: RolloutService) -> None:
        self.service = service
        self.token = service.cfg.token()

    async def _fail(self, context, e: BaseException):
        """Abort with the status for ``e``: a client/engine error's own message, else INTERNAL + a request id."""
        e = self.service.failed(e)
        if isinstance(e, RequestError):
            await context.abort(_STATUS.get(e.status, grpc.StatusCode.INVALID_ARGUMENT), str(e))
        rid = uuid.uuid4().hex
        log.error("gRPC request failed (request id %s)", rid, exc_info=e)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error; the server logged it under request id {rid}")

    async def _check(self, request, context, always: bool = False) -> None:
        if self.token and (always or self.service.cfg.auth_all):
            md = dict(context.invocation_metadata())
            if md.get("authorization", "") != f"Bearer {self.token}":
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in metadata "
                                                                     "'authorization' (Bearer <token>)")
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.why)

    def _prepare(self, request: rollout_pb2.RolloutRequest) -> tuple[list[dict], dict]:
        from services.rollout_requests import check_text

        svc = self.service
        svc.check_model(request.model)
        sp = request.sampling
        sampling = {"n": sp.n or 1, "temperature": sp.temperature,
                    "top_p": sp.top_p or 1.0, "max_tokens": sp.max_tokens or 256, "stop": list(sp.stop),
                    "seed": sp.seed if sp.HasField("seed") else None}
        svc.check_sampling(sampling["n"], sampling["max_tokens"], temperature=sampling["temperature"],
                           top_p=sampling["top_p"], stop=sampling["stop"], seed=sampling["seed"])
        if not request.prompts:
            raise RequestError("prompts must not be empty")
        if len(request.prompts) > svc.cfg.max_prompts_per_request:
            raise RequestError(f"{len(request.prompts)} prompts; the limit is {svc.cfg.max_prompts_per_request}")
        prompts = []
        for k, p in enumerate(request.prompts):
            if not p.token_ids and not p.text:
                raise RequestError(f"prompts[{k}] has neither text nor token_ids")
            check_text(f"prompts[{k}].gold", p.gold)
            check_text(f"prompts[{k}].id", p.id, max_chars=256)
            ids = svc.prompt_ids(list(p.token_ids) or p.text, sampling["max_tokens"])
            prompts.append({"prompt_id": p.id or f"p{k}-{uuid.uuid4().hex[:8]}", "prompt_token_ids": ids,
                            "text": p.text, "gold": p.gold})
        return prompts, sampling

    async def Rollout(self, request, context):
        await self._check(request, context)
        try:
            prompts, sampling = self._prepare(request)
            groups = await self.service.rollouts(prompts, sampling)
        except Exception as e:  # noqa: BLE001 - every failure gets its status (context.abort raises past this)
            await self._fail(context, e)
        return rollout_pb2.RolloutResponse(groups=[_group_msg(g) for g in groups])

    async def StreamRollouts(self, request, context):
        await self._check(request, context)
        try:
            prompts, sampling = self._prepare(request)
        except Exception as e:  # noqa: BLE001
            await self._fail(context, e)
        tasks = [asyncio.create_task(self.service.rollouts([p], sampling)) for p in prompts]
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    groups = await fut
                except Exception as e:  # noqa: BLE001
                    await self._fail(context, e)
                for g in groups:
                    yield _group_msg(g)
        finally:
            for t in tasks:
                t.cancel()

    async def LoadWeights(self, request, context):
        await self._check(request, context, always=True)
        try:
            if request.version < 1:
                raise RequestError(f"version = {request.version}: must be >= 1")
            out = await self.service.load_weights(int(request.version), request.path, request.sha256)
        except Exception as e:  # noqa: BLE001
            await self._fail(context, e)
        return rollout_pb2.LoadWeightsResponse(version=out["version"], sync_s=out["sync_s"], stall_s=out["stall_s"])

    async def GetStatus(self, request, context):
        await self._check(request, context)
        return rollout_pb2.StatusResponse(**self.service.status())


def _register(servicer: RolloutServicer, server: grpc.aio.Server) -> None:
    """``add_RolloutServiceServicer_to_server`` with deserializers that never fail (see :class:`_Malformed`)."""
    pb = rollout_pb2
    handlers = {
        "Rollout": grpc.unary_unary_rpc_method_handler(
            servicer.Rollout, request_deserializer=_tolerant(pb.RolloutRequest),
            response_serializer=pb.RolloutResponse.SerializeToString),
        "StreamRollouts": grpc.unary_stream_rpc_method_handler(
            servicer.StreamRollouts, request_deserializer=_tolerant(pb.RolloutRequest),
            response_serializer=pb.Group.SerializeToString),
        "LoadWeights": grpc.unary_unary_rpc_method_handler(
            servicer.LoadWeights, request_deserializer=_tolerant(pb.LoadWeightsRequest),
            response_serializer=pb.LoadWeightsResponse.SerializeToString),
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetStatus, request_deserializer=_tolerant(pb.StatusRequest),
            response_serializer=pb.StatusResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


async def start_grpc(service: RolloutService, host: str, port: int) -> grpc.aio.Server:
    """Start the asyncio gRPC server (rollout service + standard health) on ``host:port``."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 2**20),
                                      ("grpc.max_send_message_length", 256 * 2**20)])
    _register(RolloutServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    async def set_health(ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await health_servicer.set("", status)
        await health_servicer.set(SERVICE, status)

    await set_health(service.health.ready)
    service.health.listeners.append(set_health)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC on {host}:{port}")
    await server.start()
    return server
