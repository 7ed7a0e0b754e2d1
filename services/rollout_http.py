"""HTTP API of the rollout service (FastAPI): OpenAI-compatible endpoints plus the trainer's.

- ``POST /v1/completions``, ``POST /v1/chat/completions``: OpenAI wire format, ``n``, ``logprobs``,
  ``stop``, ``seed``, non-streaming and SSE streaming (``stream: true``), so the ``openai`` client
  works unchanged; ``GET /v1/models``.
- ``POST /v1/rollouts``: prompts + sampling -> groups with token ids, per-token behaviour log-probs
  and the policy version of every token (the ``rollout.trajectory.Group`` record).
- ``POST /v1/weights`` (bearer token): ``{version, path, sha256}`` of safetensors on storage both
  sides can read; loaded in flight (pause keeping requests, reload, resume).
- ``GET /healthz``, ``GET /metrics`` (Prometheus).

Every client error is a 4xx with an OpenAI-style body ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.rollout_server import RequestError, RolloutService


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CompletionIn(_Req):
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = 16
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    logprobs: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    echo: bool = False


class ChatMessage(_Req):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatIn(_Req):
    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class PromptIn(_Req):
    prompt_id: str | None = None
    text: str | None = None
    prompt_token_ids: list[int] | None = None
    gold: str = ""
    stage: int = 0


class SamplingIn(_Req):
    n: int = 8
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = 256
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


class RolloutsIn(_Req):
    model: str | None = None
    prompts: list[PromptIn]
    sampling: SamplingIn = Field(default_factory=SamplingIn)


class WeightsIn(_Req):
    version: int
    path: str
    sha256: str


def _error(status: int, message: str, code: str = "invalid_request_error") -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def _stops(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _completion_prompts(prompt) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise RequestError("prompt must not be empty")
    if all(isinstance(t, int) for t in prompt):
        return [prompt]  # one prompt of token ids
    return list(prompt)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def build_app(service: RolloutService) -> FastAPI:
    app = FastAPI(title="Flywheel rollout service", version="1",
                  description="OpenAI-compatible generation and trainer rollouts over vLLM workers on Ray.")
    token = service.cfg.token()
    guarded = {"/v1/weights"}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token and (service.cfg.auth_all or request.url.path in guarded):
            if request.headers.get("authorization", "") != f"Bearer {token}":
                return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)", "unauthorized")
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def on_request_error(_: Request, e: RequestError):
        service.m_requests.labels("any", str(e.status)).inc()
        return _error(e.status, str(e), e.code)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, e: RequestValidationError):
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'}: {err.get('msg')}")
        service.m_requests.labels("any", "400").inc()
        return _error(400, "invalid request: " + "; ".join(parts))

    # ------------------------------------------------------------------ OpenAI-compatible
    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": service.model_name, "object": "model",
                                            "created": int(service.started), "owned_by": "flywheel"}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionIn):
        service.check_model(req.model)
        service.check_sampling(req.n, req.max_tokens, req.logprobs)
        prompts = _completion_prompts(req.prompt)
        if len(prompts) > service.cfg.max_prompts_per_request:
            raise RequestError(f"{len(prompts)} prompts; the limit is {service.cfg.max_prompts_per_request}")
        ids = [service.prompt_ids(p, req.max_tokens) for p in prompts]
        params = {"n": req.n, "temperature": req.temperature, "top_p": req.top_p, "max_tokens": req.max_tokens,
                  "stop": _stops(req.stop), "seed": req.seed, "logprobs": req.logprobs}
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return StreamingResponse(_stream_completions(service, ids, params, rid, created, req.logprobs),
                                     media_type="text/event-stream")
        choices, usage = await _collect(service, ids, params)
        out = []
        for (i, j), c in sorted(choices.items()):
            lp = None
            if req.logprobs is not None:
                lp = {"tokens": c["tokens"], "token_logprobs": c["logprobs"],
                      "top_logprobs": c["top_logprobs"] if req.logprobs else None, "text_offset": c["offsets"]}
            out.append({"index": i * req.n + j, "text": c["text"], "logprobs": lp, "finish_reason": c["finish"]})
        service.m_requests.labels("completions", "200").inc()
        return {"id": rid, "object": "text_completion", "created": created, "model": service.model_name,
                "choices": out, "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatIn):
        service.check_model(req.model)
        max_tokens = req.max_completion_tokens or req.max_tokens or min(256, service.cfg.max_tokens)
        top = req.top_logprobs if req.logprobs else None
        service.check_sampling(req.n, max_tokens, top)
        ids = service.chat_prompt_ids([m.model_dump() for m in req.messages], max_tokens)
        params = {"n": req.n, "temperature": req.temperature, "top_p": req.top_p, "max_tokens": max_tokens,
                  "stop": _stops(req.stop), "seed": req.seed, "logprobs": (top or 0) if req.logprobs else None}
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return StreamingResponse(_stream_chat(service, ids, params, rid, created, req.logprobs),
                                     media_type="text/event-stream")
        choices, usage = await _collect(service, [ids], params)
        out = []
        for (_, j), c in sorted(choices.items()):
            lp = None
            if req.logprobs:
                lp = {"content": [{"token": t, "logprob": l, "bytes": list(t.encode()),
                                   "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode())}
                                                    for k, v in (tl or {}).items()]}
                                  for t, l, tl in zip(c["tokens"], c["logprobs"],
                                                      c["top_logprobs"] or [None] * len(c["tokens"]))]}
            out.append({"index": j, "message": {"role": "assistant", "content": c["text"]}, "logprobs": lp,
                        "finish_reason": c["finish"]})
        service.m_requests.labels("chat", "200").inc()
        return {"id": rid, "object": "chat.completion", "created": created, "model": service.model_name,
                "choices": out, "usage": usage}

    # ------------------------------------------------------------------ trainer-facing
    @app.post("/v1/rollouts")
    async def rollouts(req: RolloutsIn) -> dict:
        service.check_model(req.model)
        s = req.sampling
        service.check_sampling(s.n, s.max_tokens)
        if not req.prompts:
            raise RequestError("prompts must not be empty")
        if len(req.prompts) > service.cfg.max_prompts_per_request:
            raise RequestError(f"{len(req.prompts)} prompts; the limit is {service.cfg.max_prompts_per_request}")
        prompts = []
        for k, p in enumerate(req.prompts):
            if not p.prompt_token_ids and not p.text:
                raise RequestError(f"prompts[{k}] has neither text nor prompt_token_ids")
            ids = service.prompt_ids(p.prompt_token_ids or p.text, s.max_tokens)
            prompts.append({"prompt_id": p.prompt_id or f"p{k}-{uuid.uuid4().hex[:8]}", "prompt_token_ids": ids,
                            "text": p.text or "", "gold": p.gold, "stage": p.stage})
        groups = await service.rollouts(prompts, s.model_dump())
        service.m_requests.labels("rollouts", "200").inc()
        return {"model": service.model_name, "weight_version": service.version, "groups": groups}

    @app.post("/v1/weights")
    async def weights(req: WeightsIn) -> dict:
        out = await service.load_weights(req.version, req.path, req.sha256)
        service.m_requests.labels("weights", "200").inc()
        return out

    @app.get("/healthz")
    async def healthz():
        st = service.status()
        ok = st["workers"] > 0
        return JSONResponse({"status": "ok" if ok else "no live workers", **st}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _collect(service: RolloutService, ids: list[list[int]], params: dict):
    """Run every prompt's request and gather its choices: {(prompt, sample): {...}}, usage."""
    import asyncio

    tok = service.tokenizer
    choices: dict[tuple[int, int], dict] = {}
    prompt_tokens = 0

    async def one(i: int, p: list[int]) -> None:
        nonlocal prompt_tokens
        prompt_tokens += len(p)
        async for d in service.stream(p, params):
            c = choices.setdefault((i, d["index"]), {"text": "", "ids": [], "logprobs": [], "top_logprobs": [],
                                                     "finish": None})
            c["text"] += d["text"]
            c["ids"] += d["token_ids"]
            c["logprobs"] += d["logprobs"]
            if d["top_logprobs"] is not None:
                c["top_logprobs"] += d["top_logprobs"]
            if d["finish_reason"]:
                c["finish"] = d["finish_reason"]

    await asyncio.gather(*(one(i, p) for i, p in enumerate(ids)))
    completion_tokens = 0
    for c in choices.values():
        c["tokens"] = [tok.decode([t]) for t in c["ids"]]
        offs, pos = [], 0
        for t in c["tokens"]:
            offs.append(pos)
            pos += len(t)
        c["offsets"] = offs
        c["top_logprobs"] = c["top_logprobs"] or None
        completion_tokens += len(c["ids"])
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return choices, usage


