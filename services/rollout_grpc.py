"""gRPC front end of the rollout service (``protos/rollout.proto``, asyncio server) plus health checking.

``Rollout``: groups for every prompt, in order. ``StreamRollouts``: each group is sent the moment it
completes. ``LoadWeights``: in-flight weight update from safetensors on shared storage (bearer token
in metadata ``authorization``). ``GetStatus``. Client errors map to INVALID_ARGUMENT / NOT_FOUND /
UNAUTHENTICATED / PERMISSION_DENIED / FAILED_PRECONDITION with the same messages as HTTP.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import rollout_pb2, rollout_pb2_grpc
from services.rollout_server import RequestError, RolloutService

_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
           403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
           409: grpc.StatusCode.FAILED_PRECONDITION}


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

    async def _fail(self, context, e: RequestError):
        await context.abort(_STATUS.get(e.status, grpc.StatusCode.INVALID_ARGUMENT), str(e))

    async def _auth(self, context, always: bool = False) -> None:
        if self.token and (always or self.service.cfg.auth_all):
            md = dict(context.invocation_metadata())
            if md.get("authorization", "") != f"Bearer {self.token}":
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in metadata "
                                                                     "'authorization' (Bearer <token>)")

    def _prepare(self, request: rollout_pb2.RolloutRequest) -> tuple[list[dict], dict]:
        svc = self.service
        svc.check_model(request.model)
        sp = request.sampling
        sampling = {"n": sp.n or 1, "temperature": sp.temperature,
                    "top_p": sp.top_p or 1.0, "max_tokens": sp.max_tokens or 256, "stop": list(sp.stop),
                    "seed": sp.seed if sp.HasField("seed") else None}
        svc.check_sampling(sampling["n"], sampling["max_tokens"])
        if not request.prompts:
            raise RequestError("prompts must not be empty")
        if len(request.prompts) > svc.cfg.max_prompts_per_request:
            raise RequestError(f"{len(request.prompts)} prompts; the limit is {svc.cfg.max_prompts_per_request}")
        prompts = []
        for k, p in enumerate(request.prompts):
            if not p.token_ids and not p.text:
                raise RequestError(f"prompts[{k}] has neither text nor token_ids")
            ids = svc.prompt_ids(list(p.token_ids) or p.text, sampling["max_tokens"])
            prompts.append({"prompt_id": p.id or f"p{k}-{uuid.uuid4().hex[:8]}", "prompt_token_ids": ids,
                            "text": p.text, "gold": p.gold})
        return prompts, sampling

    async def Rollout(self, request, context):
        await self._auth(context)
        try:
            prompts, sampling = self._prepare(request)
        except RequestError as e:
            await self._fail(context, e)
        groups = await self.service.rollouts(prompts, sampling)
        return rollout_pb2.RolloutResponse(groups=[_group_msg(g) for g in groups])

    async def StreamRollouts(self, request, context):
        await self._auth(context)
        try:
            prompts, sampling = self._prepare(request)
        except RequestError as e:
            await self._fail(context, e)
        tasks = [asyncio.create_task(self.service.rollouts([p], sampling)) for p in prompts]
        try:
            for fut in asyncio.as_completed(tasks):
                for g in await fut:
                    yield _group_msg(g)
        finally:
            for t in tasks:
                t.cancel()

    async def LoadWeights(self, request, context):
        await self._auth(context, always=True)
        try:
            out = await self.service.load_weights(int(request.version), request.path, request.sha256)
        except RequestError as e:
            await self._fail(context, e)
        return rollout_pb2.LoadWeightsResponse(version=out["version"], sync_s=out["sync_s"], stall_s=out["stall_s"])

    async def GetStatus(self, request, context):
        await self._auth(context)
        return rollout_pb2.StatusResponse(**self.service.status())


async def start_grpc(service: RolloutService, host: str, port: int) -> grpc.aio.Server:
    """Start the asyncio gRPC server (rollout service + standard health) on ``host:port``."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 2**20),
                                      ("grpc.max_send_message_length", 256 * 2**20)])
    rollout_pb2_grpc.add_RolloutServiceServicer_to_server(RolloutServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("flywheel.rollout.v1.RolloutService", health_pb2.HealthCheckResponse.SERVING)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC on {host}:{port}")
    await server.start()
    return server
