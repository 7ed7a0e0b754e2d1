"""The reward verifier service core, shared by its HTTP (``services.reward_http``) and gRPC
(``services.reward_grpc``) adapters: config, admission, per-request deadline, cache and scoring.

Every item is scored whole (extraction, comparison and shaping) inside a verifier worker process
under the item's hard time limit (``rewards.worker_pool``), so no completion, however hostile, runs
in the request process; the pool schedules items round robin across requests. Each request also has
a deadline (``request_timeout_s``, default the item limit plus ``request_slack_s``) after which its
unfinished items are answered ``timeout``. Beyond ``max_concurrent_requests`` or ``max_pending_items``
the service refuses new work at once (HTTP 503 + Retry-After) instead of queueing it.

Verdicts are optionally cached in Redis, keyed by a hash of (gold, completion, response length,
reward config with the extraction mode, verifier version), with a TTL; when Redis is down the
service keeps working without the cache and says so in its health.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rewards.config import RewardConfig
from services.reward_api import RequestError, api_models

log = logging.getLogger("flywheel.reward_server")


class RewardServerConfig(BaseModel):
    """``flywheel serve-reward`` settings."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Interface to bind (both APIs). Use 0.0.0.0 only behind a network boundary you trust."""
    http_port: int = Field(8350, ge=0, le=65535)
    """HTTP (FastAPI) port; 0 disables the HTTP API."""
    grpc_port: int = Field(8351, ge=0, le=65535)
    """gRPC port; 0 disables the gRPC API."""
    workers: int = Field(2, ge=1, le=256)
    """Verifier worker processes (the hard time limit kills and replaces one of them)."""
    burst_workers: int | None = Field(None, ge=0, le=256)
    """Extra workers started while items run longer than 0.25 s and work waits (retired when idle); None = as
    many as ``workers``, 0 = never more than ``workers``."""
    grpc_threads: int = Field(16, ge=4, le=1024)
    """Threads serving gRPC calls; two are kept for health checks (verify calls beyond the rest are refused)."""
    timeout_s: float = Field(2.0, gt=0, le=60)
    """Default hard time limit per item, extraction included; a request may ask for up to max_timeout_s."""
    max_timeout_s: float = Field(10.0, gt=0, le=600)
    """Largest per-item time limit a request may ask for."""
    request_timeout_s: float | None = Field(None, gt=0, le=3600)
    """Deadline of one request: items unfinished by then get ``timeout`` verdicts. None = the request's item
    limit + request_slack_s."""
    request_slack_s: float = Field(3.0, ge=0, le=600)
    """With request_timeout_s None: how much longer than its item limit a request may take in all."""
    max_batch_items: int = Field(1024, ge=1, le=100_000)
    """Most items in one request (HTTP 422 / gRPC RESOURCE_EXHAUSTED beyond)."""
    max_item_chars: int = Field(100_000, ge=10, le=10_000_000)
    """Most characters in one completion or gold answer (HTTP 422 / gRPC RESOURCE_EXHAUSTED beyond)."""
    max_request_bytes: int = Field(16 * 2**20, ge=1024, le=2**31 - 1)
    """Largest request body (HTTP 413 / gRPC RESOURCE_EXHAUSTED beyond)."""
    max_concurrent_requests: int = Field(32, ge=1, le=10_000)
    """Verify requests (and gRPC streams) served at once; more are refused (HTTP 503 + Retry-After, gRPC
    RESOURCE_EXHAUSTED), never queued."""
    max_pending_items: int = Field(8192, ge=1, le=10_000_000)
    """Items waiting or running across all requests; a request that would exceed it is refused like above."""
    redis_url: str | None = None
    """Redis URL for the verdict cache (e.g. redis://127.0.0.1:6379/0); None = no cache."""
    cache_ttl_s: int = Field(7 * 86400, ge=1)
    """Lifetime of a cached verdict."""
    auth_token: str | None = None
    """Bearer token required on both APIs (``Authorization: Bearer <token>``); None = read ``auth_token_env``,
    and open when that is unset too (see docs/security.md)."""
    auth_token_env: str | None = "FLYWHEEL_REWARD_TOKEN"
    """Environment variable holding the token when auth_token is None (keeps it out of files and ``ps``)."""
    shutdown_grace_s: float = Field(10.0, ge=0, le=600)
    """How long shutdown waits for in-flight requests to finish."""
    reward: RewardConfig = Field(default_factory=RewardConfig)
    """Default reward shaping and verifier settings, ``reward.verify.extraction`` included (request options
    override a few); the server's ``timeout_s`` and ``workers`` replace ``reward.verify.timeout_s`` /
    ``num_workers``."""


