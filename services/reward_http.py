"""HTTP adapter of the reward verifier (FastAPI): ``POST /v1/verify``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``; the OpenAPI spec at ``/openapi.json`` is the contract and lists every status returned.

Refusals are JSON ``{"detail", "request_id", "errors"}``: 400 (unparsable body), 401 (token), 413 (body
too large), 422 (invalid field, named; too many items or characters), 503 + Retry-After (busy or
shutting down, no verifier worker can run). Bodies never carry the offending value, a traceback, a path
or an internal setting; the server logs each refusal and failure with the request id (also in the
``X-Request-ID`` header).
Health endpoints are ``async`` and do no I/O, so they answer at once while verify requests run in a
bounded thread pool of their own.
"""

# no ``from __future__ import annotations``: FastAPI reads the request model (built from the config) at def time

import logging
import time
import uuid
from functools import partial

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.reward_api import ErrorOut, HealthOut, RequestError, VerifyResponseOut, validation_error
from services.reward_service import RewardService

log = logging.getLogger("flywheel.reward_server")

RETRY_AFTER_S = 1
"""Retry-After of a 503 (busy)."""


def _error(status: int, detail: str, request: Request, errors: list | None = None,
           headers: dict | None = None) -> JSONResponse:
    rid = getattr(request.state, "request_id", "")
    body = ErrorOut(detail=detail, request_id=rid, errors=errors or []).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def build_app(service: RewardService) -> FastAPI:
    from rewards.verifier import VERIFIER_VERSION

    cfg = service.cfg
    app = FastAPI(title="Flywheel reward verifier", version=VERIFIER_VERSION,
                  description="Batch verification of (completion, gold answer) pairs with reward shaping. "
                              "Every status code the service returns is listed per operation.")
    limit = cfg.max_request_bytes
    verify_threads = anyio.CapacityLimiter(cfg.max_concurrent_requests)
    bearer = [Depends(HTTPBearer(auto_error=False))] if cfg.auth_token else []  # declares the scheme in the spec
    refusals = {400: "Body is not parsable", 401: "Missing or wrong bearer token",
                413: "Body larger than max_request_bytes",
                422: "An invalid field (named), too many items or characters",
                503: "Busy, shutting down or unable to verify: retry after Retry-After seconds"}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        request.state.request_id = rid = uuid.uuid4().hex[:16]
        try:
            if request.url.path.startswith("/v1/"):
                if not service.authorized(request.headers.get("authorization")):
                    service.metrics.errors.labels("http", "unauthenticated").inc()
                    response = _error(401, "missing or wrong bearer token", request,
                                      headers={"WWW-Authenticate": "Bearer"})
                    response.headers["X-Request-ID"] = rid
                    return response
                declared = request.headers.get("content-length", "")
                too_large = declared.isdigit() and int(declared) > limit
                if not too_large:  # read at most limit + 1 bytes (a chunked body declares no length)
                    chunks, size = [], 0
                    async for chunk in request.stream():
                        size += len(chunk)
                        if size > limit:
                            too_large = True
                            break
                        chunks.append(chunk)
                    request._body = b"".join(chunks)  # what FastAPI reads next (Starlette replays it)
                if too_large:
                    service.metrics.errors.labels("http", "too_large").inc()
                    response = _error(413, f"request body exceeds max_request_bytes={limit}", request)
                    response.headers["X-Request-ID"] = rid
                    return response
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - a bug must not leak a traceback: log it, answer with the id
            log.exception("request %s (%s %s) failed", rid, request.method, request.url.path)
            response = _error(500, "internal error; the server log has the details under this request id", request)
        response.headers["X-Request-ID"] = rid
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        err = validation_error(list(exc.errors()))
        service.metrics.errors.labels("http", err.kind).inc()
        log.info("request %s refused: %s", request.state.request_id, str(err)[:500])
        return _error(422, str(err), request, err.errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "bad request"
        if exc.status_code == 400:
            service.metrics.errors.labels("http", "invalid").inc()
            detail = "the body could not be parsed as JSON"
        return _error(exc.status_code, detail, request, headers=getattr(exc, "headers", None))

    @app.post("/v1/verify", response_model=VerifyResponseOut, dependencies=bearer,
              responses={code: {"model": ErrorOut, "description": d} for code, d in refusals.items()})
    async def verify(req: service.models.request, request: Request):  # type: ignore[name-defined]
        """Verify a batch of (completion, gold) pairs: one verdict per item, in order."""
        t0 = time.perf_counter()
        n_items = len(req.items)
        try:
            service.admit(n_items)  # here, not in the thread: a request beyond the limits is refused, never queued
            try:
                verdicts = await anyio.to_thread.run_sync(partial(service.verify, req, admitted=True),
                                                          limiter=verify_threads)
            finally:
                service.release(n_items)
        except RequestError as e:
            service.metrics.errors.labels("http", e.kind).inc()
            log.info("request %s refused: %s", request.state.request_id, str(e)[:500])
            if e.kind in ("busy", "unavailable"):
                return _error(503, str(e), request, headers={"Retry-After": str(RETRY_AFTER_S)})
            return _error(422, str(e), request, e.errors)
        finally:
            service.metrics.latency.labels("http").observe(time.perf_counter() - t0)
        return {"verdicts": verdicts, "verifier_version": VERIFIER_VERSION}

    health_responses = {503: {"model": HealthOut, "description": "Unavailable (the body says why)"}}

    @app.get("/healthz", response_model=HealthOut, responses=health_responses)
    async def healthz():
        """Liveness: 503 when no verification can run (the verifier pool is broken)."""
        h = service.health()
        return JSONResponse(h, status_code=503 if h["status"] == "unavailable" else 200)

    @app.get("/readyz", response_model=HealthOut, responses=health_responses)
    async def readyz():
        """Readiness: 503 also while shutting down (stop sending work here)."""
        h = service.health()
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus metrics"}})
    def metrics():
        """Prometheus metrics (text format)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
