"""The reward verifier microservice: ``flywheel serve-reward``.

One process serves the same verifier over HTTP (FastAPI: ``POST /v1/verify``, ``GET /healthz``,
``GET /metrics``, OpenAPI docs at ``/docs``; see ``services.reward_http``) and gRPC
(``protos/reward.proto``: unary ``Verify``, bidirectional ``VerifyStream``, standard health checking;
see ``services.reward_grpc``). Both call :class:`RewardService`, so verdicts are identical.

Verdicts are optionally cached in Redis, keyed by a hash of (gold, completion, response length,
reward config, verifier version), with a TTL; when Redis is down the service keeps working without
the cache and says so in ``/healthz`` and the log. Binds 127.0.0.1 by default; an optional bearer
token guards both APIs. SIGTERM/SIGINT drain in-flight requests before exit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rewards.config import RewardConfig

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
    grpc_threads: int = Field(16, ge=1, le=1024)
    """Threads serving gRPC calls."""
    timeout_s: float = Field(2.0, gt=0, le=60)
    """Default hard time limit per item; a request may lower or raise it up to max_timeout_s."""
    max_timeout_s: float = Field(10.0, gt=0, le=600)
    """Largest per-item time limit a request may ask for."""
    max_batch_items: int = Field(1024, ge=1, le=100_000)
    """Most items in one request (HTTP 422 / gRPC INVALID_ARGUMENT beyond)."""
    max_item_chars: int = Field(100_000, ge=10, le=10_000_000)
    """Most characters in one completion or gold answer (HTTP 422 / gRPC INVALID_ARGUMENT beyond)."""
    max_request_bytes: int = Field(16 * 2**20, ge=1024, le=2**31 - 1)
    """Largest request body (HTTP 413 / gRPC RESOURCE_EXHAUSTED beyond)."""
    redis_url: str | None = None
    """Redis URL for the verdict cache (e.g. redis://127.0.0.1:6379/0); None = no cache."""
    cache_ttl_s: int = Field(7 * 86400, ge=1)
    """Lifetime of a cached verdict."""
    auth_token: str | None = None
    """Bearer token required on both APIs (``Authorization: Bearer <token>``); None = open."""
    shutdown_grace_s: float = Field(10.0, ge=0, le=600)
    """How long shutdown waits for in-flight requests to finish."""
    reward: RewardConfig = Field(default_factory=RewardConfig)
    """Default reward shaping and verifier settings (request options override a few); the server's
    ``timeout_s`` and ``workers`` replace ``reward.verify.timeout_s`` / ``num_workers``."""


class RequestError(ValueError):
    """A request the service refuses; ``kind`` is ``invalid`` or ``too_large``."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


class ServiceMetrics:
    """Prometheus metrics in a registry of their own (several servers may share a process in tests)."""

    def __init__(self, pool_restarts) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.verdicts = Counter("reward_verdicts_total", "Verdicts by status", ["status"], registry=self.registry)
        self.latency = Histogram("reward_request_seconds", "Request latency", ["api"], registry=self.registry,
                                 buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.timeouts = Counter("reward_timeouts_total", "Items that hit the hard time limit", registry=self.registry)
        self.cache = Counter("reward_cache_lookups_total", "Verdict cache lookups", ["result"], registry=self.registry)
        self.errors = Counter("reward_request_errors_total", "Refused requests", ["api", "kind"], registry=self.registry)
        self.in_flight = Gauge("reward_requests_in_flight", "Verify requests being processed", registry=self.registry)
        restarts = Gauge("reward_pool_restarts", "Verifier worker processes killed or died and replaced",
                         registry=self.registry)
        restarts.set_function(pool_restarts)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class RewardService:
    """Limits, cache and scoring shared by the HTTP and gRPC front ends."""

    def __init__(self, cfg: RewardServerConfig):
        from rewards.worker_pool import shared_pool

        verify_cfg = cfg.reward.verify.model_copy(update={"timeout_s": cfg.timeout_s, "num_workers": cfg.workers})
        self.cfg = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"verify": verify_cfg})})
        self.pool = shared_pool(cfg.workers)
        took = self.pool.warm_up(wait=True)
        log.info("%d verifier worker processes ready in %.2f s", self.pool.size, took)
        self.metrics = ServiceMetrics(lambda: self.pool.restarts)
        self._redis = None
        self._redis_ok: bool | None = None
        self._redis_checked = 0.0
        self._lock = threading.Lock()
        if cfg.redis_url:
            import redis

            self._redis = redis.Redis.from_url(cfg.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            self._check_redis()

    # ---- cache
    def _check_redis(self) -> bool:
        if self._redis is None:
            return False
        try:
            ok = bool(self._redis.ping())
        except Exception:  # noqa: BLE001 - any failure means "no cache"
            ok = False
        self._set_redis_ok(ok)
        return ok

    def _set_redis_ok(self, ok: bool) -> None:
        with self._lock:
            changed = ok != self._redis_ok
            self._redis_ok, self._redis_checked = ok, time.monotonic()
        if changed:
            if ok:
                log.info("redis cache at %s is up", self.cfg.redis_url)
            else:
                log.warning("redis cache at %s is DOWN; serving without the cache", self.cfg.redis_url)

    def cache_state(self) -> str:
        if self._redis is None:
            return "disabled"
        if not self._redis_ok and time.monotonic() - self._redis_checked > 2.0:
            self._check_redis()
        return "up" if self._redis_ok else "down"

    def _cache_get(self, keys: list[str]) -> list[bytes | None]:
        if self.cache_state() != "up":
            return [None] * len(keys)
        try:
            return self._redis.mget(keys)
        except Exception:  # noqa: BLE001
            self._set_redis_ok(False)
            return [None] * len(keys)

    def _cache_put(self, entries: dict[str, str]) -> None:
        if not entries or self.cache_state() != "up":
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for k, v in entries.items():
                pipe.set(k, v, ex=self.cfg.cache_ttl_s)
            pipe.execute()
        except Exception:  # noqa: BLE001
            self._set_redis_ok(False)

    # ---- requests
    def reward_config(self, options: dict[str, Any] | None) -> RewardConfig:
        base = self.cfg.reward
        opts = {k: v for k, v in (options or {}).items() if v is not None}
        verify_update: dict[str, Any] = {}
        if "timeout_s" in opts:
            t = float(opts["timeout_s"])
            if not 0 < t <= self.cfg.max_timeout_s:
                raise RequestError(f"options.timeout_s={t} must be in (0, {self.cfg.max_timeout_s}]")
            verify_update["timeout_s"] = t
        if "last_number_fallback" in opts:
            verify_update["last_number_fallback"] = bool(opts["last_number_fallback"])
        update: dict[str, Any] = {}
        if verify_update:
            update["verify"] = base.verify.model_copy(update=verify_update)
        if "format_reward" in opts:
            update["format_weight"] = (base.format_weight or 1.0) if opts["format_reward"] else 0.0
        if "max_response_tokens" in opts:
            update["max_response_tokens"] = int(opts["max_response_tokens"]) or None
        if "overlong_buffer_tokens" in opts:
            update["overlong_buffer_tokens"] = int(opts["overlong_buffer_tokens"])
        if not update:
            return base
        try:
            return RewardConfig.model_validate({**base.model_dump(), **{k: (v.model_dump() if isinstance(v, BaseModel)
                                                                          else v) for k, v in update.items()}})
        except ValueError as e:
            raise RequestError(f"invalid options: {e}") from None

    def check_items(self, items: list[dict[str, Any]]) -> None:
        if len(items) > self.cfg.max_batch_items:
            raise RequestError(f"batch of {len(items)} items exceeds max_batch_items={self.cfg.max_batch_items}",
                               "too_large")
        for i, it in enumerate(items):
            for name in ("completion", "gold"):
                value = it.get(name)
                if not isinstance(value, str):
                    raise RequestError(f"items[{i}].{name} must be a string")
                if len(value) > self.cfg.max_item_chars:
                    raise RequestError(f"items[{i}].{name} has {len(value)} chars; max_item_chars="
                                       f"{self.cfg.max_item_chars}", "too_large")
            tokens = it.get("response_tokens")
            if tokens is not None and (not isinstance(tokens, int) or tokens < 0):
                raise RequestError(f"items[{i}].response_tokens must be a non-negative integer")

    def verify(self, items: list[dict[str, Any]], options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One result dict per item (``id, correct, status, extracted, reason, reward, parts, latency_ms, cached``)."""
        self.check_items(items)
        cfg = self.reward_config(options)
        with self.metrics.in_flight.track_inprogress():
            return self._verify(items, cfg)

    def _verify(self, items: list[dict[str, Any]], cfg: RewardConfig) -> list[dict[str, Any]]:
        from rewards.shaping import score_batch
        from rewards.verifier import VERIFIER_VERSION

        cfg_json = cfg.model_dump_json()
        keys = [_cache_key(it, cfg_json, VERIFIER_VERSION) for it in items]
        cached = self._cache_get(keys) if self._redis is not None else [None] * len(items)
        out: list[dict[str, Any] | None] = [None] * len(items)
        misses = []
        for i, raw in enumerate(cached):
            if raw is not None:
                out[i] = {**json.loads(raw), "cached": True, "latency_ms": 0.0}
            else:
                misses.append(i)
        if self._redis is not None:
            self.metrics.cache.labels("hit").inc(len(items) - len(misses))
            self.metrics.cache.labels("miss").inc(len(misses))
        if misses:
            rewards = score_batch([items[i] for i in misses], cfg)
            fresh = {}
            for i, r in zip(misses, rewards):
                v = r.verdict
                result = {"correct": v.correct, "status": v.status, "extracted": v.extracted, "reason": v.reason,
                          "reward": r.total, "parts": {"correctness": r.correctness, "format": r.format,
                                                       "overlong": r.overlong}}
                if v.status not in ("timeout", "error"):  # transient outcomes are not cached
                    fresh[keys[i]] = json.dumps(result)
                out[i] = {**result, "cached": False, "latency_ms": v.latency_ms}
            self._cache_put(fresh)
        for i, r in enumerate(out):
            r["id"] = str(items[i].get("id") or "")
            self.metrics.verdicts.labels(r["status"]).inc()
            if r["status"] == "timeout":
                self.metrics.timeouts.inc()
        return out  # type: ignore[return-value]

    def health(self) -> dict[str, Any]:
        from rewards.verifier import VERIFIER_VERSION

        return {"status": "ok", "verifier_version": VERIFIER_VERSION, "cache": self.cache_state(),
                "workers": self.pool.size, "pool_restarts": self.pool.restarts}

    def authorized(self, header: str | None) -> bool:
        if not self.cfg.auth_token:
            return True
        import hmac

        return header is not None and hmac.compare_digest(header.encode(), f"Bearer {self.cfg.auth_token}".encode())


def _cache_key(item: dict[str, Any], cfg_json: str, version: str) -> str:
    payload = json.dumps([version, cfg_json, item["gold"], item["completion"], item.get("response_tokens")])
    return "flywheel:reward:" + hashlib.sha256(payload.encode()).hexdigest()


def _draining_server_class():
    import contextlib
    import signal

    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, minus re-raising the signal after shutdown (so our clean-up runs, exit 0)."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)
                if getattr(self, "_captured_signals", None):
                    log.info("signal received: drained in-flight HTTP requests")

    return DrainingServer


def main(cfg: RewardServerConfig) -> int:
    """Run both APIs until SIGINT/SIGTERM, then drain in-flight requests and exit."""
    from services.reward_grpc import start_grpc_server
    from services.reward_http import build_app

    if cfg.http_port == 0 and cfg.grpc_port == 0:
        log.error("both http_port and grpc_port are 0: nothing to serve")
        return 2
    t0 = time.monotonic()
    service = RewardService(cfg)
    grpc_server = start_grpc_server(service, cfg) if cfg.grpc_port else None
    if grpc_server is not None:
        log.info("gRPC RewardService listening on %s:%d", cfg.host, cfg.grpc_port)
    try:
        if cfg.http_port:
            log.info("HTTP API on http://%s:%d (docs at /docs); ready in %.1f s", cfg.host, cfg.http_port,
                     time.monotonic() - t0)
            import uvicorn

            server = _draining_server_class()(uvicorn.Config(build_app(service), host=cfg.host, port=cfg.http_port,
                                                    log_level="warning",
                                                    timeout_graceful_shutdown=int(cfg.shutdown_grace_s) or None))
            server.run()  # on SIGINT/SIGTERM: stops accepting, finishes in-flight requests, returns
        else:
            import signal

            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
    finally:
        if grpc_server is not None:
            grpc_server.stop(cfg.shutdown_grace_s).wait()
        service.pool.close()
        log.info("reward server stopped")
    return 0


if __name__ == "__main__":
    import sys

    from services.cli import main as cli_main

    sys.exit(cli_main(["serve-reward", *sys.argv[1:]]))