async def _merged(service: RolloutService, ids: list[list[int]], params: dict):
    """Deltas of several prompts' requests, interleaved as they arrive: (prompt index, delta)."""
    import asyncio

    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, p: list[int]) -> None:
        try:
            async for d in service.stream(p, params):
                await queue.put((i, d))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(ids)]
    left = len(tasks)
    try:
        while left:
            i, d = await queue.get()
            if d is None:
                left -= 1
                continue
            yield i, d
        for t in tasks:
            t.result()
    finally:
        for t in tasks:
            t.cancel()


async def _stream_completions(service, ids, params, rid, created, logprobs):
    tok = service.tokenizer
    n = params["n"]
    try:
        async for i, d in _merged(service, ids, params):
            lp = None
            if logprobs is not None:
                lp = {"tokens": [tok.decode([t]) for t in d["token_ids"]], "token_logprobs": d["logprobs"],
                      "top_logprobs": d["top_logprobs"], "text_offset": None}
            yield _sse({"id": rid, "object": "text_completion", "created": created, "model": service.model_name,
                        "choices": [{"index": i * n + d["index"], "text": d["text"], "logprobs": lp,
                                     "finish_reason": d["finish_reason"]}]})
    except Exception as e:  # noqa: BLE001 - headers are sent; report the failure in-band
        yield _sse({"error": {"message": str(e), "type": "server_error", "code": "generation_failed"}})
    service.m_requests.labels("completions_stream", "200").inc()
    yield "data: [DONE]\n\n"


async def _stream_chat(service, ids, params, rid, created, logprobs):
    tok = service.tokenizer
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": service.model_name}
    seen: set[int] = set()
    try:
        async for _, d in _merged(service, [ids], params):
            delta: dict[str, Any] = {"content": d["text"]}
            if d["index"] not in seen:
                seen.add(d["index"])
                delta["role"] = "assistant"
            lp = None
            if logprobs:
                lp = {"content": [{"token": tok.decode([t]), "logprob": l, "bytes": None, "top_logprobs": []}
                                  for t, l in zip(d["token_ids"], d["logprobs"])]}
            yield _sse({**base, "choices": [{"index": d["index"], "delta": delta, "logprobs": lp,
                                             "finish_reason": d["finish_reason"]}]})
    except Exception as e:  # noqa: BLE001
        yield _sse({"error": {"message": str(e), "type": "server_error", "code": "generation_failed"}})
    service.m_requests.labels("chat_stream", "200").inc()
    yield "data: [DONE]\n\n"
