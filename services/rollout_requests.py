"""What a rollout-service request may contain, checked the same way over HTTP and gRPC.

:class:`RequestError` is a client error: its message goes back to the caller (HTTP 4xx, gRPC
INVALID_ARGUMENT and friends) and never carries the offending input itself (a lone surrogate
would not even serialise), only the field and the rule. :func:`generation_failure` sorts what a
worker raised while generating into "the engine is being restarted" (503, retry), "vLLM refused
this request" (400) or None (a server bug: logged with a request id, answered with the id only).
"""

from __future__ import annotations

import math
from typing import Any

SEED_MAX = 2**63 - 2**16
"""Largest request seed: sample ``i`` of a request uses ``seed + i``, and vLLM needs an int64."""
MAX_STOP_STRINGS = 16
"""Most stop strings in one request."""
MAX_STOP_CHARS = 256
"""Longest stop string (characters)."""
MAX_TEXT_CHARS = 1_000_000
"""Longest text field (characters), before tokenisation refuses it by ``max_prompt_tokens``."""


class RequestError(ValueError):
    """A client error: the message is returned to the caller (HTTP 4xx / gRPC INVALID_ARGUMENT)."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be tokenised or sent on as UTF-8 (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"invalid Unicode: a lone surrogate (U+{ord(text[e.start]):04X}) at character {e.start}"
    return None


def check_text(field: str, text: str, *, allow_empty: bool = True, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``text`` if it is valid UTF-8 text within the limits, else :class:`RequestError` naming ``field``."""
    if not isinstance(text, str):
        raise RequestError(f"{field}: must be a string")
    problem = unicode_problem(text)
    if problem:
        raise RequestError(f"{field}: {problem}")
    if not allow_empty and not text:
        raise RequestError(f"{field}: must not be empty")
    if len(text) > max_chars:
        raise RequestError(f"{field}: {len(text)} characters; the limit is {max_chars}")
    return text


def check_stop(stop: list[str], field: str = "stop") -> list[str]:
    if len(stop) > MAX_STOP_STRINGS:
        raise RequestError(f"{field}: {len(stop)} stop strings; the limit is {MAX_STOP_STRINGS}")
    for k, s in enumerate(stop):
        check_text(f"{field}[{k}]", s, allow_empty=False, max_chars=MAX_STOP_CHARS)
    return stop


def check_number(field: str, value: float, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise RequestError(f"{field}: must be a finite number")
    if value > hi or value < lo or (lo_open and value == lo):
        raise RequestError(f"{field} = {value} is out of range: {lo} {'<' if lo_open else '<='} {field} <= {hi}")
    return float(value)


def check_seed(seed: int | None, field: str = "seed") -> int | None:
    if seed is None:
        return None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RequestError(f"{field}: must be an integer")
    if not 0 <= seed <= SEED_MAX:
        raise RequestError(f"{field} is out of range: 0 <= {field} <= {SEED_MAX}")
    return seed


def generation_failure(e: BaseException) -> RequestError | None:
    """What to answer for ``e``, raised by a worker while generating; None: an internal error."""
    from ray.exceptions import RayActorError, RayTaskError

    from rollout.fleet import NoLiveWorkers

    if isinstance(e, NoLiveWorkers | RayActorError):
        return RequestError("no rollout engine can serve right now (one is being restarted); retry shortly", 503,
                            "engine_unavailable", retry_after=5)
    cause: Any = e.cause if isinstance(e, RayTaskError) else e
    name = type(cause).__name__
    if "EngineDead" in name or "EngineGenerateError" in name:
        return RequestError("the rollout engine died while generating and is being restarted; retry shortly", 503,
                            "engine_unavailable", retry_after=5)
    client_error = any(c.__name__ == "VLLMClientError" for c in type(cause).__mro__)  # vLLM's own 4xx class
    if (client_error or isinstance(cause, ValueError | TypeError | OverflowError)) and not isinstance(cause,
                                                                                                   RequestError):
        line = str(cause).strip().splitlines()[0] if str(cause).strip() else name
        return RequestError(f"the engine refused this request: {line[:300]}", 400)
    return None