class ServiceMetrics:
    """Prometheus metrics in a registry of their own (several servers may share a process in tests)."""

    def __init__(self, pool_restarts) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.verdicts = Counter("reward_verdicts_total", "Verdicts by status", ["status"], registry=self.registry)
        self.latency = Histogram("reward_request_seconds", "Request latency", ["api"], registry=self.registry,
                                 buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.timeouts = Counter("reward_timeouts_total", "Items that hit the hard time limit or the request deadline",
                                registry=self.registry)
        self.cache = Counter("reward_cache_lookups_total", "Verdict cache lookups", ["result"], registry=self.registry)
        self.errors = Counter("reward_request_errors_total", "Refused requests", ["api", "kind"],
                              registry=self.registry)
        self.in_flight = Gauge("reward_requests_in_flight", "Verify requests being processed", registry=self.registry)
        restarts = Gauge("reward_pool_restarts", "Verifier worker processes killed or died and replaced",
                         registry=self.registry)
        restarts.set_function(pool_restarts)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class VerdictCache:
    """The Redis verdict cache; every failure means "no cache" (and is said once in the log)."""

    RECHECK_S = 2.0

    def __init__(self, url: str | None, ttl_s: int):
        self.url, self.ttl_s = url, ttl_s
        self._redis = None
        self._ok: bool | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if url:
            import redis

            self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
            self.check()

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    def check(self) -> bool:
        if self._redis is None:
            return False
        try:
            ok = bool(self._redis.ping())
        except Exception:  # noqa: BLE001 - any failure means "no cache"
            ok = False
        self._set_ok(ok)
        return ok

    def _set_ok(self, ok: bool) -> None:
        with self._lock:
            changed = ok != self._ok
            self._ok, self._checked = ok, time.monotonic()
        if changed:
            if ok:
                log.info("redis cache is up")
            else:
                log.warning("redis cache is DOWN; serving without the cache")

    def state(self) -> str:
        """``up`` | ``down`` | ``disabled``, as last seen (no I/O: safe from the event loop)."""
        if self._redis is None:
            return "disabled"
        return "up" if self._ok else "down"

    def usable(self) -> bool:
        """Up, or down long enough ago to be probed again (the probe runs here)."""
        if self._redis is None:
            return False
        if not self._ok and time.monotonic() - self._checked > self.RECHECK_S:
            self.check()
        return bool(self._ok)

    def get(self, keys: list[str]) -> list[bytes | None]:
        if not self.usable():
            return [None] * len(keys)
        try:
            return self._redis.mget(keys)
        except Exception:  # noqa: BLE001
            self._set_ok(False)
            return [None] * len(keys)

    def put(self, entries: dict[str, str]) -> None:
        if not entries or not self.usable():
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for k, v in entries.items():
                pipe.set(k, v, ex=self.ttl_s)
            pipe.execute()
        except Exception:  # noqa: BLE001
            self._set_ok(False)


def _cache_key(item: dict[str, Any], cfg_json: str, version: str) -> str:
    payload = json.dumps([version, cfg_json, item["gold"], item["completion"], item.get("response_tokens")])
    return "flywheel:reward:" + hashlib.sha256(payload.encode()).hexdigest()


class RewardService:
    """Admission, deadlines, cache and scoring shared by the HTTP and gRPC front ends."""

    def __init__(self, cfg: RewardServerConfig):
        from rewards.worker_pool import shared_pool

        verify_cfg = cfg.reward.verify.model_copy(update={"timeout_s": cfg.timeout_s, "num_workers": cfg.workers})
        token = cfg.auth_token or (os.environ.get(cfg.auth_token_env) if cfg.auth_token_env else None) or None
        self.cfg = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"verify": verify_cfg}),
                                          "auth_token": token})
        self.models = api_models(cfg.max_batch_items, cfg.max_item_chars, cfg.max_timeout_s)
        self.pool = shared_pool(cfg.workers, cfg.burst_workers)
        took = self.pool.warm_up(wait=True)
        log.info("%d verifier worker processes ready in %.2f s", self.pool.state()["ready"], took)
        self.metrics = ServiceMetrics(lambda: self.pool.restarts)
        self.cache = VerdictCache(cfg.redis_url, cfg.cache_ttl_s)
        self.draining = False
        self._admit = threading.Lock()
        self._requests = 0
        self._items = 0

    # ---- requests
    def reward_config(self, options: BaseModel | None) -> RewardConfig:
        """The server's reward config with the request's options applied (already validated)."""
        base = self.cfg.reward
        opts = options.model_dump(exclude_none=True) if options is not None else {}
        verify_update = {k: opts[k] for k in ("timeout_s", "last_number_fallback", "extraction") if k in opts}
        update: dict[str, Any] = {}
        if verify_update:
            update["verify"] = base.verify.model_copy(update=verify_update)
        if "format_reward" in opts:
            update["format_weight"] = (base.format_weight or 1.0) if opts["format_reward"] else 0.0
        if "max_response_tokens" in opts:
            update["max_response_tokens"] = opts["max_response_tokens"] or None
        if "overlong_buffer_tokens" in opts:
            update["overlong_buffer_tokens"] = opts["overlong_buffer_tokens"]
        if not update:
            return base
        limit = update.get("max_response_tokens", base.max_response_tokens)
        buffer = update.get("overlong_buffer_tokens", base.overlong_buffer_tokens)
        if limit is not None and buffer > limit:
            update["overlong_buffer_tokens"] = limit  # documented: a band wider than L_max is clamped to it
        return base.model_copy(update=update)

    def admit(self, n_items: int, requests: int = 1) -> None:
        """Count a request (``requests=0``: an item of an admitted stream) in, or refuse it (``busy``) when the
        service is full or shutting down."""
        with self._admit:
            if self.draining:
                raise RequestError("the server is shutting down; retry on another replica", "busy")
            if requests and self._requests >= self.cfg.max_concurrent_requests:
                raise RequestError(f"the server is busy ({self._requests} requests in flight); retry shortly", "busy")
            if self._items and self._items + n_items > self.cfg.max_pending_items:
                raise RequestError(f"the server is busy ({self._items} items pending); retry shortly", "busy")
            self._requests += requests
            self._items += n_items

    def release(self, n_items: int, requests: int = 1) -> None:
        with self._admit:
            self._requests -= requests
            self._items -= n_items

    def deadline_s(self, cfg: RewardConfig) -> float:
        return self.cfg.request_timeout_s or cfg.verify.timeout_s + self.cfg.request_slack_s

    def verify(self, request: BaseModel, budget_s: float | None = None, in_stream: bool = False,
               admitted: bool = False) -> list[dict[str, Any]]:
        """One result dict per item of a validated request (``id, correct, status, extracted, reason, reward,
        parts, latency_ms, cached``). ``budget_s``: the caller's own deadline (gRPC), if shorter. ``in_stream``:
        an item of a gRPC stream, whose stream was admitted as the request. ``admitted``: the caller already
        called ``admit`` (and will call ``release``), as the HTTP adapter does before it takes a thread."""
        items = [it.model_dump() for it in request.items]  # type: ignore[attr-defined]
        cfg = self.reward_config(request.options)  # type: ignore[attr-defined]
        deadline_s = self.deadline_s(cfg) if budget_s is None else min(self.deadline_s(cfg), budget_s)
        requests = 0 if in_stream else 1
        if not admitted:
            self.admit(len(items), requests)
        try:
            with self.metrics.in_flight.track_inprogress():
                return self._verify(items, cfg, time.monotonic() + deadline_s)
        finally:
            if not admitted:
                self.release(len(items), requests)

    def open_stream(self) -> None:
        """Admit a gRPC stream as one request (its items are admitted with ``in_stream``); pair with close_stream."""
        self.admit(0)

    def close_stream(self) -> None:
        self.release(0)

    def _verify(self, items: list[dict[str, Any]], cfg: RewardConfig, deadline: float) -> list[dict[str, Any]]:
        from rewards.verifier import VERIFIER_VERSION

        cfg_json = cfg.model_dump_json()
        keys = [_cache_key(it, cfg_json, VERIFIER_VERSION) for it in items] if self.cache.enabled else []
        cached = self.cache.get(keys) if keys else [None] * len(items)
        out: list[dict[str, Any] | None] = [None] * len(items)
        misses = []
        for i, raw in enumerate(cached):
            if raw is not None:
                out[i] = {**json.loads(raw), "cached": True, "latency_ms": 0.0}
            else:
                misses.append(i)
        if self.cache.enabled:
            self.metrics.cache.labels("hit").inc(len(items) - len(misses))
            self.metrics.cache.labels("miss").inc(len(misses))
        if misses:
            try:
                results = self.pool.score([items[i] for i in misses], cfg, deadline)
            except RuntimeError as e:  # the pool stopped (closed, or its dispatcher failed): health says so too
                log.error("verifier pool unavailable: %s", e)
                raise RequestError("the verifier is unavailable; retry shortly", "unavailable") from None
            fresh = {}
            for i, r in zip(misses, results):
                result = ({"correct": bool(r["equal"]), **{k: r[k] for k in ("status", "extracted", "reason", "reward",
                                                                             "parts")}}
                          if "parts" in r else _unscored(r, items[i].get("response_tokens"), cfg))
                if result["status"] not in ("timeout", "error"):  # transient outcomes are not cached
                    if keys:
                        fresh[keys[i]] = json.dumps(result)
                out[i] = {**result, "cached": False, "latency_ms": round(r.get("elapsed_ms", 0.0), 3)}
            self.cache.put(fresh)
        for i, r in enumerate(out):
            r["id"] = items[i]["id"]  # type: ignore[index]
            self.metrics.verdicts.labels(r["status"]).inc()  # type: ignore[index]
            if r["status"] == "timeout":  # type: ignore[index]
                self.metrics.timeouts.inc()
        return out  # type: ignore[return-value]

    def health(self) -> dict[str, Any]:
        """Never blocks (no I/O): safe from the event loop and gRPC health."""
        from rewards.verifier import VERIFIER_VERSION

        pool = self.pool.state()
        status = "unavailable" if pool["error"] else "draining" if self.draining else "ok"
        reason = pool["error"] or ("shutting down" if self.draining else None)
        return {"status": status, "reason": reason, "verifier_version": VERIFIER_VERSION,
                "cache": self.cache.state(), "workers": pool["size"], "workers_ready": pool["ready"],
                "pool_restarts": pool["restarts"], "draining": self.draining}

    def authorized(self, header: str | None) -> bool:
        if not self.cfg.auth_token:
            return True
        import hmac

        return header is not None and hmac.compare_digest(header.encode("utf-8", "replace"),
                                                          f"Bearer {self.cfg.auth_token}".encode())


def _unscored(r: dict[str, Any], response_tokens: int | None, cfg: RewardConfig) -> dict[str, Any]:
    """A verdict for an item the pool could not score (timeout, worker died): shaped like any other."""
    from rewards.shaping import shape
    from rewards.verifier import Verdict

    reward = shape(Verdict(False, r["status"], None, r["reason"]), response_tokens, cfg)
    return {"correct": False, "status": r["status"], "extracted": None, "reason": r["reason"], "reward": reward.total,
            "parts": {"correctness": reward.correctness, "format": reward.format, "overlong": reward.overlong}}
