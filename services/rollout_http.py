"""HTTP API of the rollout service (FastAPI): OpenAI-compatible endpoints plus the trainer's.

- ``POST /v1/completions``, ``POST /v1/chat/completions``: OpenAI wire format, ``n``, ``logprobs``,
  ``stop``, ``seed``, non-streaming and SSE streaming (``stream: true``), so the ``openai`` client
  works unchanged; ``GET /v1/models``.
- ``POST /v1/rollouts``: prompts + sampling -> groups with token ids, per-token behaviour log-probs
  and the policy version of every token (the ``rollout.trajectory.Group`` record).
- ``POST /v1/weights`` (bearer token): ``{version, path, sha256}`` of safetensors on storage both
  sides can read; loaded in flight (pause keeping requests, reload, resume).
- ``GET /healthz`` (up, or recovering), ``GET /readyz`` (an engine can generate now), ``GET /metrics``.

The OpenAPI spec is the contract: the request models are built from the server's config
(:func:`request_models`), so every limit (``n``, ``max_tokens``, prompts per request, token ids in
the vocabulary, ...) is in the schema, integers are strict, floats finite, strings valid Unicode, and
every status a route can answer is declared. Every error is ``{"error": {"message", "type", "code",
"request_id"}}``; a server-side failure is logged with its request id and answered with the id only.
"""

# no ``from __future__ import annotations``: FastAPI must see the request models built in build_app itself
import json
import logging
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from rollout.config import MAX_TEMPERATURE
from services.rollout_requests import MAX_STOP_CHARS, MAX_STOP_STRINGS, MAX_TEXT_CHARS, SEED_MAX, unicode_problem
from services.rollout_server import RequestError, RolloutService

log = logging.getLogger("flywheel.rollout_server")


class SafeJSON(JSONResponse):
    """JSON with every non-ASCII character escaped (a lone surrogate cannot break the response)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    request_id: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: ErrorDetail


def _unicode(v: str) -> str:
    problem = unicode_problem(v)
    if problem:
        raise ValueError(problem)
    return v


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


def request_models(svc: RolloutService) -> dict[str, type[BaseModel]]:
    """The request bodies, with this server's limits in their schemas."""
    from rollout.weight_update import MAX_VERSION

    cfg = svc.cfg
    vocab = len(svc.tokenizer)
    Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_unicode)]
    PromptText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_unicode)]
    Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS), AfterValidator(_unicode)]
    TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=vocab - 1)]],
                         Field(min_length=1, max_length=cfg.max_prompt_tokens)]
    Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
    Stops = Annotated[list[Stop], Field(max_length=MAX_STOP_STRINGS)]
    Temperature = Annotated[float, Field(ge=0.0, le=MAX_TEMPERATURE)]
    TopP = Annotated[float, Field(gt=0.0, le=1.0)]
    N = Annotated[int, Field(ge=1, le=cfg.max_n)]
    MaxTokens = Annotated[int, Field(ge=1, le=cfg.max_tokens)]
    Prompts = Annotated[list[PromptText], Field(min_length=1, max_length=cfg.max_prompts_per_request)]
    IdPrompts = Annotated[list[TokenIds], Field(min_length=1, max_length=cfg.max_prompts_per_request)]
    Name = Annotated[str, Field(max_length=256), AfterValidator(_unicode)]

    class CompletionIn(_Req):
        model: Name | None = None
        prompt: PromptText | Prompts | TokenIds | IdPrompts
        max_tokens: MaxTokens = min(16, cfg.max_tokens)
        temperature: Temperature = 1.0
        top_p: TopP = 1.0
        n: N = 1
        stream: bool = False
        logprobs: Annotated[int, Field(ge=0, le=cfg.max_logprobs)] | None = None
        stop: Stop | Stops | None = None
        seed: Seed | None = None

    class ChatMessage(_Req):
        role: Literal["system", "user", "assistant", "tool", "developer"]
        content: Text

    class ChatIn(_Req):
        model: Name | None = None
        messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)]
        max_tokens: MaxTokens | None = None
        max_completion_tokens: MaxTokens | None = None
        temperature: Temperature = 1.0
        top_p: TopP = 1.0
        n: N = 1
        stream: bool = False
        logprobs: bool = False
        top_logprobs: Annotated[int, Field(ge=0, le=cfg.max_logprobs)] | None = None
        stop: Stop | Stops | None = None
        seed: Seed | None = None

    class PromptIn(_Req):
        prompt_id: Name | None = None
        text: PromptText | None = None
        prompt_token_ids: TokenIds | None = None
        gold: Text = ""
        stage: Annotated[int, Field(ge=0, le=1_000_000)] = 0

    class SamplingIn(_Req):
        n: N = min(8, cfg.max_n)
        temperature: Temperature = 1.0
        top_p: TopP = 1.0
        max_tokens: MaxTokens = min(256, cfg.max_tokens)
        stop: Stops = Field(default_factory=list)
        seed: Seed | None = None

    class RolloutsIn(_Req):
        model: Name | None = None
        prompts: Annotated[list[PromptIn], Field(min_length=1, max_length=cfg.max_prompts_per_request)]
        sampling: SamplingIn = Field(default_factory=SamplingIn)

    class WeightsIn(_Req):
        version: Annotated[int, Field(ge=1, le=MAX_VERSION)]
        path: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_unicode)]
        sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]

    return {"CompletionIn": CompletionIn, "ChatIn": ChatIn, "RolloutsIn": RolloutsIn, "WeightsIn": WeightsIn}


