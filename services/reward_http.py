"""HTTP front end of the reward verifier (FastAPI): ``POST /v1/verify``, ``GET /healthz``, ``GET /metrics``.

Bad requests get a 4xx with a message (401 auth, 413 body too large, 422 invalid / too many items)
and the server keeps serving. The verify handler is a plain ``def``: FastAPI runs it in its thread
pool, where the verifier's worker pool blocks safely.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.reward_server import RequestError, RewardService


class VerifyItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = ""
    """Caller's id, echoed in the verdict."""
    completion: str
    """Model output."""
    gold: str
    """Reference answer."""
    response_tokens: int | None = Field(None, ge=0)
    """Response length in tokens (for the overlong penalty)."""


class VerifyOptionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float | None = Field(None, gt=0)
    last_number_fallback: bool | None = None
    format_reward: bool | None = None
    max_response_tokens: int | None = Field(None, ge=0)
    overlong_buffer_tokens: int | None = Field(None, ge=0)


class VerifyRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[VerifyItemIn]
    options: VerifyOptionsIn | None = None


class RewardPartsOut(BaseModel):
    correctness: float
    format: float
    overlong: float


class VerdictOut(BaseModel):
    id: str
    correct: bool
    status: str
    extracted: str | None
    reason: str
    reward: float
    parts: RewardPartsOut
    latency_ms: float
    cached: bool


class VerifyResponseOut(BaseModel):
    verdicts: list[VerdictOut]
    verifier_version: str


def build_app(service: RewardService) -> FastAPI:
    from rewards.verifier import VERIFIER_VERSION

    app = FastAPI(title="Flywheel reward verifier", version=VERIFIER_VERSION,
                  description="Batch verification of (completion, gold answer) pairs with reward shaping.")
    limit = service.cfg.max_request_bytes

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if not service.authorized(request.headers.get("authorization")):
                service.metrics.errors.labels("http", "unauthenticated").inc()
                return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                service.metrics.errors.labels("http", "too_large").inc()
                return JSONResponse({"detail": f"request body of {declared} bytes exceeds max_request_bytes={limit}"},
                                    status_code=413)
            body = await request.body()  # chunked bodies without a length: check what arrived
            if len(body) > limit:
                service.metrics.errors.labels("http", "too_large").inc()
                return JSONResponse({"detail": f"request body exceeds max_request_bytes={limit}"}, status_code=413)
        return await call_next(request)

    @app.post("/v1/verify", response_model=VerifyResponseOut)
    def verify(req: VerifyRequestIn) -> dict:
        t0 = time.perf_counter()
        try:
            verdicts = service.verify([it.model_dump() for it in req.items],
                                      req.options.model_dump() if req.options else None)
        except RequestError as e:
            service.metrics.errors.labels("http", e.kind).inc()
            raise HTTPException(status_code=422, detail=str(e)) from None
        finally:
            service.metrics.latency.labels("http").observe(time.perf_counter() - t0)
        return {"verdicts": verdicts, "verifier_version": VERIFIER_VERSION}

    @app.get("/healthz")
    def healthz() -> dict:
        return service.health()

    @app.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
