"""The reward API's wire models: one definition for HTTP (validated by FastAPI, published as the OpenAPI
schema) and gRPC (each decoded message is validated by the same models).

Types are strict (``false`` is not an integer, ``"1"`` is not a number), numbers finite and bounded,
strings valid Unicode, and the limits of the server's config (``max_batch_items``, ``max_item_chars``,
``max_timeout_s``) are part of the schema, so a request the schema accepts is one the server accepts.
Refusals name the field (``items[3].completion: ...``) and never echo the value or internal settings.
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError,
                      create_model)

from rewards.config import Extraction

MAX_INT32 = 2**31 - 1
"""Integer fields are int32 in the gRPC API; the HTTP API has the same bounds."""
MAX_ID_CHARS = 1024
"""Longest item id."""


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode text)") from None
    return value


def _json_integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be an integer (not a boolean or a string)")
    return value


# the bounds come before the validator, or pydantic leaves them out of the JSON schema
Count = Annotated[int, Field(ge=0, le=MAX_INT32), Strict(False), BeforeValidator(_json_integer)]
"""A non-negative int32, as JSON Schema means an integer: ``3`` and ``3.0`` are, ``true`` and ``"3"`` are not."""


class RequestError(ValueError):
    """A request the service refuses. ``kind``: ``invalid`` (HTTP 422 / INVALID_ARGUMENT), ``too_large``
    (HTTP 413 or 422 / RESOURCE_EXHAUSTED), ``busy`` (HTTP 503 + Retry-After / RESOURCE_EXHAUSTED),
    ``unavailable`` (no verification can run: HTTP 503 + Retry-After / UNAVAILABLE)."""

    def __init__(self, message: str, kind: str = "invalid", errors: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.kind = kind
        self.errors = errors or []


class VerifyOptionsIn(BaseModel):
    """Per-request overrides of the server's reward settings (all optional)."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Hard time limit per item (extraction included), at most the server's ``max_timeout_s``."""
    last_number_fallback: bool | None = None
    """Take the last number when no marked answer is found (``marked`` extraction only)."""
    format_reward: bool | None = None
    """Add the format reward part (1 when the answer is marked)."""
    max_response_tokens: Count | None = None
    """DAPO L_max; 0 turns the overlong penalty off."""
    overlong_buffer_tokens: Count | None = None
    """DAPO L_cache, the soft-penalty band below L_max; a band wider than L_max is clamped to L_max."""
    extraction: Extraction | None = None
    """Where the answer is read: ``marked`` (boxed, answer lines, ``####``), ``lenient`` (the whole
    completion, as math-verify searches it) or ``answer`` (the completion is the answer)."""


class RewardPartsOut(BaseModel):
    correctness: float
    format: float
    overlong: float


class VerdictOut(BaseModel):
    id: str
    """The item's id, echoed."""
    correct: bool
    status: str
    """``correct`` | ``wrong`` | ``no_answer`` | ``unparsable_gold`` | ``timeout`` | ``error``."""
    extracted: str | None
    """The answer found in the completion."""
    reason: str
    reward: float
    """Total shaped reward."""
    parts: RewardPartsOut
    latency_ms: float
    """Time spent verifying this item (in a worker process; 0 for a cache hit)."""
    cached: bool

    model_config = ConfigDict(use_attribute_docstrings=True)


class VerifyResponseOut(BaseModel):
    verdicts: list[VerdictOut]
    verifier_version: str


class FieldErrorOut(BaseModel):
    field: str
    """Where the problem is, e.g. ``items[3].completion``."""
    message: str

    model_config = ConfigDict(use_attribute_docstrings=True)


class ErrorOut(BaseModel):
    detail: str
    """What was wrong, naming the field."""
    request_id: str
    """Quote it when reporting a problem: the server's log line for this request carries it."""
    errors: list[FieldErrorOut] = []
    """One entry per invalid field (validation errors only)."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class HealthOut(BaseModel):
    status: str
    """``ok``; ``draining`` once shutdown has begun (``/readyz`` 503); ``unavailable`` when no verification can
    run (``/healthz`` and ``/readyz`` 503)."""
    reason: str | None = None
    """Why the status is not ``ok``."""
    verifier_version: str
    cache: str
    """``up`` | ``down`` | ``disabled``."""
    workers: int
    """Verifier worker processes configured."""
    workers_ready: int
    pool_restarts: int
    draining: bool
    """True once shutdown has begun."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class ApiModels(NamedTuple):
    """Request models bound to one server config (its size limits are part of the schema)."""

    item: type[BaseModel]
    request: type[BaseModel]


def api_models(max_batch_items: int, max_item_chars: int, max_timeout_s: float) -> ApiModels:
    text = Annotated[str, Field(max_length=max_item_chars), AfterValidator(_valid_unicode)]
    strict = ConfigDict(extra="forbid", strict=True)
    item = create_model(
        "VerifyItemIn", __config__=strict,
        id=(Annotated[str, Field(max_length=MAX_ID_CHARS), AfterValidator(_valid_unicode)],
            Field("", description="Caller's id, echoed in the verdict.")),
        completion=(text, Field(description=f"Model output (at most {max_item_chars} characters).")),
        gold=(text, Field(description=f"Reference answer (at most {max_item_chars} characters).")),
        response_tokens=(Count | None, Field(None,
                                           description="Response length in tokens (for the overlong penalty).")),
    )
    options = create_model(
        "VerifyOptionsIn", __base__=VerifyOptionsIn,
        timeout_s=(float | None, Field(None, gt=0, le=max_timeout_s, allow_inf_nan=False,
                                       description=f"Hard time limit per item in seconds, extraction included "
                                                   f"(at most {max_timeout_s:g}).")),
    )
    request = create_model(
        "VerifyRequestIn", __config__=strict,
        items=(list[item], Field(max_length=max_batch_items,  # type: ignore[valid-type]
                                 description=f"At most {max_batch_items} items; one verdict each, in order.")),
        options=(options | None, Field(None, description="Overrides of the server's reward settings.")),
    )
    return ApiModels(item, request)


def field_path(loc: tuple[Any, ...]) -> str:
    """``("body", "items", 3, "completion")`` -> ``items[3].completion``."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _message(err: dict[str, Any]) -> tuple[str, str]:
    """(message, kind) for one pydantic error, without its input value."""
    path, kind, msg = field_path(tuple(err.get("loc", ()))), "invalid", str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err.get("type") in ("too_long", "string_too_long"):
        kind = "too_large"
        if path == "items":
            msg += " (max_batch_items)"
        elif path.endswith((".completion", ".gold")):
            msg += " (max_item_chars)"
    if err.get("type") == "json_invalid":
        msg = "body is not valid JSON"
    return f"{path}: {msg}", kind


def validation_error(errors: list[dict[str, Any]]) -> RequestError:
    """A :class:`RequestError` naming every invalid field (the values themselves are never echoed)."""
    described = [(_message(e), field_path(tuple(e.get("loc", ())))) for e in errors[:20]]
    kind = "too_large" if any(k == "too_large" for (_, k), _ in described) else "invalid"
    fields = [{"field": path, "message": m.split(": ", 1)[-1]} for (m, _), path in described]
    detail = "; ".join(m for (m, _), _ in described) or "invalid request"
    if len(errors) > 20:
        detail += f"; and {len(errors) - 20} more"
    return RequestError(detail, kind, fields)


def parse_request(models: ApiModels, data: dict[str, Any]) -> BaseModel:
    """Validate a decoded request (gRPC); raises :class:`RequestError`."""
    try:
        return models.request.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors(include_input=False, include_context=False, include_url=False)) from None