def _error(status: int, message: str, code: str, request_id: str, retry_after: float | None = None) -> SafeJSON:
    kind = "invalid_request_error" if status < 500 else "server_error"
    headers = {"X-Request-Id": request_id}
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after))
    return SafeJSON({"error": {"message": message, "type": kind, "code": code, "request_id": request_id}},
                    status_code=status, headers=headers)


def _rid(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


_TAGS = {"str", "int", "float", "bool", "none", "list", "dict", "constrained-str", "constrained-int"}


def _field(part: Any) -> str:
    """A validation error's location part as the client wrote it: field names and indexes, not pydantic's
    union-member tags (``function-after[...]``, ``list[...]``)."""
    if isinstance(part, int):
        return str(part)
    text = str(part)
    if text in _TAGS or "[" in text or text.startswith("function-") or not text.isidentifier():
        return ""
    return text


def _stops(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _completion_prompts(prompt) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(t, int) for t in prompt):
        return [prompt]  # one prompt of token ids
    return list(prompt)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=True)}\n\n"


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "invalid request (the message names the field)", 401: "missing or wrong bearer token",
            403: "path outside the server's weights_root", 404: "unknown model",
            409: "stale weight version", 413: "request body too large",
            500: "internal error (logged under the request id)", 503: "no engine can serve now; retry"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


