"""The rollout service's core: its config and :class:`RolloutService`, what both APIs call.

``flywheel serve-rollout --model CHECKPOINT`` (process entry: ``services.rollout_app``) starts
``rollout.num_workers`` vLLM rollout workers on Ray as a :class:`rollout.fleet.RolloutFleet` and serves
them over HTTP (``services.rollout_http``: OpenAI-compatible ``/v1/completions``,
``/v1/chat/completions``, ``/v1/models``; trainer-facing ``/v1/rollouts``; authenticated
``/v1/weights``; ``/healthz``, ``/readyz``; Prometheus ``/metrics``) and gRPC (``services.rollout_grpc``,
``protos/rollout.proto``). Both adapters import this module (never the other way round) and share one
:class:`RolloutService`, so limits, versions, health and metrics are the same whichever way a request
comes in. Request checks live in ``services.rollout_requests``, engine health in
``services.rollout_health``.

Binds 127.0.0.1 by default. ``auth_token`` (or the env var named by ``auth_token_env``) guards the
state-changing endpoints (``/v1/weights``, gRPC ``LoadWeights``) and, with ``auth_all``, everything;
without a token the service refuses to start unless ``insecure_no_auth`` is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rollout.config import MAX_TEMPERATURE, RolloutConfig
from rollout.weight_update import model_specs
from services.rollout_requests import (RequestError, check_number, check_seed, check_stop, check_text,
                                       generation_failure)

log = logging.getLogger("flywheel.rollout_server")


class RolloutServerConfig(BaseModel):
    """``flywheel serve-rollout`` settings."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str | None = None
    """Checkpoint to serve (overrides ``rollout.model``): ``flywheel serve-rollout --model runs/dpo/final``."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """The workers: how many, engine sizes, weight transport."""
    host: str = "127.0.0.1"
    """Interface to bind (both APIs). Use 0.0.0.0 only behind a network boundary you trust."""
    http_port: int = Field(8360, ge=0, le=65535)
    """HTTP (FastAPI) port; 0 disables the HTTP API."""
    grpc_port: int = Field(8361, ge=0, le=65535)
    """gRPC port; 0 disables the gRPC API."""
    auth_token: str | None = None
    """Bearer token for ``/v1/weights`` and gRPC ``LoadWeights`` (and all endpoints with ``auth_all``)."""
    auth_token_env: str = "FLYWHEEL_ROLLOUT_TOKEN"
    """Environment variable read for the token when ``auth_token`` is not set."""
    auth_all: bool = False
    """Require the bearer token on every endpoint, not only the state-changing ones."""
    max_prompt_tokens: int = Field(1024, ge=1, le=1_048_576)
    """Longest prompt accepted (HTTP 400 / gRPC INVALID_ARGUMENT beyond)."""
    max_tokens: int = Field(1024, ge=1, le=1_048_576)
    """Largest ``max_tokens`` a request may ask for."""
    max_n: int = Field(64, ge=1, le=4096)
    """Largest ``n`` (samples per prompt) a request may ask for."""
    max_logprobs: int = Field(5, ge=0, le=20)
    """Largest ``logprobs`` / ``top_logprobs`` a request may ask for."""
    max_prompts_per_request: int = Field(256, ge=1, le=100_000)
    """Most prompts in one ``/v1/completions`` or ``/v1/rollouts`` request."""
    weights_root: str | None = None
    """If set, ``/v1/weights`` only loads files inside this folder."""
    ray_address: str | None = None
    """Ray cluster to join (``auto`` for a running one); None (or ``local``) starts a Ray of its own with
    token authentication (a fresh random ``RAY_AUTH_TOKEN`` unless one is set), see docs/security.md."""
    insecure_no_auth: bool = False
    """Serve ``/v1/weights`` and gRPC ``LoadWeights`` without a bearer token. Without a token and without
    this flag the service refuses to start: say it explicitly (``--insecure_no_auth true``)."""
    health_interval_s: float = Field(1.0, gt=0.0, le=60.0)
    """Seconds between two health checks of the engines (sooner after a failed generation)."""
    max_request_bytes: int = Field(8 * 2**20, ge=1024, le=2**30)
    """Largest HTTP request body accepted (413 beyond)."""

    @model_validator(mode="after")
    def _apply_model(self) -> RolloutServerConfig:
        data = self.rollout.model_dump(exclude_unset=True)
        if self.model:
            data["model"] = self.model
        try:  # again: the checkpoint's limits apply to this model
            rollout = RolloutConfig.model_validate(data)
        except ValidationError as e:
            raise ValueError("; ".join(str(x["msg"]).removeprefix("Value error, ") for x in e.errors())) from None
        if rollout.max_model_len is None:  # the checkpoint's limit, capped by what a request can need
            rollout.max_model_len = rollout.context_len(self.max_prompt_tokens + self.max_tokens)
        self.rollout = rollout
        return self

    def token(self) -> str | None:
        return self.auth_token or os.environ.get(self.auth_token_env) or None


def file_sha256(path: str | Path) -> str:
    """sha256 of a safetensors file, or of a folder's ``*.safetensors`` files concatenated in name order."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class RolloutService:
    """What both APIs call: validation against the limits, routing, weight updates, metrics."""

    def __init__(self, cfg: RolloutServerConfig, router, tokenizer) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.cfg = cfg
        self.router = router
        self.tokenizer = tokenizer
        self.model_name = cfg.rollout.model_name
        self.version = 0
        self.active = 0
        self._weights_lock = asyncio.Lock()
        self.started = time.time()
        self._tok_window: list[tuple[float, int]] = []
        r = self.registry = CollectorRegistry()
        self.m_tokens = Counter("flywheel_rollout_generated_tokens", "Completion tokens generated", registry=r)
        self.m_requests = Counter("flywheel_rollout_requests", "Requests by endpoint and status",
                                  ["endpoint", "status"], registry=r)
        self.m_queue = Gauge("flywheel_rollout_queue_depth", "Requests being served or waiting", registry=r)
        self.m_version = Gauge("flywheel_rollout_weight_version", "Policy version being served", registry=r)
        self.m_tps = Gauge("flywheel_rollout_tokens_per_second", "Completion tokens/s over the last 30 s",
                           registry=r)
        self.m_sync = Histogram("flywheel_rollout_weight_sync_seconds", "Weight update latency (whole update)",
                                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.m_stall = Gauge("flywheel_rollout_last_generation_stall_seconds",
                             "Time generation was paused by the last update (slowest worker)", registry=r)
        self.m_workers = Gauge("flywheel_rollout_workers_alive", "Live rollout workers", registry=r)
        self.m_workers.set(router.num_alive)
        self._model_specs = model_specs(cfg.rollout.model)
        from services.rollout_health import FleetHealth

        self.health = FleetHealth(router, cfg.health_interval_s)

    # ------------------------------------------------------------------ accounting
    def count_tokens(self, n: int) -> None:
        now = time.time()
        self.m_tokens.inc(n)
        self._tok_window.append((now, n))
        while self._tok_window and self._tok_window[0][0] < now - 30:
            self._tok_window.pop(0)
        span = max(1e-6, min(30.0, now - self.started))
        self.m_tps.set(sum(k for _, k in self._tok_window) / span)

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        self.m_queue.set(self.active)
        self.m_version.set(self.version)
        self.m_workers.set(self.router.num_alive)
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ validation
    def check_model(self, model: str | None) -> None:
        if model and model != self.model_name:
            raise RequestError(f"unknown model {model!r}; this server serves {self.model_name!r}", 404,
                               "model_not_found")

    def check_sampling(self, n: int, max_tokens: int, logprobs: int | None = None, *, temperature: float = 1.0,
                       top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None) -> None:
        """Every sampling parameter a request may set (HTTP checks most in its schema too; gRPC only here)."""
        c = self.cfg
        check_number("temperature", temperature, 0.0, MAX_TEMPERATURE)
        check_number("top_p", top_p, 0.0, 1.0, lo_open=True)
        check_stop(list(stop or []))
        check_seed(seed)
        if not 1 <= n <= c.max_n:
            raise RequestError(f"n = {n} is out of range: 1 <= n <= {c.max_n}")
        if not 1 <= max_tokens <= c.max_tokens:
            raise RequestError(f"max_tokens = {max_tokens} is out of range: 1 <= max_tokens <= {c.max_tokens}")
        if logprobs is not None and not 0 <= logprobs <= c.max_logprobs:
            raise RequestError(f"logprobs = {logprobs} is out of range: 0 <= logprobs <= {c.max_logprobs}")

    def prompt_ids(self, prompt: str | list[int], max_tokens: int) -> list[int]:
        """Tokenise (if text) and check the length limits."""
        if isinstance(prompt, str):
            check_text("prompt", prompt)
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        else:
            if any(not isinstance(t, int) or isinstance(t, bool) for t in prompt):
                raise RequestError("prompt: token ids must be integers")
            ids = list(prompt)
            vocab = len(self.tokenizer)
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise RequestError(f"token id {bad[0]} is out of the vocabulary (0..{vocab - 1})")
        if not ids:
            raise RequestError("empty prompt")
        if len(ids) > self.cfg.max_prompt_tokens:
            raise RequestError(f"prompt has {len(ids)} tokens; the limit is max_prompt_tokens = "
                               f"{self.cfg.max_prompt_tokens}")
        if len(ids) + max_tokens > self.context_len:
            raise RequestError(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                               f"context of {self.context_len} tokens")
        return ids

    def chat_prompt_ids(self, messages: list[dict], max_tokens: int) -> list[int]:
        if not messages:
            raise RequestError("messages must not be empty")
        for k, m in enumerate(messages):
            check_text(f"messages[{k}].content", m.get("content", ""))
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # noqa: BLE001 - a template error is the caller's malformed messages
            line = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise RequestError(f"messages: the model's chat template refused them ({line})") from None
        return self.prompt_ids(text, max_tokens)

    @property
    def context_len(self) -> int:
        """The engines' ``max_model_len`` (resolved from the checkpoint when the config left it open)."""
        return self.cfg.rollout.max_model_len or self.cfg.rollout.context_len()

    # ------------------------------------------------------------------ generation
    def pick(self) -> int:
        """The least-loaded worker whose engine can generate now; 503 when none can (a restart is on)."""
        up = [i for i in self.router.up() if self.health.can_serve(i)]
        if not up:
            raise RequestError("no rollout engine can serve right now (starting or being restarted); retry shortly",
                               503, "engine_unavailable", retry_after=5)
        return min(up, key=lambda i: (self.router.load[i], i))

    def failed(self, e: BaseException) -> BaseException:
        """What to raise for ``e`` from a worker: a :class:`RequestError` (4xx/503), or ``e`` itself (a bug)."""
        if isinstance(e, RequestError):
            return e
        err = generation_failure(e)
        if err is not None and err.status == 503:
            self.health.kick()  # the engine or its worker died: check (and restart) now
        return err or e

    async def stream(self, prompt_ids: list[int], params: dict):
        """Deltas of one request from the least-loaded worker (dicts, see RolloutEngine.stream_completion).
        A worker failure is raised as a :class:`RequestError` (503 while its engine restarts)."""
        w = self.pick()
        self.router.load[w] += 1
        self.active += 1
        try:
            gen = self.router.workers[w].stream_completion.options(num_returns="streaming").remote(
                {"prompt_token_ids": prompt_ids}, params)
            async for ref in gen:
                d = await ref
                self.count_tokens(len(d["token_ids"]))
                yield d
        except Exception as e:
            raise self.failed(e) from e
        finally:
            self.router.load[w] -= 1
            self.active -= 1

    async def _group(self, prompt: dict, sampling: dict) -> dict:
        w = self.pick()
        self.router.load[w] += 1
        try:
            return (await self.router.workers[w].generate.remote([prompt], sampling))[0]
        except Exception as e:
            raise self.failed(e) from e
        finally:
            self.router.load[w] -= 1

    async def rollouts(self, prompts: list[dict], sampling: dict) -> list[dict]:
        """One group per prompt, each on the least-loaded serving worker."""
        self.active += len(prompts)
        try:
            groups = await asyncio.gather(*(self._group(p, sampling) for p in prompts))
        finally:
            self.active -= len(prompts)
        self.count_tokens(sum(len(s["completion_token_ids"]) for g in groups for s in g["samples"]))
        return list(groups)

    # ------------------------------------------------------------------ weights
    async def load_weights(self, version: int, path: str, sha256: str) -> dict:
        check_text("path", path, allow_empty=False, max_chars=4096)
        if "\x00" in path:
            raise RequestError("path: must not contain a NUL character")
        p = Path(path)
        if self.cfg.weights_root is not None:
            root = Path(self.cfg.weights_root).resolve()
            if not p.resolve().is_relative_to(root):
                raise RequestError("path is outside the server's weights_root", 403, "forbidden")
        no_match = RequestError("sha256 mismatch: the path holds no safetensors weights with that sha256 (a missing "
                                "path, a file that is not safetensors and a wrong checksum get this same answer)",
                                400, "checksum_mismatch")
        files = (sorted(p.glob("*.safetensors")) if p.is_dir() else [p]) if p.exists() else []
        if not files or any(f.suffix != ".safetensors" or not f.is_file() for f in files):
            raise no_match
        from rollout.weight_update import StaleWeightUpdate, WeightUpdate, WeightUpdateError, check_version

        async with self._weights_lock:
            try:
                check_version(version, self.version)
            except StaleWeightUpdate as e:
                raise RequestError(str(e), 409, "stale_version") from None
            except WeightUpdateError as e:
                raise RequestError(str(e), 400) from None
            try:
                digest = await asyncio.to_thread(file_sha256, p)
            except OSError:
                raise no_match from None
            if not sha256 or digest != sha256.lower():
                raise no_match
            self.check_weight_files(files)
            t0 = time.perf_counter()
            try:
                recs = await self.router.apublish(WeightUpdate(version, files=[str(f) for f in files]))
            except WeightUpdateError as e:
                raise RequestError(str(e), 400, "bad_weights") from e
            except Exception as e:  # noqa: BLE001 - Ray wraps the worker's WeightUpdateError
                cause = getattr(e, "cause", None)
                if isinstance(cause, WeightUpdateError) or "WeightUpdateError" in str(e):
                    raise RequestError(str(cause or e).splitlines()[-1], 400, "bad_weights") from e
                raise
            self.version = version
            sync_s = time.perf_counter() - t0
            stall_s = max((r["stall_s"] for r in recs), default=0.0)
            self.m_sync.observe(sync_s)
            self.m_stall.set(stall_s)
            return {"version": version, "sync_s": sync_s, "stall_s": stall_s, "workers": len(recs)}

    def check_weight_files(self, files: list[Path]) -> None:
        """Refuse (400, naming tensor and file) an update that is unreadable, lacks a tensor of the served
        model, has one it does not know, or has one of another shape; the workers never see it, so the
        weights being served stay as they were. Without a local checkpoint to compare with (a hub id),
        only readability and dtypes are checked here and the engines check names and shapes."""
        from rollout.weight_update import WeightUpdateError, read_specs, validate_specs

        specs: dict = {}
        try:
            for f in files:
                got = read_specs(f)  # its error names the file
                try:
                    validate_specs(got, self._model_specs)
                except WeightUpdateError as e:
                    raise WeightUpdateError(f"{f.name}: {e}") from None
                specs.update(got)
            try:
                validate_specs(specs, self._model_specs, complete=True)
            except WeightUpdateError as e:
                raise WeightUpdateError(f"{', '.join(f.name for f in files)}: {e}") from None
        except WeightUpdateError as e:
            raise RequestError(str(e), 400, "bad_weights") from None

    def status(self) -> dict[str, Any]:
        """Model, weights, load, and how many workers can generate now (``workers``)."""
        serving = sum(self.health.can_serve(i) for i in range(len(self.router.workers)))
        return {"model": self.model_name, "weight_version": self.version, "workers": serving,
                "queue_depth": self.active, "in_flight": sum(self.router.load)}


# ---------------------------------------------------------------------- process entry
def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)