GENERATE = (400, 404, 413, 500, 503)
STREAMS = {200: {"description": "a completion (JSON), or with ``stream: true`` server-sent events",
                 "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}}}}


def build_app(service: RolloutService) -> FastAPI:
    app = FastAPI(title="Flywheel rollout service", version="1",
                  description="OpenAI-compatible generation and trainer rollouts over vLLM workers on Ray.")
    token = service.cfg.token()
    guarded = {"/v1/weights"}
    models = request_models(service)
    CompletionIn, ChatIn, RolloutsIn, WeightsIn = (models[k] for k in ("CompletionIn", "ChatIn", "RolloutsIn",
                                                                        "WeightsIn"))
    auth = (401,) if token and service.cfg.auth_all else ()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        rid = request.state.request_id = uuid.uuid4().hex
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > service.cfg.max_request_bytes:
            return _error(413, f"request body of {size} bytes; the limit is {service.cfg.max_request_bytes}",
                          "request_too_large", rid)
        if token and (service.cfg.auth_all or request.url.path in guarded):
            if request.headers.get("authorization", "") != f"Bearer {token}":
                return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)", "unauthorized",
                              rid)
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - the client gets the id, the log gets the traceback
            log.exception("request %s %s failed (request id %s)", request.method, request.url.path, rid)
            return _error(500, f"internal error; the server logged it under request id {rid}", "internal_error", rid)
        response.headers["X-Request-Id"] = rid
        return response

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, e: RequestError):
        service.m_requests.labels("any", str(e.status)).inc()
        return _error(e.status, str(e), e.code, _rid(request), e.retry_after)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):  # unparsable body, unknown route, ...
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request_error")
        detail = "the body is not valid JSON (or not UTF-8)" if "parsing the body" in str(e.detail) else str(e.detail)
        response = _error(e.status_code, detail, code, _rid(request))
        response.headers.update(e.headers or {})  # Allow on a 405
        return response

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, e: RequestValidationError):
        parts: list[str] = []
        for err in e.errors():
            loc = ".".join(_field(x) for x in err.get("loc", ()) if x != "body" and _field(x))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "json_invalid":
                msg = "malformed JSON body"
            part = f"{loc or 'body'}: {msg}"
            if part not in parts and len(parts) < 6:
                parts.append(part)
        service.m_requests.labels("any", "400").inc()
        return _error(400, "invalid request: " + "; ".join(parts), "invalid_request_error", _rid(request))

    # ------------------------------------------------------------------ OpenAI-compatible
    @app.get("/v1/models", responses=_responses(*auth))
    async def models_list() -> dict:
        return {"object": "list", "data": [{"id": service.model_name, "object": "model",
                                            "created": int(service.started), "owned_by": "flywheel"}]}

    @app.post("/v1/completions", responses={**STREAMS, **_responses(*GENERATE, *auth)})
    async def completions(req: CompletionIn, request: Request):  # type: ignore[valid-type]
        service.check_model(req.model)
        prompts = _completion_prompts(req.prompt)
        ids = [service.prompt_ids(p, req.max_tokens) for p in prompts]
        params = {"n": req.n, "temperature": req.temperature, "top_p": req.top_p, "max_tokens": req.max_tokens,
                  "stop": _stops(req.stop), "seed": req.seed, "logprobs": req.logprobs}
        rid, created = f"cmpl-{_rid(request)}", int(time.time())
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

    @app.post("/v1/chat/completions", responses={**STREAMS, **_responses(*GENERATE, *auth)})
    async def chat(req: ChatIn, request: Request):  # type: ignore[valid-type]
        service.check_model(req.model)
        max_tokens = req.max_completion_tokens or req.max_tokens or min(256, service.cfg.max_tokens)
        top = req.top_logprobs if req.logprobs else None
        ids = service.chat_prompt_ids([m.model_dump() for m in req.messages], max_tokens)
        params = {"n": req.n, "temperature": req.temperature, "top_p": req.top_p, "max_tokens": max_tokens,
                  "stop": _stops(req.stop), "seed": req.seed, "logprobs": (top or 0) if req.logprobs else None}
        rid, created = f"chatcmpl-{_rid(request)}", int(time.time())
        if req.stream:
            return StreamingResponse(_stream_chat(service, ids, params, rid, created, req.logprobs),
                                     media_type="text/event-stream")
        choices, usage = await _collect(service, [ids], params)
        out = []
        for (_, j), c in sorted(choices.items()):
            lp = None
            if req.logprobs:
                lp = {"content": [{"token": t, "logprob": l, "bytes": list(t.encode("utf-8", "replace")),
                                   "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode("utf-8",
                                                                                                      "replace"))}
                                                    for k, v in (tl or {}).items()]}
                                  for t, l, tl in zip(c["tokens"], c["logprobs"],
                                                      c["top_logprobs"] or [None] * len(c["tokens"]))]}
            out.append({"index": j, "message": {"role": "assistant", "content": c["text"]}, "logprobs": lp,
                        "finish_reason": c["finish"]})
        service.m_requests.labels("chat", "200").inc()
        return {"id": rid, "object": "chat.completion", "created": created, "model": service.model_name,
                "choices": out, "usage": usage}

    # ------------------------------------------------------------------ trainer-facing
    @app.post("/v1/rollouts", responses=_responses(*GENERATE, *auth))
    async def rollouts(req: RolloutsIn, request: Request) -> dict:  # type: ignore[valid-type]
        service.check_model(req.model)
        s = req.sampling
        prompts = []
        for k, p in enumerate(req.prompts):
            if not p.prompt_token_ids and not p.text:
                raise RequestError(f"prompts[{k}] has neither text nor prompt_token_ids")
            ids = service.prompt_ids(p.prompt_token_ids or p.text, s.max_tokens)
            prompts.append({"prompt_id": p.prompt_id or f"p{k}-{_rid(request)[:8]}", "prompt_token_ids": ids,
                            "text": p.text or "", "gold": p.gold, "stage": p.stage})
        groups = await service.rollouts(prompts, s.model_dump())
        service.m_requests.labels("rollouts", "200").inc()
        return {"model": service.model_name, "weight_version": service.version, "groups": groups}

    @app.post("/v1/weights", responses=_responses(400, 401, 403, 409, 413, 500, 503))
    async def weights(req: WeightsIn) -> dict:  # type: ignore[valid-type]
        out = await service.load_weights(req.version, req.path, req.sha256)
        service.m_requests.labels("weights", "200").inc()
        return out

    # ------------------------------------------------------------------ health
    @app.get("/healthz", responses={**_responses(*auth), 503: {"description": "the engines are gone for good"}})
    async def healthz():
        """Up: the service serves, or is bringing a dead engine back (``status``: ok | degraded | unavailable).
        503 only when no engine can come back (the server then exits non-zero)."""
        body = {**service.health.snapshot(), **service.status()}
        return SafeJSON(body, status_code=200 if service.health.healthy else 503)

    @app.get("/readyz", responses={**_responses(*auth), 503: {"description": "no engine can generate now"}})
    async def readyz():
        """Ready: at least one engine answered its last health check able to generate."""
        body = {**service.health.snapshot(), **service.status()}
        return SafeJSON(body, status_code=200 if service.health.ready else 503)

    @app.get("/metrics", responses={200: {"description": "Prometheus text format",
                                          "content": {"text/plain": {"schema": {"type": "string"}}}},
                                    **_responses(*auth)})
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


def _stream_error(e: BaseException, rid: str) -> str:
    """The in-band error of a stream whose headers are sent: the message of a client/engine error, else only
    the request id (the traceback goes to the server log, never to the client)."""
    if isinstance(e, RequestError):
        body = {"message": str(e), "type": "invalid_request_error" if e.status < 500 else "server_error",
                "code": e.code, "request_id": rid}
    else:
        log.error("stream %s failed", rid, exc_info=e)
        body = {"message": f"internal error; the server logged it under request id {rid}", "type": "server_error",
                "code": "internal_error", "request_id": rid}
    return _sse({"error": body})


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
        yield _stream_error(e, rid)
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
        yield _stream_error(e, rid)
    service.m_requests.labels("chat_stream", "200").inc()
    yield "data: [DONE]\n\n"
